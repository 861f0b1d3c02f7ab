//! The character-level Elman language model: learning, TBPTT memory, resume, sampling, bad input.
use crate::common;

use nabla::models::char_rnn::{load_checkpoint, CharRnn, CharTrainConfig, TrainReport};
use nabla::optim::{Adam, AdamConfig};
use nabla::train::{read_metrics_jsonl, read_test_record, Mode, ProgressMode, TrainConfig};
use std::path::Path;

/// The model and data, the trainer's settings and Adam's rate of a test run.
struct Args {
    c: CharTrainConfig,
    tc: TrainConfig,
    lr: f64,
}

fn args(out: &Path) -> Args {
    Args {
        c: CharTrainConfig {
            text: None,
            hidden: 24,
            cell: Default::default(),
            activation: "tanh".into(),
            k1: 8,
            k2: 12,
            batch: 8,
            val_frac: 0.05,
            test_frac: 0.05,
        },
        tc: TrainConfig {
            out_dir: out.to_path_buf(),
            seed: 1,
            max_steps: Some(150),
            eval_every: 50,
            clip_grad_norm: Some(5.0),
            monitor: Some(("val_loss".into(), Mode::Min)),
            progress: ProgressMode::Quiet,
            ..TrainConfig::default()
        },
        lr: 1e-2,
    }
}

fn train(a: &Args) -> nabla::Result<TrainReport> {
    nabla::models::char_rnn::train(&a.c, a.tc.clone(), Adam::new(AdamConfig::new(a.lr))?)
}

#[test]
fn learns_the_reber_corpus_and_samples_grammatical_strings() {
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path());
    let r = train(&a).unwrap();
    // 8 symbols: a uniform guess is ln 8 = 2.08 nats. The embedded Reber grammar has on average
    // well under 1 nat of choice per symbol.
    let v = r.val_nats.unwrap();
    assert!(v < 1.0, "validation {v} nats after {} steps", r.steps);
    assert!((r.val_bpc.unwrap() - v / std::f64::consts::LN_2).abs() < 1e-12);
    // Memory of streaming TBPTT: the window's states only, (k2 + 1)·batch·hidden floats.
    assert_eq!(r.peak_state_floats, 13 * 8 * 24);
    // Atomic writes leave exactly the trainer's run folder (no temporaries), with its lock.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .map(|n: String| {
            if n.starts_with(nabla::train::tfevents::FILE_PREFIX) {
                "events.out.tfevents.*".into()
            } else {
                n
            }
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "best",
            "checkpoint",
            "config.json",
            "events.out.tfevents.*",
            "metrics.jsonl",
            "metrics.svg"
        ]
    );
    let metrics = read_metrics_jsonl(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.step).collect::<Vec<_>>(),
        [50, 100, 150]
    );
    // best/ is the evaluation with the lowest validation loss; the test tail is evaluated once,
    // on those weights, after training.
    let best = metrics
        .iter()
        .min_by(|a, b| a.metrics["val_loss"].total_cmp(&b.metrics["val_loss"]))
        .unwrap();
    let t = read_test_record(dir.path().join("metrics.jsonl"))
        .unwrap()
        .unwrap();
    assert_eq!(t.selected_step, best.step);
    assert_eq!(t.selected_by.as_deref(), Some("val_loss"));
    // Through JSON text: equal to the last digits serde_json keeps.
    assert!((t.metrics["test_loss"] - r.test_nats.unwrap()).abs() < 1e-12);
    assert!(r.test_nats.unwrap() < 1.0, "{r:?}");
    assert!(metrics.iter().all(|m| !m.metrics.contains_key("test_loss")));
    let last = &metrics[2].metrics;
    // Through JSON text (serde_json may round the last digit).
    assert!((last["val_loss"] - v).abs() < 1e-12);
    assert!((last["val_bpc"] - v / std::f64::consts::LN_2).abs() < 1e-12);

    let ck = load_checkpoint(dir.path()).unwrap();
    assert_eq!(ck.step, 150);
    let s = ck.model.sample("B", 400, 0.5, 3).unwrap();
    let text: String = format!("B{s}");
    // Whole lines after the first: start with B, end with E.
    let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let complete = &lines[..lines.len().saturating_sub(1)];
    assert!(complete.len() >= 5, "{text}");
    let ok = complete
        .iter()
        .filter(|l| l.starts_with('B') && l.ends_with('E'))
        .count();
    assert!(
        ok * 10 >= complete.len() * 8,
        "{ok}/{}: {text}",
        complete.len()
    );
    let e = ck.model.sample("Bz", 5, 1.0, 0).unwrap_err().to_string();
    assert!(e.contains("'z'"), "{e}");
    assert!(ck.model.sample("B", 5, -1.0, 0).is_err());
}

#[test]
fn resume_continues_exactly() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let mut a = args(d1.path());
    a.tc.max_steps = Some(12);
    a.tc.eval_every = 6;
    train(&a).unwrap();
    let mut b = args(d2.path());
    b.tc.max_steps = Some(6);
    b.tc.eval_every = 6;
    train(&b).unwrap();
    b.tc.max_steps = Some(12);
    b.tc.resume = Some(d2.path().to_path_buf());
    train(&b).unwrap();
    let (x, y) = (
        load_checkpoint(d1.path()).unwrap(),
        load_checkpoint(d2.path()).unwrap(),
    );
    assert_eq!((x.step, y.step), (12, 12));
    for (p, q) in x.model.store.iter().zip(y.model.store.iter()) {
        assert_eq!(p.value, q.value, "{}", p.name);
    }
    assert_eq!(x.h, y.h);
    assert_eq!(x.optim_state, y.optim_state);
    assert_eq!(x.state.rng, y.state.rng);
    // The same evaluations, bit for bit, before and after the interruption.
    let (mx, my) = (
        read_metrics_jsonl(d1.path().join("metrics.jsonl")).unwrap(),
        read_metrics_jsonl(d2.path().join("metrics.jsonl")).unwrap(),
    );
    assert_eq!(mx.len(), 2);
    assert_eq!(my.len(), 2);
    for (p, q) in mx.iter().zip(&my) {
        assert_eq!((p.step, p.train_loss), (q.step, q.train_loss));
        assert_eq!(p.metrics, q.metrics);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(&dir.path().join("o"));
    let write = |name: &str, s: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    a.c.text = Some(write("empty.txt", ""));
    assert!(train(&a).unwrap_err().to_string().contains("0 characters"));
    a.c.text = Some(write("one.txt", "x"));
    assert!(train(&a).unwrap_err().to_string().contains("1 character"));
    a.c.text = Some(dir.path().join("missing.txt"));
    assert!(train(&a).unwrap_err().to_string().contains("missing.txt"));
    a.c.text = None;
    a.c.k1 = 10;
    a.c.k2 = 5;
    let e = train(&a).unwrap_err().to_string();
    assert!(e.contains("k2 >= k1"), "{e}");
    a.c.k2 = 10;
    a.c.activation = "softsign".into();
    assert!(train(&a).unwrap_err().to_string().contains("softsign"));
    a.c.activation = "tanh".into();
    // A step size so large that the logits overflow: the loss becomes non-finite.
    a.lr = 1e38;
    a.tc.max_steps = Some(20);
    let e = train(&a).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    // A half-written (truncated) checkpoint is refused with the path in the message.
    let good = tempfile::tempdir().unwrap();
    let mut g = args(good.path());
    g.tc.max_steps = Some(2);
    train(&g).unwrap();
    let p = good.path().join("checkpoint").join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_checkpoint(good.path()).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    // Training again into a folder that holds a run needs --resume or --overwrite.
    let e = train(&g).unwrap_err().to_string();
    assert!(e.contains("--resume"), "{e}");
    // Resume without a checkpoint.
    let mut r = args(&dir.path().join("none"));
    r.tc.resume = Some(dir.path().join("none"));
    assert!(train(&r).is_err());
    let _ = CharRnn::new; // the model type is public for other tools
}

#[test]
fn cli_train_and_sample() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "rnn",
            "train",
            "--hidden",
            "8",
            "--steps",
            "3",
            "--eval-every",
            "3",
            "--batch",
            "2",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 3);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["rnn", "sample", "--len", "20", "--prime", "BT"])
        .arg("--checkpoint")
        .arg(out.join("checkpoint"))
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .strip_suffix('\n')
            .unwrap()
            .chars()
            .count(),
        22
    );
    // --resume DIR takes the run's flags (hidden 8, batch 2, the Adam rate, …): given only
    // --steps it extends the run; a model flag typed with another value is refused.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["rnn", "train", "--steps", "5", "--resume"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(load_checkpoint(&out).unwrap().step, 5);
    assert_eq!(load_checkpoint(&out).unwrap().model.config.hidden, 8);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "rnn", "train", "--hidden", "9", "--optim", "sgd", "--resume",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--hidden: the run has 8, this command line 9")
            && err.contains("--optim: the run has adam, this command line sgd"),
        "{err}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["rnn", "train", "--k1", "9", "--k2", "3", "--steps", "1"])
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("k2 >= k1") && !err.contains("panicked"),
        "{err}"
    );
}

/// The exact resume again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(module_path!(), &["resume_continues_exactly"]);
}
