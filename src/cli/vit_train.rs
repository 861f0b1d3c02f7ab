//! `nabla vit train`: a ViT on an image data set through the shared [`crate::train::Trainer`]
//! (AdamW, linear warm-up then cosine decay, progress bar, per-epoch validation, metrics JSONL +
//! plot, checkpoints, `--resume`), and fine-tuning at another resolution (`--finetune-from`:
//! position embeddings resampled in 2-D, class token kept).

use crate::data::{self, BatchOptions, ImageDataset};
use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::models::resample::{resample_pos_embed, Interp};
use crate::models::vit::{param_shapes, Pool, Vit, VitConfig};
use crate::optim::{AdamConfig, AdamW, Optimizer};
use crate::tensor::{Element, Tensor};
use crate::train::{
    BatchSampler, LrSchedule, Metrics, Mode, StepOutput, TrainConfig, TrainModel, TrainOptimizer,
    Trainer,
};
use crate::ParamStore;
use crate::{errln, outln};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Data folder (MNIST-style IDX, CIFAR-10/100 binaries, PNG/JPEG folders by class:
    /// train/<class>/ [+ test/<class>/] or <class>/); the built-in synthetic shapes if omitted.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation images, carved from the END of the training set (in file order): they select
    /// best/ and drive --patience; the test set is used once, at the end, on best/. Default: a
    /// tenth of the training images, at most 5000 (MNIST: the last 5,000 of the 60,000).
    #[arg(long)]
    pub val_size: Option<usize>,
    /// Run folder: config.json, metrics.jsonl, plot, checkpoint/, best/. Default: runs/vit, or
    /// the first free runs/vit-N when that holds a run (said on stderr; --overwrite replaces
    /// runs/vit, --resume continues it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Side of the (square) model input; images are resized bilinearly if it differs from the
    /// data's. Default: the data's own size.
    #[arg(long)]
    pub image_size: Option<usize>,
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
    #[arg(long, default_value_t = 20)]
    pub epochs: u64,
    /// Stop after this many optimizer steps (overrides --epochs when smaller).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate of AdamW.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 300)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Random-crop padding in pixels (0 = off).
    #[arg(long, default_value_t = 2)]
    pub crop_pad: usize,
    /// Random horizontal flips (only applied to data sets where a flip keeps the class).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub hflip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N training images (after the validation split is carved off).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Validate on the first N validation images only (the final test uses the whole test set).
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Stop after this many evaluations without a better val_acc (default: train to the end).
    #[arg(long)]
    pub patience: Option<u64>,
    /// Continue a run from its checkpoint: the run in DIR, or in --out (runs/vit) without one.
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Start from this checkpoint's weights and architecture (patch, dim, depth, heads, MLP) at
    /// --image-size: position embeddings are resampled, the head is re-initialized if the data
    /// has another number of classes.
    #[arg(long)]
    pub finetune_from: Option<PathBuf>,
    /// Interpolation for the position embeddings when fine-tuning at another resolution.
    #[arg(long, default_value = "bicubic")]
    pub pos_interp: Interp,
    /// Heads of the --finetune-from checkpoint when it carries no configuration (timm files).
    #[arg(long)]
    pub finetune_heads: Option<usize>,
    /// Evaluate every N steps instead of once per epoch.
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// Stop after this many seconds of training, with a checkpoint (outcome time_limit, exit
    /// status 0; --resume continues).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Checkpoint every N steps (0 = automatically, every 30 s of training or less often if
    /// writing takes over 2% of the time); always at the end and on SIGINT/SIGTERM/SIGHUP.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub checkpoint_every: u64,
    /// Allow reusing a run folder that already has a checkpoint.
    #[arg(long)]
    pub overwrite: bool,
    /// Plain log lines even on a terminal (no progress bar).
    #[arg(long, visible_alias = "plain")]
    pub no_bar: bool,
}

/// [`crate::optim`] optimizers as the trainer's [`TrainOptimizer`].
pub struct OptimAdapter<O>(pub O);

impl<T: Element, O: Optimizer<T>> TrainOptimizer<T> for OptimAdapter<O> {
    fn step(&mut self, params: &mut ParamStore<T>) -> Result<()> {
        self.0.step(params)
    }
    fn lr(&self) -> f64 {
        self.0.lr()
    }
    fn set_lr(&mut self, lr: f64) {
        self.0.set_lr(lr)
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        self.0.state_tensors()
    }
    fn load_state_tensors(&mut self, t: &BTreeMap<String, Tensor<T>>, step: u64) -> Result<()> {
        self.0.load_state_tensors(t, step)
    }
    fn step_count(&self) -> u64 {
        self.0.step_count()
    }
}

/// The ViT with its data, as a [`TrainModel`].
pub struct VitTask {
    pub vit: Vit,
    pub store: ParamStore<f32>,
    pub train: ImageDataset,
    /// The validation split (carved from the training images): selection and early stopping.
    pub val: ImageDataset,
    /// Images carved off the end of the training set for validation (before --eval-limit).
    pub val_carved: usize,
    /// The test split, used once at the end ([`TrainModel::test`]); `None` when the data has none.
    pub test: Option<ImageDataset>,
    pub sampler: BatchSampler,
    pub batch_opts: BatchOptions,
    pub label_smoothing: f64,
    pub data_name: String,
}

impl VitTask {
    /// Accuracy and mean loss on `ds` without augmentation.
    fn accuracy_and_loss(&self, ds: &ImageDataset) -> Result<(f64, f64)> {
        let eval_opts = BatchOptions {
            crop_pad: 0,
            hflip: false,
            ..self.batch_opts.clone()
        };
        crate::cli::vit::evaluate(&self.vit, &self.store, ds, &eval_opts, 500)
    }
}

impl TrainModel<f32> for VitTask {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput> {
        let idx = self.sampler.batch(step);
        let (x, y) = data::make_batch(&self.train, &idx, &self.batch_opts, Some(rng))?;
        let st =
            self.vit
                .loss_and_grads(&mut self.store, &x, &y, self.label_smoothing, Some(rng))?;
        Ok(StepOutput::new(st.loss, idx.len())
            .with("train_acc", st.correct as f64 / idx.len() as f64))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let (acc, loss) = self.accuracy_and_loss(&self.val)?;
        let mut m = Metrics::new();
        m.insert("val_acc".into(), acc);
        m.insert("val_loss".into(), loss);
        Ok(m)
    }
    fn test(&mut self) -> Result<Option<Metrics>> {
        let Some(test) = &self.test else {
            return Ok(None);
        };
        let (acc, loss) = self.accuracy_and_loss(test)?;
        let mut m = Metrics::new();
        m.insert("test_acc".into(), acc);
        m.insert("test_loss".into(), loss);
        m.insert("test_images".into(), test.len() as f64);
        Ok(Some(m))
    }
    fn config_json(&self) -> serde_json::Value {
        json!({
            "model": "vit",
            "vit": self.vit.cfg,
            "data": self.data_name,
            "classes": self.train.classes,
            "val_images": self.val.len(),
            "normalize": {"mean": self.batch_opts.mean, "std": self.batch_opts.std},
            "augment": {"crop_pad": self.batch_opts.crop_pad, "hflip": self.batch_opts.hflip},
            "batch": self.sampler.batch_size(),
            "label_smoothing": self.label_smoothing,
        })
    }
    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.sampler.steps_per_epoch())
    }
}

/// The model config saved in a nabla checkpoint's `state.json` (`None` for other files).
fn saved_model_config(ckpt: &Path) -> Option<serde_json::Value> {
    let (file, _) = crate::cli::vit::resolve_checkpoint(ckpt).ok()?;
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.with_file_name("state.json")).ok()?).ok()?;
    v.get("model_config").cloned()
}

/// The normalization saved with a nabla checkpoint (so eval/analyze/predict use the training's).
pub fn saved_batch_options(ckpt: &Path) -> Option<BatchOptions> {
    let (_, cfg) = crate::cli::vit::resolve_checkpoint(ckpt).ok()?;
    let cfg = cfg?;
    let mc = saved_model_config(ckpt)?;
    let n = mc.get("normalize")?;
    let f = |k: &str| -> Option<Vec<f64>> {
        n.get(k)?.as_array()?.iter().map(|x| x.as_f64()).collect()
    };
    Some(BatchOptions {
        mean: f("mean")?,
        std: f("std")?,
        image_size: cfg.image_size,
        crop_pad: 0,
        hflip: false,
    })
}

/// The class names saved with a nabla checkpoint (empty when it has none).
pub fn saved_classes(ckpt: &Path) -> Vec<String> {
    saved_model_config(ckpt)
        .and_then(|mc| serde_json::from_value(mc.get("classes")?.clone()).ok())
        .unwrap_or_default()
}

/// Parameters for fine-tuning: the checkpoint's weights with `pos_embed` resampled to the new
/// grid (class token entry kept) and, if the class count changed, a fresh head.
pub fn finetune_store(
    tensors: &BTreeMap<String, Tensor<f32>>,
    old: &VitConfig,
    new: &VitConfig,
    interp: Interp,
    seed: u64,
) -> Result<ParamStore<f32>> {
    if old.patch != new.patch || old.dim != new.dim || old.in_chans != new.in_chans {
        return Err(invalid!(
            "fine-tuning keeps patch size, width and channels: checkpoint has patch {} dim {} channels {}, the flags/data ask for patch {} dim {} channels {}",
            old.patch, old.dim, old.in_chans, new.patch, new.dim, new.in_chans
        ));
    }
    let mut fresh = ParamStore::<f32>::new();
    Vit::init(new.clone(), &mut fresh, seed)?;
    let mut store = ParamStore::<f32>::new();
    for (name, shape) in param_shapes(new)? {
        let t = if name == "pos_embed" {
            let pos = crate::io::take(tensors, "pos_embed", "checkpoint")?;
            resample_pos_embed(
                pos,
                (old.grid(), old.grid()),
                (new.grid(), new.grid()),
                1,
                interp,
            )?
        } else if name.starts_with("head.") && new.num_classes != old.num_classes {
            fresh.by_name(&name)?.value.clone()
        } else {
            let t = crate::io::take(tensors, &name, "checkpoint")?.clone();
            if t.shape() != shape.as_slice() {
                return Err(invalid!(
                    "checkpoint tensor {name} has shape {:?}, the fine-tuned model needs {:?}",
                    t.shape(),
                    shape
                ));
            }
            t
        };
        store.add(name, t)?;
    }
    Ok(store)
}

/// Builds the task (model, data, normalization) from the flags.
pub fn build_task(a: &TrainArgs) -> Result<VitTask> {
    let splits = data::load(a.data.as_deref(), a.seed)?;
    // Validation: the last N training images, carved off before anything else (so it is
    // disjoint from every image trained on, whatever --train-limit says).
    let val_size = a
        .val_size
        .unwrap_or_else(|| data::default_val_size(splits.train.len()));
    let (mut train, mut val) = splits.train.split_off_val(val_size)?;
    if let Some(n) = a.train_limit {
        train = train.take(n);
    }
    if let Some(n) = a.eval_limit {
        val = val.take(n);
    }
    // An empty test split (a single IDX pair of under six images) is no test split.
    let test = splits.test.filter(|t| !t.is_empty());
    if train.is_empty() || val.is_empty() {
        return Err(invalid!("empty training or validation set"));
    }
    let image_size = a.image_size.unwrap_or(train.height);
    let cfg = VitConfig {
        image_size,
        patch: a.patch,
        in_chans: train.channels,
        dim: a.dim,
        depth: a.depth,
        heads: a.heads,
        mlp_dim: a.mlp_dim,
        num_classes: train.num_classes,
        pool: a.pool,
        eps: 1e-6,
        dropout: a.dropout,
    };
    cfg.validate()?;
    if a.finetune_from.is_none() {
        cfg.memory(a.batch, true).check("vit train")?;
    }
    if !(0.0..1.0).contains(&a.label_smoothing) {
        return Err(invalid!(
            "--label-smoothing must be in [0, 1), got {}",
            a.label_smoothing
        ));
    }
    let (vit, store) = match &a.finetune_from {
        None => {
            let mut store = ParamStore::new();
            let vit = Vit::init(cfg, &mut store, a.seed)?;
            (vit, store)
        }
        Some(p) => {
            let (file, saved) = crate::cli::vit::resolve_checkpoint(p)?;
            let tensors = crate::io::load_safetensors::<f32>(&file)?;
            let old = match saved {
                Some(c) => c,
                None => {
                    let h = a.finetune_heads.unwrap_or(a.heads);
                    Vit::infer_config(&tensors, h, a.pool)?
                }
            };
            // The architecture is the checkpoint's; resolution, classes and dropout are new.
            let cfg = VitConfig {
                patch: old.patch,
                dim: old.dim,
                heads: old.heads,
                depth: old.depth,
                mlp_dim: old.mlp_dim,
                pool: old.pool,
                ..cfg
            };
            cfg.validate()?;
            cfg.memory(a.batch, true).check("vit train")?;
            let store = finetune_store(&tensors, &old, &cfg, a.pos_interp, a.seed)?;
            errln!(
                "fine-tuning {} ({}x{} → {}x{}, pos_embed {}x{} → {}x{} grid, {:?})",
                file.display(),
                old.image_size,
                old.image_size,
                cfg.image_size,
                cfg.image_size,
                old.grid(),
                old.grid(),
                cfg.grid(),
                cfg.grid(),
                a.pos_interp
            );
            let vit = Vit::bind(cfg, &store)?;
            (vit, store)
        }
    };
    let (mean, std) = train.channel_stats();
    let batch_opts = BatchOptions {
        mean,
        std,
        image_size,
        crop_pad: a.crop_pad,
        hflip: a.hflip && train.flip_ok,
    };
    let sampler = BatchSampler::new(train.len(), a.batch, true, a.seed)?;
    let data_name = train.name.clone();
    Ok(VitTask {
        vit,
        store,
        train,
        val,
        val_carved: val_size,
        test,
        sampler,
        batch_opts,
        label_smoothing: a.label_smoothing,
        data_name,
    })
}

/// Run folder of `nabla vit train` without `--out`.
pub const DEFAULT_OUT: &str = "runs/vit";

pub fn train(a: &TrainArgs) -> Result<()> {
    let mut task = build_task(a)?;
    let opt = AdamW::<f32>::new(AdamConfig::new(a.lr).weight_decay(a.weight_decay))?;
    let (out_dir, resume) = crate::train::run_dirs(
        a.out.as_deref(),
        a.resume.as_ref().map(Option::as_deref),
        a.overwrite,
        DEFAULT_OUT,
    );
    let cfg = TrainConfig {
        out_dir,
        resume,
        overwrite: a.overwrite,
        seed: a.seed,
        max_steps: a.steps,
        epochs: Some(a.epochs),
        eval_every: a.eval_every,
        log_every: 50,
        checkpoint_every: a.checkpoint_every,
        time_limit_s: a.time_limit,
        schedule: LrSchedule::Cosine {
            min_lr: a.lr * 0.01,
        },
        warmup_steps: a.warmup,
        clip_grad_norm: None,
        monitor: Some(("val_acc".into(), Mode::Max)),
        early_stopping: a.patience.map(|patience| crate::train::EarlyStopping {
            patience,
            min_delta: 0.0,
        }),
        progress: if a.no_bar {
            crate::train::ProgressMode::Plain
        } else {
            crate::train::ProgressMode::Auto
        },
        handle_signals: true,
        ..TrainConfig::default()
    };
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
    let summary = Trainer::new(cfg, OptimAdapter(opt)).fit(&mut task)?;
    outln!("{}", summary.describe())?;
    if task.test.is_none() && summary.outcome != crate::train::Outcome::Interrupted {
        outln!("no test_acc: the data has no test split (validation only)")?;
    }
    Ok(())
}
