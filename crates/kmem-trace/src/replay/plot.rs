//! SVG charts of a replay (`kmem replay --plot DIR`), drawn with plotters'
//! SVG backend (no fonts, no bitmap code):
//!
//! - `memory.svg`: pages by kind over trace time, in MiB (one line per kind
//!   that is ever non-zero, and the total);
//! - `fragmentation.svg`: the fragmentation index and the unusable free space
//!   index for orders 3 and 9 over trace time;
//! - `sizes.svg`: how many slab allocations fell in each power-of-two size
//!   bucket (log scale), and `orders.svg`: page allocations by order.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::memory::{KindPages, FRAG_ORDERS};
use super::report::ReplayReport;

const SIZE: (u32, u32) = (1000, 520);

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(60, 60, 60),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;
/// Draws one chart of a report into a file.
type Draw = fn(&ReplayReport, &Path) -> DrawResult;

/// Writes every chart into `dir` (created if missing); returns the files written.
pub fn write_all(report: &ReplayReport, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let charts: [(&str, Draw); 4] = [
        ("memory.svg", memory),
        ("fragmentation.svg", fragmentation),
        ("sizes.svg", sizes),
        ("orders.svg", orders),
    ];
    for (name, draw) in charts {
        let p = dir.join(name);
        draw(report, &p).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

fn mib(pages: u64) -> f64 {
    pages as f64 * 4096.0 / (1u64 << 20) as f64
}

fn title(report: &ReplayReport, what: &str) -> String {
    let name = Path::new(&report.trace)
        .parent()
        .and_then(|p| p.file_name())
        .map_or_else(
            || report.trace.clone(),
            |n| n.to_string_lossy().into_owned(),
        );
    format!("{what} — {name}")
}

fn memory(report: &ReplayReport, path: &Path) -> DrawResult {
    let samples = &report.timeline;
    let tmax = samples.last().map_or(1.0, |s| s.t).max(1e-3);
    let ymax = samples
        .iter()
        .map(|s| mib(s.pages.total()))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.05;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title(report, "memory by kind"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("trace time (s)")
        .y_desc("MiB")
        .draw()?;
    for (i, name) in KindPages::NAMES.iter().enumerate() {
        if samples.iter().all(|s| s.pages.as_array()[i] == 0) {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.t, mib(s.pages.as_array()[i]))),
                color.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, mib(s.pages.total()))),
            BLACK.stroke_width(1),
        ))?
        .label("total")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn fragmentation(report: &ReplayReport, path: &Path) -> DrawResult {
    let samples = &report.timeline;
    let tmax = samples.last().map_or(1.0, |s| s.t).max(1e-3);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            title(
                report,
                "fragmentation index (-1: a free block exists) and unusable free space index",
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..tmax, -1.05f64..1.05)?;
    chart
        .configure_mesh()
        .x_desc("trace time (s)")
        .y_desc("index")
        .draw()?;
    let mut c = 0;
    for (i, order) in FRAG_ORDERS.iter().enumerate() {
        for (what, unusable) in [("fragmentation index", false), ("unusable index", true)] {
            let color = COLORS[c % COLORS.len()];
            c += 1;
            chart
                .draw_series(LineSeries::new(
                    samples.iter().map(|s| {
                        let v = if unusable {
                            s.frag.unusable[i]
                        } else {
                            s.frag.index[i]
                        };
                        (s.t, v)
                    }),
                    color.stroke_width(2),
                ))?
                .label(format!("{what}, order {order}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Bars on a log-scale count axis.
fn bars(path: &Path, caption: &str, x_desc: &str, labels: &[String], counts: &[u64]) -> DrawResult {
    let n = counts.len().max(1);
    let ymax = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 2.0;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (0.5f64..ymax).log_scale())?;
    let labels = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - x.floor()).abs() < 1e-9 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc(x_desc)
        .y_desc("count (log scale)")
        .draw()?;
    chart.draw_series(
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| {
                Rectangle::new(
                    [(i as f64 + 0.1, 0.5), (i as f64 + 0.9, c as f64)],
                    COLORS[0].filled(),
                )
            }),
    )?;
    root.present()?;
    Ok(())
}

fn sizes(report: &ReplayReport, path: &Path) -> DrawResult {
    let h = &report.size_histogram;
    let last = h.iter().rposition(|&n| n > 0).unwrap_or(0);
    let counts = &h[..=last];
    let labels: Vec<String> = (0..counts.len())
        .map(|i| match i {
            0 => "0".into(),
            1 => "1".into(),
            i => {
                let hi = 1u64 << (i - 1);
                if hi >= 1 << 20 {
                    format!("{}M", hi >> 20)
                } else if hi >= 1 << 10 {
                    format!("{}K", hi >> 10)
                } else {
                    hi.to_string()
                }
            }
        })
        .collect();
    bars(
        path,
        &title(report, "slab allocation sizes (kmalloc, kmem_cache_alloc)"),
        "bytes requested, up to (power-of-two buckets)",
        &labels,
        counts,
    )
}

fn orders(report: &ReplayReport, path: &Path) -> DrawResult {
    let labels: Vec<String> = (0..report.order_histogram.len())
        .map(|o| o.to_string())
        .collect();
    bars(
        path,
        &title(report, "page allocations by order (mm_page_alloc)"),
        "order",
        &labels,
        &report.order_histogram,
    )
}
