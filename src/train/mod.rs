//! One training loop for every model: steps/epochs, evaluation, early stopping, best-checkpoint
//! tracking, LR schedule, gradient clipping, progress, metrics JSONL, plots, atomic checkpoints,
//! exact resume, and failure handling (non-finite loss/gradient, stop signals, time limit,
//! unwritable folder).
//!
//! # For model authors
//!
//! A model implements [`TrainModel`]: it owns its [`ParamStore`] and its data, and
//! [`TrainModel::train_step`] runs forward + backward for one batch, leaving the gradients in the
//! store (the trainer has zeroed them just before). The [`Trainer`] owns everything else: the
//! optimizer, the LR schedule, clipping, the RNG, evaluation, logging and checkpoints.
//!
//! Determinism and exact resume rest on one rule: **the batch of step `s` must be a function of
//! `s`, the seed and the `rng` passed in** — never of state kept between calls. [`BatchSampler`]
//! gives epoch-shuffled mini-batches that way (the permutation of epoch `e` is derived from
//! `(seed, e)`), and `rng` (saved in every checkpoint) is for dropout and other per-step noise.
//! Buffers that are not parameters but change during training (BatchNorm running statistics)
//! go through [`TrainModel::state_tensors`] / [`TrainModel::load_state_tensors`].
//!
//! ```no_run
//! use nabla::train::{BatchSampler, Metrics, StepOutput, TrainConfig, TrainModel, Trainer};
//! use nabla::{ops, ParamId, ParamStore, Rng, Result, Tape, Tensor};
//! use nabla::optim::Optimizer;
//!
//! struct Softmax { store: ParamStore<f32>, w: ParamId, x: Tensor<f32>, y: Vec<usize>, sampler: BatchSampler }
//!
//! impl TrainModel<f32> for Softmax {
//!     fn params(&self) -> &ParamStore<f32> { &self.store }
//!     fn params_mut(&mut self) -> &mut ParamStore<f32> { &mut self.store }
//!     fn train_step(&mut self, step: u64, _rng: &mut Rng) -> Result<StepOutput> {
//!         let idx = self.sampler.batch(step);                     // depends on `step` only
//!         let mut tape = Tape::new();
//!         let xb = tape.constant(nabla::train::select_rows(&self.x, &idx)?); // (B, F)
//!         let yb: Vec<usize> = idx.iter().map(|&i| self.y[i]).collect();
//!         let w = tape.param(&self.store, self.w);                // (C, F)
//!         let logits = ops::matmul_t(&mut tape, xb, w)?;          // (B, C)
//!         let loss = ops::cross_entropy(&mut tape, logits, &yb, &Default::default())?;
//!         tape.backward(loss)?;
//!         tape.accumulate_grads(&mut self.store)?;
//!         Ok(StepOutput::new(tape.value(loss).item() as f64, idx.len()))
//!     }
//!     fn evaluate(&mut self) -> Result<Metrics> {
//!         let mut m = Metrics::new();
//!         m.insert("val_acc".into(), 0.5); // computed on held-out data with Tape::no_grad()
//!         Ok(m)
//!     }
//!     fn config_json(&self) -> serde_json::Value { serde_json::json!({"model": "softmax"}) }
//!     fn steps_per_epoch(&self) -> Option<u64> { Some(self.sampler.steps_per_epoch()) }
//! }
//!
//! // e.g. `nabla::optim::AdamW::new(nabla::optim::AdamConfig::new(1e-3).weight_decay(0.05))?`
//! fn train(model: &mut Softmax, opt: impl Optimizer<f32>) -> Result<()> {
//!     let cfg = TrainConfig {
//!         out_dir: "runs/softmax".into(),
//!         epochs: Some(10),
//!         monitor: Some(("val_acc".into(), nabla::train::Mode::Max)),
//!         ..TrainConfig::default()
//!     };
//!     let summary = Trainer::new(cfg, opt).fit(model)?;
//!     println!("{}", summary.describe());
//!     Ok(())
//! }
//! ```
//!
//! Command lines flatten [`TrainArgs`] (`#[command(flatten)] train: TrainArgs`), fill the
//! command's defaults ([`TrainArgs::fill_defaults`] with a [`TrainDefaults`]) and call
//! [`TrainArgs::config`]: `--out`, `--resume DIR`, `--overwrite`, `--seed`, `--steps`/`--epochs`,
//! `--eval-every`, `--log-every`, `--checkpoint-every`, `--time-limit`, `--schedule`, `--warmup`,
//! `--min-lr`, `--clip-grad-norm`, `--monitor`, `--patience`, `--quiet`, `--plain`, `--plot`.
//! They flatten [`OptimArgs`] as well and call [`OptimArgs::build`] for `--optim sgd|adam|adamw
//! --lr --weight-decay --momentum --nesterov --betas --eps` ([`AnyOptimizer`]). Any
//! [`crate::optim::Optimizer`] works directly ([`TrainOptimizer`] is the same trait under its
//! earlier name; no adapter is needed). The run's learning rate follows the one
//! [`LrSchedule`] (`crate::optim::LrSchedule`, re-exported here).
//!
//! # Run folder
//!
//! ```text
//! OUT/config.json          trainer + model configuration of the run
//! OUT/metrics.jsonl        one JSON object per evaluation (see [`MetricsRecord`]), then the
//!                          final test record on the selected weights (see [`TestRecord`])
//! OUT/events.out.tfevents.<unix seconds>.<host>
//!                          the same scalars for TensorBoard, live (`tensorboard --logdir runs/`;
//!                          see [`tfevents`])
//! OUT/metrics.svg|.png     loss and metric curves, written at the end (`nabla plot` redraws them)
//! OUT/checkpoint/          latest checkpoint: model.safetensors, optimizer.safetensors, state.json
//! OUT/best/                weights (+ state.json) at the best value of the monitored metric
//! OUT/.lock                the writer lock, held by the process training into OUT (its PID)
//! ```

mod checkpoint;
mod config;
mod final_test;
mod image_data;
mod metrics;
mod optim_args;
pub mod plot;
mod progress;
mod sampler;
pub mod signals;
pub mod tfevents;
mod trainer;

pub(crate) use checkpoint::checkpoint_dir;
pub use checkpoint::{
    load_checkpoint_state, parse_state_bytes, BestRecord, CheckpointState, IntervalState,
    CHECKPOINT_FORMAT,
};
pub use config::{
    fresh_run_dir, guess_mode, run_dirs, EarlyStopping, LrSchedule, Mode, PlotFormat, ProgressMode,
    ScheduleKind, TrainArgs, TrainConfig, TrainDefaults, AUTO_CHECKPOINT_INTERVAL_S,
    AUTO_CHECKPOINT_IO_SHARE, LENGTH_FLAGS, SESSION_FLAGS,
};
pub use final_test::{read_test_record, TestRecord};
pub use image_data::{evaluate_classifier, Classifier, ImageData, ImageDataArgs};
pub use metrics::{parse_metrics_jsonl, read_metrics_jsonl, MetricsRecord};
pub use optim_args::{AnyOptimizer, OptimArgs, OptimDefaults, OptimizerKind};
pub use progress::format_log_line;
pub use sampler::{select_rows, BatchSampler};
pub use signals::{
    clear_stop_signal, host_handles_signals, install_stop_handlers, raise_stop_signal, stop_signal,
    StopSignal,
};
pub use trainer::{Outcome, TrainSummary, Trainer};

use crate::autograd::ParamStore;
use crate::error::Result;
use crate::init::Rng;
use crate::tensor::{Element, Tensor};
use std::collections::BTreeMap;

/// Named scalar metrics (`val_loss`, `val_acc`, …), ordered by name for stable output.
pub type Metrics = BTreeMap<String, f64>;

/// A classifier's metrics on one split: `{split}_acc`, `{split}_loss` and, for the test split,
/// `test_images` (the ViT's and the ResNet's `evaluate`/`test` report the same names).
pub fn classification_metrics(split: &str, acc: f64, loss: f64, images: usize) -> Metrics {
    let mut m = Metrics::new();
    m.insert(format!("{split}_acc"), acc);
    m.insert(format!("{split}_loss"), loss);
    if split == "test" {
        m.insert("test_images".into(), images as f64);
    }
    m
}

/// What one training step reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// Mean loss over the batch (must be finite; the run stops otherwise).
    pub loss: f64,
    /// Items processed (examples, tokens, nodes): drives the items/s throughput.
    pub items: usize,
    /// Optional per-step metrics (e.g. `train_acc`), averaged item-weighted per evaluation interval.
    pub metrics: Metrics,
}

impl StepOutput {
    pub fn new(loss: f64, items: usize) -> Self {
        StepOutput {
            loss,
            items,
            metrics: Metrics::new(),
        }
    }
    /// Adds a per-step metric.
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.metrics.insert(name.into(), value);
        self
    }
}

/// A model the [`Trainer`] can train.
pub trait TrainModel<T: Element> {
    /// The trainable parameters (the optimizer updates these; checkpoints save them).
    fn params(&self) -> &ParamStore<T>;
    fn params_mut(&mut self) -> &mut ParamStore<T>;
    /// Forward + backward on the batch of training step `step` (0-based); gradients are added
    /// into [`TrainModel::params_mut`] (zeroed by the trainer just before). The batch must be a
    /// function of `step` and `rng` only (see the module docs), so resumed runs are exact.
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput>;
    /// Whether [`TrainModel::train_step_shard`] splits the batch across the ranks of a
    /// data-parallel job ([`crate::dist`]). Full-batch models (the GNNs) keep `false` and
    /// train in one process only.
    fn data_parallel(&self) -> bool {
        false
    }
    /// [`TrainModel::train_step`] as one rank of `group`: this rank computes the gradients of
    /// its share of the step's micro-batches and sums them with the other ranks' in the
    /// single-process order ([`crate::dist::Group::sum_grads`]), so every rank ends with the
    /// gradients (and the returned loss) of the whole batch, bit for bit as one process. The
    /// trainer calls this, with the one-rank group outside MPI; the default is the
    /// one-process step (the trainer refuses more ranks unless [`TrainModel::data_parallel`]).
    fn train_step_shard(
        &mut self,
        step: u64,
        rng: &mut Rng,
        group: crate::dist::Group,
    ) -> Result<StepOutput> {
        let _ = group;
        self.train_step(step, rng)
    }
    /// Validation metrics (e.g. `val_loss`, `val_acc`), computed without recording a tape.
    /// They select `best/` and drive early stopping, so they must never come from the test set.
    fn evaluate(&mut self) -> Result<Metrics>;
    /// Held-out test metrics (`test_acc`, `test_loss`, …), or `None` when the data has no test
    /// split. Called once, after a finished (not interrupted) run, with the selected weights
    /// loaded (those of `best/`, or the final ones when nothing is monitored); the trainer
    /// appends the result to `metrics.jsonl` (see [`TestRecord`]).
    fn test(&mut self) -> Result<Option<Metrics>> {
        Ok(None)
    }
    /// The model's hyper-parameters; saved in `config.json` and checked on `--resume`.
    fn config_json(&self) -> serde_json::Value;
    /// Steps in one pass over the training data; required when training by epochs or
    /// evaluating once per epoch.
    fn steps_per_epoch(&self) -> Option<u64> {
        None
    }
    /// Non-parameter state to checkpoint (e.g. `bn.running_mean`), PyTorch state-dict names.
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        Vec::new()
    }
    /// Restores what [`TrainModel::state_tensors`] returned.
    fn load_state_tensors(&mut self, _tensors: &BTreeMap<String, Tensor<T>>) -> Result<()> {
        Ok(())
    }
}

/// The optimizer interface the trainer drives ([`crate::optim::Optimizer`]: `step`, `lr`/`set_lr`,
/// `state_tensors`/`load_state_tensors`, `step_count`); kept under this name for code written
/// against the trainer before `optim` existed.
pub use crate::optim::Optimizer as TrainOptimizer;
