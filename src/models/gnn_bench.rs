//! `nabla bench gnn`: median seconds per full-batch training epoch (forward with dropout,
//! backward, Adam) on a random graph of Cora's size — 2708 nodes, 10556 directed edges (5278
//! undirected pairs), 1433 binary features at 1.3% density, 7 classes, 140 training nodes.
//! `scripts/bench_gnn.py` times the same with PyTorch Geometric.

use crate::autograd::{ParamStore, Tape};
use crate::bench::{self, BenchOptions, BenchResult};
use crate::data::planetoid::NodeDataset;
use crate::error::Result;
use crate::init::Rng;
use crate::models::gnn::{GnnConfig, GnnKind, GnnModel, GraphInput};
use crate::ops::{self, CrossEntropyOptions};
use crate::optim::{Adam, AdamConfig, Optimizer};
use serde_json::json;

/// Times one training epoch of `kind` on the Cora-sized random graph.
pub fn bench_gnn(kind: GnnKind, opts: &BenchOptions) -> Result<Vec<BenchResult>> {
    let ds = NodeDataset::random(2708, 5278, 1433, 0.013, 7, 0)?;
    let cfg = GnnConfig::paper(kind);
    let input = GraphInput::new(&ds.features, &ds.graph)?;
    let mut rng = Rng::new(0);
    let mut store = ParamStore::<f32>::new();
    let model = GnnModel::new(&mut store, cfg.clone(), 1433, 7, &mut rng)?;
    let mut opt = Adam::<f32>::new(AdamConfig::new(cfg.lr).weight_decay(cfg.weight_decay))?;
    let y: Vec<usize> = ds
        .train
        .iter()
        .map(|&i| ds.labels[i].unwrap_or(0))
        .collect();
    let mut err = None;
    let mut epoch = || -> Result<()> {
        let mut tape = Tape::<f32>::new();
        let logits = model.forward(&mut tape, &store, &input, Some(&mut rng))?;
        let z = ops::gather_rows(&mut tape, logits, &ds.train)?;
        let loss = ops::cross_entropy(&mut tape, z, &y, &CrossEntropyOptions::default())?;
        tape.backward(loss)?;
        store.zero_grad();
        tape.accumulate_grads(&mut store)?;
        opt.step(&mut store)
    };
    let params = json!({
        "model": kind.name(),
        "nodes": ds.num_nodes(),
        "edges": ds.graph.num_edges(),
        "edges_with_self_loops": input.graph.num_edges(),
        "features": 1433,
        "feature_nnz": ds.features.nnz(),
        "threads": rayon::current_num_threads(),
    });
    let r = bench::run(&format!("gnn_epoch_{}", kind.name()), params, opts, || {
        if let Err(e) = epoch() {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(vec![r])
}
