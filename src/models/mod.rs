//! Complete models built from [`crate::nn`] layers.

pub mod resample;
pub mod vit;
pub mod vit_bench;
