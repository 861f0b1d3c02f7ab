//! Layouts: the `(N, C, F)` sizes of an `(N, C, …)` input, and the row layout by which
//! LayerNorm, GroupNorm and InstanceNorm all become "normalize contiguous rows".

use super::reference::RefKind;
use crate::error::Result;
use crate::kernels::norm::Segments;
use crate::{invalid, shape_err};

/// `(N, C, F)` sizes of an `(N, C, …)` input (trailing axes flattened; `F = 1` for `(N, C)`).
pub(crate) fn ncf(xs: &[usize], op: &str) -> Result<(usize, usize, usize)> {
    if xs.len() < 2 {
        return Err(shape_err!(
            op,
            "needs an input of shape (N, C, ...), got {:?}",
            xs
        ));
    }
    Ok((xs[0], xs[1], xs[2..].iter().product()))
}

/// `x` viewed as `rows` contiguous rows of `seg · seg_len` entries; entry `(s, f)` of row `r`
/// uses affine index `(r mod period) · seg + s`.
/// LayerNorm: `seg = D, seg_len = 1, period = 1`; GroupNorm: `seg = C/G, seg_len = F,
/// period = G`; InstanceNorm is GroupNorm with `G = C`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowLayout {
    pub rows: usize,
    pub seg: usize,
    pub seg_len: usize,
    pub period: usize,
}

impl RowLayout {
    /// LayerNorm over the trailing `normalized_ndim` axes of `xs`: one row per leading index.
    pub fn layer(xs: &[usize], normalized_ndim: usize, op: &str) -> Result<Self> {
        if normalized_ndim == 0 || normalized_ndim > xs.len() {
            return Err(shape_err!(
                op,
                "normalized_ndim {normalized_ndim} must be in 1..={} for input {:?}",
                xs.len(),
                xs
            ));
        }
        let d: usize = xs[xs.len() - normalized_ndim..].iter().product();
        Ok(RowLayout {
            rows: xs.iter().product::<usize>().checked_div(d).unwrap_or(0),
            seg: d,
            seg_len: 1,
            period: 1,
        })
    }
    /// GroupNorm of `(N, C, …)` with `groups` groups of `C / groups` channels: one row per
    /// (sample, group).
    pub fn group(xs: &[usize], groups: usize, op: &str) -> Result<Self> {
        let (n, c, f) = ncf(xs, op)?;
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(invalid!(
                "{op}: the number of groups {groups} must divide the number of channels {c}"
            ));
        }
        Ok(RowLayout {
            rows: n * groups,
            seg: c / groups,
            seg_len: f,
            period: groups,
        })
    }
    /// InstanceNorm of `(N, C, …)`: one row per (sample, channel), GroupNorm with `G = C`.
    pub fn instance(xs: &[usize], op: &str) -> Result<Self> {
        let (n, c, f) = ncf(xs, op)?;
        Ok(RowLayout {
            rows: n * c,
            seg: 1,
            seg_len: f,
            period: c,
        })
    }
    /// The layout of a row normalization `kind` (BatchNorm has none: its groups are strided).
    pub fn of(kind: RefKind, xs: &[usize], op: &str) -> Result<Self> {
        match kind {
            RefKind::Layer { normalized_ndim } => Self::layer(xs, normalized_ndim, op),
            RefKind::Group { groups } => Self::group(xs, groups, op),
            RefKind::Batch => Err(invalid!("{op}: BatchNorm has no row layout")),
        }
    }
    /// Entries per row.
    pub fn len(&self) -> usize {
        self.seg * self.seg_len
    }
    /// Entries of `γ` (and of `β`).
    pub fn affine_len(&self) -> usize {
        self.period * self.seg
    }
    /// The segment layout the row kernels take.
    pub fn segments(&self) -> Segments {
        Segments {
            seg: self.seg,
            seg_len: self.seg_len,
            period: self.period,
        }
    }
    /// First affine index of row `r` (skips the integer division for LayerNorm's period 1).
    #[inline(always)]
    pub fn affine_base(&self, r: usize) -> usize {
        if self.period == 1 {
            0
        } else {
            (r % self.period) * self.seg
        }
    }
}
