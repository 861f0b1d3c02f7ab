//! Layers: each file holds a fused forward/backward op (the fast path), the module that owns its
//! parameters, and, for checking, the same computation unrolled into primitive [`crate::ops`].

pub mod activation;
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod graph_ops;
pub mod linear;
pub mod masked_attention;
pub mod message_passing;
pub mod mlp;
pub mod module;
pub mod norm;
pub mod patch_embed;
pub mod rnn;
pub mod sparse_linear;

pub use activation::Activation;
pub use conv::{conv2d, global_avg_pool, max_pool2d, BatchNorm2d, Conv2d, ConvSpec, MaxPool2d};
pub use dropout::{dropout, Dropout, KeepProb};
pub use linear::Linear;
pub use module::{params_of, Ctx, Module, Sequential, VarBuilder};

pub use norm::{
    batch_norm, group_norm, instance_norm, layer_norm, norm_reference, norm_stats, BatchNorm,
    BatchNormMode, GroupNorm, InstanceNorm, LayerNorm, NormStats, RefKind,
};
