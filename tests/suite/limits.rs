//! Sizes are checked before they are used (#15): a run folder's saved configuration is
//! validated as a whole on load, flags that make a run impossible are refused at start, and a
//! run that would need more memory than is available is refused with the number it would need
//! — an error (exit 1), never a panic (101), an abort or minutes of allocation.

use std::path::Path;
use std::process::{Command, Output};

fn nabla_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nabla"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running nabla")
}

fn nabla(args: &[&str]) -> Output {
    nabla_env(args, &[])
}

/// Exit status 1 with `needle` in stderr (and the whole stderr on failure).
fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

/// Rewrites `model_config` of `dir/checkpoint/state.json` with `edit`.
fn edit_state(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("checkpoint/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v["model_config"]);
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("checkpoint")).unwrap();
    for f in std::fs::read_dir(from.join("checkpoint")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join("checkpoint").join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn saved_vit_configs_are_validated_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("vit");
    let o = nabla(&[
        "vit",
        "train",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "32",
        "--steps",
        "1",
        "--batch",
        "16",
        "--train-limit",
        "64",
        "--eval-limit",
        "32",
        "--plain",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (name, key, value, needle) in [
        (
            "patch0",
            "patch",
            serde_json::json!(0),
            "patch size must be positive",
        ),
        (
            "depth32",
            "depth",
            serde_json::json!(1u64 << 32),
            "depth 4294967296 is over the limit",
        ),
        (
            "dim0",
            "dim",
            serde_json::json!(0),
            "embedding dim must be positive",
        ),
        (
            "text",
            "heads",
            serde_json::json!("two"),
            "model_config.vit",
        ),
    ] {
        let bad = dir.path().join(name);
        copy_run(&run, &bad);
        edit_state(&bad, |mc| mc["vit"][key] = value.clone());
        let ck = bad.join("checkpoint");
        let o = nabla(&["vit", "eval", "--checkpoint", ck.to_str().unwrap()]);
        refused(&o, needle);
        refused(&o, "state.json");
    }
}

#[test]
fn saved_char_rnn_configs_are_validated_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("rnn");
    let o = nabla(&[
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
        "2",
        "--eval-every",
        "2",
        "--quiet",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let huge = serde_json::json!(1u64 << 63);
    let h = dir.path().join("h63");
    copy_run(&run, &h);
    edit_state(&h, |mc| mc["hidden"] = huge.clone());
    let o = nabla(&[
        "rnn",
        "sample",
        "--checkpoint",
        h.to_str().unwrap(),
        "--len",
        "5",
    ]);
    refused(
        &o,
        "--hidden must be in 1..=1048576, got 9223372036854775808",
    );
    let b = dir.path().join("b63");
    copy_run(&run, &b);
    // The run's flags (what --resume builds from) and its model config, both edited.
    edit_state(&b, |mc| mc["batch"] = huge.clone());
    let p = b.join("checkpoint/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["train_config"]["command"]["batch"] = huge.clone();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = nabla(&[
        "rnn",
        "train",
        "--resume",
        b.to_str().unwrap(),
        "--steps",
        "4",
        "--quiet",
    ]);
    refused(&o, "--batch must be in 1..=1048576");
}

#[test]
fn impossible_flags_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    refused(
        &nabla(&[
            "vit", "train", "--dim", "0", "--steps", "1", "--plain", "--out", out,
        ]),
        "embedding dim must be positive",
    );
    refused(
        &nabla(&[
            "vit",
            "train",
            "--time-limit",
            "inf",
            "--steps",
            "1",
            "--out",
            out,
        ]),
        "inf is not a finite number",
    );
    refused(
        &nabla(&[
            "rnn",
            "train",
            "--time-limit",
            "inf",
            "--quiet",
            "--out",
            out,
        ]),
        "--time-limit",
    );
    refused(
        &nabla(&["gnn", "influence", "--layers", "1000", "--out", out]),
        "at most 256 layers",
    );
}

/// The memory estimate, against a limit set through `NABLA_MEMORY_LIMIT` so the test does not
/// depend on the machine: what fits runs, what does not is refused with its size.
#[test]
fn runs_that_need_more_memory_than_available_are_refused_with_the_number() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    let lim = [("NABLA_MEMORY_LIMIT", "256M")];
    // ViT: 6 blocks of dim 1024 are 76 M parameters, ×5 with gradients and AdamW = 1.4 GiB.
    let o = nabla_env(
        &[
            "vit", "train", "--dim", "1024", "--heads", "8", "--steps", "1", "--plain", "--out",
            out,
        ],
        &lim,
    );
    refused(&o, "vit train would need about");
    refused(&o, "more than the 256 MiB available (NABLA_MEMORY_LIMIT)");
    // Char RNN: hidden 4096 is 16.8 M weights in U alone, 320 MiB with gradients and Adam.
    let o = nabla_env(
        &[
            "rnn", "train", "--hidden", "4096", "--steps", "1", "--quiet", "--out", out,
        ],
        &lim,
    );
    refused(&o, "rnn train would need about");
    // A window of 10^6 steps.
    let o = nabla_env(
        &[
            "rnn", "train", "--k1", "1000000", "--k2", "1000000", "--quiet", "--out", out,
        ],
        &lim,
    );
    refused(&o, "the k2 = 1000000-step window");
    // A sample of 2^40 characters.
    let o = nabla_env(
        &[
            "rnn",
            "sample",
            "--checkpoint",
            "/nonexistent",
            "--len",
            "1099511627776",
        ],
        &lim,
    );
    refused(&o, "rnn sample would need about 4.0 TiB");
    // The same small model fits under the same limit.
    let o = nabla_env(
        &[
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
            "2",
            "--eval-every",
            "2",
            "--quiet",
            "--out",
            out,
        ],
        &lim,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
