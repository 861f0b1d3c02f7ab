//! Analyses behind the assignment's exercises, as library functions (the CLI and the exercise
//! reproductions call them); their plots are drawn by [`crate::plot`].

pub mod data_size;
pub mod dropout_identity;
pub mod elman;
pub mod gated;
pub mod influence;
pub mod min_norm;
pub mod norm_exercise;
pub mod norm_stats;
pub mod padding;
pub mod rnn;
pub mod transformers_as_gnns;
pub mod vit_attention;
pub mod vit_embeddings;
