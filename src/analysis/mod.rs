//! Analyses behind the assignment's identities, as library functions returning quantified
//! reports (serializable for the `exercises` command).

pub mod dropout_identity;
pub mod min_norm;
pub mod norm_exercise;
pub mod padding;
