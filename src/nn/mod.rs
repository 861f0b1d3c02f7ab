//! Layers as fused ops with hand-derived backward passes (the fast path); each file also keeps
//! the same computation unrolled into primitive [`crate::ops`] as a reference path for tests.

pub mod attention;
