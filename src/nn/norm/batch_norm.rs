//! The fused BatchNorm op over `(N, C, …)`: statistics per channel over the batch and the
//! features (batch statistics in training, fixed running statistics in evaluation), forward and
//! backward on the channel kernels of [`crate::kernels::norm`]. The module with its running
//! statistics is [`super::batch_norm_module::BatchNorm`].

use super::affine::affine_or;
use super::buffer::output_buffer;
use super::check::check_eps;
use super::layout::ncf;
use super::mask::expand_mask;
use super::row_norm::row_stats;
use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::elementwise::mul_in_place;
use crate::kernels::isa;
use crate::kernels::norm::{
    channel_affine_grad_sums, channel_input_grad_on, channel_scale_shift_on, channel_shifted_sums,
    ChannelGrad, Channels,
};
use crate::kernels::PAR_THRESHOLD;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use rayon::prelude::*;
use std::sync::Arc;

/// Per channel of an `(N, C, F)` input: (count of valid entries, mean, population variance),
/// each segment `(n, c, ·)` reduced in cache and the segments combined with Chan et al.'s
/// pairwise formula (`M₂ = M₂ᵃ + M₂ᵇ + δ² nᵃ nᵇ / n`), so `x` is read once.
pub(crate) fn channel_stats<T: Element>(
    x: &[T],
    mask: Option<&[T]>,
    (n, c, f): (usize, usize, usize),
) -> Vec<(f64, f64, f64)> {
    let one = |ch: usize| {
        if mask.is_none() {
            // Shifted sums over all N segments (K = the channel's first value): no division
            // per segment; the cancellation is O(ε (μ − K)²/σ²) as in `row_stats`.
            let k = x[ch * f];
            let (s, s2) = channel_shifted_sums(x, Channels { n, c, f }, ch, k);
            let cnt = (n * f) as f64;
            let md = s / cnt;
            return (cnt, k.as_f64() + md, (s2 / cnt - md * md).max(0.0));
        }
        let (mut cnt, mut mean, mut m2) = (0.0f64, 0.0f64, 0.0f64);
        for s in 0..n {
            let o = (s * c + ch) * f;
            let xs = &x[o..o + f];
            let ms = mask.map(|m| &m[o..o + f]);
            let nb = ms.map_or(f as f64, |m| m.iter().map(|v| v.as_f64()).sum());
            if nb == 0.0 {
                continue;
            }
            let (mb, vb) = row_stats(xs, ms);
            let tot = cnt + nb;
            let d = mb - mean;
            mean += d * nb / tot;
            m2 += vb * nb + d * d * cnt * nb / tot;
            cnt = tot;
        }
        (cnt, mean, if cnt > 0.0 { m2 / cnt } else { 0.0 })
    };
    if x.len() < PAR_THRESHOLD {
        (0..c).map(one).collect()
    } else {
        (0..c).into_par_iter().map(one).collect()
    }
}

/// `y = m ⊙ (x̂ γ + β)` with per-channel statistics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn channel_normalize<T: Element>(
    x: &[T],
    mask: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    w: &[T],
    b: &[T],
    c: usize,
    f: usize,
) -> Vec<T> {
    let mut y = output_buffer::<T>(x.len());
    let a: Vec<T> = (0..c).map(|ch| rstd[ch] * w[ch]).collect();
    let shift: Vec<T> = (0..c).map(|ch| b[ch] - mean[ch] * a[ch]).collect();
    // `seg0`, `ys`: the first segment of a run of whole segments and their outputs.
    let run = |seg0: usize, ys: &mut [T]| {
        let o = seg0 * f;
        let xs = &x[o..o + ys.len()];
        channel_scale_shift_on(isa::selected(), xs, ys, f, seg0, (&a, &shift));
        if let Some(m) = mask {
            mul_in_place(ys, &m[o..o + ys.len()]);
        }
    };
    for_segment_runs(&mut y, f, run);
    y
}

/// Runs `run(seg0, out)` over `out` in runs of whole `f`-entry segments: all of it at once
/// when small, else in parallel runs of about [`PAR_THRESHOLD`] entries.
fn for_segment_runs<T: Element>(out: &mut [T], f: usize, run: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() < PAR_THRESHOLD {
        run(0, out);
    } else {
        let per = (PAR_THRESHOLD / 4 / f).max(1);
        out.par_chunks_mut(per * f)
            .enumerate()
            .for_each(|(i, o)| run(i * per, o));
    }
}

/// The fused BatchNorm op; inputs `[x, γ?, β?]`. `batch_stats`: gradients flow through the
/// batch statistics (training); otherwise the statistics are constants (evaluation).
pub(crate) struct BatchNormOp<T: Element> {
    pub ncf: (usize, usize, usize),
    pub mask: Option<Arc<Vec<T>>>,
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
    pub count: Vec<f64>,
    pub batch_stats: bool,
    pub has_w: bool,
    pub has_b: bool,
}

impl<T: Element> Op<T> for BatchNormOp<T> {
    fn name(&self) -> &'static str {
        "batch_norm"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (n, c, f) = self.ncf;
        let x = ctx.inputs[0].data();
        let g = ctx.grad();
        let dy = g.data();
        let mask = self.mask.as_deref().map(|m| m.as_slice());
        let w = affine_or(self.has_w.then(|| ctx.inputs[1]), c, T::one());
        // Per channel: S₁ = Σ m g (= ∂L/∂β), S₂ = Σ m g x̂ (= ∂L/∂γ).
        let sums = |ch: usize| {
            let (mu, rs) = (self.mean[ch], self.rstd[ch]);
            channel_affine_grad_sums(dy, mask, x, Channels { n, c, f }, ch, mu, rs)
        };
        let s: Vec<(f64, f64)> = if x.len() < PAR_THRESHOLD {
            (0..c).map(sums).collect()
        } else {
            (0..c).into_par_iter().map(sums).collect()
        };
        let mut out = Vec::with_capacity(3);
        if ctx.needs_grad[0] {
            // dx = m σ̃⁻¹ γ (g − S₁/n − x̂ S₂/n) in training, m σ̃⁻¹ γ g in evaluation.
            let coef: Vec<ChannelGrad<T>> = (0..c)
                .map(|ch| {
                    let cnt = self.count[ch];
                    let (c1, c2) = if self.batch_stats && cnt > 0.0 {
                        (T::c(s[ch].0 / cnt), T::c(s[ch].1 / cnt))
                    } else {
                        (T::zero(), T::zero())
                    };
                    let (mu, rs) = (self.mean[ch], self.rstd[ch]);
                    ChannelGrad {
                        a: rs * w[ch],
                        c1,
                        c2,
                        mu,
                        rs,
                    }
                })
                .collect();
            let mut dx = output_buffer::<T>(x.len());
            let run = |seg0: usize, ds: &mut [T]| {
                let o = seg0 * f;
                let (xs, gs) = (&x[o..o + ds.len()], &dy[o..o + ds.len()]);
                channel_input_grad_on(isa::selected(), xs, gs, ds, f, seg0, &coef);
                if let Some(m) = mask {
                    mul_in_place(ds, &m[o..o + ds.len()]);
                }
            };
            for_segment_runs(&mut dx, f, run);
            out.push(Some(Tensor::from_parts(ctx.inputs[0].shape().to_vec(), dx)));
        } else {
            out.push(None);
        }
        if self.has_w {
            out.push(Some(Tensor::from_parts(
                vec![c],
                s.iter().map(|v| T::c(v.1)).collect(),
            )));
        }
        if self.has_b {
            out.push(Some(Tensor::from_parts(
                vec![c],
                s.iter().map(|v| T::c(v.0)).collect(),
            )));
        }
        Ok(out)
    }
}

/// How [`batch_norm`] gets its statistics.
pub enum BatchNormMode<'a, T: Element> {
    /// Batch statistics (population variance); when `running` is given, updates
    /// `r ← (1 − factor) r + factor · stat` with the *unbiased* variance for `running_var`.
    Train {
        running: Option<(&'a mut Tensor<T>, &'a mut Tensor<T>)>,
        factor: f64,
    },
    /// Fixed statistics (running mean and variance).
    Eval {
        mean: &'a Tensor<T>,
        var: &'a Tensor<T>,
    },
}

/// Fused BatchNorm over `(N, C, …)`: per channel, over the batch and the features.
/// `weight`, `bias`: `(C)`. `mask`: see the module doc (padded entries never enter the
/// statistics, nor the running statistics).
pub fn batch_norm<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    mode: BatchNormMode<'_, T>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    check_eps(eps, "batch_norm")?;
    let xs = tape.shape(x).to_vec();
    let (n, c, f) = ncf(&xs, "batch_norm")?;
    if n * c * f == 0 {
        return Err(shape_err!("batch_norm", "empty input of shape {:?}", xs));
    }
    for (what, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v {
            if tape.shape(v) != [c] {
                return Err(shape_err!(
                    "batch_norm",
                    "{what} has shape {:?}, expected [{c}] for input {:?}",
                    tape.shape(v),
                    xs
                ));
            }
        }
    }
    let mask = mask
        .map(|m| expand_mask(m, &xs, "batch_norm"))
        .transpose()?;
    let xd = tape.value(x).data();
    let (mean, var, count, batch_stats) = match mode {
        BatchNormMode::Train { running, factor } => {
            let st = channel_stats(xd, mask.as_deref(), (n, c, f));
            if let Some(ch) = st.iter().position(|s| s.0 < 2.0) {
                return Err(invalid!(
                    "batch_norm: training needs more than one valid value per channel, channel {ch} has {} (input {:?})",
                    st[ch].0,
                    xs
                ));
            }
            if let Some((rm, rv)) = running {
                if rm.shape() != [c] || rv.shape() != [c] {
                    return Err(shape_err!(
                        "batch_norm",
                        "running stats {:?}/{:?} for {c} channels",
                        rm.shape(),
                        rv.shape()
                    ));
                }
                if !(0.0..=1.0).contains(&factor) {
                    return Err(invalid!("batch_norm: momentum {factor} outside [0, 1]"));
                }
                for (ch, &(cnt, mu, v)) in st.iter().enumerate() {
                    let unbiased = v * cnt / (cnt - 1.0);
                    let (m0, v0) = (rm.data()[ch].as_f64(), rv.data()[ch].as_f64());
                    rm.data_mut()[ch] = T::c((1.0 - factor) * m0 + factor * mu);
                    rv.data_mut()[ch] = T::c((1.0 - factor) * v0 + factor * unbiased);
                }
            }
            (
                st.iter().map(|s| s.1).collect::<Vec<_>>(),
                st.iter().map(|s| s.2).collect::<Vec<_>>(),
                st.iter().map(|s| s.0).collect::<Vec<_>>(),
                true,
            )
        }
        BatchNormMode::Eval { mean, var } => {
            if mean.shape() != [c] || var.shape() != [c] {
                return Err(shape_err!(
                    "batch_norm",
                    "running stats {:?}/{:?} for {c} channels",
                    mean.shape(),
                    var.shape()
                ));
            }
            (mean.to_f64_vec(), var.to_f64_vec(), vec![0.0; c], false)
        }
    };
    let mean_t: Vec<T> = mean.iter().map(|&m| T::c(m)).collect();
    let rstd: Vec<T> = var.iter().map(|&v| T::c(1.0 / (v + eps).sqrt())).collect();
    let w = affine_or(weight.map(|v| tape.value(v)), c, T::one());
    let b = affine_or(bias.map(|v| tape.value(v)), c, T::zero());
    let y = channel_normalize(xd, mask.as_deref(), &mean_t, &rstd, &w, &b, c, f);
    let y = Tensor::from_parts(xs, y);
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let op = BatchNormOp {
        ncf: (n, c, f),
        mask: mask.map(Arc::new),
        mean: mean_t,
        rstd,
        count,
        batch_stats,
        has_w: weight.is_some(),
        has_b: bias.is_some(),
    };
    Ok(tape.record1(op, &inputs, y))
}
