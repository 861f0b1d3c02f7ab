//! Full-batch node classification on the shared [`crate::train::Trainer`]: one training step is
//! one epoch (a forward over the whole graph with dropout, cross-entropy on the training nodes,
//! backward); the trainer does the optimizer step (Adam with L2 weight decay as in the GCN/GAT
//! papers), clipping, the schedule, evaluation after every epoch, early stopping on the monitored
//! validation metric, checkpoints, exact resume, progress and `metrics.jsonl`.
//!
//! Every evaluation reports `val_loss` and `val_acc` on the data set's own validation nodes
//! (Planetoid's official 500); the model is *selected* on validation only (monitoring a `test_*`
//! metric is refused). The test nodes are evaluated once, after training, on the weights the
//! trainer kept in `OUT/best/` ([`TrainModel::test`]): that `test_acc` (the last line of
//! `metrics.jsonl`) is the reported test accuracy of the best-validation model.

use crate::autograd::{ParamStore, Tape};
use crate::data::planetoid::NodeDataset;
use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::models::gnn::{GnnConfig, GnnKind, GnnModel, GraphInput};
use crate::nn::module::Ctx;
use crate::ops::{self, CrossEntropyOptions};
use crate::optim::{Adam, AdamConfig, Optimizer};
use crate::tensor::Tensor;
use crate::train::{
    read_metrics_jsonl, EarlyStopping, Metrics, Mode, PlotFormat, StepOutput, TrainConfig,
    TrainModel, Trainer,
};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};

/// Outcome of one training run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub model: String,
    pub dataset: String,
    pub seed: u64,
    /// Epochs (= optimizer steps) completed, over all resumed sessions.
    pub epochs_run: u64,
    /// Epochs completed at the best evaluation of the monitored metric.
    pub best_epoch: u64,
    /// The monitored validation metric (`val_acc` unless `--monitor` says otherwise).
    pub monitor: String,
    pub best_val_acc: f64,
    pub best_val_loss: f64,
    /// Test accuracy of the best-validation model (NaN when the data has no test nodes).
    pub test_acc: f64,
    /// Mean training loss of the last epoch (with dropout).
    pub final_train_loss: f64,
    /// `completed`, `early_stopped` or `interrupted`.
    pub outcome: String,
    /// Training seconds, summed over resumed sessions.
    pub seconds: f64,
    pub params: usize,
    pub run_dir: PathBuf,
}

/// Mean cross-entropy and accuracy of `logits (N, C)` over `nodes`.
pub fn loss_and_accuracy(
    logits: &Tensor<f32>,
    labels: &[Option<usize>],
    nodes: &[usize],
) -> (f64, f64) {
    let c = logits.dim(1);
    let (mut loss, mut correct) = (0.0, 0usize);
    for &i in nodes {
        let row: Vec<f64> = logits.data()[i * c..(i + 1) * c]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        let y = labels[i].unwrap_or(0);
        loss += lse - row[y];
        let pred = (0..c)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap_or(0);
        correct += usize::from(pred == y);
    }
    let n = nodes.len().max(1) as f64;
    (loss / n, correct as f64 / n)
}

fn targets(ds: &NodeDataset, nodes: &[usize], what: &str) -> Result<Vec<usize>> {
    nodes
        .iter()
        .map(|&i| {
            ds.labels.get(i).copied().flatten().ok_or_else(|| {
                invalid!(
                    "{what} node {i} has no label (or is out of range for {} nodes)",
                    ds.num_nodes()
                )
            })
        })
        .collect()
}

/// A GNN node classifier with its data set, as a [`TrainModel`]: full batch, one step = one epoch.
pub struct NodeClassifier<'a> {
    ds: &'a NodeDataset,
    input: GraphInput,
    model: GnnModel,
    store: ParamStore<f32>,
    y_train: Vec<usize>,
}

impl<'a> NodeClassifier<'a> {
    /// Checks the split (every train/val/test node labelled, classes in range, validation
    /// non-empty) and initializes the parameters from `init_rng`.
    pub fn new(ds: &'a NodeDataset, cfg: &GnnConfig, init_rng: &mut Rng) -> Result<Self> {
        let y_train = targets(ds, &ds.train, "training")?;
        targets(ds, &ds.val, "validation")?;
        targets(ds, &ds.test, "test")?;
        if ds.train.is_empty() {
            return Err(invalid!("data set {} has no training nodes", ds.name));
        }
        if ds.val.is_empty() {
            return Err(invalid!(
                "early stopping needs validation nodes; data set {} has none",
                ds.name
            ));
        }
        let all = ds.train.iter().chain(&ds.val).chain(&ds.test);
        if let Some(c) = all
            .filter_map(|&i| ds.labels[i])
            .find(|&c| c >= ds.num_classes)
        {
            return Err(invalid!(
                "class {c} out of range for {} classes",
                ds.num_classes
            ));
        }
        gnn_memory(ds, cfg).check(&format!("gnn train --model {}", cfg.kind.name()))?;
        let input = GraphInput::new(&ds.features, &ds.graph)?;
        let mut store = ParamStore::<f32>::new();
        let model = GnnModel::new(
            &mut store,
            cfg.clone(),
            ds.features.cols(),
            ds.num_classes,
            init_rng,
        )?;
        Ok(NodeClassifier {
            ds,
            input,
            model,
            store,
            y_train,
        })
    }

    /// Logits `(N, C)` of the whole graph without dropout.
    pub fn logits(&self) -> Result<Tensor<f32>> {
        let mut tape = Tape::<f32>::no_grad();
        let out = self
            .model
            .forward(&mut tape, &self.store, &self.input, &mut Ctx::eval())?;
        Ok(tape.value(out).clone())
    }
}

impl TrainModel<f32> for NodeClassifier<'_> {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    /// One full-batch epoch; dropout masks come from the trainer's `rng` (saved in checkpoints,
    /// so a resumed run draws the same masks).
    fn train_step(&mut self, _step: u64, rng: &mut Rng) -> Result<StepOutput> {
        let mut tape = Tape::<f32>::new();
        let logits =
            self.model
                .forward(&mut tape, &self.store, &self.input, &mut Ctx::train(rng))?; // (N, C)
        let z = ops::gather_rows(&mut tape, logits, &self.ds.train)?; // (N_train, C)
        let loss =
            ops::cross_entropy(&mut tape, z, &self.y_train, &CrossEntropyOptions::default())?;
        let loss_value = tape.value(loss).item() as f64;
        // Accuracy of the dropout forward on the training nodes, as PyG's examples print it.
        let zv = tape.value(z);
        let c = zv.dim(1);
        let correct = self
            .y_train
            .iter()
            .enumerate()
            .filter(|&(r, &y)| {
                let row = &zv.data()[r * c..(r + 1) * c];
                (0..c).max_by(|&a, &b| row[a].total_cmp(&row[b])) == Some(y)
            })
            .count();
        if loss_value.is_finite() {
            tape.backward(loss)?;
            tape.accumulate_grads(&mut self.store)?;
        }
        Ok(StepOutput::new(loss_value, self.y_train.len())
            .with("train_acc", correct as f64 / self.y_train.len() as f64))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let logits = self.logits()?;
        let (vl, va) = loss_and_accuracy(&logits, &self.ds.labels, &self.ds.val);
        let mut m = Metrics::new();
        m.insert("val_loss".into(), vl);
        m.insert("val_acc".into(), va);
        Ok(m)
    }
    fn test(&mut self) -> Result<Option<Metrics>> {
        if self.ds.test.is_empty() {
            return Ok(None);
        }
        let (tl, ta) = loss_and_accuracy(&self.logits()?, &self.ds.labels, &self.ds.test);
        let mut m = Metrics::new();
        m.insert("test_loss".into(), tl);
        m.insert("test_acc".into(), ta);
        Ok(Some(m))
    }
    fn config_json(&self) -> serde_json::Value {
        let c = &self.model.config;
        json!({
            "model": c.kind.name(),
            "hidden": c.hidden,
            "heads": c.heads,
            "dropout": c.dropout,
            "attn_dropout": c.attn_dropout,
            "aggr": c.aggr.name(),
            "dataset": self.ds.name,
            "nodes": self.ds.num_nodes(),
            "edges": self.ds.graph.num_edges(),
            "features": self.ds.features.cols(),
            "classes": self.ds.num_classes,
            "split": [self.ds.train.len(), self.ds.val.len(), self.ds.test.len()],
        })
    }
    fn steps_per_epoch(&self) -> Option<u64> {
        Some(1)
    }
}

/// The memory of a full-batch step: the first layer's weights (features × hidden·heads, with
/// gradient, Adam's moments and the `best/` copy), per node about 8 hidden rows per head
/// (projections, messages, aggregates, dropout masks and their gradients), per edge and head
/// 6 values (scores, weights, masks, gradients), and for the dense model the `N × N` scores
/// and weights of every head with their gradients.
fn gnn_memory(ds: &NodeDataset, cfg: &GnnConfig) -> crate::memory::Estimate {
    let (n, e) = (
        ds.num_nodes() as f64,
        ds.graph.num_edges() as f64 + ds.num_nodes() as f64,
    );
    let (h, k) = (cfg.hidden as f64, cfg.heads.max(1) as f64);
    let f = ds.features.cols() as f64;
    let dense = if cfg.kind == GnnKind::Dense {
        4.0 * k * n * n
    } else {
        0.0
    };
    crate::memory::Estimate::new()
        .f32s("weights and optimizer state", 5.0 * f * h * k)
        .f32s("node activations", 8.0 * n * h * k + 2.0 * n * f)
        .f32s("edge activations", 6.0 * e * k)
        .f32s("dense attention", dense)
}

/// The trainer settings of the papers: `cfg.epochs` epochs, evaluation every epoch, the best
/// checkpoint and early stopping (`cfg.patience` epochs) on `val_acc`, an SVG plot.
pub fn gnn_train_config(cfg: &GnnConfig, out_dir: impl Into<PathBuf>, seed: u64) -> TrainConfig {
    TrainConfig {
        out_dir: out_dir.into(),
        seed,
        epochs: Some(cfg.epochs as u64),
        eval_every: 0,
        monitor: Some(("val_acc".into(), Mode::Max)),
        early_stopping: Some(EarlyStopping {
            patience: cfg.patience as u64,
            min_delta: 0.0,
        }),
        plot: PlotFormat::Svg,
        ..TrainConfig::default()
    }
}

/// Adam with the configuration's rate and L2 weight decay (GCN: 0.01, 5e-4; GAT: 0.005, 5e-4).
pub fn paper_optimizer(cfg: &GnnConfig) -> Result<Adam<f32>> {
    Adam::new(AdamConfig::new(cfg.lr).weight_decay(cfg.weight_decay))
}

/// Trains one model on the trainer (`train.seed` initializes the parameters and seeds dropout)
/// and reports the test accuracy of the best-validation evaluation.
pub fn train_node_classifier<O: Optimizer<f32>>(
    ds: &NodeDataset,
    cfg: &GnnConfig,
    train: &TrainConfig,
    opt: O,
) -> Result<TrainReport> {
    let monitor = match &train.monitor {
        Some((name, _)) if name.starts_with("test") => {
            return Err(invalid!(
                "--monitor {name}: the model is selected on validation, not on the test set; use val_acc or val_loss"
            ))
        }
        Some((name, _)) => name.clone(),
        None => {
            return Err(invalid!(
                "node classification needs a monitored validation metric (val_acc or val_loss)"
            ))
        }
    };
    let mut model = NodeClassifier::new(ds, cfg, &mut train.init_rng())?;
    let params = model.store.num_elements();
    let summary = Trainer::new(train.clone(), opt).fit(&mut model)?;
    let records = read_metrics_jsonl(summary.run_dir.join("metrics.jsonl"))?;
    let best = summary
        .best
        .as_ref()
        .and_then(|b| records.iter().find(|r| r.step == b.step))
        .ok_or_else(|| {
            invalid!(
                "run {} has no evaluation yet (interrupted before the first epoch ended)",
                summary.run_dir.display()
            )
        })?;
    let get = |name: &str| best.get(name).unwrap_or(f64::NAN);
    Ok(TrainReport {
        model: cfg.kind.name().into(),
        dataset: ds.name.clone(),
        seed: train.seed,
        epochs_run: summary.step,
        best_epoch: best.step,
        monitor,
        best_val_acc: get("val_acc"),
        best_val_loss: get("val_loss"),
        test_acc: summary
            .test
            .as_ref()
            .and_then(|t| t.metrics.get("test_acc").copied())
            .unwrap_or(f64::NAN),
        final_train_loss: summary.last.as_ref().map_or(f64::NAN, |l| l.train_loss),
        outcome: summary.outcome.as_str().into(),
        seconds: summary.wall_time_s,
        params,
        run_dir: summary.run_dir,
    })
}

/// Accuracy on `nodes` of the weights saved in a run's `best/` (or `checkpoint/`) folder.
pub fn accuracy_of_saved(
    ds: &NodeDataset,
    cfg: &GnnConfig,
    weights_dir: &Path,
    nodes: &[usize],
) -> Result<f64> {
    let mut m = NodeClassifier::new(ds, cfg, &mut Rng::new(0))?;
    let path = weights_dir.join("model.safetensors");
    let tensors = crate::io::load_safetensors::<f32>(&path)?;
    for p in m.store.iter_mut() {
        let t = crate::io::take(&tensors, &p.name, &path)?;
        if t.shape() != p.value.shape() {
            return Err(invalid!(
                "{}: {} has shape {:?}, the model expects {:?}",
                path.display(),
                p.name,
                t.shape(),
                p.value.shape()
            ));
        }
        p.value = t.clone();
    }
    Ok(loss_and_accuracy(&m.logits()?, &ds.labels, nodes).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gnn::GnnKind;
    use crate::train::ProgressMode;

    fn quiet(cfg: &GnnConfig, dir: &Path) -> TrainConfig {
        TrainConfig {
            progress: ProgressMode::Quiet,
            plot: PlotFormat::None,
            handle_signals: false,
            ..gnn_train_config(cfg, dir, 0)
        }
    }

    /// On the built-in contextual SBM every model learns well above chance (1/3), and the
    /// reported test accuracy is the one of the weights kept in `best/`.
    #[test]
    fn models_learn_the_csbm() {
        let ds = NodeDataset::csbm(600, 3, 60, 0).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        for kind in [GnnKind::Gcn, GnnKind::Gat, GnnKind::Transformer] {
            let mut cfg = GnnConfig::paper(kind);
            cfg.epochs = 60;
            let dir = tmp.path().join(kind.name());
            let r = train_node_classifier(
                &ds,
                &cfg,
                &quiet(&cfg, &dir),
                paper_optimizer(&cfg).unwrap(),
            )
            .unwrap();
            assert!(r.test_acc > 0.6, "{kind:?}: {r:?}");
            let saved = accuracy_of_saved(&ds, &cfg, &dir.join("best"), &ds.test).unwrap();
            assert!((saved - r.test_acc).abs() < 1e-12, "{saved} vs {r:?}");
        }
    }

    /// Every aggregation of the GCN trains through the trainer (well above chance on the
    /// CSBM), and they are different models.
    #[test]
    fn every_gcn_aggregation_learns_the_csbm() {
        let ds = NodeDataset::csbm(600, 3, 60, 0).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut losses = Vec::new();
        for &aggr in GnnKind::Gcn.aggregations() {
            let mut cfg = GnnConfig::paper(GnnKind::Gcn);
            cfg.epochs = 60;
            cfg.aggr = aggr;
            let dir = tmp.path().join(aggr.name());
            let r = train_node_classifier(
                &ds,
                &cfg,
                &quiet(&cfg, &dir),
                paper_optimizer(&cfg).unwrap(),
            )
            .unwrap();
            assert!(r.test_acc > 0.6, "{aggr:?}: {r:?}");
            let c: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
            assert_eq!(c["model"]["aggr"], aggr.name(), "{c}");
            assert!(!losses.contains(&r.final_train_loss), "{aggr:?}: {r:?}");
            losses.push(r.final_train_loss);
        }
    }

    #[test]
    fn unlabelled_split_nodes_are_errors() {
        let mut ds = NodeDataset::csbm(600, 3, 60, 0).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = GnnConfig::paper(GnnKind::Gcn);
        let tc = quiet(&cfg, tmp.path());
        ds.labels[ds.val[0]] = None;
        let e = train_node_classifier(&ds, &cfg, &tc, paper_optimizer(&cfg).unwrap()).unwrap_err();
        assert!(e.to_string().contains("validation node"), "{e}");
        ds.val = vec![];
        assert!(train_node_classifier(&ds, &cfg, &tc, paper_optimizer(&cfg).unwrap()).is_err());
        let mut tc = tc;
        tc.monitor = Some(("test_acc".into(), Mode::Max));
        let ds = NodeDataset::csbm(600, 3, 60, 0).unwrap();
        let e = train_node_classifier(&ds, &cfg, &tc, paper_optimizer(&cfg).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("validation, not on the test set"),
            "{e}"
        );
    }
}
