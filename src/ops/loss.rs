//! Losses.
//! - `mse_sum`: `L = Σ (y − z)²` (the assignment's `Σ_t ‖z_t − y_t‖²`), `∂L/∂y = 2(y − z)`.
//! - `mse_mean`: the same divided by the element count.
//! - `cross_entropy` from logits with PyTorch semantics: with `q = (1−ε)·onehot + ε/C` and
//!   `p = softmax(z)`, `L_i = −Σ_c q_c log p_c`, averaged over the counted rows;
//!   `∂L/∂z_i = (p_i − q_i)/count`.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::log_softmax_rows;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

struct Mse<T> {
    factor: T,
}
impl<T: Element> Op<T> for Mse<T> {
    fn name(&self) -> &'static str {
        "mse"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (y, z) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad().item() * T::c(2.0) * self.factor;
        let dy: Vec<T> = y
            .data()
            .iter()
            .zip(z.data())
            .map(|(&a, &b)| g * (a - b))
            .collect();
        let dz = if ctx.needs_grad[1] {
            Some(Tensor::new(z.shape(), dy.iter().map(|&v| -v).collect())?)
        } else {
            None
        };
        Ok(vec![Some(Tensor::new(y.shape(), dy)?), dz])
    }
}

fn mse<T: Element>(tape: &mut Tape<T>, y: Var, z: Var, mean: bool) -> Result<Var> {
    let (ty, tz) = (tape.value(y), tape.value(z));
    if ty.shape() != tz.shape() {
        return Err(shape_err!(
            "mse",
            "prediction {:?} and target {:?} differ",
            ty.shape(),
            tz.shape()
        ));
    }
    let factor = if mean {
        T::one() / T::c(ty.numel().max(1) as f64)
    } else {
        T::one()
    };
    let s: T = ty
        .data()
        .iter()
        .zip(tz.data())
        .map(|(&a, &b)| (a - b) * (a - b))
        .sum();
    Ok(tape.record1(Mse { factor }, &[y, z], Tensor::scalar(s * factor)))
}

/// `Σ (y − z)²` over every element (batch and time included, no averaging).
pub fn mse_sum<T: Element>(tape: &mut Tape<T>, y: Var, z: Var) -> Result<Var> {
    mse(tape, y, z, false)
}
/// `mean (y − z)²`.
pub fn mse_mean<T: Element>(tape: &mut Tape<T>, y: Var, z: Var) -> Result<Var> {
    mse(tape, y, z, true)
}

/// Options of [`cross_entropy`], PyTorch's `F.cross_entropy` semantics.
#[derive(Clone, Debug, Default)]
pub struct CrossEntropyOptions {
    /// Rows whose target equals this are skipped.
    pub ignore_index: Option<usize>,
    /// ε in `q = (1−ε)·onehot + ε/C`.
    pub label_smoothing: f64,
    /// Rows with `false` are skipped (padding).
    pub mask: Option<Vec<bool>>,
}

struct CrossEntropy<T> {
    /// Smoothed target distribution of each counted row (zeros for skipped rows).
    counted: Vec<bool>,
    targets: Vec<usize>,
    eps: T,
    inv_count: T,
}

impl<T: Element> Op<T> for CrossEntropy<T> {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let z = ctx.inputs[0];
        let c = z.dim(-1);
        let g = ctx.grad().item() * self.inv_count;
        let mut dz = z.data().to_vec();
        let off = self.eps / T::c(c as f64);
        for (r, row) in dz.chunks_mut(c).enumerate() {
            if !self.counted[r] {
                row.iter_mut().for_each(|v| *v = T::zero());
                continue;
            }
            crate::kernels::softmax_rows(row, c);
            for v in row.iter_mut() {
                *v = (*v - off) * g;
            }
            row[self.targets[r]] -= (T::one() - self.eps) * g;
        }
        Ok(vec![Some(Tensor::new(z.shape(), dz)?)])
    }
}

/// Mean cross-entropy of `logits (N, C)` against class indices `targets (N)`.
pub fn cross_entropy<T: Element>(
    tape: &mut Tape<T>,
    logits: Var,
    targets: &[usize],
    opts: &CrossEntropyOptions,
) -> Result<Var> {
    let z = tape.value(logits);
    if z.ndim() != 2 {
        return Err(shape_err!(
            "cross_entropy",
            "logits must be (N, C), got {:?}",
            z.shape()
        ));
    }
    let (n, c) = (z.dim(0), z.dim(1));
    if targets.len() != n {
        return Err(shape_err!(
            "cross_entropy",
            "{} targets for {n} rows of logits",
            targets.len()
        ));
    }
    if let Some(m) = &opts.mask {
        if m.len() != n {
            return Err(shape_err!(
                "cross_entropy",
                "mask has {} entries for {n} rows",
                m.len()
            ));
        }
    }
    if !(0.0..=1.0).contains(&opts.label_smoothing) {
        return Err(invalid!(
            "label_smoothing must be in [0, 1], got {}",
            opts.label_smoothing
        ));
    }
    let counted: Vec<bool> = (0..n)
        .map(|i| Some(targets[i]) != opts.ignore_index && opts.mask.as_ref().is_none_or(|m| m[i]))
        .collect();
    for i in 0..n {
        if counted[i] && targets[i] >= c {
            return Err(invalid!(
                "target {} of row {i} is not a class in 0..{c}",
                targets[i]
            ));
        }
    }
    let count = counted.iter().filter(|&&b| b).count();
    let eps = T::c(opts.label_smoothing);
    let mut lp = z.data().to_vec();
    log_softmax_rows(&mut lp, c);
    let mut total = T::zero();
    for (r, row) in lp.chunks(c).enumerate() {
        if !counted[r] {
            continue;
        }
        let nll = -row[targets[r]];
        let smooth = -row.iter().copied().sum::<T>() / T::c(c as f64);
        total += (T::one() - eps) * nll + eps * smooth;
    }
    // PyTorch returns NaN for a batch with nothing counted; we return 0 with zero gradient.
    let inv_count = if count > 0 {
        T::one() / T::c(count as f64)
    } else {
        T::zero()
    };
    let op = CrossEntropy {
        counted,
        targets: targets.to_vec(),
        eps,
        inv_count,
    };
    Ok(tape.record1(op, &[logits], Tensor::scalar(total * inv_count)))
}
