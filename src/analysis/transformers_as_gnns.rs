//! Exercises 2.2 and 2.3 computed *through* the message-passing layer (not by hand).

use crate::autograd::{ParamStore, Tape};
use crate::error::Result;
use crate::graph::Graph;
use crate::nn::message_passing::{Activation, Aggregation, Message, MessagePassing, Update};
use crate::tensor::Tensor;

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
    let (table, index) = layer.message.table(&mut tape, &store, &graph, hv)?;
    let agg = layer
        .aggregation
        .aggregate(&mut tape, &store, &graph, hv, table, &index)?;
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

    #[test]
    fn exercise_2_3_has_12_edges() {
        assert_eq!(exercise_2_3(), 12);
    }
}
