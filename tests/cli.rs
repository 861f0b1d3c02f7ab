//! The binary end to end: JSON outputs parse, errors exit non-zero with a message.

use std::process::Command;

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
