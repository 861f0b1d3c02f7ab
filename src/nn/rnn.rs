//! Elman RNN: `h_t = σ(W x_t + U h_{t−1} [+ b_h])`, `y_t = V h_t [+ b_y]` over a whole sequence,
//! with an analytic backpropagation through time (exact or truncated).
//!
//! Fast path: one fused op for the whole sequence. The input product `X Wᵀ` and the readout
//! `H Vᵀ` do not depend on the recurrence, so they are hoisted out of the time loop as single
//! `(T·B, ·)` matrix products; only `h_{t−1} Uᵀ` stays inside it. Internally everything is
//! time-major, `(T, B, ·)`, so the rows of one step are contiguous.
//!
//! Backward, with `g_t = ∇_{h_t}L` and `σ'_t = σ'(a_t)` written through the output
//! (sigmoid `h(1−h)`, tanh `1−h²`, ReLU `[h>0]`):
//!
//! ```text
//! g_t      = Vᵀ ∂L/∂y_t + (∂h_{t+1}/∂h_t)ᵀ g_{t+1},   ∂h_{t+1}/∂h_t = diag(σ'_{t+1}) U
//! δ_t      = σ'_t ⊙ g_t                                (gradient of the pre-activation a_t)
//! ∇_W L    = Σ_t δ_t x_tᵀ      ∇_U L = Σ_t δ_t h_{t−1}ᵀ      ∇_V L = Σ_t ∂L/∂y_t h_tᵀ
//! ∇_{h_0}L = Uᵀ δ_1            ∇_{x_t}L = Wᵀ δ_t             ∇_{b_h} = Σ_t δ_t, ∇_{b_y} = Σ_t ∂L/∂y_t
//! ```
//! With the assignment's loss `L = Σ_t ‖z_t − y_t‖²`, `∂L/∂y_t = 2(y_t − z_t)`. Only the
//! recursion for `g_t` runs step by step; `∇_W`, `∇_U`, `∇_V`, `∇_x` are again one product each
//! over all steps.
//!
//! Chunked truncation (`truncate = k`): the state is detached at `t = k, 2k, …` (t = steps done),
//! so the term `(∂h_{t+1}/∂h_t)ᵀ g_{t+1}` is dropped there; `h_0` is not a boundary.
//!
//! Reference path: [`elman_unrolled`], the same model built from primitive `ops` step by step.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Rng;
use crate::kernels::reduce::{add_row_bias, axpy, col_sums_into};
use crate::kernels::{gemm, transpose, MatLayout};
use crate::tensor::{Element, Tensor};
use crate::{invalid, ops, shape_err};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::nn::activation::Activation;

/// Sizes of one sequence batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqDims {
    pub batch: usize,
    pub seq_len: usize,
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
}

/// Borrowed weights for the raw kernels: `W (H, I)`, `U (H, H)`, `V (O, H)`, `b_h (H)`, `b_y (O)`.
#[derive(Clone, Copy)]
pub struct WeightsRef<'a, T> {
    pub w: &'a [T],
    pub u: &'a [T],
    pub v: &'a [T],
    pub b_h: Option<&'a [T]>,
    pub b_y: Option<&'a [T]>,
    pub activation: Activation,
}

/// Values kept by the forward pass for BPTT.
#[derive(Clone, Debug)]
pub struct ForwardState<T> {
    pub dims: SeqDims,
    /// `(T+1, B, H)`: `h_0, h_1, …, h_T`.
    pub hs: Vec<T>,
    /// `(T, B, O)`.
    pub y: Vec<T>,
}

impl<T: Element> ForwardState<T> {
    /// `h_s` (state after `s` steps) as a `(B, H)` tensor.
    pub fn state(&self, s: usize) -> Tensor<T> {
        let bh = self.dims.batch * self.dims.hidden;
        Tensor::from_parts(
            vec![self.dims.batch, self.dims.hidden],
            self.hs[s * bh..(s + 1) * bh].to_vec(),
        )
    }
    /// Hidden states `h_1..h_T` batch-major `(B, T, H)`.
    pub fn states_batch_major(&self) -> Tensor<T> {
        let d = self.dims;
        let bh = d.batch * d.hidden;
        Tensor::from_parts(
            vec![d.batch, d.seq_len, d.hidden],
            swap01(&self.hs[bh..], d.seq_len, d.batch, d.hidden),
        )
    }
}

/// `(A, B, F)` → `(B, A, F)` row-major.
pub fn swap01<T: Copy>(x: &[T], a: usize, b: usize, f: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(a * b * f);
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&x[(i * b + j) * f..(i * b + j + 1) * f]);
        }
    }
    out
}

/// Resizes a scratch buffer to `n` elements without reallocating once its capacity suffices.
/// The contents are unspecified: every caller overwrites all of them.
fn fit<T: Element>(v: &mut Vec<T>, n: usize) {
    if v.len() != n {
        v.clear();
        v.resize(n, T::zero());
    }
}

/// `(A, B, F)` → `(B, A, F)` row-major into a reused buffer.
pub fn swap01_into<T: Copy>(x: &[T], a: usize, b: usize, f: usize, out: &mut Vec<T>) {
    out.clear();
    out.reserve(a * b * f);
    for j in 0..b {
        for i in 0..a {
            out.extend_from_slice(&x[(i * b + j) * f..(i * b + j + 1) * f]);
        }
    }
}

/// Fused forward over a whole time-major sequence `x_tm (T, B, I)` from `h0 (B, H)`.
pub fn forward_tm<T: Element>(
    wr: &WeightsRef<'_, T>,
    d: SeqDims,
    x_tm: &[T],
    h0: &[T],
) -> ForwardState<T> {
    let mut st = ForwardState {
        dims: d,
        hs: Vec::new(),
        y: Vec::new(),
    };
    forward_tm_into(wr, d, x_tm, h0, &mut st);
    st
}

/// [`forward_tm`] into the buffers of `st` (reused across calls: no allocation in steady state).
pub fn forward_tm_into<T: Element>(
    wr: &WeightsRef<'_, T>,
    d: SeqDims,
    x_tm: &[T],
    h0: &[T],
    st: &mut ForwardState<T>,
) {
    let (b, t, i, h, o) = (d.batch, d.seq_len, d.input, d.hidden, d.output);
    let bh = b * h;
    let n = t * b;
    st.dims = d;
    let hs = &mut st.hs;
    fit(hs, (t + 1) * bh);
    hs[..bh].copy_from_slice(h0);
    // Hoisted input product for all steps at once: A = X Wᵀ, (T·B, I)·(I, H).
    gemm(
        n,
        h,
        i,
        x_tm,
        MatLayout::N,
        wr.w,
        MatLayout::T,
        &mut hs[bh..],
        false,
    );
    if let Some(bias) = wr.b_h {
        add_row_bias(&mut hs[bh..], bias);
    }
    let act = wr.activation;
    // Uᵀ stored once per sequence, so every step's product reads both operands as stored (the
    // small-product kernel's fast case; with U as a transposed operand the same product ran at
    // half the rate).
    let ut = if t > 0 {
        transpose(h, h, wr.u)
    } else {
        Vec::new()
    };
    for s in 0..t {
        let (prev, rest) = hs.split_at_mut((s + 1) * bh);
        let cur = &mut rest[..bh];
        // a_t = A_t + h_{t−1} Uᵀ, (B, H)·(H, H)
        gemm(
            b,
            h,
            h,
            &prev[s * bh..],
            MatLayout::N,
            &ut,
            MatLayout::N,
            cur,
            true,
        );
        act.forward_in_place(cur);
    }
    // Hoisted readout: Y = H Vᵀ, (T·B, H)·(H, O).
    let y = &mut st.y;
    fit(y, n * o);
    gemm(
        n,
        o,
        h,
        &hs[bh..],
        MatLayout::N,
        wr.v,
        MatLayout::T,
        y,
        false,
    );
    if let Some(bias) = wr.b_y {
        add_row_bias(y, bias);
    }
}

/// What [`backward_tm`] computes besides the weight gradients.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions {
    /// Chunked truncation length `k` (None = exact BPTT).
    pub truncate: Option<usize>,
    /// Compute `∇_x L`.
    pub need_x: bool,
    /// Keep `∇_{h_t}L` for every step (`(T, B, H)`), for analysis.
    pub keep_grad_h: bool,
}

/// Gradients of one sequence (time-major where they have a time axis).
#[derive(Clone, Debug)]
pub struct SeqGrads<T> {
    pub w: Vec<T>,
    pub u: Vec<T>,
    pub v: Vec<T>,
    pub b_h: Option<Vec<T>>,
    pub b_y: Option<Vec<T>>,
    /// `(B, H)`.
    pub h0: Vec<T>,
    /// `(T, B, I)` when asked for.
    pub x_tm: Option<Vec<T>>,
    /// `∇_{h_t}L` for t = 1..T, `(T, B, H)`, when asked for.
    pub grad_h: Option<Vec<T>>,
}

impl<T: Element> SeqGrads<T> {
    /// Empty buffers for [`backward_tm_into`] to fill.
    pub fn empty() -> Self {
        SeqGrads {
            w: Vec::new(),
            u: Vec::new(),
            v: Vec::new(),
            b_h: None,
            b_y: None,
            h0: Vec::new(),
            x_tm: None,
            grad_h: None,
        }
    }
}

/// BPTT through a sequence run by [`forward_tm`]. `gy (T, B, O)` is `∂L/∂y`; `g_hlast (B, H)` an
/// optional gradient arriving at `h_T` from later use of the state.
pub fn backward_tm<T: Element>(
    wr: &WeightsRef<'_, T>,
    x_tm: &[T],
    st: &ForwardState<T>,
    gy: &[T],
    g_hlast: Option<&[T]>,
    opts: &BackwardOptions,
) -> SeqGrads<T> {
    let mut g = SeqGrads::empty();
    backward_tm_into(wr, x_tm, st, gy, g_hlast, opts, &mut Vec::new(), &mut g);
    g
}

/// [`backward_tm`] into reused buffers: `delta` is scratch (`(T, B, H)`), `g` receives the
/// gradients. No allocation in steady state.
///
/// The recursion is fused into the buffer of δ: `Δ = Gy V` holds the readout's share of every
/// `g_t`; going backwards, row block t is complete once step t+1 has added `δ_{t+1} U` into it
/// (a gemm with β = 1), so it is scaled by `σ'_t` in place and becomes `δ_t`.
#[allow(clippy::too_many_arguments)]
pub fn backward_tm_into<T: Element>(
    wr: &WeightsRef<'_, T>,
    x_tm: &[T],
    st: &ForwardState<T>,
    gy: &[T],
    g_hlast: Option<&[T]>,
    opts: &BackwardOptions,
    delta: &mut Vec<T>,
    g: &mut SeqGrads<T>,
) {
    let d = st.dims;
    let (b, t, i, h, o) = (d.batch, d.seq_len, d.input, d.hidden, d.output);
    let bh = b * h;
    let n = t * b;
    let hs = &st.hs;
    // ∇_V = Σ_t gy_t h_tᵀ: (O, T·B)·(T·B, H)
    fit(&mut g.v, o * h);
    gemm(
        o,
        h,
        n,
        gy,
        MatLayout::T,
        &hs[bh..],
        MatLayout::N,
        &mut g.v,
        false,
    );
    // The readout's share of every g_t at once: Gy V, (T·B, O)·(O, H). Becomes δ in place.
    fit(delta, n * h);
    gemm(n, h, o, gy, MatLayout::N, wr.v, MatLayout::N, delta, false);
    fit(&mut g.h0, bh);
    if t == 0 {
        match g_hlast {
            Some(gl) => g.h0.copy_from_slice(gl),
            None => g.h0.iter_mut().for_each(|v| *v = T::zero()),
        }
    } else if let Some(gl) = g_hlast {
        add_into(&mut delta[(t - 1) * bh..], gl);
    }
    if opts.keep_grad_h {
        fit(g.grad_h.get_or_insert_with(Vec::new), n * h);
    } else {
        g.grad_h = None;
    }
    let act = wr.activation;
    for s in (0..t).rev() {
        let (before, rest) = delta.split_at_mut(s * bh);
        let gs = &mut rest[..bh];
        if let Some(gh) = g.grad_h.as_mut() {
            gh[s * bh..(s + 1) * bh].copy_from_slice(gs);
        }
        let hcur = &hs[(s + 1) * bh..(s + 2) * bh];
        act.backward_in_place(gs, hcur);
        if s == 0 {
            // ∇_{h_0} = δ_1 U, (B, H)·(H, H)
            gemm(
                b,
                h,
                h,
                gs,
                MatLayout::N,
                wr.u,
                MatLayout::N,
                &mut g.h0,
                false,
            );
        } else if opts.truncate.is_none_or(|k| s % k != 0) {
            // g_{t−1} += δ_t U, (B, H)·(H, H); skipped at a truncation boundary.
            gemm(
                b,
                h,
                h,
                gs,
                MatLayout::N,
                wr.u,
                MatLayout::N,
                &mut before[(s - 1) * bh..],
                true,
            );
        }
    }
    // ∇_W = Σ_t δ_t x_tᵀ: (H, T·B)·(T·B, I)
    fit(&mut g.w, h * i);
    gemm(
        h,
        i,
        n,
        delta,
        MatLayout::T,
        x_tm,
        MatLayout::N,
        &mut g.w,
        false,
    );
    // ∇_U = Σ_t δ_t h_{t−1}ᵀ: (H, T·B)·(T·B, H) with h_0..h_{T−1}
    fit(&mut g.u, h * h);
    gemm(
        h,
        h,
        n,
        delta,
        MatLayout::T,
        &hs[..n * h],
        MatLayout::N,
        &mut g.u,
        false,
    );
    if opts.need_x {
        // ∇_x = δ W: (T·B, H)·(H, I)
        let dx = g.x_tm.get_or_insert_with(Vec::new);
        fit(dx, n * i);
        gemm(n, i, h, delta, MatLayout::N, wr.w, MatLayout::N, dx, false);
    } else {
        g.x_tm = None;
    }
    match wr.b_h {
        Some(_) => col_sums_into(delta, h, g.b_h.get_or_insert_with(Vec::new)),
        None => g.b_h = None,
    }
    match wr.b_y {
        Some(_) => col_sums_into(gy, o, g.b_y.get_or_insert_with(Vec::new)),
        None => g.b_y = None,
    }
}

/// Checks the shapes of a sequence problem and returns its sizes.
#[allow(clippy::too_many_arguments)]
pub fn check_shapes(
    x: &[usize],
    h0: Option<&[usize]>,
    w: &[usize],
    u: &[usize],
    v: &[usize],
    b_h: Option<&[usize]>,
    b_y: Option<&[usize]>,
) -> Result<SeqDims> {
    if w.len() != 2 {
        return Err(shape_err!(
            "elman_rnn",
            "W must be (hidden, input), got {w:?}"
        ));
    }
    let (hidden, input) = (w[0], w[1]);
    if u != [hidden, hidden] {
        return Err(shape_err!(
            "elman_rnn",
            "U must be (hidden, hidden) = [{hidden}, {hidden}] to match W {w:?}, got {u:?}"
        ));
    }
    if v.len() != 2 || v[1] != hidden {
        return Err(shape_err!(
            "elman_rnn",
            "V must be (output, hidden) with hidden = {hidden} (from W {w:?}), got {v:?}"
        ));
    }
    let output = v[0];
    if x.len() != 3 || x[2] != input {
        return Err(shape_err!(
            "elman_rnn",
            "x must be (batch, time, input) with input = {input} (from W {w:?}), got {x:?}"
        ));
    }
    let (batch, seq_len) = (x[0], x[1]);
    if let Some(s) = h0 {
        if s != [batch, hidden] {
            return Err(shape_err!(
                "elman_rnn",
                "h0 must be (batch, hidden) = [{batch}, {hidden}] (from x {x:?}, W {w:?}), got {s:?}"
            ));
        }
    }
    if let Some(s) = b_h {
        if s != [hidden] {
            return Err(shape_err!("elman_rnn", "b_h must be [{hidden}], got {s:?}"));
        }
    }
    if let Some(s) = b_y {
        if s != [output] {
            return Err(shape_err!("elman_rnn", "b_y must be [{output}], got {s:?}"));
        }
    }
    Ok(SeqDims {
        batch,
        seq_len,
        input,
        hidden,
        output,
    })
}

/// The fused whole-sequence op. Inputs `[x, h0, W, U, V, b_h?, b_y?]`, outputs `[y, h_T]`.
struct ElmanSeqOp<T> {
    activation: Activation,
    truncate: Option<usize>,
    has_bh: bool,
    has_by: bool,
    x_tm: Vec<T>,
    state: Arc<ForwardState<T>>,
}

impl<T: Element> Op<T> for ElmanSeqOp<T> {
    fn name(&self) -> &'static str {
        "elman_rnn"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let d = self.state.dims;
        let mut k = 5;
        let b_h = if self.has_bh {
            k += 1;
            Some(ctx.inputs[k - 1].data())
        } else {
            None
        };
        let b_y = if self.has_by {
            Some(ctx.inputs[k].data())
        } else {
            None
        };
        let wr = WeightsRef {
            w: ctx.inputs[2].data(),
            u: ctx.inputs[3].data(),
            v: ctx.inputs[4].data(),
            b_h,
            b_y,
            activation: self.activation,
        };
        let gy = ctx.grad_output(0);
        let gy_tm = swap01(gy.data(), d.batch, d.seq_len, d.output);
        let g = backward_tm(
            &wr,
            &self.x_tm,
            &self.state,
            &gy_tm,
            ctx.grad_outputs[1].map(|t| t.data()),
            &BackwardOptions {
                truncate: self.truncate,
                need_x: ctx.needs_grad[0],
                keep_grad_h: false,
            },
        );
        let mut out = vec![
            g.x_tm.map(|dx| {
                Tensor::from_parts(
                    vec![d.batch, d.seq_len, d.input],
                    swap01(&dx, d.seq_len, d.batch, d.input),
                )
            }),
            Some(Tensor::from_parts(vec![d.batch, d.hidden], g.h0)),
            Some(Tensor::from_parts(vec![d.hidden, d.input], g.w)),
            Some(Tensor::from_parts(vec![d.hidden, d.hidden], g.u)),
            Some(Tensor::from_parts(vec![d.output, d.hidden], g.v)),
        ];
        if let Some(gb) = g.b_h {
            out.push(Some(Tensor::from_parts(vec![d.hidden], gb)));
        }
        if let Some(gb) = g.b_y {
            out.push(Some(Tensor::from_parts(vec![d.output], gb)));
        }
        Ok(out)
    }
}

/// Result of a sequence forward on a tape.
pub struct RnnOutput<T> {
    /// `(B, T, O)`.
    pub y: Var,
    /// `h_T`, `(B, H)`: carry it (detached) into the next chunk of a stream.
    pub h_last: Var,
    /// Every hidden state, time-major (no gradient), e.g. to restart a stream mid-window.
    pub states: Arc<ForwardState<T>>,
}

/// The weights of one Elman RNN on a tape.
#[derive(Clone, Copy, Debug)]
pub struct RnnVars {
    pub w: Var,
    pub u: Var,
    pub v: Var,
    pub b_h: Option<Var>,
    pub b_y: Option<Var>,
    pub activation: Activation,
}

fn shapes_of<T: Element>(tape: &Tape<T>, x: Var, h0: Option<Var>, p: &RnnVars) -> Result<SeqDims> {
    check_shapes(
        tape.shape(x),
        h0.map(|h| tape.shape(h)),
        tape.shape(p.w),
        tape.shape(p.u),
        tape.shape(p.v),
        p.b_h.map(|b| tape.shape(b)),
        p.b_y.map(|b| tape.shape(b)),
    )
}

/// Fused whole-sequence Elman RNN: `x (B, T, I)`, `h0 (B, H)` (zeros when `None`).
/// `truncate = Some(k)` makes the backward chunked-truncated BPTT.
pub fn elman_seq<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    p: &RnnVars,
    truncate: Option<usize>,
) -> Result<RnnOutput<T>> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = shapes_of(tape, x, h0, p)?;
    let h0 = match h0 {
        Some(h) => h,
        None => tape.constant(Tensor::zeros(&[d.batch, d.hidden])),
    };
    let x_tm = swap01(tape.value(x).data(), d.batch, d.seq_len, d.input);
    let st = {
        let wr = WeightsRef {
            w: tape.value(p.w).data(),
            u: tape.value(p.u).data(),
            v: tape.value(p.v).data(),
            b_h: p.b_h.map(|b| tape.value(b).data()),
            b_y: p.b_y.map(|b| tape.value(b).data()),
            activation: p.activation,
        };
        forward_tm(&wr, d, &x_tm, tape.value(h0).data())
    };
    let y = Tensor::from_parts(
        vec![d.batch, d.seq_len, d.output],
        swap01(&st.y, d.seq_len, d.batch, d.output),
    );
    let h_last = st.state(d.seq_len);
    let state = Arc::new(st);
    let mut inputs = vec![x, h0, p.w, p.u, p.v];
    inputs.extend(p.b_h);
    inputs.extend(p.b_y);
    let op = ElmanSeqOp {
        activation: p.activation,
        truncate,
        has_bh: p.b_h.is_some(),
        has_by: p.b_y.is_some(),
        x_tm,
        state: state.clone(),
    };
    let outs = tape.record(op, &inputs, vec![y, h_last]);
    Ok(RnnOutput {
        y: outs[0],
        h_last: outs[1],
        states: state,
    })
}

/// Reference path: the same model unrolled into primitive ops, one step at a time. Truncation
/// detaches the state (a fresh constant) at `t = k, 2k, …`. Returns `(y (B, T, O), h_T)`.
pub fn elman_unrolled<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    p: &RnnVars,
    truncate: Option<usize>,
) -> Result<(Var, Var)> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = shapes_of(tape, x, h0, p)?;
    let mut h = match h0 {
        Some(h) => h,
        None => tape.constant(Tensor::zeros(&[d.batch, d.hidden])),
    };
    let mut ys = Vec::with_capacity(d.seq_len);
    for s in 0..d.seq_len {
        if s > 0 && truncate.is_some_and(|k| s % k == 0) {
            let v = tape.value(h).clone();
            h = tape.constant(v);
        }
        let xt = ops::narrow(tape, x, 1, s, 1)?; // (B, 1, I)
        let xt = ops::reshape(tape, xt, &[d.batch, d.input])?;
        let a = ops::matmul_t(tape, xt, p.w)?; // (B, H)
        let r = ops::matmul_t(tape, h, p.u)?;
        let mut a = ops::add(tape, a, r)?;
        if let Some(b) = p.b_h {
            a = ops::add(tape, a, b)?;
        }
        h = p.activation.apply(tape, a)?;
        let mut y = ops::matmul_t(tape, h, p.v)?; // (B, O)
        if let Some(b) = p.b_y {
            y = ops::add(tape, y, b)?;
        }
        ys.push(ops::reshape(tape, y, &[d.batch, 1, d.output])?);
    }
    let y = if ys.is_empty() {
        tape.constant(Tensor::zeros(&[d.batch, 0, d.output]))
    } else {
        ops::concat(tape, &ys, 1)?
    };
    Ok((y, h))
}

/// Configuration of an [`ElmanRnn`] layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElmanRnnConfig {
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
    pub activation: Activation,
    /// Biases `b_h`, `b_y` (the assignment's model has none).
    pub bias: bool,
}

/// An Elman RNN layer whose weights live in a [`ParamStore`] under `{prefix}W`, `{prefix}U`,
/// `{prefix}V` (and `{prefix}b_h`, `{prefix}b_y`).
#[derive(Clone, Debug)]
pub struct ElmanRnn {
    pub config: ElmanRnnConfig,
    pub w: ParamId,
    pub u: ParamId,
    pub v: ParamId,
    pub b_h: Option<ParamId>,
    pub b_y: Option<ParamId>,
}

impl ElmanRnn {
    /// Registers the weights, uniform in `±1/√hidden` (the range of `torch.nn.RNN`); biases too.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        config: ElmanRnnConfig,
        rng: &mut Rng,
    ) -> Result<Self> {
        let c = config;
        if c.input == 0 || c.hidden == 0 || c.output == 0 {
            return Err(invalid!(
                "Elman RNN sizes must be positive, got input {} hidden {} output {}",
                c.input,
                c.hidden,
                c.output
            ));
        }
        let a = 1.0 / (c.hidden as f64).sqrt();
        let mut uni =
            |shape: &[usize]| Tensor::from_fn(shape, |_| T::c(a * (2.0 * rng.uniform() - 1.0)));
        let w = store.add(format!("{prefix}W"), uni(&[c.hidden, c.input]))?;
        let u = store.add(format!("{prefix}U"), uni(&[c.hidden, c.hidden]))?;
        let v = store.add(format!("{prefix}V"), uni(&[c.output, c.hidden]))?;
        let (b_h, b_y) = if c.bias {
            let bh = store.add(format!("{prefix}b_h"), uni(&[c.hidden]))?;
            let by = store.add(format!("{prefix}b_y"), uni(&[c.output]))?;
            (Some(bh), Some(by))
        } else {
            (None, None)
        };
        Ok(ElmanRnn {
            config,
            w,
            u,
            v,
            b_h,
            b_y,
        })
    }
    /// Brings the weights onto a tape.
    pub fn vars<T: Element>(&self, tape: &mut Tape<T>, store: &ParamStore<T>) -> RnnVars {
        RnnVars {
            w: tape.param(store, self.w),
            u: tape.param(store, self.u),
            v: tape.param(store, self.v),
            b_h: self.b_h.map(|b| tape.param(store, b)),
            b_y: self.b_y.map(|b| tape.param(store, b)),
            activation: self.config.activation,
        }
    }
    /// Fused forward over `x (B, T, I)`.
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        h0: Option<Var>,
        truncate: Option<usize>,
    ) -> Result<RnnOutput<T>> {
        let p = self.vars(tape, store);
        elman_seq(tape, x, h0, &p, truncate)
    }
}

/// Owned weights for direct (tape-free) use: the `nabla rnn grad` interface, the analyses and the
/// benchmark.
#[derive(Clone, Debug)]
pub struct ElmanWeights<T: Element> {
    pub w: Tensor<T>,
    pub u: Tensor<T>,
    pub v: Tensor<T>,
    pub b_h: Option<Tensor<T>>,
    pub b_y: Option<Tensor<T>>,
    pub activation: Activation,
}

/// Loss and gradients of the assignment's loss `L = Σ_b Σ_t ‖z_t − y_t‖²`.
#[derive(Clone, Debug)]
pub struct MseBptt<T: Element> {
    pub loss: f64,
    pub w: Tensor<T>,
    pub u: Tensor<T>,
    pub v: Tensor<T>,
    pub b_h: Option<Tensor<T>>,
    pub b_y: Option<Tensor<T>>,
    /// `(B, H)`.
    pub h0: Tensor<T>,
    /// `(B, T, I)` when asked for.
    pub x: Option<Tensor<T>>,
    /// `∇_{h_t}L`, `(T, B, H)` time-major, when asked for.
    pub grad_h: Option<Tensor<T>>,
    /// `h_T`, `(B, H)`.
    pub h_last: Tensor<T>,
}

impl<T: Element> MseBptt<T> {
    /// Concatenation of `∇_W, ∇_U, ∇_V` (and the biases) as one f64 vector.
    pub fn flat_weight_grad(&self) -> Vec<f64> {
        let mut v = self.w.to_f64_vec();
        v.extend(self.u.to_f64_vec());
        v.extend(self.v.to_f64_vec());
        for b in [&self.b_h, &self.b_y].into_iter().flatten() {
            v.extend(b.to_f64_vec());
        }
        v
    }
}

impl<T: Element> ElmanWeights<T> {
    /// Random weights uniform in `±scale/√hidden`.
    pub fn random(
        input: usize,
        hidden: usize,
        output: usize,
        activation: Activation,
        scale: f64,
        rng: &mut Rng,
    ) -> Self {
        let a = scale / (hidden as f64).sqrt();
        let mut uni =
            |shape: &[usize]| Tensor::from_fn(shape, |_| T::c(a * (2.0 * rng.uniform() - 1.0)));
        ElmanWeights {
            w: uni(&[hidden, input]),
            u: uni(&[hidden, hidden]),
            v: uni(&[output, hidden]),
            b_h: None,
            b_y: None,
            activation,
        }
    }
    pub fn as_ref(&self) -> WeightsRef<'_, T> {
        WeightsRef {
            w: self.w.data(),
            u: self.u.data(),
            v: self.v.data(),
            b_h: self.b_h.as_ref().map(|b| b.data()),
            b_y: self.b_y.as_ref().map(|b| b.data()),
            activation: self.activation,
        }
    }
    pub fn hidden(&self) -> usize {
        self.w.dim(0)
    }
    /// Sizes from `x (B, T, I)` and `h0 (B, H)`, checked against every weight.
    fn dims(&self, x: &Tensor<T>, h0: Option<&Tensor<T>>) -> Result<SeqDims> {
        check_shapes(
            x.shape(),
            h0.map(|h| h.shape()),
            self.w.shape(),
            self.u.shape(),
            self.v.shape(),
            self.b_h.as_ref().map(|b| b.shape()),
            self.b_y.as_ref().map(|b| b.shape()),
        )
    }
    /// Checks every shape against `x (B, T, I)`, `z (B, T, O)` and `h0 (B, H)`.
    pub fn check(&self, x: &Tensor<T>, z: &Tensor<T>, h0: Option<&Tensor<T>>) -> Result<SeqDims> {
        let d = self.dims(x, h0)?;
        if z.shape() != [d.batch, d.seq_len, d.output] {
            return Err(shape_err!(
                "elman_rnn",
                "z must be (batch, time, output) = [{}, {}, {}] (from x {:?} and V {:?}), got {:?}",
                d.batch,
                d.seq_len,
                d.output,
                x.shape(),
                self.v.shape(),
                z.shape()
            ));
        }
        Ok(d)
    }
    /// Forward only: `y (B, T, O)` and the states.
    pub fn forward(&self, x: &Tensor<T>, h0: Option<&Tensor<T>>) -> Result<ForwardState<T>> {
        let d = self.dims(x, h0)?;
        let x_tm = swap01(x.data(), d.batch, d.seq_len, d.input);
        let h0v = h0
            .map(|h| h.data().to_vec())
            .unwrap_or_else(|| vec![T::zero(); d.batch * d.hidden]);
        Ok(forward_tm(&self.as_ref(), d, &x_tm, &h0v))
    }
    /// Loss `Σ ‖z − y‖²` and its (exact or chunked-truncated) gradients.
    pub fn mse_bptt(
        &self,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        opts: &BackwardOptions,
    ) -> Result<MseBptt<T>> {
        let mut ws = RnnWorkspace::new();
        let loss = self.mse_bptt_ws(&mut ws, x, z, h0, opts)?;
        let g = std::mem::replace(&mut ws.grads, SeqGrads::empty());
        Ok(self.pack(ws.state.dims, &ws.state, loss, g))
    }
    /// [`Self::mse_bptt`] into the reused buffers of `ws` (gradients in `ws.grads`, time-major
    /// states in `ws.state`); returns the loss. Allocation-free once `ws` has seen these sizes.
    pub fn mse_bptt_ws(
        &self,
        ws: &mut RnnWorkspace<T>,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        opts: &BackwardOptions,
    ) -> Result<f64> {
        if opts.truncate == Some(0) {
            return Err(invalid!("truncation length k must be at least 1"));
        }
        let d = self.check(x, z, h0)?;
        swap01_into(x.data(), d.batch, d.seq_len, d.input, &mut ws.x_tm);
        fit(&mut ws.h0, d.batch * d.hidden);
        match h0 {
            Some(h) => ws.h0.copy_from_slice(h.data()),
            None => ws.h0.iter_mut().for_each(|v| *v = T::zero()),
        }
        let wr = self.as_ref();
        forward_tm_into(&wr, d, &ws.x_tm, &ws.h0, &mut ws.state);
        let loss = mse_grad_bm_into(&ws.state.y, z.data(), d, &mut ws.gy);
        backward_tm_into(
            &wr,
            &ws.x_tm,
            &ws.state,
            &ws.gy,
            None,
            opts,
            &mut ws.delta,
            &mut ws.grads,
        );
        Ok(loss)
    }
    /// One plain SGD step on the assignment's loss (`W ← W − lr·∇_W L`, same for U, V and the
    /// biases); returns the loss before the step.
    pub fn sgd_step(
        &mut self,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        lr: f64,
        truncate: Option<usize>,
    ) -> Result<f64> {
        self.sgd_step_ws(&mut RnnWorkspace::new(), x, z, h0, lr, truncate)
    }
    /// [`Self::sgd_step`] with buffers reused across steps: the `nabla bench rnn` workload.
    pub fn sgd_step_ws(
        &mut self,
        ws: &mut RnnWorkspace<T>,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        lr: f64,
        truncate: Option<usize>,
    ) -> Result<f64> {
        let loss = self.mse_bptt_ws(
            ws,
            x,
            z,
            h0,
            &BackwardOptions {
                truncate,
                ..Default::default()
            },
        )?;
        let lr = T::c(-lr);
        let g = &ws.grads;
        axpy_into(self.w.data_mut(), lr, &g.w);
        axpy_into(self.u.data_mut(), lr, &g.u);
        axpy_into(self.v.data_mut(), lr, &g.v);
        if let (Some(b), Some(gb)) = (self.b_h.as_mut(), g.b_h.as_ref()) {
            axpy_into(b.data_mut(), lr, gb);
        }
        if let (Some(b), Some(gb)) = (self.b_y.as_mut(), g.b_y.as_ref()) {
            axpy_into(b.data_mut(), lr, gb);
        }
        Ok(loss)
    }
    fn pack(&self, d: SeqDims, st: &ForwardState<T>, loss: f64, g: SeqGrads<T>) -> MseBptt<T> {
        MseBptt {
            loss,
            w: Tensor::from_parts(self.w.shape().to_vec(), g.w),
            u: Tensor::from_parts(self.u.shape().to_vec(), g.u),
            v: Tensor::from_parts(self.v.shape().to_vec(), g.v),
            b_h: g.b_h.map(|b| Tensor::from_parts(vec![d.hidden], b)),
            b_y: g.b_y.map(|b| Tensor::from_parts(vec![d.output], b)),
            h0: Tensor::from_parts(vec![d.batch, d.hidden], g.h0),
            x: g.x_tm.map(|dx| {
                Tensor::from_parts(
                    vec![d.batch, d.seq_len, d.input],
                    swap01(&dx, d.seq_len, d.batch, d.input),
                )
            }),
            grad_h: g
                .grad_h
                .map(|gh| Tensor::from_parts(vec![d.seq_len, d.batch, d.hidden], gh)),
            h_last: st.state(d.seq_len),
        }
    }

    /// Williams & Peng TBPTT(k1, k2) gradient over one sequence with fixed weights: every `k1`
    /// steps (and at the end), the losses of the last `k1` steps are backpropagated through the
    /// last `k2` steps; the gradients of all updates are summed. `k1 = k2 = k` is chunked TBPTT;
    /// `k2 ≥ T` is exact BPTT. Returns the summed gradients (`h0`: gradient reaching `h_0`).
    pub fn mse_tbptt(
        &self,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        k1: usize,
        k2: usize,
    ) -> Result<MseBptt<T>> {
        let sched = TbpttSchedule::new(k1, k2)?;
        let d = self.check(x, z, h0)?;
        let x_tm = swap01(x.data(), d.batch, d.seq_len, d.input);
        let z_tm = swap01(z.data(), d.batch, d.seq_len, d.output);
        let h0v = h0
            .map(|h| h.data().to_vec())
            .unwrap_or_else(|| vec![T::zero(); d.batch * d.hidden]);
        let wr = self.as_ref();
        // Weights are fixed, so each window's starting state is the full forward's state there.
        let full = forward_tm(&wr, d, &x_tm, &h0v);
        let (loss, _) = mse_grad(&full.y, &z_tm);
        let (bi, bo) = (d.batch * d.input, d.batch * d.output);
        let bh = d.batch * d.hidden;
        let mut acc: Option<SeqGrads<T>> = None;
        for win in sched.windows(d.seq_len) {
            let len = win.end - win.start;
            let wd = SeqDims { seq_len: len, ..d };
            let xw = &x_tm[win.start * bi..win.end * bi];
            let st = forward_tm(&wr, wd, xw, &full.hs[win.start * bh..(win.start + 1) * bh]);
            let (_, mut gy) = mse_grad(&st.y, &z_tm[win.start * bo..win.end * bo]);
            // Losses before `loss_from` were counted by an earlier update.
            gy[..(win.loss_from - win.start) * bo]
                .iter_mut()
                .for_each(|g| *g = T::zero());
            let g = backward_tm(&wr, xw, &st, &gy, None, &BackwardOptions::default());
            match acc.as_mut() {
                None => {
                    let mut g = g;
                    if win.start > 0 {
                        g.h0.iter_mut().for_each(|v| *v = T::zero());
                    }
                    acc = Some(g);
                }
                Some(a) => {
                    add_into(&mut a.w, &g.w);
                    add_into(&mut a.u, &g.u);
                    add_into(&mut a.v, &g.v);
                    if let (Some(a), Some(b)) = (a.b_h.as_mut(), g.b_h.as_ref()) {
                        add_into(a, b);
                    }
                    if let (Some(a), Some(b)) = (a.b_y.as_mut(), g.b_y.as_ref()) {
                        add_into(a, b);
                    }
                    if win.start == 0 {
                        add_into(&mut a.h0, &g.h0);
                    }
                }
            }
        }
        let g = acc.unwrap_or_else(|| SeqGrads {
            w: vec![T::zero(); self.w.numel()],
            u: vec![T::zero(); self.u.numel()],
            v: vec![T::zero(); self.v.numel()],
            b_h: self.b_h.as_ref().map(|b| vec![T::zero(); b.numel()]),
            b_y: self.b_y.as_ref().map(|b| vec![T::zero(); b.numel()]),
            h0: vec![T::zero(); bh],
            x_tm: None,
            grad_h: None,
        });
        Ok(self.pack(d, &full, loss, g))
    }
}

fn add_into<T: Element>(a: &mut [T], b: &[T]) {
    axpy(T::one(), b, a);
}

fn axpy_into<T: Element>(a: &mut [T], alpha: T, b: &[T]) {
    axpy(alpha, b, a);
}

/// Buffers of one training step kept across steps, so that repeated steps on the same sizes
/// allocate nothing (fresh multi-megabyte buffers every step cost page faults).
#[derive(Clone, Debug)]
pub struct RnnWorkspace<T> {
    /// `(T, B, I)`.
    pub x_tm: Vec<T>,
    /// `(B, H)`.
    pub h0: Vec<T>,
    /// Forward states `(T+1, B, H)` and outputs `(T, B, O)`.
    pub state: ForwardState<T>,
    /// `∂L/∂y`, `(T, B, O)`.
    pub gy: Vec<T>,
    /// δ scratch, `(T, B, H)`.
    pub delta: Vec<T>,
    /// Gradients of the last step.
    pub grads: SeqGrads<T>,
}

impl<T: Element> RnnWorkspace<T> {
    pub fn new() -> Self {
        RnnWorkspace {
            x_tm: Vec::new(),
            h0: Vec::new(),
            state: ForwardState {
                dims: SeqDims::default(),
                hs: Vec::new(),
                y: Vec::new(),
            },
            gy: Vec::new(),
            delta: Vec::new(),
            grads: SeqGrads::empty(),
        }
    }
}

impl<T: Element> Default for RnnWorkspace<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `L = Σ (y − z)²` and `∂L/∂y = 2(y − z)` with `y (T, B, O)` time-major and `z (B, T, O)`
/// batch-major: the transpose of `z` is fused into the loss pass.
pub fn mse_grad_bm_into<T: Element>(y_tm: &[T], z: &[T], d: SeqDims, gy: &mut Vec<T>) -> f64 {
    let (b, t, o) = (d.batch, d.seq_len, d.output);
    fit(gy, t * b * o);
    let two = T::c(2.0);
    let mut loss = 0.0f64;
    for s in 0..t {
        for j in 0..b {
            let r0 = (s * b + j) * o;
            let z0 = (j * t + s) * o;
            for ((g, &yv), &zv) in gy[r0..r0 + o]
                .iter_mut()
                .zip(&y_tm[r0..r0 + o])
                .zip(&z[z0..z0 + o])
            {
                let r = yv - zv;
                loss += r.as_f64() * r.as_f64();
                *g = two * r;
            }
        }
    }
    loss
}

/// `L = Σ (y − z)²` (accumulated in f64) and `∂L/∂y = 2(y − z)`.
pub fn mse_grad<T: Element>(y: &[T], z: &[T]) -> (f64, Vec<T>) {
    let mut loss = 0.0f64;
    let two = T::c(2.0);
    let gy = y
        .iter()
        .zip(z)
        .map(|(&a, &b)| {
            let r = a - b;
            loss += r.as_f64() * r.as_f64();
            two * r
        })
        .collect();
    (loss, gy)
}

/// One update of Williams & Peng's TBPTT(k1, k2): the window `[start, end)` is run forward from
/// the (detached) state at `start`, and the losses of steps `[loss_from, end)` are backpropagated
/// through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TbpttWindow {
    pub start: usize,
    pub loss_from: usize,
    pub end: usize,
}

/// The TBPTT(k1, k2) schedule, `1 ≤ k1 ≤ k2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TbpttSchedule {
    pub k1: usize,
    pub k2: usize,
}

impl TbpttSchedule {
    pub fn new(k1: usize, k2: usize) -> Result<Self> {
        if k1 == 0 {
            return Err(invalid!("TBPTT needs k1 >= 1, got k1 = {k1}"));
        }
        if k2 < k1 {
            return Err(invalid!(
                "TBPTT(k1, k2) needs k2 >= k1 (every k1 steps, backpropagate through the last k2), got k1 = {k1}, k2 = {k2}"
            ));
        }
        Ok(TbpttSchedule { k1, k2 })
    }
    /// The update ending at step `end` (steps `[end − k1, end)` contribute losses).
    pub fn window_ending(&self, end: usize, prev_end: usize) -> TbpttWindow {
        TbpttWindow {
            start: end.saturating_sub(self.k2),
            loss_from: prev_end,
            end,
        }
    }
    /// All updates over a sequence of `len` steps: ends at `k1, 2k1, …` and at `len`.
    pub fn windows(&self, len: usize) -> Vec<TbpttWindow> {
        let mut out = Vec::new();
        let mut prev = 0;
        while prev < len {
            let end = (prev + self.k1).min(len);
            out.push(self.window_ending(end, prev));
            prev = end;
        }
        out
    }
}
