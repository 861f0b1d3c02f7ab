//! Models built from the layers in [`crate::nn`].

pub mod gnn;
