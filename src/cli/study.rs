//! `nabla study data-size`: the ViT paper's data-size study ([`crate::analysis::data_size`]).

use crate::analysis::data_size::{
    markdown_table, parse_sizes, run_study, ResnetArch, StudyConfig, StudyModel, VitArch,
};
use crate::error::Result;
use crate::invalid;
use crate::outln;
use crate::train::ProgressMode;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum StudyCommand {
    /// ViT vs ResNet test accuracy against training-set size (the ViT paper's Figures 3–4):
    /// study.json + study.svg in --out.
    DataSize(DataSizeArgs),
}

/// Steps per point without --steps, --budget-minutes or --quick.
pub const DEFAULT_STEPS: u64 = 1500;

/// What --quick sets (where the flag is not given): under 5 minutes on 2 cores.
pub const QUICK_SIZES: &str = "250,1000,4000";
pub const QUICK_STEPS: u64 = 100;
pub const QUICK_SEEDS: u64 = 2;

#[derive(Args, Debug)]
#[command(
    after_help = "Every point (model, n, seed) trains for the same number of optimizer steps of the same batch — the data size is the only thing that changes along a line, and the numbers do not depend on the machine's load; the FLOPs per image and the train seconds of each point are in study.json. Models (the defaults of their train commands, matched in parameter count within 2x): vit = `vit train`'s ViT (patch 7, dim 64, depth 4, 4 heads, MLP 128: 139,018 parameters on 28x28 grey images with 10 classes; 4.9 MFLOPs per image), AdamW 2e-3 with weight decay 0.05; resnet = `cnn train`'s ResNet (3x3 stem of 16, BasicBlock stages 1,1,1 of widths 16,32,64: 77,754 parameters; 18.7 MFLOPs per image), SGD 0.1 with Nesterov momentum 0.9 and weight decay 5e-4; both with a warm-up of a tenth of the steps (at most their command's) and a cosine schedule. vit-transfer (with --transfer) = the ViT fine-tuned from the checkpoint with a re-initialized head. A rerun with the same flags skips the points already in study.json (and continues an interrupted one from its checkpoint)."
)]
pub struct DataSizeArgs {
    /// Data folder with a test split (MNIST-style IDX, CIFAR binaries, PNG folders).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: study.json, study.svg, runs/<model>_n<n>_seed<s>/.
    #[arg(long)]
    pub out: PathBuf,
    /// Training-set sizes: the first n training images for each (comma-separated; `all` = every
    /// training image but the validation ones) [default: 500,2000,10000,all; --quick: 250,1000,4000].
    #[arg(long)]
    pub sizes: Option<String>,
    /// Seeds per point (0..N): the spread in the plot [default: 1; --quick: 2].
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Models, comma-separated: vit, resnet.
    #[arg(long, default_value = "vit,resnet", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Optimizer steps of every point [default: 1500; --quick: 100].
    #[arg(long, conflicts_with = "budget_minutes")]
    pub steps: Option<u64>,
    /// Wall-clock budget of the whole study: the steps per point (the same for every point) are
    /// chosen from a timed calibration of each model so that it fits.
    #[arg(long, value_name = "M")]
    pub budget_minutes: Option<f64>,
    /// A small study that finishes in under 5 minutes on 2 cores (sizes 250,1000,4000, 2 seeds,
    /// 100 steps), unless those flags are given.
    #[arg(long)]
    pub quick: bool,
    /// A ViT run folder or checkpoint pre-trained on another data set: adds `vit-transfer`, that
    /// ViT fine-tuned on each first-n subset (position embeddings kept, head re-initialized),
    /// against the same ViT from scratch.
    #[arg(long, value_name = "FROM_DIR")]
    pub transfer: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Validation images carved from the end of the training set (never trained on).
    #[arg(long, default_value_t = 1000)]
    pub val_size: usize,
    #[arg(long, default_value_t = 7)]
    pub vit_patch: usize,
    #[arg(long, default_value_t = 64)]
    pub vit_dim: usize,
    #[arg(long, default_value_t = 4)]
    pub vit_depth: usize,
    #[arg(long, default_value_t = 4)]
    pub vit_heads: usize,
    #[arg(long, default_value_t = 128)]
    pub vit_mlp_dim: usize,
    /// ResNet blocks per stage.
    #[arg(long, value_delimiter = ',', default_values_t = crate::models::cnn_task::DEFAULT_LAYERS)]
    pub resnet_layers: Vec<usize>,
    /// ResNet stage widths.
    #[arg(long, value_delimiter = ',', default_values_t = crate::models::cnn_task::DEFAULT_CHANNELS)]
    pub resnet_channels: Vec<usize>,
    #[arg(long, default_value_t = crate::models::cnn_task::DEFAULT_STEM_WIDTH)]
    pub resnet_stem_width: usize,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Plain log lines even on a terminal (no progress bars).
    #[arg(long)]
    pub plain: bool,
}

impl DataSizeArgs {
    /// The study's configuration (the --quick defaults filled in).
    pub fn config(&self) -> Result<StudyConfig> {
        let sizes = match (&self.sizes, self.quick) {
            (Some(s), _) => s.as_str(),
            (None, true) => QUICK_SIZES,
            (None, false) => "500,2000,10000,all",
        };
        let models = self
            .models
            .iter()
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.trim().parse::<StudyModel>())
            .collect::<Result<Vec<_>>>()?;
        if models.is_empty() {
            return Err(invalid!("--models is empty: give e.g. vit,resnet"));
        }
        let steps = match (self.steps, self.budget_minutes, self.quick) {
            (Some(s), _, _) => Some(s),
            (None, Some(_), _) => None,
            (None, None, true) => Some(QUICK_STEPS),
            (None, None, false) => Some(DEFAULT_STEPS),
        };
        Ok(StudyConfig {
            data: Some(self.data.clone()),
            out: self.out.clone(),
            sizes: parse_sizes(sizes)?,
            seeds: self
                .seeds
                .unwrap_or(if self.quick { QUICK_SEEDS } else { 1 }),
            models,
            steps,
            budget_minutes: self.budget_minutes,
            batch: self.batch,
            val_size: self.val_size,
            vit: VitArch {
                patch: self.vit_patch,
                dim: self.vit_dim,
                depth: self.vit_depth,
                heads: self.vit_heads,
                mlp_dim: self.vit_mlp_dim,
            },
            resnet: ResnetArch {
                layers: self.resnet_layers.clone(),
                channels: self.resnet_channels.clone(),
                stem_width: self.resnet_stem_width,
            },
            transfer: self.transfer.clone(),
            progress: if self.quiet {
                ProgressMode::Quiet
            } else if self.plain {
                ProgressMode::Plain
            } else {
                ProgressMode::Auto
            },
        })
    }
}

fn data_size(a: &DataSizeArgs) -> Result<()> {
    let out = run_study(&a.config()?)?;
    outln!("{}", markdown_table(&out.study))?;
    outln!(
        "{} points trained, {} already there; wrote {} and {}",
        out.trained,
        out.skipped,
        out.json.display(),
        out.plot.display()
    )?;
    if out.interrupted {
        outln!("interrupted: run the same command again to continue")?;
    }
    Ok(())
}

pub fn run(cmd: StudyCommand) -> Result<()> {
    match cmd {
        StudyCommand::DataSize(a) => data_size(&a),
    }
}
