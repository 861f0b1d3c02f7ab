//! LSTM with PyTorch's equations, gate order and names (`torch.nn.LSTM`, one layer):
//!
//! ```text
//! i, f, g, o = split4(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)
//! c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g)
//! h_t = σ(o) ⊙ tanh(c_t)
//! ```
//!
//! Fast path, as for the Elman RNN: one fused op for the whole sequence, time-major inside. The
//! input product `X W_ihᵀ + b_ih + b_hh` is one `(T·B, I)·(I, 4H)` gemm before the loop; each
//! step adds `h_{t−1} W_hhᵀ` (one small gemm against `W_hhᵀ` stored once) and runs the
//! pointwise cell update of [`crate::kernels::rnn::lstm_cell_forward`].
//!
//! Backward (BPTT), with `dh_t = ∇_{h_t}L` and `dc_t = ∇_{c_t}L`, `k_t = tanh c_t`:
//!
//! ```text
//! dh_t   = ∂L/∂h_t (from the output) + da_{t+1} W_hh           (recurrent term)
//! ∂c_t   = dc_t + dh_t ⊙ o ⊙ (1 − k_t²)                         (dc_t = ∂c_{t+1} ⊙ f_{t+1})
//! da_t   = [∂c ⊙ g ⊙ i(1−i), ∂c ⊙ c_{t−1} ⊙ f(1−f), ∂c ⊙ i ⊙ (1−g²), dh ⊙ k ⊙ o(1−o)]
//! ∇W_ih  = Σ_t da_tᵀ x_t    ∇W_hh = Σ_t da_tᵀ h_{t−1}    ∇b_ih = ∇b_hh = Σ_t da_t
//! ∇x_t   = da_t W_ih        ∇h_0 = da_1 W_hh             ∇c_0 = ∂c_1 ⊙ f_1
//! ```
//!
//! Only the recursion runs step by step; the weight and input gradients are one gemm each over
//! all steps. Chunked truncation (`truncate = k`) detaches both `h` and `c` at `t = k, 2k, …`:
//! the recurrent term and `dc` are dropped there; the initial state is not a boundary.
//!
//! Reference path: [`crate::nn::rnn::reference::lstm_unrolled`].

use super::seq::{
    check_cell_shapes, fit, BackwardOptions, CellGrads, CellRef, CellScratch, CellState, CellVars,
    SeqDims,
};
use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::invalid;
use crate::kernels::reduce::{add_row_bias, col_sums_into};
use crate::kernels::rnn::{lstm_cell_backward, lstm_cell_forward, swap01};
use crate::kernels::{gemm, transpose, MatLayout};
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use std::sync::Arc;

/// The LSTM's weights on a tape.
pub type LstmVars = CellVars;

/// Fused LSTM forward over a time-major `x_tm (T, B, I)` from `h0`, `c0 (B, H)`, into `st`
/// (buffers reused: no allocation in steady state).
pub fn forward_tm_into<T: Element>(
    w: &CellRef<'_, T>,
    d: SeqDims,
    x_tm: &[T],
    h0: &[T],
    c0: &[T],
    st: &mut CellState<T>,
) {
    let (b, t, i, h) = (d.batch, d.seq_len, d.input, d.hidden);
    let bh = b * h;
    let g4 = 4 * h;
    st.dims = d;
    fit(&mut st.hs, (t + 1) * bh);
    fit(&mut st.cs, (t + 1) * bh);
    fit(&mut st.gates, t * b * g4);
    fit(&mut st.aux, t * bh);
    st.hs[..bh].copy_from_slice(h0);
    st.cs[..bh].copy_from_slice(c0);
    // Hoisted: A = X W_ihᵀ + b_ih + b_hh for all steps, (T·B, I)·(I, 4H).
    gemm(
        t * b,
        g4,
        i,
        x_tm,
        MatLayout::N,
        w.w_ih,
        MatLayout::T,
        &mut st.gates,
        false,
    );
    for bias in [w.b_ih, w.b_hh].into_iter().flatten() {
        add_row_bias(&mut st.gates, bias);
    }
    // W_hhᵀ (H, 4H) once per sequence: each step's product then reads both operands as stored.
    let wt = if t > 0 {
        transpose(g4, h, w.w_hh)
    } else {
        Vec::new()
    };
    for s in 0..t {
        let gates = &mut st.gates[s * b * g4..(s + 1) * b * g4];
        // a_t = A_t + h_{t−1} W_hhᵀ, (B, H)·(H, 4H)
        gemm(
            b,
            g4,
            h,
            &st.hs[s * bh..(s + 1) * bh],
            MatLayout::N,
            &wt,
            MatLayout::N,
            gates,
            true,
        );
        let (cp, cn) = st.cs.split_at_mut((s + 1) * bh);
        let (_, hn) = st.hs.split_at_mut((s + 1) * bh);
        lstm_cell_forward(
            h,
            gates,
            &cp[s * bh..],
            &mut cn[..bh],
            &mut st.aux[s * bh..(s + 1) * bh],
            &mut hn[..bh],
        );
    }
}

/// BPTT through a sequence run by [`forward_tm_into`]. `gh (T, B, H)` is `∂L/∂h_t` from the
/// outputs; `g_hlast`, `g_clast (B, H)` optional gradients arriving at `h_T`, `c_T`.
#[allow(clippy::too_many_arguments)]
pub fn backward_tm_into<T: Element>(
    w: &CellRef<'_, T>,
    x_tm: &[T],
    st: &CellState<T>,
    gh: &[T],
    g_hlast: Option<&[T]>,
    g_clast: Option<&[T]>,
    opts: &BackwardOptions,
    sc: &mut CellScratch<T>,
    g: &mut CellGrads<T>,
) {
    let d = st.dims;
    let (b, t, h) = (d.batch, d.seq_len, d.hidden);
    let bh = b * h;
    let g4 = 4 * h;
    let n = t * b;
    sc.dh.clear();
    sc.dh.extend_from_slice(&gh[..n * h]);
    fit(&mut sc.dc, bh);
    match g_clast {
        Some(gc) => sc.dc.copy_from_slice(gc),
        None => sc.dc.iter_mut().for_each(|v| *v = T::zero()),
    }
    fit(&mut sc.da, n * g4);
    fit(&mut g.h0, bh);
    fit(&mut g.c0, bh);
    g.h0.iter_mut().for_each(|v| *v = T::zero());
    if t == 0 {
        if let Some(gl) = g_hlast {
            g.h0.copy_from_slice(gl);
        }
    } else if let Some(gl) = g_hlast {
        super::seq::add_into(&mut sc.dh[(t - 1) * bh..], gl);
    }
    if opts.keep_grad_h {
        fit(g.grad_h.get_or_insert_with(Vec::new), n * h);
    } else {
        g.grad_h = None;
    }
    for s in (0..t).rev() {
        let (before, rest) = sc.dh.split_at_mut(s * bh);
        let dhs = &rest[..bh];
        if let Some(gk) = g.grad_h.as_mut() {
            gk[s * bh..(s + 1) * bh].copy_from_slice(dhs);
        }
        let das = &mut sc.da[s * b * g4..(s + 1) * b * g4];
        lstm_cell_backward(
            h,
            &st.gates[s * b * g4..(s + 1) * b * g4],
            &st.cs[s * bh..(s + 1) * bh],
            &st.aux[s * bh..(s + 1) * bh],
            dhs,
            &mut sc.dc,
            das,
        );
        if s == 0 {
            // ∇h_0 = da_1 W_hh, (B, 4H)·(4H, H); ∇c_0 = the carried dc.
            gemm(
                b,
                h,
                g4,
                das,
                MatLayout::N,
                w.w_hh,
                MatLayout::N,
                &mut g.h0,
                true,
            );
            g.c0.copy_from_slice(&sc.dc);
        } else if opts.truncate.is_none_or(|k| s % k != 0) {
            // dh_{t−1} += da_t W_hh; dc carries on.
            gemm(
                b,
                h,
                g4,
                das,
                MatLayout::N,
                w.w_hh,
                MatLayout::N,
                &mut before[(s - 1) * bh..],
                true,
            );
        } else {
            // Truncation boundary: neither h nor c passes a gradient back.
            sc.dc.iter_mut().for_each(|v| *v = T::zero());
        }
    }
    if t == 0 {
        match g_clast {
            Some(gc) => g.c0.copy_from_slice(gc),
            None => g.c0.iter_mut().for_each(|v| *v = T::zero()),
        }
    }
    weight_grads(w, x_tm, &st.hs, d, 4, &sc.da, &sc.da, opts, g);
}

/// The products over all steps shared by both gated cells: `∇W_ih = Daᵀ X`,
/// `∇W_hh = Da_hᵀ H_{0..T−1}`, bias column sums, `∇X = Da W_ih`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn weight_grads<T: Element>(
    w: &CellRef<'_, T>,
    x_tm: &[T],
    hs: &[T],
    d: SeqDims,
    gates: usize,
    da: &[T],
    da_h: &[T],
    opts: &BackwardOptions,
    g: &mut CellGrads<T>,
) {
    let (b, t, i, h) = (d.batch, d.seq_len, d.input, d.hidden);
    let (n, gh) = (t * b, gates * h);
    fit(&mut g.w_ih, gh * i);
    gemm(
        gh,
        i,
        n,
        da,
        MatLayout::T,
        x_tm,
        MatLayout::N,
        &mut g.w_ih,
        false,
    );
    fit(&mut g.w_hh, gh * h);
    gemm(
        gh,
        h,
        n,
        da_h,
        MatLayout::T,
        &hs[..n * h],
        MatLayout::N,
        &mut g.w_hh,
        false,
    );
    match w.b_ih {
        Some(_) => col_sums_into(da, gh, g.b_ih.get_or_insert_with(Vec::new)),
        None => g.b_ih = None,
    }
    match w.b_hh {
        Some(_) => col_sums_into(da_h, gh, g.b_hh.get_or_insert_with(Vec::new)),
        None => g.b_hh = None,
    }
    if opts.need_x {
        let dx = g.x_tm.get_or_insert_with(Vec::new);
        fit(dx, n * i);
        gemm(n, i, gh, da, MatLayout::N, w.w_ih, MatLayout::N, dx, false);
    } else {
        g.x_tm = None;
    }
}

/// The fused whole-sequence op. Inputs `[x, h0, c0, W_ih, W_hh, b_ih?, b_hh?]`, outputs
/// `[y (B, T, H), h_T, c_T]`.
struct LstmSeqOp<T> {
    truncate: Option<usize>,
    has_bih: bool,
    has_bhh: bool,
    x_tm: Vec<T>,
    state: Arc<CellState<T>>,
}

/// The optional biases among an op's inputs, from position `k`.
pub(crate) fn biases<'a, T: Element>(
    ctx: &BackwardCtx<'a, T>,
    mut k: usize,
    has_ih: bool,
    has_hh: bool,
) -> (Option<&'a [T]>, Option<&'a [T]>) {
    let bih = has_ih.then(|| {
        k += 1;
        ctx.inputs[k - 1].data()
    });
    let bhh = has_hh.then(|| ctx.inputs[k].data());
    (bih, bhh)
}

impl<T: Element> Op<T> for LstmSeqOp<T> {
    fn name(&self) -> &'static str {
        "lstm"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let d = self.state.dims;
        let (b_ih, b_hh) = biases(ctx, 5, self.has_bih, self.has_bhh);
        let w = CellRef {
            w_ih: ctx.inputs[3].data(),
            w_hh: ctx.inputs[4].data(),
            b_ih,
            b_hh,
        };
        let gy = ctx.grad_output(0);
        let gh_tm = swap01(gy.data(), d.batch, d.seq_len, d.hidden);
        let mut g = CellGrads::default();
        backward_tm_into(
            &w,
            &self.x_tm,
            &self.state,
            &gh_tm,
            ctx.grad_outputs[1].map(|t| t.data()),
            ctx.grad_outputs[2].map(|t| t.data()),
            &BackwardOptions {
                truncate: self.truncate,
                need_x: ctx.needs_grad[0],
                keep_grad_h: false,
            },
            &mut CellScratch::default(),
            &mut g,
        );
        Ok(pack_grads(d, 4, g, true))
    }
}

/// The op's input gradients `[x, h0, (c0), W_ih, W_hh, b_ih?, b_hh?]` as tensors.
pub(crate) fn pack_grads<T: Element>(
    d: SeqDims,
    gates: usize,
    g: CellGrads<T>,
    with_c: bool,
) -> Vec<Option<Tensor<T>>> {
    let gh = gates * d.hidden;
    let mut out = vec![
        g.x_tm.map(|dx| {
            Tensor::from_parts(
                vec![d.batch, d.seq_len, d.input],
                swap01(&dx, d.seq_len, d.batch, d.input),
            )
        }),
        Some(Tensor::from_parts(vec![d.batch, d.hidden], g.h0)),
    ];
    if with_c {
        out.push(Some(Tensor::from_parts(vec![d.batch, d.hidden], g.c0)));
    }
    out.push(Some(Tensor::from_parts(vec![gh, d.input], g.w_ih)));
    out.push(Some(Tensor::from_parts(vec![gh, d.hidden], g.w_hh)));
    for bg in [g.b_ih, g.b_hh].into_iter().flatten() {
        out.push(Some(Tensor::from_parts(vec![gh], bg)));
    }
    out
}

/// Result of an LSTM sequence forward on a tape.
pub struct LstmOutput<T> {
    /// `(B, T, H)`: the hidden state of every step (PyTorch's `output`).
    pub y: Var,
    /// `h_T`, `c_T`, `(B, H)`: carry them (detached) into the next chunk of a stream.
    pub h_last: Var,
    pub c_last: Var,
    /// Every state, time-major (no gradient), e.g. to restart a stream mid-window.
    pub states: Arc<CellState<T>>,
}

/// Checks the shapes of an LSTM problem on a tape.
pub(crate) fn shapes_of<T: Element>(
    op: &'static str,
    gates: usize,
    tape: &Tape<T>,
    x: Var,
    h0: Option<Var>,
    c0: Option<Var>,
    p: &CellVars,
) -> Result<SeqDims> {
    check_cell_shapes(
        op,
        gates,
        tape.shape(x),
        h0.map(|h| tape.shape(h)),
        c0.map(|c| tape.shape(c)),
        tape.shape(p.w_ih),
        tape.shape(p.w_hh),
        p.b_ih.map(|b| tape.shape(b)),
        p.b_hh.map(|b| tape.shape(b)),
    )
}

/// The cell's weights as slices of the tape's values.
pub(crate) fn cell_ref<'a, T: Element>(tape: &'a Tape<T>, p: &CellVars) -> CellRef<'a, T> {
    CellRef {
        w_ih: tape.value(p.w_ih).data(),
        w_hh: tape.value(p.w_hh).data(),
        b_ih: p.b_ih.map(|b| tape.value(b).data()),
        b_hh: p.b_hh.map(|b| tape.value(b).data()),
    }
}

/// Fused whole-sequence LSTM: `x (B, T, I)`, `h0`, `c0 (B, H)` (zeros when `None`).
/// `truncate = Some(k)` makes the backward chunked-truncated BPTT (h and c detached at t = k, 2k, …).
pub fn lstm_seq<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    c0: Option<Var>,
    p: &LstmVars,
    truncate: Option<usize>,
) -> Result<LstmOutput<T>> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = shapes_of("lstm", 4, tape, x, h0, c0, p)?;
    let mut zero = || tape.constant(Tensor::zeros(&[d.batch, d.hidden]));
    let h0 = h0.unwrap_or_else(&mut zero);
    let c0 = c0.unwrap_or_else(&mut zero);
    let x_tm = swap01(tape.value(x).data(), d.batch, d.seq_len, d.input);
    let mut st = CellState::default();
    forward_tm_into(
        &cell_ref(tape, p),
        d,
        &x_tm,
        tape.value(h0).data(),
        tape.value(c0).data(),
        &mut st,
    );
    let y = Tensor::from_parts(
        vec![d.batch, d.seq_len, d.hidden],
        swap01(&st.hs[d.batch * d.hidden..], d.seq_len, d.batch, d.hidden),
    );
    let (hl, cl) = (st.state(d.seq_len), st.cell(d.seq_len));
    let state = Arc::new(st);
    let mut inputs = vec![x, h0, c0, p.w_ih, p.w_hh];
    inputs.extend(p.b_ih);
    inputs.extend(p.b_hh);
    let op = LstmSeqOp {
        truncate,
        has_bih: p.b_ih.is_some(),
        has_bhh: p.b_hh.is_some(),
        x_tm,
        state: state.clone(),
    };
    let outs = tape.record(op, &inputs, vec![y, hl, cl]);
    Ok(LstmOutput {
        y: outs[0],
        h_last: outs[1],
        c_last: outs[2],
        states: state,
    })
}

/// Parameters of a gated cell under its [`VarBuilder`] path, PyTorch's names and init
/// (`U(±1/√hidden)` for all four): `weight_ih (G·H, I)`, `weight_hh (G·H, H)`, `bias_ih`,
/// `bias_hh (G·H)`.
#[derive(Clone, Copy, Debug)]
pub struct CellParams {
    pub input: usize,
    pub hidden: usize,
    pub weight_ih: ParamId,
    pub weight_hh: ParamId,
    pub bias_ih: Option<ParamId>,
    pub bias_hh: Option<ParamId>,
}

impl CellParams {
    pub(crate) fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        what: &str,
        gates: usize,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        if input == 0 || hidden == 0 {
            return Err(invalid!(
                "{what} sizes must be positive, got input {input} hidden {hidden}"
            ));
        }
        let a = 1.0 / (hidden as f64).sqrt();
        let u = Init::Uniform { low: -a, high: a };
        let gh = gates * hidden;
        let weight_ih = vb.get("weight_ih", &[gh, input], u)?;
        let weight_hh = vb.get("weight_hh", &[gh, hidden], u)?;
        let (bias_ih, bias_hh) = if bias {
            (
                Some(vb.get("bias_ih", &[gh], u)?),
                Some(vb.get("bias_hh", &[gh], u)?),
            )
        } else {
            (None, None)
        };
        Ok(CellParams {
            input,
            hidden,
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
        })
    }
    /// Brings the weights onto a tape.
    pub fn vars<T: Element>(&self, tape: &mut Tape<T>, store: &ParamStore<T>) -> CellVars {
        CellVars {
            w_ih: tape.param(store, self.weight_ih),
            w_hh: tape.param(store, self.weight_hh),
            b_ih: self.bias_ih.map(|b| tape.param(store, b)),
            b_hh: self.bias_hh.map(|b| tape.param(store, b)),
        }
    }
    pub fn ids(&self) -> Vec<ParamId> {
        [self.weight_ih, self.weight_hh]
            .into_iter()
            .chain(self.bias_ih)
            .chain(self.bias_hh)
            .collect()
    }
}

/// A one-layer LSTM (`torch.nn.LSTM(input, hidden, batch_first=True)`). As a [`Module`],
/// `forward` maps `x (B, T, I)` to the hidden sequence `(B, T, H)` from a zero state.
#[derive(Clone, Copy, Debug)]
pub struct Lstm {
    pub p: CellParams,
}

impl Lstm {
    pub fn new<T: Element>(
        vb: VarBuilder<'_, T>,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Lstm {
            p: CellParams::new(vb, "LSTM", 4, input, hidden, bias)?,
        })
    }
    /// Fused forward from `(h0, c0)` (zeros when `None`), chunked truncation `truncate`.
    pub fn forward_seq<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        h0: Option<Var>,
        c0: Option<Var>,
        truncate: Option<usize>,
    ) -> Result<LstmOutput<T>> {
        let p = self.p.vars(tape, store);
        lstm_seq(tape, x, h0, c0, &p, truncate)
    }
}

impl<T: Element> Module<T> for Lstm {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        Ok(self.forward_seq(tape, store, x, None, None, None)?.y)
    }
    fn params(&self) -> Vec<ParamId> {
        self.p.ids()
    }
}
