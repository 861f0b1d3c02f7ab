//! Primitive differentiable ops. Each op is a struct implementing [`Op`](crate::autograd::Op)
//! with its backward next to a free function that runs the forward and records it; the doc
//! comment of each states the derivative used.
//!
//! Fused, whole-layer ops live with their layers in [`crate::nn`] and use the same mechanism.

pub mod activation;
pub mod basic;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod reduce;
pub mod shape;
pub mod softmax;

pub use activation::{elu, exp, gelu, leaky_relu, log, relu, sigmoid, sqrt, tanh};
pub use basic::{add, add_scalar, div, mul, neg, scale, square, sub};
pub use index::{gather_rows, scatter_add_rows};
pub use loss::{cross_entropy, mse_mean, mse_sum, CrossEntropyOptions};
pub use matmul::{bmm, linear, matmul, matmul_t};
pub use reduce::{mean, mean_all, sum, sum_all};
pub use shape::{concat, narrow, permute, reshape, transpose};
pub use softmax::{log_softmax, softmax};
