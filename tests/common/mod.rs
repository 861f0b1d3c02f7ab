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
//! the folder any other way (`tests/suite/cli.rs::shared_folder_is_located_only_by_tests_common`
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
/// of each `rel` in each test file writes `SKIPPED <file>: ...` to stderr.
#[allow(dead_code)] // each test binary compiles this module; not every one uses both helpers
#[track_caller]
pub fn shared(rel: &str) -> Option<PathBuf> {
    locate(
        rel,
        "SKIPPED",
        "the tests that compare against it pass without checking",
    )
}

/// `ROOT/rel` if it exists, else `None`: the caller substitutes built-in data, described by
/// `fallback` in the one line written on the first miss (`FALLBACK <file>: ...`).
#[allow(dead_code)]
#[track_caller]
pub fn shared_or_fallback(rel: &str, fallback: &str) -> Option<PathBuf> {
    locate(rel, "FALLBACK", fallback)
}

/// The calling test file's name (`tests/suite/vit.rs` → `vit`): the suite is one binary.
#[track_caller]
fn caller_file() -> String {
    let file = std::path::Path::new(std::panic::Location::caller().file());
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[track_caller]
fn locate(rel: &str, tag: &str, consequence: &str) -> Option<PathBuf> {
    let p = root().join(rel);
    if p.exists() {
        return Some(p);
    }
    let bin = caller_file();
    static REPORTED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    let first = REPORTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((bin.clone(), rel.to_string()));
    if first {
        // One write of one whole line, so parallel tests cannot split it.
        let line = format!(
            "{tag} {bin}: {} is absent, so {consequence} (NABLA_SHARED=DIR points elsewhere)\n",
            p.display()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    None
}

/// Set in the child processes of [`rerun_on_other_kernel_paths`], so they do not recurse.
const RERUN_ENV: &str = "NABLA_TEST_KERNEL_PATH_RERUN";

/// Runs the tests `names` (names within the calling file, e.g. `grad_losses`; `module` is the
/// caller's `module_path!()`, which gives the prefix they have in the one-binary suite,
/// `tests/suite/`) of this test binary again, each time
/// in one child process, on every kernel path this CPU has besides the one this process uses
/// (`NABLA_ISA=scalar`, `avx2`, … — the path is fixed per process at the first kernel call, so
/// a child is the only way to switch it). Asserts that each child ran exactly those tests and
/// that all passed; returns the paths run. Inside such a child it does nothing.
///
/// The integration tests that matter across paths — gradient checks, PyTorch fixtures, exact
/// resume — call this from one test per binary, so the default run exercises every path.
#[allow(dead_code)]
pub fn rerun_on_other_kernel_paths(module: &str, names: &[&str]) -> Vec<&'static str> {
    use nabla::kernels::isa;
    if std::env::var_os(RERUN_ENV).is_some() {
        return Vec::new();
    }
    // libtest names a test by its path below the crate root: `vit::grad_losses` in the suite,
    // `grad_losses` in a binary of its own.
    let prefix = module
        .split_once("::")
        .map(|(_, m)| format!("{m}::"))
        .unwrap_or_default();
    let names: Vec<String> = names.iter().map(|n| format!("{prefix}{n}")).collect();
    let exe = std::env::current_exe().expect("the test binary's path");
    let here = isa::selected();
    let mut ran = Vec::new();
    for path in isa::detected().into_iter().filter(|&p| p != here) {
        let out = std::process::Command::new(&exe)
            .args(&names)
            .args(["--exact", "--quiet"])
            .env("NABLA_ISA", path.name())
            .env(RERUN_ENV, "1")
            .output()
            .expect("running the test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tail = |s: &str| {
            s.chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        };
        assert!(
            out.status.success(),
            "on NABLA_ISA={path} the tests {names:?} failed:\n{}\n{}",
            tail(&stdout),
            tail(&String::from_utf8_lossy(&out.stderr))
        );
        // "test result: ok. N passed; …": every named test ran (a misspelt name would not).
        let passed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("test result: ok. "))
            .and_then(|l| l.split_once(" passed"))
            .and_then(|(n, _)| n.trim().parse::<usize>().ok());
        assert_eq!(
            passed,
            Some(names.len()),
            "on NABLA_ISA={path}: expected {} tests to pass:\n{}",
            names.len(),
            tail(&stdout)
        );
        ran.push(path.name());
    }
    if !ran.is_empty() {
        // One line past libtest's capture (as the skip lines above), so a plain `cargo test`
        // shows which paths each file's tests ran on.
        let line = format!(
            "KERNEL PATHS {}: {} tests passed again on {}\n",
            module.split_once("::").map_or(module, |(_, m)| m),
            names.len(),
            ran.join(", ")
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    ran
}
