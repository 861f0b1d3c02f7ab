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

use super::seq::{add_into, fit, BackwardOptions, SeqDims};
use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::kernels::reduce::{add_row_bias, col_sums_into};
use crate::kernels::rnn::swap01;
use crate::kernels::{gemm, transpose, MatLayout};
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub use crate::nn::activation::Activation;

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

pub(crate) fn shapes_of<T: Element>(
    tape: &Tape<T>,
    x: Var,
    h0: Option<Var>,
    p: &RnnVars,
) -> Result<SeqDims> {
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

/// An Elman RNN layer whose weights live in a [`ParamStore`] under its [`VarBuilder`] path:
/// `{path}.W (H, I)`, `{path}.U (H, H)`, `{path}.V (O, H)` (and `{path}.b_h`, `{path}.b_y`).
/// As a [`Module`], `forward` maps `x (B, T, I)` to `y (B, T, O)` from `h_0 = 0` with exact BPTT;
/// [`ElmanRnn::forward_seq`] takes a carried state and a truncation length.
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
    /// Declares the weights, uniform in `±1/√hidden` (the range of `torch.nn.RNN`); biases too.
    pub fn new<T: Element>(mut vb: VarBuilder<'_, T>, config: ElmanRnnConfig) -> Result<Self> {
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
        let uni = Init::Uniform { low: -a, high: a };
        let w = vb.get("W", &[c.hidden, c.input], uni)?;
        let u = vb.get("U", &[c.hidden, c.hidden], uni)?;
        let v = vb.get("V", &[c.output, c.hidden], uni)?;
        let (b_h, b_y) = if c.bias {
            let bh = vb.get("b_h", &[c.hidden], uni)?;
            let by = vb.get("b_y", &[c.output], uni)?;
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
    /// Fused forward over `x (B, T, I)` from `h0 (B, H)` (zeros when `None`), chunked-truncated
    /// BPTT with `truncate = Some(k)`.
    pub fn forward_seq<T: Element>(
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

impl<T: Element> Module<T> for ElmanRnn {
    /// `y (B, T, O)` from `h_0 = 0`, exact BPTT.
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        Ok(self.forward_seq(tape, store, x, None, None)?.y)
    }
    fn params(&self) -> Vec<ParamId> {
        [self.w, self.u, self.v]
            .into_iter()
            .chain(self.b_h)
            .chain(self.b_y)
            .collect()
    }
}
