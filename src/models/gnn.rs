//! Node classifiers on a graph, full batch: GCN (Kipf & Welling 2017), GAT (Veličković et al.
//! 2018) and a graph Transformer (multi-head dot-product attention restricted to `N(i)`, with a
//! root/skip weight, as PyG's `TransformerConv`), plus a dense-attention model (every node attends
//! to every node — the complete graph, O(N²)) used as the cost baseline of `nabla bench gnn`.
//!
//! Each graph model is two [`MessagePassing`] layers (`convs.0`, `convs.1`, PyG's names inside:
//! `convs.0.lin.weight`, `convs.0.att_src`, `convs.1.lin_query.bias`, …) on the graph with self
//! loops; the first reads the sparse bag-of-words features (`sparse_linear`), and the layers'
//! aggregations are the fused kernels of [`crate::nn::graph_ops`].
//! - GCN: `H¹ = ReLU(Agg(X W₁) + b₁)`, `Z = Agg(H¹ W₂) + b₂`, with `Agg` = `Â = D^{-1/2}(A+I)D^{-1/2}`
//!   by default ([`Aggr::Gcn`]), or a plain sum, mean or max over `N(i) ∪ {i}` (`--aggr`).
//! - GAT layer: `z = W h`; `e_ji = LeakyReLU_{0.2}(a_srcᵀ z_j + a_dstᵀ z_i)` per head;
//!   `α = softmax_{j∈N(i)} e`; `h_i' = Σ_j α_ji z_j + b` (heads concatenated, then ELU).
//! - Transformer layer: `α = softmax_{j∈N(i)} (W_q h_i)·(W_k h_j)/√d`, `h_i' = W_s h_i + Σ_j α_ji W_v h_j`.
//!
//! Dropout is `nn::dropout` (inverted; a unit is dropped where `rng.bernoulli(p)`, `p` PyTorch's
//! drop probability) on the features (only their nonzeros: [`SparseRows::dropout`]), the hidden
//! states and the attention weights, in training mode ([`Ctx::train`]).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::graph::Graph;
use crate::init::Rng;
use crate::invalid;
use crate::nn::activation::Activation;
use crate::nn::dropout::KeepProb;
use crate::nn::linear::Linear;
use crate::nn::masked_attention::{dense_attention, AttentionParams, DensePath};
use crate::nn::message_passing::{
    linear_of, train_dropout, Aggregation, MessagePassing, NodeInput,
};
use crate::nn::module::{Ctx, VarBuilder};
use crate::nn::sparse_linear::SparseRows;
use crate::tensor::Element;

/// Which model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GnnKind {
    Gcn,
    Gat,
    Transformer,
    Dense,
}

impl GnnKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gcn" => Ok(GnnKind::Gcn),
            "gat" => Ok(GnnKind::Gat),
            "transformer" => Ok(GnnKind::Transformer),
            "dense" => Ok(GnnKind::Dense),
            other => Err(invalid!(
                "unknown model {other:?}: expected gcn, gat, transformer or dense"
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GnnKind::Gcn => "gcn",
            GnnKind::Gat => "gat",
            GnnKind::Transformer => "transformer",
            GnnKind::Dense => "dense",
        }
    }
    /// The aggregations this model can be built with (the first is its paper's).
    pub fn aggregations(self) -> &'static [Aggr] {
        match self {
            GnnKind::Gcn => &[Aggr::Gcn, Aggr::Add, Aggr::Mean, Aggr::Max],
            GnnKind::Gat | GnnKind::Transformer | GnnKind::Dense => &[Aggr::Attention],
        }
    }
}

/// The aggregation of a model's message-passing layers (`gnn train --aggr`, PyG's `aggr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggr {
    /// GCN's symmetric normalization `Σ_j h_j/√(d_i d_j)` ([`Aggregation::Gcn`]).
    Gcn,
    /// `Σ_j h_j` (PyG's `aggr="add"`).
    Add,
    /// `mean_j h_j`.
    Mean,
    /// elementwise `max_j h_j`.
    Max,
    /// The model's softmax attention weights (GAT's additive, the Transformer's dot product).
    Attention,
}

impl Aggr {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gcn" => Ok(Aggr::Gcn),
            "add" | "sum" => Ok(Aggr::Add),
            "mean" => Ok(Aggr::Mean),
            "max" => Ok(Aggr::Max),
            "attention" => Ok(Aggr::Attention),
            other => Err(invalid!(
                "unknown aggregation {other:?}: expected gcn, add, mean, max or attention"
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Aggr::Gcn => "gcn",
            Aggr::Add => "add",
            Aggr::Mean => "mean",
            Aggr::Max => "max",
            Aggr::Attention => "attention",
        }
    }
}

/// Hyper-parameters (defaults: the papers' Cora settings).
#[derive(Clone, Debug)]
pub struct GnnConfig {
    pub kind: GnnKind,
    /// Hidden units per head.
    pub hidden: usize,
    pub heads: usize,
    /// Dropout on the input features and hidden states.
    pub dropout: f64,
    /// Dropout on the attention weights (GAT, Transformer).
    pub attn_dropout: f64,
    /// The aggregation of the message-passing layers (must be one of `kind.aggregations()`).
    pub aggr: Aggr,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// Stop when validation has not improved for this many epochs.
    pub patience: usize,
}

impl GnnConfig {
    pub fn paper(kind: GnnKind) -> Self {
        let aggr = kind.aggregations()[0];
        match kind {
            GnnKind::Gcn => GnnConfig {
                kind,
                hidden: 16,
                heads: 1,
                dropout: 0.5,
                attn_dropout: 0.0,
                aggr,
                lr: 0.01,
                weight_decay: 5e-4,
                epochs: 200,
                patience: 50,
            },
            GnnKind::Gat | GnnKind::Transformer | GnnKind::Dense => GnnConfig {
                kind,
                hidden: 8,
                heads: 8,
                dropout: 0.6,
                attn_dropout: 0.6,
                aggr,
                lr: 0.005,
                weight_decay: 5e-4,
                epochs: 1000,
                patience: 100,
            },
        }
    }
}

/// The graph-side inputs of a forward pass, prepared once.
#[derive(Clone, Debug)]
pub struct GraphInput {
    /// (N, F) row-normalized sparse features.
    pub features: SparseRows,
    /// Symmetric graph with self loops.
    pub graph: Graph,
}

impl GraphInput {
    pub fn new(features: &SparseRows, graph: &Graph) -> Result<Self> {
        if features.rows() != graph.num_nodes() {
            return Err(invalid!(
                "{} feature rows for a graph of {} nodes",
                features.rows(),
                graph.num_nodes()
            ));
        }
        let graph = graph.symmetric().with_self_loops();
        // The GCN weights are computed once here, not in the first timed epoch.
        graph.gcn_norm();
        Ok(GraphInput {
            features: features.row_normalized(),
            graph,
        })
    }
}

// One value per model: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Layers {
    /// Two message-passing layers with `act` between them.
    Convs {
        convs: [MessagePassing; 2],
        act: Activation,
    },
    /// `input` (Linear) → ELU → attention over all nodes (residual) → ELU → `head` (Linear).
    Dense {
        input: Linear,
        attn: AttentionParams,
        head: Linear,
    },
}

/// A two-layer node classifier.
#[derive(Clone, Debug)]
pub struct GnnModel {
    pub config: GnnConfig,
    layers: Layers,
}

impl GnnModel {
    /// Builds the model under `vb` (initializes, loads or binds its parameters, named
    /// `convs.{0,1}.*` — `input`, `attn.*`, `head` for the dense model).
    pub fn build<T: Element>(
        mut vb: VarBuilder<'_, T>,
        config: GnnConfig,
        in_dim: usize,
        classes: usize,
    ) -> Result<Self> {
        if config.hidden == 0 || config.heads == 0 || classes == 0 || in_dim == 0 {
            return Err(invalid!(
                "model needs hidden, heads, classes and input width > 0 (got {}, {}, {classes}, {in_dim})",
                config.hidden,
                config.heads
            ));
        }
        if !(0.0..1.0).contains(&config.dropout) || !(0.0..1.0).contains(&config.attn_dropout) {
            return Err(invalid!(
                "dropout must be in [0, 1), got {} / {}",
                config.dropout,
                config.attn_dropout
            ));
        }
        let allowed = config.kind.aggregations();
        if !allowed.contains(&config.aggr) {
            let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
            return Err(invalid!(
                "--aggr {}: the {} model aggregates by {} (gcn takes gcn, add, mean or max)",
                config.aggr.name(),
                config.kind.name(),
                names.join(", ")
            ));
        }
        let (h, k) = (config.hidden, config.heads);
        let p = config.attn_dropout;
        let layers = match config.kind {
            GnnKind::Gcn => {
                let aggregation = || match config.aggr {
                    Aggr::Add => Aggregation::Sum,
                    Aggr::Mean => Aggregation::Mean,
                    Aggr::Max => Aggregation::Max,
                    _ => Aggregation::Gcn,
                };
                let mut c = vb.pp("convs");
                Layers::Convs {
                    convs: [
                        MessagePassing::gcn(c.pp(0), in_dim, h, aggregation())?,
                        MessagePassing::gcn(c.pp(1), h, classes, aggregation())?,
                    ],
                    act: Activation::Relu,
                }
            }
            GnnKind::Gat => {
                let mut c = vb.pp("convs");
                Layers::Convs {
                    convs: [
                        MessagePassing::gat(c.pp(0), in_dim, k, h, p)?,
                        MessagePassing::gat(c.pp(1), k * h, 1, classes, p)?,
                    ],
                    act: Activation::Elu,
                }
            }
            GnnKind::Transformer => {
                let mut c = vb.pp("convs");
                Layers::Convs {
                    convs: [
                        MessagePassing::transformer(c.pp(0), in_dim, k, h, p)?,
                        MessagePassing::transformer(c.pp(1), k * h, 1, classes, p)?,
                    ],
                    act: Activation::Elu,
                }
            }
            GnnKind::Dense => {
                let d = h * k;
                let input = Linear::new(vb.pp("input"), in_dim, d, true)?;
                let attn = AttentionParams::of(&MessagePassing::attention(vb.pp("attn"), d, k)?)?;
                let head = Linear::new(vb.pp("head"), d, classes, true)?;
                Layers::Dense { input, attn, head }
            }
        };
        Ok(GnnModel { config, layers })
    }

    /// A freshly initialized model (parameters drawn from `rng` into `store`).
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        config: GnnConfig,
        in_dim: usize,
        classes: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        Self::build(VarBuilder::init(store, rng), config, in_dim, classes)
    }

    /// Every parameter, in creation order.
    pub fn params(&self) -> Vec<ParamId> {
        let lp = |l: &Linear| std::iter::once(l.weight).chain(l.bias);
        match &self.layers {
            Layers::Convs { convs, .. } => convs.iter().flat_map(|c| c.params()).collect(),
            Layers::Dense { input, attn, head } => lp(input)
                .chain(lp(&attn.query))
                .chain(lp(&attn.key))
                .chain(lp(&attn.value))
                .chain(lp(&attn.out))
                .chain(lp(head))
                .collect(),
        }
    }

    /// The message-passing layers (empty for the dense model).
    pub fn convs(&self) -> &[MessagePassing] {
        match &self.layers {
            Layers::Convs { convs, .. } => convs,
            Layers::Dense { .. } => &[],
        }
    }

    /// Logits `(N, classes)`. In training mode (`ctx.train`) dropout is applied, its masks drawn
    /// from `ctx`'s stream in a fixed order (features, then per layer attention, hidden states).
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        input: &GraphInput,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let c = &self.config;
        let g = &input.graph;
        let x = if ctx.train && c.dropout > 0.0 {
            let keep = KeepProb::from_torch_drop_prob(c.dropout)?;
            input.features.dropout(keep, ctx.rng("feature dropout")?)
        } else {
            input.features.clone()
        };
        match &self.layers {
            Layers::Convs { convs, act } => {
                let h = convs[0].propagate(tape, store, g, NodeInput::Sparse(&x), ctx)?;
                let h = act.apply(tape, h)?;
                let h = train_dropout(tape, h, c.dropout, ctx)?;
                convs[1].propagate(tape, store, g, NodeInput::Dense(h), ctx)
            }
            Layers::Dense {
                input: inp,
                attn,
                head,
            } => {
                let h = linear_of(tape, store, inp, NodeInput::Sparse(&x))?;
                let h = Activation::Elu.apply(tape, h)?;
                let h = train_dropout(tape, h, c.dropout, ctx)?;
                let a = dense_attention(tape, store, attn, h, None, DensePath::Fused)?;
                let h = crate::ops::add(tape, h, a)?;
                let h = Activation::Elu.apply(tape, h)?;
                let h = train_dropout(tape, h, c.dropout, ctx)?;
                linear_of(tape, store, head, NodeInput::Dense(h))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckOptions};
    use crate::tensor::Tensor;

    fn tiny() -> (GraphInput, Vec<usize>) {
        let rows: Vec<Vec<usize>> = (0..6).map(|i| vec![i % 5, (i * 3 + 1) % 5]).collect();
        let x = SparseRows::binary(5, &rows).unwrap();
        let g = Graph::from_edges(6, &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (0, 3)])
            .unwrap();
        (GraphInput::new(&x, &g).unwrap(), vec![0, 1, 2, 0, 1, 2])
    }

    /// Every model's full forward (dropout off) gradchecks in f64.
    #[test]
    fn models_gradcheck() {
        let (input, _) = tiny();
        for kind in [
            GnnKind::Gcn,
            GnnKind::Gat,
            GnnKind::Transformer,
            GnnKind::Dense,
        ] {
            let mut cfg = GnnConfig::paper(kind);
            cfg.hidden = 3;
            cfg.heads = 2;
            let mut store = ParamStore::<f64>::new();
            let model = GnnModel::new(&mut store, cfg, 5, 3, &mut Rng::new(1)).unwrap();
            // Non-zero biases so every path is exercised.
            for p in store.iter_mut() {
                if p.name.ends_with("bias") {
                    p.value = p.value.map(|_| 0.1);
                }
            }
            let rep = check_gradients(&store, &[], &GradCheckOptions::default(), |t, p, _| {
                model.forward(t, p, &input, &mut Ctx::eval())
            })
            .unwrap();
            assert!(rep.max_rel_error < 1e-6, "{kind:?}: {:?}", rep.per_tensor);
        }
    }

    /// Every aggregation the GCN takes reaches the model: each gradchecks, and each gives
    /// different logits.
    #[test]
    fn every_gcn_aggregation_gradchecks_and_differs() {
        let (input, _) = tiny();
        let mut outs: Vec<Tensor<f64>> = Vec::new();
        for &aggr in GnnKind::Gcn.aggregations() {
            let mut cfg = GnnConfig::paper(GnnKind::Gcn);
            cfg.hidden = 3;
            cfg.aggr = aggr;
            let mut store = ParamStore::<f64>::new();
            let model = GnnModel::new(&mut store, cfg, 5, 3, &mut Rng::new(1)).unwrap();
            for p in store.iter_mut() {
                if p.name.ends_with("bias") {
                    p.value = p.value.map(|_| 0.1);
                }
            }
            let rep = check_gradients(&store, &[], &GradCheckOptions::default(), |t, p, _| {
                model.forward(t, p, &input, &mut Ctx::eval())
            })
            .unwrap();
            assert!(rep.max_rel_error < 1e-6, "{aggr:?}: {:?}", rep.per_tensor);
            let mut tape = Tape::<f64>::no_grad();
            let y = model
                .forward(&mut tape, &store, &input, &mut Ctx::eval())
                .unwrap();
            let y = tape.value(y).clone();
            for (o, a) in outs.iter().zip(GnnKind::Gcn.aggregations()) {
                assert!(o.max_abs_diff(&y).unwrap() > 1e-6, "{aggr:?} = {a:?}");
            }
            outs.push(y);
        }
        // A model that aggregates by attention refuses the others, naming what it takes.
        let mut cfg = GnnConfig::paper(GnnKind::Gat);
        cfg.aggr = Aggr::Max;
        let e = GnnModel::new(&mut ParamStore::<f64>::new(), cfg, 5, 3, &mut Rng::new(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--aggr max") && e.contains("attention"), "{e}");
        assert!(Aggr::parse("median").is_err());
    }

    /// The parameters are named by the module structure, PyG's names inside each layer, in
    /// creation order, and `params()` lists them all.
    #[test]
    fn parameters_have_pyg_names() {
        let names = |kind| {
            let mut store = ParamStore::<f64>::new();
            let m =
                GnnModel::new(&mut store, GnnConfig::paper(kind), 5, 3, &mut Rng::new(1)).unwrap();
            let ids: Vec<String> = m
                .params()
                .iter()
                .map(|&id| store.get(id).name.clone())
                .collect();
            let all: Vec<String> = store.iter().map(|p| p.name.clone()).collect();
            assert_eq!(ids, all, "{kind:?}");
            all
        };
        assert_eq!(
            names(GnnKind::Gcn),
            [
                "convs.0.lin.weight",
                "convs.0.bias",
                "convs.1.lin.weight",
                "convs.1.bias"
            ]
        );
        assert_eq!(
            names(GnnKind::Gat)[..4],
            [
                "convs.0.lin.weight",
                "convs.0.att_src",
                "convs.0.att_dst",
                "convs.0.bias"
            ]
        );
        let t = names(GnnKind::Transformer);
        assert_eq!(t[0], "convs.0.lin_query.weight");
        assert_eq!(t[7], "convs.0.lin_skip.bias");
        assert_eq!(t.len(), 16);
        let d = names(GnnKind::Dense);
        assert_eq!(d[2], "attn.q_proj.weight");
        assert_eq!(d.last().unwrap(), "head.bias");
    }

    /// The first layer on the sparse features gives the numbers of the same layer on the dense
    /// matrix, for each kind of layer.
    #[test]
    fn sparse_input_equals_dense_input() {
        let (input, _) = tiny();
        for kind in [GnnKind::Gcn, GnnKind::Gat, GnnKind::Transformer] {
            let mut cfg = GnnConfig::paper(kind);
            cfg.hidden = 3;
            cfg.heads = 2;
            let mut store = ParamStore::<f64>::new();
            let model = GnnModel::new(&mut store, cfg, 5, 3, &mut Rng::new(4)).unwrap();
            let conv = &model.convs()[0];
            let mut tape = Tape::<f64>::no_grad();
            let g = &input.graph;
            let s = conv
                .propagate(
                    &mut tape,
                    &store,
                    g,
                    NodeInput::Sparse(&input.features),
                    &mut Ctx::eval(),
                )
                .unwrap();
            let xd = tape.constant(input.features.to_dense());
            let d = conv.forward(&mut tape, &store, g, xd).unwrap();
            let e = tape.value(s).max_abs_diff(tape.value(d)).unwrap();
            assert!(e < 1e-12, "{kind:?}: {e}");
        }
    }

    /// With a fixed dropout seed the masked forward is a deterministic function: gradcheck it too.
    #[test]
    fn dropout_path_gradchecks() {
        let (input, _) = tiny();
        let mut cfg = GnnConfig::paper(GnnKind::Gat);
        cfg.hidden = 2;
        cfg.heads = 2;
        cfg.dropout = 0.3;
        cfg.attn_dropout = 0.3;
        let mut store = ParamStore::<f64>::new();
        let model = GnnModel::new(&mut store, cfg, 5, 3, &mut Rng::new(2)).unwrap();
        let rep = check_gradients(&store, &[], &GradCheckOptions::default(), |t, p, _| {
            let mut r = Rng::new(5);
            model.forward(t, p, &input, &mut Ctx::train(&mut r))
        })
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }
}
