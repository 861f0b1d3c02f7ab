//! Whole models built from [`crate::nn`] layers, with their training and inference entry points.

pub mod char_cell;
pub mod char_rnn;
pub mod cnn_task;
pub mod gnn;
pub mod gnn_bench;
pub mod gnn_train;
pub mod resample;
pub mod resnet;
pub mod vit;
pub mod vit_bench;
pub mod vit_task;
