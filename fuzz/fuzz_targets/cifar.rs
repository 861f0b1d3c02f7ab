#![no_main]
//! `cargo fuzz run cifar`: [`nabla_fuzz::cifar`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::cifar(data);
});
