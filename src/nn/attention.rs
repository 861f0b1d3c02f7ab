//! Multi-head attention as fused ops with hand-derived backward passes.
//!
//! Two entry points:
//! - [`multi_head_self_attention`]: timm's `Attention` / `nn.MultiheadAttention` self-attention in
//!   one op — packed input projection `[q | k | v] = x W_qkvᵀ + b_qkv` (`W_qkv` is (3D, D), rows
//!   `0..D` give q, `D..2D` k, `2D..3D` v; head h uses columns `h·dh..(h+1)·dh` of each part),
//!   per-head scaled-dot-product attention, concatenation of the heads and the output projection
//!   `y = o W_projᵀ + b_proj`. Optionally returns the attention probabilities (B, H, T, T).
//! - [`scaled_dot_product_attention`]: the attention core alone on already-projected
//!   `q (B, H, Tq, dh)`, `k, v (B, H, Tk, dh)`.
//!
//! Forward, per item and head (`s = dh^{-1/2}`, `M_ij = −∞` where key j is masked for query i):
//!
//! ```text
//! S = s·q kᵀ + M          (Tq, Tk)
//! P = softmax_rows(S)     (Tq, Tk)
//! o = P v                 (Tq, dh)
//! ```
//!
//! Backward, given `do` (and `dP₀`, the gradient reaching the returned probabilities, if any):
//!
//! ```text
//! dv = Pᵀ do
//! dP = do vᵀ + dP₀
//! dS = P ⊙ (dP − rowsum(P ⊙ dP))      softmax backward; masked entries have P = 0 so dS = 0
//! dq = s · dS k
//! dk = s · dSᵀ q
//! ```
//!
//! For the fused op the projections add the usual linear-layer gradients:
//! `dW_proj = dyᵀ o`, `db_proj = Σ_rows dy`, `do = dy W_proj`, and with `dqkv` assembled from
//! `dq, dk, dv`: `dW_qkv = dqkvᵀ x`, `db_qkv = Σ_rows dqkv`, `dx = dqkv W_qkv`.
//!
//! A query row whose keys are all masked gets probabilities 0 and output 0 (PyTorch yields NaN).
//!
//! The same computation unrolled into primitive ops is [`multi_head_self_attention_reference`];
//! tests compare the two and check both against finite differences and PyTorch.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::invalid;
use crate::kernels::attention::{
    head_backward, head_forward, HeadGrads, HeadInputs, HeadOut, HeadScratch, MaskRows, Rows,
};
use crate::kernels::attention_lanes::{packed_backward, packed_forward, LaneSaved, PackedDims};
use crate::kernels::{col_sums, linear_into, matmul_into, MatLayout};
use crate::nn::linear::Linear;
use crate::nn::module::{params_of, Ctx, Module, VarBuilder};
use crate::ops;
use crate::shape_err;
use crate::tensor::{Element, Tensor};
use rayon::prelude::*;

/// Which (query, key) pairs are blocked — the crate's one attention-mask convention, PyTorch's
/// for a boolean `attn_mask` / `key_padding_mask` of `nn.MultiheadAttention`: `true` = query `i`
/// may **not** attend to key `j` (score `−∞`, probability exactly 0), `false` = it may. Every
/// dense attention here (the fused op, [`multi_head_self_attention_reference`],
/// [`scaled_dot_product_attention`], `nn::masked_attention`'s graph masks) reads it so.
#[derive(Clone, Debug, PartialEq)]
pub enum AttnMask {
    /// `key_padding_mask` (B, Tk): `true` = that key is padding and is ignored by every query.
    KeyPadding(Vec<bool>),
    /// A dense (B, Tq, Tk) mask (e.g. a graph's non-edges); `true` = query i may not attend to key j.
    Dense(Vec<bool>),
    /// One dense (Tq, Tk) mask shared by every item of the batch.
    Shared(Vec<bool>),
}

impl AttnMask {
    fn check(&self, b: usize, tq: usize, tk: usize, op: &str) -> Result<()> {
        let (want, what) = match self {
            AttnMask::KeyPadding(m) => (b * tk, (m.len(), format!("(B, Tk) = ({b}, {tk})"))),
            AttnMask::Dense(m) => (
                b * tq * tk,
                (m.len(), format!("(B, Tq, Tk) = ({b}, {tq}, {tk})")),
            ),
            AttnMask::Shared(m) => (tq * tk, (m.len(), format!("(Tq, Tk) = ({tq}, {tk})"))),
        };
        if what.0 != want {
            return Err(shape_err!(
                op,
                "mask has {} entries, expected {} for {}",
                what.0,
                want,
                what.1
            ));
        }
        Ok(())
    }
    /// The mask rows of item `b`: (slice, stride between query rows; 0 = same row for all).
    fn view(&self, b: usize, tq: usize, tk: usize) -> MaskRows<'_> {
        match self {
            AttnMask::KeyPadding(m) => MaskRows {
                data: &m[b * tk..(b + 1) * tk],
                row_stride: 0,
            },
            AttnMask::Dense(m) => MaskRows {
                data: &m[b * tq * tk..(b + 1) * tq * tk],
                row_stride: tk,
            },
            AttnMask::Shared(m) => MaskRows {
                data: m,
                row_stride: tk,
            },
        }
    }
}

/// `dh` columns from column `col` of one item's packed `[q | k | v]` rows (row stride 3D).
fn packed_rows<T>(qkv_item: &[T], col: usize, d: usize, dh: usize) -> Rows<'_, T> {
    Rows {
        buf: &qkv_item[col..],
        rs: 3 * d,
        dh,
    }
}

/// Rows of block `i` of a stack of contiguous `(rows, dh)` blocks.
fn block_rows<T>(buf: &[T], i: usize, rows: usize, dh: usize) -> Rows<'_, T> {
    Rows {
        buf: &buf[i * rows * dh..(i + 1) * rows * dh],
        rs: dh,
        dh,
    }
}

/// The parameters of one attention layer, as tape variables (timm names in comments).
#[derive(Clone, Copy, Debug)]
pub struct MhaWeights {
    /// `attn.qkv.weight` (3D, D).
    pub qkv_w: Var,
    /// `attn.qkv.bias` (3D).
    pub qkv_b: Option<Var>,
    /// `attn.proj.weight` (D, D).
    pub proj_w: Var,
    /// `attn.proj.bias` (D).
    pub proj_b: Option<Var>,
}

/// Options of [`multi_head_self_attention`].
#[derive(Clone, Debug, Default)]
pub struct AttnOptions {
    pub heads: usize,
    pub mask: Option<AttnMask>,
    /// Also return the attention probabilities (B, H, T, T) as a differentiable output.
    pub need_weights: bool,
}

/// Saved state of the fused layer: the projected `qkv` (B·T, 3D), probabilities (B, H, T, T) and
/// the concatenated head outputs `o` (B·T, D) — or, when the core ran lane-batched (f32, short
/// sequences: [`PackedDims::lanes_pay_off`]), its own lane-layout copy of q, k, v and P instead
/// of `qkv` and `p`.
struct MhaOp<T> {
    b: usize,
    t: usize,
    d: usize,
    heads: usize,
    has_qkv_b: bool,
    has_proj_b: bool,
    qkv: Vec<T>,
    p: Vec<T>,
    lanes: Option<LaneSaved>,
    o: Vec<T>,
}

impl<T: Element> Op<T> for MhaOp<T> {
    fn name(&self) -> &'static str {
        "multi_head_self_attention"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (b, t, d, h) = (self.b, self.t, self.d, self.heads);
        let n = b * t;
        let dh = d / h;
        let scale = T::c(1.0 / (dh as f64).sqrt());
        let x = ctx.inputs[0];
        let qkv_w = ctx.inputs[1];
        let pi = if self.has_qkv_b { 3 } else { 2 };
        let proj_w = ctx.inputs[pi];
        let dy = ctx.grad_output(0);
        let gp = if ctx.outputs.len() > 1 {
            ctx.grad_outputs[1]
        } else {
            None
        };
        let mut grads: Vec<Option<Tensor<T>>> = vec![None; ctx.inputs.len()];

        // Output projection.
        if ctx.needs_grad[pi] {
            let dw = matmul_into(d, d, n, dy.data(), MatLayout::T, &self.o, MatLayout::N);
            grads[pi] = Some(Tensor::from_parts(vec![d, d], dw));
        }
        if self.has_proj_b && ctx.needs_grad[pi + 1] {
            grads[pi + 1] = Some(Tensor::from_parts(vec![d], col_sums(dy.data(), d)));
        }
        let need_inner =
            ctx.needs_grad[0] || ctx.needs_grad[1] || (self.has_qkv_b && ctx.needs_grad[2]);
        if !need_inner {
            return Ok(grads);
        }
        let dout = matmul_into(
            n,
            d,
            d,
            dy.data(),
            MatLayout::N,
            proj_w.data(),
            MatLayout::N,
        );

        let mut dqkv = vec![T::zero(); n * 3 * d];
        let tt = t * t;
        let gp_data = gp.map(|g| g.data());
        if let Some(saved) = &self.lanes {
            // Lane-batched core (f32 only: the forward took it for f32).
            fn f32s<T: Element>(v: &[T]) -> &[f32] {
                T::as_f32(v).expect("the lane core runs on f32")
            }
            packed_backward(
                saved,
                scale.as_f64() as f32,
                f32s(&dout),
                gp_data.map(f32s::<T>),
                T::as_f32_mut(&mut dqkv).expect("f32"),
            );
        } else {
            // Attention core, parallel over items; each item owns its rows of dqkv.
            dqkv.par_chunks_mut(t * 3 * d).enumerate().for_each_init(
                || HeadScratch::new(t, t, dh),
                |sc, (bi, dblk)| {
                    let qkv_b = &self.qkv[bi * t * 3 * d..(bi + 1) * t * 3 * d];
                    let do_b = &dout[bi * t * d..(bi + 1) * t * d];
                    for hi in 0..h {
                        let c = hi * dh;
                        let rows = |off: usize| packed_rows(qkv_b, off + c, d, dh);
                        let pb = &self.p[(bi * h + hi) * tt..(bi * h + hi + 1) * tt];
                        let gpb = gp_data.map(|g| &g[(bi * h + hi) * tt..(bi * h + hi + 1) * tt]);
                        let x = HeadInputs {
                            q: rows(0),
                            k: rows(d),
                            v: rows(2 * d),
                            scale,
                            mask: None, // masked entries have P = 0, so dS = 0 there
                        };
                        let g = HeadGrads {
                            p: pb,
                            dout: Rows {
                                buf: &do_b[c..],
                                rs: d,
                                dh,
                            },
                            gp: gpb,
                        };
                        let out = HeadOut {
                            d: &mut *dblk,
                            off: (c, d + c, 2 * d + c),
                            rs: 3 * d,
                        };
                        head_backward(x, g, out, sc);
                    }
                },
            );
        }

        // Input projection.
        if ctx.needs_grad[1] {
            let dw = matmul_into(3 * d, d, n, &dqkv, MatLayout::T, x.data(), MatLayout::N);
            grads[1] = Some(Tensor::from_parts(vec![3 * d, d], dw));
        }
        if self.has_qkv_b && ctx.needs_grad[2] {
            grads[2] = Some(Tensor::from_parts(vec![3 * d], col_sums(&dqkv, 3 * d)));
        }
        if ctx.needs_grad[0] {
            let dx = matmul_into(n, d, 3 * d, &dqkv, MatLayout::N, qkv_w.data(), MatLayout::N);
            grads[0] = Some(Tensor::from_parts(x.shape().to_vec(), dx));
        }
        Ok(grads)
    }
}

/// Fused multi-head self-attention (timm `Attention`, `nn.MultiheadAttention` packed layout):
/// `x (B, T, D)` → `y (B, T, D)` and, with `need_weights`, the probabilities `(B, H, T, T)`.
pub fn multi_head_self_attention<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    w: &MhaWeights,
    opts: &AttnOptions,
) -> Result<(Var, Option<Var>)> {
    const OP: &str = "multi_head_self_attention";
    let xs = tape.shape(x).to_vec();
    if xs.len() != 3 {
        return Err(shape_err!(OP, "x must be (B, T, D), got {:?}", xs));
    }
    let (b, t, d) = (xs[0], xs[1], xs[2]);
    let h = opts.heads;
    if h == 0 || d % h != 0 {
        return Err(shape_err!(
            OP,
            "embed dim {d} is not divisible by {h} heads"
        ));
    }
    let check = |tape: &Tape<T>, v: Var, want: &[usize], what: &str| -> Result<()> {
        if tape.shape(v) != want {
            return Err(shape_err!(
                OP,
                "{what} has shape {:?}, expected {:?} for x {:?}",
                tape.shape(v),
                want,
                xs
            ));
        }
        Ok(())
    };
    check(tape, w.qkv_w, &[3 * d, d], "qkv weight")?;
    check(tape, w.proj_w, &[d, d], "proj weight")?;
    if let Some(bq) = w.qkv_b {
        check(tape, bq, &[3 * d], "qkv bias")?;
    }
    if let Some(bp) = w.proj_b {
        check(tape, bp, &[d], "proj bias")?;
    }
    if let Some(m) = &opts.mask {
        m.check(b, t, t, OP)?;
    }
    let n = b * t;
    let dh = d / h;
    let scale = T::c(1.0 / (dh as f64).sqrt());
    let qkv = linear_into(
        tape.value(x).data(),
        tape.value(w.qkv_w).data(),
        w.qkv_b.map(|v| tape.value(v).data()),
        n,
        d,
        3 * d,
    );
    let tt = t * t;
    let mut o = vec![T::zero(); n * d];
    let dims = PackedDims { b, t, d, heads: h };
    let mut lanes = None;
    let mut p = Vec::new();
    if let (true, Some(qkv32), Some(o32)) =
        (dims.lanes_pay_off(), T::as_f32(&qkv), T::as_f32_mut(&mut o))
    {
        let masks: Option<Vec<MaskRows>> = opts
            .mask
            .as_ref()
            .map(|m| (0..b).map(|bi| m.view(bi, t, t)).collect());
        let alpha = scale.as_f64() as f32; // exact: an f32
        let saved = packed_forward(dims, qkv32, alpha, masks.as_deref(), o32);
        if opts.need_weights {
            p = T::from_f32_vec(saved.probs_bhtt()).expect("f32");
        }
        lanes = Some(saved);
    } else {
        p = vec![T::zero(); b * h * tt];
        o.par_chunks_mut(t * d)
            .zip(p.par_chunks_mut(h * tt))
            .enumerate()
            .for_each_init(
                || HeadScratch::new(t, t, dh),
                |sc, (bi, (ob, pb))| {
                    let qkv_b = &qkv[bi * t * 3 * d..(bi + 1) * t * 3 * d];
                    let mv = opts.mask.as_ref().map(|m| m.view(bi, t, t));
                    for hi in 0..h {
                        let c = hi * dh;
                        let rows = |off: usize| packed_rows(qkv_b, off + c, d, dh);
                        let x = HeadInputs {
                            q: rows(0),
                            k: rows(d),
                            v: rows(2 * d),
                            scale,
                            mask: mv,
                        };
                        head_forward(x, &mut pb[hi * tt..(hi + 1) * tt], (&mut ob[c..], d), sc);
                    }
                },
            );
    }
    let y = linear_into(
        &o,
        tape.value(w.proj_w).data(),
        w.proj_b.map(|v| tape.value(v).data()),
        n,
        d,
        d,
    );
    let mut inputs = vec![x, w.qkv_w];
    inputs.extend(w.qkv_b);
    inputs.push(w.proj_w);
    inputs.extend(w.proj_b);
    let mut outs = vec![Tensor::from_parts(vec![b, t, d], y)];
    if opts.need_weights {
        // The lane core's backward reads its own copy of P: hand this one over whole.
        let probs = if lanes.is_some() {
            std::mem::take(&mut p)
        } else {
            p.clone()
        };
        outs.push(Tensor::from_parts(vec![b, h, t, t], probs));
    }
    // The lane copies of q, k, v are what the lane core's backward reads.
    let qkv = if lanes.is_some() { Vec::new() } else { qkv };
    let op = MhaOp {
        b,
        t,
        d,
        heads: h,
        has_qkv_b: w.qkv_b.is_some(),
        has_proj_b: w.proj_b.is_some(),
        // Inference keeps nothing: the tape drops the op when nothing needs a gradient.
        qkv,
        p,
        lanes,
        o,
    };
    let vars = tape.record(op, &inputs, outs);
    Ok((vars[0], vars.get(1).copied()))
}

/// Saved state of [`scaled_dot_product_attention`]: the probabilities (B, H, Tq, Tk).
struct SdpaOp<T> {
    dims: (usize, usize, usize, usize),
    p: Vec<T>,
}

impl<T: Element> Op<T> for SdpaOp<T> {
    fn name(&self) -> &'static str {
        "scaled_dot_product_attention"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (bh, tq, tk, dh) = self.dims;
        let scale = T::c(1.0 / (dh as f64).sqrt());
        let (q, k, v) = (ctx.inputs[0], ctx.inputs[1], ctx.inputs[2]);
        let dout = ctx.grad_output(0);
        let gp = if ctx.outputs.len() > 1 {
            ctx.grad_outputs[1].map(|g| g.data())
        } else {
            None
        };
        // Per (item, head) a packed block [dq (tq, dh) | dk (tk, dh) | dv (tk, dh)].
        let blk = (tq + 2 * tk) * dh;
        let mut d = vec![T::zero(); bh * blk];
        let tt = tq * tk;
        d.par_chunks_mut(blk).enumerate().for_each_init(
            || HeadScratch::new(tq, tk, dh),
            |sc, (i, dblk)| {
                let r = |buf, rows| block_rows(buf, i, rows, dh);
                let x = HeadInputs {
                    q: r(q.data(), tq),
                    k: r(k.data(), tk),
                    v: r(v.data(), tk),
                    scale,
                    mask: None,
                };
                let g = HeadGrads {
                    p: &self.p[i * tt..(i + 1) * tt],
                    dout: r(dout.data(), tq),
                    gp: gp.map(|g| &g[i * tt..(i + 1) * tt]),
                };
                let out = HeadOut {
                    d: dblk,
                    off: (0, tq * dh, (tq + tk) * dh),
                    rs: dh,
                };
                head_backward(x, g, out, sc);
            },
        );
        let (mut dq, mut dk, mut dvv) = (
            Vec::with_capacity(q.numel()),
            Vec::with_capacity(k.numel()),
            Vec::with_capacity(v.numel()),
        );
        for c in d.chunks_exact(blk) {
            dq.extend_from_slice(&c[..tq * dh]);
            dk.extend_from_slice(&c[tq * dh..(tq + tk) * dh]);
            dvv.extend_from_slice(&c[(tq + tk) * dh..]);
        }
        Ok(vec![
            Some(Tensor::from_parts(q.shape().to_vec(), dq)),
            Some(Tensor::from_parts(k.shape().to_vec(), dk)),
            Some(Tensor::from_parts(v.shape().to_vec(), dvv)),
        ])
    }
}

/// Scaled-dot-product attention on projected heads: `q (B, H, Tq, dh)`, `k, v (B, H, Tk, dh)` →
/// `o (B, H, Tq, dh)` and, with `need_weights`, `P (B, H, Tq, Tk)`. Scale `dh^{-1/2}`.
pub fn scaled_dot_product_attention<T: Element>(
    tape: &mut Tape<T>,
    q: Var,
    k: Var,
    v: Var,
    mask: Option<&AttnMask>,
    need_weights: bool,
) -> Result<(Var, Option<Var>)> {
    const OP: &str = "scaled_dot_product_attention";
    let (qs, ks, vs) = (
        tape.shape(q).to_vec(),
        tape.shape(k).to_vec(),
        tape.shape(v).to_vec(),
    );
    if qs.len() != 4
        || ks != vs
        || ks.len() != 4
        || qs[0] != ks[0]
        || qs[1] != ks[1]
        || qs[3] != ks[3]
    {
        return Err(shape_err!(
            OP,
            "expected q (B, H, Tq, dh) and k = v (B, H, Tk, dh); got q {:?}, k {:?}, v {:?}",
            qs,
            ks,
            vs
        ));
    }
    let (b, h, tq, dh) = (qs[0], qs[1], qs[2], qs[3]);
    let tk = ks[2];
    if let Some(m) = mask {
        m.check(b, tq, tk, OP)?;
    }
    let scale = T::c(1.0 / (dh as f64).sqrt());
    let tt = tq * tk;
    let mut p = vec![T::zero(); b * h * tt];
    let mut o = vec![T::zero(); b * h * tq * dh];
    {
        let (qd, kd, vd) = (
            tape.value(q).data(),
            tape.value(k).data(),
            tape.value(v).data(),
        );
        o.par_chunks_mut(tq * dh)
            .zip(p.par_chunks_mut(tt))
            .enumerate()
            .for_each_init(
                || HeadScratch::new(tq, tk, dh),
                |sc, (i, (ob, pb))| {
                    let r = |buf, rows| block_rows(buf, i, rows, dh);
                    let mv = mask.map(|m| m.view(i / h, tq, tk));
                    let x = HeadInputs {
                        q: r(qd, tq),
                        k: r(kd, tk),
                        v: r(vd, tk),
                        scale,
                        mask: mv,
                    };
                    head_forward(x, pb, (ob, dh), sc);
                },
            );
    }
    let mut outs = vec![Tensor::from_parts(vec![b, h, tq, dh], o)];
    if need_weights {
        outs.push(Tensor::from_parts(vec![b, h, tq, tk], p.clone()));
    }
    let vars = tape.record(
        SdpaOp {
            dims: (b * h, tq, tk, dh),
            p,
        },
        &[q, k, v],
        outs,
    );
    Ok((vars[0], vars.get(1).copied()))
}

/// Reference path: the same layer unrolled into primitive ops (linear, reshape, permute, bmm,
/// softmax). Slow; used by tests to cross-check the fused op.
pub fn multi_head_self_attention_reference<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    w: &MhaWeights,
    opts: &AttnOptions,
) -> Result<(Var, Option<Var>)> {
    let xs = tape.shape(x).to_vec();
    if xs.len() != 3 {
        return Err(shape_err!(
            "attention reference",
            "x must be (B, T, D), got {:?}",
            xs
        ));
    }
    let (b, t, d) = (xs[0], xs[1], xs[2]);
    let h = opts.heads;
    if h == 0 || d % h != 0 {
        return Err(shape_err!(
            "attention reference",
            "{d} not divisible by {h} heads"
        ));
    }
    let dh = d / h;
    let qkv = ops::linear(tape, x, w.qkv_w, w.qkv_b)?; // (B, T, 3D)
    let qkv = ops::reshape(tape, qkv, &[b, t, 3, h, dh])?;
    let qkv = ops::permute(tape, qkv, &[2, 0, 3, 1, 4])?; // (3, B, H, T, dh)
    let part = |tape: &mut Tape<T>, i: usize| -> Result<Var> {
        let p = ops::narrow(tape, qkv, 0, i, 1)?;
        ops::reshape(tape, p, &[b * h, t, dh])
    };
    let (q, k, v) = (part(tape, 0)?, part(tape, 1)?, part(tape, 2)?);
    let s = ops::bmm(tape, q, k, false, true)?; // (B·H, T, T)
    let s = ops::scale(tape, s, 1.0 / (dh as f64).sqrt())?;
    let s = ops::reshape(tape, s, &[b, h, t, t])?;
    let s = match &opts.mask {
        None => s,
        Some(m) => {
            m.check(b, t, t, "attention reference")?;
            let (shape, data): (Vec<usize>, &Vec<bool>) = match m {
                AttnMask::KeyPadding(v) => (vec![b, 1, 1, t], v),
                AttnMask::Dense(v) => (vec![b, 1, t, t], v),
                AttnMask::Shared(v) => (vec![t, t], v),
            };
            let bias = Tensor::new(
                &shape,
                data.iter()
                    .map(|&m| if m { T::neg_infinity() } else { T::zero() })
                    .collect(),
            )?;
            let bias = tape.constant(bias);
            ops::add(tape, s, bias)?
        }
    };
    let p = ops::softmax(tape, s)?; // (B, H, T, T)
    let p3 = ops::reshape(tape, p, &[b * h, t, t])?;
    let o = ops::bmm(tape, p3, v, false, false)?; // (B·H, T, dh)
    let o = ops::reshape(tape, o, &[b, h, t, dh])?;
    let o = ops::permute(tape, o, &[0, 2, 1, 3])?;
    let o = ops::reshape(tape, o, &[b, t, d])?;
    let y = ops::linear(tape, o, w.proj_w, w.proj_b)?;
    Ok((y, if opts.need_weights { Some(p) } else { None }))
}

/// timm's `Attention` as a module: `qkv` (a [`Linear`] D → 3D) and `proj` (D → D) under its
/// path, the fused [`multi_head_self_attention`] inside.
#[derive(Clone, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub heads: usize,
}

impl Attention {
    /// `weight` initializes both weight matrices, biases start at zero (timm's ViT scheme);
    /// `qkv_bias = false` leaves the input projection without a bias (timm's `qkv_bias`).
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        dim: usize,
        heads: usize,
        qkv_bias: bool,
        weight: Init,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(invalid!(
                "attention: dim {dim} is not divisible by {heads} heads"
            ));
        }
        let qkv = Linear::with_init(
            vb.pp("qkv"),
            dim,
            3 * dim,
            qkv_bias.then_some(Init::Zeros),
            weight,
        )?;
        let proj = Linear::with_init(vb.pp("proj"), dim, dim, Some(Init::Zeros), weight)?;
        Ok(Attention { qkv, proj, heads })
    }
    /// `x (B, T, D)` → `y (B, T, D)` and, with `need_weights`, the probabilities `(B, H, T, T)`.
    pub fn forward_with_weights<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<AttnMask>,
        need_weights: bool,
    ) -> Result<(Var, Option<Var>)> {
        let (qkv_w, qkv_b) = self.qkv.vars(tape, store);
        let (proj_w, proj_b) = self.proj.vars(tape, store);
        let w = MhaWeights {
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
        };
        let opts = AttnOptions {
            heads: self.heads,
            mask,
            need_weights,
        };
        multi_head_self_attention(tape, x, &w, &opts)
    }
}

impl<T: Element> Module<T> for Attention {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        Ok(self.forward_with_weights(tape, store, x, None, false)?.0)
    }
    fn params(&self) -> Vec<ParamId> {
        params_of::<T>(&[&self.qkv, &self.proj])
    }
}
