//! Layers: fused ops with hand-derived backward passes, and the modules that own their parameters.

pub mod norm;

pub use norm::{
    batch_norm, group_norm, instance_norm, layer_norm, norm_reference, norm_stats, BatchNorm,
    BatchNormMode, GroupNorm, InstanceNorm, LayerNorm, NormStats, RefKind,
};
