#![no_main]
//! `cargo fuzz run idx_gzip`: [`nabla_fuzz::idx_gzip`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::idx_gzip(data);
});
