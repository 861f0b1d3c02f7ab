//! Layers: fused coarse ops (the fast paths) and the layers built from them.

pub mod graph_ops;
pub mod masked_attention;
pub mod message_passing;
pub mod sparse_linear;
