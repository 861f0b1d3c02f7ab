//! Dropout, with the *keep* probability named so it cannot be confused with PyTorch's.
//!
//! The assignment writes `R_ij ~ Bernoulli(p)` with `p` the probability of **keeping** a unit;
//! PyTorch's `nn.Dropout(p)` takes `p` the probability of **dropping** it. Here the probability
//! is a [`KeepProb`], built either from a keep probability ([`KeepProb::new`], the assignment's
//! `p`) or from PyTorch's drop probability ([`KeepProb::from_torch_drop_prob`]`(p) = 1 − p`).
//!
//! Training: `y = x ⊙ R / p` (inverted: the expectation is kept during training, evaluation is
//! the identity) or `y = x ⊙ R` (non-inverted, the original paper's: evaluation scales by `p`).
//! Backward: `∂L/∂x = ∂L/∂y ⊙ R / p` (inverted) or `⊙ R`.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::kernels::dropout::{apply_mask, dropout_mask};
use crate::nn::module::{Ctx, Module};
use crate::tensor::{Element, Tensor};

/// Probability of keeping a unit, in `(0, 1]` (the assignment's `p`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct KeepProb(f64);

impl KeepProb {
    /// From a keep probability in `(0, 1]`.
    pub fn new(keep: f64) -> Result<Self> {
        if !(keep > 0.0 && keep <= 1.0) {
            return Err(invalid!(
                "keep probability must be in (0, 1], got {keep} (PyTorch's dropout p is the drop probability: use KeepProb::from_torch_drop_prob)"
            ));
        }
        Ok(KeepProb(keep))
    }
    /// From PyTorch's `nn.Dropout(p)` drop probability in `[0, 1)`: keep = `1 − p`.
    pub fn from_torch_drop_prob(drop: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&drop) {
            return Err(invalid!("drop probability must be in [0, 1), got {drop}"));
        }
        Ok(KeepProb(1.0 - drop))
    }
    /// The keep probability `p`.
    pub fn keep(self) -> f64 {
        self.0
    }
    /// PyTorch's drop probability `1 − p`.
    pub fn drop_prob(self) -> f64 {
        1.0 - self.0
    }
}

/// Scales by a fixed mask saved in the forward.
struct MaskScale<T: Element> {
    mask: Vec<T>,
}

impl<T: Element> Op<T> for MaskScale<T> {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = ctx.grad();
        let dx = apply_mask(g.data(), &self.mask);
        Ok(vec![Some(Tensor::new(g.shape(), dx)?)])
    }
}

/// A dropout layer. Its mode is the forward's [`Ctx`] (`ctx.train`), its mask drawn from the
/// context's stream, as every layer's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub keep_prob: KeepProb,
    /// Inverted (scale by `1/p` in training) or the original (scale by `p` in evaluation).
    pub inverted: bool,
}

impl Dropout {
    /// Inverted dropout.
    pub fn new(keep_prob: KeepProb) -> Self {
        Dropout {
            keep_prob,
            inverted: true,
        }
    }
    pub fn non_inverted(keep_prob: KeepProb) -> Self {
        Dropout {
            inverted: false,
            ..Self::new(keep_prob)
        }
    }
    /// Dropout in the context's mode: a stream is needed only in training with `p < 1`.
    pub fn apply<T: Element>(&self, tape: &mut Tape<T>, x: Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        if !ctx.train || self.keep_prob.keep() == 1.0 {
            return eval_dropout(tape, x, self.keep_prob, self.inverted);
        }
        dropout(
            tape,
            x,
            self.keep_prob,
            self.inverted,
            true,
            ctx.rng("dropout")?,
        )
    }
}

impl<T: Element> Module<T> for Dropout {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        _store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.apply(tape, x, ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        Vec::new()
    }
}

/// Evaluation mode (and `p = 1`): the identity for inverted dropout, the scale by `p` for the
/// original; no random draws.
fn eval_dropout<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    keep_prob: KeepProb,
    inverted: bool,
) -> Result<Var> {
    let p = keep_prob.keep();
    if inverted || p == 1.0 {
        return Ok(x);
    }
    scale_by_mask(tape, x, vec![T::c(p); tape.value(x).numel()])
}

fn scale_by_mask<T: Element>(tape: &mut Tape<T>, x: Var, mask: Vec<T>) -> Result<Var> {
    let xv = tape.value(x);
    let y = apply_mask(xv.data(), &mask);
    let y = Tensor::new(xv.shape(), y)?;
    Ok(tape.record1(MaskScale { mask }, &[x], y))
}

/// Functional dropout: see the module doc. Unit `i` is dropped when the `i`-th draw of `rng` is
/// under the drop probability `1 − p` ([`Rng::bernoulli`]`(1 − p)`, PyTorch's `p`), so a
/// model's masks do not depend on which of its layers asked.
pub fn dropout<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    keep_prob: KeepProb,
    inverted: bool,
    training: bool,
    rng: &mut Rng,
) -> Result<Var> {
    let p = keep_prob.keep();
    if !training || p == 1.0 {
        return eval_dropout(tape, x, keep_prob, inverted);
    }
    let kept = if inverted { T::c(1.0 / p) } else { T::one() };
    let mask = dropout_mask(rng, tape.value(x).numel(), 1.0 - p, kept);
    scale_by_mask(tape, x, mask)
}
