//! Case counts for the shadow models that `PROPTEST_CASES` can override.
//!
//! A `proptest_config` that sets `cases` ignores the variable (proptest
//! reads it only into `Config::default()`), so each model takes its count
//! from [`cases`]: the suite keeps its own counts, and a longer run is, for
//! example, `PROPTEST_CASES=1000 cargo test --release -p kmem-host --test
//! slab_model`.

/// `PROPTEST_CASES` if it is set to a number, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
