//! The reference path: LayerNorm, GroupNorm, InstanceNorm and BatchNorm's training-mode batch
//! statistics unrolled into primitive [`crate::ops`], each with its own tested backward — what
//! the fused ops are checked against (to 1e-12 in f64, masks included).

use super::layout::ncf;
use super::mask::expand_mask;
use crate::autograd::{Tape, Var};
use crate::error::Result;
use crate::ops;
use crate::tensor::{Element, Tensor};

/// Normalizes `xv` of shape `(groups, L)` over its last axis, weighting by the 0/1 mask `mv`
/// (same shape) when given: `(x − μ)/√(σ² + ε)` (masked entries are zeroed).
fn reference_rows<T: Element>(
    tape: &mut Tape<T>,
    xv: Var,
    mv: Option<&Tensor<T>>,
    eps: f64,
) -> Result<Var> {
    let Some(m) = mv else {
        let mu = ops::mean(tape, xv, -1, true)?;
        let xc = ops::sub(tape, xv, mu)?;
        let sq = ops::square(tape, xc)?;
        let var = ops::mean(tape, sq, -1, true)?;
        let ve = ops::add_scalar(tape, var, eps)?;
        let sd = ops::sqrt(tape, ve)?;
        return ops::div(tape, xc, sd);
    };
    let g = m.dim(0);
    let cnt: Vec<T> = m
        .data()
        .chunks(m.dim(1))
        .map(|r| r.iter().copied().sum())
        .collect();
    let cnt = tape.constant(Tensor::new(&[g, 1], cnt)?);
    let mv = tape.constant(m.clone());
    let xm = ops::mul(tape, xv, mv)?;
    let s = ops::sum(tape, xm, -1, true)?;
    let mu = ops::div(tape, s, cnt)?;
    let xc = ops::sub(tape, xv, mu)?;
    let xc = ops::mul(tape, xc, mv)?;
    let sq = ops::square(tape, xc)?;
    let ss = ops::sum(tape, sq, -1, true)?;
    let var = ops::div(tape, ss, cnt)?;
    let ve = ops::add_scalar(tape, var, eps)?;
    let sd = ops::sqrt(tape, ve)?;
    ops::div(tape, xc, sd)
}

/// LayerNorm / GroupNorm / InstanceNorm unrolled into primitive ops (`ops::mean`, `sub`,
/// `square`, `sqrt`, `div`, …): the reference the fused ops are tested against.
/// `kind`: [`RefKind`]; weights as for the fused functions.
pub fn norm_reference<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    kind: RefKind,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let numel: usize = xs.iter().product();
    let mask = mask
        .map(|m| -> Result<Tensor<T>> { Tensor::new(&xs, expand_mask(m, &xs, "reference")?) })
        .transpose()?;
    // View as (groups, L) with the statistics over the last axis; `back` restores x's shape.
    let (perm, view): (Option<Vec<usize>>, Vec<usize>) = match kind {
        RefKind::Layer { normalized_ndim } => {
            let l: usize = xs[xs.len() - normalized_ndim..].iter().product();
            (None, vec![numel / l, l])
        }
        RefKind::Group { groups } => {
            let (n, _, _) = ncf(&xs, "reference")?;
            (None, vec![n * groups, numel / (n * groups)])
        }
        RefKind::Batch => {
            let (_, c, _) = ncf(&xs, "reference")?;
            (Some(vec![1, 0, 2]), vec![c, numel / c])
        }
    };
    let (n, c, f) = if xs.len() >= 2 {
        (xs[0], xs[1], xs[2..].iter().product::<usize>())
    } else {
        (1, 1, 1)
    };
    let x3 = if perm.is_some() {
        let r = ops::reshape(tape, x, &[n, c, f])?;
        ops::permute(tape, r, &[1, 0, 2])?
    } else {
        x
    };
    let g = view[0];
    let l = numel / g;
    let xv = ops::reshape(tape, x3, &[g, l])?;
    let mv = match &mask {
        None => None,
        Some(m) => {
            let m = if perm.is_some() {
                ops::shape::permute_tensor(&m.clone().reshape(&[n, c, f])?, &[1, 0, 2])?
            } else {
                m.clone()
            };
            Some(m.reshape(&[g, l])?)
        }
    };
    let xh = reference_rows(tape, xv, mv.as_ref(), eps)?;
    let xh = if perm.is_some() {
        let r = ops::reshape(tape, xh, &[c, n, f])?;
        let p = ops::permute(tape, r, &[1, 0, 2])?;
        ops::reshape(tape, p, &xs)?
    } else {
        ops::reshape(tape, xh, &xs)?
    };
    // Affine: per element of the normalized shape (LayerNorm) or per channel (C, 1, …, 1).
    let per_channel = !matches!(kind, RefKind::Layer { .. });
    let bshape: Vec<usize> = if per_channel {
        let mut s = vec![1; xs.len() - 1];
        s[0] = c;
        s
    } else {
        Vec::new()
    };
    let mut y = xh;
    if let Some(w) = weight {
        let w = if per_channel {
            ops::reshape(tape, w, &bshape)?
        } else {
            w
        };
        y = ops::mul(tape, y, w)?;
    }
    if let Some(b) = bias {
        let b = if per_channel {
            ops::reshape(tape, b, &bshape)?
        } else {
            b
        };
        y = ops::add(tape, y, b)?;
    }
    if let Some(m) = mask {
        let mv = tape.constant(m);
        y = ops::mul(tape, y, mv)?;
    }
    Ok(y)
}

/// Which statistics [`norm_reference`] takes (InstanceNorm = `Group { groups: C }`;
/// `Batch` = BatchNorm's training-mode batch statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    Layer { normalized_ndim: usize },
    Group { groups: usize },
    Batch,
}
