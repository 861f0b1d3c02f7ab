//! The ViT as a training task: an image data set (train / validation carved from its end / test),
//! the model (fresh, or fine-tuned from a checkpoint at another resolution: position embeddings
//! resampled in 2-D, class token kept, head re-initialized for another class count), the
//! normalization, and the [`TrainModel`] the shared [`crate::train::Trainer`] drives
//! (`nabla vit train`); and loading checkpoints (nabla runs or timm files) with their saved
//! configuration, normalization and class names (`vit eval`, `analyze`, `predict`).

use crate::data::{self, BatchOptions, ImageDataset};
use crate::errln;
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::models::resample::{resample_pos_embed, Interp};
use crate::models::vit::{Pool, Vit, VitConfig};
use crate::tensor::Tensor;
use crate::train::{
    classification_metrics, evaluate_classifier, BatchSampler, Classifier, ImageData,
    ImageDataArgs, Metrics, StepOutput, TrainModel,
};
use crate::ParamStore;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything [`build_task`] needs: the data, the architecture, the batch, augmentation and
/// regularization, and what to fine-tune from.
#[derive(Clone, Debug, PartialEq)]
pub struct VitTaskConfig {
    /// Data folder (see [`crate::data::load`]); the built-in synthetic shapes if `None`.
    pub data: Option<PathBuf>,
    /// Validation images carved from the end of the training set (default:
    /// [`crate::data::default_val_size`]).
    pub val_size: Option<usize>,
    /// Side of the model input (default: the data's own).
    pub image_size: Option<usize>,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub pool: Pool,
    pub batch: usize,
    pub label_smoothing: f64,
    pub dropout: f64,
    /// Random-crop padding in pixels (0 = off).
    pub crop_pad: usize,
    /// Random horizontal flips (where the data set allows them).
    pub hflip: bool,
    /// Seeds the data (synthetic set), the initialization and the batch order.
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub eval_limit: Option<usize>,
    /// Start from this checkpoint's weights and architecture.
    pub finetune_from: Option<PathBuf>,
    pub pos_interp: Interp,
    /// Heads of a `finetune_from` file that carries no configuration (timm files).
    pub finetune_heads: Option<usize>,
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
        evaluate(&self.vit, &self.store, ds, &eval_opts, 500)
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
        self.train_step_shard(step, rng, crate::dist::Group::local())
    }
    fn data_parallel(&self) -> bool {
        true
    }
    /// Every rank draws the whole batch and its augmentation (the same `rng` draws on every
    /// rank, so the stream stays the same for any rank count) and computes its contiguous
    /// share of the micro-batches; gradients and per-micro-batch losses are summed in
    /// micro-batch order ([`crate::dist`]).
    fn train_step_shard(
        &mut self,
        step: u64,
        rng: &mut Rng,
        group: crate::dist::Group,
    ) -> Result<StepOutput> {
        let idx = self.sampler.batch(step);
        let (x, y) = data::make_batch(&self.train, &idx, &self.batch_opts, Some(rng))?;
        let mine = group.share(crate::models::vit::micro_batches(idx.len()));
        let (vit, ls) = (&self.vit, self.label_smoothing);
        let scalars = group.sum_grads_overlapped(&mut self.store, mine.len(), |store, sink| {
            let parts = vit.micro_batch_grads(store, &x, &y, ls, Some(rng), mine, sink)?;
            let scalars: Vec<f64> = parts
                .iter()
                .flat_map(|p| [p.loss, p.correct as f64])
                .collect();
            Ok((scalars, parts.into_iter().map(|p| p.grads).collect()))
        })?;
        let (mut loss, mut correct) = (0.0f64, 0.0f64);
        for lc in group.gather_f64(&scalars)?.chunks(2) {
            loss += lc[0];
            correct += lc[1];
        }
        Ok(StepOutput::new(loss, idx.len()).with("train_acc", correct / idx.len() as f64))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let (acc, loss) = self.accuracy_and_loss(&self.val)?;
        Ok(classification_metrics("val", acc, loss, self.val.len()))
    }
    fn test(&mut self) -> Result<Option<Metrics>> {
        let Some(test) = &self.test else {
            return Ok(None);
        };
        let (acc, loss) = self.accuracy_and_loss(test)?;
        Ok(Some(classification_metrics("test", acc, loss, test.len())))
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
    let (file, _) = resolve_checkpoint(ckpt).ok()?;
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.with_file_name("state.json")).ok()?).ok()?;
    v.get("model_config").cloned()
}

/// The normalization saved with a nabla checkpoint (so eval/analyze/predict use the training's).
pub fn saved_batch_options(ckpt: &Path) -> Option<BatchOptions> {
    let (_, cfg) = resolve_checkpoint(ckpt).ok()?;
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
/// grid (class token entry kept) and, if the class count changed, a fresh head. The names and
/// shapes are those of a fresh model of the new configuration.
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
    for p in fresh.iter() {
        let (name, shape) = (p.name.as_str(), p.value.shape());
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
            p.value.clone()
        } else {
            let t = crate::io::take(tensors, name, "checkpoint")?.clone();
            if t.shape() != shape {
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

/// Builds the task (model, data, normalization) from its configuration.
pub fn build_task(a: &VitTaskConfig) -> Result<VitTask> {
    let data_args = ImageDataArgs {
        data: a.data.clone(),
        val_size: a.val_size,
        image_size: a.image_size,
        batch: a.batch,
        label_smoothing: a.label_smoothing,
        crop_pad: a.crop_pad,
        hflip: a.hflip,
        train_limit: a.train_limit,
        eval_limit: a.eval_limit,
    };
    let ImageData {
        train,
        val,
        val_carved,
        test,
        batch_opts,
    } = data_args.load(a.seed)?;
    let image_size = batch_opts.image_size;
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
    let (vit, store) = match &a.finetune_from {
        None => {
            let mut store = ParamStore::new();
            let vit = Vit::init(cfg, &mut store, a.seed)?;
            (vit, store)
        }
        Some(p) => {
            let (file, saved) = resolve_checkpoint(p)?;
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
    let sampler = BatchSampler::new(train.len(), a.batch, true, a.seed)?;
    let data_name = train.name.clone();
    Ok(VitTask {
        vit,
        store,
        train,
        val,
        val_carved,
        test,
        sampler,
        batch_opts,
        label_smoothing: a.label_smoothing,
        data_name,
    })
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

/// Accuracy and mean loss of `vit` on `ds` (no gradients kept).
pub fn evaluate(
    vit: &Vit,
    store: &ParamStore<f32>,
    ds: &data::ImageDataset,
    opts: &BatchOptions,
    batch: usize,
) -> Result<(f64, f64)> {
    let logits = |x: &Tensor<f32>| vit.predict(store, x);
    let model = Classifier {
        in_chans: vit.cfg.in_chans,
        num_classes: vit.cfg.num_classes,
        logits: &logits,
    };
    evaluate_classifier(&model, ds, opts, batch)
}
