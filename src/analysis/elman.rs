//! The tape-free Elman RNN: owned weights, the assignment's loss `L = Σ_b Σ_t ‖z_t − y_t‖²` with
//! its exact, chunked-truncated and TBPTT(k1, k2) gradients, and an SGD step on reused buffers.
//! The `nabla rnn grad` interface, the gradient-flow analyses and `nabla bench rnn` run on it;
//! the math is the fused op's ([`crate::nn::rnn::elman`]).

use crate::error::Result;
use crate::init::Rng;
use crate::kernels::reduce::axpy;
use crate::kernels::rnn::{mse_grad, mse_grad_bm_into, swap01, swap01_into};
use crate::nn::rnn::seq::{add_into, fit};
use crate::nn::rnn::{
    backward_tm, backward_tm_into, check_shapes, forward_tm, forward_tm_into, Activation,
    BackwardOptions, ForwardState, SeqDims, SeqGrads, TbpttSchedule, WeightsRef,
};
use crate::tensor::{Element, Tensor, TensorView};
use crate::{invalid, shape_err};

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
    /// `(name, gradient)` in `nabla rnn grad`'s names: `W`, `U`, `V` (and `b_h`, `b_y` when
    /// the model has biases).
    pub fn named(&self) -> Vec<(&'static str, &Tensor<T>)> {
        let mut v = vec![("W", &self.w), ("U", &self.u), ("V", &self.v)];
        if let Some(b) = &self.b_h {
            v.push(("b_h", b));
        }
        if let Some(b) = &self.b_y {
            v.push(("b_y", b));
        }
        v
    }
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
    fn dims<'x>(&self, x: impl Into<TensorView<'x, T>>, h0: Option<&Tensor<T>>) -> Result<SeqDims> {
        let x = x.into();
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
    pub fn check<'x>(
        &self,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
        h0: Option<&Tensor<T>>,
    ) -> Result<SeqDims> {
        let (x, z) = (x.into(), z.into());
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
    /// Loss `Σ ‖z − y‖²` and its (exact or chunked-truncated) gradients; `x` and `z` are read
    /// in place (an owned tensor or a borrowed [`TensorView`]).
    pub fn mse_bptt<'x>(
        &self,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
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
    pub fn mse_bptt_ws<'x>(
        &self,
        ws: &mut RnnWorkspace<T>,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
        h0: Option<&Tensor<T>>,
        opts: &BackwardOptions,
    ) -> Result<f64> {
        let (x, z) = (x.into(), z.into());
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
        let loss = mse_grad_bm_into(
            &ws.state.y,
            z.data(),
            (d.batch, d.seq_len, d.output),
            &mut ws.gy,
        );
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

pub(crate) fn axpy_into<T: Element>(a: &mut [T], alpha: T, b: &[T]) {
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
