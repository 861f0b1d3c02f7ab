#![no_main]
//! `cargo fuzz run state_json`: [`nabla_fuzz::state_json`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::state_json(data);
});
