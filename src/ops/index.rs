//! Gather and scatter-add of rows by an index — the data movement of message passing.
//! They are adjoint: `gather` backward is `scatter_add` of the gradient and vice versa.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::sparse;
use crate::shape_err;
use crate::tensor::{Element, Tensor};

fn row_len<T: Element>(x: &Tensor<T>) -> usize {
    x.shape()[1..].iter().product()
}

/// `out[e] = x[idx[e]]` on raw tensors.
pub fn gather_rows_tensor<T: Element>(x: &Tensor<T>, idx: &[usize]) -> Tensor<T> {
    let r = row_len(x);
    let mut out = Vec::with_capacity(idx.len() * r);
    for &i in idx {
        out.extend_from_slice(&x.data()[i * r..(i + 1) * r]);
    }
    let mut s = x.shape().to_vec();
    s[0] = idx.len();
    Tensor::from_parts(s, out)
}

/// `out[idx[e]] += src[e]` into `n` rows on raw tensors.
pub fn scatter_add_rows_tensor<T: Element>(src: &Tensor<T>, idx: &[usize], n: usize) -> Tensor<T> {
    let r = row_len(src);
    let mut out = vec![T::zero(); n * r];
    sparse::scatter_add_rows(&mut out, r, idx, src.data());
    let mut s = src.shape().to_vec();
    s[0] = n;
    Tensor::from_parts(s, out)
}

fn check_idx(op: &str, idx: &[usize], n: usize) -> Result<()> {
    if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
        return Err(shape_err!(op, "index {bad} out of range for {n} rows"));
    }
    Ok(())
}

struct Gather {
    idx: Vec<usize>,
}
impl<T: Element> Op<T> for Gather {
    fn name(&self) -> &'static str {
        "gather_rows"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let n = ctx.inputs[0].dim(0);
        Ok(vec![Some(scatter_add_rows_tensor(
            &ctx.grad(),
            &self.idx,
            n,
        ))])
    }
}

/// `out (E, …) = x[idx]` for `x (N, …)`.
pub fn gather_rows<T: Element>(tape: &mut Tape<T>, x: Var, idx: &[usize]) -> Result<Var> {
    let xv = tape.value(x);
    if xv.ndim() == 0 {
        return Err(shape_err!("gather_rows", "needs at least 1-D input"));
    }
    check_idx("gather_rows", idx, xv.dim(0))?;
    let out = gather_rows_tensor(xv, idx);
    Ok(tape.record1(Gather { idx: idx.to_vec() }, &[x], out))
}

struct Scatter {
    idx: Vec<usize>,
}
impl<T: Element> Op<T> for Scatter {
    fn name(&self) -> &'static str {
        "scatter_add_rows"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        Ok(vec![Some(gather_rows_tensor(&ctx.grad(), &self.idx))])
    }
}

/// `out (n, …)` with `out[idx[e]] += src[e]` for `src (E, …)`.
pub fn scatter_add_rows<T: Element>(
    tape: &mut Tape<T>,
    src: Var,
    idx: &[usize],
    n: usize,
) -> Result<Var> {
    let sv = tape.value(src);
    if sv.ndim() == 0 || sv.dim(0) != idx.len() {
        return Err(shape_err!(
            "scatter_add_rows",
            "src {:?} needs one row per index ({} indices)",
            sv.shape(),
            idx.len()
        ));
    }
    check_idx("scatter_add_rows", idx, n)?;
    let out = scatter_add_rows_tensor(sv, idx, n);
    Ok(tape.record1(Scatter { idx: idx.to_vec() }, &[src], out))
}
