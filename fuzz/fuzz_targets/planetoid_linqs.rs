#![no_main]
//! `cargo fuzz run planetoid_linqs`: [`nabla_fuzz::planetoid_linqs`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::planetoid_linqs(data);
});
