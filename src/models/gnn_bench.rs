//! `nabla bench gnn`: median seconds per full-batch training epoch (forward with dropout,
//! backward, Adam) on a random graph of Cora's size — 2708 nodes, 10556 directed edges (5278
//! undirected pairs), 1433 binary features at 1.3% density, 7 classes, 140 training nodes.
//! `scripts/bench_gnn.py` times the same with PyTorch Geometric.
//!
//! The epoch is memory-bound (gathers and scatters over edges, a sparse product: about one
//! flop per byte), so the row reports its traffic against the copy bandwidth. Bytes counted:
//! every tensor on the epoch's tape — values and gradients — written once and read once
//! (`2 × Tape::tensor_bytes`), plus the sparse features (f64 values and column indices) read by
//! the forward product and by `∂W`. A lower bound on the traffic: any re-read is not counted.

use crate::autograd::{ParamStore, Tape};
use crate::bench::{self, BenchOptions, BenchResult};
use crate::data::planetoid::NodeDataset;
use crate::error::Result;
use crate::init::Rng;
use crate::models::gnn::{GnnConfig, GnnKind, GnnModel, GraphInput};
use crate::nn::module::Ctx;
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
    let mut tape_bytes = 0;
    let mut epoch = || -> Result<()> {
        let mut tape = Tape::<f32>::new();
        let logits = model.forward(&mut tape, &store, &input, &mut Ctx::train(&mut rng))?;
        let z = ops::gather_rows(&mut tape, logits, &ds.train)?;
        let loss = ops::cross_entropy(&mut tape, z, &y, &CrossEntropyOptions::default())?;
        tape.backward(loss)?;
        tape_bytes = tape.tensor_bytes();
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
    let mut r = bench::run(&format!("gnn_epoch_{}", kind.name()), params, opts, || {
        if let Err(e) = epoch() {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let feature_bytes = 2 * ds.features.nnz() * (8 + std::mem::size_of::<usize>());
    let bytes = 2 * tape_bytes + feature_bytes;
    let gbs = bytes as f64 / r.median_s / 1e9;
    let (_, copy_gbs) = bench::copy_bandwidth_gbs(&bench::probe_options());
    r.extra.insert("bytes".into(), json!(bytes));
    r.extra.insert("gbs".into(), json!(gbs));
    r.extra.insert("copy_gbs".into(), json!(copy_gbs));
    r.extra
        .insert("fraction_of_bandwidth".into(), json!(gbs / copy_gbs));
    if kind == GnnKind::Dense {
        let (n, w) = (ds.num_nodes() as f64, (cfg.heads * cfg.hidden) as f64);
        let gflops = 12.0 * n * n * w / r.median_s / 1e9;
        let (_, peak) = bench::fma_peak_gflops(&bench::probe_options());
        r.extra.insert("gflops".into(), json!(gflops));
        r.extra.insert("fma_peak_gflops".into(), json!(peak));
        r.extra
            .insert("fraction_of_peak".into(), json!(gflops / peak));
    }
    Ok(vec![r])
}
