//! Layers: fused ops with hand-derived backward passes, and the modules that own their parameters.

pub mod norm;

pub use norm::{
    group_norm, instance_norm, layer_norm, layer_norm_reference, GroupNorm, InstanceNorm, LayerNorm,
};
