//! Reference paths: the recurrent models unrolled into primitive [`crate::ops`], one step at a
//! time, each op with its own backward. Slow, but independent of the fused ops' hand-derived
//! BPTT, which the tests compare against them. Truncation detaches the state (a fresh constant)
//! at `t = k, 2k, …`.

use super::elman::{shapes_of, RnnVars};
use super::lstm::shapes_of as cell_shapes;
use super::seq::{CellVars, SeqDims};
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::tensor::{Element, Tensor};
use crate::{invalid, ops};

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

/// Step input `x_t (B, I)` of `x (B, T, I)`.
fn step_input<T: Element>(tape: &mut Tape<T>, x: Var, s: usize, d: SeqDims) -> Result<Var> {
    let xt = ops::narrow(tape, x, 1, s, 1)?; // (B, 1, I)
    ops::reshape(tape, xt, &[d.batch, d.input])
}

/// `x W_ihᵀ + b_ih` and `h W_hhᵀ + b_hh`, `(B, G·H)` each.
fn gate_products<T: Element>(
    tape: &mut Tape<T>,
    xt: Var,
    h: Var,
    p: &CellVars,
) -> Result<(Var, Var)> {
    let mut a = ops::matmul_t(tape, xt, p.w_ih)?;
    if let Some(b) = p.b_ih {
        a = ops::add(tape, a, b)?;
    }
    let mut r = ops::matmul_t(tape, h, p.w_hh)?;
    if let Some(b) = p.b_hh {
        r = ops::add(tape, r, b)?;
    }
    Ok((a, r))
}

fn concat_steps<T: Element>(tape: &mut Tape<T>, ys: &[Var], d: SeqDims) -> Result<Var> {
    if ys.is_empty() {
        Ok(tape.constant(Tensor::zeros(&[d.batch, 0, d.hidden])))
    } else {
        ops::concat(tape, ys, 1)
    }
}

fn detach<T: Element>(tape: &mut Tape<T>, v: Var) -> Var {
    let t = tape.value(v).clone();
    tape.constant(t)
}

/// The LSTM unrolled into primitive ops (PyTorch's equations, gates i, f, g, o narrowed out of
/// the stacked products). Returns `(y (B, T, H), h_T, c_T)`.
pub fn lstm_unrolled<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    c0: Option<Var>,
    p: &CellVars,
    truncate: Option<usize>,
) -> Result<(Var, Var, Var)> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = cell_shapes("lstm", 4, tape, x, h0, c0, p)?;
    let hd = d.hidden;
    let mut zero = || tape.constant(Tensor::zeros(&[d.batch, hd]));
    let mut h = h0.unwrap_or_else(&mut zero);
    let mut c = c0.unwrap_or_else(&mut zero);
    let mut ys = Vec::with_capacity(d.seq_len);
    for s in 0..d.seq_len {
        if s > 0 && truncate.is_some_and(|k| s % k == 0) {
            h = detach(tape, h);
            c = detach(tape, c);
        }
        let xt = step_input(tape, x, s, d)?;
        let (a, r) = gate_products(tape, xt, h, p)?;
        let a = ops::add(tape, a, r)?; // (B, 4H)
        let gi = ops::narrow(tape, a, 1, 0, hd)?;
        let gf = ops::narrow(tape, a, 1, hd, hd)?;
        let gg = ops::narrow(tape, a, 1, 2 * hd, hd)?;
        let go = ops::narrow(tape, a, 1, 3 * hd, hd)?;
        let i = ops::sigmoid(tape, gi)?;
        let f = ops::sigmoid(tape, gf)?;
        let g = ops::tanh(tape, gg)?;
        let o = ops::sigmoid(tape, go)?;
        let fc = ops::mul(tape, f, c)?;
        let ig = ops::mul(tape, i, g)?;
        c = ops::add(tape, fc, ig)?;
        let tc = ops::tanh(tape, c)?;
        h = ops::mul(tape, o, tc)?;
        ys.push(ops::reshape(tape, h, &[d.batch, 1, hd])?);
    }
    let y = concat_steps(tape, &ys, d)?;
    Ok((y, h, c))
}

/// The GRU unrolled into primitive ops (gates r, z, n; r multiplies `W_hn h + b_hn`).
/// Returns `(y (B, T, H), h_T)`.
pub fn gru_unrolled<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    h0: Option<Var>,
    p: &CellVars,
    truncate: Option<usize>,
) -> Result<(Var, Var)> {
    if truncate == Some(0) {
        return Err(invalid!("truncation length k must be at least 1"));
    }
    let d = cell_shapes("gru", 3, tape, x, h0, None, p)?;
    let hd = d.hidden;
    let mut h = match h0 {
        Some(h) => h,
        None => tape.constant(Tensor::zeros(&[d.batch, hd])),
    };
    let mut ys = Vec::with_capacity(d.seq_len);
    for s in 0..d.seq_len {
        if s > 0 && truncate.is_some_and(|k| s % k == 0) {
            h = detach(tape, h);
        }
        let xt = step_input(tape, x, s, d)?;
        let (a, r) = gate_products(tape, xt, h, p)?; // (B, 3H) each
        let ar = ops::narrow(tape, a, 1, 0, hd)?;
        let az = ops::narrow(tape, a, 1, hd, hd)?;
        let an = ops::narrow(tape, a, 1, 2 * hd, hd)?;
        let hr = ops::narrow(tape, r, 1, 0, hd)?;
        let hz = ops::narrow(tape, r, 1, hd, hd)?;
        let hn = ops::narrow(tape, r, 1, 2 * hd, hd)?;
        let sr = ops::add(tape, ar, hr)?;
        let rg = ops::sigmoid(tape, sr)?;
        let sz = ops::add(tape, az, hz)?;
        let zg = ops::sigmoid(tape, sz)?;
        let rn = ops::mul(tape, rg, hn)?;
        let sn = ops::add(tape, an, rn)?;
        let n = ops::tanh(tape, sn)?;
        // h = (1 − z) n + z h_prev = n + z (h_prev − n)
        let diff = ops::sub(tape, h, n)?;
        let zd = ops::mul(tape, zg, diff)?;
        h = ops::add(tape, n, zd)?;
        ys.push(ops::reshape(tape, h, &[d.batch, 1, hd])?);
    }
    let y = concat_steps(tape, &ys, d)?;
    Ok((y, h))
}
