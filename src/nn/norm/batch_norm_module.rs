//! `BatchNorm`, the module: PyTorch's `BatchNorm1d/2d` with `track_running_stats=True`, built
//! through a [`VarBuilder`], its mode taken from [`Ctx::train`] and its running statistics kept
//! as buffers under PyTorch's names.
//!
//! **Why a `Mutex`.** [`Module::forward`] takes `&self`: one module value serves several
//! threads' forward passes (the ViT's micro-batches) and sits in a [`crate::nn::Sequential`] as
//! a shared trait object, and `Module` requires `Send + Sync`. A training-mode BatchNorm must
//! still write its running statistics on every forward, so they live behind a [`Mutex`]
//! (a `Cell`/`RefCell` is not `Sync`): each batch's update of `running_mean`, `running_var`
//! and `num_batches_tracked` is one atomic step, and readers see a consistent triple.
//! Training-mode forwards of one BatchNorm running at the same time update in lock order, which
//! the scheduler decides — run them one after the other for the same bits from the same seed
//! (evaluation only reads, and is deterministic at any thread count).

use super::affine::{affine_params, affine_vars};
use super::batch_norm::{batch_norm, BatchNormMode};
use super::check::{check_channels, check_eps};
use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use std::sync::{Mutex, MutexGuard};

/// BatchNorm's buffers: per channel the running mean and the running *unbiased* variance, and
/// the number of training batches seen (for `momentum = None`, the cumulative average).
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats<T: Element> {
    pub mean: Tensor<T>,
    pub var: Tensor<T>,
    pub num_batches_tracked: u64,
}

impl<T: Element> RunningStats<T> {
    /// PyTorch's initial state: `running_mean = 0`, `running_var = 1`, no batch seen.
    pub fn new(num_features: usize) -> Self {
        RunningStats {
            mean: Tensor::zeros(&[num_features]),
            var: Tensor::ones(&[num_features]),
            num_batches_tracked: 0,
        }
    }
}

/// `torch.nn.BatchNorm1d/2d(num_features, eps, momentum, affine, track_running_stats=True)`
/// over `(N, C, …)`: parameters `weight` (ones) and `bias` (zeros) of shape `(C)` when
/// `affine`, buffers `running_mean` (zeros), `running_var` (ones) and `num_batches_tracked`
/// (a 0-d tensor), all named under the builder's path. `momentum = None` is the cumulative
/// average (`factor = 1 / (num_batches_tracked + 1)`).
///
/// Training mode (`ctx.train`): the batch statistics normalize (gradients flow through them)
/// and update `r ← (1 − factor) r + factor · stat` with the unbiased variance for
/// `running_var`; evaluation: the running statistics normalize, as constants.
#[derive(Debug)]
pub struct BatchNorm<T: Element> {
    /// The builder path the buffers are named under (`""` at the root).
    pub path: String,
    pub num_features: usize,
    pub eps: f64,
    pub momentum: Option<f64>,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
    running: Mutex<RunningStats<T>>,
}

impl<T: Element> Clone for BatchNorm<T> {
    fn clone(&self) -> Self {
        BatchNorm {
            path: self.path.clone(),
            num_features: self.num_features,
            eps: self.eps,
            momentum: self.momentum,
            weight: self.weight,
            bias: self.bias,
            running: Mutex::new(self.running_stats()),
        }
    }
}

impl<T: Element> BatchNorm<T> {
    /// Creates (or loads, or binds) the affine parameters through `vb`; the running statistics
    /// come from the checkpoint when `vb` loads one that has them (`running_mean` and
    /// `running_var` both or neither; a missing `num_batches_tracked` reads 0, as PyTorch
    /// loads old checkpoints), else PyTorch's initial values.
    pub fn new(
        mut vb: VarBuilder<'_, T>,
        num_features: usize,
        eps: f64,
        momentum: Option<f64>,
        affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "BatchNorm")?;
        if let Some(m) = momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(invalid!("BatchNorm: momentum must be in [0, 1], got {m}"));
            }
        }
        if num_features == 0 {
            return Err(invalid!("BatchNorm: num_features must be positive"));
        }
        let (weight, bias) = affine_params(&mut vb, &[num_features], affine)?;
        let c = [num_features];
        let mut running = RunningStats::new(num_features);
        match (
            vb.get_buffer("running_mean", &c)?,
            vb.get_buffer("running_var", &c)?,
        ) {
            (Some(mean), Some(var)) => {
                running.mean = mean;
                running.var = var;
            }
            (None, None) => {}
            (m, _) => {
                let (has, lacks) = if m.is_some() {
                    ("running_mean", "running_var")
                } else {
                    ("running_var", "running_mean")
                };
                return Err(invalid!(
                    "BatchNorm {:?}: the checkpoint has {} but not {}",
                    vb.prefix(),
                    vb.path(has),
                    vb.path(lacks)
                ));
            }
        }
        if let Some(t) = vb.get_buffer("num_batches_tracked", &[])? {
            running.num_batches_tracked = batch_count(t.data()[0].as_f64(), &vb.path(""))?;
        }
        Ok(BatchNorm {
            path: vb.prefix().to_string(),
            num_features,
            eps,
            momentum,
            weight,
            bias,
            running: Mutex::new(running),
        })
    }

    /// With a mask of valid positions (`1` = real entry; padded entries enter neither the
    /// batch nor the running statistics), in the mode of `ctx`.
    pub fn forward_masked(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
        ctx: &Ctx<'_>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_features, "BatchNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        let mut r = self.lock();
        if ctx.train {
            let factor = self
                .momentum
                .unwrap_or(1.0 / (r.num_batches_tracked + 1) as f64);
            let RunningStats { mean, var, .. } = &mut *r;
            let mode = BatchNormMode::Train {
                running: Some((mean, var)),
                factor,
            };
            let y = batch_norm(tape, x, w, b, mode, self.eps, mask)?;
            r.num_batches_tracked += 1;
            Ok(y)
        } else {
            let mode = BatchNormMode::Eval {
                mean: &r.mean,
                var: &r.var,
            };
            batch_norm(tape, x, w, b, mode, self.eps, mask)
        }
    }

    /// A copy of the running statistics.
    pub fn running_stats(&self) -> RunningStats<T> {
        self.lock().clone()
    }
    pub fn running_mean(&self) -> Tensor<T> {
        self.lock().mean.clone()
    }
    pub fn running_var(&self) -> Tensor<T> {
        self.lock().var.clone()
    }
    pub fn num_batches_tracked(&self) -> u64 {
        self.lock().num_batches_tracked
    }

    /// Replaces the running statistics (shapes checked; variances must be non-negative).
    pub fn set_running_stats(&self, stats: RunningStats<T>) -> Result<()> {
        let c = [self.num_features];
        for (what, t) in [("running_mean", &stats.mean), ("running_var", &stats.var)] {
            if t.shape() != c {
                return Err(shape_err!(
                    "BatchNorm",
                    "{what} has shape {:?}, the layer has {} channels",
                    t.shape(),
                    self.num_features
                ));
            }
        }
        if let Some(v) = stats
            .var
            .data()
            .iter()
            .find(|v| v.as_f64().is_nan() || v.as_f64() < 0.0)
        {
            return Err(invalid!(
                "BatchNorm: running_var must be non-negative, found {v}"
            ));
        }
        *self.lock() = stats;
        Ok(())
    }

    /// The statistics are a consistent triple after any completed update, so a lock poisoned
    /// by a panic elsewhere still holds usable values.
    fn lock(&self) -> MutexGuard<'_, RunningStats<T>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self, buffer: &str) -> String {
        if self.path.is_empty() {
            buffer.to_string()
        } else {
            format!("{}.{buffer}", self.path)
        }
    }
}

/// `num_batches_tracked` read from a checkpoint: a non-negative integer.
fn batch_count(v: f64, path: &str) -> Result<u64> {
    if !(v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64) {
        return Err(invalid!(
            "BatchNorm {path:?}: num_batches_tracked must be a non-negative integer, got {v}"
        ));
    }
    Ok(v as u64)
}

impl<T: Element> Module<T> for BatchNorm<T> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.forward_masked(tape, store, x, None, ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        self.weight.into_iter().chain(self.bias).collect()
    }
    /// `running_mean (C)`, `running_var (C)`, `num_batches_tracked ()` under the path, as in
    /// PyTorch's `state_dict()`.
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        let r = self.lock();
        vec![
            (self.name("running_mean"), r.mean.clone()),
            (self.name("running_var"), r.var.clone()),
            (
                self.name("num_batches_tracked"),
                Tensor::scalar(T::c(r.num_batches_tracked as f64)),
            ),
        ]
    }
}
