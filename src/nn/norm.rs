//! Normalization layers — LayerNorm, InstanceNorm, GroupNorm, BatchNorm — as fused ops with
//! hand-derived backward passes, PyTorch semantics, and optional masks of valid positions.
//!
//! Every layer normalizes groups of entries of `x` with their own statistics
//! (`x̂ = (x − μ)/√(σ² + ε)`, population variance) and applies a per-channel (BatchNorm,
//! InstanceNorm, GroupNorm) or per-element (LayerNorm) affine map `y = γ x̂ + β`. For one group
//! of `n` entries with upstream gradient `g = ∂L/∂y`:
//!
//! ```text
//!   ∂L/∂x̂_i = g_i γ_i =: h_i
//!   ∂L/∂x_i = (1/σ̃) (h_i − (1/n) Σ_j h_j − x̂_i (1/n) Σ_j h_j x̂_j),   σ̃ = √(σ² + ε)
//!   ∂L/∂γ_k = Σ_{i ↦ k} g_i x̂_i,   ∂L/∂β_k = Σ_{i ↦ k} g_i
//! ```
//!
//! (the two means come from `∂μ/∂x_i = 1/n` and `∂σ²/∂x_i = 2(x_i − μ)/n`).
//!
//! **Masks.** Each layer takes an optional mask of valid positions, broadcastable to `x` (same
//! number of axes, each of size 1 or equal), with values 0 (padding) or 1 (valid). Statistics are
//! taken over valid entries only (`n = Σ m`), padded outputs are 0, and no gradient reaches
//! padded inputs: the formulas above with every sum weighted by `m` and `∂L/∂x_i` multiplied by
//! `m_i`. A group with no valid entry outputs zeros.
//!
//! Layouts follow the assignment: `(N, C, F)` = (batch, channels, features) or `(N, C, H, W)`;
//! the trailing axes after `C` are flattened into one feature axis.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::kernels::elementwise::mul_in_place;
use crate::kernels::isa;
use crate::kernels::norm::{
    affine_grad_sums, channel_affine_grad_sums, channel_input_grad_on, channel_scale_shift_on,
    channel_shifted_sums, group_norm_backward_rows_on, group_norm_rows_on,
    layer_norm_backward_rows, layer_norm_rows, normalize_row, scale_shift, segment_input_grad,
    shifted_sums, ChannelGrad, Channels, Segments,
};
use crate::kernels::PAR_THRESHOLD;
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use crate::{invalid, ops, shape_err};
use rayon::prelude::*;
use std::sync::Arc;

/// A zeroed output buffer of `n` elements. Large ones (≥ 4 MiB) come straight from `mmap`
/// and every first write to a 4 KiB page faults: for a (256, 64, 1024) f32 output that is
/// 16K faults, each clearing a page, which cost more than the normalization itself. Asking
/// for transparent huge pages (`MADV_HUGEPAGE`, the kernel default here is `madvise`) makes
/// it one fault per 2 MiB. Advice only: the memory stays the global allocator's.
fn output_buffer<T: Element>(n: usize) -> Vec<T> {
    let v = vec![T::zero(); n];
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v.as_slice());
        if bytes >= 2 * HUGE {
            let start = v.as_ptr() as usize;
            let (lo, hi) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
            if hi > lo {
                // SAFETY: `[lo, hi)` lies inside `v`'s live allocation; madvise only changes
                // how the kernel backs those pages (contents stay zero), and a failure
                // (e.g. THP disabled) just leaves 4 KiB pages.
                unsafe {
                    libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE);
                }
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Masks
// ---------------------------------------------------------------------------------------------

/// Expands a 0/1 `mask` broadcastable to `shape` (same number of axes, each 1 or equal) into a
/// dense vector of `x`'s size.
pub fn expand_mask<T: Element>(mask: &Tensor<T>, shape: &[usize], op: &str) -> Result<Vec<T>> {
    let ms = mask.shape();
    if ms.len() != shape.len() || ms.iter().zip(shape).any(|(&m, &s)| m != s && m != 1) {
        return Err(shape_err!(
            op,
            "mask of shape {:?} does not match input {:?} (it needs the same number of axes, each of size 1 or equal)",
            ms,
            shape
        ));
    }
    if let Some(v) = mask
        .data()
        .iter()
        .find(|v| **v != T::zero() && **v != T::one())
    {
        return Err(invalid!(
            "{op}: mask values must be 0 (padding) or 1 (valid), found {v}"
        ));
    }
    if ms == shape {
        return Ok(mask.data().to_vec());
    }
    let n: usize = shape.iter().product();
    let nd = shape.len();
    // Strides of the mask inside the full shape, 0 along broadcast axes.
    let mut mstride = vec![0usize; nd];
    let mut s = 1;
    for a in (0..nd).rev() {
        mstride[a] = if ms[a] == 1 { 0 } else { s };
        s *= ms[a];
    }
    let md = mask.data();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&mstride).map(|(i, s)| i * s).sum();
        out.push(md[off]);
        for a in (0..nd).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok(out)
}

fn affine_or<T: Element>(v: Option<&Tensor<T>>, len: usize, fill: T) -> Vec<T> {
    v.map_or_else(|| vec![fill; len], |t| t.data().to_vec())
}

#[inline]
fn tasks_rows(row_len: usize, rows: usize) -> usize {
    // ~64K elements per task keeps rayon's overhead small and the load balanced.
    (65536 / row_len.max(1)).clamp(1, rows.max(1))
}

// ---------------------------------------------------------------------------------------------
// Row normalization: LayerNorm, InstanceNorm, GroupNorm (each group is a contiguous row)
// ---------------------------------------------------------------------------------------------

/// `x` viewed as `rows` contiguous rows of `seg · seg_len` entries; entry `(s, f)` of row `r`
/// uses affine index `(r mod period) · seg + s`.
/// LayerNorm: `seg = D, seg_len = 1, period = 1`; GroupNorm: `seg = C/G, seg_len = F,
/// period = G`; InstanceNorm is GroupNorm with `G = C`.
#[derive(Clone, Copy, Debug)]
struct RowLayout {
    rows: usize,
    seg: usize,
    seg_len: usize,
    period: usize,
}

impl RowLayout {
    fn len(&self) -> usize {
        self.seg * self.seg_len
    }
    fn affine_len(&self) -> usize {
        self.period * self.seg
    }
    fn segments(&self) -> Segments {
        Segments {
            seg: self.seg,
            seg_len: self.seg_len,
            period: self.period,
        }
    }
    /// First affine index of row `r` (skips the integer division for LayerNorm's period 1).
    #[inline(always)]
    fn affine_base(&self, r: usize) -> usize {
        if self.period == 1 {
            0
        } else {
            (r % self.period) * self.seg
        }
    }
}

/// Mean and population variance of a row, over the entries with `m = 1` when masked.
#[inline(always)]
fn row_stats<T: Element>(x: &[T], m: Option<&[T]>) -> (f64, f64) {
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
fn row_forward<T: Element>(
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
            // instead of a widening add), flushed into the f64 totals.
            const FLUSH: usize = 32;
            let (mut dwt, mut dbt) = (vec![T::zero(); na], vec![T::zero(); na]);
            let (xs, gs) = (&x[r0 * l..(r0 + nrows) * l], &dy[r0 * l..(r0 + nrows) * l]);
            let dxs = if need_dx {
                Some(&mut dx[..nrows * l])
            } else {
                None
            };
            let (ms, rss) = (&mean[r0..r0 + nrows], &rstd[r0..r0 + nrows]);
            let parts = (&mut dwt[..], &mut dbt[..]);
            layer_norm_backward_rows(xs, gs, w, ms, rss, FLUSH, dxs, parts, (&mut dw, &mut db));
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
struct RowNormOp<T: Element> {
    name: &'static str,
    lay: RowLayout,
    mask: Option<Arc<Vec<T>>>,
    mean: Vec<T>,
    rstd: Vec<T>,
    has_w: bool,
    has_b: bool,
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

fn check_eps(eps: f64, op: &str) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(invalid!(
            "{op}: eps must be non-negative and finite, got {eps}"
        ));
    }
    Ok(())
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
    if normalized_ndim == 0 || normalized_ndim > xs.len() {
        return Err(shape_err!(
            "layer_norm",
            "normalized_ndim {normalized_ndim} must be in 1..={} for input {:?}",
            xs.len(),
            xs
        ));
    }
    let nshape = xs[xs.len() - normalized_ndim..].to_vec();
    let d: usize = nshape.iter().product();
    let rows = xs.iter().product::<usize>().checked_div(d).unwrap_or(0);
    let lay = RowLayout {
        rows,
        seg: d,
        seg_len: 1,
        period: 1,
    };
    row_norm(tape, "layer_norm", x, lay, &nshape, weight, bias, eps, mask)
}

/// `(N, C, F)` sizes of an `(N, C, …)` input (trailing axes flattened; `F = 1` for `(N, C)`).
fn ncf(xs: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    if xs.len() < 2 {
        return Err(shape_err!(
            op,
            "needs an input of shape (N, C, ...), got {:?}",
            xs
        ));
    }
    Ok((xs[0], xs[1], xs[2..].iter().product()))
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
    let (n, c, f) = ncf(tape.shape(x), "group_norm")?;
    if groups == 0 || c % groups != 0 {
        return Err(invalid!(
            "group_norm: the number of groups {groups} must divide the number of channels {c}"
        ));
    }
    let lay = RowLayout {
        rows: n * groups,
        seg: c / groups,
        seg_len: f,
        period: groups,
    };
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
    let (n, c, f) = ncf(tape.shape(x), "instance_norm")?;
    let lay = RowLayout {
        rows: n * c,
        seg: 1,
        seg_len: f,
        period: c,
    };
    row_norm(tape, "instance_norm", x, lay, &[c], weight, bias, eps, mask)
}

// ---------------------------------------------------------------------------------------------
// Reference path: the same normalizations unrolled into primitive ops
// ---------------------------------------------------------------------------------------------

/// Normalizes `xv` of shape `(groups, L)` over its last axis, weighting by the 0/1 mask `mv`
/// (same shape) when given: `(x − μ)/√(σ² + ε)` (masked entries are zeroed).
fn reference_rows<T: Element>(
    tape: &mut Tape<T>,
    xv: Var,
    mv: Option<&Tensor<T>>,
    eps: f64,
) -> Result<Var> {
    let Some(m) = mv else {
        let mu = ops::mean(tape, xv, -1, true)?;
        let xc = ops::sub(tape, xv, mu)?;
        let sq = ops::square(tape, xc)?;
        let var = ops::mean(tape, sq, -1, true)?;
        let ve = ops::add_scalar(tape, var, eps)?;
        let sd = ops::sqrt(tape, ve)?;
        return ops::div(tape, xc, sd);
    };
    let g = m.dim(0);
    let cnt: Vec<T> = m
        .data()
        .chunks(m.dim(1))
        .map(|r| r.iter().copied().sum())
        .collect();
    let cnt = tape.constant(Tensor::new(&[g, 1], cnt)?);
    let mv = tape.constant(m.clone());
    let xm = ops::mul(tape, xv, mv)?;
    let s = ops::sum(tape, xm, -1, true)?;
    let mu = ops::div(tape, s, cnt)?;
    let xc = ops::sub(tape, xv, mu)?;
    let xc = ops::mul(tape, xc, mv)?;
    let sq = ops::square(tape, xc)?;
    let ss = ops::sum(tape, sq, -1, true)?;
    let var = ops::div(tape, ss, cnt)?;
    let ve = ops::add_scalar(tape, var, eps)?;
    let sd = ops::sqrt(tape, ve)?;
    ops::div(tape, xc, sd)
}

/// LayerNorm / GroupNorm / InstanceNorm unrolled into primitive ops (`ops::mean`, `sub`,
/// `square`, `sqrt`, `div`, …): the reference the fused ops are tested against.
/// `kind`: [`RefKind`]; weights as for the fused functions.
pub fn norm_reference<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    kind: RefKind,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let numel: usize = xs.iter().product();
    let mask = mask
        .map(|m| -> Result<Tensor<T>> { Tensor::new(&xs, expand_mask(m, &xs, "reference")?) })
        .transpose()?;
    // View as (groups, L) with the statistics over the last axis; `back` restores x's shape.
    let (perm, view): (Option<Vec<usize>>, Vec<usize>) = match kind {
        RefKind::Layer { normalized_ndim } => {
            let l: usize = xs[xs.len() - normalized_ndim..].iter().product();
            (None, vec![numel / l, l])
        }
        RefKind::Group { groups } => {
            let (n, _, _) = ncf(&xs, "reference")?;
            (None, vec![n * groups, numel / (n * groups)])
        }
        RefKind::Batch => {
            let (_, c, _) = ncf(&xs, "reference")?;
            (Some(vec![1, 0, 2]), vec![c, numel / c])
        }
    };
    let (n, c, f) = if xs.len() >= 2 {
        (xs[0], xs[1], xs[2..].iter().product::<usize>())
    } else {
        (1, 1, 1)
    };
    let x3 = if perm.is_some() {
        let r = ops::reshape(tape, x, &[n, c, f])?;
        ops::permute(tape, r, &[1, 0, 2])?
    } else {
        x
    };
    let g = view[0];
    let l = numel / g;
    let xv = ops::reshape(tape, x3, &[g, l])?;
    let mv = match &mask {
        None => None,
        Some(m) => {
            let m = if perm.is_some() {
                ops::shape::permute_tensor(&m.clone().reshape(&[n, c, f])?, &[1, 0, 2])?
            } else {
                m.clone()
            };
            Some(m.reshape(&[g, l])?)
        }
    };
    let xh = reference_rows(tape, xv, mv.as_ref(), eps)?;
    let xh = if perm.is_some() {
        let r = ops::reshape(tape, xh, &[c, n, f])?;
        let p = ops::permute(tape, r, &[1, 0, 2])?;
        ops::reshape(tape, p, &xs)?
    } else {
        ops::reshape(tape, xh, &xs)?
    };
    // Affine: per element of the normalized shape (LayerNorm) or per channel (C, 1, …, 1).
    let per_channel = !matches!(kind, RefKind::Layer { .. });
    let bshape: Vec<usize> = if per_channel {
        let mut s = vec![1; xs.len() - 1];
        s[0] = c;
        s
    } else {
        Vec::new()
    };
    let mut y = xh;
    if let Some(w) = weight {
        let w = if per_channel {
            ops::reshape(tape, w, &bshape)?
        } else {
            w
        };
        y = ops::mul(tape, y, w)?;
    }
    if let Some(b) = bias {
        let b = if per_channel {
            ops::reshape(tape, b, &bshape)?
        } else {
            b
        };
        y = ops::add(tape, y, b)?;
    }
    if let Some(m) = mask {
        let mv = tape.constant(m);
        y = ops::mul(tape, y, mv)?;
    }
    Ok(y)
}

/// Which statistics [`norm_reference`] takes (InstanceNorm = `Group { groups: C }`;
/// `Batch` = BatchNorm's training-mode batch statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Layer { normalized_ndim: usize },
    Group { groups: usize },
    Batch,
}

// ---------------------------------------------------------------------------------------------
// Modules owning their parameters
// ---------------------------------------------------------------------------------------------

fn pname(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Adds `weight` (ones) and `bias` (zeros) of `shape` under `prefix` when `affine`.
fn add_affine<T: Element>(
    store: &mut ParamStore<T>,
    prefix: &str,
    shape: &[usize],
    affine: bool,
) -> Result<(Option<ParamId>, Option<ParamId>)> {
    if !affine {
        return Ok((None, None));
    }
    let w = store.add(pname(prefix, "weight"), Tensor::ones(shape))?;
    let b = store.add(pname(prefix, "bias"), Tensor::zeros(shape))?;
    Ok((Some(w), Some(b)))
}

fn affine_vars<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    w: Option<ParamId>,
    b: Option<ParamId>,
) -> (Option<Var>, Option<Var>) {
    (
        w.map(|id| tape.param(store, id)),
        b.map(|id| tape.param(store, id)),
    )
}

/// `torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine)`; parameters `weight` (ones)
/// and `bias` (zeros) of shape `normalized_shape`, under the builder's path.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl LayerNorm {
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        normalized_shape: &[usize],
        eps: f64,
        elementwise_affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "LayerNorm")?;
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(invalid!(
                "LayerNorm: normalized_shape must be non-empty with positive sizes, got {normalized_shape:?}"
            ));
        }
        let (weight, bias) = if elementwise_affine {
            (
                Some(vb.get("weight", normalized_shape, Init::Constant(1.0))?),
                Some(vb.get("bias", normalized_shape, Init::Zeros)?),
            )
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            weight,
            bias,
        })
    }
    /// With a padding mask (`1` = real entry) over the rows, see [`layer_norm`].
    pub fn forward_masked<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        let xs = tape.shape(x);
        let k = self.normalized_shape.len();
        if xs.len() < k || xs[xs.len() - k..] != self.normalized_shape[..] {
            return Err(shape_err!(
                "LayerNorm",
                "input {:?} does not end with normalized_shape {:?}",
                xs,
                self.normalized_shape
            ));
        }
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        layer_norm(tape, x, k, w, b, self.eps, mask)
    }
}

impl<T: Element> Module<T> for LayerNorm {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.forward_masked(tape, store, x, None)
    }
    fn params(&self) -> Vec<ParamId> {
        self.weight.into_iter().chain(self.bias).collect()
    }
}

/// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub num_groups: usize,
    pub num_channels: usize,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl GroupNorm {
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        num_groups: usize,
        num_channels: usize,
        eps: f64,
        affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "GroupNorm")?;
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(invalid!(
                "GroupNorm: the number of groups {num_groups} must divide the number of channels {num_channels}"
            ));
        }
        let (weight, bias) = add_affine(store, prefix, &[num_channels], affine)?;
        Ok(GroupNorm {
            num_groups,
            num_channels,
            eps,
            weight,
            bias,
        })
    }
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_channels, "GroupNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        group_norm(tape, x, self.num_groups, w, b, self.eps, mask)
    }
}

/// `torch.nn.InstanceNorm1d/2d(num_features, eps, affine=…, track_running_stats=False)`.
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    pub num_features: usize,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl InstanceNorm {
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        num_features: usize,
        eps: f64,
        affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "InstanceNorm")?;
        let (weight, bias) = add_affine(store, prefix, &[num_features], affine)?;
        Ok(InstanceNorm {
            num_features,
            eps,
            weight,
            bias,
        })
    }
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_features, "InstanceNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        instance_norm(tape, x, w, b, self.eps, mask)
    }
}

fn check_channels(xs: &[usize], c: usize, op: &str) -> Result<()> {
    if xs.len() < 2 || xs[1] != c {
        return Err(shape_err!(op, "expects input (N, {c}, ...), got {:?}", xs));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// BatchNorm: statistics per channel over the batch and the features
// ---------------------------------------------------------------------------------------------

/// Per channel of an `(N, C, F)` input: (count of valid entries, mean, population variance),
/// each segment `(n, c, ·)` reduced in cache and the segments combined with Chan et al.'s
/// pairwise formula (`M₂ = M₂ᵃ + M₂ᵇ + δ² nᵃ nᵇ / n`), so `x` is read once.
fn channel_stats<T: Element>(
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
fn channel_normalize<T: Element>(
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
struct BatchNormOp<T: Element> {
    ncf: (usize, usize, usize),
    mask: Option<Arc<Vec<T>>>,
    mean: Vec<T>,
    rstd: Vec<T>,
    count: Vec<f64>,
    batch_stats: bool,
    has_w: bool,
    has_b: bool,
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

/// `torch.nn.BatchNorm1d/2d(num_features, eps, momentum, affine, track_running_stats=True)`:
/// parameters `<prefix>.weight`, `<prefix>.bias`; buffers `running_mean` (zeros),
/// `running_var` (ones), `num_batches_tracked`. `momentum = None` is the cumulative average.
#[derive(Clone, Debug)]
pub struct BatchNorm<T: Element> {
    pub prefix: String,
    pub num_features: usize,
    pub eps: f64,
    pub momentum: Option<f64>,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
    pub running_mean: Tensor<T>,
    pub running_var: Tensor<T>,
    pub num_batches_tracked: u64,
    pub training: bool,
}

impl<T: Element> BatchNorm<T> {
    pub fn new(
        store: &mut ParamStore<T>,
        prefix: &str,
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
        let (weight, bias) = add_affine(store, prefix, &[num_features], affine)?;
        Ok(BatchNorm {
            prefix: prefix.to_string(),
            num_features,
            eps,
            momentum,
            weight,
            bias,
            running_mean: Tensor::zeros(&[num_features]),
            running_var: Tensor::ones(&[num_features]),
            num_batches_tracked: 0,
            training: true,
        })
    }
    pub fn train(&mut self, on: bool) {
        self.training = on;
    }
    /// Training mode: batch statistics, running statistics updated; evaluation: running ones.
    pub fn forward(
        &mut self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_features, "BatchNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        if self.training {
            let factor = self
                .momentum
                .unwrap_or(1.0 / (self.num_batches_tracked + 1) as f64);
            let (rm, rv) = (&mut self.running_mean, &mut self.running_var);
            let mode = BatchNormMode::Train {
                running: Some((rm, rv)),
                factor,
            };
            let y = batch_norm(tape, x, w, b, mode, self.eps, mask)?;
            self.num_batches_tracked += 1;
            Ok(y)
        } else {
            let mode = BatchNormMode::Eval {
                mean: &self.running_mean,
                var: &self.running_var,
            };
            batch_norm(tape, x, w, b, mode, self.eps, mask)
        }
    }
    /// Buffers with PyTorch names (`<prefix>.running_mean`, …) for checkpoints.
    pub fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        vec![
            (
                pname(&self.prefix, "running_mean"),
                self.running_mean.clone(),
            ),
            (pname(&self.prefix, "running_var"), self.running_var.clone()),
            (
                pname(&self.prefix, "num_batches_tracked"),
                Tensor::scalar(T::c(self.num_batches_tracked as f64)),
            ),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics, as the layers compute them
// ---------------------------------------------------------------------------------------------

/// Means and population variances a normalization uses, from the same kernels as its forward.
#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    /// Shape of the statistics: `(C)` for BatchNorm, `(N)` for LayerNorm over `(C, F)`,
    /// `(N, C)` for InstanceNorm, `(N, G)` for GroupNorm, leading axes for LayerNorm.
    pub shape: Vec<usize>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// The statistics of `kind` on `x` (optionally masked), exactly as the fused forward takes them.
pub fn norm_stats<T: Element>(
    x: &Tensor<T>,
    kind: RefKind,
    mask: Option<&Tensor<T>>,
) -> Result<NormStats> {
    let xs = x.shape().to_vec();
    let mask = mask
        .map(|m| expand_mask(m, &xs, "norm_stats"))
        .transpose()?;
    let (shape, l) = match kind {
        RefKind::Batch => {
            let (n, c, f) = ncf(&xs, "norm_stats")?;
            let st = channel_stats(x.data(), mask.as_deref(), (n, c, f));
            return Ok(NormStats {
                shape: vec![c],
                mean: st.iter().map(|s| s.1).collect(),
                var: st.iter().map(|s| s.2).collect(),
            });
        }
        RefKind::Layer { normalized_ndim } => {
            if normalized_ndim == 0 || normalized_ndim > xs.len() {
                return Err(shape_err!(
                    "norm_stats",
                    "normalized_ndim {normalized_ndim} for {:?}",
                    xs
                ));
            }
            let k = xs.len() - normalized_ndim;
            (xs[..k].to_vec(), xs[k..].iter().product::<usize>())
        }
        RefKind::Group { groups } => {
            let (n, c, f) = ncf(&xs, "norm_stats")?;
            if groups == 0 || c % groups != 0 {
                return Err(invalid!(
                    "norm_stats: {groups} groups do not divide {c} channels"
                ));
            }
            (vec![n, groups], c / groups * f)
        }
    };
    if l == 0 {
        return Err(shape_err!("norm_stats", "empty input {:?}", xs));
    }
    let (mut mean, mut var) = (Vec::new(), Vec::new());
    for (r, xr) in x.data().chunks(l).enumerate() {
        let (m, v) = row_stats(xr, mask.as_deref().map(|m| &m[r * l..(r + 1) * l]));
        mean.push(m);
        var.push(v);
    }
    Ok(NormStats { shape, mean, var })
}

// ---------------------------------------------------------------------------------------------
// One-shot forward + backward (benchmarks)
// ---------------------------------------------------------------------------------------------

fn row_layout(kind: RefKind, xs: &[usize]) -> Result<RowLayout> {
    let op = "fused_forward_backward";
    match kind {
        RefKind::Layer { normalized_ndim } => {
            if normalized_ndim == 0 || normalized_ndim > xs.len() {
                return Err(shape_err!(
                    op,
                    "normalized_ndim {normalized_ndim} for {:?}",
                    xs
                ));
            }
            let d: usize = xs[xs.len() - normalized_ndim..].iter().product();
            Ok(RowLayout {
                rows: xs.iter().product::<usize>().checked_div(d).unwrap_or(0),
                seg: d,
                seg_len: 1,
                period: 1,
            })
        }
        RefKind::Group { groups } => {
            let (n, c, f) = ncf(xs, op)?;
            if groups == 0 || c % groups != 0 {
                return Err(invalid!(
                    "{op}: the number of groups {groups} must divide the number of channels {c}"
                ));
            }
            Ok(RowLayout {
                rows: n * groups,
                seg: c / groups,
                seg_len: f,
                period: groups,
            })
        }
        RefKind::Batch => Err(invalid!("{op}: BatchNorm has no row layout")),
    }
}

/// One training-mode forward and backward of a fused normalization without a tape — the same
/// kernels and the same [`Op::backward`] the tape runs — for benchmarks: returns
/// `(y, ∂L/∂x, ∂L/∂γ, ∂L/∂β)` for the upstream gradient `dy`. (BatchNorm's running statistics
/// are not involved.)
pub fn fused_forward_backward<T: Element>(
    kind: RefKind,
    x: &Tensor<T>,
    dy: &Tensor<T>,
    weight: &Tensor<T>,
    bias: &Tensor<T>,
    eps: f64,
) -> Result<[Tensor<T>; 4]> {
    const OP: &str = "fused_forward_backward";
    check_eps(eps, OP)?;
    x.check_same_shape(OP, dy)?;
    weight.check_same_shape(OP, bias)?;
    let xs = x.shape();
    if x.numel() == 0 {
        return Err(shape_err!(OP, "empty input {:?}", xs));
    }
    let (y, op): (Vec<T>, Box<dyn Op<T>>) = match kind {
        RefKind::Batch => {
            let (n, c, f) = ncf(xs, OP)?;
            if weight.shape() != [c] {
                return Err(shape_err!(
                    OP,
                    "weight {:?} for input {:?}",
                    weight.shape(),
                    xs
                ));
            }
            let st = channel_stats(x.data(), None, (n, c, f));
            let mean: Vec<T> = st.iter().map(|s| T::c(s.1)).collect();
            let rstd: Vec<T> = st.iter().map(|s| T::c(1.0 / (s.2 + eps).sqrt())).collect();
            let y = channel_normalize(
                x.data(),
                None,
                &mean,
                &rstd,
                weight.data(),
                bias.data(),
                c,
                f,
            );
            let op = BatchNormOp {
                ncf: (n, c, f),
                mask: None,
                mean,
                rstd,
                count: st.iter().map(|s| s.0).collect(),
                batch_stats: true,
                has_w: true,
                has_b: true,
            };
            (y, Box::new(op))
        }
        _ => {
            let lay = row_layout(kind, xs)?;
            if weight.numel() != lay.affine_len() {
                return Err(shape_err!(
                    OP,
                    "weight {:?} for input {:?}",
                    weight.shape(),
                    xs
                ));
            }
            let (y, mean, rstd) = row_forward(x.data(), None, weight.data(), bias.data(), lay, eps);
            let op = RowNormOp {
                name: "norm",
                lay,
                mask: None,
                mean,
                rstd,
                has_w: true,
                has_b: true,
            };
            (y, Box::new(op))
        }
    };
    let y = Tensor::from_parts(xs.to_vec(), y);
    let ctx = BackwardCtx {
        inputs: vec![x, weight, bias],
        outputs: vec![&y],
        grad_outputs: vec![Some(dy)],
        needs_grad: vec![true; 3],
    };
    let mut g = op.backward(&ctx)?.into_iter();
    let mut next = || {
        g.next()
            .flatten()
            .ok_or_else(|| crate::error::NablaError::Other(format!("{OP}: missing gradient")))
    };
    let (dx, dw, db) = (next()?, next()?, next()?);
    Ok([y, dx, dw, db])
}
