//! Data sets and loaders.

pub mod text;
