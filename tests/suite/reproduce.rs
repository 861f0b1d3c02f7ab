//! `nabla reproduce` end to end: every entry ok, the assignment's exact values, the formats.
use crate::common;

use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla")
}

fn all() -> Value {
    let out = run(&["reproduce", "--json"]);
    assert!(
        out.status.success(),
        "reproduce failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn vec(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(f).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{what}: got {got:?}, want {want:?}");
    }
}

#[test]
fn every_exercise_is_ok_with_the_exact_values() {
    let v = all();
    let ids = [
        "1.1", "1.2", "1.3", "1.4", "1.5", "2.1", "2.2", "2.3", "2.4", "2.5", "3.1", "3.2", "3.3",
        "3.4",
    ];
    for id in ids {
        assert_eq!(v[id]["ok"], Value::Bool(true), "exercise {id}: {}", v[id]);
    }
    // 1.1: T = 3 → 14 nodes; one W, U, V edge per step.
    assert_eq!(v["1.1"]["values"]["nodes"].as_array().unwrap().len(), 14);
    assert_eq!(v["1.1"]["values"]["edges_per_matrix"]["U"], 3);
    assert!(v["1.1"]["artefact"]["text"]
        .as_str()
        .unwrap()
        .starts_with("digraph"));
    // 1.2–1.4: finite-difference agreement.
    assert!(f(&v["1.2"]["values"]["max_rel_error_vs_fd"]) < 1e-6);
    assert!(f(&v["1.4"]["values"]["max_rel_error_W"]) < 1e-6);
    assert!(f(&v["1.4"]["values"]["max_rel_error_U"]) < 1e-6);
    // 1.5: biased below the full length, exact at it.
    let tr = v["1.5"]["values"]["truncation"].as_array().unwrap();
    assert!(f(&tr[0]["cosine"]) < 0.99);
    assert!(f(&tr.last().unwrap()["rel_error"]) < 1e-10);
    // 2.2 and 2.3: the assignment's numbers.
    assert_close(
        &vec(&v["2.2"]["values"]["h1_next"]),
        &[0.0, 0.8],
        1e-12,
        "2.2",
    );
    assert_close(
        &vec(&v["2.2"]["values"]["aggregate"]),
        &[-0.8, 0.8],
        1e-12,
        "2.2 Agg",
    );
    assert_eq!(v["2.3"]["values"]["edges"], 12);
    assert!(f(&v["2.4"]["values"]["max_abs_difference"]) < 1e-12);
    // 3.1: exact means and population variances.
    let s = &v["3.1"]["values"];
    assert_close(&vec(&s["batch"]["mean"]), &[2.5, 2.5], 1e-12, "batch mean");
    assert_close(
        &vec(&s["batch"]["var"]),
        &[13.0 / 12.0, 17.0 / 12.0],
        1e-12,
        "batch var",
    );
    assert_close(
        &vec(&s["layer"]["mean"]),
        &[17.0 / 6.0, 8.0 / 3.0, 2.5, 2.0],
        1e-12,
        "layer mean",
    );
    assert_close(
        &vec(&s["layer"]["var"]),
        &[41.0 / 36.0, 11.0 / 9.0, 11.0 / 12.0, 4.0 / 3.0],
        1e-12,
        "layer var",
    );
    assert_close(
        &vec(&s["instance"]["mean"]),
        &[
            3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            8.0 / 3.0,
            7.0 / 3.0,
            5.0 / 3.0,
            7.0 / 3.0,
        ],
        1e-12,
        "instance mean",
    );
    assert_close(
        &vec(&s["instance"]["var"]),
        &[
            2.0 / 3.0,
            14.0 / 9.0,
            14.0 / 9.0,
            8.0 / 9.0,
            2.0 / 9.0,
            14.0 / 9.0,
            8.0 / 9.0,
            14.0 / 9.0,
        ],
        1e-12,
        "instance var",
    );
    // 3.3: the exact expectation equals the closed form.
    let d = &v["3.3"]["values"];
    assert!((f(&d["exact_enumeration"]) - f(&d["closed_form"])).abs() < 1e-9);
    assert_eq!(d["closed_form_in_ci"], Value::Bool(true));
    // 4: ViT-B/16 at 224 and nabla's MNIST configuration.
    let b = &v["4"]["values"]["vit_b16_224"];
    assert_eq!(b["patches"], 196);
    assert_eq!(b["sequence_length"], 197);
    assert_eq!(b["parameters"], 86_567_656);
    let m = &v["4"]["values"]["nabla_mnist"];
    assert_eq!(m["sequence_length"], 17);
    assert_eq!(m["parameters"], 139_018);
    // 3.4: the limit from 0 is X⁺y.
    assert!(f(&v["3.4"]["values"]["from_zero"]["dist_to_pinv_solution"]) < 1e-8);
}

#[test]
fn only_and_formats() {
    let out = run(&["reproduce", "--only", "2.2", "--format", "markdown"]);
    assert!(out.status.success());
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("## 2.2") && !md.contains("## 2.3"), "{md}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "reproduce",
        "--only",
        "1.1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let dot = std::fs::read_to_string(dir.path().join("rnn_unrolled.dot")).unwrap();
    assert!(dot.contains("\"h_1\" -> \"h_2\" [label=\"U\"]"), "{dot}");
}

/// `--format latex` is a complete document with the math typeset (not escaped into text), and
/// pdflatex compiles it where it is installed (`.ci/run` installs texlive-latex-base); `--help`
/// points to ASSIGNMENT.md, which exists.
#[test]
fn latex_output_compiles_where_pdflatex_is_installed() {
    let help = run(&["reproduce", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("ASSIGNMENT.md"));
    let assignment = concat!(env!("CARGO_MANIFEST_DIR"), "/ASSIGNMENT.md");
    assert!(std::path::Path::new(assignment).is_file());
    let out = run(&["reproduce", "--format", "latex"]);
    assert!(out.status.success());
    let tex = String::from_utf8(out.stdout).unwrap();
    assert!(tex.starts_with("\\documentclass") && tex.trim_end().ends_with("\\end{document}"));
    assert!(
        tex.is_ascii(),
        "LaTeX output must be plain ASCII for pdflatex"
    );
    let have = Command::new("pdflatex")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    // h_{t−1} is typeset as math, h_{t-1} inside $…$, not printed as "h\_\{t$-$1\}".
    assert!(
        tex.contains("h_{t-1}") && !tex.contains("\\_\\{"),
        "math escaped as text"
    );
    if !have {
        // Written past libtest's capture, so the skip shows without --nocapture.
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"SKIPPED reproduce: pdflatex is not installed, so the LaTeX output was not compiled \
              (apt-get install texlive-latex-base)\n",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.tex"), &tex).unwrap();
    let st = Command::new("pdflatex")
        .args(["-interaction=nonstopmode", "-halt-on-error", "r.tex"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "pdflatex failed:\n{}",
        String::from_utf8_lossy(&st.stdout)
    );
    let pdf = std::fs::read(dir.path().join("r.pdf")).unwrap();
    assert!(
        pdf.starts_with(b"%PDF") && pdf.len() > 10_000,
        "{} bytes",
        pdf.len()
    );
    let log = String::from_utf8_lossy(&st.stdout);
    assert!(!log.contains("Missing character"), "{log}");
}

/// The assignment's exact values again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &["every_exercise_is_ok_with_the_exact_values"],
    );
}
