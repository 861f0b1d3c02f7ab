//! Analyses behind the assignment's questions, as library functions returning numbers.

pub mod influence;
pub mod transformers_as_gnns;
