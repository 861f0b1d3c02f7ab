//! `nabla reproduce`: the assignment's numeric exercises, each computed through the library's
//! real layers and checked, with a short derivation. One [`Entry`] per exercise id.

mod render;
pub use render::{render, Format};

use crate::error::Result;
use serde_json::{json, Value};

/// One exercise's answer.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The assignment's id, e.g. `"2.2"`.
    pub id: String,
    pub title: String,
    /// Two to five lines of derivation (plain text with Unicode math).
    pub derivation: Vec<String>,
    /// The computed numbers, as JSON (what `--json` prints).
    pub values: Value,
    /// Human-readable result lines.
    pub summary: Vec<String>,
    /// Optional verbatim artefact (e.g. a Graphviz DOT file).
    pub artefact: Option<(String, String)>,
    /// Whether every check of this entry passed.
    pub ok: bool,
}

impl Entry {
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "title": self.title,
            "ok": self.ok,
            "values": self.values,
            "derivation": self.derivation,
        });
        if let Some((name, text)) = &self.artefact {
            v["artefact"] = json!({"name": name, "text": text});
        }
        v
    }
}

type Builder = fn() -> Result<Entry>;

/// Every exercise, in the assignment's order.
pub fn registry() -> Vec<(&'static str, Builder)> {
    vec![
        ("1.1", rnn_graph::unrolled_graph),
        ("1.2", rnn::recursion),
        ("1.3", rnn::local_terms),
        ("1.4", rnn::weight_gradients),
        ("1.5", rnn::truncation),
        ("2.1", gnn::sum_update),
        ("2.2", gnn::example_update),
        ("2.3", gnn::sentence_graph),
        ("2.4", gnn::attention_as_gnn),
        ("2.5", gnn::long_range),
        ("3.1", optim::norm_statistics),
        ("3.2", optim::padding),
        ("3.3", optim::dropout),
        ("3.4", optim::min_norm),
    ]
}

/// Runs the exercises (all, or only `only`); errors in building an entry become a failed entry.
pub fn run(only: Option<&str>) -> Result<Vec<Entry>> {
    let reg = registry();
    if let Some(id) = only {
        if !reg.iter().any(|(i, _)| *i == id) {
            return Err(crate::invalid!(
                "no exercise {id:?}; known: {}",
                reg.iter().map(|(i, _)| *i).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    Ok(reg
        .into_iter()
        .filter(|(id, _)| only.is_none_or(|o| o == *id))
        .map(|(id, f)| {
            f().unwrap_or_else(|e| Entry {
                id: id.to_string(),
                title: format!("exercise {id}"),
                derivation: vec![],
                values: json!({"error": e.to_string()}),
                summary: vec![format!("error: {e}")],
                artefact: None,
                ok: false,
            })
        })
        .collect())
}

/// All entries as one JSON object keyed by id.
pub fn to_json(entries: &[Entry]) -> Value {
    let mut m = serde_json::Map::new();
    for e in entries {
        m.insert(e.id.clone(), e.to_json());
    }
    Value::Object(m)
}

mod gnn;
mod optim;
mod rnn;
mod rnn_graph;
