//! The assignment's message-passing layer, all nodes updated from the same snapshot:
//!
//! ```text
//! h_i^{t+1} = q( h_i^t , Agg({ f_ji(h_j^t) : v_j ∈ N(v_i) }) )
//! ```
//!
//! with the three parts separate and composable, as PyTorch Geometric's `MessagePassing`
//! (`message`, `aggregate`, `update`; `aggr="add" | "mean" | "max"`, attention-weighted sums for
//! `GATConv` and `TransformerConv`). GCN, GAT and the graph Transformer of `models::gnn` are this
//! one layer with different parts ([`MessagePassing::gcn`], [`MessagePassing::gat`],
//! [`MessagePassing::transformer`]), so every aggregation here reaches `nabla gnn train`:
//! - [`Message`] `f`: identity, scaling `c·h_j`, a shared linear map `W h_j (+ b)`, or one linear
//!   map per edge type `W_{type(e)} h_j`. Linear messages are applied once per *node* (a table
//!   `(N, out)` or `(N·R, out)`), and each edge reads its row — the same numbers as applying `f`
//!   per edge, with `E/N` times fewer FLOPs.
//! - [`Aggregation`] `Agg`: sum, mean, max, fixed per-edge weights, GCN's symmetric
//!   normalization `1/√(d_i d_j)`, or a softmax-attention-weighted sum (`α_ji = softmax_{j∈N(i)}
//!   e_ji` per head, then `Σ_j α_ji f(h_j)`) with either the Transformer's score
//!   `e_ji = (W_q h_i)·(W_k h_j)/√d` or GAT's `e_ji = LeakyReLU(a_srcᵀ z_j + a_dstᵀ z_i)` on the
//!   message table `z`; attention dropout (PyG's `dropout=`) in training mode.
//! - [`Update`] `q`: keep the aggregate, add a bias (GCN, GAT), add a root/skip map `W_s h_i + b_s`
//!   (TransformerConv), residual/additive `W_self h_i + σ(a_i)` (or `h_i + σ(a_i)`), concat +
//!   linear `σ(W [h_i ‖ a_i] + b)`, a GRU cell (input `a_i`, hidden `h_i`; PyTorch's `GRUCell`
//!   equations), an MLP on `[h_i ‖ a_i]`, or an output linear map (attention's `out_proj`).
//!
//! The first layer of a node classifier reads sparse bag-of-words features ([`NodeInput::Sparse`]):
//! every linear map of the input is then [`sparse_linear`] (cost nnz·out, not N·F·out).
//!
//! Every backward is either a fused op of `graph_ops` (the kernels of `kernels::sparse`) or a
//! primitive op of `crate::ops`, all hand-derived; the tests check every combination against
//! finite differences.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::graph::{EdgeIndex, Graph};
use crate::init::Init;
use crate::nn::dropout::{Dropout, KeepProb};
use crate::nn::graph_ops::{
    edge_add, edge_dot, edge_softmax, head_scores, max_aggregate, uniform_weights,
    weighted_aggregate,
};
use crate::nn::linear::Linear;
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::nn::sparse_linear::{sparse_linear, SparseRows};
use crate::ops;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

pub use crate::nn::activation::Activation;

/// Node states entering a layer: a tape variable `(N, F)`, or constant sparse features
/// `(N, F)` (a node classifier's bag-of-words input).
#[derive(Clone, Copy, Debug)]
pub enum NodeInput<'a> {
    Dense(Var),
    Sparse(&'a SparseRows),
}

impl NodeInput<'_> {
    fn rows<T: Element>(&self, tape: &Tape<T>) -> (usize, usize, usize) {
        match self {
            NodeInput::Dense(v) => {
                let s = tape.shape(*v);
                (
                    s.len(),
                    s.first().copied().unwrap_or(0),
                    s.get(1).copied().unwrap_or(0),
                )
            }
            NodeInput::Sparse(x) => (2, x.rows(), x.cols()),
        }
    }
    /// The dense states, or an error naming the part that needs them.
    fn dense(&self, who: &str) -> Result<Var> {
        match self {
            NodeInput::Dense(v) => Ok(*v),
            NodeInput::Sparse(_) => Err(invalid!(
                "{who} needs dense node states; sparse input features take a linear message, attention, a bias or a skip map"
            )),
        }
    }
}

/// `x Wᵀ + b` of dense states (`ops::linear`) or of sparse features (`sparse_linear`).
pub fn linear_of<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    l: &Linear,
    x: NodeInput<'_>,
) -> Result<Var> {
    let (w, b) = l.vars(tape, store);
    match x {
        NodeInput::Dense(v) => ops::linear(tape, v, w, b),
        NodeInput::Sparse(s) => sparse_linear(tape, s, w, b),
    }
}

/// Glorot & Bengio's uniform bound `√(6/(fan_in + fan_out))` (PyG's `glorot`, which for an
/// attention vector `(H, F)` takes `fan_in + fan_out = H + F`).
pub fn glorot(fan_in: usize, fan_out: usize) -> Init {
    let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { low: -b, high: b }
}

/// Inverted dropout with PyTorch's drop probability `p` in training mode (`nn::dropout`: a unit
/// is dropped where `rng.bernoulli(p)`); the identity in evaluation or for `p = 0`.
pub fn train_dropout<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    p: f64,
    ctx: &mut Ctx<'_>,
) -> Result<Var> {
    Dropout::new(KeepProb::from_torch_drop_prob(p)?).apply(tape, x, ctx)
}

/// The message function `f_ji`.
#[derive(Clone, Debug)]
pub enum Message {
    /// `f(h_j) = h_j`.
    Identity,
    /// `f(h_j) = c·h_j`.
    Scale(f64),
    /// `f(h_j) = W h_j (+ b)`, shared by all edges.
    Linear(Linear),
    /// `f_ji(h_j) = W_{type(j→i)} h_j`; `weight (R·out, in)` stacks the R maps.
    EdgeTypeLinear { weight: ParamId, num_types: usize },
}

impl Message {
    /// Per-edge-type maps `{path}.weight (R·out, in)`, PyTorch's `Linear` init `U(±1/√in)`.
    pub fn edge_type_linear<T: Element>(
        mut vb: VarBuilder<'_, T>,
        input: usize,
        output: usize,
        num_types: usize,
    ) -> Result<Self> {
        let b = 1.0 / (input.max(1) as f64).sqrt();
        let weight = vb.get(
            "weight",
            &[num_types * output, input],
            Init::Uniform { low: -b, high: b },
        )?;
        Ok(Message::EdgeTypeLinear { weight, num_types })
    }

    /// The node-level message table and which row each edge reads.
    pub fn table<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        x: NodeInput<'_>,
    ) -> Result<(Var, EdgeIndex)> {
        let plain = graph.source_index().clone();
        match self {
            Message::Identity => Ok((x.dense("the identity message")?, plain)),
            Message::Scale(c) => Ok((ops::scale(tape, x.dense("a scaled message")?, *c)?, plain)),
            Message::Linear(l) => Ok((linear_of(tape, store, l, x)?, plain)),
            Message::EdgeTypeLinear { weight, num_types } => {
                if graph.num_edge_types() > *num_types {
                    return Err(invalid!(
                        "graph has {} edge types, the message has maps for {num_types}",
                        graph.num_edge_types()
                    ));
                }
                let w = tape.param(store, *weight);
                let out = tape.shape(w)[0] / num_types;
                let t = match x {
                    NodeInput::Dense(h) => ops::matmul_t(tape, h, w)?, // (N, R·out)
                    NodeInput::Sparse(s) => sparse_linear(tape, s, w, None)?,
                };
                let n = graph.num_nodes();
                let t = ops::reshape(tape, t, &[n * num_types, out])?; // (N·R, out)
                let rows = graph
                    .src()
                    .iter()
                    .zip(graph.edge_types())
                    .map(|(&s, &ty)| s * num_types + ty)
                    .collect();
                Ok((t, EdgeIndex::new(rows, n * num_types)?))
            }
        }
    }

    fn params(&self) -> Vec<ParamId> {
        match self {
            Message::Identity | Message::Scale(_) => Vec::new(),
            Message::Linear(l) => <Linear as Module<f64>>::params(l),
            Message::EdgeTypeLinear { weight, .. } => vec![*weight],
        }
    }
}

/// The aggregation `Agg` (PyG's `aggr`, and the attention-weighted sums of its attention convs).
#[derive(Clone, Debug)]
pub enum Aggregation {
    /// `Σ_j f(h_j)` (PyG's `aggr="add"`).
    Sum,
    /// `(1/|N(i)|) Σ_j f(h_j)`.
    Mean,
    /// Elementwise `max_j f(h_j)` (0 for a node without in-edges).
    Max,
    /// Fixed weight per edge, in the graph's CSR order (see [`Aggregation::weighted`]).
    Weighted(Vec<f64>),
    /// GCN's `Σ_j f(h_j)/√(d_i d_j)` (`Â = D^{-1/2}(A+I)D^{-1/2}` on a graph with its self loops;
    /// the weights are computed once per graph, [`Graph::gcn_norm`]).
    Gcn,
    /// Multi-head scaled dot-product attention over `N(i)` (the Transformer's): queries
    /// `W_q h_i`, keys `W_k h_j`, `α = softmax_{j∈N(i)} q·k/√d`; `dropout` (PyTorch's drop
    /// probability) on `α` in training.
    Attention {
        heads: usize,
        query: Linear,
        key: Linear,
        dropout: f64,
    },
    /// GAT's additive attention on the message table `z (N, H·F)`:
    /// `α = softmax_{j∈N(i)} LeakyReLU(a_srcᵀ z_j + a_dstᵀ z_i)` per head
    /// (`att_src`, `att_dst (H, F)`); `dropout` on `α` in training.
    GatAttention {
        heads: usize,
        att_src: ParamId,
        att_dst: ParamId,
        negative_slope: f64,
        dropout: f64,
    },
}

impl Aggregation {
    /// Fixed weights given in the order of the edge list the graph was built from.
    pub fn weighted(graph: &Graph, weights_in_build_order: &[f64]) -> Result<Self> {
        Ok(Aggregation::Weighted(
            graph.edge_values_in_csr_order(weights_in_build_order)?,
        ))
    }

    /// Attention weights `α (E, H)` before dropout (for analysis and tests); `None` for the
    /// aggregations without attention. The dot-product scores read the layer input `x`, GAT's
    /// the message table (`table`, required there).
    pub fn attention_weights<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        x: NodeInput<'_>,
        table: Option<Var>,
    ) -> Result<Option<Var>> {
        match self {
            Aggregation::Attention {
                heads, query, key, ..
            } => {
                let q = linear_of(tape, store, query, x)?; // (N, H·d)
                let k = linear_of(tape, store, key, x)?;
                let w = tape.shape(q)[1];
                if *heads == 0 || !w.is_multiple_of(*heads) {
                    return Err(shape_err!(
                        "attention",
                        "width {w} not divisible by {heads} heads"
                    ));
                }
                let scale = 1.0 / ((w / heads) as f64).sqrt();
                let s = edge_dot(tape, graph, graph.source_index(), q, k, *heads, scale)?;
                Ok(Some(edge_softmax(tape, graph, s)?)) // (E, H)
            }
            Aggregation::GatAttention {
                heads,
                att_src,
                att_dst,
                negative_slope,
                ..
            } => {
                let table =
                    table.ok_or_else(|| invalid!("GAT attention scores the message table"))?;
                let (n, w) = (tape.shape(table)[0], tape.shape(table)[1]);
                if *heads == 0 || !w.is_multiple_of(*heads) || n != graph.num_nodes() {
                    return Err(shape_err!(
                        "gat attention",
                        "message table ({n}, {w}) must be ({} nodes, heads {heads} × F)",
                        graph.num_nodes()
                    ));
                }
                let z3 = ops::reshape(tape, table, &[n, *heads, w / heads])?; // (N, H, F)
                let mut score = |a: ParamId| -> Result<Var> {
                    let av = tape.param(store, a); // (H, F)
                    head_scores(tape, z3, av) // (N, H): Σ_f z[n,h,f] a[h,f]
                };
                let (es, ed) = (score(*att_src)?, score(*att_dst)?);
                let e = edge_add(tape, graph, es, ed)?; // (E, H)
                let e = ops::leaky_relu(tape, e, *negative_slope)?;
                Ok(Some(edge_softmax(tape, graph, e)?))
            }
            _ => Ok(None),
        }
    }

    /// `a (N, W)` from the message table `(M, W)` whose row `index[e]` edge `e` reads.
    #[allow(clippy::too_many_arguments)]
    pub fn aggregate<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        x: NodeInput<'_>,
        table: Var,
        index: &EdgeIndex,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.aggregate_with(tape, store, graph, x, table, index, None, ctx)
    }

    /// [`Aggregation::aggregate`], with the attention weights already computed when `alpha`.
    #[allow(clippy::too_many_arguments)]
    fn aggregate_with<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        x: NodeInput<'_>,
        table: Var,
        index: &EdgeIndex,
        alpha: Option<Var>,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let fixed = |tape: &mut Tape<T>, w: &[f64]| -> Result<Var> {
            if w.len() != graph.num_edges() {
                return Err(invalid!(
                    "{} fixed edge weights for a graph with {} edges",
                    w.len(),
                    graph.num_edges()
                ));
            }
            let a = tape.constant(Tensor::from_fn(&[w.len(), 1], |e| T::c(w[e])));
            weighted_aggregate(tape, graph, index, table, a)
        };
        match self {
            Aggregation::Sum | Aggregation::Mean => {
                let a = tape.constant(uniform_weights(graph, matches!(self, Aggregation::Mean)));
                weighted_aggregate(tape, graph, index, table, a)
            }
            Aggregation::Max => max_aggregate(tape, graph, index, table),
            Aggregation::Weighted(w) => fixed(tape, w),
            Aggregation::Gcn => fixed(tape, graph.gcn_norm()),
            Aggregation::Attention { dropout, .. } | Aggregation::GatAttention { dropout, .. } => {
                let a = match alpha {
                    Some(a) => a,
                    None => self
                        .attention_weights(tape, store, graph, x, Some(table))?
                        .ok_or_else(|| invalid!("attention weights"))?,
                };
                let a = train_dropout(tape, a, *dropout, ctx)?;
                weighted_aggregate(tape, graph, index, table, a)
            }
        }
    }

    fn params(&self) -> Vec<ParamId> {
        match self {
            Aggregation::Attention { query, key, .. } => {
                let mut p = <Linear as Module<f64>>::params(query);
                p.extend(<Linear as Module<f64>>::params(key));
                p
            }
            Aggregation::GatAttention {
                att_src, att_dst, ..
            } => vec![*att_src, *att_dst],
            _ => Vec::new(),
        }
    }
}

/// The update `q(h_i, a_i)`.
#[derive(Clone, Debug)]
pub enum Update {
    /// `h_i' = a_i`.
    Aggregate,
    /// `h_i' = a_i + b` (GCNConv, GATConv).
    Bias(ParamId),
    /// `h_i' = a_i + W_s h_i + b_s`: TransformerConv's root weight (`lin_skip`).
    Skip(Linear),
    /// `h_i' = W_self h_i + σ(a_i)` (`W_self (out|1, in)` broadcasts), or `h_i + σ(a_i)`
    /// without `W_self`.
    Residual {
        self_weight: Option<ParamId>,
        activation: Activation,
    },
    /// `h_i' = σ(W [h_i ‖ a_i] + b)`.
    ConcatLinear {
        linear: Linear,
        activation: Activation,
    },
    /// `GRUCell(input = a_i, hidden = h_i)`: `r = σ(W_ir a + b_ir + W_hr h + b_hr)`,
    /// `z = σ(W_iz a + b_iz + W_hz h + b_hz)`, `n = tanh(W_in a + b_in + r ⊙ (W_hn h + b_hn))`,
    /// `h' = (1 − z) ⊙ n + z ⊙ h`; `ih.weight (3d, a)`, `hh.weight (3d, d)` stacked r, z, n.
    Gru { ih: Linear, hh: Linear },
    /// `h_i' = W_2 relu(W_1 [h_i ‖ a_i] + b_1) + b_2`.
    Mlp { fc1: Linear, fc2: Linear },
    /// `h_i' = W a_i + b` (attention's output projection).
    Linear(Linear),
}

impl Update {
    /// A GRU cell `{path}.ih`, `{path}.hh` with PyTorch's `GRUCell` init `U(±1/√hidden)`.
    pub fn gru<T: Element>(
        mut vb: VarBuilder<'_, T>,
        agg_dim: usize,
        hidden: usize,
    ) -> Result<Self> {
        let b = 1.0 / (hidden as f64).sqrt();
        let u = Init::Uniform { low: -b, high: b };
        let ih = Linear::with_init(vb.pp("ih"), agg_dim, 3 * hidden, Some(u), u)?;
        let hh = Linear::with_init(vb.pp("hh"), hidden, 3 * hidden, Some(u), u)?;
        Ok(Update::Gru { ih, hh })
    }

    pub fn apply<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: NodeInput<'_>,
        a: Var,
    ) -> Result<Var> {
        match self {
            Update::Aggregate => Ok(a),
            Update::Bias(b) => {
                let b = tape.param(store, *b);
                ops::add(tape, a, b)
            }
            Update::Skip(l) => {
                let s = linear_of(tape, store, l, x)?;
                ops::add(tape, a, s)
            }
            Update::Residual {
                self_weight,
                activation,
            } => {
                let act = activation.apply(tape, a)?;
                let s = match (self_weight, x) {
                    (Some(w), NodeInput::Dense(h)) => {
                        let w = tape.param(store, *w);
                        ops::matmul_t(tape, h, w)?
                    }
                    (Some(w), NodeInput::Sparse(s)) => {
                        let w = tape.param(store, *w);
                        sparse_linear(tape, s, w, None)?
                    }
                    (None, x) => x.dense("the residual update without a self weight")?,
                };
                ops::add(tape, s, act)
            }
            Update::ConcatLinear { linear, activation } => {
                let h = x.dense("the concat update")?;
                let c = ops::concat(tape, &[h, a], 1)?;
                let y = linear.forward(tape, store, c, &mut Ctx::eval())?;
                activation.apply(tape, y)
            }
            Update::Gru { ih, hh } => {
                let h = x.dense("the GRU update")?;
                let d = tape.shape(h)[1];
                let gi = ih.forward(tape, store, a, &mut Ctx::eval())?; // (N, 3d)
                let gh = hh.forward(tape, store, h, &mut Ctx::eval())?; // (N, 3d)
                let part = |tape: &mut Tape<T>, x: Var, k: usize| ops::narrow(tape, x, 1, k * d, d);
                let (ir, iz, inn) = (part(tape, gi, 0)?, part(tape, gi, 1)?, part(tape, gi, 2)?);
                let (hr, hz, hn) = (part(tape, gh, 0)?, part(tape, gh, 1)?, part(tape, gh, 2)?);
                let r = ops::add(tape, ir, hr)?;
                let r = ops::sigmoid(tape, r)?;
                let z = ops::add(tape, iz, hz)?;
                let z = ops::sigmoid(tape, z)?;
                let rn = ops::mul(tape, r, hn)?;
                let n = ops::add(tape, inn, rn)?;
                let n = ops::tanh(tape, n)?;
                // h' = n + z ⊙ (h − n)
                let hmn = ops::sub(tape, h, n)?;
                let zh = ops::mul(tape, z, hmn)?;
                ops::add(tape, n, zh)
            }
            Update::Mlp { fc1, fc2 } => {
                let h = x.dense("the MLP update")?;
                let c = ops::concat(tape, &[h, a], 1)?;
                let y = fc1.forward(tape, store, c, &mut Ctx::eval())?;
                let y = ops::relu(tape, y)?;
                fc2.forward(tape, store, y, &mut Ctx::eval())
            }
            Update::Linear(l) => l.forward(tape, store, a, &mut Ctx::eval()),
        }
    }

    fn params(&self) -> Vec<ParamId> {
        let lp = |l: &Linear| <Linear as Module<f64>>::params(l);
        match self {
            Update::Aggregate => Vec::new(),
            Update::Bias(b) => vec![*b],
            Update::Skip(l) | Update::Linear(l) => lp(l),
            Update::Residual { self_weight, .. } => self_weight.iter().copied().collect(),
            Update::ConcatLinear { linear, .. } => lp(linear),
            Update::Gru { ih, hh } => [lp(ih), lp(hh)].concat(),
            Update::Mlp { fc1, fc2 } => [lp(fc1), lp(fc2)].concat(),
        }
    }
}

/// One round of message passing: `h' = q(h, Agg(f(h)))`.
#[derive(Clone, Debug)]
pub struct MessagePassing {
    pub message: Message,
    pub aggregation: Aggregation,
    pub update: Update,
}

impl MessagePassing {
    pub fn new(message: Message, aggregation: Aggregation, update: Update) -> Self {
        MessagePassing {
            message,
            aggregation,
            update,
        }
    }

    /// `h (N, in) → (N, out)` on `graph` in evaluation mode (no attention dropout).
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        h: Var,
    ) -> Result<Var> {
        self.propagate(tape, store, graph, NodeInput::Dense(h), &mut Ctx::eval())
    }

    /// The layer on `graph`: `x (N, in)` (dense or sparse) `→ (N, out)`; message, aggregation
    /// and update in turn (PyG's `propagate`), in the mode of `ctx`.
    pub fn propagate<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        x: NodeInput<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let (rank, n, _) = x.rows(tape);
        if rank != 2 || n != graph.num_nodes() {
            return Err(shape_err!(
                "message_passing",
                "node states of rank {rank} with {n} rows must be ({} nodes, features)",
                graph.num_nodes()
            ));
        }
        // Dot-product attention scores the input, not the messages: queries and keys are
        // projected before the values, as TransformerConv does (so the input gradient sums the
        // projections' contributions in the same order as the direct implementation did).
        let alpha = match &self.aggregation {
            Aggregation::Attention { .. } => self
                .aggregation
                .attention_weights(tape, store, graph, x, None)?,
            _ => None,
        };
        let (table, index) = self.message.table(tape, store, graph, x)?;
        let a = self
            .aggregation
            .aggregate_with(tape, store, graph, x, table, &index, alpha, ctx)?;
        self.update.apply(tape, store, x, a)
    }

    /// Every parameter of the layer, message, aggregation, update.
    pub fn params(&self) -> Vec<ParamId> {
        let mut p = self.message.params();
        p.extend(self.aggregation.params());
        p.extend(self.update.params());
        p.sort(); // creation order (a store numbers its parameters as they are added)
        p
    }

    /// The layer bound to `graph`, as a [`Module`] on the node states.
    pub fn on<'g>(&'g self, graph: &'g Graph) -> OnGraph<'g> {
        OnGraph { layer: self, graph }
    }

    /// PyG's `GCNConv(in, out)` with `aggr`: `h' = Agg_{j∈N(i)} W h_j + b` — with
    /// [`Aggregation::Gcn`] Kipf & Welling's `Â H W + b`. Names `{path}.lin.weight (out, in)`
    /// (Glorot uniform, no bias in the linear map) and `{path}.bias (out)` (zeros).
    pub fn gcn<T: Element>(
        mut vb: VarBuilder<'_, T>,
        input: usize,
        output: usize,
        aggregation: Aggregation,
    ) -> Result<Self> {
        let lin = Linear::with_init(vb.pp("lin"), input, output, None, glorot(input, output))?;
        let bias = vb.get("bias", &[output], Init::Zeros)?;
        Ok(MessagePassing::new(
            Message::Linear(lin),
            aggregation,
            Update::Bias(bias),
        ))
    }

    /// PyG's `GATConv(in, out, heads, dropout)` (concatenated heads): `z = W h`,
    /// `α = softmax_{j∈N(i)} LeakyReLU_{0.2}(a_srcᵀ z_j + a_dstᵀ z_i)`, `h_i' = Σ_j α_ji z_j + b`.
    /// Names `{path}.lin.weight (H·F, in)`, `att_src`, `att_dst (H, F)` (Glorot), `bias (H·F)`
    /// (zeros).
    pub fn gat<T: Element>(
        mut vb: VarBuilder<'_, T>,
        input: usize,
        heads: usize,
        output: usize,
        dropout: f64,
    ) -> Result<Self> {
        let w = heads * output;
        let lin = Linear::with_init(vb.pp("lin"), input, w, None, glorot(input, w))?;
        let att_src = vb.get("att_src", &[heads, output], glorot(heads, output))?;
        let att_dst = vb.get("att_dst", &[heads, output], glorot(heads, output))?;
        let bias = vb.get("bias", &[w], Init::Zeros)?;
        Ok(MessagePassing::new(
            Message::Linear(lin),
            Aggregation::GatAttention {
                heads,
                att_src,
                att_dst,
                negative_slope: 0.2,
                dropout,
            },
            Update::Bias(bias),
        ))
    }

    /// PyG's `TransformerConv(in, out, heads, dropout)` (concatenated heads, root weight):
    /// `α = softmax_{j∈N(i)} (W_q h_i)·(W_k h_j)/√d`, `h_i' = W_s h_i + Σ_j α_ji W_v h_j`.
    /// Names `{path}.lin_query`, `lin_key`, `lin_value`, `lin_skip` (`Linear`s with biases,
    /// PyTorch's default init, created in that order).
    pub fn transformer<T: Element>(
        mut vb: VarBuilder<'_, T>,
        input: usize,
        heads: usize,
        output: usize,
        dropout: f64,
    ) -> Result<Self> {
        let w = heads * output;
        let query = Linear::new(vb.pp("lin_query"), input, w, true)?;
        let key = Linear::new(vb.pp("lin_key"), input, w, true)?;
        let value = Linear::new(vb.pp("lin_value"), input, w, true)?;
        let skip = Linear::new(vb.pp("lin_skip"), input, w, true)?;
        Ok(MessagePassing::new(
            Message::Linear(value),
            Aggregation::Attention {
                heads,
                query,
                key,
                dropout,
            },
            Update::Skip(skip),
        ))
    }

    /// Multi-head self-attention as message passing, with `nn.MultiheadAttention`'s parameters
    /// (`{path}.q_proj`, `k_proj`, `v_proj`, `out_proj`): message = value projection `W_v h_j`,
    /// weights = edge softmax of `(W_q h_i)·(W_k h_j)/√d`, update = `out_proj`. On the complete
    /// graph with self loops this is dense attention; on a sparse graph, dense attention with
    /// the non-edges masked (`nn::masked_attention` runs it densely).
    pub fn attention<T: Element>(
        mut vb: VarBuilder<'_, T>,
        dim: usize,
        heads: usize,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(invalid!(
                "embedding width {dim} is not divisible by {heads} heads"
            ));
        }
        let query = Linear::new(vb.pp("q_proj"), dim, dim, true)?;
        let key = Linear::new(vb.pp("k_proj"), dim, dim, true)?;
        let value = Linear::new(vb.pp("v_proj"), dim, dim, true)?;
        let out = Linear::new(vb.pp("out_proj"), dim, dim, true)?;
        Ok(MessagePassing::new(
            Message::Linear(value),
            Aggregation::Attention {
                heads,
                query,
                key,
                dropout: 0.0,
            },
            Update::Linear(out),
        ))
    }
}

/// A [`MessagePassing`] layer bound to one graph: a [`Module`] on dense node states `(N, F)`.
#[derive(Clone, Copy, Debug)]
pub struct OnGraph<'g> {
    pub layer: &'g MessagePassing,
    pub graph: &'g Graph,
}

impl<T: Element> Module<T> for OnGraph<'_> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.layer
            .propagate(tape, store, self.graph, NodeInput::Dense(x), ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        self.layer.params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, randn, GradCheckOptions};
    use crate::init::Rng;

    fn lin(
        store: &mut ParamStore<f64>,
        rng: &mut Rng,
        name: &str,
        i: usize,
        o: usize,
        bias: bool,
    ) -> Linear {
        Linear::new(VarBuilder::init(store, rng).pp(name), i, o, bias).unwrap()
    }

    fn graph() -> Graph {
        Graph::from_typed_edges(
            5,
            &[
                (0, 1, 0),
                (2, 1, 1),
                (3, 1, 0),
                (1, 0, 1),
                (1, 2, 0),
                (2, 2, 0),
                (4, 3, 1),
                (0, 3, 0),
                (1, 4, 1),
                (3, 4, 0),
            ],
            2,
        )
        .unwrap()
    }

    /// Every message × aggregation × update combination passes an f64 gradient check.
    #[test]
    fn every_combination_gradchecks() {
        let g = graph();
        let d = 4;
        let mut rng = Rng::new(7);
        let x = randn(&[5, d], 1.0, &mut rng);
        // The combinations of the first 5 aggregations and 6 updates first, in the order (and so
        // with the random draws) they had before GCN, GAT, bias and skip were added; then those.
        let old = (0..4).flat_map(|m| (0..5).flat_map(move |a| (0..6).map(move |u| (m, a, u))));
        let new = (0..4).flat_map(|m| (0..7).flat_map(move |a| (0..8).map(move |u| (m, a, u))));
        let combos: Vec<_> = old
            .chain(new.filter(|&(_, a, u)| a >= 5 || u >= 6))
            .collect();
        assert_eq!(combos.len(), 4 * 7 * 8);
        for (m, a, u) in combos {
            let mut store = ParamStore::<f64>::new();
            let message = match m {
                0 => Message::Identity,
                1 => Message::Scale(-1.5),
                2 => Message::Linear(lin(&mut store, &mut rng, "msg", d, d, true)),
                _ => Message::edge_type_linear(
                    VarBuilder::init(&mut store, &mut rng).pp("msg"),
                    d,
                    d,
                    2,
                )
                .unwrap(),
            };
            let aggregation = match a {
                0 => Aggregation::Sum,
                1 => Aggregation::Mean,
                2 => Aggregation::Max,
                3 => Aggregation::Weighted(
                    (0..g.num_edges()).map(|e| 0.3 + 0.1 * e as f64).collect(),
                ),
                4 => Aggregation::Attention {
                    heads: 2,
                    query: lin(&mut store, &mut rng, "q", d, d, true),
                    key: lin(&mut store, &mut rng, "k", d, d, false),
                    dropout: 0.0,
                },
                5 => Aggregation::Gcn,
                _ => Aggregation::GatAttention {
                    heads: 2,
                    att_src: store
                        .add("att_src", randn(&[2, d / 2], 0.7, &mut rng))
                        .unwrap(),
                    att_dst: store
                        .add("att_dst", randn(&[2, d / 2], 0.7, &mut rng))
                        .unwrap(),
                    negative_slope: 0.2,
                    dropout: 0.0,
                },
            };
            let update = match u {
                0 => Update::Aggregate,
                1 => Update::Residual {
                    self_weight: Some(store.add("self", randn(&[d, d], 0.5, &mut rng)).unwrap()),
                    activation: Activation::Tanh,
                },
                2 => Update::ConcatLinear {
                    linear: lin(&mut store, &mut rng, "upd", 2 * d, 3, true),
                    activation: Activation::Elu,
                },
                3 => Update::gru(VarBuilder::init(&mut store, &mut rng).pp("gru"), d, d).unwrap(),
                4 => Update::Mlp {
                    fc1: lin(&mut store, &mut rng, "fc1", 2 * d, 6, true),
                    fc2: lin(&mut store, &mut rng, "fc2", 6, 3, true),
                },
                5 => Update::Linear(lin(&mut store, &mut rng, "out", d, 3, true)),
                6 => Update::Bias(store.add("bias", randn(&[d], 0.5, &mut rng)).unwrap()),
                _ => Update::Skip(lin(&mut store, &mut rng, "skip", d, d, true)),
            };
            let layer = MessagePassing::new(message, aggregation, update);
            if m == 3 && a == 6 {
                // GAT scores node-level messages; a per-(node, type) table is refused.
                let mut tape = Tape::<f64>::new();
                let h = tape.input(x.clone());
                let e = layer.forward(&mut tape, &store, &g, h).unwrap_err();
                assert!(e.to_string().contains("5 nodes"), "{e}");
                continue;
            }
            let rep = check_gradients(
                &store,
                std::slice::from_ref(&x),
                &GradCheckOptions::default(),
                |t, p, v| layer.forward(t, p, &g, v[0]),
            )
            .unwrap();
            assert!(
                rep.max_rel_error < 1e-6,
                "message {m} aggregation {a} update {u}: {:?}",
                rep.per_tensor
            );
        }
    }

    /// The per-node message table gives the same result as applying `f` on every edge
    /// (gather the sources, transform, scatter-add into destinations — primitive ops).
    #[test]
    fn node_level_messages_equal_per_edge_messages() {
        let g = graph();
        let mut rng = Rng::new(8);
        let mut store = ParamStore::<f64>::new();
        let message =
            Message::edge_type_linear(VarBuilder::init(&mut store, &mut rng).pp("msg"), 3, 2, 2)
                .unwrap();
        let layer = MessagePassing::new(message.clone(), Aggregation::Sum, Update::Aggregate);
        let x = randn(&[5, 3], 1.0, &mut rng);
        let mut tape = Tape::<f64>::new();
        let h = tape.input(x.clone());
        let fast = layer.forward(&mut tape, &store, &g, h).unwrap();
        let Message::EdgeTypeLinear { weight, .. } = message else {
            unreachable!()
        };
        let w = store.get(weight).value.clone();
        let mut want = vec![0.0; 5 * 2];
        for e in 0..g.num_edges() {
            let (j, i, t) = (g.src()[e], g.dst()[e], g.edge_types()[e]);
            for o in 0..2 {
                let row = t * 2 + o;
                want[i * 2 + o] += (0..3)
                    .map(|c| w.data()[row * 3 + c] * x.data()[j * 3 + c])
                    .sum::<f64>();
            }
        }
        let got = tape.value(fast).data();
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{got:?} vs {want:?}"
        );
    }

    /// A layer bound to a graph is a `Module`: the same numbers as the layer, all its
    /// parameters (in creation order), and training mode draws the attention dropout from the
    /// context's stream (same seed, same output; evaluation needs no stream).
    #[test]
    fn a_layer_on_a_graph_is_a_module() {
        let g = graph();
        let mut rng = Rng::new(3);
        let mut store = ParamStore::<f64>::new();
        let layer = MessagePassing::transformer(
            VarBuilder::init(&mut store, &mut rng).pp("conv"),
            3,
            2,
            2,
            0.5,
        )
        .unwrap();
        let names: Vec<_> = layer
            .params()
            .iter()
            .map(|&id| store.get(id).name.clone())
            .collect();
        let all: Vec<_> = store.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, all);
        assert_eq!(names[0], "conv.lin_query.weight");
        let x = randn(&[5, 3], 1.0, &mut rng);
        let run = |ctx: &mut Ctx<'_>| {
            let mut tape = Tape::<f64>::no_grad();
            let h = tape.constant(x.clone());
            let y = layer.on(&g).forward(&mut tape, &store, h, ctx).unwrap();
            tape.value(y).clone()
        };
        let mut tape = Tape::<f64>::no_grad();
        let h = tape.constant(x.clone());
        let direct = layer.forward(&mut tape, &store, &g, h).unwrap();
        assert_eq!(&run(&mut Ctx::eval()), tape.value(direct));
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        let t1 = run(&mut Ctx::train(&mut r1));
        assert_eq!(t1, run(&mut Ctx::train(&mut r2)));
        assert!(t1.max_abs_diff(tape.value(direct)).unwrap() > 1e-6);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let g = graph();
        let mut tape = Tape::<f64>::new();
        let h = tape.input(Tensor::zeros(&[4, 3]));
        let layer = MessagePassing::new(Message::Identity, Aggregation::Sum, Update::Aggregate);
        let e = layer
            .forward(&mut tape, &ParamStore::new(), &g, h)
            .unwrap_err();
        assert!(e.to_string().contains("5 nodes"), "{e}");
        let h = tape.input(Tensor::zeros(&[5, 3]));
        let layer = MessagePassing::new(
            Message::Identity,
            Aggregation::Weighted(vec![1.0]),
            Update::Aggregate,
        );
        assert!(layer.forward(&mut tape, &ParamStore::new(), &g, h).is_err());
    }
}
