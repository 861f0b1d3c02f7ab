//! The stateless normalization modules — `LayerNorm`, `GroupNorm`, `InstanceNorm` — built
//! through a [`VarBuilder`] with PyTorch's parameter names (`weight` = ones, `bias` = zeros
//! under the builder's path), running the fused ops of [`super::row_norm`]. Train and eval
//! mode are the same computation for them (instance statistics always, as PyTorch's
//! `InstanceNorm` with `track_running_stats=False`).

use super::affine::{affine_params, affine_vars};
use super::check::{check_channels, check_eps};
use super::row_norm::{group_norm, instance_norm, layer_norm};
use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

fn affine_ids(w: Option<ParamId>, b: Option<ParamId>) -> Vec<ParamId> {
    w.into_iter().chain(b).collect()
}

/// `torch.nn.LayerNorm(normalized_shape, eps, elementwise_affine)`; parameters `weight` (ones)
/// and `bias` (zeros) of shape `normalized_shape`, under the builder's path.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub normalized_shape: Vec<usize>,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl LayerNorm {
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        normalized_shape: &[usize],
        eps: f64,
        elementwise_affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "LayerNorm")?;
        if normalized_shape.is_empty() || normalized_shape.contains(&0) {
            return Err(invalid!(
                "LayerNorm: normalized_shape must be non-empty with positive sizes, got {normalized_shape:?}"
            ));
        }
        let (weight, bias) = affine_params(&mut vb, normalized_shape, elementwise_affine)?;
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            eps,
            weight,
            bias,
        })
    }
    /// With a padding mask (`1` = real entry) over the rows, see [`layer_norm`].
    pub fn forward_masked<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        let xs = tape.shape(x);
        let k = self.normalized_shape.len();
        if xs.len() < k || xs[xs.len() - k..] != self.normalized_shape[..] {
            return Err(shape_err!(
                "LayerNorm",
                "input {:?} does not end with normalized_shape {:?}",
                xs,
                self.normalized_shape
            ));
        }
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        layer_norm(tape, x, k, w, b, self.eps, mask)
    }
}

/// `torch.nn.GroupNorm(num_groups, num_channels, eps, affine)`; per-channel `weight` (ones)
/// and `bias` (zeros) of shape `(num_channels)`.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    pub num_groups: usize,
    pub num_channels: usize,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl GroupNorm {
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        num_groups: usize,
        num_channels: usize,
        eps: f64,
        affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "GroupNorm")?;
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(invalid!(
                "GroupNorm: the number of groups {num_groups} must divide the number of channels {num_channels}"
            ));
        }
        let (weight, bias) = affine_params(&mut vb, &[num_channels], affine)?;
        Ok(GroupNorm {
            num_groups,
            num_channels,
            eps,
            weight,
            bias,
        })
    }
    /// With a mask of valid positions (`1` = real entry), see [`group_norm`].
    pub fn forward_masked<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_channels, "GroupNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        group_norm(tape, x, self.num_groups, w, b, self.eps, mask)
    }
}

/// `torch.nn.InstanceNorm1d/2d(num_features, eps, affine, track_running_stats=False)`;
/// per-channel `weight` (ones) and `bias` (zeros) of shape `(num_features)` when `affine`.
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    pub num_features: usize,
    pub eps: f64,
    pub weight: Option<ParamId>,
    pub bias: Option<ParamId>,
}

impl InstanceNorm {
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        num_features: usize,
        eps: f64,
        affine: bool,
    ) -> Result<Self> {
        check_eps(eps, "InstanceNorm")?;
        if num_features == 0 {
            return Err(invalid!("InstanceNorm: num_features must be positive"));
        }
        let (weight, bias) = affine_params(&mut vb, &[num_features], affine)?;
        Ok(InstanceNorm {
            num_features,
            eps,
            weight,
            bias,
        })
    }
    /// With a mask of valid positions (`1` = real entry), see [`instance_norm`].
    pub fn forward_masked<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mask: Option<&Tensor<T>>,
    ) -> Result<Var> {
        check_channels(tape.shape(x), self.num_features, "InstanceNorm")?;
        let (w, b) = affine_vars(tape, store, self.weight, self.bias);
        instance_norm(tape, x, w, b, self.eps, mask)
    }
}

/// The row norms as modules: the forward is the unmasked `forward_masked`, the parameters the
/// optional affine pair.
macro_rules! row_norm_module {
    ($($name:ident),*) => {$(
        impl<T: Element> Module<T> for $name {
            fn forward(
                &self,
                tape: &mut Tape<T>,
                store: &ParamStore<T>,
                x: Var,
                _ctx: &mut Ctx<'_>,
            ) -> Result<Var> {
                self.forward_masked(tape, store, x, None)
            }
            fn params(&self) -> Vec<ParamId> {
                affine_ids(self.weight, self.bias)
            }
        }
    )*};
}

row_norm_module!(LayerNorm, GroupNorm, InstanceNorm);
