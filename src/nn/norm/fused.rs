//! One training-mode forward and backward of a fused normalization without a tape, for the
//! benchmarks (`nabla bench norm`): the same kernels and the same [`Op::backward`] the tape runs.

use super::batch_norm::{channel_normalize, channel_stats, BatchNormOp};
use super::check::check_eps;
use super::layout::{ncf, RowLayout};
use super::reference::RefKind;
use super::row_norm::{row_forward, RowNormOp};
use crate::autograd::{BackwardCtx, Op};
use crate::error::Result;
use crate::shape_err;
use crate::tensor::{Element, Tensor};

/// One training-mode forward and backward of a fused normalization without a tape — the same
/// kernels and the same [`Op::backward`] the tape runs — for benchmarks: returns
/// `(y, ∂L/∂x, ∂L/∂γ, ∂L/∂β)` for the upstream gradient `dy`. (BatchNorm's running statistics
/// are not involved.)
pub fn fused_forward_backward<T: Element>(
    kind: RefKind,
    x: &Tensor<T>,
    dy: &Tensor<T>,
    weight: &Tensor<T>,
    bias: &Tensor<T>,
    eps: f64,
) -> Result<[Tensor<T>; 4]> {
    const OP: &str = "fused_forward_backward";
    check_eps(eps, OP)?;
    x.check_same_shape(OP, dy)?;
    weight.check_same_shape(OP, bias)?;
    let xs = x.shape();
    if x.numel() == 0 {
        return Err(shape_err!(OP, "empty input {:?}", xs));
    }
    let (y, op): (Vec<T>, Box<dyn Op<T>>) = match kind {
        RefKind::Batch => {
            let (n, c, f) = ncf(xs, OP)?;
            if weight.shape() != [c] {
                return Err(shape_err!(
                    OP,
                    "weight {:?} for input {:?}",
                    weight.shape(),
                    xs
                ));
            }
            let st = channel_stats(x.data(), None, (n, c, f));
            let mean: Vec<T> = st.iter().map(|s| T::c(s.1)).collect();
            let rstd: Vec<T> = st.iter().map(|s| T::c(1.0 / (s.2 + eps).sqrt())).collect();
            let y = channel_normalize(
                x.data(),
                None,
                &mean,
                &rstd,
                weight.data(),
                bias.data(),
                c,
                f,
            );
            let op = BatchNormOp {
                ncf: (n, c, f),
                mask: None,
                mean,
                rstd,
                count: st.iter().map(|s| s.0).collect(),
                batch_stats: true,
                has_w: true,
                has_b: true,
            };
            (y, Box::new(op))
        }
        _ => {
            let lay = RowLayout::of(kind, xs, OP)?;
            if weight.numel() != lay.affine_len() {
                return Err(shape_err!(
                    OP,
                    "weight {:?} for input {:?}",
                    weight.shape(),
                    xs
                ));
            }
            let (y, mean, rstd) = row_forward(x.data(), None, weight.data(), bias.data(), lay, eps);
            let op = RowNormOp {
                name: "norm",
                lay,
                mask: None,
                mean,
                rstd,
                has_w: true,
                has_b: true,
            };
            (y, Box::new(op))
        }
    };
    let y = Tensor::from_parts(xs.to_vec(), y);
    let ctx = BackwardCtx {
        inputs: vec![x, weight, bias],
        outputs: vec![&y],
        grad_outputs: vec![Some(dy)],
        needs_grad: vec![true; 3],
    };
    let mut g = op.backward(&ctx)?.into_iter();
    let mut next = || {
        g.next()
            .flatten()
            .ok_or_else(|| crate::error::NablaError::Other(format!("{OP}: missing gradient")))
    };
    let (dx, dw, db) = (next()?, next()?, next()?);
    Ok([y, dx, dw, db])
}
