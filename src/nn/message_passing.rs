//! The assignment's message-passing layer, all nodes updated from the same snapshot:
//!
//! ```text
//! h_i^{t+1} = q( h_i^t , Agg({ f_ji(h_j^t) : v_j ∈ N(v_i) }) )
//! ```
//!
//! with the three parts separate and composable:
//! - [`Message`] `f`: identity, scaling `c·h_j`, a shared linear map `W h_j (+ b)`, or one linear
//!   map per edge type `W_{type(e)} h_j`. Linear messages are applied once per *node* (a table
//!   `(N, out)` or `(N·R, out)`), and each edge reads its row — the same numbers as applying `f`
//!   per edge, with `E/N` times fewer FLOPs.
//! - [`Aggregation`] `Agg`: sum, mean, max, fixed per-edge weights, or softmax attention
//!   `α_ji = softmax_{j∈N(i)} (W_q h_i)·(W_k h_j)/√d` per head (see `graph_ops` for the fused
//!   kernels and their backward passes).
//! - [`Update`] `q`: keep the aggregate, residual/additive `W_self h_i + σ(a_i)` (or `h_i + σ(a_i)`),
//!   concat + linear `σ(W [h_i ‖ a_i] + b)`, a GRU cell (input `a_i`, hidden `h_i`; PyTorch's
//!   `GRUCell` equations), an MLP on `[h_i ‖ a_i]`, or an output linear map (attention's `out_proj`).
//!
//! Every backward is either a fused op of `graph_ops` or a primitive op of `crate::ops`, all
//! hand-derived; the tests check every combination against finite differences.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::graph::{EdgeIndex, Graph};
use crate::init::{Init, Rng};
use crate::nn::graph_ops::{
    edge_dot, edge_softmax, max_aggregate, uniform_weights, weighted_aggregate,
};
use crate::ops;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

pub use crate::nn::activation::Activation;

/// A `Linear`-style parameter pair with PyTorch names `{prefix}.weight (out, in)`, `{prefix}.bias`.
#[derive(Clone, Copy, Debug)]
pub struct LinearParams {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl LinearParams {
    /// PyTorch's default `Linear` init: `U(±1/√in)` for weight and bias.
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Result<Self> {
        let b = 1.0 / (input.max(1) as f64).sqrt();
        let u = Init::Uniform { low: -b, high: b };
        let weight = store.add(format!("{prefix}.weight"), u.tensor(&[output, input], rng)?)?;
        let bias = if bias {
            Some(store.add(format!("{prefix}.bias"), u.tensor(&[output], rng)?)?)
        } else {
            None
        };
        Ok(LinearParams { weight, bias })
    }
    /// From given values (tests, exercises, fixtures).
    pub fn from_values<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        weight: Tensor<T>,
        bias: Option<Tensor<T>>,
    ) -> Result<Self> {
        let weight = store.add(format!("{prefix}.weight"), weight)?;
        let bias = match bias {
            Some(b) => Some(store.add(format!("{prefix}.bias"), b)?),
            None => None,
        };
        Ok(LinearParams { weight, bias })
    }
    pub fn out_features<T: Element>(&self, store: &ParamStore<T>) -> usize {
        store.get(self.weight).value.dim(0)
    }
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
    ) -> Result<Var> {
        let w = tape.param(store, self.weight);
        let b = self.bias.map(|b| tape.param(store, b));
        ops::linear(tape, x, w, b)
    }
}

/// The message function `f_ji`.
#[derive(Clone, Debug)]
pub enum Message {
    /// `f(h_j) = h_j`.
    Identity,
    /// `f(h_j) = c·h_j`.
    Scale(f64),
    /// `f(h_j) = W h_j (+ b)`, shared by all edges.
    Linear(LinearParams),
    /// `f_ji(h_j) = W_{type(j→i)} h_j`; `weight (R·out, in)` stacks the R maps.
    EdgeTypeLinear { weight: ParamId, num_types: usize },
}

impl Message {
    pub fn edge_type_linear<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        input: usize,
        output: usize,
        num_types: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let b = 1.0 / (input.max(1) as f64).sqrt();
        let w = Init::Uniform { low: -b, high: b }.tensor(&[num_types * output, input], rng)?;
        Ok(Message::EdgeTypeLinear {
            weight: store.add(format!("{prefix}.weight"), w)?,
            num_types,
        })
    }

    /// The node-level message table and which row each edge reads.
    pub fn table<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        h: Var,
    ) -> Result<(Var, EdgeIndex)> {
        let plain = graph.source_index().clone();
        match self {
            Message::Identity => Ok((h, plain)),
            Message::Scale(c) => Ok((ops::scale(tape, h, *c)?, plain)),
            Message::Linear(l) => Ok((l.forward(tape, store, h)?, plain)),
            Message::EdgeTypeLinear { weight, num_types } => {
                if graph.num_edge_types() > *num_types {
                    return Err(invalid!(
                        "graph has {} edge types, the message has maps for {num_types}",
                        graph.num_edge_types()
                    ));
                }
                let w = tape.param(store, *weight);
                let out = tape.shape(w)[0] / num_types;
                let t = ops::matmul_t(tape, h, w)?; // (N, R·out)
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
}

/// The aggregation `Agg`.
#[derive(Clone, Debug)]
pub enum Aggregation {
    Sum,
    Mean,
    Max,
    /// Fixed weight per edge, in the graph's CSR order (see [`Aggregation::weighted`]).
    Weighted(Vec<f64>),
    /// Multi-head scaled dot-product attention over `N(i)`: queries from `h_i`, keys from `h_j`.
    Attention {
        heads: usize,
        query: LinearParams,
        key: LinearParams,
    },
}

impl Aggregation {
    /// Fixed weights given in the order of the edge list the graph was built from.
    pub fn weighted(graph: &Graph, weights_in_build_order: &[f64]) -> Result<Self> {
        Ok(Aggregation::Weighted(
            graph.edge_values_in_csr_order(weights_in_build_order)?,
        ))
    }

    /// Attention weights `α (E, H)` (for analysis and tests).
    pub fn attention_weights<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        h: Var,
    ) -> Result<Option<Var>> {
        match self {
            Aggregation::Attention { heads, query, key } => {
                let q = query.forward(tape, store, h)?;
                let k = key.forward(tape, store, h)?;
                let w = tape.shape(q)[1];
                if !w.is_multiple_of(*heads) {
                    return Err(shape_err!(
                        "attention",
                        "width {w} not divisible by {heads} heads"
                    ));
                }
                let scale = 1.0 / ((w / heads) as f64).sqrt();
                let s = edge_dot(tape, graph, graph.source_index(), q, k, *heads, scale)?;
                Ok(Some(edge_softmax(tape, graph, s)?))
            }
            _ => Ok(None),
        }
    }

    pub fn aggregate<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        h: Var,
        table: Var,
        index: &EdgeIndex,
    ) -> Result<Var> {
        match self {
            Aggregation::Sum | Aggregation::Mean => {
                let a = tape.constant(uniform_weights(graph, matches!(self, Aggregation::Mean)));
                weighted_aggregate(tape, graph, index, table, a)
            }
            Aggregation::Max => max_aggregate(tape, graph, index, table),
            Aggregation::Weighted(w) => {
                if w.len() != graph.num_edges() {
                    return Err(invalid!(
                        "{} fixed edge weights for a graph with {} edges",
                        w.len(),
                        graph.num_edges()
                    ));
                }
                let a = tape.constant(Tensor::from_fn(&[w.len(), 1], |e| T::c(w[e])));
                weighted_aggregate(tape, graph, index, table, a)
            }
            Aggregation::Attention { .. } => {
                let a = self
                    .attention_weights(tape, store, graph, h)?
                    .ok_or_else(|| invalid!("attention weights"))?;
                weighted_aggregate(tape, graph, index, table, a)
            }
        }
    }
}

/// The update `q(h_i, a_i)`.
#[derive(Clone, Debug)]
pub enum Update {
    /// `h_i' = a_i`.
    Aggregate,
    /// `h_i' = W_self h_i + σ(a_i)` (`W_self (out|1, in)` broadcasts), or `h_i + σ(a_i)`
    /// without `W_self`.
    Residual {
        self_weight: Option<ParamId>,
        activation: Activation,
    },
    /// `h_i' = σ(W [h_i ‖ a_i] + b)`.
    ConcatLinear {
        linear: LinearParams,
        activation: Activation,
    },
    /// `GRUCell(input = a_i, hidden = h_i)`: `r = σ(W_ir a + b_ir + W_hr h + b_hr)`,
    /// `z = σ(W_iz a + b_iz + W_hz h + b_hz)`, `n = tanh(W_in a + b_in + r ⊙ (W_hn h + b_hn))`,
    /// `h' = (1 − z) ⊙ n + z ⊙ h`; `weight_ih (3d, a)`, `weight_hh (3d, d)` stacked r, z, n.
    Gru { ih: LinearParams, hh: LinearParams },
    /// `h_i' = W_2 relu(W_1 [h_i ‖ a_i] + b_1) + b_2`.
    Mlp {
        fc1: LinearParams,
        fc2: LinearParams,
    },
    /// `h_i' = W a_i + b` (attention's output projection).
    Linear(LinearParams),
}

impl Update {
    pub fn gru<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        agg_dim: usize,
        hidden: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        // PyTorch GRUCell init: U(±1/√hidden) everywhere.
        let b = 1.0 / (hidden as f64).sqrt();
        let u = Init::Uniform { low: -b, high: b };
        let mk = |store: &mut ParamStore<T>,
                  rng: &mut Rng,
                  name: &str,
                  inp: usize|
         -> Result<LinearParams> {
            LinearParams::from_values(
                store,
                &format!("{prefix}.{name}"),
                u.tensor(&[3 * hidden, inp], rng)?,
                Some(u.tensor(&[3 * hidden], rng)?),
            )
        };
        let ih = mk(store, rng, "ih", agg_dim)?;
        let hh = mk(store, rng, "hh", hidden)?;
        Ok(Update::Gru { ih, hh })
    }

    pub fn apply<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        h: Var,
        a: Var,
    ) -> Result<Var> {
        match self {
            Update::Aggregate => Ok(a),
            Update::Residual {
                self_weight,
                activation,
            } => {
                let act = activation.apply(tape, a)?;
                let s = match self_weight {
                    Some(w) => {
                        let w = tape.param(store, *w);
                        ops::matmul_t(tape, h, w)?
                    }
                    None => h,
                };
                ops::add(tape, s, act)
            }
            Update::ConcatLinear { linear, activation } => {
                let c = ops::concat(tape, &[h, a], 1)?;
                let y = linear.forward(tape, store, c)?;
                activation.apply(tape, y)
            }
            Update::Gru { ih, hh } => {
                let d = tape.shape(h)[1];
                let gi = ih.forward(tape, store, a)?; // (N, 3d)
                let gh = hh.forward(tape, store, h)?; // (N, 3d)
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
                let c = ops::concat(tape, &[h, a], 1)?;
                let y = fc1.forward(tape, store, c)?;
                let y = ops::relu(tape, y)?;
                fc2.forward(tape, store, y)
            }
            Update::Linear(l) => l.forward(tape, store, a),
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

    /// `h (N, in) → (N, out)` on `graph`.
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        graph: &Graph,
        h: Var,
    ) -> Result<Var> {
        let s = tape.shape(h);
        if s.len() != 2 || s[0] != graph.num_nodes() {
            return Err(shape_err!(
                "message_passing",
                "node states {:?} must be ({} nodes, features)",
                s,
                graph.num_nodes()
            ));
        }
        let (table, index) = self.message.table(tape, store, graph, h)?;
        let a = self
            .aggregation
            .aggregate(tape, store, graph, h, table, &index)?;
        self.update.apply(tape, store, h, a)
    }

    /// Multi-head self-attention as message passing, with `nn.MultiheadAttention`'s parameters
    /// (`{prefix}.q_proj`, `k_proj`, `v_proj`, `out_proj`): message = value projection `W_v h_j`,
    /// weights = edge softmax of `(W_q h_i)·(W_k h_j)/√d`, update = `out_proj`. On the complete
    /// graph with self loops this is dense attention; on a sparse graph, dense attention with
    /// the non-edges masked.
    pub fn attention<T: Element>(
        store: &mut ParamStore<T>,
        prefix: &str,
        dim: usize,
        heads: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(invalid!(
                "embedding width {dim} is not divisible by {heads} heads"
            ));
        }
        let mk = |store: &mut ParamStore<T>, rng: &mut Rng, n: &str| {
            LinearParams::new(store, &format!("{prefix}.{n}"), dim, dim, true, rng)
        };
        let query = mk(store, rng, "q_proj")?;
        let key = mk(store, rng, "k_proj")?;
        let value = mk(store, rng, "v_proj")?;
        let out = mk(store, rng, "out_proj")?;
        Ok(MessagePassing::new(
            Message::Linear(value),
            Aggregation::Attention { heads, query, key },
            Update::Linear(out),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, randn, GradCheckOptions};

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
        for m in 0..4 {
            for a in 0..5 {
                for u in 0..6 {
                    let mut store = ParamStore::<f64>::new();
                    let message = match m {
                        0 => Message::Identity,
                        1 => Message::Scale(-1.5),
                        2 => Message::Linear(
                            LinearParams::new(&mut store, "msg", d, d, true, &mut rng).unwrap(),
                        ),
                        _ => {
                            Message::edge_type_linear(&mut store, "msg", d, d, 2, &mut rng).unwrap()
                        }
                    };
                    let aggregation = match a {
                        0 => Aggregation::Sum,
                        1 => Aggregation::Mean,
                        2 => Aggregation::Max,
                        3 => Aggregation::Weighted(
                            (0..g.num_edges()).map(|e| 0.3 + 0.1 * e as f64).collect(),
                        ),
                        _ => Aggregation::Attention {
                            heads: 2,
                            query: LinearParams::new(&mut store, "q", d, d, true, &mut rng)
                                .unwrap(),
                            key: LinearParams::new(&mut store, "k", d, d, false, &mut rng).unwrap(),
                        },
                    };
                    let update = match u {
                        0 => Update::Aggregate,
                        1 => Update::Residual {
                            self_weight: Some(
                                store.add("self", randn(&[d, d], 0.5, &mut rng)).unwrap(),
                            ),
                            activation: Activation::Tanh,
                        },
                        2 => Update::ConcatLinear {
                            linear: LinearParams::new(&mut store, "upd", 2 * d, 3, true, &mut rng)
                                .unwrap(),
                            activation: Activation::Elu,
                        },
                        3 => Update::gru(&mut store, "gru", d, d, &mut rng).unwrap(),
                        4 => Update::Mlp {
                            fc1: LinearParams::new(&mut store, "fc1", 2 * d, 6, true, &mut rng)
                                .unwrap(),
                            fc2: LinearParams::new(&mut store, "fc2", 6, 3, true, &mut rng)
                                .unwrap(),
                        },
                        _ => Update::Linear(
                            LinearParams::new(&mut store, "out", d, 3, true, &mut rng).unwrap(),
                        ),
                    };
                    let layer = MessagePassing::new(message, aggregation, update);
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
        }
    }

    /// The per-node message table gives the same result as applying `f` on every edge
    /// (gather the sources, transform, scatter-add into destinations — primitive ops).
    #[test]
    fn node_level_messages_equal_per_edge_messages() {
        let g = graph();
        let mut rng = Rng::new(8);
        let mut store = ParamStore::<f64>::new();
        let message = Message::edge_type_linear(&mut store, "msg", 3, 2, 2, &mut rng).unwrap();
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
