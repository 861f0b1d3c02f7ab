//! `nabla vit …`: predict with a timm/nabla checkpoint, train, evaluate, analyse attention.

use crate::analysis::vit_attention::{
    attention_distance_sums, attention_rollout, plot_distances, write_rollout_png,
};
use crate::data::{self, BatchOptions};
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::vit::{argmax, ForwardOptions, Pool, Vit, VitConfig};
use crate::outln;
use crate::tensor::Tensor;
use crate::{ParamStore, Tape};
use clap::{Args, Subcommand};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum VitCommand {
    /// Top-k classes with probabilities of PNG/JPEG images, an IDX file or a safetensors `x`,
    /// with the run's own normalization and class names.
    Predict(crate::cli::vit_predict::PredictArgs),
    /// Train a ViT (AdamW, warm-up + cosine, per-epoch validation, checkpoints, resume).
    Train(Box<crate::cli::vit_train::TrainArgs>),
    /// Test accuracy and loss of a checkpoint on a data set.
    Eval(EvalArgs),
    /// Mean attention distance per head/layer (JSON + SVG plot) and attention-rollout PNGs.
    Analyze(AnalyzeArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data folder (MNIST-style IDX, CIFAR binaries, PNG folders); built-in synthetic set if omitted.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub pool: Option<Pool>,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub pool: Option<Pool>,
    /// Test images averaged over for the attention distances.
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    /// Images for which a rollout PNG is written.
    #[arg(long, default_value_t = 8)]
    pub rollouts: usize,
}

/// Locates the weights file and the saved configuration of a checkpoint argument: a
/// `.safetensors` file (with `state.json` next to it if it is a nabla checkpoint) or a nabla
/// checkpoint / run folder.
pub fn resolve_checkpoint(p: &Path) -> Result<(PathBuf, Option<VitConfig>)> {
    let file = if p.is_dir() {
        let c = [
            p.join("model.safetensors"),
            p.join("checkpoint/model.safetensors"),
        ]
        .into_iter()
        .find(|f| f.is_file())
        .ok_or_else(|| invalid!("{}: no model.safetensors in this folder", p.display()))?;
        c
    } else {
        p.to_path_buf()
    };
    let state = file.with_file_name("state.json");
    let mut cfg = None;
    if state.is_file() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).map_err(|e| NablaError::io(&state, e))?)
                .map_err(|e| NablaError::format(&state, e.to_string()))?;
        if let Some(mc) = v.get("model_config").and_then(|m| m.get("vit")) {
            // A saved configuration is checked as a whole before any of its sizes is used.
            let c = serde_json::from_value::<VitConfig>(mc.clone())
                .map_err(|e| NablaError::format(&state, format!("model_config.vit: {e}")))?;
            c.validate()
                .map_err(|e| NablaError::format(&state, format!("model_config.vit: {e}")))?;
            cfg = Some(c);
        }
    }
    Ok((file, cfg))
}

/// Loads a model: the saved configuration when there is one (flags must agree with it),
/// otherwise the architecture inferred from shapes plus `--heads`/`--pool`.
pub fn load_model(
    ckpt: &Path,
    heads: Option<usize>,
    pool: Option<Pool>,
) -> Result<(Vit, ParamStore<f32>)> {
    let (file, saved) = resolve_checkpoint(ckpt)?;
    let tensors: BTreeMap<String, Tensor<f32>> = crate::io::load_safetensors(&file)?;
    let cfg = match saved {
        Some(mut c) => {
            if let Some(h) = heads {
                if h != c.heads {
                    return Err(invalid!(
                        "--heads {h} does not match the checkpoint's {} heads",
                        c.heads
                    ));
                }
            }
            if let Some(p) = pool {
                c.pool = p;
            }
            c.dropout = 0.0;
            c
        }
        None => {
            let h = heads.ok_or_else(|| {
                invalid!(
                    "{}: --heads is needed (the head count is not visible in the tensor shapes)",
                    file.display()
                )
            })?;
            Vit::infer_config(&tensors, h, pool.unwrap_or(Pool::Cls))?
        }
    };
    Vit::from_tensors(&tensors, cfg).map_err(|e| match e {
        NablaError::Shape { msg, .. } => invalid!("{}: {msg}", file.display()),
        other => other,
    })
}

/// Normalization of the model's training data (saved config) or of the data's own statistics.
fn batch_options(ds: &data::ImageDataset, image_size: usize) -> BatchOptions {
    let (mean, std) = ds.channel_stats();
    BatchOptions {
        mean,
        std,
        image_size,
        crop_pad: 0,
        hflip: false,
    }
}

/// Accuracy and mean loss of `vit` on `ds` (no gradients kept).
pub fn evaluate(
    vit: &Vit,
    store: &ParamStore<f32>,
    ds: &data::ImageDataset,
    opts: &BatchOptions,
    batch: usize,
) -> Result<(f64, f64)> {
    if ds.channels != vit.cfg.in_chans {
        return Err(invalid!(
            "{} has {}-channel images, the model expects {} channels",
            ds.name,
            ds.channels,
            vit.cfg.in_chans
        ));
    }
    if ds.num_classes > vit.cfg.num_classes {
        return Err(invalid!(
            "{} has {} classes, the model's head has {}",
            ds.name,
            ds.num_classes,
            vit.cfg.num_classes
        ));
    }
    let (mut correct, mut loss) = (0usize, 0.0f64);
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = data::make_batch(ds, chunk, opts, None)?;
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        let out = vit.forward(&mut tape, store, xv, ForwardOptions::default())?;
        let l = crate::ops::cross_entropy(&mut tape, out.logits, &y, &Default::default())?;
        loss += tape.value(l).item() as f64 * chunk.len() as f64;
        let c = vit.cfg.num_classes;
        for (r, &t) in tape.value(out.logits).data().chunks(c).zip(&y) {
            correct += (argmax(r) == t) as usize;
        }
    }
    if ds.is_empty() {
        return Err(invalid!("{}: no images to evaluate", ds.name));
    }
    let n = ds.len() as f64;
    // Non-finite logits (weights that overflow on this data) make the loss NaN and argmax
    // meaningless: an error, never an accuracy printed with exit status 0.
    if !loss.is_finite() {
        return Err(NablaError::NonFinite(format!(
            "the mean loss of the model on {} is {}: its logits are not finite",
            ds.name,
            loss / n
        )));
    }
    Ok((correct as f64 / n, loss / n))
}

fn eval(a: &EvalArgs) -> Result<()> {
    let (vit, store) = load_model(&a.checkpoint, a.heads, a.pool)?;
    let splits = data::load(a.data.as_deref(), 0)?;
    let test = splits.test_or_err("vit eval")?;
    let test = match a.limit {
        Some(0) => {
            return Err(invalid!(
                "--limit must be at least 1 (the images to evaluate)"
            ))
        }
        Some(n) => test.take(n),
        None => test.clone(),
    };
    vit.cfg
        .memory(a.batch.min(test.len()), false)
        .check("vit eval")?;
    let opts = crate::cli::vit_train::saved_batch_options(&a.checkpoint)
        .unwrap_or_else(|| batch_options(&splits.train, vit.cfg.image_size));
    let t0 = std::time::Instant::now();
    let (acc, loss) = evaluate(&vit, &store, &test, &opts, a.batch)?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        outln!(
            "{}",
            json!({"data": test.name, "images": test.len(), "accuracy": acc, "loss": loss, "seconds": secs})
        )?;
    } else {
        outln!(
            "{}: {} images, accuracy {:.4}, loss {:.4} ({secs:.1} s)",
            test.name,
            test.len(),
            acc,
            loss
        )?;
    }
    Ok(())
}

fn analyze(a: &AnalyzeArgs) -> Result<()> {
    let (vit, store) = load_model(&a.checkpoint, a.heads, a.pool)?;
    vit.cfg.memory(128, false).check("vit analyze")?;
    let splits = data::load(a.data.as_deref(), 0)?;
    let test = splits
        .test_or_err("vit analyze")?
        .take(a.images.max(a.rollouts).max(1));
    let opts = crate::cli::vit_train::saved_batch_options(&a.checkpoint)
        .unwrap_or_else(|| batch_options(&splits.train, vit.cfg.image_size));
    std::fs::create_dir_all(&a.out).map_err(|e| NablaError::io(&a.out, e))?;
    let (grid, patch, depth, heads) = (vit.cfg.grid(), vit.cfg.patch, vit.cfg.depth, vit.cfg.heads);
    let mut sums = vec![vec![0.0f64; heads]; depth];
    let mut count = 0usize;
    let mut rollout_done = 0usize;
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(128) {
        let (x, _) = data::make_batch(&test, chunk, &opts, None)?;
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x);
        let fo = ForwardOptions {
            need_attn: true,
            ..Default::default()
        };
        let out = vit.forward(&mut tape, &store, xv, fo)?;
        let attn: Vec<Tensor<f32>> = out.attn.iter().map(|&v| tape.value(v).clone()).collect();
        let logits = tape.value(out.logits); // (B, classes)
        for (l, at) in attn.iter().enumerate() {
            let (s, c) = attention_distance_sums(at, grid, patch)?;
            for h in 0..heads {
                sums[l][h] += s[h];
            }
            if l == 0 {
                count += c;
            }
        }
        if rollout_done < a.rollouts {
            let maps = attention_rollout(&attn)?;
            let raw_opts = BatchOptions {
                mean: vec![0.0; test.channels],
                std: vec![1.0; test.channels],
                ..opts.clone()
            };
            let (raw, labels) = data::make_batch(&test, chunk, &raw_opts, None)?;
            let s = vit.cfg.image_size;
            let per = test.channels * s * s;
            let classes = logits.dim(-1);
            for (k, map) in maps.iter().enumerate().take(a.rollouts - rollout_done) {
                let p = a.out.join(format!(
                    "rollout_{:03}_label{}.png",
                    rollout_done + k,
                    labels[k]
                ));
                let row = &logits.data()[k * classes..(k + 1) * classes];
                let pred = argmax(row);
                // Softmax probability of the predicted class, shifted by the row maximum.
                let z: f64 = row.iter().map(|&v| ((v - row[pred]) as f64).exp()).sum();
                let title = format!(
                    "test image {}: label {}, predicted {} (p = {:.3})",
                    rollout_done + k,
                    labels[k],
                    pred,
                    1.0 / z
                );
                write_rollout_png(
                    &p,
                    &title,
                    &raw.data()[k * per..(k + 1) * per],
                    test.channels,
                    s,
                    map,
                    grid,
                    8,
                )?;
            }
            rollout_done += maps.len().min(a.rollouts - rollout_done);
        }
    }
    let per_layer: Vec<Vec<f64>> = sums
        .iter()
        .map(|hs| hs.iter().map(|s| s / count.max(1) as f64).collect())
        .collect();
    let report = json!({
        "checkpoint": a.checkpoint.display().to_string(),
        "data": test.name,
        "images": test.len(),
        "image_size": vit.cfg.image_size,
        "patch": patch,
        "definition": "per head: mean over images and query patches of sum_j a_ij * dist(i, j) / sum_j a_ij over patch keys (class token excluded), distance between patch centres in pixels",
        "mean_attention_distance": per_layer,
        "layer_mean": per_layer.iter().map(|h| h.iter().sum::<f64>() / h.len() as f64).collect::<Vec<_>>(),
        "rollout_pngs": rollout_done,
    });
    let jp = a.out.join("attention_distance.json");
    crate::io::atomic_write(
        &jp,
        serde_json::to_string_pretty(&report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let sp = a.out.join("attention_distance.svg");
    plot_distances(&sp, &per_layer, vit.cfg.image_size)?;
    outln!(
        "mean attention distance (pixels; {} images of {}×{}, patch {patch}) per layer and head:",
        test.len(),
        vit.cfg.image_size,
        vit.cfg.image_size
    )?;
    let head_cols: String = (0..heads)
        .map(|h| format!(" {:>7}", format!("head {h}")))
        .collect();
    outln!("{:>5}{head_cols} {:>7}", "layer", "mean")?;
    for (l, hs) in per_layer.iter().enumerate() {
        let cells: String = hs.iter().map(|d| format!(" {d:>7.2}")).collect();
        let mean = hs.iter().sum::<f64>() / hs.len().max(1) as f64;
        outln!("{:>5}{cells} {mean:>7.2}", l + 1)?;
    }
    outln!(
        "wrote {}, {} and {rollout_done} rollout PNGs in {}",
        jp.display(),
        sp.display(),
        a.out.display()
    )?;
    Ok(())
}

pub fn run(cmd: VitCommand) -> Result<()> {
    match cmd {
        VitCommand::Predict(a) => crate::cli::vit_predict::predict(&a),
        VitCommand::Train(a) => crate::cli::vit_train::train(&a),
        VitCommand::Eval(a) => eval(&a),
        VitCommand::Analyze(a) => analyze(&a),
    }
}
