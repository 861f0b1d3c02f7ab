//! Reductions. `y = Σ_axis x`: `∂L/∂x = broadcast(∂L/∂y)`; the mean divides by the axis size.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::col_sums_into;
use crate::shape_err;
use crate::tensor::{Element, Tensor};

/// (outer, n, inner) view of `shape` around `axis`.
pub fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

pub fn norm_axis(shape: &[usize], axis: isize, op: &str) -> Result<usize> {
    let n = shape.len() as isize;
    let a = if axis < 0 { n + axis } else { axis };
    if a < 0 || a >= n {
        return Err(shape_err!(
            op,
            "axis {axis} out of range for shape {:?}",
            shape
        ));
    }
    Ok(a as usize)
}

/// Sum over `axis` of a raw tensor, times `factor`.
pub fn sum_axis<T: Element>(x: &Tensor<T>, axis: usize, keepdim: bool, factor: T) -> Tensor<T> {
    let (outer, n, inner) = split_axis(x.shape(), axis);
    let mut out = Vec::with_capacity(outer * inner);
    let d = x.data();
    let mut sums = Vec::new();
    for o in 0..outer {
        // Each outer slice is an (n, inner) block: the sum over the axis is its column sums.
        col_sums_into(&d[o * n * inner..(o + 1) * n * inner], inner, &mut sums);
        out.extend(sums.iter().map(|&v| v * factor));
    }
    let mut shape = x.shape().to_vec();
    if keepdim {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    Tensor::from_parts(shape, out)
}

struct SumAxis<T> {
    axis: usize,
    factor: T,
}

impl<T: Element> Op<T> for SumAxis<T> {
    fn name(&self) -> &'static str {
        "sum_axis"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let x = ctx.inputs[0];
        let g = ctx.grad();
        let (outer, n, inner) = split_axis(x.shape(), self.axis);
        let mut out = vec![T::zero(); x.numel()];
        let gd = g.data();
        for o in 0..outer {
            for j in 0..n {
                let dst = &mut out[(o * n + j) * inner..(o * n + j + 1) * inner];
                for (a, &b) in dst.iter_mut().zip(&gd[o * inner..(o + 1) * inner]) {
                    *a = b * self.factor;
                }
            }
        }
        Ok(vec![Some(Tensor::new(x.shape(), out)?)])
    }
}

fn reduce<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    axis: isize,
    keepdim: bool,
    mean: bool,
) -> Result<Var> {
    let a = norm_axis(tape.shape(x), axis, "sum")?;
    let n = tape.shape(x)[a];
    let factor = if mean {
        T::one() / T::c(n.max(1) as f64)
    } else {
        T::one()
    };
    let out = sum_axis(tape.value(x), a, keepdim, factor);
    Ok(tape.record1(SumAxis { axis: a, factor }, &[x], out))
}

pub fn sum<T: Element>(tape: &mut Tape<T>, x: Var, axis: isize, keepdim: bool) -> Result<Var> {
    reduce(tape, x, axis, keepdim, false)
}
pub fn mean<T: Element>(tape: &mut Tape<T>, x: Var, axis: isize, keepdim: bool) -> Result<Var> {
    reduce(tape, x, axis, keepdim, true)
}

/// Sum of all elements: `∂L/∂x = ∂L/∂y · 1`.
struct SumAll<T> {
    factor: T,
}
impl<T: Element> Op<T> for SumAll<T> {
    fn name(&self) -> &'static str {
        "sum_all"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = ctx.grad().item() * self.factor;
        Ok(vec![Some(Tensor::full(ctx.inputs[0].shape(), g))])
    }
}
pub fn sum_all<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let s = tape.value(x).sum_all();
    Ok(tape.record1(SumAll { factor: T::one() }, &[x], Tensor::scalar(s)))
}
pub fn mean_all<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let n = tape.value(x).numel();
    if n == 0 {
        return Err(shape_err!("mean_all", "mean of an empty tensor"));
    }
    let f = T::one() / T::c(n as f64);
    let s = tape.value(x).sum_all() * f;
    Ok(tape.record1(SumAll { factor: f }, &[x], Tensor::scalar(s)))
}
