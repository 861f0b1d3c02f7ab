//! Layers: fused ops with hand-derived backward passes (the fast path), and the modules that own
//! their parameters; each file also keeps the same computation unrolled into primitive
//! [`crate::ops`] as a reference path for tests.

pub mod attention;
pub mod graph_ops;
pub mod masked_attention;
pub mod message_passing;
pub mod norm;
pub mod sparse_linear;

pub use norm::{
    group_norm, instance_norm, layer_norm, layer_norm_reference, GroupNorm, InstanceNorm, LayerNorm,
};
