//! `nabla cnn …`: train a timm-compatible ResNet on the shared trainer (the same data,
//! augmentation, optimizer, schedule, checkpoint/resume and progress flags as `vit train`),
//! evaluate a checkpoint, print the logits of a safetensors input.

use crate::cli::resume::{self, Typed};
use crate::error::Result;
use crate::invalid;
use crate::models::cnn_task::{
    build_task, evaluate, load_model, CnnTaskConfig, DEFAULT_CHANNELS, DEFAULT_LAYERS,
    DEFAULT_STEM_WIDTH,
};
use crate::models::resnet::{BlockKind, Stem};
use crate::tensor::Tensor;
use crate::train::{
    ImageDataArgs, Mode, OptimArgs, OptimDefaults, OptimizerKind, ScheduleKind, TrainArgs,
    TrainDefaults, Trainer,
};
use crate::{data, errln, outln};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum CnnCommand {
    /// Train a ResNet (SGD + Nesterov momentum, warm-up + cosine, per-epoch validation,
    /// checkpoints, --resume DIR).
    Train(Box<CnnTrainArgs>),
    /// Test accuracy and loss of a checkpoint on a data set.
    Eval(CnnEvalArgs),
    /// Logits of a safetensors `x (N, C, H, W)` (fed as given: timm's model input).
    Predict(CnnPredictArgs),
}

#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(
    after_help = "Defaults of cnn train: a small-image-stem ResNet (3x3 stride-1 conv1, no max-pool) with BasicBlocks, --layers 1,1,1 --channels 16,32,64 --stem-width 16; --epochs 10, --optim sgd --nesterov --lr 0.1 --weight-decay 5e-4, --warmup 100 then --schedule cosine to 0, evaluation every epoch, --monitor val_acc, --out runs/cnn."
)]
pub struct CnnTrainArgs {
    /// Residual block type.
    #[arg(long, value_enum, default_value = "basic")]
    pub block: BlockKind,
    /// Blocks per stage (layer1, layer2, …).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_LAYERS)]
    pub layers: Vec<usize>,
    /// Width (planes) of each stage; outputs are planes × 4 for bottlenecks.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_CHANNELS)]
    pub channels: Vec<usize>,
    /// Output channels of conv1.
    #[arg(long, default_value_t = DEFAULT_STEM_WIDTH)]
    pub stem_width: usize,
    /// small: 3x3 stride-1 conv1, no max-pool (28–32 px images); default: timm's 7x7 stride-2
    /// conv1 and 3x3 stride-2 max-pool.
    #[arg(long, value_enum, default_value = "small")]
    pub stem: Stem,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: ImageDataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: OptimArgs,
}

/// Run folder of `nabla cnn train` without `--out`.
pub const DEFAULT_OUT: &str = "runs/cnn";

/// The ResNet's optimizer defaults: SGD (momentum 0.9, Nesterov), 0.1, weight decay 5e-4.
pub const OPTIM_DEFAULTS: OptimDefaults = OptimDefaults {
    kind: OptimizerKind::Sgd,
    lr: 0.1,
    weight_decay: 5e-4,
};

/// The ResNet's trainer defaults: 10 epochs, 100 warm-up steps, cosine to 0, validation every
/// epoch, best/ on `val_acc`.
pub fn train_defaults() -> TrainDefaults {
    TrainDefaults {
        epochs: Some(10),
        schedule: ScheduleKind::Cosine,
        warmup: 100,
        min_lr_ratio: 0.0,
        monitor: Some(("val_acc".into(), Mode::Max)),
        ..TrainDefaults::new(DEFAULT_OUT)
    }
}

impl CnnTrainArgs {
    /// The model task's part of the flags.
    pub fn task_config(&self) -> CnnTaskConfig {
        CnnTaskConfig {
            data: self.data.clone(),
            block: self.block,
            layers: self.layers.clone(),
            channels: self.channels.clone(),
            stem_width: self.stem_width,
            stem: self.stem,
            seed: self.train.seed,
        }
    }
}

fn train(a: &CnnTrainArgs, typed: &Typed) -> Result<()> {
    let mut a = a.clone();
    if let Some(dir) = a.train.resume.clone() {
        a = resume::restore(&a, typed, &dir, &[])?;
    }
    // Nesterov is part of the default rule; `--optim` given without it means plain momentum.
    if a.optim.optim.is_none() && !typed.contains("nesterov") {
        a.optim.nesterov = true;
    }
    a.optim.fill_defaults(OPTIM_DEFAULTS);
    let lr = a.optim.lr.unwrap_or(OPTIM_DEFAULTS.lr);
    a.train.fill_defaults(&train_defaults(), lr);
    let mut task = build_task(&a.task_config())?;
    let opt = a.optim.build::<f32>(OPTIM_DEFAULTS)?;
    let mut cfg = a.train.config(DEFAULT_OUT)?;
    cfg.command = Some(serde_json::to_value(&a).map_err(|e| invalid!("flags: {e}"))?);
    let d = &task.data;
    let s = d.batch_opts.image_size;
    errln!(
        "ResNet ({:?} blocks {:?}, widths {:?}, {:?} stem) {} params, {:.1} MFLOP/image on {} ({} train / {} validation (the last {} of the training set; they select best/) / {}; {}x{}x{} → {s}x{s}), {} steps/epoch",
        task.net.cfg.block,
        task.net.cfg.layers,
        task.net.cfg.channels,
        task.net.cfg.stem,
        task.num_params(),
        task.flops_per_image() / 1e6,
        d.train.name,
        d.train.len(),
        d.val.len(),
        d.val_carved,
        d.test.as_ref().map_or("no test split".to_string(), |t| format!("{} test images, evaluated once at the end on best/", t.len())),
        d.train.channels,
        d.train.height,
        d.train.width,
        task.sampler.steps_per_epoch()
    );
    let summary = Trainer::new(cfg, opt).fit(&mut task)?;
    outln!("{}", summary.describe())?;
    if task.data.test.is_none() && summary.outcome != crate::train::Outcome::Interrupted {
        outln!("no test_acc: the data has no test split (validation only)")?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct CnnEvalArgs {
    /// Weights: a run folder, its checkpoint/ or best/ folder, or a .safetensors file (timm names).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Data folder (MNIST-style IDX, CIFAR binaries, PNG folders); built-in synthetic set if omitted.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long)]
    pub json: bool,
}

fn eval(a: &CnnEvalArgs) -> Result<()> {
    let (net, store, saved) = load_model(&a.checkpoint)?;
    let splits = data::load(a.data.as_deref(), 0)?;
    let test = splits.test_or_err("cnn eval")?;
    let test = match a.limit {
        Some(0) => {
            return Err(invalid!(
                "--limit must be at least 1 (the images to evaluate)"
            ))
        }
        Some(n) => test.take(n),
        None => test.clone(),
    };
    // The run's own normalization; a plain timm file gets the training images' statistics.
    let (mean, std, image_size) = match saved {
        Some(s) => (s.mean, s.std, s.image_size),
        None => {
            let (m, s) = splits.train.channel_stats();
            (m, s, splits.train.height)
        }
    };
    let opts = data::BatchOptions {
        mean,
        std,
        image_size,
        crop_pad: 0,
        hflip: false,
    };
    let t0 = std::time::Instant::now();
    let (acc, loss) = evaluate(&net, &store, &test, &opts, a.batch)?;
    crate::cli::vit::print_eval(
        &test.name,
        test.len(),
        acc,
        loss,
        t0.elapsed().as_secs_f64(),
        a.json,
    )?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct CnnPredictArgs {
    /// Weights: a .safetensors file (timm names) or a nabla run / checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// A safetensors file holding `x (N, C, H, W)`, fed to the network as given.
    #[arg(long)]
    pub input: PathBuf,
    /// One JSON object `{"logits": [[...], ...]}`.
    #[arg(long)]
    pub json: bool,
}

fn predict(a: &CnnPredictArgs) -> Result<()> {
    let (net, store, _) = load_model(&a.checkpoint)?;
    let tensors = crate::io::load_safetensors::<f32>(&a.input)?;
    let x: &Tensor<f32> = crate::io::take(&tensors, "x", a.input.display().to_string())?;
    x.check_finite("the input x")?;
    let logits = net.predict(&store, x)?;
    if a.json {
        outln!("{}", json!({ "logits": logits.to_json() }))?;
    } else {
        let c = net.cfg.num_classes;
        for (i, row) in logits.data().chunks(c).enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            outln!(
                "{i}: argmax {} logits [{}]",
                crate::models::vit::argmax(row),
                cells.join(", ")
            )?;
        }
    }
    Ok(())
}

pub fn run(cmd: CnnCommand, typed: &Typed) -> Result<()> {
    match cmd {
        CnnCommand::Train(a) => train(&a, typed),
        CnnCommand::Eval(a) => eval(&a),
        CnnCommand::Predict(a) => predict(&a),
    }
}
