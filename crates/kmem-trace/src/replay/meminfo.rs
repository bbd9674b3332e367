//! Sizing the replay machine from the recording's /proc snapshot.
//!
//! `capture-trace` (and `kmem record`) save `/proc/meminfo` beside the trace
//! as `before.meminfo` (and `after.meminfo`). Its `MemTotal:` line is the RAM
//! the kernel managed, in KiB; the replay machine gets that much, so
//! watermarks, per-CPU list sizes and zone proportions are those of the traced
//! machine. `MemTotal` excludes what firmware and the kernel image reserved,
//! so the hosted machine's managed pages come out slightly lower still (its
//! own frame records take their share): the difference is reported, never
//! hidden.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a replay machine's RAM size came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RamSource {
    /// `--ram` on the command line.
    Explicit,
    /// `MemTotal` of the meminfo snapshot at this path.
    Meminfo(PathBuf),
    /// No snapshot beside the trace: the default size.
    Default,
}

impl fmt::Display for RamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamSource::Explicit => f.write_str("--ram"),
            RamSource::Meminfo(p) => write!(f, "MemTotal of {}", p.display()),
            RamSource::Default => {
                f.write_str("default: no meminfo with a MemTotal beside the trace")
            }
        }
    }
}

/// `MemTotal` in bytes, from meminfo text.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let mut words = rest.split_whitespace();
        let n: u64 = words.next()?.parse().ok()?;
        let unit = words.next().unwrap_or("kB");
        let mult = match unit {
            "kB" | "KB" | "KiB" => 1024,
            "B" => 1,
            "MB" | "MiB" => 1 << 20,
            _ => return None,
        };
        n.checked_mul(mult)
    })
}

/// The meminfo snapshot beside `trace` (`before.meminfo`, else
/// `after.meminfo`) and its `MemTotal` in bytes.
pub fn mem_total_beside(trace: &Path) -> Option<(PathBuf, u64)> {
    let dir = trace.parent().unwrap_or(Path::new("."));
    ["before.meminfo", "after.meminfo"].iter().find_map(|f| {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).ok()?;
        parse_mem_total(&text).map(|b| (p, b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total() {
        let t = "MemTotal:       24684084 kB\nMemFree:        10 kB\n";
        assert_eq!(parse_mem_total(t), Some(24684084 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
    }
}
