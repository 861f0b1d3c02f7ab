//! Layers: each file holds a fused forward/backward op (the fast path) and, for checking, the same
//! computation unrolled into primitive [`crate::ops`].

pub mod rnn;
