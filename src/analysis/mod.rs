//! Analyses behind the assignment's exercises, as library functions (the CLI and the exercise
//! reproductions call them), and their plots.

pub mod influence;
pub mod plot;
pub mod rnn;
pub mod transformers_as_gnns;
