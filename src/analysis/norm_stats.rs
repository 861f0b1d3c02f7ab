//! The means and variances a normalization layer uses, taken by the layer's own statistics
//! kernels without a tape (question 3.1 and the running-statistics checks read them).

use crate::error::Result;
use crate::nn::norm::batch_norm::channel_stats;
use crate::nn::norm::layout::ncf;
use crate::nn::norm::mask::expand_mask;
use crate::nn::norm::reference::RefKind;
use crate::nn::norm::row_norm::row_stats;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

/// Means and population variances a normalization uses, from the same kernels as its forward.
#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    /// Shape of the statistics: `(C)` for BatchNorm, `(N)` for LayerNorm over `(C, F)`,
    /// `(N, C)` for InstanceNorm, `(N, G)` for GroupNorm, leading axes for LayerNorm.
    pub shape: Vec<usize>,
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

/// The statistics of `kind` on `x` (optionally masked), exactly as the fused forward takes them.
pub fn norm_stats<T: Element>(
    x: &Tensor<T>,
    kind: RefKind,
    mask: Option<&Tensor<T>>,
) -> Result<NormStats> {
    let xs = x.shape().to_vec();
    let mask = mask
        .map(|m| expand_mask(m, &xs, "norm_stats"))
        .transpose()?;
    let (shape, l) = match kind {
        RefKind::Batch => {
            let (n, c, f) = ncf(&xs, "norm_stats")?;
            let st = channel_stats(x.data(), mask.as_deref(), (n, c, f));
            return Ok(NormStats {
                shape: vec![c],
                mean: st.iter().map(|s| s.1).collect(),
                var: st.iter().map(|s| s.2).collect(),
            });
        }
        RefKind::Layer { normalized_ndim } => {
            if normalized_ndim == 0 || normalized_ndim > xs.len() {
                return Err(shape_err!(
                    "norm_stats",
                    "normalized_ndim {normalized_ndim} for {:?}",
                    xs
                ));
            }
            let k = xs.len() - normalized_ndim;
            (xs[..k].to_vec(), xs[k..].iter().product::<usize>())
        }
        RefKind::Group { groups } => {
            let (n, c, f) = ncf(&xs, "norm_stats")?;
            if groups == 0 || c % groups != 0 {
                return Err(invalid!(
                    "norm_stats: {groups} groups do not divide {c} channels"
                ));
            }
            (vec![n, groups], c / groups * f)
        }
    };
    if l == 0 {
        return Err(shape_err!("norm_stats", "empty input {:?}", xs));
    }
    let (mut mean, mut var) = (Vec::new(), Vec::new());
    for (r, xr) in x.data().chunks(l).enumerate() {
        let (m, v) = row_stats(xr, mask.as_deref().map(|m| &m[r * l..(r + 1) * l]));
        mean.push(m);
        var.push(v);
    }
    Ok(NormStats { shape, mean, var })
}
