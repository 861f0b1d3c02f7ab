//! Shape ops. Each backward is the inverse data movement: reshape ↔ reshape, permute ↔ inverse
//! permutation, narrow ↔ zero-padded embed, concat ↔ split.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::ops::reduce::{norm_axis, split_axis};
use crate::shape_err;
use crate::tensor::{numel, Element, Tensor};

struct Reshape;
impl<T: Element> Op<T> for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        Ok(vec![Some(
            ctx.grad().into_owned().reshape(ctx.inputs[0].shape())?,
        )])
    }
}

pub fn reshape<T: Element>(tape: &mut Tape<T>, x: Var, shape: &[usize]) -> Result<Var> {
    if tape.shape(x) == shape {
        return Ok(x);
    }
    let out = tape.value(x).clone().reshape(shape)?;
    Ok(tape.record1(Reshape, &[x], out))
}

/// Permutes the axes of a raw tensor: output axis `i` is input axis `perm[i]`.
pub fn permute_tensor<T: Element>(x: &Tensor<T>, perm: &[usize]) -> Result<Tensor<T>> {
    let nd = x.ndim();
    let mut seen = vec![false; nd];
    if perm.len() != nd
        || perm
            .iter()
            .any(|&p| p >= nd || std::mem::replace(&mut seen[p], true))
    {
        return Err(shape_err!(
            "permute",
            "{:?} is not a permutation of the axes of {:?}",
            perm,
            x.shape()
        ));
    }
    let in_shape = x.shape();
    let mut in_strides = vec![1usize; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * in_shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let total = x.numel();
    let mut out = Vec::with_capacity(total);
    let d = x.data();
    if nd == 0 || total == 0 {
        return Ok(Tensor::from_parts(out_shape, d.to_vec()));
    }
    // Innermost output axis as a tight loop; the rest as an odometer.
    let last = nd - 1;
    let (ln, ls) = (out_shape[last], st[last]);
    let mut idx = vec![0usize; nd];
    let mut off = 0usize;
    for _ in 0..total / ln {
        for j in 0..ln {
            out.push(d[off + j * ls]);
        }
        let mut a = last;
        while a > 0 {
            a -= 1;
            idx[a] += 1;
            off += st[a];
            if idx[a] < out_shape[a] {
                break;
            }
            off -= st[a] * out_shape[a];
            idx[a] = 0;
        }
    }
    Ok(Tensor::from_parts(out_shape, out))
}

struct Permute {
    inverse: Vec<usize>,
}
impl<T: Element> Op<T> for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        Ok(vec![Some(permute_tensor(&ctx.grad(), &self.inverse)?)])
    }
}

pub fn permute<T: Element>(tape: &mut Tape<T>, x: Var, perm: &[usize]) -> Result<Var> {
    let out = permute_tensor(tape.value(x), perm)?;
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(tape.record1(Permute { inverse }, &[x], out))
}

/// Swaps two axes.
pub fn transpose<T: Element>(tape: &mut Tape<T>, x: Var, a: isize, b: isize) -> Result<Var> {
    let nd = tape.shape(x).len();
    let a = norm_axis(tape.shape(x), a, "transpose")?;
    let b = norm_axis(tape.shape(x), b, "transpose")?;
    let mut perm: Vec<usize> = (0..nd).collect();
    perm.swap(a, b);
    permute(tape, x, &perm)
}

struct Narrow {
    axis: usize,
    start: usize,
}
impl<T: Element> Op<T> for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let x = ctx.inputs[0];
        let g = ctx.grad();
        let (outer, n, inner) = split_axis(x.shape(), self.axis);
        let len = g.shape()[self.axis];
        let mut out = vec![T::zero(); x.numel()];
        for o in 0..outer {
            let src = &g.data()[o * len * inner..(o + 1) * len * inner];
            let dst = &mut out[(o * n + self.start) * inner..(o * n + self.start + len) * inner];
            dst.copy_from_slice(src);
        }
        Ok(vec![Some(Tensor::new(x.shape(), out)?)])
    }
}

/// `x[…, start:start+len, …]` along `axis`.
pub fn narrow<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    axis: isize,
    start: usize,
    len: usize,
) -> Result<Var> {
    let shape = tape.shape(x).to_vec();
    let a = norm_axis(&shape, axis, "narrow")?;
    if start + len > shape[a] {
        return Err(shape_err!(
            "narrow",
            "range {start}..{} exceeds axis {a} of {:?}",
            start + len,
            shape
        ));
    }
    let (outer, n, inner) = split_axis(&shape, a);
    let d = tape.value(x).data();
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&d[(o * n + start) * inner..(o * n + start + len) * inner]);
    }
    let mut s = shape.clone();
    s[a] = len;
    Ok(tape.record1(Narrow { axis: a, start }, &[x], Tensor::from_parts(s, out)))
}

struct Concat {
    axis: usize,
    sizes: Vec<usize>,
}
impl<T: Element> Op<T> for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = ctx.grad();
        let (outer, total, inner) = split_axis(g.shape(), self.axis);
        let mut res = Vec::new();
        let mut off = 0;
        for (i, &sz) in self.sizes.iter().enumerate() {
            let mut out = Vec::with_capacity(outer * sz * inner);
            for o in 0..outer {
                out.extend_from_slice(
                    &g.data()[(o * total + off) * inner..(o * total + off + sz) * inner],
                );
            }
            off += sz;
            res.push(Some(Tensor::new(ctx.inputs[i].shape(), out)?));
        }
        Ok(res)
    }
}

/// Concatenates along `axis`; all other axes must agree.
pub fn concat<T: Element>(tape: &mut Tape<T>, xs: &[Var], axis: isize) -> Result<Var> {
    if xs.is_empty() {
        return Err(shape_err!("concat", "nothing to concatenate"));
    }
    let s0 = tape.shape(xs[0]).to_vec();
    let a = norm_axis(&s0, axis, "concat")?;
    let mut sizes = Vec::new();
    for &x in xs {
        let s = tape.shape(x);
        if s.len() != s0.len()
            || s.iter()
                .zip(&s0)
                .enumerate()
                .any(|(i, (p, q))| i != a && p != q)
        {
            return Err(shape_err!(
                "concat",
                "shape {:?} does not match {:?} off axis {a}",
                s,
                s0
            ));
        }
        sizes.push(s[a]);
    }
    let total: usize = sizes.iter().sum();
    let (outer, _, inner) = split_axis(&s0, a);
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (&x, &sz) in xs.iter().zip(&sizes) {
            out.extend_from_slice(&tape.value(x).data()[o * sz * inner..(o + 1) * sz * inner]);
        }
    }
    let mut s = s0;
    s[a] = total;
    debug_assert_eq!(numel(&s), out.len());
    Ok(tape.record1(Concat { axis: a, sizes }, xs, Tensor::from_parts(s, out)))
}
