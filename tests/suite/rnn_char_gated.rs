//! The character model with gated cells (`nabla rnn train --cell lstm|gru`): it learns a tiny
//! text, its checkpoint records the cell (PyTorch's names under `rnn.`, the readout `head.`,
//! and the LSTM's carried `state.c`), and resume is exact.

use nabla::models::char_rnn::{load_checkpoint, CharTrainConfig, TrainReport};
use nabla::nn::rnn::CellKind;
use nabla::optim::{Adam, AdamConfig};
use nabla::train::{Mode, PlotFormat, ProgressMode, TrainConfig};
use std::path::Path;

/// The model and data of a test run, and the trainer's settings (Adam at 1e-2).
fn args(out: &Path, text: &Path, cell: CellKind) -> (CharTrainConfig, TrainConfig) {
    let c = CharTrainConfig {
        text: Some(text.to_path_buf()),
        hidden: 16,
        cell,
        activation: "tanh".into(),
        k1: 8,
        k2: 12,
        batch: 4,
        val_frac: 0.1,
        test_frac: 0.0,
    };
    let tc = TrainConfig {
        out_dir: out.to_path_buf(),
        seed: 3,
        max_steps: Some(60),
        eval_every: 20,
        log_every: 20,
        clip_grad_norm: Some(5.0),
        monitor: Some(("val_loss".into(), Mode::Min)),
        progress: ProgressMode::Quiet,
        plot: PlotFormat::None,
        ..TrainConfig::default()
    };
    (c, tc)
}

fn train(a: &(CharTrainConfig, TrainConfig)) -> nabla::Result<TrainReport> {
    nabla::models::char_rnn::train(&a.0, a.1.clone(), Adam::new(AdamConfig::new(1e-2))?)
}

fn tiny_text(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("text.txt");
    std::fs::write(&p, "abcabdabcabd\n".repeat(60)).unwrap();
    p
}

#[test]
fn gated_char_models_learn_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tiny_text(tmp.path());
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let d1 = tmp.path().join(format!("{cell}-a"));
        let d2 = tmp.path().join(format!("{cell}-b"));
        let a = args(&d1, &text, cell);
        let r = train(&a).unwrap();
        let metrics = nabla::train::read_metrics_jsonl(d1.join("metrics.jsonl")).unwrap();
        let vals: Vec<f64> = metrics.iter().map(|m| m.metrics["val_loss"]).collect();
        assert_eq!(vals.len(), 3);
        // 5 symbols: a uniform guess is ln 5 = 1.61 nats; the text is nearly deterministic.
        assert!(vals[2] < vals[0], "{cell}: {vals:?}");
        assert!(vals[2] < 1.0, "{cell}: {vals:?}");
        assert!(r.val_nats.unwrap() < 1.0);
        // The checkpoint records the cell and rebuilds it.
        let ck = load_checkpoint(&d1).unwrap();
        assert_eq!(ck.model.config.cell, cell);
        let names: Vec<&str> = ck.model.store.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rnn.weight_ih",
                "rnn.weight_hh",
                "rnn.bias_ih",
                "rnn.bias_hh",
                "head.weight",
                "head.bias"
            ]
        );
        assert_eq!(ck.c.is_some(), cell == CellKind::Lstm);
        let s = ck.model.sample("ab", 20, 0.0, 0).unwrap();
        assert_eq!(s.chars().count(), 20);
        // Resume: 30 steps, then 30 more from the checkpoint, equals 60 in one go.
        let mut b = args(&d2, &text, cell);
        b.1.max_steps = Some(30);
        train(&b).unwrap();
        b.1.max_steps = Some(60);
        b.1.resume = Some(d2.clone());
        train(&b).unwrap();
        let y = load_checkpoint(&d2).unwrap();
        assert_eq!(y.step, 60);
        for (p, q) in ck.model.store.iter().zip(y.model.store.iter()) {
            assert_eq!(p.value, q.value, "{cell} {}", p.name);
        }
        assert_eq!(ck.h, y.h);
        assert_eq!(ck.c, y.c);
        assert_eq!(ck.optim_state, y.optim_state);
    }
}
