//! Exercises 2.2 and 2.3 computed *through* the message-passing layer (not by hand), and
//! Transformer attention as the special case of message passing on a complete graph — the same
//! layer, the same numbers ([`attention_difference`]).

use crate::autograd::{ParamStore, Tape};
use crate::error::Result;
use crate::graph::Graph;
use crate::init::Rng;
use crate::nn::masked_attention::{dense_attention, graph_mask, AttentionParams, DensePath};
use crate::nn::message_passing::{
    Activation, Aggregation, Message, MessagePassing, NodeInput, Update,
};
use crate::nn::module::{Ctx, VarBuilder};
use crate::tensor::Tensor;

/// How far attention as message passing is from dense attention with the same parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionDifference {
    /// Max |Δ| against the one dense reference (`multi_head_self_attention_reference`).
    pub reference: f64,
    /// Max |Δ| against the fused op (`multi_head_self_attention`).
    pub fused: f64,
}

/// Attention as message passing on `graph` (nodes = tokens; `None` = the complete graph with
/// self loops) against dense multi-head self-attention with the same weights and the graph's
/// non-edges masked (`AttnMask`: `true` = blocked), in f64.
pub fn attention_difference(
    tokens: usize,
    dim: usize,
    heads: usize,
    seed: u64,
    graph: Option<&Graph>,
) -> Result<AttentionDifference> {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::<f64>::new();
    let mp = MessagePassing::attention(
        VarBuilder::init(&mut store, &mut rng).pp("attn"),
        dim,
        heads,
    )?;
    let x = Tensor::from_fn(&[tokens, dim], |_| rng.normal());
    let complete = Graph::complete(tokens, true);
    let (graph, mask) = match graph {
        Some(g) => (g, Some(graph_mask(g))),
        None => (&complete, None),
    };
    let p = AttentionParams::of(&mp)?;
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(x);
    let y_mp = mp.forward(&mut tape, &store, graph, xv)?;
    let y_ref = dense_attention(
        &mut tape,
        &store,
        &p,
        xv,
        mask.clone(),
        DensePath::Reference,
    )?;
    let y_fused = dense_attention(&mut tape, &store, &p, xv, mask, DensePath::Fused)?;
    Ok(AttentionDifference {
        reference: tape.value(y_mp).max_abs_diff(tape.value(y_ref))?,
        fused: tape.value(y_mp).max_abs_diff(tape.value(y_fused))?,
    })
}

/// What exercise 2.2 asks for, with the intermediate values.
#[derive(Clone, Debug, PartialEq)]
pub struct Exercise22 {
    /// `Agg(H'_1) = [0.6, 0.2, 0.2]·[f(h2); f(h3); f(h4)]`.
    pub aggregate: [f64; 2],
    /// `W h_1ᵀ` (a scalar, broadcast over both components).
    pub self_term: f64,
    /// `h_1^{t+1} = W h_1ᵀ + max(Agg, 0)` — expected `[0, 0.8]`.
    pub h1_next: [f64; 2],
}

/// Exercise 2.2: vertex 1 receives edges from 2, 3, 4; `h1=[1,−1]`, `h2=[−1,1]`, `h3=[0,−1]`,
/// `h4=[1,0]`; `f(x) = 2x`; fixed weights `[0.6, 0.2, 0.2]`; `q = W h1ᵀ + max(Agg, 0)`, `W=[1,1]`.
pub fn exercise_2_2() -> Result<Exercise22> {
    // 0-based: vertices 2, 3, 4 → 1, 2, 3 send to vertex 1 → 0.
    let graph = Graph::from_edges(4, &[(1, 0), (2, 0), (3, 0)])?;
    let mut store = ParamStore::<f64>::new();
    let w = store.add(
        "update.self_weight",
        Tensor::from_f64(&[1, 2], &[1.0, 1.0])?,
    )?;
    let layer = MessagePassing::new(
        Message::Scale(2.0),
        Aggregation::weighted(&graph, &[0.6, 0.2, 0.2])?,
        Update::Residual {
            self_weight: Some(w),
            activation: Activation::Relu,
        },
    );
    let h = Tensor::from_f64(&[4, 2], &[1.0, -1.0, -1.0, 1.0, 0.0, -1.0, 1.0, 0.0])?;
    let mut tape = Tape::<f64>::no_grad();
    let hv = tape.constant(h);
    let out = layer.forward(&mut tape, &store, &graph, hv)?;
    let x = NodeInput::Dense(hv);
    let (table, index) = layer.message.table(&mut tape, &store, &graph, x)?;
    let agg = layer.aggregation.aggregate(
        &mut tape,
        &store,
        &graph,
        x,
        table,
        &index,
        &mut Ctx::eval(),
    )?;
    let o = tape.value(out).data();
    let a = tape.value(agg).data();
    Ok(Exercise22 {
        aggregate: [a[0], a[1]],
        // q = W h1ᵀ + max(Agg, 0), so the self term is what the layer added on top.
        self_term: o[0] - a[0].max(0.0),
        h1_next: [o[0], o[1]],
    })
}

/// Exercise 2.3: the tokens of "I eat red apples" as a fully connected directed graph without
/// self loops (each bidirectional edge counts twice): `n(n−1)` edges.
pub fn exercise_2_3() -> usize {
    let tokens: Vec<&str> = "I eat red apples".split_whitespace().collect();
    Graph::complete(tokens.len(), false).num_edges()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exercise_2_2_gives_0_and_0_8() {
        let r = exercise_2_2().unwrap();
        assert!(
            (r.aggregate[0] + 0.8).abs() < 1e-12 && (r.aggregate[1] - 0.8).abs() < 1e-12,
            "{r:?}"
        );
        assert!(
            (r.h1_next[0] - 0.0).abs() < 1e-12 && (r.h1_next[1] - 0.8).abs() < 1e-12,
            "{r:?}"
        );
        assert_eq!(r.self_term, 0.0);
    }

    /// On the complete graph and on a sparse graph (masked), message passing equals both dense
    /// paths; without the self loops it does not (the check can fail).
    #[test]
    fn attention_is_message_passing_on_the_complete_graph() {
        let d = attention_difference(5, 4, 2, 1, None).unwrap();
        assert!(d.reference < 1e-12 && d.fused < 1e-12, "{d:?}");
        let sparse = Graph::from_edges(5, &[(1, 0), (2, 0), (0, 1), (3, 2), (4, 2), (0, 4)])
            .unwrap()
            .with_self_loops();
        let d = attention_difference(5, 4, 2, 2, Some(&sparse)).unwrap();
        assert!(d.reference < 1e-12 && d.fused < 1e-12, "{d:?}");
        // The same layer on the complete graph without self loops is not unmasked attention.
        let no_loops = Graph::complete(5, false);
        let mut rng = Rng::new(1);
        let mut store = ParamStore::<f64>::new();
        let mp = MessagePassing::attention(VarBuilder::init(&mut store, &mut rng).pp("attn"), 4, 2)
            .unwrap();
        let x = Tensor::from_fn(&[5, 4], |_| rng.normal());
        let p = AttentionParams::of(&mp).unwrap();
        let mut tape = Tape::<f64>::no_grad();
        let xv = tape.constant(x);
        let y = mp.forward(&mut tape, &store, &no_loops, xv).unwrap();
        let dense = dense_attention(&mut tape, &store, &p, xv, None, DensePath::Reference).unwrap();
        assert!(tape.value(y).max_abs_diff(tape.value(dense)).unwrap() > 1e-3);
        // With its mask (the diagonal blocked) it is again the same numbers.
        let masked = dense_attention(
            &mut tape,
            &store,
            &p,
            xv,
            Some(graph_mask(&no_loops)),
            DensePath::Reference,
        )
        .unwrap();
        assert!(tape.value(y).max_abs_diff(tape.value(masked)).unwrap() < 1e-12);
    }

    #[test]
    fn exercise_2_3_has_12_edges() {
        assert_eq!(exercise_2_3(), 12);
    }
}
