//! Masks of valid positions: a 0/1 tensor broadcastable to the input, expanded to its size.

use crate::error::Result;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

/// Expands a 0/1 `mask` broadcastable to `shape` (same number of axes, each 1 or equal) into a
/// dense vector of `x`'s size.
pub fn expand_mask<T: Element>(mask: &Tensor<T>, shape: &[usize], op: &str) -> Result<Vec<T>> {
    let ms = mask.shape();
    if ms.len() != shape.len() || ms.iter().zip(shape).any(|(&m, &s)| m != s && m != 1) {
        return Err(shape_err!(
            op,
            "mask of shape {:?} does not match input {:?} (it needs the same number of axes, each of size 1 or equal)",
            ms,
            shape
        ));
    }
    if let Some(v) = mask
        .data()
        .iter()
        .find(|v| **v != T::zero() && **v != T::one())
    {
        return Err(invalid!(
            "{op}: mask values must be 0 (padding) or 1 (valid), found {v}"
        ));
    }
    if ms == shape {
        return Ok(mask.data().to_vec());
    }
    let n: usize = shape.iter().product();
    let nd = shape.len();
    // Strides of the mask inside the full shape, 0 along broadcast axes.
    let mut mstride = vec![0usize; nd];
    let mut s = 1;
    for a in (0..nd).rev() {
        mstride[a] = if ms[a] == 1 { 0 } else { s };
        s *= ms[a];
    }
    let md = mask.data();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; nd];
    for _ in 0..n {
        let off: usize = idx.iter().zip(&mstride).map(|(i, s)| i * s).sum();
        out.push(md[off]);
        for a in (0..nd).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok(out)
}
