//! Data loaders.

pub mod planetoid;
