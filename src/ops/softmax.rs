//! Softmax and log-softmax over the last axis.
//! - `y = softmax(x)`: `∂L/∂x = y ⊙ (g − ⟨g, y⟩)` per row.
//! - `y = log_softmax(x)`: `∂L/∂x = g − softmax(x) · Σ_j g_j` per row.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::softmax::log_softmax_rows_backward;
use crate::kernels::{log_softmax_rows, softmax_rows, softmax_rows_backward};
use crate::shape_err;
use crate::tensor::{Element, Tensor};

struct Softmax;
impl<T: Element> Op<T> for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let y = ctx.outputs[0];
        let n = y.dim(-1);
        let mut dx = vec![T::zero(); y.numel()];
        softmax_rows_backward(y.data(), ctx.grad().data(), &mut dx, n);
        Ok(vec![Some(Tensor::new(y.shape(), dx)?)])
    }
}

fn last_dim<T: Element>(t: &Tensor<T>, op: &str) -> Result<usize> {
    if t.ndim() == 0 || t.dim(-1) == 0 {
        return Err(shape_err!(
            op,
            "needs a non-empty last axis, got {:?}",
            t.shape()
        ));
    }
    Ok(t.dim(-1))
}

pub fn softmax<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let n = last_dim(tape.value(x), "softmax")?;
    let mut y = tape.value(x).clone();
    softmax_rows(y.data_mut(), n);
    Ok(tape.record1(Softmax, &[x], y))
}

struct LogSoftmax;
impl<T: Element> Op<T> for LogSoftmax {
    fn name(&self) -> &'static str {
        "log_softmax"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let y = ctx.outputs[0];
        let n = y.dim(-1);
        let g = ctx.grad();
        let mut dx = vec![T::zero(); y.numel()];
        log_softmax_rows_backward(y.data(), g.data(), &mut dx, n);
        Ok(vec![Some(Tensor::new(y.shape(), dx)?)])
    }
}

pub fn log_softmax<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let n = last_dim(tape.value(x), "log_softmax")?;
    let mut y = tape.value(x).clone();
    log_softmax_rows(y.data_mut(), n);
    Ok(tape.record1(LogSoftmax, &[x], y))
}
