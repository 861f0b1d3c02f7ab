//! Node classifiers on a graph, full batch: GCN (Kipf & Welling 2017), GAT (Veličković et al.
//! 2018) and a graph Transformer (multi-head dot-product attention restricted to `N(i)`, with a
//! root/skip weight, as PyG's `TransformerConv`), plus a dense-attention model (every node attends
//! to every node — the complete graph, O(N²)) used as the cost baseline of `nabla bench gnn`.
//!
//! All of them read sparse bag-of-words features through [`sparse_linear`] and aggregate with the
//! fused kernels of [`crate::nn::graph_ops`] on the graph with self loops.
//! - GCN: `H¹ = ReLU(Â X W₁ + b₁)`, `Z = Â H¹ W₂ + b₂`, `Â = D^{-1/2}(A+I)D^{-1/2}`.
//! - GAT layer: `z = W h`; `e_ji = LeakyReLU_{0.2}(a_srcᵀ z_j + a_dstᵀ z_i)` per head;
//!   `α = softmax_{j∈N(i)} e`; `h_i' = Σ_j α_ji z_j + b` (heads concatenated, then ELU).
//! - Transformer layer: `α = softmax_{j∈N(i)} (W_q h_i)·(W_k h_j)/√d`, `h_i' = W_s h_i + Σ_j α_ji W_v h_j`.
//!
//! Dropout is inverted dropout by a constant mask multiplied in (so its backward is the mask).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::graph::Graph;
use crate::init::{Init, Rng};
use crate::invalid;
use crate::nn::attention::{multi_head_self_attention, AttnOptions, MhaWeights};
use crate::nn::graph_ops::{edge_add, edge_dot, edge_softmax, head_scores, weighted_aggregate};
use crate::nn::masked_attention::AttentionParams;
use crate::nn::message_passing::LinearParams;
use crate::nn::sparse_linear::{sparse_linear, SparseRows};
use crate::ops;
use crate::tensor::{Element, Tensor};

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
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    /// Stop when validation has not improved for this many epochs.
    pub patience: usize,
}

impl GnnConfig {
    pub fn paper(kind: GnnKind) -> Self {
        match kind {
            GnnKind::Gcn => GnnConfig {
                kind,
                hidden: 16,
                heads: 1,
                dropout: 0.5,
                attn_dropout: 0.0,
                lr: 0.01,
                weight_decay: 5e-4,
                epochs: 200,
                patience: 50,
            },
            GnnKind::Gat => GnnConfig {
                kind,
                hidden: 8,
                heads: 8,
                dropout: 0.6,
                attn_dropout: 0.6,
                lr: 0.005,
                weight_decay: 5e-4,
                epochs: 1000,
                patience: 100,
            },
            GnnKind::Transformer | GnnKind::Dense => GnnConfig {
                kind,
                hidden: 8,
                heads: 8,
                dropout: 0.6,
                attn_dropout: 0.6,
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
    /// (E, 1) GCN weights `1/√(d_i d_j)` in CSR order.
    pub gcn_weights: Vec<f64>,
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
        let gcn_weights = graph.gcn_norm();
        Ok(GraphInput {
            features: features.row_normalized(),
            graph,
            gcn_weights,
        })
    }
}

/// One GAT layer's parameters: `{p}.lin.weight (H·F, in)`, `{p}.att_src (H, F)`,
/// `{p}.att_dst`, `{p}.bias (H·F)`.
#[derive(Clone, Copy, Debug)]
struct GatLayer {
    weight: ParamId,
    att_src: ParamId,
    att_dst: ParamId,
    bias: ParamId,
    heads: usize,
    out: usize,
}

/// One graph-Transformer layer: `{p}.lin_query/key/value/skip` (`Linear`s).
#[derive(Clone, Copy, Debug)]
struct TransformerLayer {
    query: LinearParams,
    key: LinearParams,
    value: LinearParams,
    skip: LinearParams,
    heads: usize,
}

#[derive(Clone, Debug)]
enum Layers {
    Gcn {
        w1: ParamId,
        b1: ParamId,
        w2: ParamId,
        b2: ParamId,
    },
    Gat(GatLayer, GatLayer),
    Transformer(TransformerLayer, TransformerLayer),
    Dense {
        input: LinearParams,
        attn: AttentionParams,
        head: LinearParams,
    },
}

/// A two-layer node classifier.
#[derive(Clone, Debug)]
pub struct GnnModel {
    pub config: GnnConfig,
    layers: Layers,
}

fn glorot<T: Element>(
    shape: &[usize],
    fan_in: usize,
    fan_out: usize,
    rng: &mut Rng,
) -> Result<Tensor<T>> {
    let b = (6.0 / (fan_in + fan_out) as f64).sqrt();
    Init::Uniform { low: -b, high: b }.tensor(shape, rng)
}

fn gat_layer<T: Element>(
    store: &mut ParamStore<T>,
    p: &str,
    input: usize,
    heads: usize,
    out: usize,
    rng: &mut Rng,
) -> Result<GatLayer> {
    Ok(GatLayer {
        weight: store.add(
            format!("{p}.lin.weight"),
            glorot(&[heads * out, input], input, heads * out, rng)?,
        )?,
        att_src: store.add(
            format!("{p}.att_src"),
            glorot(&[heads, out], heads, out, rng)?,
        )?,
        att_dst: store.add(
            format!("{p}.att_dst"),
            glorot(&[heads, out], heads, out, rng)?,
        )?,
        bias: store.add(format!("{p}.bias"), Tensor::zeros(&[heads * out]))?,
        heads,
        out,
    })
}

fn transformer_layer<T: Element>(
    store: &mut ParamStore<T>,
    p: &str,
    input: usize,
    heads: usize,
    out: usize,
    rng: &mut Rng,
) -> Result<TransformerLayer> {
    let mut mk =
        |n: &str| LinearParams::new(store, &format!("{p}.{n}"), input, heads * out, true, rng);
    Ok(TransformerLayer {
        query: mk("lin_query")?,
        key: mk("lin_key")?,
        value: mk("lin_value")?,
        skip: mk("lin_skip")?,
        heads,
    })
}

/// An inverted-dropout mask `(shape)` with entries 0 or `1/(1−p)`.
pub fn dropout_mask<T: Element>(shape: &[usize], p: f64, rng: &mut Rng) -> Tensor<T> {
    let s = T::c(1.0 / (1.0 - p));
    let n = shape.iter().product();
    Tensor::from_parts(
        shape.to_vec(),
        crate::kernels::dropout::bernoulli_select(rng, n, p, T::zero(), s),
    )
}

fn dropout<T: Element>(tape: &mut Tape<T>, x: Var, p: f64, rng: Option<&mut Rng>) -> Result<Var> {
    match rng {
        Some(rng) if p > 0.0 => {
            let m = tape.constant(dropout_mask(tape.shape(x), p, rng));
            ops::mul(tape, x, m)
        }
        _ => Ok(x),
    }
}

/// Dense self-attention over all nodes with the fused op of `nn::attention` (the Transformer's
/// fast path); the separate q/k/v weights are packed by a differentiable concat.
fn fused_dense_attention<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    p: &AttentionParams,
    h: Var,
) -> Result<Var> {
    let (n, d) = (tape.shape(h)[0], tape.shape(h)[1]);
    let ws: Vec<Var> = [p.query, p.key, p.value]
        .iter()
        .map(|l| tape.param(store, l.weight))
        .collect();
    let qkv_w = ops::concat(tape, &ws, 0)?;
    let bs: Option<Vec<Var>> = [p.query, p.key, p.value]
        .iter()
        .map(|l| l.bias.map(|b| tape.param(store, b)))
        .collect();
    let qkv_b = match bs {
        Some(bs) => Some(ops::concat(tape, &bs, 0)?),
        None => None,
    };
    let w = MhaWeights {
        qkv_w,
        qkv_b,
        proj_w: tape.param(store, p.out.weight),
        proj_b: p.out.bias.map(|b| tape.param(store, b)),
    };
    let opts = AttnOptions {
        heads: p.heads,
        mask: None,
        need_weights: false,
    };
    let x3 = ops::reshape(tape, h, &[1, n, d])?;
    let (y, _) = multi_head_self_attention(tape, x3, &w, &opts)?;
    ops::reshape(tape, y, &[n, d])
}

/// Linear map of either the sparse features (first layer) or a dense state.
enum In<'a> {
    Sparse(&'a SparseRows),
    Dense(Var),
}

fn lin<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    x: &In,
    w: ParamId,
    b: Option<ParamId>,
) -> Result<Var> {
    let wv = tape.param(store, w);
    let bv = b.map(|b| tape.param(store, b));
    match x {
        In::Sparse(s) => sparse_linear(tape, s, wv, bv),
        In::Dense(v) => ops::linear(tape, *v, wv, bv),
    }
}

impl GnnModel {
    pub fn new<T: Element>(
        store: &mut ParamStore<T>,
        config: GnnConfig,
        in_dim: usize,
        classes: usize,
        rng: &mut Rng,
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
        let (h, k) = (config.hidden, config.heads);
        let layers = match config.kind {
            GnnKind::Gcn => Layers::Gcn {
                w1: store.add("conv1.lin.weight", glorot(&[h, in_dim], in_dim, h, rng)?)?,
                b1: store.add("conv1.bias", Tensor::zeros(&[h]))?,
                w2: store.add("conv2.lin.weight", glorot(&[classes, h], h, classes, rng)?)?,
                b2: store.add("conv2.bias", Tensor::zeros(&[classes]))?,
            },
            GnnKind::Gat => Layers::Gat(
                gat_layer(store, "conv1", in_dim, k, h, rng)?,
                gat_layer(store, "conv2", k * h, 1, classes, rng)?,
            ),
            GnnKind::Transformer => Layers::Transformer(
                transformer_layer(store, "conv1", in_dim, k, h, rng)?,
                transformer_layer(store, "conv2", k * h, 1, classes, rng)?,
            ),
            GnnKind::Dense => {
                let d = h * k;
                let input = LinearParams::new(store, "input", in_dim, d, true, rng)?;
                let mut mk =
                    |n: &str| LinearParams::new(store, &format!("attn.{n}"), d, d, true, rng);
                let attn = AttentionParams {
                    query: mk("q_proj")?,
                    key: mk("k_proj")?,
                    value: mk("v_proj")?,
                    out: mk("out_proj")?,
                    heads: k,
                };
                let head = LinearParams::new(store, "head", d, classes, true, rng)?;
                Layers::Dense { input, attn, head }
            }
        };
        Ok(GnnModel { config, layers })
    }

    /// Logits `(N, classes)`. With `rng` (training) dropout is applied; without, it is not.
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        input: &GraphInput,
        mut rng: Option<&mut Rng>,
    ) -> Result<Var> {
        let c = &self.config;
        let g = &input.graph;
        let x = match rng.as_deref_mut() {
            Some(r) if c.dropout > 0.0 => input.features.dropout(c.dropout, r),
            _ => input.features.clone(),
        };
        match &self.layers {
            Layers::Gcn { w1, b1, w2, b2 } => {
                let a = tape.constant(Tensor::from_fn(&[g.num_edges(), 1], |e| {
                    T::c(input.gcn_weights[e])
                }));
                let h = lin(tape, store, &In::Sparse(&x), *w1, None)?; // (N, hidden)
                let h = weighted_aggregate(tape, g, g.source_index(), h, a)?;
                let b1 = tape.param(store, *b1);
                let h = ops::add(tape, h, b1)?;
                let h = ops::relu(tape, h)?;
                let h = dropout(tape, h, c.dropout, rng.as_deref_mut())?;
                let h = lin(tape, store, &In::Dense(h), *w2, None)?; // (N, classes)
                let h = weighted_aggregate(tape, g, g.source_index(), h, a)?;
                let b2 = tape.param(store, *b2);
                ops::add(tape, h, b2)
            }
            Layers::Gat(l1, l2) => {
                let h = self.gat(tape, store, g, l1, &In::Sparse(&x), rng.as_deref_mut())?;
                let h = ops::elu(tape, h, 1.0)?;
                let h = dropout(tape, h, c.dropout, rng.as_deref_mut())?;
                self.gat(tape, store, g, l2, &In::Dense(h), rng)
            }
            Layers::Transformer(l1, l2) => {
                let h =
                    self.transformer(tape, store, g, l1, &In::Sparse(&x), rng.as_deref_mut())?;
                let h = ops::elu(tape, h, 1.0)?;
                let h = dropout(tape, h, c.dropout, rng.as_deref_mut())?;
                self.transformer(tape, store, g, l2, &In::Dense(h), rng)
            }
            Layers::Dense {
                input: inp,
                attn,
                head,
            } => {
                let h = lin(tape, store, &In::Sparse(&x), inp.weight, inp.bias)?;
                let h = ops::elu(tape, h, 1.0)?;
                let h = dropout(tape, h, c.dropout, rng.as_deref_mut())?;
                let a = fused_dense_attention(tape, store, attn, h)?;
                let h = ops::add(tape, h, a)?;
                let h = ops::elu(tape, h, 1.0)?;
                let h = dropout(tape, h, c.dropout, rng)?;
                head.forward(tape, store, h)
            }
        }
    }

    fn gat<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        g: &Graph,
        l: &GatLayer,
        x: &In,
        rng: Option<&mut Rng>,
    ) -> Result<Var> {
        let n = g.num_nodes();
        let z = lin(tape, store, x, l.weight, None)?; // (N, H·F)
        let z3 = ops::reshape(tape, z, &[n, l.heads, l.out])?; // (N, H, F)
        let score = |tape: &mut Tape<T>, a: ParamId| -> Result<Var> {
            let av = tape.param(store, a); // (H, F)
            head_scores(tape, z3, av) // (N, H): Σ_f z[n,h,f] a[h,f]
        };
        let (es, ed) = (score(tape, l.att_src)?, score(tape, l.att_dst)?);
        let e = edge_add(tape, g, es, ed)?; // (E, H)
        let e = ops::leaky_relu(tape, e, 0.2)?;
        let alpha = edge_softmax(tape, g, e)?;
        let alpha = dropout(tape, alpha, self.config.attn_dropout, rng)?;
        let h = weighted_aggregate(tape, g, g.source_index(), z, alpha)?; // (N, H·F)
        let b = tape.param(store, l.bias);
        ops::add(tape, h, b)
    }

    fn transformer<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        g: &Graph,
        l: &TransformerLayer,
        x: &In,
        rng: Option<&mut Rng>,
    ) -> Result<Var> {
        let q = lin(tape, store, x, l.query.weight, l.query.bias)?; // (N, H·F)
        let k = lin(tape, store, x, l.key.weight, l.key.bias)?;
        let v = lin(tape, store, x, l.value.weight, l.value.bias)?;
        let s = lin(tape, store, x, l.skip.weight, l.skip.bias)?;
        let d = tape.shape(q)[1] / l.heads;
        let sc = edge_dot(
            tape,
            g,
            g.source_index(),
            q,
            k,
            l.heads,
            1.0 / (d as f64).sqrt(),
        )?;
        let alpha = edge_softmax(tape, g, sc)?;
        let alpha = dropout(tape, alpha, self.config.attn_dropout, rng)?;
        let h = weighted_aggregate(tape, g, g.source_index(), v, alpha)?;
        ops::add(tape, h, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckOptions};

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
                model.forward(t, p, &input, None)
            })
            .unwrap();
            assert!(rep.max_rel_error < 1e-6, "{kind:?}: {:?}", rep.per_tensor);
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
            model.forward(t, p, &input, Some(&mut r))
        })
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }
}
