//! The one place the integration tests locate the shared data and PyTorch fixtures.
//!
//! Tests that compare against `../shared` (the folder beside the checkout) ask [`shared`] for
//! it. A fresh clone has no such folder: the tests then skip, and each missing group writes ONE
//! line straight to the terminal. It bypasses libtest's output capture (which only intercepts
//! `print!`/`eprint!`), so the skip shows in a plain `cargo test` run, not only under
//! `--nocapture`.
//!
//! `NABLA_SHARED=DIR` replaces `../shared`; `.ci/run` runs the suite a second time with
//! `NABLA_SHARED=/nonexistent`, which is exactly what a fresh clone sees, because no test finds
//! the folder any other way (`tests/cli.rs::shared_folder_is_located_only_by_tests_common`
//! fails on any other `../shared` path in code).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// The shared folder's root: `$NABLA_SHARED`, else `../shared` beside the crate.
fn root() -> PathBuf {
    match std::env::var_os("NABLA_SHARED") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")),
    }
}

/// `ROOT/rel` if it exists, else `None`: the tests that need it return early. The first miss
/// of each `rel` in this test binary writes `SKIPPED <binary>: ...` to stderr.
#[allow(dead_code)] // each test binary compiles this module; not every one uses both helpers
pub fn shared(rel: &str) -> Option<PathBuf> {
    locate(
        rel,
        "SKIPPED",
        "the tests that compare against it pass without checking",
    )
}

/// `ROOT/rel` if it exists, else `None`: the caller substitutes built-in data, described by
/// `fallback` in the one line written on the first miss (`FALLBACK <binary>: ...`).
#[allow(dead_code)]
pub fn shared_or_fallback(rel: &str, fallback: &str) -> Option<PathBuf> {
    locate(rel, "FALLBACK", fallback)
}

fn locate(rel: &str, tag: &str, consequence: &str) -> Option<PathBuf> {
    let p = root().join(rel);
    if p.exists() {
        return Some(p);
    }
    static REPORTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = REPORTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rel.to_string());
    if first {
        // The test binary's name without cargo's hash suffix (`norm-0123abcd` → `norm`).
        let bin = std::env::current_exe()
            .ok()
            .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .map(|s| s.rsplit_once('-').map_or(s.clone(), |(a, _)| a.to_string()))
            .unwrap_or_default();
        // One write of one whole line, so parallel tests cannot split it.
        let line = format!(
            "{tag} {bin}: {} is absent, so {consequence} (NABLA_SHARED=DIR points elsewhere)\n",
            p.display()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    None
}
