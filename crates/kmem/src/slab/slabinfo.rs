//! `/proc/slabinfo` (version 2.1) and per-cache counters.
//!
//! Byte for byte Linux's format: one header, then one line per cache,
//! newest cache first. Counts as Linux's SLUB computes them: `num_objs` and
//! `num_slabs` from the node counters, `active_objs` = `num_objs` minus the
//! free objects on node partial lists (objects free on per-CPU slabs count as
//! active), `active_slabs` = `num_slabs`, tunables and shared fields 0.

use super::cpu::Stat;
use super::{KmemCache, SlabAllocator};
use crate::platform::Platform;
use core::fmt::{self, Write};

/// One line of slabinfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabInfoRow {
    /// Objects allocated (or free on per-CPU slabs).
    pub active_objs: usize,
    /// Objects in all slabs.
    pub num_objs: usize,
    /// Bytes per object, metadata included.
    pub objsize: usize,
    /// Objects per slab.
    pub objperslab: u32,
    /// Pages per slab.
    pub pagesperslab: u32,
    /// Slabs in use (SLUB: all of them).
    pub active_slabs: usize,
    /// Slabs.
    pub num_slabs: usize,
}

impl<P: Platform> KmemCache<P> {
    /// The cache's slabinfo numbers.
    pub fn slabinfo_row(&self) -> SlabInfoRow {
        let (num_objs, free) = self.count_objects();
        let num_slabs = self.nr_slabs();
        SlabInfoRow {
            active_objs: num_objs - free,
            num_objs,
            objsize: self.size,
            objperslab: self.oo.objects,
            pagesperslab: 1 << self.oo.order,
            active_slabs: num_slabs,
            num_slabs,
        }
    }

    /// The counters as `name value` lines (Linux's
    /// `/sys/kernel/slab/<cache>/<stat>` files, one per line), followed by
    /// the list lengths.
    pub fn write_stats(&self, out: &mut dyn Write) -> fmt::Result {
        for s in Stat::ALL {
            writeln!(out, "{} {}", s.name(), self.stat(s))?;
        }
        writeln!(out, "slabs {}", self.nr_slabs())?;
        writeln!(out, "partial {}", self.nr_partial())?;
        writeln!(out, "cpu_partial_slabs {}", self.nr_cpu_partial())?;
        writeln!(out, "min_partial {}", self.min_partial)?;
        writeln!(out, "order {}", self.oo.order)?;
        writeln!(out, "objs_per_slab {}", self.oo.objects)
    }
}

/// Writes `/proc/slabinfo`.
pub fn slabinfo<P: Platform>(slab: &SlabAllocator<'_, P>, out: &mut dyn Write) -> fmt::Result {
    writeln!(out, "slabinfo - version: 2.1")?;
    writeln!(
        out,
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
    )?;
    let mut r = Ok(());
    slab.for_each_cache(|c| {
        if r.is_err() {
            return;
        }
        let row = c.slabinfo_row();
        r = writeln!(
            out,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            c.name(),
            row.active_objs,
            row.num_objs,
            row.objsize,
            row.objperslab,
            row.pagesperslab,
            0,
            0,
            0,
            row.active_slabs,
            row.num_slabs,
            0
        );
    });
    r
}
