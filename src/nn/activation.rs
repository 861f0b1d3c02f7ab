//! The one pointwise nonlinearity enum, shared by the recurrent cells (scalar and in-place
//! kernel forms, derivative through the output) and the GNN updates (on the tape).
//!
//! ```text
//! sigmoid  h = 1/(1+e^{-a}),  σ' = h(1-h)
//! tanh     h = tanh a,        σ' = 1-h²
//! relu     h = max(a, 0),     σ' = [h > 0]
//! elu      h = a (a>0), e^a-1 (a≤0),   σ' = 1 (h>0), h+1 (h≤0)     (α = 1)
//! identity h = a,             σ' = 1
//! ```

use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::kernels::elementwise::{
    relu_backward_in_place, relu_in_place, sigmoid_backward_in_place, sigmoid_in_place,
    tanh_backward_in_place, tanh_in_place,
};
use crate::kernels::sigmoid as sigmoid_k;
use crate::tensor::Element;
use crate::{invalid, ops};
use serde::{Deserialize, Serialize};

/// A pointwise nonlinearity. The assignment's Elman RNN uses the logistic sigmoid (the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    #[default]
    Sigmoid,
    Tanh,
    Relu,
    /// ELU with α = 1.
    Elu,
    Identity,
}

impl Activation {
    #[inline]
    pub fn f<T: Element>(self, x: T) -> T {
        match self {
            Activation::Sigmoid => sigmoid_k(x),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(T::zero()),
            Activation::Elu => {
                if x > T::zero() {
                    x
                } else {
                    x.exp() - T::one()
                }
            }
            Activation::Identity => x,
        }
    }
    /// `σ'(a)` written through the output `h = σ(a)`.
    #[inline]
    pub fn grad_from_output<T: Element>(self, h: T) -> T {
        match self {
            Activation::Sigmoid => h * (T::one() - h),
            Activation::Tanh => T::one() - h * h,
            Activation::Relu => {
                if h > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Activation::Elu => {
                if h > T::zero() {
                    T::one()
                } else {
                    h + T::one()
                }
            }
            Activation::Identity => T::one(),
        }
    }
    /// Upper bound of `|σ'|` (¼ for the sigmoid), used in `‖∂h_{t+1}/∂h_t‖ ≤ sup|σ'|·‖U‖`.
    pub fn max_slope(self) -> f64 {
        match self {
            Activation::Sigmoid => 0.25,
            _ => 1.0,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Relu => "relu",
            Activation::Elu => "elu",
            Activation::Identity => "identity",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sigmoid" => Ok(Activation::Sigmoid),
            "tanh" => Ok(Activation::Tanh),
            "relu" => Ok(Activation::Relu),
            "elu" => Ok(Activation::Elu),
            "identity" | "linear" => Ok(Activation::Identity),
            _ => Err(invalid!(
                "unknown activation {s:?} (expected sigmoid, tanh, relu, elu or identity)"
            )),
        }
    }
    /// On the tape, through the primitive ops (each with its own backward).
    pub fn apply<T: Element>(self, tape: &mut Tape<T>, x: Var) -> Result<Var> {
        match self {
            Activation::Sigmoid => ops::sigmoid(tape, x),
            Activation::Tanh => ops::tanh(tape, x),
            Activation::Relu => ops::relu(tape, x),
            Activation::Elu => ops::elu(tape, x, 1.0),
            Activation::Identity => Ok(x),
        }
    }
    /// `v ← σ(v)` over a block (the kernels' vectorized f32 sigmoid and tanh — libm's scalar
    /// `expf`/`tanhf` were a quarter of an RNN training step —, the exact forms in f64).
    pub fn forward_in_place<T: Element>(self, v: &mut [T]) {
        match self {
            Activation::Sigmoid => sigmoid_in_place(v),
            Activation::Tanh => tanh_in_place(v),
            Activation::Relu => relu_in_place(v),
            Activation::Elu => v.iter_mut().for_each(|x| *x = self.f(*x)),
            Activation::Identity => {}
        }
    }
    /// `g ← g ⊙ σ'(a)`, the derivative written through the output `h = σ(a)`.
    pub fn backward_in_place<T: Element>(self, g: &mut [T], h: &[T]) {
        match self {
            Activation::Sigmoid => sigmoid_backward_in_place(g, h),
            Activation::Tanh => tanh_backward_in_place(g, h),
            Activation::Relu => relu_backward_in_place(g, h),
            Activation::Elu => g
                .iter_mut()
                .zip(h)
                .for_each(|(g, &h)| *g *= self.grad_from_output(h)),
            Activation::Identity => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derivative through the output equals the central difference of `f` (f64).
    #[test]
    fn grad_from_output_matches_finite_differences() {
        for act in [
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Relu,
            Activation::Elu,
            Activation::Identity,
        ] {
            for &a in &[-1.7f64, -0.3, 0.4, 2.2] {
                let e = 1e-6;
                let fd = (act.f(a + e) - act.f(a - e)) / (2.0 * e);
                let got = act.grad_from_output(act.f(a));
                assert!(
                    (fd - got).abs() < 1e-8,
                    "{} at {a}: {got} vs {fd}",
                    act.name()
                );
                let mut v = [a];
                act.forward_in_place(&mut v);
                assert!((v[0] - act.f(a)).abs() < 1e-15);
                let mut g = [2.0];
                act.backward_in_place(&mut g, &v);
                assert!((g[0] - 2.0 * got).abs() < 1e-14);
            }
            assert_eq!(Activation::parse(act.name()).unwrap(), act);
        }
        assert!(Activation::parse("swish").is_err());
    }
}
