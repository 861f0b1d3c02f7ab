//! `nabla vit train`: the flags of [`crate::models::vit_task`] plus the shared trainer and
//! optimizer flags (defaults: AdamW 2e-3, weight decay 0.05, 300 warm-up steps then cosine to 1%
//! of the rate, 20 epochs, per-epoch validation on `val_acc`), run on the shared trainer.

use crate::cli::resume::{self, Typed};
use crate::error::Result;
use crate::models::resample::Interp;
use crate::models::vit::Pool;
use crate::models::vit_task::{build_task, VitTaskConfig};
use crate::train::{
    ImageDataArgs, Mode, OptimArgs, OptimDefaults, OptimizerKind, ScheduleKind, TrainDefaults,
    Trainer,
};
use crate::{errln, outln};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(
    after_help = "Defaults of vit train: --epochs 20, --optim adamw --lr 2e-3 --weight-decay 0.05, --warmup 300 then --schedule cosine to --min-lr = 1% of --lr, evaluation every epoch, --monitor val_acc, --out runs/vit."
)]
pub struct VitTrainArgs {
    #[arg(long, default_value_t = 7)]
    pub patch: usize,
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub mlp_dim: usize,
    #[arg(long, default_value = "cls")]
    pub pool: Pool,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Start from this checkpoint's weights and architecture (patch, dim, depth, heads, MLP) at
    /// --image-size: position embeddings are resampled, the head is re-initialized if the data
    /// has another number of classes.
    #[arg(long)]
    pub finetune_from: Option<PathBuf>,
    /// Interpolation for the position embeddings when fine-tuning at another resolution.
    #[arg(long, default_value = "bicubic", value_parser = ["bilinear", "bicubic"])]
    pub pos_interp: String,
    /// Heads of the --finetune-from checkpoint when it carries no configuration (timm files).
    #[arg(long)]
    pub finetune_heads: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: ImageDataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: crate::train::TrainArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: OptimArgs,
}

/// Run folder of `nabla vit train` without `--out`.
pub const DEFAULT_OUT: &str = "runs/vit";

/// The ViT's optimizer defaults: AdamW, 2e-3, weight decay 0.05.
pub const OPTIM_DEFAULTS: OptimDefaults = OptimDefaults {
    kind: OptimizerKind::Adamw,
    lr: 2e-3,
    weight_decay: 0.05,
};

/// The ViT's trainer defaults: 20 epochs, 300 warm-up steps, cosine to 1% of the rate,
/// validation every epoch, best/ and early stopping on `val_acc`.
pub fn train_defaults() -> TrainDefaults {
    TrainDefaults {
        epochs: Some(20),
        schedule: ScheduleKind::Cosine,
        warmup: 300,
        min_lr_ratio: 0.01,
        monitor: Some(("val_acc".into(), Mode::Max)),
        ..TrainDefaults::new(DEFAULT_OUT)
    }
}

impl VitTrainArgs {
    /// The model task's part of the flags.
    pub fn task_config(&self) -> Result<VitTaskConfig> {
        let d = &self.data;
        Ok(VitTaskConfig {
            data: d.data.clone(),
            val_size: d.val_size,
            image_size: d.image_size,
            patch: self.patch,
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            mlp_dim: self.mlp_dim,
            pool: self.pool,
            batch: d.batch,
            label_smoothing: d.label_smoothing,
            dropout: self.dropout,
            crop_pad: d.crop_pad,
            hflip: d.hflip,
            seed: self.train.seed,
            train_limit: d.train_limit,
            eval_limit: d.eval_limit,
            finetune_from: self.finetune_from.clone(),
            pos_interp: self.pos_interp.parse::<Interp>()?,
            finetune_heads: self.finetune_heads,
        })
    }
}

pub fn train(a: &VitTrainArgs, typed: &Typed) -> Result<()> {
    let mut a = a.clone();
    if let Some(dir) = a.train.resume.clone() {
        a = resume::restore(&a, typed, &dir, &[])?;
    }
    a.optim.fill_defaults(OPTIM_DEFAULTS);
    let lr = a.optim.lr.unwrap_or(OPTIM_DEFAULTS.lr);
    a.train.fill_defaults(&train_defaults(), lr);
    let mut task = build_task(&a.task_config()?)?;
    let opt = a.optim.build::<f32>(OPTIM_DEFAULTS)?;
    let mut cfg = a.train.config(DEFAULT_OUT)?;
    cfg.command = Some(serde_json::to_value(&a).map_err(|e| crate::invalid!("flags: {e}"))?);
    let test_note = match &task.test {
        Some(t) => format!(
            "{} test images, evaluated once at the end on best/",
            t.len()
        ),
        None => "no test split in this data: the run reports no test_acc".into(),
    };
    let classes_note = if task.train.classes.is_empty() {
        "classes unnamed".to_string()
    } else {
        format!("class names from {}", task.train.classes_from)
    };
    if crate::dist::is_root() {
        errln!(
            "ViT {} params on {} ({} train / {} validation (the last {} of the training set; they select best/) / {test_note}; {classes_note}; {}x{}x{} → {}x{}), {} steps/epoch",
            task.store.num_elements(),
            task.data_name,
            task.train.len(),
            task.val.len(),
            task.val_carved,
            task.train.channels,
            task.train.height,
            task.train.width,
            task.vit.cfg.image_size,
            task.vit.cfg.image_size,
            task.sampler.steps_per_epoch()
        );
    }
    let summary = Trainer::new(cfg, opt).fit(&mut task)?;
    if !crate::dist::is_root() {
        return Ok(());
    }
    outln!("{}", summary.describe())?;
    if task.test.is_none() && summary.outcome != crate::train::Outcome::Interrupted {
        outln!("no test_acc: the data has no test split (validation only)")?;
    }
    Ok(())
}
