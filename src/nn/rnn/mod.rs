//! Recurrent layers, one concept per file:
//!
//! - [`elman`]: the Elman RNN `h_t = σ(W x_t + U h_{t−1})`, `y_t = V h_t` — its fused
//!   whole-sequence op with hand-derived BPTT and the [`ElmanRnn`] module;
//! - [`lstm`], [`gru`]: the gated cells with PyTorch's equations, gate order and names, on the
//!   same machinery (one fused op per sequence, hoisted input products, BPTT by hand);
//! - [`reference`]: the same models unrolled into primitive ops, the independent check;
//! - [`tbptt`]: the TBPTT(k1, k2) schedule of a stream;
//! - [`seq`]: sizes and options shared by the sequence ops.
//!
//! The raw loops (layout changes, loss, gate updates) are [`crate::kernels::rnn`]; the tape-free
//! API of the analyses and benchmarks is [`crate::analysis::elman`] and
//! [`crate::analysis::gated`].

pub mod elman;
pub mod gru;
pub mod lstm;
pub mod reference;
pub mod seq;
pub mod tbptt;

pub use crate::analysis::elman::{ElmanWeights, MseBptt, RnnWorkspace};
pub use crate::kernels::rnn::{mse_grad, mse_grad_bm_into, swap01, swap01_into};
pub use crate::nn::activation::Activation;
pub use elman::{
    backward_tm, backward_tm_into, check_shapes, elman_seq, forward_tm, forward_tm_into, ElmanRnn,
    ElmanRnnConfig, ForwardState, RnnOutput, RnnVars, SeqGrads, WeightsRef,
};
pub use gru::{gru_seq, Gru, GruOutput, GruVars};
pub use lstm::{lstm_seq, CellParams, Lstm, LstmOutput, LstmVars};
pub use reference::{elman_unrolled, gru_unrolled, lstm_unrolled};
pub use seq::{
    BackwardOptions, CellGrads, CellKind, CellRef, CellScratch, CellState, CellVars, SeqDims,
};
pub use tbptt::{TbpttSchedule, TbpttWindow};
