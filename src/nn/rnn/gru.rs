//! GRU with PyTorch's equations, gate order and names (`torch.nn.GRU`, one layer):
//!
//! ```text
//! r = σ(W_ir x_t + b_ir + W_hr h_{t−1} + b_hr)
//! z = σ(W_iz x_t + b_iz + W_hz h_{t−1} + b_hz)
//! n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t−1} + b_hn))
//! h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
//! ```
//!
//! Fast path: one fused op per sequence. `X W_ihᵀ + b_ih` is one `(T·B, I)·(I, 3H)` gemm before
//! the loop; each step computes `h_{t−1} W_hhᵀ + b_hh` (one small gemm; it cannot be folded
//! into the input product because r multiplies its n block) and the pointwise update of
//! [`crate::kernels::rnn::gru_cell_forward`].
//!
//! Backward (BPTT), with `dh_t = ∇_{h_t}L` and `ĝ_n = W_hn h_{t−1} + b_hn`:
//!
//! ```text
//! da_n = dh ⊙ (1 − z) ⊙ (1 − n²)       da_z = dh ⊙ (h_{t−1} − n) ⊙ z(1 − z)
//! da_r = da_n ⊙ ĝ_n ⊙ r(1 − r)
//! Da   = [da_r, da_z, da_n]            (∇ of x W_ihᵀ + b_ih)
//! Dh   = [da_r, da_z, r ⊙ da_n]        (∇ of h W_hhᵀ + b_hh)
//! dh_{t−1} = ∂L/∂h_{t−1} + dh_t ⊙ z + Dh_t W_hh
//! ∇W_ih = Σ Daᵀ x   ∇W_hh = Σ Dhᵀ h_{t−1}   ∇b_ih = Σ Da   ∇b_hh = Σ Dh   ∇x = Da W_ih
//! ```
//!
//! Chunked truncation (`truncate = k`) drops both terms into `dh_{t−1}` at `t = k, 2k, …`
//! (the state is detached there); the initial state is not a boundary.
//!
//! Reference path: [`crate::nn::rnn::reference::gru_unrolled`].

use super::lstm::{biases, cell_ref, pack_grads, shapes_of, weight_grads, CellParams};
use super::seq::{
    add_into, fit, BackwardOptions, CellGrads, CellRef, CellScratch, CellState, CellVars, SeqDims,
};
use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::invalid;
use crate::kernels::reduce::add_row_bias;
use crate::kernels::rnn::{gru_cell_backward, gru_cell_forward, swap01};
use crate::kernels::{gemm, transpose, MatLayout};
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use std::sync::Arc;

/// The GRU's weights on a tape.
pub type GruVars = CellVars;

/// Fused GRU forward over a time-major `x_tm (T, B, I)` from `h0 (B, H)` into `st`; `gh` is a
/// `(B, 3H)` scratch row block.
pub fn forward_tm_into<T: Element>(
    w: &CellRef<'_, T>,
    d: SeqDims,
    x_tm: &[T],
    h0: &[T],
    st: &mut CellState<T>,
    gh: &mut Vec<T>,
) {
    let (b, t, i, h) = (d.batch, d.seq_len, d.input, d.hidden);
    let bh = b * h;
    let g3 = 3 * h;
    st.dims = d;
    fit(&mut st.hs, (t + 1) * bh);
    st.cs.clear();
    fit(&mut st.gates, t * b * g3);
    fit(&mut st.aux, t * bh);
    fit(gh, b * g3);
    st.hs[..bh].copy_from_slice(h0);
    // Hoisted: A = X W_ihᵀ + b_ih, (T·B, I)·(I, 3H).
    gemm(
        t * b,
        g3,
        i,
        x_tm,
        MatLayout::N,
        w.w_ih,
        MatLayout::T,
        &mut st.gates,
        false,
    );
    if let Some(bias) = w.b_ih {
        add_row_bias(&mut st.gates, bias);
    }
    let wt = if t > 0 {
        transpose(g3, h, w.w_hh)
    } else {
        Vec::new()
    };
    for s in 0..t {
        // ĝ = h_{t−1} W_hhᵀ + b_hh, (B, H)·(H, 3H)
        gemm(
            b,
            g3,
            h,
            &st.hs[s * bh..(s + 1) * bh],
            MatLayout::N,
            &wt,
            MatLayout::N,
            gh,
            false,
        );
        if let Some(bias) = w.b_hh {
            add_row_bias(gh, bias);
        }
        let (hp, hn) = st.hs.split_at_mut((s + 1) * bh);
        gru_cell_forward(
            h,
            &mut st.gates[s * b * g3..(s + 1) * b * g3],
            gh,
            &hp[s * bh..],
            &mut hn[..bh],
            &mut st.aux[s * bh..(s + 1) * bh],
        );
    }
}

/// BPTT through a sequence run by [`forward_tm_into`]. `gh (T, B, H)` is `∂L/∂h_t` from the
/// outputs, `g_hlast (B, H)` an optional gradient arriving at `h_T`.
#[allow(clippy::too_many_arguments)]
pub fn backward_tm_into<T: Element>(
    w: &CellRef<'_, T>,
    x_tm: &[T],
    st: &CellState<T>,
    gh: &[T],
    g_hlast: Option<&[T]>,
    opts: &BackwardOptions,
    sc: &mut CellScratch<T>,
    g: &mut CellGrads<T>,
) {
    let d = st.dims;
    let (b, t, h) = (d.batch, d.seq_len, d.hidden);
    let bh = b * h;
    let g3 = 3 * h;
    let n = t * b;
    sc.dh.clear();
    sc.dh.extend_from_slice(&gh[..n * h]);
    fit(&mut sc.da, n * g3);
    fit(&mut sc.da_h, n * g3);
    fit(&mut g.h0, bh);
    g.h0.iter_mut().for_each(|v| *v = T::zero());
    g.c0.clear();
    if t == 0 {
        if let Some(gl) = g_hlast {
            g.h0.copy_from_slice(gl);
        }
    } else if let Some(gl) = g_hlast {
        add_into(&mut sc.dh[(t - 1) * bh..], gl);
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
        let r = s * b * g3..(s + 1) * b * g3;
        let pass = s == 0 || opts.truncate.is_none_or(|k| s % k != 0);
        let dprev: &mut [T] = if s == 0 {
            &mut g.h0
        } else {
            &mut before[(s - 1) * bh..]
        };
        gru_cell_backward(
            h,
            &st.gates[r.clone()],
            &st.aux[s * bh..(s + 1) * bh],
            &st.hs[s * bh..(s + 1) * bh],
            dhs,
            &mut sc.da[r.clone()],
            &mut sc.da_h[r.clone()],
            pass.then_some(&mut *dprev),
        );
        if pass {
            // dh_{t−1} += Dh_t W_hh, (B, 3H)·(3H, H)
            gemm(
                b,
                h,
                g3,
                &sc.da_h[r],
                MatLayout::N,
                w.w_hh,
                MatLayout::N,
                dprev,
                true,
            );
        }
    }
    weight_grads(w, x_tm, &st.hs, d, 3, &sc.da, &sc.da_h, opts, g);
}

/// The fused whole-sequence op. Inputs `[x, h0, W_ih, W_hh, b_ih?, b_hh?]`, outputs
/// `[y (B, T, H), h_T]`.
struct GruSeqOp<T> {
    truncate: Option<usize>,
    has_bih: bool,
    has_bhh: bool,
    x_tm: Vec<T>,
    state: Arc<CellState<T>>,
}

impl<T: Element> Op<T> for GruSeqOp<T> {
    fn name(&self) -> &'static str {
        "gru"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let d = self.state.dims;
        let (b_ih, b_hh) = biases(ctx, 4, self.has_bih, self.has_bhh);
        let w = CellRef {
            w_ih: ctx.inputs[2].data(),
            w_hh: ctx.inputs[3].data(),
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
            &BackwardOptions {
                truncate: self.truncate,
                need_x: ctx.needs_grad[0],
                keep_grad_h: false,
            },
            &mut CellScratch::default(),
            &mut g,
        );
        Ok(pack_grads(d, 3, g, false))
    }
}

/// Result of a GRU sequence forward on a tape.
pub struct GruOutput<T> {
    /// `(B, T, H)`: the hidden state of every step.
    pub y: Var,
    /// `h_T`, `(B, H)`.
    pub h_last: Var,
    /// Every state, time-major (no gradient).
    pub states: Arc<CellState<T>>,
}

/// Fused whole-sequence GRU: `x (B, T, I)`, `h0 (B, H)` (zeros when `None`), chunked truncation
/// `truncate`.
pub fn gru_seq<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    p: &GruVars,
    truncate: Option<usize>,
) -> Result<GruOutput<T>> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = shapes_of("gru", 3, tape, x, h0, None, p)?;
    let h0 = match h0 {
        Some(h) => h,
        None => tape.constant(Tensor::zeros(&[d.batch, d.hidden])),
    };
    let x_tm = swap01(tape.value(x).data(), d.batch, d.seq_len, d.input);
    let mut st = CellState::default();
    forward_tm_into(
        &cell_ref(tape, p),
        d,
        &x_tm,
        tape.value(h0).data(),
        &mut st,
        &mut Vec::new(),
    );
    let y = Tensor::from_parts(
        vec![d.batch, d.seq_len, d.hidden],
        swap01(&st.hs[d.batch * d.hidden..], d.seq_len, d.batch, d.hidden),
    );
    let hl = st.state(d.seq_len);
    let state = Arc::new(st);
    let mut inputs = vec![x, h0, p.w_ih, p.w_hh];
    inputs.extend(p.b_ih);
    inputs.extend(p.b_hh);
    let op = GruSeqOp {
        truncate,
        has_bih: p.b_ih.is_some(),
        has_bhh: p.b_hh.is_some(),
        x_tm,
        state: state.clone(),
    };
    let outs = tape.record(op, &inputs, vec![y, hl]);
    Ok(GruOutput {
        y: outs[0],
        h_last: outs[1],
        states: state,
    })
}

/// A one-layer GRU (`torch.nn.GRU(input, hidden, batch_first=True)`). As a [`Module`],
/// `forward` maps `x (B, T, I)` to the hidden sequence `(B, T, H)` from a zero state.
#[derive(Clone, Copy, Debug)]
pub struct Gru {
    pub p: CellParams,
}

impl Gru {
    pub fn new<T: Element>(
        vb: VarBuilder<'_, T>,
        input: usize,
        hidden: usize,
        bias: bool,
    ) -> Result<Self> {
        Ok(Gru {
            p: CellParams::new(vb, "GRU", 3, input, hidden, bias)?,
        })
    }
    /// Fused forward from `h0` (zeros when `None`), chunked truncation `truncate`.
    pub fn forward_seq<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        h0: Option<Var>,
        truncate: Option<usize>,
    ) -> Result<GruOutput<T>> {
        let p = self.p.vars(tape, store);
        gru_seq(tape, x, h0, &p, truncate)
    }
}

impl<T: Element> Module<T> for Gru {
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
        self.p.ids()
    }
}
