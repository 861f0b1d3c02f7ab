#![no_main]
//! `cargo fuzz run safetensors`: [`nabla_fuzz::safetensors`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::safetensors(data);
});
