#![no_main]
//! `cargo fuzz run image`: [`nabla_fuzz::image`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::image(data);
});
