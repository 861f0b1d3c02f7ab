//! `nabla vit …`: predict with a timm/nabla checkpoint, train, evaluate, analyse attention.

use crate::analysis::vit_attention::{
    attention_distance_sums, attention_rollout, plot_distances, write_rollout_png,
};
use crate::analysis::vit_embeddings::write_embedding_panels;
use crate::data::{self, BatchOptions};
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::vit::{argmax, ForwardOptions, Pool};
use crate::models::vit_task::{evaluate, load_model, saved_batch_options};
use crate::outln;
use crate::tensor::Tensor;
use crate::Tape;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VitCommand {
    /// Top-k classes with probabilities of PNG/JPEG images, an IDX file or a safetensors `x`,
    /// with the run's own normalization and class names.
    Predict(crate::cli::vit_predict::PredictArgs),
    /// Train a ViT (AdamW, warm-up + cosine, per-epoch validation, checkpoints, --resume DIR),
    /// or fine-tune one at another resolution (--finetune-from). Data-parallel under
    /// `mpirun -np N` (built with `--features mpi`): each rank computes its share of every
    /// --batch, same weights as one process, bit for bit; rank 0 writes the run folder.
    Train(Box<crate::cli::vit_train::VitTrainArgs>),
    /// Test accuracy and loss of a checkpoint on a data set.
    Eval(EvalArgs),
    /// Figure 7 of the ViT paper, one SVG + JSON per panel: principal components of the
    /// patch-embedding filters, position-embedding similarity, mean attention distance per
    /// head and layer; and attention-rollout PNGs.
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
    /// Principal components of the patch-embedding filters drawn (Figure 7, left).
    #[arg(long, default_value_t = 28)]
    pub components: usize,
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
    let opts = saved_batch_options(&a.checkpoint)
        .unwrap_or_else(|| batch_options(&splits.train, vit.cfg.image_size));
    let t0 = std::time::Instant::now();
    let (acc, loss) = evaluate(&vit, &store, &test, &opts, a.batch)?;
    print_eval(
        &test.name,
        test.len(),
        acc,
        loss,
        t0.elapsed().as_secs_f64(),
        a.json,
    )?;
    Ok(())
}

/// The result line of `vit eval` and `cnn eval` (`--json`: one object).
pub(crate) fn print_eval(
    data: &str,
    images: usize,
    acc: f64,
    loss: f64,
    secs: f64,
    as_json: bool,
) -> Result<()> {
    if as_json {
        outln!(
            "{}",
            json!({"data": data, "images": images, "accuracy": acc, "loss": loss, "seconds": secs})
        )?;
    } else {
        outln!("{data}: {images} images, accuracy {acc:.4}, loss {loss:.4} ({secs:.1} s)")?;
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
    let opts = saved_batch_options(&a.checkpoint)
        .unwrap_or_else(|| batch_options(&splits.train, vit.cfg.image_size));
    std::fs::create_dir_all(&a.out).map_err(|e| NablaError::io(&a.out, e))?;
    if a.components == 0 {
        return Err(invalid!("--components must be at least 1"));
    }
    let panels = write_embedding_panels(&store, &vit.cfg, &a.out, a.components)?;
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
    let ratios: Vec<String> = panels
        .pca
        .explained_variance_ratio
        .iter()
        .take(6)
        .map(|r| format!("{:.1}%", 100.0 * r))
        .collect();
    outln!(
        "patch-embedding PCA: {} components of {} filters; variance share of the first: {}",
        panels.pca.components.len(),
        panels.pca.filters,
        ratios.join(", ")
    )?;
    let near_far: Vec<String> = panels
        .by_distance
        .iter()
        .map(|(d, s, _)| format!("{d:.2}: {s:.3}"))
        .collect();
    outln!(
        "position-embedding similarity by grid distance (patches: mean cosine): {}",
        near_far.join(", ")
    )?;
    let names: Vec<String> = panels
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    outln!(
        "wrote {}, {}, {} and {rollout_done} rollout PNGs in {}",
        names.join(", "),
        jp.display(),
        sp.display(),
        a.out.display()
    )?;
    Ok(())
}

pub fn run(cmd: VitCommand, typed: &crate::cli::resume::Typed) -> Result<()> {
    match cmd {
        VitCommand::Predict(a) => crate::cli::vit_predict::predict(&a),
        VitCommand::Train(a) => crate::cli::vit_train::train(&a, typed),
        VitCommand::Eval(a) => eval(&a),
        VitCommand::Analyze(a) => analyze(&a),
    }
}
