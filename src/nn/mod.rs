//! Layers: fused ops with hand-derived backward passes (the fast path), the modules that own their
//! parameters, and, for checking, the same computations unrolled into primitive [`crate::ops`].

pub mod norm;
pub mod rnn;

pub use norm::{
    batch_norm, group_norm, instance_norm, layer_norm, norm_reference, norm_stats, BatchNorm,
    BatchNormMode, GroupNorm, InstanceNorm, LayerNorm, NormStats, RefKind,
};
