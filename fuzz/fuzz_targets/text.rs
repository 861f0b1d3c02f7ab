#![no_main]
//! `cargo fuzz run text`: [`nabla_fuzz::text`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::text(data);
});
