//! Argument checks shared by the normalization ops and modules.

use crate::error::Result;
use crate::{invalid, shape_err};

/// `eps` must be a finite non-negative number (it sits under a square root).
pub(crate) fn check_eps(eps: f64, op: &str) -> Result<()> {
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(invalid!(
            "{op}: eps must be non-negative and finite, got {eps}"
        ));
    }
    Ok(())
}

/// A channel layer built for `c` channels needs an `(N, c, …)` input.
pub(crate) fn check_channels(xs: &[usize], c: usize, op: &str) -> Result<()> {
    if xs.len() < 2 || xs[1] != c {
        return Err(shape_err!(op, "expects input (N, {c}, ...), got {:?}", xs));
    }
    Ok(())
}
