//! Shared pieces of the sequence ops: sizes, backward options, scratch-buffer sizing.

use crate::kernels::reduce::axpy;
use crate::tensor::Element;

/// Sizes of one sequence batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqDims {
    pub batch: usize,
    pub seq_len: usize,
    pub input: usize,
    pub hidden: usize,
    pub output: usize,
}

/// What [`backward_tm`] computes besides the weight gradients.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions {
    /// Chunked truncation length `k` (None = exact BPTT).
    pub truncate: Option<usize>,
    /// Compute `∇_x L`.
    pub need_x: bool,
    /// Keep `∇_{h_t}L` for every step (`(T, B, H)`), for analysis.
    pub keep_grad_h: bool,
}

/// Resizes a scratch buffer to `n` elements without reallocating once its capacity suffices.
/// The contents are unspecified: every caller overwrites all of them.
pub fn fit<T: Element>(v: &mut Vec<T>, n: usize) {
    if v.len() != n {
        v.clear();
        v.resize(n, T::zero());
    }
}

/// `a += b`.
pub fn add_into<T: Element>(a: &mut [T], b: &[T]) {
    axpy(T::one(), b, a);
}

/// Which recurrent cell: the Elman RNN of the assignment or one of PyTorch's gated cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    #[default]
    Elman,
    Lstm,
    Gru,
}

impl CellKind {
    pub const ALL: [CellKind; 3] = [CellKind::Elman, CellKind::Lstm, CellKind::Gru];
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Elman => "elman",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "elman" | "rnn" => Ok(CellKind::Elman),
            "lstm" => Ok(CellKind::Lstm),
            "gru" => Ok(CellKind::Gru),
            _ => Err(crate::invalid!(
                "unknown recurrent cell {s:?} (expected elman, lstm or gru)"
            )),
        }
    }
    /// Gate blocks stacked in `weight_ih`/`weight_hh` (PyTorch's layout): 4 for the LSTM
    /// (i, f, g, o), 3 for the GRU (r, z, n), 1 for the Elman RNN.
    pub fn gates(self) -> usize {
        match self {
            CellKind::Elman => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }
}

impl std::str::FromStr for CellKind {
    type Err = crate::error::NablaError;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        CellKind::parse(s)
    }
}

impl std::fmt::Display for CellKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Borrowed weights of a gated cell in PyTorch's layout: `weight_ih (G·H, I)`,
/// `weight_hh (G·H, H)`, `bias_ih (G·H)`, `bias_hh (G·H)`, G gate blocks stacked.
#[derive(Clone, Copy)]
pub struct CellRef<'a, T> {
    pub w_ih: &'a [T],
    pub w_hh: &'a [T],
    pub b_ih: Option<&'a [T]>,
    pub b_hh: Option<&'a [T]>,
}

/// Values a gated cell's forward keeps for BPTT (time-major).
#[derive(Clone, Debug, Default)]
pub struct CellState<T> {
    /// `output` = `hidden` (the op's output is the hidden sequence).
    pub dims: SeqDims,
    /// `(T+1, B, H)`: `h_0 … h_T`.
    pub hs: Vec<T>,
    /// LSTM: `(T+1, B, H)` cell states `c_0 … c_T`; GRU: empty.
    pub cs: Vec<T>,
    /// `(T, B, G·H)`: the activated gates of every step (LSTM i, f, g, o; GRU r, z, n).
    pub gates: Vec<T>,
    /// `(T, B, H)`: LSTM `tanh c_t`; GRU `W_hn h_{t−1} + b_hn` (what r multiplies).
    pub aux: Vec<T>,
}

impl<T: Element> CellState<T> {
    fn block(v: &[T], d: SeqDims, s: usize) -> crate::tensor::Tensor<T> {
        let bh = d.batch * d.hidden;
        crate::tensor::Tensor::from_parts(vec![d.batch, d.hidden], v[s * bh..(s + 1) * bh].to_vec())
    }
    /// `h_s`, `(B, H)`.
    pub fn state(&self, s: usize) -> crate::tensor::Tensor<T> {
        Self::block(&self.hs, self.dims, s)
    }
    /// `c_s`, `(B, H)` (LSTM only).
    pub fn cell(&self, s: usize) -> crate::tensor::Tensor<T> {
        Self::block(&self.cs, self.dims, s)
    }
}

/// Gradients of a gated cell over one sequence.
#[derive(Clone, Debug, Default)]
pub struct CellGrads<T> {
    pub w_ih: Vec<T>,
    pub w_hh: Vec<T>,
    pub b_ih: Option<Vec<T>>,
    pub b_hh: Option<Vec<T>>,
    /// `(B, H)`.
    pub h0: Vec<T>,
    /// LSTM: `(B, H)`; GRU: empty.
    pub c0: Vec<T>,
    /// `(T, B, I)` when asked for.
    pub x_tm: Option<Vec<T>>,
    /// `∇_{h_t}L` for t = 1..T, `(T, B, H)`, when asked for.
    pub grad_h: Option<Vec<T>>,
}

/// Scratch of a gated cell's backward, reused across calls.
#[derive(Clone, Debug, Default)]
pub struct CellScratch<T> {
    /// `(T, B, H)`: `∇_{h_t}L`, completed step by step going backwards.
    pub dh: Vec<T>,
    /// `(B, H)`: the LSTM's carried `∇_{c_t}L`.
    pub dc: Vec<T>,
    /// `(T, B, G·H)`: gradient of the input-side pre-activations (`x W_ihᵀ + b_ih`).
    pub da: Vec<T>,
    /// `(T, B, G·H)`: GRU only, gradient of `h W_hhᵀ + b_hh` (differs from `da` in the n block).
    pub da_h: Vec<T>,
}

/// The weights of a gated cell on a tape.
#[derive(Clone, Copy, Debug)]
pub struct CellVars {
    pub w_ih: crate::autograd::Var,
    pub w_hh: crate::autograd::Var,
    pub b_ih: Option<crate::autograd::Var>,
    pub b_hh: Option<crate::autograd::Var>,
}

/// Checks a gated cell's shapes (`G` gate blocks) and returns the sizes (`output` = hidden).
#[allow(clippy::too_many_arguments)]
pub fn check_cell_shapes(
    op: &'static str,
    g: usize,
    x: &[usize],
    h0: Option<&[usize]>,
    c0: Option<&[usize]>,
    w_ih: &[usize],
    w_hh: &[usize],
    b_ih: Option<&[usize]>,
    b_hh: Option<&[usize]>,
) -> crate::error::Result<SeqDims> {
    use crate::shape_err;
    if w_ih.len() != 2 || !w_ih[0].is_multiple_of(g) || w_ih[0] == 0 {
        return Err(shape_err!(
            op,
            "weight_ih must be ({g}·hidden, input), got {w_ih:?}"
        ));
    }
    let (hidden, input) = (w_ih[0] / g, w_ih[1]);
    if w_hh != [g * hidden, hidden] {
        return Err(shape_err!(
            op,
            "weight_hh must be ({g}·hidden, hidden) = [{}, {hidden}] to match weight_ih {w_ih:?}, got {w_hh:?}",
            g * hidden
        ));
    }
    for (name, b) in [("bias_ih", b_ih), ("bias_hh", b_hh)] {
        if let Some(s) = b {
            if s != [g * hidden] {
                return Err(shape_err!(op, "{name} must be [{}], got {s:?}", g * hidden));
            }
        }
    }
    if x.len() != 3 || x[2] != input {
        return Err(shape_err!(
            op,
            "x must be (batch, time, input) with input = {input} (from weight_ih {w_ih:?}), got {x:?}"
        ));
    }
    let (batch, seq_len) = (x[0], x[1]);
    for (name, s) in [("h0", h0), ("c0", c0)] {
        if let Some(s) = s {
            if s != [batch, hidden] {
                return Err(shape_err!(
                    op,
                    "{name} must be (batch, hidden) = [{batch}, {hidden}], got {s:?}"
                ));
            }
        }
    }
    Ok(SeqDims {
        batch,
        seq_len,
        input,
        hidden,
        output: hidden,
    })
}
