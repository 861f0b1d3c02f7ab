//! Attention message passing run as *dense* multi-head self-attention: the layer of
//! [`MessagePassing::attention`] (`q_proj`, `k_proj`, `v_proj`, `out_proj`) on `x (T, D)`, with
//! the non-edges of a graph as the mask, through the one dense attention of [`crate::nn::attention`]
//! — the fused op [`multi_head_self_attention`] (the fast path, the O(T²) baseline of
//! `nabla bench gnn --model dense`) or its unrolled reference
//! [`multi_head_self_attention_reference`] (the check).
//!
//! `Q, K, V = x W_qᵀ + b_q, …` split into `H` heads of `d = D/H`;
//! `P_h = softmax(Q_h K_hᵀ/√d + M)`, `y = concat_h(P_h V_h) W_oᵀ + b_o`, where the mask `M` is
//! [`AttnMask`]'s one convention (PyTorch's boolean `attn_mask`: `true` = query `i` may **not**
//! attend to key `j`, `M_ij = −∞`). On a graph, query `i`'s keys are its sources `N(i)`: the
//! mask blocks every pair `(i, j)` without an edge `j → i` ([`graph_mask`]).

use crate::autograd::{ParamStore, Tape, Var};
use crate::error::Result;
use crate::graph::Graph;
use crate::invalid;
use crate::nn::attention::{
    multi_head_self_attention, multi_head_self_attention_reference, AttnMask, AttnOptions,
    MhaWeights,
};
use crate::nn::linear::Linear;
use crate::nn::message_passing::{Aggregation, Message, MessagePassing, Update};
use crate::ops;
use crate::shape_err;
use crate::tensor::Element;

/// The four projections of an attention layer (`nn.MultiheadAttention`'s, unpacked).
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub out: Linear,
    pub heads: usize,
}

impl AttentionParams {
    /// The projections of an attention message-passing layer (message = value projection,
    /// dot-product attention aggregation, update = output projection).
    pub fn of(layer: &MessagePassing) -> Result<Self> {
        match (&layer.message, &layer.aggregation, &layer.update) {
            (
                Message::Linear(value),
                Aggregation::Attention {
                    heads, query, key, ..
                },
                Update::Linear(out),
            ) => Ok(AttentionParams {
                query: *query,
                key: *key,
                value: *value,
                out: *out,
                heads: *heads,
            }),
            _ => Err(invalid!(
                "not an attention layer (linear message, dot-product attention, linear update)"
            )),
        }
    }

    /// The weights packed as timm's `qkv (3D, D)` and `proj` by a differentiable concat, so the
    /// gradients of the fused op reach the separate parameters.
    pub fn mha_weights<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
    ) -> Result<MhaWeights> {
        let (q, k, v) = (
            self.query.vars(tape, store),
            self.key.vars(tape, store),
            self.value.vars(tape, store),
        );
        let qkv_w = ops::concat(tape, &[q.0, k.0, v.0], 0)?;
        let qkv_b = match (q.1, k.1, v.1) {
            (Some(a), Some(b), Some(c)) => Some(ops::concat(tape, &[a, b, c], 0)?),
            (None, None, None) => None,
            _ => {
                return Err(invalid!(
                    "q, k and v projections must all have a bias or none"
                ))
            }
        };
        let (proj_w, proj_b) = self.out.vars(tape, store);
        Ok(MhaWeights {
            qkv_w,
            qkv_b,
            proj_w,
            proj_b,
        })
    }
}

/// The mask of `graph`'s non-edges, `(N, N)` shared: entry `i·N + j` is `true` (blocked) unless
/// there is an edge `j → i`.
pub fn graph_mask(graph: &Graph) -> AttnMask {
    let n = graph.num_nodes();
    let mut blocked = vec![true; n * n];
    for (&j, &i) in graph.src().iter().zip(graph.dst()) {
        blocked[i * n + j] = false;
    }
    AttnMask::Shared(blocked)
}

/// Which implementation of the dense attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DensePath {
    /// The fused op (the fast path).
    Fused,
    /// The same computation unrolled into primitive ops (the reference).
    Reference,
}

/// `x (T, D) → (T, D)`: the attention layer as dense self-attention, keys masked by `mask`
/// (`true` = blocked; `None` = every token attends to every token: the complete graph).
pub fn dense_attention<T: Element>(
    tape: &mut Tape<T>,
    store: &ParamStore<T>,
    p: &AttentionParams,
    x: Var,
    mask: Option<AttnMask>,
    path: DensePath,
) -> Result<Var> {
    let s = tape.shape(x).to_vec();
    if s.len() != 2 {
        return Err(shape_err!(
            "dense_attention",
            "input {:?} must be (tokens, D)",
            s
        ));
    }
    let (t, d) = (s[0], s[1]);
    let w = p.mha_weights(tape, store)?;
    let opts = AttnOptions {
        heads: p.heads,
        mask,
        need_weights: false,
    };
    let x3 = ops::reshape(tape, x, &[1, t, d])?;
    let (y, _) = match path {
        DensePath::Fused => multi_head_self_attention(tape, x3, &w, &opts)?,
        DensePath::Reference => multi_head_self_attention_reference(tape, x3, &w, &opts)?,
    };
    ops::reshape(tape, y, &[t, d])
}
