//! Models built from the layers in [`crate::nn`].

pub mod gnn;
pub mod gnn_bench;
pub mod gnn_train;
