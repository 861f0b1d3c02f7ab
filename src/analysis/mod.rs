//! Analyses of trained models.

pub mod vit_attention;
