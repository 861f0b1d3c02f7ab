//! 2.1–2.5: Transformers as GNNs, through `graph`, `nn::message_passing` and `nn::attention`.

use super::Entry;
use crate::analysis::influence::chain_influence;
use crate::analysis::transformers_as_gnns::{attention_difference, exercise_2_2, exercise_2_3};
use crate::autograd::{ParamStore, Tape};
use crate::error::Result;
use crate::graph::Graph;
use crate::nn::message_passing::{Activation, Aggregation, Message, MessagePassing, Update};
use crate::tensor::Tensor;
use serde_json::json;

pub fn sum_update() -> Result<Entry> {
    // The 2.2 graph with Agg = sum: h_1' = W h_1ᵀ + max(Σ_j f(h_j), 0).
    let graph = Graph::from_edges(4, &[(1, 0), (2, 0), (3, 0)])?;
    let mut store = ParamStore::<f64>::new();
    let w = store.add(
        "update.self_weight",
        Tensor::from_f64(&[1, 2], &[1.0, 1.0])?,
    )?;
    let layer = MessagePassing::new(
        Message::Scale(2.0),
        Aggregation::Sum,
        Update::Residual {
            self_weight: Some(w),
            activation: Activation::Relu,
        },
    );
    let h = Tensor::from_f64(&[4, 2], &[1.0, -1.0, -1.0, 1.0, 0.0, -1.0, 1.0, 0.0])?;
    let mut tape = Tape::<f64>::no_grad();
    let hv = tape.constant(h.clone());
    let out = layer.forward(&mut tape, &store, &graph, hv)?;
    let got = [tape.value(out).data()[0], tape.value(out).data()[1]];
    // By the formula: Σ_j 2h_j over j ∈ {2,3,4} = 2·[0, 0]; W h_1ᵀ = 0.
    let s = [
        2.0 * (h.data()[2] + h.data()[4] + h.data()[6]),
        2.0 * (h.data()[3] + h.data()[5] + h.data()[7]),
    ];
    let wh = h.data()[0] + h.data()[1];
    let want = [wh + s[0].max(0.0), wh + s[1].max(0.0)];
    let ok = (got[0] - want[0]).abs() < 1e-12 && (got[1] - want[1]).abs() < 1e-12;
    Ok(Entry {
        id: "2.1".into(),
        title: "The update with Agg = sum".into(),
        derivation: vec![
            "h_i^{t+1} = q(h_i^t, Σ_{v_j ∈ N(v_i)} f_ji(h_j^t)): every vertex sums its in-neighbours' transformed states,".into(),
            "all vertices in parallel from the same snapshot h^t.".into(),
        ],
        values: json!({"h1_next_sum": got, "formula": want}),
        summary: vec![format!("2.2's graph with Agg = sum through the layer: h_1' = [{:.4}, {:.4}] (formula [{:.4}, {:.4}])", got[0], got[1], want[0], want[1])],
        artefact: None,
        ok,
    })
}

pub fn example_update() -> Result<Entry> {
    let r = exercise_2_2()?;
    let ok = (r.h1_next[0] - 0.0).abs() < 1e-12 && (r.h1_next[1] - 0.8).abs() < 1e-12;
    Ok(Entry {
        id: "2.2".into(),
        title: "h_1^{t+1} of the 4-vertex example".into(),
        derivation: vec![
            "f(h_2), f(h_3), f(h_4) = [−2, 2], [0, −2], [2, 0].".into(),
            "Agg = 0.6·[−2, 2] + 0.2·[0, −2] + 0.2·[2, 0] = [−0.8, 0.8].".into(),
            "W h_1ᵀ = 1 − 1 = 0, max(Agg, 0) = [0, 0.8]  ⇒  h_1^{t+1} = [0, 0.8].".into(),
        ],
        values: json!({"aggregate": r.aggregate, "self_term": r.self_term, "h1_next": r.h1_next}),
        summary: vec![format!(
            "through the MessagePassing layer: Agg = [{:.4}, {:.4}], h_1^{{t+1}} = [{:.4}, {:.4}] (expected [0, 0.8])",
            r.aggregate[0], r.aggregate[1], r.h1_next[0], r.h1_next[1]
        )],
        artefact: None,
        ok,
    })
}

pub fn sentence_graph() -> Result<Entry> {
    let n = exercise_2_3();
    Ok(Entry {
        id: "2.3".into(),
        title: "Edges of the fully connected graph over \"I eat red apples\"".into(),
        derivation: vec![
            "4 tokens, a directed edge j → i for every ordered pair j ≠ i: n(n − 1) = 4·3 = 12."
                .into(),
            "(With self loops, as attention uses, n² = 16.)".into(),
        ],
        values: json!({"tokens": 4, "edges": n, "edges_with_self_loops": Graph::complete(4, true).num_edges()}),
        summary: vec![format!("Graph::complete(4) has {n} edges (expected 12)")],
        artefact: None,
        ok: n == 12,
    })
}

pub fn attention_as_gnn() -> Result<Entry> {
    let d = attention_difference(6, 8, 2, 11, None)?;
    let diff = d.reference.max(d.fused);
    Ok(Entry {
        id: "2.4".into(),
        title: "Single-head (and multi-head) attention is message passing on the complete graph".into(),
        derivation: vec![
            "Take G complete with self loops, f_ji(h_j) = V h_j, and Agg = weighted sum with weights".into(),
            "α_ij = softmax_{j ∈ N(i)}(Q h_i · K h_j): then Agg(H'_i) = Σ_j α_ij V h_j, which is attention.".into(),
            "q is the identity (or the output projection); on a sparse graph the same layer is masked attention.".into(),
        ],
        values: json!({"tokens": 6, "dim": 8, "heads": 2, "max_abs_difference": diff, "vs_reference": d.reference, "vs_fused": d.fused}),
        summary: vec![format!("message passing on the complete graph vs dense attention (reference {:.2e}, fused {:.2e}): max |Δ| = {diff:.2e} (f64; tolerance 1e-12)", d.reference, d.fused)],
        artefact: None,
        ok: diff < 1e-12,
    })
}

pub fn long_range() -> Result<Entry> {
    let layers = 3;
    let r = chain_influence(8, layers, 8, 5)?;
    let hops: Vec<(usize, f64)> = r.by_hop.iter().map(|h| (h.hop, h.mean)).collect();
    let beyond_zero = r.max_influence_beyond_reach == 0.0;
    let within_positive = r
        .by_hop
        .iter()
        .filter(|h| h.hop <= layers)
        .all(|h| h.mean > 0.0);
    Ok(Entry {
        id: "2.5".into(),
        title: "Long-range dependencies: reach grows one hop per layer".into(),
        derivation: vec![
            "After L rounds, h_i^L depends only on vertices within L hops: ∂h_i^L/∂h_j^0 = 0 beyond.".into(),
            "A sparse graph needs as many layers as the distance; the complete graph reaches everything".into(),
            "in one layer but costs n(n − 1) edges — O(n²) attention — which is why long contexts are hard.".into(),
        ],
        values: json!({"chain_nodes": 8, "layers": layers, "influence_by_hop": hops, "max_influence_beyond_reach": r.max_influence_beyond_reach}),
        summary: hops.iter().map(|(h, m)| format!("hop {h}: mean ‖∂h_0^L/∂h_j^0‖ = {m:.3e}")).collect(),
        artefact: None,
        ok: beyond_zero && within_positive,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_entry_passes() {
        let e = attention_as_gnn().unwrap();
        assert!(e.ok, "{:?}", e.summary);
        assert!(e.values["max_abs_difference"].as_f64().unwrap() < 1e-12);
    }
}
