//! vmalloc on bare metal: waits for kmem's vmalloc layer.
//!
//! Until it lands, [`super::guard`] does by hand what vmalloc will do:
//! scattered frames mapped contiguously in vmalloc space by kmem's
//! `X86PageTables` (linked into the live PML4), a guard page after them, and
//! a caught fault on it. When `kmem::vmalloc` lands, this section runs
//! `vmalloc`/`vfree` over the same kind of tables, writes through the
//! vmalloc address and reads back through the direct map, and probes the
//! guard page of a real vmalloc area.

use super::{Pages, Section};

/// Runs the section.
pub fn run(_pa: &'static Pages) -> Section {
    Section::skipped(
        "vmalloc",
        "kmem has no vmalloc layer yet (issue 4): the guard section maps vmalloc space with kmem's X86PageTables meanwhile",
    )
}
