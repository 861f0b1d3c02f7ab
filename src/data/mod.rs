//! Data sets and loaders.

pub mod planetoid;
pub mod text;
