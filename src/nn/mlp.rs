//! The transformer MLP (timm `Mlp`) as one fused op: `y = fc2(GELU(fc1(x)))` with exact (erf) GELU.
//!
//! Forward over rows `x (N, D)`: `a = x W1ᵀ + b1 (N, M)`, `g = a Φ(a)`, `y = g W2ᵀ + b2 (N, D)`.
//! Backward with `dy`:
//!
//! ```text
//! dW2 = dyᵀ g,   db2 = Σ_rows dy,   dg = dy W2
//! da  = dg ⊙ (Φ(a) + a φ(a))
//! dW1 = daᵀ x,   db1 = Σ_rows da,   dx = da W1
//! ```
//!
//! Saved: `g` and `GELU'(a) = Φ(a) + a φ(a)` (N, M), both computed in the forward from one
//! `erf` and one `exp` per element, so the backward needs no transcendental functions.
//! In f32 the erf/exp are branch-free approximations that vectorize ([`crate::kernels::gelu_and_grad_f32`]:
//! |ΔΦ| ≤ 1.5e-7 absolute, below f32 resolution of Φ near 1); in f64 (gradient checks) they are
//! libm's. The reference path is `linear → gelu → linear` in primitive ops.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::kernels::elementwise::{gelu_and_grad, mul_in_place};
use crate::kernels::{col_sums, linear_into, matmul_into, MatLayout};
use crate::nn::linear::Linear;
use crate::nn::module::{params_of, Ctx, Module, VarBuilder};

use crate::ops;
use crate::shape_err;
use crate::tensor::{Element, Tensor};

/// The MLP's parameters on the tape (timm names: `mlp.fc1.weight` (M, D), `mlp.fc1.bias` (M),
/// `mlp.fc2.weight` (D, M), `mlp.fc2.bias` (D)).
#[derive(Clone, Copy, Debug)]
pub struct MlpWeights {
    pub fc1_w: Var,
    pub fc1_b: Var,
    pub fc2_w: Var,
    pub fc2_b: Var,
}

struct MlpOp<T> {
    n: usize,
    d: usize,
    m: usize,
    /// GELU'(a) (N, M).
    dgelu: Vec<T>,
    g: Vec<T>,
}

impl<T: Element> Op<T> for MlpOp<T> {
    fn name(&self) -> &'static str {
        "mlp"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (n, d, m) = (self.n, self.d, self.m);
        let x = ctx.inputs[0];
        let (w1, w2) = (ctx.inputs[1], ctx.inputs[3]);
        let dy = ctx.grad();
        let mut grads: Vec<Option<Tensor<T>>> = vec![None; 5];
        if ctx.needs_grad[3] {
            let dw2 = matmul_into(d, m, n, dy.data(), MatLayout::T, &self.g, MatLayout::N);
            grads[3] = Some(Tensor::from_parts(vec![d, m], dw2));
        }
        if ctx.needs_grad[4] {
            grads[4] = Some(Tensor::from_parts(vec![d], col_sums(dy.data(), d)));
        }
        if !(ctx.needs_grad[0] || ctx.needs_grad[1] || ctx.needs_grad[2]) {
            return Ok(grads);
        }
        let mut da = matmul_into(n, m, d, dy.data(), MatLayout::N, w2.data(), MatLayout::N);
        mul_in_place(&mut da, &self.dgelu);
        if ctx.needs_grad[1] {
            let dw1 = matmul_into(m, d, n, &da, MatLayout::T, x.data(), MatLayout::N);
            grads[1] = Some(Tensor::from_parts(vec![m, d], dw1));
        }
        if ctx.needs_grad[2] {
            grads[2] = Some(Tensor::from_parts(vec![m], col_sums(&da, m)));
        }
        if ctx.needs_grad[0] {
            let dx = matmul_into(n, d, m, &da, MatLayout::N, w1.data(), MatLayout::N);
            grads[0] = Some(Tensor::from_parts(x.shape().to_vec(), dx));
        }
        Ok(grads)
    }
}

/// Fused `fc2(GELU(fc1(x)))` over the last axis of `x (…, D)`.
pub fn mlp<T: Element>(tape: &mut Tape<T>, x: Var, w: &MlpWeights) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let d = *xs.last().unwrap_or(&0);
    let w1s = tape.shape(w.fc1_w).to_vec();
    let m = w1s.first().copied().unwrap_or(0);
    if xs.is_empty()
        || w1s != [m, d]
        || tape.shape(w.fc1_b) != [m]
        || tape.shape(w.fc2_w) != [d, m]
        || tape.shape(w.fc2_b) != [d]
    {
        return Err(shape_err!(
            "mlp",
            "x {:?} with fc1.weight {:?}, fc1.bias {:?}, fc2.weight {:?}, fc2.bias {:?}: expected (…, D), (M, D), (M), (D, M), (D)",
            xs,
            w1s,
            tape.shape(w.fc1_b),
            tape.shape(w.fc2_w),
            tape.shape(w.fc2_b)
        ));
    }
    let n = xs[..xs.len() - 1].iter().product::<usize>();
    let a = linear_into(
        tape.value(x).data(),
        tape.value(w.fc1_w).data(),
        Some(tape.value(w.fc1_b).data()),
        n,
        d,
        m,
    );
    let mut g = vec![T::zero(); n * m];
    let mut dgelu = vec![T::zero(); n * m];
    gelu_and_grad(&a, &mut g, &mut dgelu);
    drop(a);
    let y = linear_into(
        &g,
        tape.value(w.fc2_w).data(),
        Some(tape.value(w.fc2_b).data()),
        n,
        m,
        d,
    );
    let out = Tensor::from_parts(xs, y);
    Ok(tape.record1(
        MlpOp { n, d, m, dgelu, g },
        &[x, w.fc1_w, w.fc1_b, w.fc2_w, w.fc2_b],
        out,
    ))
}

/// Reference path in primitive ops.
pub fn mlp_reference<T: Element>(tape: &mut Tape<T>, x: Var, w: &MlpWeights) -> Result<Var> {
    let h = ops::linear(tape, x, w.fc1_w, Some(w.fc1_b))?;
    let h = ops::gelu(tape, h)?;
    ops::linear(tape, h, w.fc2_w, Some(w.fc2_b))
}

/// timm's `Mlp` as a module: `fc1` (D → M) and `fc2` (M → D) under its path, the fused
/// [`mlp`] inside.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Mlp {
    /// `weight` initializes both weight matrices, biases start at zero (timm's ViT scheme).
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        dim: usize,
        hidden: usize,
        weight: Init,
    ) -> Result<Self> {
        let fc1 = Linear::with_init(vb.pp("fc1"), dim, hidden, Some(Init::Zeros), weight)?;
        let fc2 = Linear::with_init(vb.pp("fc2"), hidden, dim, Some(Init::Zeros), weight)?;
        Ok(Mlp { fc1, fc2 })
    }
}

impl<T: Element> Module<T> for Mlp {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let (fc1_w, fc1_b) = self.fc1.vars(tape, store);
        let (fc2_w, fc2_b) = self.fc2.vars(tape, store);
        let (Some(fc1_b), Some(fc2_b)) = (fc1_b, fc2_b) else {
            return Err(crate::invalid!("the fused MLP needs both biases"));
        };
        let w = MlpWeights {
            fc1_w,
            fc1_b,
            fc2_w,
            fc2_b,
        };
        mlp(tape, x, &w)
    }
    fn params(&self) -> Vec<ParamId> {
        params_of::<T>(&[&self.fc1, &self.fc2])
    }
}
