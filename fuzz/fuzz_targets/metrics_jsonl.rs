#![no_main]
//! `cargo fuzz run metrics_jsonl`: [`nabla_fuzz::metrics_jsonl`] on every input.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = nabla_fuzz::metrics_jsonl(data);
});
