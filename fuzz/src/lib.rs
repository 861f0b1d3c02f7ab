//! The fuzz targets' entry functions (see `entries.rs`, shared with
//! `tests/fuzz_regressions.rs`).

mod entries;
pub use entries::*;
