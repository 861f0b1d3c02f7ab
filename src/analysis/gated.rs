//! The tape-free LSTM and GRU with a linear readout, the models of the `lstm/` and `gru/`
//! fixtures: `y_t = V h_t`, `L = Σ_b Σ_t ‖z_t − y_t‖²`, with exact, chunked-truncated and
//! TBPTT(k1, k2) gradients, and an SGD step on reused buffers (the `nabla rnn grad --cell`
//! interface, `nabla rnn analyze`'s gradient-flow comparison and `nabla bench rnn --cell`).
//! The cell math is the fused ops' ([`crate::nn::rnn::lstm`], [`crate::nn::rnn::gru`]); the
//! readout adds `∇V = Σ_t gy_tᵀ h_t` and `∂L/∂h_t = gy_t V`, one gemm each over all steps.

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::io;
use crate::kernels::reduce::axpy;
use crate::kernels::rnn::{mse_grad, mse_grad_bm_into, swap01, swap01_into};
use crate::kernels::{gemm, MatLayout};
use crate::nn::rnn::seq::{add_into, check_cell_shapes, fit};
use crate::nn::rnn::{
    gru, lstm, BackwardOptions, CellGrads, CellKind, CellRef, CellScratch, CellState, SeqDims,
    TbpttSchedule,
};
use crate::tensor::{Element, Tensor, TensorView};
use crate::{invalid, shape_err};
use serde_json::{json, Value};
use std::path::Path;

/// Owned weights of a gated cell (PyTorch's layout and names) and its readout `V (O, H)`.
#[derive(Clone, Debug)]
pub struct GatedWeights<T: Element> {
    /// [`CellKind::Lstm`] or [`CellKind::Gru`].
    pub cell: CellKind,
    pub w_ih: Tensor<T>,
    pub w_hh: Tensor<T>,
    pub b_ih: Option<Tensor<T>>,
    pub b_hh: Option<Tensor<T>>,
    pub v: Tensor<T>,
}

/// Loss and gradients of `L = Σ_b Σ_t ‖z_t − V h_t‖²`.
#[derive(Clone, Debug)]
pub struct GatedBptt<T: Element> {
    pub loss: f64,
    pub w_ih: Tensor<T>,
    pub w_hh: Tensor<T>,
    pub b_ih: Option<Tensor<T>>,
    pub b_hh: Option<Tensor<T>>,
    pub v: Tensor<T>,
    /// `(B, H)`.
    pub h0: Tensor<T>,
    /// LSTM only, `(B, H)`.
    pub c0: Option<Tensor<T>>,
    /// `∇_{h_t}L`, `(T, B, H)` time-major, when asked for.
    pub grad_h: Option<Tensor<T>>,
}

impl<T: Element> GatedBptt<T> {
    /// `(name, gradient)` in the fixtures' names: `weight_ih`, `weight_hh`, `bias_ih`,
    /// `bias_hh`, `V`.
    pub fn named(&self) -> Vec<(&'static str, &Tensor<T>)> {
        let mut v = vec![("weight_ih", &self.w_ih), ("weight_hh", &self.w_hh)];
        if let Some(b) = &self.b_ih {
            v.push(("bias_ih", b));
        }
        if let Some(b) = &self.b_hh {
            v.push(("bias_hh", b));
        }
        v.push(("V", &self.v));
        v
    }
}

/// Buffers of one training step kept across steps (allocation-free once sized).
#[derive(Clone, Debug, Default)]
pub struct GatedWorkspace<T> {
    pub x_tm: Vec<T>,
    pub h0: Vec<T>,
    pub c0: Vec<T>,
    pub state: CellState<T>,
    /// `(T, B, O)` outputs and `∂L/∂y`.
    pub y: Vec<T>,
    pub gy: Vec<T>,
    /// `(T, B, H)`: `∂L/∂h_t` from the readout.
    pub gh: Vec<T>,
    pub gv: Vec<T>,
    pub scratch: CellScratch<T>,
    pub grads: CellGrads<T>,
    /// GRU forward scratch `(B, 3H)`.
    pub row: Vec<T>,
}

impl<T: Element> GatedWeights<T> {
    /// PyTorch's default initialization `U(±1/√hidden)` for the cell, and for `V`, with biases.
    pub fn random(
        cell: CellKind,
        input: usize,
        hidden: usize,
        output: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if cell == CellKind::Elman {
            return Err(invalid!("GatedWeights are for the lstm and gru cells"));
        }
        if input == 0 || hidden == 0 || output == 0 {
            return Err(invalid!("{cell} sizes must be positive"));
        }
        let a = 1.0 / (hidden as f64).sqrt();
        let gh = cell.gates() * hidden;
        let mut uni =
            |shape: &[usize]| Tensor::from_fn(shape, |_| T::c(a * (2.0 * rng.uniform() - 1.0)));
        Ok(GatedWeights {
            cell,
            w_ih: uni(&[gh, input]),
            w_hh: uni(&[gh, hidden]),
            b_ih: Some(uni(&[gh])),
            b_hh: Some(uni(&[gh])),
            v: uni(&[output, hidden]),
        })
    }
    pub fn as_ref(&self) -> CellRef<'_, T> {
        CellRef {
            w_ih: self.w_ih.data(),
            w_hh: self.w_hh.data(),
            b_ih: self.b_ih.as_ref().map(|b| b.data()),
            b_hh: self.b_hh.as_ref().map(|b| b.data()),
        }
    }
    /// Checks every shape against `x (B, T, I)`, `z (B, T, O)`, `h0`, `c0 (B, H)`; the sizes
    /// (with `output` = rows of V).
    pub fn check<'x>(
        &self,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
        h0: Option<&Tensor<T>>,
        c0: Option<&Tensor<T>>,
    ) -> Result<SeqDims> {
        let (x, z) = (x.into(), z.into());
        let op = match self.cell {
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
            CellKind::Elman => return Err(invalid!("GatedWeights hold an lstm or gru cell")),
        };
        if self.cell == CellKind::Gru && c0.is_some() {
            return Err(invalid!(
                "a GRU has no cell state: c0 is only for --cell lstm"
            ));
        }
        let mut d = check_cell_shapes(
            op,
            self.cell.gates(),
            x.shape(),
            h0.map(|h| h.shape()),
            c0.map(|c| c.shape()),
            self.w_ih.shape(),
            self.w_hh.shape(),
            self.b_ih.as_ref().map(|b| b.shape()),
            self.b_hh.as_ref().map(|b| b.shape()),
        )?;
        let vs = self.v.shape();
        if vs.len() != 2 || vs[1] != d.hidden {
            return Err(shape_err!(
                op,
                "V must be (output, hidden) with hidden = {} (from weight_hh), got {vs:?}",
                d.hidden
            ));
        }
        d.output = vs[0];
        if z.shape() != [d.batch, d.seq_len, d.output] {
            return Err(shape_err!(
                op,
                "z must be (batch, time, output) = [{}, {}, {}] (from x {:?} and V {vs:?}), got {:?}",
                d.batch,
                d.seq_len,
                d.output,
                x.shape(),
                z.shape()
            ));
        }
        Ok(d)
    }
    fn cell_forward(
        &self,
        d: SeqDims,
        x_tm: &[T],
        h0: &[T],
        c0: &[T],
        st: &mut CellState<T>,
        row: &mut Vec<T>,
    ) {
        let w = self.as_ref();
        match self.cell {
            CellKind::Lstm => lstm::forward_tm_into(&w, d, x_tm, h0, c0, st),
            _ => gru::forward_tm_into(&w, d, x_tm, h0, st, row),
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn cell_backward(
        &self,
        x_tm: &[T],
        st: &CellState<T>,
        gh: &[T],
        opts: &BackwardOptions,
        sc: &mut CellScratch<T>,
        g: &mut CellGrads<T>,
    ) {
        let w = self.as_ref();
        match self.cell {
            CellKind::Lstm => lstm::backward_tm_into(&w, x_tm, st, gh, None, None, opts, sc, g),
            _ => gru::backward_tm_into(&w, x_tm, st, gh, None, opts, sc, g),
        }
    }
    /// `Y = H Vᵀ` over all steps, `(T·B, H)·(H, O)`.
    fn readout(&self, d: SeqDims, st: &CellState<T>, y: &mut Vec<T>) {
        let (n, bh) = (d.seq_len * d.batch, d.batch * d.hidden);
        fit(y, n * d.output);
        gemm(
            n,
            d.output,
            d.hidden,
            &st.hs[bh..],
            MatLayout::N,
            self.v.data(),
            MatLayout::T,
            y,
            false,
        );
    }
    /// `∇V = Gyᵀ H` and `∂L/∂h = Gy V`, one gemm each over all steps.
    fn readout_backward(
        &self,
        d: SeqDims,
        st: &CellState<T>,
        gy: &[T],
        gv: &mut Vec<T>,
        gh: &mut Vec<T>,
    ) {
        let (n, bh) = (d.seq_len * d.batch, d.batch * d.hidden);
        let (h, o) = (d.hidden, d.output);
        fit(gv, o * h);
        gemm(
            o,
            h,
            n,
            gy,
            MatLayout::T,
            &st.hs[bh..],
            MatLayout::N,
            gv,
            false,
        );
        fit(gh, n * h);
        gemm(
            n,
            h,
            o,
            gy,
            MatLayout::N,
            self.v.data(),
            MatLayout::N,
            gh,
            false,
        );
    }
    /// Forward only from a zero state: the readout `y (B, T, O)`.
    pub fn outputs(&self, x: &Tensor<T>) -> Result<Tensor<T>> {
        if x.ndim() != 3 {
            return Err(shape_err!(
                "gated_rnn",
                "x must be (batch, time, input), got {:?}",
                x.shape()
            ));
        }
        let o = self.v.dim(0);
        let zs = [x.dim(0), x.dim(1), o];
        let d = self.check(x, &Tensor::zeros(&zs), None, None)?;
        let x_tm = swap01(x.data(), d.batch, d.seq_len, d.input);
        let zero = vec![T::zero(); d.batch * d.hidden];
        let (mut st, mut row, mut y) = (CellState::default(), Vec::new(), Vec::new());
        self.cell_forward(d, &x_tm, &zero, &zero, &mut st, &mut row);
        self.readout(d, &st, &mut y);
        Ok(Tensor::from_parts(
            zs.to_vec(),
            swap01(&y, d.seq_len, d.batch, d.output),
        ))
    }
    /// Loss and its (exact or chunked-truncated) gradients into `ws`; returns the loss.
    pub fn mse_bptt_ws<'x>(
        &self,
        ws: &mut GatedWorkspace<T>,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
        h0: Option<&Tensor<T>>,
        c0: Option<&Tensor<T>>,
        opts: &BackwardOptions,
    ) -> Result<f64> {
        let (x, z) = (x.into(), z.into());
        if opts.truncate == Some(0) {
            return Err(invalid!("truncation length k must be at least 1"));
        }
        let d = self.check(x, z, h0, c0)?;
        let bh = d.batch * d.hidden;
        swap01_into(x.data(), d.batch, d.seq_len, d.input, &mut ws.x_tm);
        for (buf, src) in [(&mut ws.h0, h0), (&mut ws.c0, c0)] {
            fit(buf, bh);
            match src {
                Some(t) => buf.copy_from_slice(t.data()),
                None => buf.iter_mut().for_each(|v| *v = T::zero()),
            }
        }
        self.cell_forward(d, &ws.x_tm, &ws.h0, &ws.c0, &mut ws.state, &mut ws.row);
        self.readout(d, &ws.state, &mut ws.y);
        let loss = mse_grad_bm_into(&ws.y, z.data(), (d.batch, d.seq_len, d.output), &mut ws.gy);
        self.readout_backward(d, &ws.state, &ws.gy, &mut ws.gv, &mut ws.gh);
        self.cell_backward(
            &ws.x_tm,
            &ws.state,
            &ws.gh,
            opts,
            &mut ws.scratch,
            &mut ws.grads,
        );
        Ok(loss)
    }
    /// Loss `Σ ‖z − V h‖²` and its gradients; `x` and `z` are read in place (an owned tensor
    /// or a borrowed [`TensorView`]).
    pub fn mse_bptt<'x>(
        &self,
        x: impl Into<TensorView<'x, T>>,
        z: impl Into<TensorView<'x, T>>,
        h0: Option<&Tensor<T>>,
        c0: Option<&Tensor<T>>,
        opts: &BackwardOptions,
    ) -> Result<GatedBptt<T>> {
        let mut ws = GatedWorkspace::default();
        let loss = self.mse_bptt_ws(&mut ws, x, z, h0, c0, opts)?;
        let d = ws.state.dims;
        let g = std::mem::take(&mut ws.grads);
        Ok(self.pack(d, loss, g, std::mem::take(&mut ws.gv)))
    }
    fn pack(&self, d: SeqDims, loss: f64, g: CellGrads<T>, gv: Vec<T>) -> GatedBptt<T> {
        let gsz = self.w_ih.dim(0);
        GatedBptt {
            loss,
            w_ih: Tensor::from_parts(self.w_ih.shape().to_vec(), g.w_ih),
            w_hh: Tensor::from_parts(self.w_hh.shape().to_vec(), g.w_hh),
            b_ih: g.b_ih.map(|b| Tensor::from_parts(vec![gsz], b)),
            b_hh: g.b_hh.map(|b| Tensor::from_parts(vec![gsz], b)),
            v: Tensor::from_parts(self.v.shape().to_vec(), gv),
            h0: Tensor::from_parts(vec![d.batch, d.hidden], g.h0),
            c0: (self.cell == CellKind::Lstm)
                .then(|| Tensor::from_parts(vec![d.batch, d.hidden], g.c0)),
            grad_h: g
                .grad_h
                .map(|gh| Tensor::from_parts(vec![d.seq_len, d.batch, d.hidden], gh)),
        }
    }
    /// One plain SGD step on the loss (every weight, V included); returns the loss before it.
    pub fn sgd_step_ws(
        &mut self,
        ws: &mut GatedWorkspace<T>,
        x: &Tensor<T>,
        z: &Tensor<T>,
        lr: f64,
        truncate: Option<usize>,
    ) -> Result<f64> {
        let loss = self.mse_bptt_ws(
            ws,
            x,
            z,
            None,
            None,
            &BackwardOptions {
                truncate,
                ..Default::default()
            },
        )?;
        let lr = T::c(-lr);
        let g = &ws.grads;
        axpy(lr, &g.w_ih, self.w_ih.data_mut());
        axpy(lr, &g.w_hh, self.w_hh.data_mut());
        axpy(lr, &ws.gv, self.v.data_mut());
        if let (Some(b), Some(gb)) = (self.b_ih.as_mut(), g.b_ih.as_ref()) {
            axpy(lr, gb, b.data_mut());
        }
        if let (Some(b), Some(gb)) = (self.b_hh.as_mut(), g.b_hh.as_ref()) {
            axpy(lr, gb, b.data_mut());
        }
        Ok(loss)
    }
    /// Williams & Peng TBPTT(k1, k2) over one sequence with fixed weights, the state (h and c)
    /// carried: every `k1` steps the losses of the last `k1` steps are backpropagated through
    /// the last `k2`; the gradients of all updates are summed (as
    /// [`crate::analysis::elman::ElmanWeights::mse_tbptt`]).
    pub fn mse_tbptt(
        &self,
        x: &Tensor<T>,
        z: &Tensor<T>,
        h0: Option<&Tensor<T>>,
        c0: Option<&Tensor<T>>,
        k1: usize,
        k2: usize,
    ) -> Result<GatedBptt<T>> {
        let sched = TbpttSchedule::new(k1, k2)?;
        let d = self.check(x, z, h0, c0)?;
        let bh = d.batch * d.hidden;
        let x_tm = swap01(x.data(), d.batch, d.seq_len, d.input);
        let z_tm = swap01(z.data(), d.batch, d.seq_len, d.output);
        let zeros = vec![T::zero(); bh];
        let h0v = h0.map_or_else(|| zeros.clone(), |h| h.data().to_vec());
        let c0v = c0.map_or_else(|| zeros.clone(), |c| c.data().to_vec());
        // Weights are fixed, so each window starts from the full forward's state there.
        let mut full = CellState::default();
        let mut row = Vec::new();
        self.cell_forward(d, &x_tm, &h0v, &c0v, &mut full, &mut row);
        let mut y = Vec::new();
        self.readout(d, &full, &mut y);
        let (loss, _) = mse_grad(&y, &z_tm);
        let (bi, bo) = (d.batch * d.input, d.batch * d.output);
        let mut acc: Option<(CellGrads<T>, Vec<T>)> = None;
        for win in sched.windows(d.seq_len) {
            let wd = SeqDims {
                seq_len: win.end - win.start,
                ..d
            };
            let xw = &x_tm[win.start * bi..win.end * bi];
            let s0 = win.start * bh..(win.start + 1) * bh;
            let c_start = if self.cell == CellKind::Lstm {
                &full.cs[s0.clone()]
            } else {
                &zeros[..]
            };
            let mut st = CellState::default();
            self.cell_forward(wd, xw, &full.hs[s0], c_start, &mut st, &mut row);
            self.readout(wd, &st, &mut y);
            let (_, mut gy) = mse_grad(&y, &z_tm[win.start * bo..win.end * bo]);
            // Losses before `loss_from` were counted by an earlier update.
            gy[..(win.loss_from - win.start) * bo]
                .iter_mut()
                .for_each(|g| *g = T::zero());
            let (mut gv, mut gh) = (Vec::new(), Vec::new());
            self.readout_backward(wd, &st, &gy, &mut gv, &mut gh);
            let mut g = CellGrads::default();
            self.cell_backward(
                xw,
                &st,
                &gh,
                &BackwardOptions::default(),
                &mut CellScratch::default(),
                &mut g,
            );
            if win.start > 0 {
                g.h0.iter_mut().for_each(|v| *v = T::zero());
                g.c0.iter_mut().for_each(|v| *v = T::zero());
            }
            match acc.as_mut() {
                None => acc = Some((g, gv)),
                Some((a, av)) => {
                    add_into(&mut a.w_ih, &g.w_ih);
                    add_into(&mut a.w_hh, &g.w_hh);
                    add_into(av, &gv);
                    add_into(&mut a.h0, &g.h0);
                    add_into(&mut a.c0, &g.c0);
                    for (a, b) in [(&mut a.b_ih, &g.b_ih), (&mut a.b_hh, &g.b_hh)] {
                        if let (Some(a), Some(b)) = (a.as_mut(), b.as_ref()) {
                            add_into(a, b);
                        }
                    }
                }
            }
        }
        let (g, gv) = acc.unwrap_or_else(|| {
            let zb = |b: &Option<Tensor<T>>| b.as_ref().map(|b| vec![T::zero(); b.numel()]);
            (
                CellGrads {
                    w_ih: vec![T::zero(); self.w_ih.numel()],
                    w_hh: vec![T::zero(); self.w_hh.numel()],
                    b_ih: zb(&self.b_ih),
                    b_hh: zb(&self.b_hh),
                    h0: zeros.clone(),
                    c0: zeros.clone(),
                    x_tm: None,
                    grad_h: None,
                },
                vec![T::zero(); self.v.numel()],
            )
        });
        Ok(self.pack(d, loss, g, gv))
    }
}

/// A gated-cell problem: weights and one batch (f64), optional initial state.
#[derive(Clone, Debug)]
pub struct GatedProblem {
    pub weights: GatedWeights<f64>,
    pub x: Tensor<f64>,
    pub z: Tensor<f64>,
    pub h0: Option<Tensor<f64>>,
    pub c0: Option<Tensor<f64>>,
}

impl GatedProblem {
    pub fn dims(&self) -> Result<SeqDims> {
        self.weights
            .check(&self.x, &self.z, self.h0.as_ref(), self.c0.as_ref())
    }
    pub fn bptt(&self, truncate: Option<usize>, keep_grad_h: bool) -> Result<GatedBptt<f64>> {
        self.weights.mse_bptt(
            &self.x,
            &self.z,
            self.h0.as_ref(),
            self.c0.as_ref(),
            &BackwardOptions {
                truncate,
                need_x: false,
                keep_grad_h,
            },
        )
    }
    /// `‖∇_{h_t}L‖` (Frobenius over the batch) for t = 1..T.
    pub fn grad_h_norms(&self) -> Result<Vec<f64>> {
        let d = self.dims()?;
        let g = self.bptt(None, true)?;
        let gh = g
            .grad_h
            .ok_or_else(|| NablaError::Other("grad_h not kept".into()))?;
        Ok(gh
            .data()
            .chunks((d.batch * d.hidden).max(1))
            .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect())
    }
}

/// Reads `weight_ih`, `weight_hh`, optional `bias_ih`, `bias_hh`, `V`, optional `h0` (and `c0`
/// for the LSTM) from `params`, `x`, `z` from `batch` (safetensors, any float dtype, read as
/// f64). Every shape is checked and every value must be finite.
pub fn load_problem(cell: CellKind, params: &Path, batch: &Path) -> Result<GatedProblem> {
    let p = io::load_safetensors::<f64>(params)?;
    let d = io::load_safetensors::<f64>(batch)?;
    let take = |name: &str| -> Result<Tensor<f64>> { Ok(io::take(&p, name, params)?.clone()) };
    let weights = GatedWeights {
        cell,
        w_ih: take("weight_ih")?,
        w_hh: take("weight_hh")?,
        b_ih: p.get("bias_ih").cloned(),
        b_hh: p.get("bias_hh").cloned(),
        v: take("V")?,
    };
    let prob = GatedProblem {
        weights,
        x: io::take(&d, "x", batch)?.clone(),
        z: io::take(&d, "z", batch)?.clone(),
        h0: p.get("h0").cloned(),
        c0: p.get("c0").cloned(),
    };
    prob.dims().map_err(|e| {
        NablaError::format(
            format!("{} / {}", params.display(), batch.display()),
            e.to_string(),
        )
    })?;
    for (name, t) in p.iter() {
        t.check_finite(&format!("{name} in {}", params.display()))?;
    }
    for (name, t) in d.iter() {
        t.check_finite(&format!("{name} in {}", batch.display()))?;
    }
    Ok(prob)
}

/// `{"loss": …, "grad": {"weight_ih": …, "weight_hh": …, "bias_ih": …, "bias_hh": …, "V": …,
/// ["h0": …, "c0": …]}}`, the `nabla rnn grad --cell lstm|gru` output.
pub fn grad_json(p: &GatedProblem, truncate: Option<usize>) -> Result<Value> {
    let g = p.bptt(truncate, false)?;
    crate::analysis::rnn::finite_loss(g.loss)?;
    let mut grad = serde_json::Map::new();
    for (name, t) in g.named() {
        grad.insert(name.into(), t.to_json());
    }
    if p.h0.is_some() {
        grad.insert("h0".into(), g.h0.to_json());
    }
    if let (Some(_), Some(c0)) = (&p.c0, &g.c0) {
        grad.insert("c0".into(), c0.to_json());
    }
    Ok(json!({"loss": g.loss, "grad": grad}))
}
