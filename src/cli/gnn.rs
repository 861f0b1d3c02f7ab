//! `nabla gnn …`: node classification (`train`) and the reach analysis (`influence`);
//! `nabla bench gnn` lives with the other benchmarks in `cli/mod.rs`.

use crate::analysis::influence::{chain_influence, influence, plot_influence};
use crate::cli::resume::{self, Typed};
use crate::data::planetoid::NodeDataset;
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::gnn::{Aggr, GnnConfig, GnnKind};
use crate::models::gnn_train::train_node_classifier;
use crate::outln;
use crate::train::{Mode, OptimDefaults, OptimizerKind, TrainDefaults};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

// Parsed once per process: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum GnnCommand {
    /// Full-batch node classification on the shared trainer (one step = one epoch): early
    /// stopping on validation, progress, metrics.jsonl, checkpoints, --resume, plot; reports
    /// the test accuracy of the best-validation model (mean over --seeds runs). Defaults: the
    /// paper's epochs, patience, Adam rate and weight decay; --monitor val_acc; --out
    /// runs/gnn-<model> (runs/gnn-<model>-2, -3, … when taken; --overwrite replaces it).
    /// Single process only: the whole graph is one batch, with nothing to split across MPI
    /// ranks (`mpirun -np N` with N > 1 is refused).
    Train(GnnTrainArgs),
    /// Which nodes can influence node i after L rounds, and the Jacobian influence by hop
    /// distance, on the data set's graph and on a chain (JSON + SVG plot).
    Influence(InfluenceArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(
    after_help = "Defaults of gnn train, the papers' settings: --optim adam; gcn --epochs 200 --patience 50 --lr 0.01, gat/transformer/dense --epochs 1000 --patience 100 --lr 0.005; --weight-decay 5e-4 (L2); --schedule constant; evaluation every epoch; --monitor val_acc; --out runs/gnn-<model>."
)]
pub struct GnnTrainArgs {
    /// Data folder: the TSV format (features/labels/edges/split.tsv) or LINQS (*.content +
    /// *.cites). Without it, a built-in contextual stochastic block model.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// gcn | gat | transformer | dense
    #[arg(long, default_value = "gcn")]
    pub model: String,
    /// Aggregation of the message-passing layers: gcn (normalized sum, GCN's default) | add |
    /// mean | max for --model gcn; attention (the default) for gat and transformer.
    #[arg(long)]
    pub aggr: Option<String>,
    /// Number of runs, seeds seed, seed+1, … (each in OUT/seed-<seed> when more than one).
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// One JSON object per run and one summary object on stdout.
    #[arg(long)]
    pub json: bool,
    // The shared trainer flags. Defaults here: --epochs and --patience from the model's paper
    // setting, --monitor val_acc, evaluation every epoch, --out runs/gnn-<model> (or the first
    // free runs/gnn-<model>-N; --overwrite replaces it).
    #[command(flatten)]
    #[serde(flatten)]
    pub train: crate::train::TrainArgs,
    // Optimizer flags; default Adam with the paper's rate and weight decay.
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: crate::train::OptimArgs,
}

#[derive(Args, Debug)]
pub struct InfluenceArgs {
    /// Data folder (TSV or LINQS); without it, the built-in contextual SBM.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Rounds of message passing L (at most 256).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Target node i.
    #[arg(long, default_value_t = 0)]
    pub node: usize,
    /// Width of the random message-passing layers.
    #[arg(long, default_value_t = 16)]
    pub hidden: usize,
    /// Length of the chain compared with the real graph.
    #[arg(long, default_value_t = 32)]
    pub chain: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for influence.json and influence.svg.
    #[arg(long, default_value = "gnn_influence")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// Loads `dir` as TSV (if it has features.tsv) or LINQS (one *.content and one *.cites);
/// without a folder, the built-in contextual SBM.
pub fn load_dataset(dir: Option<&Path>, seed: u64) -> Result<NodeDataset> {
    let Some(dir) = dir else {
        return NodeDataset::csbm(2000, 4, 400, seed);
    };
    if !dir.is_dir() {
        return Err(invalid!("--data {}: not a folder", dir.display()));
    }
    if dir.join("features.tsv").exists() {
        return NodeDataset::load_tsv_dir(dir);
    }
    let mut content = Vec::new();
    let mut cites = Vec::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .flatten()
    {
        let p = e.path();
        match p.extension().and_then(|x| x.to_str()) {
            Some("content") => content.push(p),
            Some("cites") => cites.push(p),
            _ => {}
        }
    }
    match (content.as_slice(), cites.as_slice()) {
        ([c], [e]) => NodeDataset::load_linqs(c, e, seed),
        _ => Err(invalid!(
            "--data {}: expected features.tsv, labels.tsv, edges.tsv, split.tsv (TSV) or one *.content and one *.cites (LINQS)",
            dir.display()
        )),
    }
}

fn train(a: &GnnTrainArgs, typed: &Typed) -> Result<()> {
    let mut a = a.clone();
    if let Some(dir) = a.train.resume.clone() {
        a = resume::restore(&a, typed, &dir, &["json"])?;
    }
    let kind = GnnKind::parse(&a.model)?;
    if a.seeds == 0 {
        return Err(invalid!("--seeds must be at least 1"));
    }
    let mut cfg = GnnConfig::paper(kind);
    if let Some(g) = &a.aggr {
        cfg.aggr = Aggr::parse(g)?;
    }
    let optim_defaults = OptimDefaults {
        kind: OptimizerKind::Adam,
        lr: cfg.lr,
        weight_decay: cfg.weight_decay,
    };
    a.optim.fill_defaults(optim_defaults);
    let default_out = format!("runs/gnn-{}", kind.name());
    let defaults = TrainDefaults {
        epochs: Some(cfg.epochs as u64),
        patience: Some(cfg.patience as u64),
        monitor: Some(("val_acc".into(), Mode::Max)),
        ..TrainDefaults::new(&default_out)
    };
    a.train
        .fill_defaults(&defaults, a.optim.lr.unwrap_or(cfg.lr));
    a.optim.build::<f32>(optim_defaults)?;
    let command = serde_json::to_value(&a).map_err(|e| invalid!("flags: {e}"))?;
    let ds = load_dataset(a.data.as_deref(), a.train.seed)?;
    let targs = a.train.clone();
    if !a.json {
        outln!(
            "{}: {} nodes, {} edges, {} features, {} classes, split {}/{}/{}; model {}",
            ds.name,
            ds.num_nodes(),
            ds.graph.num_edges(),
            ds.features.cols(),
            ds.num_classes,
            ds.train.len(),
            ds.val.len(),
            ds.test.len(),
            kind.name()
        )?;
    }
    let mut accs = Vec::new();
    for k in 0..a.seeds {
        if crate::train::stop_signal().is_some() {
            break; // the interrupted run said how to resume; start no further seeds
        }
        let seed = a.train.seed + k as u64;
        let mut t = targs.clone();
        t.seed = seed;
        if a.seeds > 1 {
            let sub = format!("seed-{seed}");
            let base = t.out.clone().or_else(|| t.resume.clone());
            t.out = Some(
                base.unwrap_or_else(|| PathBuf::from(&default_out))
                    .join(&sub),
            );
            // A seed the interrupted command never reached starts afresh.
            t.resume = t
                .resume
                .map(|r| r.join(&sub))
                .filter(|r| crate::train::checkpoint_dir(r).is_ok());
        }
        let mut tc = t.config(&default_out)?;
        tc.command = Some(command.clone());
        let r = train_node_classifier(&ds, &cfg, &tc, a.optim.build::<f32>(optim_defaults)?)?;
        if a.json {
            outln!(
                "{}",
                serde_json::to_string(&r).map_err(|e| invalid!("json: {e}"))?
            )?;
        } else if r.test_acc.is_nan() {
            // Interrupted (the test split is evaluated once, at the end of a finished run), or
            // the data has no test nodes.
            outln!(
                "seed {seed}: {} after {} epochs ({:.2} s), no test accuracy ({}); best {} {:.4} after epoch {}; run folder {}",
                r.outcome,
                r.epochs_run,
                r.seconds,
                match r.outcome.as_str() {
                    "interrupted" => "it is evaluated once, when the run is resumed to its end",
                    _ => "the data has no test nodes",
                },
                r.monitor,
                match r.monitor.as_str() {
                    "val_loss" => r.best_val_loss,
                    _ => r.best_val_acc,
                },
                r.best_epoch,
                r.run_dir.display()
            )?;
        } else {
            outln!(
                "seed {seed}: test acc {:.4} of the best-validation model ({} {:.4} after epoch {}; {} epochs, {}, {:.2} s); run folder {}",
                r.test_acc,
                r.monitor,
                match r.monitor.as_str() {
                    "val_loss" => r.best_val_loss,
                    _ => r.best_val_acc,
                },
                r.best_epoch,
                r.epochs_run,
                r.outcome,
                r.seconds,
                r.run_dir.display()
            )?;
        }
        if !r.test_acc.is_nan() {
            accs.push(r.test_acc);
        }
    }
    let n = accs.len() as f64;
    let mean = accs.iter().sum::<f64>() / n;
    let std = (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
    if a.json {
        outln!(
            "{}",
            json!({"summary": true, "model": kind.name(), "dataset": ds.name, "seeds": accs.len(), "mean_test_acc": mean, "std_test_acc": std, "test_accs": accs})
        )?;
    } else if !accs.is_empty() {
        outln!(
            "mean test accuracy over {} seeds: {:.4} ± {:.4}",
            accs.len(),
            mean,
            std
        )?;
    }
    Ok(())
}

fn influence_cmd(a: &InfluenceArgs) -> Result<()> {
    let ds = load_dataset(a.data.as_deref(), a.seed)?;
    if a.node >= ds.num_nodes() {
        return Err(invalid!(
            "--node {} out of range for {} nodes",
            a.node,
            ds.num_nodes()
        ));
    }
    let real = influence(&ds.name, &ds.graph, a.node, a.layers, a.hidden, a.seed)?;
    let chain = chain_influence(a.chain.max(a.layers + 2), a.layers, a.hidden, a.seed)?;
    std::fs::create_dir_all(&a.out).map_err(|e| NablaError::io(&a.out, e))?;
    let v = json!({ "graph": real, "chain": chain });
    let text = serde_json::to_string_pretty(&v).map_err(|e| invalid!("json: {e}"))?;
    crate::io::atomic_write(a.out.join("influence.json"), text.as_bytes())?;
    plot_influence(&[real.clone(), chain.clone()], &a.out.join("influence.svg"))?;
    if a.json {
        outln!("{v}")?;
    } else {
        // Exact zeros as "0", not "0.000e0".
        let sci = |x: f64| {
            if x == 0.0 {
                "0".to_string()
            } else {
                format!("{x:.3e}")
            }
        };
        for r in [&real, &chain] {
            outln!(
                "{} node {} after L={} rounds: {} of {} nodes within reach ({} connected); largest influence beyond reach {}; complete graph would need {} edges (has {})",
                r.graph, r.target, r.layers, r.reachable, r.nodes, r.connected, sci(r.max_influence_beyond_reach), r.complete_graph_edges, r.edges
            )?;
            // Hops beyond L carry no influence (message passing cannot reach them): one line
            // for all of them unless one is not zero.
            let beyond: Vec<_> = r.by_hop.iter().filter(|h| h.hop > r.layers).collect();
            let collapse = beyond.len() > 1 && beyond.iter().all(|h| h.mean == 0.0);
            for h in &r.by_hop {
                if collapse && h.hop > r.layers {
                    continue;
                }
                outln!(
                    "  hop {:>2}: {:>5} nodes  mean {}  share {:.4}",
                    h.hop,
                    h.nodes,
                    sci(h.mean),
                    h.share
                )?;
            }
            if let (true, Some(first), Some(last)) = (collapse, beyond.first(), beyond.last()) {
                outln!(
                    "  hops {}-{}: {:>5} nodes  mean 0  share 0 (beyond L = {} hops)",
                    first.hop,
                    last.hop,
                    beyond.iter().map(|h| h.nodes).sum::<usize>(),
                    r.layers
                )?;
            }
        }
        outln!(
            "wrote {} and {}",
            a.out.join("influence.json").display(),
            a.out.join("influence.svg").display()
        )?;
    }
    Ok(())
}

pub fn run(cmd: &GnnCommand, typed: &Typed) -> Result<()> {
    match cmd {
        GnnCommand::Train(a) => train(a, typed),
        GnnCommand::Influence(a) => influence_cmd(a),
    }
}

#[cfg(test)]
mod tests {
    /// The flattened trainer/optimizer flags do not collide with the command's own.
    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        crate::cli::Cli::command().debug_assert();
    }
}
