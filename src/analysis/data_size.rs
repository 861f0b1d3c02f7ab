//! The data-size study of Dosovitskiy et al. (2020), Figures 3–4, at laptop scale: a ViT and a
//! ResNet of about the same parameter count trained on the first `n` training images for each
//! `n`, evaluated on the full test set, and (`transfer`) the same ViT fine-tuned from a
//! checkpoint pre-trained on another data set. The claim under test: without the CNN's
//! image-specific inductive bias (locality, translation equivariance) the ViT needs more data
//! to reach the ResNet, and pre-training narrows the gap.
//!
//! **Equal optimizer steps per point.** Every point (model, `n`, seed) runs the same number of
//! steps of the same batch size, so every model sees the same number of training examples and
//! the data size is the only thing that changes along a line; small `n` means many epochs,
//! which is where overfitting shows. Equal CPU time was the alternative: it would hand the
//! cheaper model (here the ViT, with several times fewer FLOPs per image) more steps, and wall
//! time on a shared machine is not reproducible, so the same command would not give the same
//! numbers. The FLOPs per image and the train seconds are recorded with every row, so the
//! difference in compute is in the open. `budget_minutes` does not change this: it picks the
//! one step count for all points from a timed calibration so that the whole study fits.
//!
//! Each point is a run of the shared [`Trainer`] on the model's own task
//! ([`crate::models::vit_task`], …) with the command's own optimizer and schedule defaults, in
//! `OUT/runs/<model>_n<n>_seed<s>/`; validation is the last `val_size` training images (carved
//! off before the first `n` are taken, so never trained on), evaluated once at the end; the test
//! set is evaluated once, on the final weights. `study.json` is rewritten (atomically) after
//! every point, and a rerun of the same study skips the points it already holds and resumes an
//! interrupted point from its checkpoint.

use crate::cli::{cnn, vit_train};
use crate::data;
use crate::errln;
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::cnn_task::{self, build_task as build_cnn_task, CnnTask, CnnTaskConfig};
use crate::models::resample::Interp;
use crate::models::resnet::{BlockKind, Stem};
use crate::models::vit::{Pool, Vit, VitConfig};
use crate::models::vit_task::{build_task, resolve_checkpoint, VitTask, VitTaskConfig};
use crate::plot::{write_charts, Axis, Chart, Mark, Series};
use crate::train::{
    AnyOptimizer, ImageDataArgs, OptimArgs, ProgressMode, TrainArgs, TrainConfig, TrainDefaults,
    TrainModel, Trainer,
};
use crate::ParamStore;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Format tag of `study.json`.
pub const STUDY_FORMAT: &str = "nabla-data-size-study/1";

/// A model of the study.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudyModel {
    /// The ViT from scratch.
    Vit,
    /// The same ViT fine-tuned from the `transfer` checkpoint.
    VitTransfer,
    /// The ResNet of `cnn train` (small-image stem, BasicBlocks).
    Resnet,
}

impl StudyModel {
    pub fn name(self) -> &'static str {
        match self {
            StudyModel::Vit => "vit",
            StudyModel::VitTransfer => "vit-transfer",
            StudyModel::Resnet => "resnet",
        }
    }
    /// How the plot's legend names it.
    fn label(self) -> &'static str {
        match self {
            StudyModel::Vit => "ViT (from scratch)",
            StudyModel::VitTransfer => "ViT (pre-trained, fine-tuned)",
            StudyModel::Resnet => "ResNet (from scratch)",
        }
    }
}

impl std::str::FromStr for StudyModel {
    type Err = NablaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vit" => Ok(StudyModel::Vit),
            "resnet" => Ok(StudyModel::Resnet),
            _ => Err(invalid!(
                "unknown study model {s:?}: the models are vit and resnet (vit-transfer comes with --transfer)"
            )),
        }
    }
}

/// A training-set size: a count, or every training image (`all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Size {
    N(usize),
    All,
}

/// Parses `--sizes`: comma-separated counts and `all`, e.g. `500,2000,10000,all` (sorted,
/// duplicates dropped). An empty list, a zero or a non-number is an error.
pub fn parse_sizes(s: &str) -> Result<Vec<Size>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        if part.is_empty() {
            continue;
        }
        let size = if part.eq_ignore_ascii_case("all") {
            Size::All
        } else {
            match part.replace('_', "").parse::<usize>() {
                Ok(0) => {
                    return Err(invalid!(
                        "--sizes: a training set of 0 images cannot be trained on"
                    ))
                }
                Ok(n) => Size::N(n),
                Err(_) => {
                    return Err(invalid!(
                        "--sizes: {part:?} is not a number of images (give e.g. 500,2000,10000,all)"
                    ))
                }
            }
        };
        out.push(size);
    }
    if out.is_empty() {
        return Err(invalid!(
            "--sizes is empty: give at least one training-set size, e.g. 500,2000,10000,all"
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The ViT of the study (the flags of `vit train` it varies).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitArch {
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
}

impl Default for VitArch {
    /// `vit train`'s defaults: patch 7, width 64, 4 blocks of 4 heads, MLP 128 (139,018
    /// parameters on 28×28 grey images with 10 classes).
    fn default() -> Self {
        VitArch {
            patch: 7,
            dim: 64,
            depth: 4,
            heads: 4,
            mlp_dim: 128,
        }
    }
}

/// The ResNet of the study (the flags of `cnn train` it varies; BasicBlocks, small-image stem).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResnetArch {
    pub layers: Vec<usize>,
    pub channels: Vec<usize>,
    pub stem_width: usize,
}

impl Default for ResnetArch {
    /// `cnn train`'s defaults: stages `[1, 1, 1]` of widths `[16, 32, 64]`, a 16-wide 3×3
    /// stem.
    fn default() -> Self {
        ResnetArch {
            layers: cnn_task::DEFAULT_LAYERS.to_vec(),
            channels: cnn_task::DEFAULT_CHANNELS.to_vec(),
            stem_width: cnn_task::DEFAULT_STEM_WIDTH,
        }
    }
}

/// Everything a study needs.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyConfig {
    /// Data folder; `None`: the built-in synthetic shapes (tests).
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    pub sizes: Vec<Size>,
    /// Seeds 0..seeds for every point.
    pub seeds: u64,
    pub models: Vec<StudyModel>,
    /// Optimizer steps of every point (`None`: from `budget_minutes`).
    pub steps: Option<u64>,
    /// Wall-clock budget of the whole study, in minutes: picks `steps` by calibration.
    pub budget_minutes: Option<f64>,
    pub batch: usize,
    /// Validation images carved from the end of the training set (not trained on).
    pub val_size: usize,
    pub vit: VitArch,
    pub resnet: ResnetArch,
    /// A ViT run folder / checkpoint pre-trained on another data set: adds `vit-transfer`.
    pub transfer: Option<PathBuf>,
    pub progress: ProgressMode,
}

/// The settings a study's rows depend on: a rerun with other settings is another study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudySettings {
    pub data: String,
    /// Training images available (the training set minus the validation images).
    pub train_images: usize,
    pub test_images: usize,
    pub val_size: usize,
    pub steps: u64,
    pub batch: usize,
    /// How the steps were chosen ("--steps", "--quick", or the budget's calibration).
    pub steps_from: String,
    pub vit: VitArch,
    pub resnet: ResnetArch,
    /// The `transfer` checkpoint and the data it was trained on.
    pub transfer: Option<TransferSource>,
    /// How a point is trained and evaluated, in words.
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferSource {
    pub checkpoint: String,
    pub pretrained_on: String,
    pub head: String,
}

/// One trained point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    pub model: StudyModel,
    /// Training images (the first `n` of the training set).
    pub n: usize,
    pub seed: u64,
    pub test_acc: f64,
    pub test_loss: f64,
    pub params: usize,
    /// Forward FLOPs for one image (2 × multiply-adds).
    pub flops_per_image: f64,
    /// Wall-clock seconds of training (without the final test).
    pub train_seconds: f64,
    pub steps: u64,
    /// Passes over the `n` images: `steps · batch / n`.
    pub epochs: f64,
    /// The last logged training loss and the validation accuracy at the end.
    pub train_loss: f64,
    pub val_acc: f64,
}

/// Mean and spread over the seeds of one (model, n).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub model: StudyModel,
    pub n: usize,
    pub seeds: usize,
    pub mean_test_acc: f64,
    pub min_test_acc: f64,
    pub max_test_acc: f64,
}

/// `study.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyFile {
    pub format: String,
    pub settings: StudySettings,
    pub sizes: Vec<usize>,
    pub seeds: u64,
    pub rows: Vec<StudyRow>,
    pub summary: Vec<SummaryRow>,
}

impl StudyFile {
    fn has(&self, m: StudyModel, n: usize, seed: u64) -> bool {
        self.rows
            .iter()
            .any(|r| r.model == m && r.n == n && r.seed == seed)
    }
    /// Mean, min and max test accuracy over the seeds of each (model, n), in that order.
    pub fn summarize(&self) -> Vec<SummaryRow> {
        let mut keys: Vec<(StudyModel, usize)> = self.rows.iter().map(|r| (r.model, r.n)).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|(model, n)| {
                let accs: Vec<f64> = self
                    .rows
                    .iter()
                    .filter(|r| r.model == model && r.n == n)
                    .map(|r| r.test_acc)
                    .collect();
                SummaryRow {
                    model,
                    n,
                    seeds: accs.len(),
                    mean_test_acc: accs.iter().sum::<f64>() / accs.len() as f64,
                    min_test_acc: accs.iter().copied().fold(f64::INFINITY, f64::min),
                    max_test_acc: accs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                }
            })
            .collect()
    }
}

/// Reads a `study.json`.
pub fn read_study(path: &Path) -> Result<StudyFile> {
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    let s: StudyFile =
        serde_json::from_slice(&bytes).map_err(|e| NablaError::format(path, e.to_string()))?;
    if s.format != STUDY_FORMAT {
        return Err(NablaError::format(
            path,
            format!("format {:?}, expected {STUDY_FORMAT:?}", s.format),
        ));
    }
    Ok(s)
}

/// What [`run_study`] returns.
#[derive(Clone, Debug)]
pub struct StudyOutcome {
    pub study: StudyFile,
    pub json: PathBuf,
    pub plot: PathBuf,
    /// Points trained in this session and points found in `study.json`.
    pub trained: usize,
    pub skipped: usize,
    /// A point was interrupted (a stop signal): rerunning continues it.
    pub interrupted: bool,
}

/// The ViT task of one point (from scratch or fine-tuned).
fn vit_task(c: &StudyConfig, model: StudyModel, n: usize, seed: u64) -> Result<VitTask> {
    let a = &c.vit;
    let cfg = VitTaskConfig {
        data: c.data.clone(),
        val_size: Some(c.val_size),
        image_size: None,
        patch: a.patch,
        dim: a.dim,
        depth: a.depth,
        heads: a.heads,
        mlp_dim: a.mlp_dim,
        pool: Pool::Cls,
        batch: c.batch.min(n),
        label_smoothing: 0.1,
        dropout: 0.0,
        crop_pad: 2,
        hflip: true,
        seed,
        train_limit: Some(n),
        eval_limit: None,
        finetune_from: if model == StudyModel::VitTransfer {
            c.transfer.clone()
        } else {
            None
        },
        pos_interp: Interp::Bicubic,
        finetune_heads: Some(a.heads),
    };
    let mut task = build_task(&cfg)?;
    if model == StudyModel::VitTransfer {
        let got = &task.vit.cfg;
        let same = (got.patch, got.dim, got.depth, got.heads, got.mlp_dim)
            == (a.patch, a.dim, a.depth, a.heads, a.mlp_dim);
        if !same {
            return Err(invalid!(
                "--transfer checkpoint is a ViT with patch {} dim {} depth {} heads {} mlp {}, the study's ViT has patch {} dim {} depth {} heads {} mlp {}: the fine-tuned and the from-scratch ViT must be the same model (pass the checkpoint's sizes with --vit-*)",
                got.patch, got.dim, got.depth, got.heads, got.mlp_dim, a.patch, a.dim, a.depth, a.heads, a.mlp_dim
            ));
        }
        fresh_head(&mut task, seed)?;
    }
    Ok(task)
}

/// Re-initializes the classifier head as a fresh model of the task's configuration has it:
/// the pre-trained head classifies the other data set's classes, which are other things even
/// when their number is the same (MNIST digits, Fashion-MNIST garments), so it is never kept.
fn fresh_head(task: &mut VitTask, seed: u64) -> Result<()> {
    let mut fresh = ParamStore::<f32>::new();
    Vit::init(task.vit.cfg.clone(), &mut fresh, seed)?;
    for name in ["head.weight", "head.bias"] {
        let id = task
            .store
            .find(name)
            .ok_or_else(|| invalid!("the fine-tuned ViT has no {name}"))?;
        task.store.get_mut(id).value = fresh.by_name(name)?.value.clone();
    }
    Ok(())
}

/// Forward FLOPs per image of a model of the study (2 × multiply-adds).
fn vit_flops(vit: &VitConfig) -> f64 {
    2.0 * vit.forward_macs()
}

/// The trainer configuration of a point: `vit train`'s defaults (cosine schedule to 1% of the
/// rate) with the study's length, a warm-up of a tenth of the steps (at most the command's),
/// one validation at the end, no plot.
fn point_config(
    c: &StudyConfig,
    defaults: &TrainDefaults,
    lr: f64,
    steps: u64,
    seed: u64,
    dir: &Path,
) -> Result<TrainConfig> {
    let resume = dir.join("checkpoint").join("state.json").is_file();
    let mut a = TrainArgs {
        out: Some(dir.to_path_buf()),
        resume: resume.then(|| dir.to_path_buf()),
        overwrite: !resume,
        seed,
        steps: Some(steps),
        eval_every: Some(steps),
        log_every: (steps / 20).max(1),
        warmup: Some(defaults.warmup.min(steps / 10)),
        quiet: c.progress == ProgressMode::Quiet,
        plain: c.progress == ProgressMode::Plain,
        plot: crate::train::PlotFormat::None,
        step_size: 1000,
        gamma: 0.1,
        ..TrainArgs::default()
    };
    a.fill_defaults(defaults, lr);
    a.config(&defaults.out)
}

/// The ResNet task of one point.
fn resnet_task(c: &StudyConfig, n: usize, seed: u64) -> Result<CnnTask> {
    build_cnn_task(&CnnTaskConfig {
        data: ImageDataArgs {
            data: c.data.clone(),
            val_size: Some(c.val_size),
            image_size: None,
            batch: c.batch.min(n),
            label_smoothing: 0.1,
            crop_pad: 2,
            hflip: true,
            train_limit: Some(n),
            eval_limit: None,
        },
        block: BlockKind::Basic,
        layers: c.resnet.layers.clone(),
        channels: c.resnet.channels.clone(),
        stem_width: c.resnet.stem_width,
        stem: Stem::Small,
        seed,
    })
}

/// The optimizer of each model: its command's default (`vit train`: AdamW 2e-3, weight decay
/// 0.05; `cnn train`: SGD with Nesterov momentum 0.9, 0.1, weight decay 5e-4), the command's
/// trainer defaults and its base rate.
fn optimizer(model: StudyModel) -> Result<(AnyOptimizer<f32>, TrainDefaults, f64)> {
    Ok(match model {
        StudyModel::Vit | StudyModel::VitTransfer => (
            OptimArgs::default().build::<f32>(vit_train::OPTIM_DEFAULTS)?,
            vit_train::train_defaults(),
            vit_train::OPTIM_DEFAULTS.lr,
        ),
        StudyModel::Resnet => (
            OptimArgs {
                nesterov: true,
                ..OptimArgs::default()
            }
            .build::<f32>(cnn::OPTIM_DEFAULTS)?,
            cnn::train_defaults(),
            cnn::OPTIM_DEFAULTS.lr,
        ),
    })
}

/// Trains one point on the shared trainer; `None` when it was interrupted. `cost` is
/// (parameters, forward FLOPs per image, batch).
#[allow(clippy::too_many_arguments)]
fn fit_point<M: TrainModel<f32>>(
    c: &StudyConfig,
    task: &mut M,
    cost: (usize, f64, usize),
    model: StudyModel,
    n: usize,
    seed: u64,
    steps: u64,
    dir: &Path,
) -> Result<Option<StudyRow>> {
    let (opt, defaults, lr) = optimizer(model)?;
    let cfg = point_config(c, &defaults, lr, steps, seed, dir)?;
    let summary = Trainer::new(cfg, opt).fit(task)?;
    if summary.outcome == crate::train::Outcome::Interrupted {
        return Ok(None);
    }
    let t = summary.test.as_ref().ok_or_else(|| {
        invalid!("the data has no test split: the study evaluates every point on the test set")
    })?;
    let metric = |k: &str| t.metrics.get(k).copied().unwrap_or(f64::NAN);
    let last = summary.last.as_ref();
    let (params, flops, batch) = cost;
    Ok(Some(StudyRow {
        model,
        n,
        seed,
        test_acc: metric("test_acc"),
        test_loss: metric("test_loss"),
        params,
        flops_per_image: flops,
        train_seconds: summary.wall_time_s,
        steps: summary.step,
        epochs: summary.step as f64 * batch as f64 / n as f64,
        train_loss: last.map_or(f64::NAN, |l| l.train_loss),
        val_acc: last
            .and_then(|l| l.metrics.get("val_acc").copied())
            .unwrap_or(f64::NAN),
    }))
}

/// Trains one point; `None` when it was interrupted.
fn train_point(
    c: &StudyConfig,
    model: StudyModel,
    n: usize,
    seed: u64,
    steps: u64,
    dir: &Path,
) -> Result<Option<StudyRow>> {
    match model {
        StudyModel::Vit | StudyModel::VitTransfer => {
            let mut t = vit_task(c, model, n, seed)?;
            let cost = (
                t.store.num_elements(),
                vit_flops(&t.vit.cfg),
                t.sampler.batch_size(),
            );
            fit_point(c, &mut t, cost, model, n, seed, steps, dir)
        }
        StudyModel::Resnet => {
            let mut t = resnet_task(c, n, seed)?;
            let cost = (t.num_params(), t.flops_per_image(), t.sampler.batch_size());
            fit_point(c, &mut t, cost, model, n, seed, steps, dir)
        }
    }
}

/// Seconds per optimizer step of `task` (median of three, after one warm-up) and seconds to
/// evaluate `test_images` (from the time of one validation pass over `val_images`).
fn time_task<M: TrainModel<f32>>(
    task: &mut M,
    mut opt: AnyOptimizer<f32>,
    val_images: usize,
    test_images: usize,
) -> Result<(f64, f64)> {
    let mut rng = crate::init::Rng::new(0);
    let mut times = Vec::new();
    for step in 0..4 {
        let t0 = Instant::now();
        task.params_mut().zero_grad();
        task.train_step(step, &mut rng)?;
        crate::optim::Optimizer::step(&mut opt, task.params_mut())?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    let t0 = Instant::now();
    task.evaluate()?;
    let eval_s = t0.elapsed().as_secs_f64() * test_images as f64 / val_images.max(1) as f64;
    Ok((times[1], eval_s))
}

/// [`time_task`] of `model` on `n` images.
fn calibrate(
    c: &StudyConfig,
    model: StudyModel,
    n: usize,
    test_images: usize,
) -> Result<(f64, f64)> {
    let (opt, _, _) = optimizer(model)?;
    match model {
        StudyModel::Vit | StudyModel::VitTransfer => {
            let mut t = vit_task(c, model, n, 0)?;
            let v = t.val.len();
            time_task(&mut t, opt, v, test_images)
        }
        StudyModel::Resnet => {
            let mut t = resnet_task(c, n, 0)?;
            let v = t.data.val.len();
            time_task(&mut t, opt, v, test_images)
        }
    }
}

/// Rows of `points` in the order they are trained: sizes ascending, then seeds, then models.
fn points(c: &StudyConfig, sizes: &[usize]) -> Vec<(StudyModel, usize, u64)> {
    let mut models = c.models.clone();
    if c.transfer.is_some() && !models.contains(&StudyModel::VitTransfer) {
        models.push(StudyModel::VitTransfer);
    }
    let mut v = Vec::new();
    for &n in sizes {
        for seed in 0..c.seeds {
            for &m in &models {
                v.push((m, n, seed));
            }
        }
    }
    v
}

/// The sizes as image counts, checked against the `available` training images.
pub fn resolve_sizes(
    sizes: &[Size],
    available: usize,
    data: &str,
    val: usize,
) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for s in sizes {
        let n = match *s {
            Size::All => available,
            Size::N(n) if n > available => {
                return Err(invalid!(
                    "--sizes {n} is more than the {available} training images of {data} ({} minus the {val} validation images carved from the end; --val-size changes that, `all` takes every one)",
                    available + val
                ))
            }
            Size::N(n) => n,
        };
        out.push(n);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn write_study(path: &Path, s: &StudyFile) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(s).map_err(|e| invalid!("study.json: {e}"))?;
    crate::io::atomic_write(path, &bytes)
}

/// Runs (or continues) the study in `c.out`.
pub fn run_study(c: &StudyConfig) -> Result<StudyOutcome> {
    if c.sizes.is_empty() {
        return Err(invalid!(
            "--sizes is empty: give at least one training-set size"
        ));
    }
    if c.seeds == 0 {
        return Err(invalid!("--seeds must be at least 1"));
    }
    if c.batch == 0 {
        return Err(invalid!("--batch must be at least 1"));
    }
    if c.models.is_empty() {
        return Err(invalid!("--models is empty"));
    }
    if let Some(m) = c.budget_minutes {
        if !(m > 0.0 && m.is_finite()) {
            return Err(invalid!(
                "--budget-minutes must be a positive number, got {m}"
            ));
        }
    }
    if c.steps == Some(0) {
        return Err(invalid!("--steps must be positive"));
    }
    if let Some(d) = &c.data {
        if !d.is_dir() {
            return Err(invalid!("--data {}: no such folder", d.display()));
        }
    }
    // The data once, for the sizes and the settings (each point loads its own task).
    let splits = data::load(c.data.as_deref(), 0)?;
    let test = splits
        .test
        .as_ref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            invalid!(
                "{}: no test split; the study evaluates every point on the test set",
                splits.train.name
            )
        })?;
    let (train, _) = splits.train.split_off_val(c.val_size)?;
    let data_name = splits.train.name.trim_end_matches("/train").to_string();
    let sizes = resolve_sizes(&c.sizes, train.len(), &data_name, c.val_size)?;
    let transfer = match &c.transfer {
        None => None,
        Some(p) => {
            let (file, _) = resolve_checkpoint(p)?;
            let pretrained_on =
                vit_task_data_of(&file).unwrap_or_else(|| "unknown (no state.json)".into());
            Some(TransferSource {
                checkpoint: file.display().to_string(),
                pretrained_on,
                head: "re-initialized (the other data set's classes are other things, whatever their number)".into(),
            })
        }
    };
    std::fs::create_dir_all(&c.out).map_err(|e| NablaError::io(&c.out, e))?;
    let json_path = c.out.join("study.json");
    let previous = if json_path.is_file() {
        Some(read_study(&json_path)?)
    } else {
        None
    };
    let all_points = points(c, &sizes);
    let (steps, steps_from) = match (c.steps, c.budget_minutes, &previous) {
        (Some(s), _, _) => (s, "--steps".to_string()),
        (None, Some(_), Some(p)) => {
            errln!(
                "note {} exists: its {} steps per point are kept (the budget is not recalibrated)",
                json_path.display(),
                p.settings.steps
            );
            (p.settings.steps, p.settings.steps_from.clone())
        }
        (None, Some(m), None) => {
            let s = budget_steps(c, &all_points, m, test.len())?;
            (s, format!("--budget-minutes {m} (calibrated)"))
        }
        (None, None, _) => return Err(invalid!("give --steps N or --budget-minutes M")),
    };
    let settings = StudySettings {
        data: data_name.clone(),
        train_images: train.len(),
        test_images: test.len(),
        val_size: c.val_size,
        steps,
        batch: c.batch,
        steps_from,
        vit: c.vit.clone(),
        resnet: c.resnet.clone(),
        transfer,
        protocol: "every point: the first n training images, the same number of optimizer steps of the same batch (min(batch, n)), each model's own optimizer and schedule defaults (warm-up a tenth of the steps at most), crop-pad 2 augmentation, label smoothing 0.1; validation on the last val_size training images once at the end; test accuracy of the final weights on the full test set".into(),
    };
    let mut study = match previous {
        Some(p) => {
            // `steps_from` says how, not what: a budget that gave the same steps is the same study.
            let same = StudySettings {
                steps_from: p.settings.steps_from.clone(),
                ..settings.clone()
            };
            if p.settings != same {
                return Err(invalid!(
                    "{} holds a study with other settings ({}); continue it with the same flags, or choose another --out",
                    json_path.display(),
                    settings_diff(&p.settings, &same)
                ));
            }
            p
        }
        None => StudyFile {
            format: STUDY_FORMAT.into(),
            settings,
            sizes: Vec::new(),
            seeds: 0,
            rows: Vec::new(),
            summary: Vec::new(),
        },
    };
    study.sizes.extend(&sizes);
    study.sizes.sort();
    study.sizes.dedup();
    study.seeds = study.seeds.max(c.seeds);
    let todo: Vec<_> = all_points
        .iter()
        .filter(|&&(m, n, s)| !study.has(m, n, s))
        .copied()
        .collect();
    let skipped = all_points.len() - todo.len();
    if skipped > 0 {
        errln!(
            "{skipped} of {} points already in {}: skipped",
            all_points.len(),
            json_path.display()
        );
    }
    let plot_path = c.out.join("study.svg");
    let t_study = Instant::now();
    let mut trained = 0;
    let mut interrupted = false;
    for (k, &(m, n, seed)) in todo.iter().enumerate() {
        let dir = c
            .out
            .join("runs")
            .join(format!("{}_n{n}_seed{seed}", m.name()));
        errln!(
            "[{}/{}] {} on the first {n} images, seed {seed}: {steps} steps",
            k + 1,
            todo.len(),
            m.name()
        );
        let Some(row) = train_point(c, m, n, seed, steps, &dir)? else {
            interrupted = true;
            errln!(
                "study interrupted: the points done are in {}; the same command continues (this point from its checkpoint)",
                json_path.display()
            );
            break;
        };
        trained += 1;
        let elapsed = t_study.elapsed().as_secs_f64();
        let eta = elapsed / trained as f64 * (todo.len() - trained) as f64;
        errln!(
            "[{}/{}] {} n={n} seed {seed}: test accuracy {:.4} ({:.1} epochs, {:.0} s; study: {:.0} s so far, about {:.0} s to go)",
            k + 1,
            todo.len(),
            m.name(),
            row.test_acc,
            row.epochs,
            row.train_seconds,
            elapsed,
            eta
        );
        study.rows.push(row);
        study.rows.sort_by_key(|r| (r.model, r.n, r.seed));
        study.summary = study.summarize();
        write_study(&json_path, &study)?;
        plot_study(&plot_path, &study)?;
    }
    study.summary = study.summarize();
    write_study(&json_path, &study)?;
    plot_study(&plot_path, &study)?;
    Ok(StudyOutcome {
        study,
        json: json_path,
        plot: plot_path,
        trained,
        skipped,
        interrupted,
    })
}

/// The data set a nabla ViT checkpoint was trained on (its saved model configuration).
fn vit_task_data_of(file: &Path) -> Option<String> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.with_file_name("state.json")).ok()?).ok()?;
    Some(v.get("model_config")?.get("data")?.as_str()?.to_string())
}

/// The fields in which two settings differ, as `name: old → new`.
fn settings_diff(old: &StudySettings, new: &StudySettings) -> String {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return String::new();
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} → {}", b.get(k).cloned().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Steps per point so that `points` fit in `minutes`, from a timed calibration of each model.
fn budget_steps(
    c: &StudyConfig,
    points: &[(StudyModel, usize, u64)],
    minutes: f64,
    test_images: usize,
) -> Result<u64> {
    let mut models: Vec<StudyModel> = points.iter().map(|p| p.0).collect();
    models.sort();
    models.dedup();
    let n0 = points.iter().map(|p| p.1).min().unwrap_or(1);
    let mut per_step = 0.0;
    let mut fixed = 0.0;
    for m in models {
        let (step_s, eval_s) = calibrate(c, m, n0, test_images)?;
        let count = points.iter().filter(|p| p.0 == m).count() as f64;
        errln!(
            "calibration: {} {:.3} s per step, {:.1} s per test evaluation ({} points)",
            m.name(),
            step_s,
            eval_s,
            count
        );
        per_step += count * step_s;
        // The test evaluation, loading the data and writing the run folder: a second or two.
        fixed += count * (eval_s + 2.0);
    }
    let left = minutes * 60.0 - fixed;
    let steps = (left / per_step).floor();
    if steps < 10.0 {
        return Err(invalid!(
            "--budget-minutes {minutes}: the {} points need about {:.1} minutes for their test evaluations and setup alone, and {:.2} minutes per 10 steps; give a larger budget or fewer sizes/seeds",
            points.len(),
            fixed / 60.0,
            10.0 * per_step / 60.0
        ));
    }
    Ok(steps as u64)
}

/// Test accuracy against training-set size (log x), one line per model through the mean over
/// seeds, with min–max error bars.
pub fn plot_study(path: &Path, s: &StudyFile) -> Result<()> {
    let summary = s.summarize();
    let mut models: Vec<StudyModel> = summary.iter().map(|r| r.model).collect();
    models.dedup();
    let series = models
        .iter()
        .map(|&m| {
            let rows: Vec<&SummaryRow> = summary.iter().filter(|r| r.model == m).collect();
            let params = s.rows.iter().find(|r| r.model == m).map_or(0, |r| r.params);
            Series::new(
                format!("{} · {}k params", m.label(), (params + 500) / 1000),
                rows.iter().map(|r| (r.n as f64, r.mean_test_acc)).collect(),
                Mark::LinePoints,
            )
            .with_spread(
                rows.iter()
                    .map(|r| (r.min_test_acc, r.max_test_acc))
                    .collect(),
            )
        })
        .collect();
    let seeds = summary.iter().map(|r| r.seeds).max().unwrap_or(0);
    write_charts(
        path,
        &[Chart {
            title: format!(
                "{}: test accuracy vs training images ({} steps × batch {}; {})",
                s.settings.data,
                s.settings.steps,
                s.settings.batch,
                if seeds > 1 {
                    format!("mean, min–max of {seeds} seeds")
                } else {
                    "1 seed".to_string()
                }
            ),
            x: Axis::new("training images (the first n of the training set)").log(),
            y: Axis::new("test accuracy (full test set)"),
            series,
        }],
    )
}

/// The study's table as Markdown: one row per size, one column per model (mean and range).
pub fn markdown_table(s: &StudyFile) -> String {
    let summary = s.summarize();
    let mut models: Vec<StudyModel> = summary.iter().map(|r| r.model).collect();
    models.sort();
    models.dedup();
    let mut sizes: Vec<usize> = summary.iter().map(|r| r.n).collect();
    sizes.sort();
    sizes.dedup();
    let mut out = String::from("| n |");
    for m in &models {
        out.push_str(&format!(" {} |", m.name()));
    }
    out.push_str("\n|---:|");
    out.push_str(&"---:|".repeat(models.len()));
    out.push('\n');
    for n in sizes {
        out.push_str(&format!("| {n} |"));
        for &m in &models {
            match summary.iter().find(|r| r.model == m && r.n == n) {
                Some(r) if r.seeds > 1 => out.push_str(&format!(
                    " {:.4} ({:.4}–{:.4}) |",
                    r.mean_test_acc, r.min_test_acc, r.max_test_acc
                )),
                Some(r) => out.push_str(&format!(" {:.4} |", r.mean_test_acc)),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(out: &Path) -> StudyConfig {
        StudyConfig {
            data: None,
            out: out.to_path_buf(),
            sizes: vec![Size::N(32), Size::N(64)],
            seeds: 2,
            models: vec![StudyModel::Vit],
            steps: Some(3),
            budget_minutes: None,
            batch: 16,
            val_size: 50,
            vit: VitArch {
                patch: 7,
                dim: 8,
                depth: 1,
                heads: 2,
                mlp_dim: 16,
            },
            resnet: ResnetArch {
                layers: vec![1],
                channels: vec![4],
                stem_width: 4,
            },
            transfer: None,
            progress: ProgressMode::Quiet,
        }
    }

    #[test]
    fn sizes_parse_and_resolve() {
        assert_eq!(
            parse_sizes("2000, 500,all,500").unwrap(),
            [Size::N(500), Size::N(2000), Size::All]
        );
        for bad in ["", " , ", "0,5", "ten"] {
            let e = parse_sizes(bad).unwrap_err().to_string();
            assert!(e.contains("--sizes"), "{bad:?}: {e}");
        }
        assert_eq!(
            resolve_sizes(&[Size::N(10), Size::All], 100, "d", 5).unwrap(),
            [10, 100]
        );
        let e = resolve_sizes(&[Size::N(101)], 100, "d", 5)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("101") && e.contains("100 training images") && e.contains("105"),
            "{e}"
        );
    }

    #[test]
    fn tiny_study_writes_rows_resumes_and_transfers() {
        let dir = tempfile::tempdir().unwrap();
        let c = StudyConfig {
            models: vec![StudyModel::Vit, StudyModel::Resnet],
            sizes: vec![Size::N(32)],
            seeds: 1,
            ..tiny(dir.path())
        };
        let out = run_study(&c).unwrap();
        assert_eq!((out.trained, out.skipped, out.interrupted), (2, 0, false));
        let s = read_study(&out.json).unwrap();
        assert_eq!(s.rows.len(), 2);
        assert_eq!(s.sizes, [32]);
        for r in &s.rows {
            assert!((0.0..=1.0).contains(&r.test_acc), "{r:?}");
            assert_eq!(r.steps, 3);
            // 3 steps of 16 images over n images.
            assert!((r.epochs - 48.0 / r.n as f64).abs() < 1e-12);
            // ViT: width 8, 1 block, MLP 16, 7×7 patches of 28×28, 10 classes: 1250
            // parameters. ResNet: 3×3 stem to 4 channels (36) + BN (8), one BasicBlock of two
            // 4→4 convs with BNs (2 · (144 + 8)), fc 4→10 (50): 398.
            let want = if r.model == StudyModel::Vit {
                1250
            } else {
                398
            };
            assert_eq!(r.params, want, "{r:?}");
            assert!(r.flops_per_image > 0.0 && r.train_seconds > 0.0);
        }
        // Summaries: one per (model, n); one seed: no spread.
        assert_eq!(s.summary.len(), 2);
        let r = &s.summary[0];
        assert_eq!((r.model, r.n, r.seeds), (StudyModel::Vit, 32, 1));
        assert_eq!(
            (r.min_test_acc, r.max_test_acc),
            (r.mean_test_acc, r.mean_test_acc)
        );
        let svg = std::fs::read_to_string(&out.plot).unwrap();
        assert!(svg.starts_with("<svg"));
        // A rerun skips everything.
        let again = run_study(&c).unwrap();
        assert_eq!((again.trained, again.skipped), (0, 2));
        assert_eq!(again.study.rows, s.rows);
        // Other settings are another study.
        let e = run_study(&StudyConfig {
            batch: 8,
            ..c.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("other settings") && e.contains("batch"), "{e}");
        // Transfer from one of the runs: the ViT's weights but a fresh head.
        let from = dir.path().join("runs/vit_n32_seed0");
        let t = StudyConfig {
            out: dir.path().join("transfer"),
            sizes: vec![Size::N(32)],
            models: vec![StudyModel::Vit],
            transfer: Some(from.clone()),
            ..c.clone()
        };
        let task = vit_task(&t, StudyModel::VitTransfer, 32, 0).unwrap();
        let (file, _) = resolve_checkpoint(&from).unwrap();
        let pre = crate::io::load_safetensors::<f32>(&file).unwrap();
        let w = &task
            .store
            .by_name("blocks.0.attn.qkv.weight")
            .unwrap()
            .value;
        assert_eq!(w.data(), pre["blocks.0.attn.qkv.weight"].data());
        let mut fresh = ParamStore::<f32>::new();
        Vit::init(task.vit.cfg.clone(), &mut fresh, 0).unwrap();
        let head = &task.store.by_name("head.weight").unwrap().value;
        assert_eq!(
            head.data(),
            fresh.by_name("head.weight").unwrap().value.data()
        );
        assert_ne!(head.data(), pre["head.weight"].data());
        let out = run_study(&t).unwrap();
        let models: Vec<StudyModel> = out.study.rows.iter().map(|r| r.model).collect();
        assert_eq!(models, [StudyModel::Vit, StudyModel::VitTransfer]);
        let s = out.study.settings.transfer.unwrap();
        assert!(s.pretrained_on.contains("synthetic"), "{s:?}");
        // A transfer checkpoint of another architecture is refused.
        let other = StudyConfig {
            vit: VitArch {
                dim: 16,
                ..t.vit.clone()
            },
            out: dir.path().join("other"),
            ..t
        };
        let e = vit_task(&other, StudyModel::VitTransfer, 32, 0)
            .err()
            .expect("another architecture is an error")
            .to_string();
        assert!(e.contains("the same model"), "{e}");
    }

    #[test]
    fn plot_has_one_error_bar_per_point_with_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let row = |model, n, seed, acc| StudyRow {
            model,
            n,
            seed,
            test_acc: acc,
            test_loss: 1.0,
            params: 1000,
            flops_per_image: 1e6,
            train_seconds: 1.0,
            steps: 10,
            epochs: 1.0,
            train_loss: 1.0,
            val_acc: acc,
        };
        let settings = StudySettings {
            data: "d".into(),
            train_images: 100,
            test_images: 10,
            val_size: 1,
            steps: 10,
            batch: 4,
            steps_from: "--steps".into(),
            vit: VitArch::default(),
            resnet: ResnetArch::default(),
            transfer: None,
            protocol: String::new(),
        };
        let mut s = StudyFile {
            format: STUDY_FORMAT.into(),
            settings,
            sizes: vec![10, 100],
            seeds: 1,
            rows: vec![],
            summary: vec![],
        };
        for (m, n, a) in [
            (StudyModel::Vit, 10, 0.5),
            (StudyModel::Vit, 100, 0.8),
            (StudyModel::Resnet, 10, 0.7),
            (StudyModel::Resnet, 100, 0.9),
        ] {
            s.rows.push(row(m, n, 0, a));
        }
        let lines = |s: &StudyFile| {
            let p = dir.path().join("s.svg");
            plot_study(&p, s).unwrap();
            let svg = std::fs::read_to_string(&p).unwrap();
            // Thin lines in the two series' colours: the error bars and their caps (the
            // series' own lines are 2 px wide; the grid is grey).
            ["#1F77B4", "#FF7F0E"]
                .map(|c| {
                    svg.matches(&format!("stroke=\"{c}\" stroke-width=\"1\""))
                        .count()
                })
                .iter()
                .sum::<usize>()
        };
        let one_seed = lines(&s);
        assert_eq!(one_seed, 0);
        for (m, n, a) in [(StudyModel::Vit, 10, 0.6), (StudyModel::Resnet, 100, 0.95)] {
            s.rows.push(row(m, n, 1, a));
        }
        let sum = s.summarize();
        assert_eq!((sum[0].min_test_acc, sum[0].max_test_acc), (0.5, 0.6));
        assert!((sum[0].mean_test_acc - 0.55).abs() < 1e-12);
        // The two points with a second seed get a bar with two caps (three lines each); a
        // point of one seed has no spread and no bar.
        assert_eq!(lines(&s), one_seed + 6);
        let t = markdown_table(&s);
        assert!(
            t.contains("| 10 | 0.5500 (0.5000–0.6000) | 0.7000 |"),
            "{t}"
        );
    }

    #[test]
    fn bad_study_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = tiny(dir.path());
        let run = |c: StudyConfig| run_study(&c).unwrap_err().to_string();
        let e = run(StudyConfig {
            sizes: vec![Size::N(100_000)],
            ..c.clone()
        });
        assert!(
            e.contains("--sizes 100000") && e.contains("5950 training images"),
            "{e}"
        );
        assert!(run(StudyConfig {
            sizes: vec![],
            ..c.clone()
        })
        .contains("--sizes is empty"));
        let e = run(StudyConfig {
            data: Some(dir.path().join("nowhere")),
            ..c.clone()
        });
        assert!(e.contains("nowhere") && e.contains("no such folder"), "{e}");
        assert!(run(StudyConfig {
            seeds: 0,
            ..c.clone()
        })
        .contains("--seeds"));
        let e = run(StudyConfig {
            steps: None,
            budget_minutes: Some(0.001),
            ..c
        });
        assert!(e.contains("--budget-minutes 0.001"), "{e}");
        // Nothing was trained by the failed runs.
        assert!(!dir.path().join("runs").exists());
    }
}
