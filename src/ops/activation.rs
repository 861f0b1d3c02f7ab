//! Pointwise nonlinearities. Backward uses the input `x` or the output `y`, whichever gives the
//! cheaper derivative:
//! - sigmoid: `y' = y(1 − y)`          - tanh: `y' = 1 − y²`
//! - ReLU: `y' = [x > 0]`               - leaky ReLU: `y' = 1 or α`
//! - ELU: `y' = 1 (x > 0), y + α (x ≤ 0)` - exact GELU `xΦ(x)`: `y' = Φ(x) + xφ(x)`
//! - exp: `y' = y`  - log: `y' = 1/x`  - sqrt: `y' = 1/(2y)`

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::elementwise::{elu_into, sigmoid_into, tanh_into, zip3_into};
use crate::kernels::{gelu as gelu_k, gelu_grad, map_into, sigmoid as sigmoid_k};
use crate::tensor::{Element, Tensor};

#[derive(Clone, Copy, Debug)]
enum Act {
    Sigmoid,
    Tanh,
    Relu,
    LeakyRelu(f64),
    Elu(f64),
    Gelu,
    Exp,
    Log,
    Sqrt,
}

impl Act {
    fn f<T: Element>(self, x: T) -> T {
        match self {
            Act::Sigmoid => sigmoid_k(x),
            Act::Tanh => x.tanh(),
            Act::Relu => x.max(T::zero()),
            Act::LeakyRelu(a) => {
                if x > T::zero() {
                    x
                } else {
                    T::c(a) * x
                }
            }
            Act::Elu(a) => {
                if x > T::zero() {
                    x
                } else {
                    T::c(a) * x.exp_m1()
                }
            }
            Act::Gelu => gelu_k(x),
            Act::Exp => x.exp(),
            Act::Log => x.ln(),
            Act::Sqrt => x.sqrt(),
        }
    }
    /// Derivative from (x, y).
    fn df<T: Element>(self, x: T, y: T) -> T {
        match self {
            Act::Sigmoid => y * (T::one() - y),
            Act::Tanh => T::one() - y * y,
            Act::Relu => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::zero()
                }
            }
            Act::LeakyRelu(a) => {
                if x > T::zero() {
                    T::one()
                } else {
                    T::c(a)
                }
            }
            Act::Elu(a) => {
                if x > T::zero() {
                    T::one()
                } else {
                    y + T::c(a)
                }
            }
            Act::Gelu => gelu_grad(x),
            Act::Exp => y,
            Act::Log => T::one() / x,
            Act::Sqrt => T::c(0.5) / y,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Act::Sigmoid => "sigmoid",
            Act::Tanh => "tanh",
            Act::Relu => "relu",
            Act::LeakyRelu(_) => "leaky_relu",
            Act::Elu(_) => "elu",
            Act::Gelu => "gelu",
            Act::Exp => "exp",
            Act::Log => "log",
            Act::Sqrt => "sqrt",
        }
    }
}

struct Unary(Act);

impl<T: Element> Op<T> for Unary {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (x, y) = (ctx.inputs[0], ctx.outputs[0]);
        let act = self.0;
        let g = ctx.grad();
        let mut out = vec![T::zero(); x.numel()];
        let (xs, ys, gs, o) = (x.data(), y.data(), g.data(), &mut out[..]);
        let (zero, one) = (T::zero(), T::one());
        // `g · f'(x, y)` in one pass, one loop per activation (see `unary`).
        match act {
            Act::Sigmoid => zip3_into(gs, xs, ys, o, |g, _, y| g * (y * (one - y))),
            Act::Tanh => zip3_into(gs, xs, ys, o, |g, _, y| g * (one - y * y)),
            Act::Relu => zip3_into(gs, xs, ys, o, |g, x, _| {
                g * if x > zero { one } else { zero }
            }),
            Act::LeakyRelu(a) => {
                let a = T::c(a);
                zip3_into(gs, xs, ys, o, move |g, x, _| {
                    g * if x > zero { one } else { a }
                })
            }
            Act::Elu(a) => {
                let a = T::c(a);
                zip3_into(gs, xs, ys, o, move |g, x, y| {
                    g * if x > zero { one } else { y + a }
                })
            }
            _ => zip3_into(gs, xs, ys, o, |g, x, y| g * act.df(x, y)),
        }
        Ok(vec![Some(Tensor::new(x.shape(), out)?)])
    }
}

fn unary<T: Element>(tape: &mut Tape<T>, x: Var, act: Act) -> Result<Var> {
    let xv = tape.value(x);
    let mut out = vec![T::zero(); xv.numel()];
    let (x_, o) = (xv.data(), &mut out[..]);
    // One loop per activation with its constants hoisted, so each vectorizes (a `match` on the
    // activation inside the loop kept LLVM from it: 5 ns an entry).
    match act {
        // f32: the vectorized sigmoid/tanh kernels (a few ulp from the exact forms, which f64
        // keeps). GELU stays exact here: it is the reference the fused MLP is checked against.
        Act::Sigmoid => sigmoid_into(x_, o),
        Act::Tanh => tanh_into(x_, o),
        Act::Relu => map_into(x_, o, |v| v.max(T::zero())),
        Act::LeakyRelu(a) => {
            let a = T::c(a);
            map_into(x_, o, move |v| if v > T::zero() { v } else { a * v })
        }
        // f32 through the vectorized `expm1_f32` (≤ 2 ulp), f64 through libm's expm1.
        Act::Elu(a) => elu_into(x_, o, a),
        _ => map_into(x_, o, |v| act.f(v)),
    }
    let out = Tensor::new(xv.shape(), out)?;
    Ok(tape.record1(Unary(act), &[x], out))
}

/// Applies an activation to a tensor without a tape (fused layers use these).
pub fn apply<T: Element>(x: &Tensor<T>, name: &str) -> Result<Tensor<T>> {
    let act = match name {
        "sigmoid" => Act::Sigmoid,
        "tanh" => Act::Tanh,
        "relu" => Act::Relu,
        "gelu" => Act::Gelu,
        "elu" => Act::Elu(1.0),
        other => return Err(crate::invalid!("unknown activation {other:?}")),
    };
    Ok(x.map(|v| act.f(v)))
}

pub fn sigmoid<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Sigmoid)
}
pub fn tanh<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Tanh)
}
pub fn relu<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Relu)
}
pub fn leaky_relu<T: Element>(tape: &mut Tape<T>, x: Var, alpha: f64) -> Result<Var> {
    unary(tape, x, Act::LeakyRelu(alpha))
}
pub fn elu<T: Element>(tape: &mut Tape<T>, x: Var, alpha: f64) -> Result<Var> {
    unary(tape, x, Act::Elu(alpha))
}
/// Exact GELU, `x Φ(x)` with Φ from `erf` (PyTorch's default `approximate='none'`).
pub fn gelu<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Gelu)
}
pub fn exp<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Exp)
}
pub fn log<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Log)
}
pub fn sqrt<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    unary(tape, x, Act::Sqrt)
}
