//! The recurrent core of the character model, for every cell: the Elman RNN (its own readout
//! `V`, `b_y`), or an LSTM / GRU (PyTorch's names under `rnn.`) followed by a linear readout
//! `head`. The fused sequence ops are the fast path; the state carried between TBPTT windows
//! is `h` (and the LSTM's `c`), taken from the window's states at the next window's start.

use crate::autograd::{ParamStore, Tape, Var};
use crate::error::Result;
use crate::nn::module::VarBuilder;
use crate::nn::rnn::{
    Activation, CellKind, CellState, ElmanRnn, ElmanRnnConfig, ForwardState, Gru, Lstm,
};
use crate::nn::Linear;
use crate::ops;
use crate::tensor::Tensor;
use std::sync::Arc;

/// The cell and its readout.
#[derive(Clone, Debug)]
pub enum CharCell {
    Elman(ElmanRnn),
    Lstm { cell: Lstm, head: Linear },
    Gru { cell: Gru, head: Linear },
}

/// The state carried across windows: `h (B, H)`, and `c (B, H)` for the LSTM.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamState {
    pub h: Tensor<f32>,
    pub c: Option<Tensor<f32>>,
}

impl StreamState {
    pub fn zeros(kind: CellKind, batch: usize, hidden: usize) -> Self {
        StreamState {
            h: Tensor::zeros(&[batch, hidden]),
            c: (kind == CellKind::Lstm).then(|| Tensor::zeros(&[batch, hidden])),
        }
    }
}

/// Every state of one forward, time-major (no gradient).
#[derive(Clone)]
pub enum SeqStates {
    Elman(Arc<ForwardState<f32>>),
    Gated(Arc<CellState<f32>>),
}

impl SeqStates {
    /// The carried state after `s` steps.
    pub fn at(&self, s: usize) -> StreamState {
        match self {
            SeqStates::Elman(st) => StreamState {
                h: st.state(s),
                c: None,
            },
            SeqStates::Gated(st) => StreamState {
                h: st.state(s),
                c: (!st.cs.is_empty()).then(|| st.cell(s)),
            },
        }
    }
    /// Floats held by the window's states.
    pub fn floats(&self) -> usize {
        match self {
            SeqStates::Elman(st) => st.hs.len(),
            SeqStates::Gated(st) => st.hs.len() + st.cs.len(),
        }
    }
}

impl CharCell {
    /// The model from a `vocab`-character alphabet to itself (`activation` is the Elman
    /// RNN's; the gated cells have their own gates).
    pub fn new(
        mut vb: VarBuilder<'_, f32>,
        kind: CellKind,
        vocab: usize,
        hidden: usize,
        activation: Activation,
    ) -> Result<Self> {
        Ok(match kind {
            CellKind::Elman => CharCell::Elman(ElmanRnn::new(
                vb.pp("rnn"),
                ElmanRnnConfig {
                    input: vocab,
                    hidden,
                    output: vocab,
                    activation,
                    bias: true,
                },
            )?),
            CellKind::Lstm => CharCell::Lstm {
                cell: Lstm::new(vb.pp("rnn"), vocab, hidden, true)?,
                head: Linear::new(vb.pp("head"), hidden, vocab, true)?,
            },
            CellKind::Gru => CharCell::Gru {
                cell: Gru::new(vb.pp("rnn"), vocab, hidden, true)?,
                head: Linear::new(vb.pp("head"), hidden, vocab, true)?,
            },
        })
    }
    /// Scalar parameters of the model for a vocabulary of `v` and hidden size `h`.
    pub fn num_params(kind: CellKind, v: f64, h: f64) -> f64 {
        match kind {
            // W (H, V), U (H, H), b_h (H), V (V, H), b_y (V)
            CellKind::Elman => 2.0 * v * h + h * h + h + v,
            k => {
                let g = k.gates() as f64;
                g * h * (v + h) + 2.0 * g * h + v * h + v
            }
        }
    }
    /// Floats of the tape per step and stream besides the logits: pre-activations, states
    /// and their gradients.
    pub fn floats_per_step(kind: CellKind, h: f64) -> f64 {
        match kind {
            CellKind::Elman => 3.0 * h,
            k => 2.0 * k.gates() as f64 * h + 5.0 * h,
        }
    }
    /// Logits `(B, T, V)` over the one-hot `x (B, T, V)` from `state`, with every state.
    pub fn forward(
        &self,
        tape: &mut Tape<f32>,
        store: &ParamStore<f32>,
        x: Var,
        state: &StreamState,
    ) -> Result<(Var, SeqStates)> {
        let h0 = tape.constant(state.h.clone());
        match self {
            CharCell::Elman(rnn) => {
                let o = rnn.forward_seq(tape, store, x, Some(h0), None)?;
                Ok((o.y, SeqStates::Elman(o.states)))
            }
            CharCell::Lstm { cell, head } => {
                let c0 = state.c.clone().map(|c| tape.constant(c));
                let o = cell.forward_seq(tape, store, x, Some(h0), c0, None)?;
                let (w, b) = head.vars(tape, store);
                Ok((ops::linear(tape, o.y, w, b)?, SeqStates::Gated(o.states)))
            }
            CharCell::Gru { cell, head } => {
                let o = cell.forward_seq(tape, store, x, Some(h0), None)?;
                let (w, b) = head.vars(tape, store);
                Ok((ops::linear(tape, o.y, w, b)?, SeqStates::Gated(o.states)))
            }
        }
    }
}
