//! Matrix products. For `C = A·B`: `∂L/∂A = ∂L/∂C · Bᵀ`, `∂L/∂B = Aᵀ · ∂L/∂C`; the transposes
//! are strides passed to `gemm`, never copies.

use crate::autograd::{BackwardCtx, Op, Tape, Var};
use crate::error::Result;
use crate::kernels::{gemm, matmul_into, MatLayout};
use crate::shape_err;
use crate::tensor::{Element, Tensor};
use rayon::prelude::*;

/// 2-D `C (m,n) = A (m,k) · op(B)` where `op(B) = B` (B is (k,n)) or `Bᵀ` (B is (n,k)).
struct MatMul {
    trans_b: bool,
}

impl<T: Element> Op<T> for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let (m, k) = (a.dim(0), a.dim(1));
        let n = g.dim(1);
        let ga = if ctx.needs_grad[0] {
            // dA = G · op(B)ᵀ
            let mut out = vec![T::zero(); m * k];
            let lb = if self.trans_b {
                MatLayout::N
            } else {
                MatLayout::T
            };
            gemm(
                m,
                k,
                n,
                g.data(),
                MatLayout::N,
                b.data(),
                lb,
                &mut out,
                false,
            );
            Some(Tensor::new(a.shape(), out)?)
        } else {
            None
        };
        let gb = if ctx.needs_grad[1] {
            let mut out = vec![T::zero(); k * n];
            if self.trans_b {
                // B is (n,k): dB = Gᵀ · A
                gemm(
                    n,
                    k,
                    m,
                    g.data(),
                    MatLayout::T,
                    a.data(),
                    MatLayout::N,
                    &mut out,
                    false,
                );
            } else {
                gemm(
                    k,
                    n,
                    m,
                    a.data(),
                    MatLayout::T,
                    g.data(),
                    MatLayout::N,
                    &mut out,
                    false,
                );
            }
            Some(Tensor::new(b.shape(), out)?)
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

fn mm<T: Element>(tape: &mut Tape<T>, a: Var, b: Var, trans_b: bool) -> Result<Var> {
    let (ta, tb) = (tape.value(a), tape.value(b));
    if ta.ndim() != 2 || tb.ndim() != 2 {
        return Err(shape_err!(
            "matmul",
            "expected 2-D operands, got {:?} and {:?}",
            ta.shape(),
            tb.shape()
        ));
    }
    let (m, k) = (ta.dim(0), ta.dim(1));
    let (kb, n) = if trans_b {
        (tb.dim(1), tb.dim(0))
    } else {
        (tb.dim(0), tb.dim(1))
    };
    if k != kb {
        return Err(shape_err!(
            "matmul",
            "inner dimensions differ: {:?} · {}{:?}",
            ta.shape(),
            if trans_b { "transpose of " } else { "" },
            tb.shape()
        ));
    }
    let lb = if trans_b { MatLayout::T } else { MatLayout::N };
    let out = matmul_into(m, n, k, ta.data(), MatLayout::N, tb.data(), lb);
    Ok(tape.record1(
        MatMul { trans_b },
        &[a, b],
        Tensor::from_parts(vec![m, n], out),
    ))
}

/// `A (m,k) · B (k,n)`.
pub fn matmul<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    mm(tape, a, b, false)
}
/// `A (m,k) · Bᵀ` with B stored (n,k) — the layout of PyTorch's `Linear.weight`.
pub fn matmul_t<T: Element>(tape: &mut Tape<T>, a: Var, b: Var) -> Result<Var> {
    mm(tape, a, b, true)
}

/// `y = x Wᵀ + b` over the last axis of `x` (any leading shape), PyTorch's `F.linear`:
/// `x (…, in)`, `W (out, in)`, `b (out)`.
pub fn linear<T: Element>(tape: &mut Tape<T>, x: Var, w: Var, b: Option<Var>) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let ws = tape.shape(w).to_vec();
    if xs.is_empty() || ws.len() != 2 || *xs.last().unwrap() != ws[1] {
        return Err(shape_err!(
            "linear",
            "input {:?} does not fit weight {:?} (out, in)",
            xs,
            ws
        ));
    }
    let rows: usize = xs[..xs.len() - 1].iter().product();
    let x2 = crate::ops::reshape(tape, x, &[rows, ws[1]])?;
    let mut y = matmul_t(tape, x2, w)?;
    if let Some(b) = b {
        if tape.shape(b) != [ws[0]] {
            return Err(shape_err!(
                "linear",
                "bias {:?} does not fit weight {:?}",
                tape.shape(b),
                ws
            ));
        }
        y = crate::ops::add(tape, y, b)?;
    }
    let mut out_shape = xs.clone();
    *out_shape.last_mut().unwrap() = ws[0];
    crate::ops::reshape(tape, y, &out_shape)
}

/// Batched `C[i] = op(A[i]) · op(B[i])` for 3-D operands `(batch, ·, ·)`.
/// Backward per batch: `dA = G·op(B)ᵀ` (or its transpose), `dB = op(A)ᵀ·G` (or its transpose).
struct Bmm {
    ta: bool,
    tb: bool,
}

fn dims(ta: bool, tb: bool, a: &[usize], b: &[usize]) -> (usize, usize, usize, usize) {
    let (m, k) = if ta { (a[2], a[1]) } else { (a[1], a[2]) };
    let n = if tb { b[1] } else { b[2] };
    (a[0], m, k, n)
}

fn lay(t: bool) -> MatLayout {
    if t {
        MatLayout::T
    } else {
        MatLayout::N
    }
}

/// Runs `batch` independent products in parallel over the batch.
#[allow(clippy::too_many_arguments)]
pub fn batched_gemm<T: Element>(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    la: MatLayout,
    b: &[T],
    lb: MatLayout,
    c: &mut [T],
) {
    let (sa, sb, sc) = (m * k, k * n, m * n);
    if sc == 0 || batch == 0 {
        return;
    }
    debug_assert!(a.len() >= batch * sa && b.len() >= batch * sb && c.len() >= batch * sc);
    c.par_chunks_mut(sc).enumerate().for_each(|(i, ci)| {
        gemm(
            m,
            n,
            k,
            &a[i * sa..(i + 1) * sa],
            la,
            &b[i * sb..(i + 1) * sb],
            lb,
            ci,
            false,
        );
    });
}

impl<T: Element> Op<T> for Bmm {
    fn name(&self) -> &'static str {
        "bmm"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let g = ctx.grad();
        let (bs, m, k, n) = dims(self.ta, self.tb, a.shape(), b.shape());
        let ga = if ctx.needs_grad[0] {
            let mut out = vec![T::zero(); a.numel()];
            if self.ta {
                // A stored (k,m): dAᵀ = op(B)·Gᵀ → dA (k,m) = op(B) (k,n) · Gᵀ (n,m)
                batched_gemm(
                    bs,
                    k,
                    m,
                    n,
                    b.data(),
                    lay(self.tb),
                    g.data(),
                    MatLayout::T,
                    &mut out,
                );
            } else {
                // dA (m,k) = G (m,n) · op(B)ᵀ (n,k)
                batched_gemm(
                    bs,
                    m,
                    k,
                    n,
                    g.data(),
                    MatLayout::N,
                    b.data(),
                    lay(!self.tb),
                    &mut out,
                );
            }
            Some(Tensor::new(a.shape(), out)?)
        } else {
            None
        };
        let gb = if ctx.needs_grad[1] {
            let mut out = vec![T::zero(); b.numel()];
            if self.tb {
                // B stored (n,k): dB (n,k) = Gᵀ (n,m) · op(A) (m,k)
                batched_gemm(
                    bs,
                    n,
                    k,
                    m,
                    g.data(),
                    MatLayout::T,
                    a.data(),
                    lay(self.ta),
                    &mut out,
                );
            } else {
                // dB (k,n) = op(A)ᵀ (k,m) · G (m,n)
                batched_gemm(
                    bs,
                    k,
                    n,
                    m,
                    a.data(),
                    lay(!self.ta),
                    g.data(),
                    MatLayout::N,
                    &mut out,
                );
            }
            Some(Tensor::new(b.shape(), out)?)
        } else {
            None
        };
        Ok(vec![ga, gb])
    }
}

/// Batched product of 3-D tensors; `ta`/`tb` transpose the last two axes of an operand.
pub fn bmm<T: Element>(tape: &mut Tape<T>, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
    let (sa, sb) = (tape.shape(a).to_vec(), tape.shape(b).to_vec());
    if sa.len() != 3 || sb.len() != 3 || sa[0] != sb[0] {
        return Err(shape_err!(
            "bmm",
            "expected (batch, ·, ·) operands with equal batch, got {:?} and {:?}",
            sa,
            sb
        ));
    }
    let (bs, m, k, n) = dims(ta, tb, &sa, &sb);
    let kb = if tb { sb[2] } else { sb[1] };
    if k != kb {
        return Err(shape_err!(
            "bmm",
            "inner dimensions differ: {:?} (ta={ta}) · {:?} (tb={tb})",
            sa,
            sb
        ));
    }
    let mut out = vec![T::zero(); bs * m * n];
    batched_gemm(
        bs,
        m,
        n,
        k,
        tape.value(a).data(),
        lay(ta),
        tape.value(b).data(),
        lay(tb),
        &mut out,
    );
    Ok(tape.record1(
        Bmm { ta, tb },
        &[a, b],
        Tensor::from_parts(vec![bs, m, n], out),
    ))
}
