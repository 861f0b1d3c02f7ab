//! The fused row normalization: LayerNorm, GroupNorm and InstanceNorm each normalize
//! contiguous rows of `x` (see [`RowLayout`]) with the formulas of the [module doc](super),
//! forward and backward on the row kernels of [`crate::kernels::norm`].

use super::affine::affine_or;
use super::buffer::output_buffer;
use super::check::check_eps;
use super::layout::RowLayout;
use super::mask::expand_mask;
use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::elementwise::mul_in_place;
use crate::kernels::isa;
use crate::kernels::norm::{
    affine_grad_sums, group_norm_backward_rows_on, group_norm_rows_on, layer_norm_backward_rows,
    layer_norm_rows, normalize_row, scale_shift, segment_input_grad, shifted_sums,
};
use crate::kernels::reduce::BIAS_GRAD_BLOCK as BLOCK;
use crate::kernels::PAR_THRESHOLD;
use crate::shape_err;
use crate::tensor::{Element, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

#[inline]
fn tasks_rows(row_len: usize, rows: usize) -> usize {
    // ~64K elements per task keeps rayon's overhead small and the load balanced.
    (65536 / row_len.max(1)).clamp(1, rows.max(1))
}

/// Mean and population variance of a row, over the entries with `m = 1` when masked.
#[inline(always)]
pub(crate) fn row_stats<T: Element>(x: &[T], m: Option<&[T]>) -> (f64, f64) {
    match m {
        None => {
            // One pass of shifted sums: with K = x₀, σ² = mean((x − K)²) − (mean(x − K))²;
            // the shift keeps the cancellation to O(ε (μ − x₀)²/σ²).
            let inv_n = 1.0 / x.len() as f64;
            let k = x[0];
            let (s, s2) = shifted_sums(x, k);
            let md = s * inv_n;
            (k.as_f64() + md, (s2 * inv_n - md * md).max(0.0))
        }
        Some(m) => {
            let n: f64 = m.iter().map(|v| v.as_f64()).sum();
            if n == 0.0 {
                return (0.0, 0.0);
            }
            let s: f64 = x.iter().zip(m).map(|(v, m)| v.as_f64() * m.as_f64()).sum();
            let mean = s / n;
            let m2: f64 = x
                .iter()
                .zip(m)
                .map(|(v, m)| m.as_f64() * (v.as_f64() - mean).powi(2))
                .sum();
            (mean, m2 / n)
        }
    }
}

/// `y = m ⊙ (γ x̂ + β)` for one row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_normalize<T: Element>(
    x: &[T],
    m: Option<&[T]>,
    y: &mut [T],
    mu: T,
    rs: T,
    w: &[T],
    b: &[T],
    lay: &RowLayout,
) {
    if lay.seg_len == 1 {
        normalize_row(x, y, mu, rs, w, b);
    } else {
        for (s, (ys, xs)) in y
            .chunks_mut(lay.seg_len)
            .zip(x.chunks(lay.seg_len))
            .enumerate()
        {
            let a = rs * w[s];
            scale_shift(xs, ys, a, b[s] - mu * a);
        }
    }
    if let Some(m) = m {
        mul_in_place(y, m);
    }
}

/// Forward of a row normalization: `(y, mean, rstd)` with one mean/rstd per row.
pub(crate) fn row_forward<T: Element>(
    x: &[T],
    mask: Option<&[T]>,
    w: &[T],
    b: &[T],
    lay: RowLayout,
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let l = lay.len();
    let mut y = output_buffer::<T>(x.len());
    let mut mean = vec![T::zero(); lay.rows];
    let mut rstd = vec![T::zero(); lay.rows];
    let work = |r0: usize, y: &mut [T], mean: &mut [T], rstd: &mut [T]| {
        if lay.seg_len == 1 && mask.is_none() {
            // LayerNorm: one kernel call for the task's rows (short rows would otherwise cost
            // a dispatch each).
            let xs = &x[r0 * l..(r0 + mean.len()) * l];
            return layer_norm_rows(xs, w, b, eps, y, mean, rstd);
        }
        if mask.is_none() {
            // GroupNorm / InstanceNorm likewise: one kernel call for the task's rows.
            let xs = &x[r0 * l..(r0 + mean.len()) * l];
            let isa = isa::selected();
            return group_norm_rows_on(isa, xs, w, b, lay.segments(), r0, eps, y, mean, rstd);
        }
        // Three sweeps over the task's rows: statistics, then every 1/√(σ² + ε) in one loop
        // (the square roots and divisions pipeline across rows instead of sitting in each
        // row's dependency chain — it matters for short rows), then normalize.
        let row = |r: usize| (&x[r * l..(r + 1) * l], mask.map(|m| &m[r * l..(r + 1) * l]));
        let var: Vec<f64> = mean
            .iter_mut()
            .enumerate()
            .map(|(k, mu)| {
                let (xr, mr) = row(r0 + k);
                let (mu64, var) = row_stats(xr, mr);
                *mu = T::c(mu64);
                var
            })
            .collect();
        for (rs, v) in rstd.iter_mut().zip(&var) {
            *rs = T::c(1.0 / (v + eps).sqrt());
        }
        for (k, yr) in y.chunks_mut(l).enumerate() {
            let r = r0 + k;
            let (xr, mr) = row(r);
            let base = lay.affine_base(r);
            let (wr, br) = (&w[base..base + lay.seg], &b[base..base + lay.seg]);
            row_normalize(xr, mr, yr, mean[k], rstd[k], wr, br, &lay);
        }
    };
    if x.len() < PAR_THRESHOLD {
        work(0, &mut y, &mut mean, &mut rstd);
    } else {
        let rpt = tasks_rows(l, lay.rows);
        y.par_chunks_mut(l * rpt)
            .zip(mean.par_chunks_mut(rpt))
            .zip(rstd.par_chunks_mut(rpt))
            .enumerate()
            .for_each(|(i, ((y, m), s))| work(i * rpt, y, m, s));
    }
    (y, mean, rstd)
}

/// Backward of a row normalization: `(dx, dγ, dβ)`; `dx` only when `need_dx`.
#[allow(clippy::too_many_arguments)]
fn row_backward<T: Element>(
    x: &[T],
    dy: &[T],
    mask: Option<&[T]>,
    w: &[T],
    mean: &[T],
    rstd: &[T],
    lay: RowLayout,
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<f64>, Vec<f64>) {
    let l = lay.len();
    let na = lay.affine_len();
    let mut dx = if need_dx {
        output_buffer::<T>(x.len())
    } else {
        Vec::new()
    };
    // Processes rows r0.. (dx chunk may be empty when not needed); returns partial dγ, dβ.
    let work = |r0: usize, nrows: usize, dx: &mut [T]| -> (Vec<f64>, Vec<f64>) {
        let mut dw = vec![0.0f64; na];
        let mut db = vec![0.0f64; na];
        if lay.seg_len == 1 && mask.is_none() {
            // LayerNorm fast path (per-element affine, no mask): one kernel call for the
            // task's rows; Σh, Σh·x̂ with h = g γ, then dx and the affine gradients. The
            // affine gradients gather in T partials over ≤ 32 rows (one add per element
            // instead of a widening add), flushed into the f64 totals: dβ = Σ_rows g is the
            // bias-gradient kernel's scheme (kernels::reduce::bias_grad_into_on), step by step.
            let (mut dwt, mut dbt) = (vec![T::zero(); na], vec![T::zero(); na]);
            let (xs, gs) = (&x[r0 * l..(r0 + nrows) * l], &dy[r0 * l..(r0 + nrows) * l]);
            let dxs = if need_dx {
                Some(&mut dx[..nrows * l])
            } else {
                None
            };
            let (ms, rss) = (&mean[r0..r0 + nrows], &rstd[r0..r0 + nrows]);
            let parts = (&mut dwt[..], &mut dbt[..]);
            layer_norm_backward_rows(xs, gs, w, ms, rss, BLOCK, dxs, parts, (&mut dw, &mut db));
            return (dw, db);
        }
        if mask.is_none() {
            // GroupNorm / InstanceNorm without a mask: one kernel call for the task's rows.
            let (xs, gs) = (&x[r0 * l..(r0 + nrows) * l], &dy[r0 * l..(r0 + nrows) * l]);
            let dxs = if need_dx {
                Some(&mut dx[..nrows * l])
            } else {
                None
            };
            let (ms, rss) = (&mean[r0..r0 + nrows], &rstd[r0..r0 + nrows]);
            let (isa, segs) = (isa::selected(), lay.segments());
            group_norm_backward_rows_on(isa, xs, gs, w, ms, rss, segs, r0, dxs, (&mut dw, &mut db));
            return (dw, db);
        }
        for k in 0..nrows {
            let r = r0 + k;
            let xr = &x[r * l..(r + 1) * l];
            let gr = &dy[r * l..(r + 1) * l];
            let mr = mask.map(|m| &m[r * l..(r + 1) * l]);
            let (mu, rs) = (mean[r], rstd[r]);
            let base = lay.affine_base(r);
            let n = mr.map_or(l as f64, |m| m.iter().map(|v| v.as_f64()).sum());
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            // Pass 1: Σh, Σh·x̂ and the affine gradients; `h = m g γ`.
            for (s, (xs, gs)) in xr
                .chunks(lay.seg_len)
                .zip(gr.chunks(lay.seg_len))
                .enumerate()
            {
                let a = base + s;
                let wa = w[a];
                let ms = mr.map(|m| &m[s * lay.seg_len..(s + 1) * lay.seg_len]);
                let (gb, gw) = affine_grad_sums(gs, ms, xs, mu, rs);
                dw[a] += gw;
                db[a] += gb;
                s1 += wa.as_f64() * gb;
                s2 += wa.as_f64() * gw;
            }
            if need_dx && n > 0.0 {
                let (c1, c2) = (T::c(s1 / n), T::c(s2 / n));
                let dxr = &mut dx[k * l..(k + 1) * l];
                // Pass 2 (the row is in cache): dx = m σ̃⁻¹ (h − mean h − x̂ mean(h x̂)).
                for (s, ((ds, xs), gs)) in dxr
                    .chunks_mut(lay.seg_len)
                    .zip(xr.chunks(lay.seg_len))
                    .zip(gr.chunks(lay.seg_len))
                    .enumerate()
                {
                    let ms = mr.map(|m| &m[s * lay.seg_len..(s + 1) * lay.seg_len]);
                    segment_input_grad(xs, gs, ms, w[base + s], mu, rs, (c1, c2), ds);
                }
            }
        }
        (dw, db)
    };
    let add = |(mut a, mut b): (Vec<f64>, Vec<f64>), (c, d): (Vec<f64>, Vec<f64>)| {
        a.iter_mut().zip(c).for_each(|(a, c)| *a += c);
        b.iter_mut().zip(d).for_each(|(b, d)| *b += d);
        (a, b)
    };
    let (dw, db) = if x.len() < PAR_THRESHOLD {
        work(0, lay.rows, &mut dx)
    } else {
        let rpt = tasks_rows(l, lay.rows);
        let ntasks = lay.rows.div_ceil(rpt);
        if need_dx {
            dx.par_chunks_mut(l * rpt)
                .enumerate()
                .map(|(i, d)| work(i * rpt, d.len() / l, d))
                .reduce(|| (vec![0.0; na], vec![0.0; na]), add)
        } else {
            (0..ntasks)
                .into_par_iter()
                .map(|i| work(i * rpt, rpt.min(lay.rows - i * rpt), &mut []))
                .reduce(|| (vec![0.0; na], vec![0.0; na]), add)
        }
    };
    (need_dx.then_some(dx), dw, db)
}

/// The fused row-normalization op; inputs `[x, γ?, β?]`.
pub(crate) struct RowNormOp<T: Element> {
    pub name: &'static str,
    pub lay: RowLayout,
    pub mask: Option<Arc<Vec<T>>>,
    pub mean: Vec<T>,
    pub rstd: Vec<T>,
    pub has_w: bool,
    pub has_b: bool,
}

impl<T: Element> Op<T> for RowNormOp<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let x = ctx.inputs[0];
        let g = ctx.grad();
        let w = affine_or(
            self.has_w.then(|| ctx.inputs[1]),
            self.lay.affine_len(),
            T::one(),
        );
        let (dx, dw, db) = row_backward(
            x.data(),
            g.data(),
            self.mask.as_deref().map(|m| m.as_slice()),
            &w,
            &self.mean,
            &self.rstd,
            self.lay,
            ctx.needs_grad[0],
        );
        let mut out = vec![dx.map(|d| Tensor::from_parts(x.shape().to_vec(), d))];
        let to_t = |v: Vec<f64>, like: &Tensor<T>| {
            Tensor::from_parts(like.shape().to_vec(), v.into_iter().map(T::c).collect())
        };
        if self.has_w {
            out.push(Some(to_t(dw, ctx.inputs[1])));
        }
        if self.has_b {
            out.push(Some(to_t(db, ctx.inputs[out.len()])));
        }
        Ok(out)
    }
}

#[allow(clippy::too_many_arguments)]
fn row_norm<T: Element>(
    tape: &mut Tape<T>,
    name: &'static str,
    x: Var,
    lay: RowLayout,
    affine_shape: &[usize],
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    check_eps(eps, name)?;
    let xs = tape.shape(x).to_vec();
    if lay.rows == 0 || lay.len() == 0 {
        return Err(shape_err!(name, "empty input of shape {:?}", xs));
    }
    for (what, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v {
            if tape.shape(v) != affine_shape {
                return Err(shape_err!(
                    name,
                    "{what} has shape {:?}, expected {:?} for input {:?}",
                    tape.shape(v),
                    affine_shape,
                    xs
                ));
            }
        }
    }
    let mask = mask.map(|m| expand_mask(m, &xs, name)).transpose()?;
    let w = affine_or(weight.map(|v| tape.value(v)), lay.affine_len(), T::one());
    let b = affine_or(bias.map(|v| tape.value(v)), lay.affine_len(), T::zero());
    let (y, mean, rstd) = row_forward(tape.value(x).data(), mask.as_deref(), &w, &b, lay, eps);
    let y = Tensor::from_parts(xs, y);
    let mut inputs = vec![x];
    inputs.extend(weight);
    inputs.extend(bias);
    let op = RowNormOp {
        name,
        lay,
        mask: mask.map(Arc::new),
        mean,
        rstd,
        has_w: weight.is_some(),
        has_b: bias.is_some(),
    };
    Ok(tape.record1(op, &inputs, y))
}

/// Fused LayerNorm over the trailing `normalized_ndim` axes (PyTorch `normalized_shape` =
/// `x.shape[-normalized_ndim:]`); `weight`/`bias` have that shape. `mask`: see the module doc.
pub fn layer_norm<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    normalized_ndim: usize,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let lay = RowLayout::layer(&xs, normalized_ndim, "layer_norm")?;
    let nshape = xs[xs.len() - normalized_ndim..].to_vec();
    row_norm(tape, "layer_norm", x, lay, &nshape, weight, bias, eps, mask)
}

/// Fused GroupNorm: the `C` channels of an `(N, C, …)` input split into `groups` consecutive
/// groups, each normalized per sample over its channels and features; per-channel `weight`,
/// `bias` of shape `(C)`.
pub fn group_norm<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    groups: usize,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    let lay = RowLayout::group(tape.shape(x), groups, "group_norm")?;
    let c = tape.shape(x)[1];
    row_norm(tape, "group_norm", x, lay, &[c], weight, bias, eps, mask)
}

/// Fused InstanceNorm (per sample and channel, over the features); `weight`, `bias`: `(C)`.
/// It is GroupNorm with one channel per group.
pub fn instance_norm<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    let lay = RowLayout::instance(tape.shape(x), "instance_norm")?;
    let c = tape.shape(x)[1];
    row_norm(tape, "instance_norm", x, lay, &[c], weight, bias, eps, mask)
}
