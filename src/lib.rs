//! # nabla — a deep-learning workbench with hand-derived, checked gradients
//!
//! Layout (one module per concept):
//! - [`tensor`]: dense row-major tensors generic over `f32`/`f64`;
//! - [`kernels`]: matrix products (through `gemm`) and elementwise loops;
//! - [`autograd`]: the tape, the [`autograd::Op`] trait, parameters;
//! - [`ops`]: primitive differentiable ops, forward and backward side by side;
//! - [`init`]: seeded RNG and initializers; [`gradcheck`]: finite-difference checks;
//! - [`io`]: safetensors and atomic writes; [`bench`]: the benchmark convention;
//! - [`memory`]: the memory a run will need, checked before it allocates;
//! - [`train`]: the one training loop (progress, metrics, plots, checkpoints, resume);
//! - [`nn`]: fused layers (Elman RNN, norms, dropout, attention, message passing, patch embedding, MLP);
//! - [`analysis`]: experiments on trained or constructed models (gradient flow in RNNs);
//! - [`plot`]: the one chart helper (labelled axes, integer ticks, legends beside the data);
//! - [`data`]: data sets (character text, synthetic corpora); [`models`]: whole models;
//! - [`dist`]: data-parallel training across processes (MPI, feature `mpi`);
//! - [`cli`]: the `nabla` command line (the binary is a thin shell over it).

pub mod analysis;
pub mod autograd;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod exercises;
pub mod gradcheck;
pub mod graph;
pub mod init;
pub mod io;
pub mod kernels;
pub mod memory;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod tensor;
pub mod train;

pub use autograd::{ParamId, ParamStore, Tape, Var};
pub use error::{NablaError, Result};
pub use init::{Init, Rng};
pub use tensor::{Element, Tensor, TensorView};
