//! The optional affine map `y = γ x̂ + β`: its parameters (created through a [`VarBuilder`],
//! PyTorch's names and initial values), their tape variables, and the identity when absent.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::nn::module::VarBuilder;
use crate::tensor::{Element, Tensor};

/// `weight` (ones) and `bias` (zeros) of `shape` under the builder's path when `affine`,
/// as every PyTorch normalization layer initializes them.
pub(crate) fn affine_params<T: Element>(
    vb: &mut VarBuilder<'_, T>,
    shape: &[usize],
    affine: bool,
) -> Result<(Option<ParamId>, Option<ParamId>)> {
    if !affine {
        return Ok((None, None));
    }
    let w = vb.get("weight", shape, Init::Constant(1.0))?;
    let b = vb.get("bias", shape, Init::Zeros)?;
    Ok((Some(w), Some(b)))
}

/// The parameters on the tape.
pub(crate) fn affine_vars<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    w: Option<ParamId>,
    b: Option<ParamId>,
) -> (Option<Var>, Option<Var>) {
    (
        w.map(|id| tape.param(store, id)),
        b.map(|id| tape.param(store, id)),
    )
}

/// The values of `v`, or `len` copies of `fill` (1 for an absent `γ`, 0 for an absent `β`).
pub(crate) fn affine_or<T: Element>(v: Option<&Tensor<T>>, len: usize, fill: T) -> Vec<T> {
    v.map_or_else(|| vec![fill; len], |t| t.data().to_vec())
}
