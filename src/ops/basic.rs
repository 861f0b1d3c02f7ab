//! Elementwise arithmetic with NumPy/PyTorch broadcasting.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::reduce::bias_grad_into;
use crate::kernels::{zip_into, zip_rows_into};
use crate::shape_err;
use crate::tensor::{Element, Tensor};

/// Broadcast shape of `a` and `b` (trailing axes aligned; size-1 axes stretch).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(shape_err!(
                "broadcast",
                "shapes {:?} and {:?} do not broadcast",
                a,
                b
            ));
        };
    }
    Ok(out)
}

/// Element strides of `shape` viewed inside `out` (0 on broadcast axes).
fn bstrides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n = out.len();
    let mut st = vec![0; n];
    let mut acc = 1;
    for i in (0..shape.len()).rev() {
        let oi = i + n - shape.len();
        st[oi] = if shape[i] == 1 { 0 } else { acc };
        acc *= shape[i];
    }
    st
}

/// Calls `f(out_index, a_offset, b_offset)` for every element of the broadcast result.
fn for_each_broadcast(
    out: &[usize],
    sa: &[usize],
    sb: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let n = out.len();
    let total: usize = out.iter().product();
    let mut idx = vec![0usize; n];
    let (mut oa, mut ob) = (0usize, 0usize);
    for o in 0..total {
        f(o, oa, ob);
        // increment the multi-index
        let mut d = n;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            oa += sa[d];
            ob += sb[d];
            if idx[d] < out[d] {
                break;
            }
            oa -= sa[d] * out[d];
            ob -= sb[d] * out[d];
            idx[d] = 0;
        }
    }
}

/// `shape` without its leading axes of size 1 (which broadcasting prepends anyway).
fn trim_leading_ones(shape: &[usize]) -> &[usize] {
    let lead = shape.iter().take_while(|&&d| d == 1).count();
    &shape[lead..]
}

/// Applies `f` elementwise with broadcasting.
pub fn broadcast_zip<T: Element>(
    a: &Tensor<T>,
    b: &Tensor<T>,
    f: impl Fn(T, T) -> T + Sync,
) -> Result<Tensor<T>> {
    if a.shape() == b.shape() {
        let mut out = vec![T::zero(); a.numel()];
        zip_into(a.data(), b.data(), &mut out, f);
        return Ok(Tensor::from_parts(a.shape().to_vec(), out));
    }
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let total: usize = shape.iter().product();
    // Fast path: b broadcast along leading axes of a (bias add, per-feature scale, a ViT's
    // (1, T, D) position embedding added to (B, T, D)).
    if shape == a.shape() && b.numel() > 0 && a.shape().ends_with(trim_leading_ones(b.shape())) {
        let mut out = vec![T::zero(); total];
        zip_rows_into(a.data(), b.data(), &mut out, f);
        return Ok(Tensor::from_parts(shape, out));
    }
    let sa = bstrides(a.shape(), &shape);
    let sb = bstrides(b.shape(), &shape);
    let mut out = vec![T::zero(); total];
    let (ad, bd) = (a.data(), b.data());
    for_each_broadcast(&shape, &sa, &sb, |o, ia, ib| out[o] = f(ad[ia], bd[ib]));
    Ok(Tensor::from_parts(shape, out))
}

/// Sums `g` (of a broadcast shape) down to `shape`: the adjoint of broadcasting.
pub fn reduce_to_shape<T: Element>(g: &Tensor<T>, shape: &[usize]) -> Tensor<T> {
    if g.shape() == shape {
        return g.clone();
    }
    let mut out = vec![T::zero(); shape.iter().product()];
    if let Some(view) = bias_view(g.shape(), shape) {
        // A bias broadcast over leading and trailing axes (`(D)` over `(…, D)`, a per-channel
        // `(C, 1, 1)` over `(N, C, H, W)`): the bias-gradient kernel.
        bias_grad_into(g.data(), view, &mut out);
        return Tensor::from_parts(shape.to_vec(), out);
    }
    let s = bstrides(shape, g.shape());
    let zero = vec![0; g.ndim()];
    let gd = g.data();
    for_each_broadcast(g.shape(), &s, &zero, |o, i, _| out[i] += gd[o]);
    Tensor::from_parts(shape.to_vec(), out)
}

/// `(cols, inner)` when `shape`, broadcast to `gs`, is one contiguous run of `gs`'s axes with
/// ones before and after it (then `g` is `(rows, cols, inner)` with the bias along `cols`).
fn bias_view(gs: &[usize], shape: &[usize]) -> Option<(usize, usize)> {
    let s = trim_leading_ones(shape);
    if s.len() > gs.len() {
        return None;
    }
    // `shape` right-aligned against `gs`, ones in front.
    let pad = gs.len() - s.len();
    let at = |a: usize| if a < pad { 1 } else { s[a - pad] };
    let kept: Vec<usize> = (0..gs.len()).filter(|&a| at(a) != 1).collect();
    let (a0, a1) = match (kept.first(), kept.last()) {
        (Some(&a0), Some(&a1)) => (a0, a1 + 1),
        _ => (gs.len(), gs.len()),
    };
    if (a0..a1).any(|a| at(a) != gs[a]) {
        return None;
    }
    Some((gs[a0..a1].iter().product(), gs[a1..].iter().product()))
}

#[derive(Clone, Copy)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

/// `c = a ∘ b` with broadcasting.
/// Backward: `∂c/∂a = 1, 1, b, 1/b` and `∂c/∂b = 1, −1, a, −a/b²` for `+ − × ÷`, each summed
/// over the broadcast axes back to the operand's shape.
struct BinaryOp {
    kind: Bin,
}

impl<T: Element> Op<T> for BinaryOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Bin::Add => "add",
            Bin::Sub => "sub",
            Bin::Mul => "mul",
            Bin::Div => "div",
        }
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let ga = if ctx.needs_grad[0] {
            let full = match self.kind {
                Bin::Add | Bin::Sub => g.clone().into_owned(),
                Bin::Mul => broadcast_zip(&g, b, |g, b| g * b)?,
                Bin::Div => broadcast_zip(&g, b, |g, b| g / b)?,
            };
            Some(reduce_to_shape(&full, a.shape()))
        } else {
            None
        };
        let gb = if ctx.needs_grad[1] {
            let full = match self.kind {
                Bin::Add => g.clone().into_owned(),
                Bin::Sub => g.map(|x| -x),
                Bin::Mul => broadcast_zip(&g, a, |g, a| g * a)?,
                Bin::Div => {
                    let ga = broadcast_zip(&g, a, |g, a| g * a)?;
                    broadcast_zip(&ga, b, |x, b| -x / (b * b))?
                }
            };
            Some(reduce_to_shape(&full, b.shape()))
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

fn binary<T: Element>(tape: &mut Tape<T>, a: Var, b: Var, kind: Bin) -> Result<Var> {
    let (ta, tb) = (tape.value(a), tape.value(b));
    let out = match kind {
        Bin::Add => broadcast_zip(ta, tb, |x, y| x + y),
        Bin::Sub => broadcast_zip(ta, tb, |x, y| x - y),
        Bin::Mul => broadcast_zip(ta, tb, |x, y| x * y),
        Bin::Div => broadcast_zip(ta, tb, |x, y| x / y),
    }?;
    Ok(tape.record1(BinaryOp { kind }, &[a, b], out))
}

pub fn add<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    binary(tape, a, b, Bin::Add)
}
pub fn sub<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    binary(tape, a, b, Bin::Sub)
}
pub fn mul<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    binary(tape, a, b, Bin::Mul)
}
pub fn div<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    binary(tape, a, b, Bin::Div)
}

/// `y = α x + β`; `∂y/∂x = α`.
struct Affine<T> {
    alpha: T,
}

impl<T: Element> Op<T> for Affine<T> {
    fn name(&self) -> &'static str {
        "affine"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let a = self.alpha;
        Ok(vec![Some(ctx.grad().map(|g| g * a))])
    }
}

pub fn scale<T: Element>(tape: &mut Tape<T>, x: Var, alpha: f64) -> Result<Var> {
    let a = T::c(alpha);
    let out = tape.value(x).map(|v| v * a);
    Ok(tape.record1(Affine { alpha: a }, &[x], out))
}
pub fn add_scalar<T: Element>(tape: &mut Tape<T>, x: Var, beta: f64) -> Result<Var> {
    let b = T::c(beta);
    let out = tape.value(x).map(|v| v + b);
    Ok(tape.record1(Affine { alpha: T::one() }, &[x], out))
}
pub fn neg<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    scale(tape, x, -1.0)
}

/// `y = x²`; `∂y/∂x = 2x`.
struct Square;
impl<T: Element> Op<T> for Square {
    fn name(&self) -> &'static str {
        "square"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = broadcast_zip(&ctx.grad(), ctx.inputs[0], |g, x| T::c(2.0) * g * x)?;
        Ok(vec![Some(g)])
    }
}
pub fn square<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let out = tape.value(x).map(|v| v * v);
    Ok(tape.record1(Square, &[x], out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_shapes() {
        assert_eq!(broadcast_shape(&[4, 1, 3], &[2, 1]).unwrap(), vec![4, 2, 3]);
        assert!(broadcast_shape(&[4, 3], &[2]).is_err());
        let a = Tensor::<f64>::from_f64(&[2, 1], &[1.0, 2.0]).unwrap();
        let b = Tensor::<f64>::from_f64(&[3], &[10.0, 20.0, 30.0]).unwrap();
        let c = broadcast_zip(&a, &b, |x, y| x + y).unwrap();
        assert_eq!(c.shape(), &[2, 3]);
        assert_eq!(c.data(), &[11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
        let r = reduce_to_shape(&c, &[2, 1]);
        assert_eq!(r.data(), &[63.0, 66.0]);
        let r = reduce_to_shape(&c, &[3]);
        assert_eq!(r.data(), &[23.0, 43.0, 63.0]);
        // (2, 2, 3) + (1, 2, 3), a position embedding: the row fast path, with its leading 1
        // trimmed, and back; the same values as the general broadcast loop.
        let a = Tensor::<f64>::from_f64(&[2, 2, 3], &(0..12).map(|v| v as f64).collect::<Vec<_>>())
            .unwrap();
        let p = Tensor::<f64>::from_f64(&[1, 2, 3], &[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]).unwrap();
        let c = broadcast_zip(&a, &p, |x, y| x + y).unwrap();
        assert_eq!(c.shape(), &[2, 2, 3]);
        let want: Vec<f64> = (0..12).map(|i| i as f64 + 0.5 + (i % 6) as f64).collect();
        assert_eq!(c.data(), &want[..]);
        let r = reduce_to_shape(&c, &[1, 2, 3]);
        assert_eq!(r.shape(), &[1, 2, 3]);
        let want: Vec<f64> = (0..6).map(|j| want[j] + want[j + 6]).collect();
        assert_eq!(r.data(), &want[..]);
        // (1, 1) trims to []: a scalar, which the row path takes as rows of one entry.
        let s = Tensor::<f64>::from_f64(&[1, 1], &[1.0]).unwrap();
        let b = Tensor::<f64>::from_f64(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            broadcast_zip(&b, &s, |x, y| x + y).unwrap().data(),
            &[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        );
        assert_eq!(reduce_to_shape(&b, &[1, 1]).data(), &[21.0]);
    }

    /// A per-channel bias `(C, 1, 1)` over `(N, C, H, W)` takes the bias-gradient kernel with
    /// trailing entries; a shape with a gap, `(C, 1, W)`, the general loop; both give the
    /// explicit sums (small integers: exact in any order).
    #[test]
    fn reduce_to_per_channel_and_gapped_shapes() {
        let (n, c, h, w) = (3, 4, 2, 5);
        let g = Tensor::<f64>::from_fn(&[n, c, h, w], |i| ((i * 7) % 11) as f64 - 5.0);
        let at = |i: usize| g.data()[i];
        let r = reduce_to_shape(&g, &[c, 1, 1]);
        assert_eq!(r.shape(), &[c, 1, 1]);
        for ch in 0..c {
            let want: f64 = (0..g.numel())
                .filter(|i| (i / (h * w)) % c == ch)
                .map(at)
                .sum();
            assert_eq!(r.data()[ch], want, "channel {ch}");
        }
        assert_eq!(bias_view(&[n, c, h, w], &[c, 1, 1]), Some((c, h * w)));
        assert_eq!(bias_view(&[n, c, h, w], &[c, 1, w]), None);
        let r = reduce_to_shape(&g, &[c, 1, w]);
        for ch in 0..c {
            for x in 0..w {
                let want: f64 = (0..g.numel())
                    .filter(|i| (i / (h * w)) % c == ch && i % w == x)
                    .map(at)
                    .sum();
                assert_eq!(r.data()[ch * w + x], want);
            }
        }
    }
}
