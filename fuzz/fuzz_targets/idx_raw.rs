#![no_main]
//! `cargo fuzz run idx_raw`: [`nabla_fuzz::idx_raw`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::idx_raw(data);
});
