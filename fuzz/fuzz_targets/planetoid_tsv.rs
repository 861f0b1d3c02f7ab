#![no_main]
//! `cargo fuzz run planetoid_tsv`: [`nabla_fuzz::planetoid_tsv`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::planetoid_tsv(data);
});
