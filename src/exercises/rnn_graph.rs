//! 1.1: the RNN's computational graph unrolled over T = 3.

use super::Entry;
use crate::error::Result;
use serde_json::json;

/// Nodes and labelled edges of the Elman RNN unrolled over `t_max` steps.
pub fn unrolled_edges(t_max: usize) -> (Vec<String>, Vec<(String, String, String)>) {
    let mut nodes = vec!["h_0".to_string()];
    let mut edges = Vec::new();
    for t in 1..=t_max {
        for n in ["x", "h", "y", "L"] {
            nodes.push(format!("{n}_{t}"));
        }
        edges.push((format!("x_{t}"), format!("h_{t}"), "W".into()));
        edges.push((format!("h_{}", t - 1), format!("h_{t}"), "U".into()));
        edges.push((format!("h_{t}"), format!("y_{t}"), "V".into()));
        edges.push((format!("y_{t}"), format!("L_{t}"), "‖z−y‖²".into()));
    }
    nodes.push("L".into());
    for t in 1..=t_max {
        edges.push((format!("L_{t}"), "L".into(), "Σ".into()));
    }
    (nodes, edges)
}

/// Graphviz DOT of the unrolled graph.
pub fn dot(t_max: usize) -> String {
    let (nodes, edges) = unrolled_edges(t_max);
    let mut s =
        String::from("digraph elman_rnn_unrolled {\n  rankdir=BT;\n  node [shape=circle];\n");
    for n in &nodes {
        s.push_str(&format!("  \"{n}\";\n"));
    }
    for t in 1..=t_max {
        s.push_str(&format!("  {{ rank=same; \"h_{t}\"; }}\n"));
    }
    for (a, b, l) in &edges {
        s.push_str(&format!("  \"{a}\" -> \"{b}\" [label=\"{l}\"];\n"));
    }
    s.push_str("}\n");
    s
}

pub fn unrolled_graph() -> Result<Entry> {
    let t_max = 3;
    let (nodes, edges) = unrolled_edges(t_max);
    let count = |l: &str| edges.iter().filter(|e| e.2 == l).count();
    let ok = nodes.len() == 4 * t_max + 2
        && count("W") == t_max
        && count("U") == t_max
        && count("V") == t_max;
    let mut summary =
        vec!["x_t —W→ h_t,  h_{t−1} —U→ h_t,  h_t —V→ y_t,  y_t → L_t → L".to_string()];
    for t in 1..=t_max {
        summary.push(format!(
            "t={t}:  x_{t} —W→ h_{t} ←U— h_{}   h_{t} —V→ y_{t} → L_{t}",
            t - 1
        ));
    }
    Ok(Entry {
        id: "1.1".into(),
        title: "Computational graph of the Elman RNN unrolled for t = 1, 2, 3".into(),
        derivation: vec![
            "h_t = σ(W x_t + U h_{t−1}),  y_t = V h_t,  L_t = ‖z_t − y_t‖²,  L = Σ_t L_t.".into(),
            "Each step reuses the same W, U, V: one edge per matrix per time step.".into(),
            "The only path from h_t to later losses runs through U (h_t → h_{t+1}).".into(),
        ],
        values: json!({
            "nodes": nodes,
            "edges": edges.iter().map(|(a, b, l)| json!([a, b, l])).collect::<Vec<_>>(),
            "edges_per_matrix": {"W": count("W"), "U": count("U"), "V": count("V")},
        }),
        summary,
        artefact: Some(("rnn_unrolled.dot".into(), dot(t_max))),
        ok,
    })
}
