//! The binary end to end: JSON outputs parse, errors exit non-zero with a message.

use std::path::Path;
use std::process::{Command, Stdio};

fn nabla(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla")
}

#[test]
fn info_json_reports_version_threads_and_rate() {
    let out = nabla(&["info", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["threads"].as_u64().unwrap() >= 1);
    assert!(v["matmul_f32_512_gflops"].as_f64().unwrap() > 0.0);
    assert!(!v["cpu"].as_str().unwrap().is_empty());
    let detected: Vec<&str> = v["isa_detected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(detected.last(), Some(&"scalar"));
    assert_eq!(v["isa_selected"], detected[0]);
    let (p1, pall) = (
        v["fma_peak_gflops_1_thread"].as_f64().unwrap(),
        v["fma_peak_gflops"].as_f64().unwrap(),
    );
    assert!(p1 > 0.0 && pall > 0.0);
    let (b1, ball) = (
        v["copy_bandwidth_gbs_1_thread"].as_f64().unwrap(),
        v["copy_bandwidth_gbs"].as_f64().unwrap(),
    );
    // Any machine copies faster than 0.1 GB/s and slower than 100 TB/s.
    assert!(
        (0.1..1e5).contains(&b1) && (0.1..1e5).contains(&ball),
        "{b1} {ball}"
    );
}

/// `NABLA_ISA` forces a path (shown by `info`); an unknown path or one the CPU lacks is a
/// clear error at start, exit 2, never an illegal instruction.
#[test]
fn nabla_isa_forces_a_path_and_bad_values_are_errors() {
    let run = |isa: &str| {
        Command::new(env!("CARGO_BIN_EXE_nabla"))
            .args(["info", "--json"])
            .env("NABLA_ISA", isa)
            .output()
            .unwrap()
    };
    let out = run("scalar");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["isa_selected"], "scalar");
    assert_eq!(v["isa_forced"], true);
    let out = run("sse9");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NABLA_ISA") && err.contains("sse9"), "{err}");
    let other = if cfg!(target_arch = "x86_64") {
        "neon"
    } else {
        "avx512"
    };
    let out = run(other);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks"));
}

#[test]
fn bench_matmul_json_follows_the_convention() {
    let out = nabla(&[
        "bench",
        "matmul",
        "--json",
        "--min-time",
        "0",
        "--warmup",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Per thread count: the FMA peak, then the products with their fraction of it.
    assert!(lines.len() >= 7);
    let peaks = lines.iter().filter(|r| r["name"] == "fma_peak").count();
    assert!(peaks >= 1 && lines[0]["name"] == "fma_peak");
    for r in &lines {
        let keys: &[&str] = if r["name"] == "fma_peak" {
            &[
                "threads",
                "median_s",
                "min_s",
                "max_s",
                "reps",
                "gflops",
                "fraction_of_peak",
            ]
        } else {
            assert_eq!(r["name"], "matmul");
            &[
                "m",
                "n",
                "k",
                "threads",
                "median_s",
                "min_s",
                "max_s",
                "reps",
                "gflops",
                "fraction_of_peak",
            ]
        };
        for k in keys {
            assert!(r.get(k).is_some(), "missing {k} in {r}");
        }
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
        assert!(r["min_s"].as_f64().unwrap() <= r["median_s"].as_f64().unwrap());
        assert!(r["median_s"].as_f64().unwrap() <= r["max_s"].as_f64().unwrap());
    }
}

/// Every `nabla bench` row reports its fraction of a ceiling: of the FMA peak (compute-bound
/// rows) or of the copy bandwidth (memory-bound rows), with the figure it is computed from.
#[test]
fn every_bench_row_reports_a_fraction_of_peak_or_bandwidth() {
    let quick = ["--json", "--min-time", "0", "--warmup", "0"];
    let runs: [&[&str]; 4] = [
        &["norm", "--shape", "4,4,8", "--layer", "layer"],
        &["gnn", "--model", "gcn"],
        &[
            "rnn",
            "--batch",
            "2",
            "--input",
            "3",
            "--hidden",
            "8",
            "--output",
            "2",
            "--seq-len",
            "5",
        ],
        &[
            "vit",
            "--batch",
            "4",
            "--depth",
            "1",
            "--dim",
            "16",
            "--mlp-dim",
            "32",
        ],
    ];
    for args in runs {
        let all: Vec<&str> = ["bench"]
            .iter()
            .chain(args)
            .chain(&quick)
            .copied()
            .collect();
        let out = nabla(&all);
        assert!(
            out.status.success(),
            "{all:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(!rows.is_empty(), "{all:?}");
        for r in &rows {
            let peak = r.get("fraction_of_peak").and_then(|v| v.as_f64());
            let bw = r.get("fraction_of_bandwidth").and_then(|v| v.as_f64());
            assert!(
                peak.is_some() || bw.is_some(),
                "{all:?}: no fraction in {r}"
            );
            if peak.is_some() {
                assert!(r["gflops"].as_f64().unwrap() > 0.0, "{r}");
            }
            if bw.is_some() {
                assert!(
                    r["bytes"].as_u64().unwrap() > 0 && r["copy_gbs"].as_f64().unwrap() > 0.0,
                    "{r}"
                );
            }
            for f in [peak, bw].into_iter().flatten() {
                assert!(f.is_finite() && f > 0.0, "{all:?}: {r}");
            }
        }
    }
}

#[test]
fn unknown_exercise_is_a_clear_error() {
    let out = nabla(&["reproduce", "--only", "9.9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("9.9") && err.contains("1.1"), "{err}");
}

#[test]
fn bad_flags_exit_nonzero() {
    let out = nabla(&["bench", "matmul", "--min-time", "abc"]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
}

/// The write end of a pipe whose read end is already closed: a stdout whose reader has gone
/// before the first byte (`nabla … | true`), so every write fails with EPIPE, whatever the
/// timing.
fn closed_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fresh descriptors; the read end is closed at once and the
    // write end is owned by the File from here on.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        Stdio::from(std::fs::File::from_raw_fd(fds[1]))
    }
}

fn run_with_stdout(args: &[&str], stdout: Stdio) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .expect("running nabla")
}

/// A small `rnn train` run (built-in corpus, 10 updates) in `out`; its own arguments.
fn tiny_rnn_train(out: &str) -> Vec<&str> {
    vec![
        "rnn",
        "train",
        "--hidden",
        "16",
        "--k1",
        "8",
        "--k2",
        "8",
        "--batch",
        "4",
        "--steps",
        "10",
        "--eval-every",
        "5",
        "--quiet",
        "--out",
        out,
    ]
}

/// Every command that prints ends quietly when its stdout's reader has gone: status 141 (what
/// a shell reports for SIGPIPE) and nothing on stderr — no panic. A training run has written
/// its checkpoint before it prints its report.
#[test]
fn a_closed_stdout_ends_every_command_with_141_and_no_message() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("rnn");
    let run_s = run.to_str().unwrap();
    let o = nabla(&tiny_rnn_train(run_s));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let influence = tmp.path().join("influence");
    let cases: Vec<Vec<&str>> = vec![
        vec!["reproduce"],
        vec!["reproduce", "--json"],
        vec!["reproduce", "--only", "2.2", "--format", "latex"],
        vec!["bench", "matmul", "--min-time", "0", "--warmup", "0"],
        vec!["rnn", "sample", "--checkpoint", run_s, "--len", "500000"],
        vec![
            "rnn", "train", "--resume", run_s, "--steps", "15", "--quiet",
        ],
        vec!["gnn", "influence", "--out", influence.to_str().unwrap()],
    ];
    for args in cases {
        let o = run_with_stdout(&args, closed_pipe());
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {e}");
        assert!(e.is_empty(), "{args:?} printed on stderr: {e}");
    }
    // The interrupted report did not undo the training: the checkpoint is at step 15.
    assert_eq!(
        nabla::models::char_rnn::load_checkpoint(&run).unwrap().step,
        15
    );
    // --help and --version print through the same path.
    for args in [&["--help"][..], &["--version"], &["rnn", "train", "--help"]] {
        let o = run_with_stdout(args, closed_pipe());
        assert_eq!(o.status.code(), Some(141), "{args:?}");
        assert!(o.stderr.is_empty(), "{args:?}");
    }
}

/// A full stdout (`> /dev/full`) is a one-line error naming the cause, status 1, no panic.
#[test]
fn a_full_stdout_is_a_one_line_error() {
    if !Path::new("/dev/full").exists() {
        eprintln!("no /dev/full on this system: nothing to check");
        return;
    }
    for args in [
        &["bench", "matmul", "--min-time", "0", "--warmup", "0"][..],
        &["reproduce", "--only", "1.1"],
        &["--help"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = run_with_stdout(args, Stdio::from(full));
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(
            e.starts_with("error: cannot write to standard output: No space left on device")
                && e.contains("is full"),
            "{args:?}: {e}"
        );
    }
}

/// A NaN or infinite value is refused for every floating-point flag, before anything runs:
/// status 1 and the flag named (`--min-delta NaN` used to keep the first epoch as the best).
#[test]
fn non_finite_values_of_float_flags_are_refused() {
    let cases: [(&[&str], &str); 6] = [
        (&["gnn", "train", "--min-delta", "NaN"], "--min-delta"),
        (&["gnn", "train", "--lr", "inf"], "--lr"),
        (
            &["rnn", "sample", "--checkpoint", "x", "--temperature", "nan"],
            "--temperature",
        ),
        (
            &["vit", "train", "--out", "x", "--label-smoothing=-inf"],
            "--label-smoothing",
        ),
        (&["bench", "matmul", "--min-time", "NaN"], "--min-time"),
        (&["rnn", "analyze", "--gain", "infinity"], "--gain"),
    ];
    for (args, flag) in cases {
        let o = nabla(args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(
            e.contains(&format!("{flag}: ")) && e.contains("is not a finite number"),
            "{args:?}: {e}"
        );
        assert!(o.stdout.is_empty());
    }
    assert!(!Path::new("x").exists());
}

/// `.ci/run`'s second pass (`NABLA_SHARED=/nonexistent`) sees what a fresh clone sees only if
/// every test finds the shared folder through `tests/common` (which honours `NABLA_SHARED`):
/// no other string literal in src/ or tests/ may name `../shared`.
#[test]
fn shared_folder_is_located_only_by_tests_common() {
    // Split so that this file does not match itself.
    let needle = ["..", "/shared"].concat();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack = vec![root.join("src"), root.join("tests")];
    let (mut offenders, mut files) = (Vec::new(), 0);
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests/common/mod.rs") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                // The odd pieces between quotes are string literals.
                if line
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .any(|lit| lit.contains(&needle))
                {
                    offenders.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                }
            }
        }
    }
    assert!(files > 50, "scanned only {files} files");
    assert!(
        offenders.is_empty(),
        "use common::shared / shared_or_fallback instead:\n{}",
        offenders.join("\n")
    );
}

/// `NABLA_PROFILE=1` prints the time per op, forward and backward, on stderr at the end: the
/// GAT epoch's ops are there with their call counts, and without the variable nothing is.
#[test]
fn nabla_profile_prints_the_time_per_op() {
    let args = [
        "bench",
        "gnn",
        "--model",
        "gat",
        "--min-time",
        "0",
        "--warmup",
        "1",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .env("NABLA_PROFILE", "1")
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("op (NABLA_PROFILE)"), "{err}");
    for op in [
        "sparse_linear",
        "weighted_aggregate",
        "edge_softmax",
        "cross_entropy",
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("no {op} in {err}"));
        // forward s, calls, backward s, calls, share: every op ran forward and backward.
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(
            f[2].parse::<u64>().unwrap() >= 1 && f[4].parse::<u64>().unwrap() >= 1,
            "{line}"
        );
    }
    let quiet = nabla(&args);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("NABLA_PROFILE"));
}
