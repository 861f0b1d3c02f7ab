//! The ResNet as a training task: the shared image data ([`ImageDataArgs`]: training,
//! validation carved from its end, test; normalization and augmentation), the network, and
//! the [`TrainModel`] the shared [`crate::train::Trainer`] drives (`nabla cnn train`, and the
//! data-size study through [`build_task`]); and loading checkpoints (nabla runs or timm state
//! dicts, the architecture inferred from the tensors) for `cnn eval` and `cnn predict`.
//!
//! BatchNorm's running statistics are the task's state tensors: checkpoints hold them under
//! timm's names beside the parameters, so `model.safetensors` is a complete timm state dict.

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::models::resnet::{BlockKind, Resnet, ResnetConfig, Stem};
use crate::models::vit_task::resolve_checkpoint;
use crate::tensor::Tensor;
use crate::train::{
    classification_metrics, evaluate_classifier, BatchSampler, Classifier, ImageData,
    ImageDataArgs, Metrics, StepOutput, TrainModel,
};
use crate::{data, ParamStore};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Everything [`build_task`] needs: the data flags and the architecture.
#[derive(Clone, Debug, PartialEq)]
pub struct CnnTaskConfig {
    pub data: ImageDataArgs,
    pub block: BlockKind,
    /// Blocks per stage.
    pub layers: Vec<usize>,
    /// Width (`planes`) of each stage.
    pub channels: Vec<usize>,
    pub stem_width: usize,
    pub stem: Stem,
    /// Seeds the data (synthetic set), the initialization and the batch order.
    pub seed: u64,
}

impl Default for CnnTaskConfig {
    /// The defaults of `nabla cnn train`: a small-image-stem ResNet with BasicBlocks, stages
    /// `[1, 1, 1]` of widths `[16, 32, 64]` and a 16-wide stem (≈78 k parameters), on the
    /// shared data flags' defaults.
    fn default() -> Self {
        CnnTaskConfig {
            data: ImageDataArgs::default(),
            block: BlockKind::Basic,
            layers: DEFAULT_LAYERS.to_vec(),
            channels: DEFAULT_CHANNELS.to_vec(),
            stem_width: DEFAULT_STEM_WIDTH,
            stem: Stem::Small,
            seed: 0,
        }
    }
}

/// Default blocks per stage of `cnn train`.
pub const DEFAULT_LAYERS: [usize; 3] = [1, 1, 1];
/// Default stage widths of `cnn train`.
pub const DEFAULT_CHANNELS: [usize; 3] = [16, 32, 64];
/// Default stem width of `cnn train`.
pub const DEFAULT_STEM_WIDTH: usize = 16;

/// The ResNet with its data, as a [`TrainModel`].
pub struct CnnTask {
    pub net: Resnet<f32>,
    pub store: ParamStore<f32>,
    pub data: ImageData,
    pub sampler: BatchSampler,
    pub label_smoothing: f64,
}

/// Images per evaluation batch.
const EVAL_BATCH: usize = 500;

impl CnnTask {
    /// Accuracy and mean loss on `ds` in evaluation mode, without augmentation.
    pub fn accuracy_and_loss(&self, ds: &data::ImageDataset) -> Result<(f64, f64)> {
        let opts = data::BatchOptions {
            crop_pad: 0,
            hflip: false,
            ..self.data.batch_opts.clone()
        };
        evaluate(&self.net, &self.store, ds, &opts, EVAL_BATCH)
    }
    /// Parameters of the network.
    pub fn num_params(&self) -> usize {
        self.store.num_elements()
    }
    /// FLOPs of one forward pass of one training image (2 × multiply-adds).
    pub fn flops_per_image(&self) -> f64 {
        let s = self.data.batch_opts.image_size;
        self.net.flops_per_image(s, s)
    }
}

impl TrainModel<f32> for CnnTask {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput> {
        let idx = self.sampler.batch(step);
        let (x, y) = data::make_batch(&self.data.train, &idx, &self.data.batch_opts, Some(rng))?;
        let st = self
            .net
            .loss_and_grads(&mut self.store, &x, &y, self.label_smoothing, true)?;
        Ok(StepOutput::new(st.loss, idx.len())
            .with("train_acc", st.correct as f64 / idx.len() as f64))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let (acc, loss) = self.accuracy_and_loss(&self.data.val)?;
        Ok(classification_metrics(
            "val",
            acc,
            loss,
            self.data.val.len(),
        ))
    }
    fn test(&mut self) -> Result<Option<Metrics>> {
        let Some(test) = &self.data.test else {
            return Ok(None);
        };
        let (acc, loss) = self.accuracy_and_loss(test)?;
        Ok(Some(classification_metrics("test", acc, loss, test.len())))
    }
    fn config_json(&self) -> serde_json::Value {
        let o = &self.data.batch_opts;
        json!({
            "model": "resnet",
            "resnet": self.net.cfg,
            "image_size": o.image_size,
            "data": self.data.train.name,
            "classes": self.data.train.classes,
            "val_images": self.data.val.len(),
            "normalize": {"mean": o.mean, "std": o.std},
            "augment": {"crop_pad": o.crop_pad, "hflip": o.hflip},
            "batch": self.sampler.batch_size(),
            "label_smoothing": self.label_smoothing,
        })
    }
    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.sampler.steps_per_epoch())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<f32>)> {
        crate::nn::Module::buffers(&self.net)
    }
    fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor<f32>>) -> Result<()> {
        self.net.load_buffers(tensors)
    }
}

/// Builds the task (data, fresh network) from its configuration: the library entry of
/// `cnn train` and of the data-size study.
pub fn build_task(a: &CnnTaskConfig) -> Result<CnnTask> {
    let data = a.data.load(a.seed)?;
    let cfg = ResnetConfig {
        block: a.block,
        layers: a.layers.clone(),
        channels: a.channels.clone(),
        stem_width: a.stem_width,
        stem: a.stem,
        in_chans: data.train.channels,
        num_classes: data.train.num_classes,
    };
    let mut store = ParamStore::new();
    let net = Resnet::init(cfg, &mut store, a.seed)?;
    let sampler = BatchSampler::new(data.train.len(), a.data.batch, true, a.seed)?;
    Ok(CnnTask {
        net,
        store,
        data,
        sampler,
        label_smoothing: a.data.label_smoothing,
    })
}

/// Accuracy and mean loss of `net` on `ds` (evaluation mode, no gradients kept).
pub fn evaluate(
    net: &Resnet<f32>,
    store: &ParamStore<f32>,
    ds: &data::ImageDataset,
    opts: &data::BatchOptions,
    batch: usize,
) -> Result<(f64, f64)> {
    let logits = |x: &Tensor<f32>| net.predict(store, x);
    let model = Classifier {
        in_chans: net.cfg.in_chans,
        num_classes: net.cfg.num_classes,
        logits: &logits,
    };
    evaluate_classifier(&model, ds, opts, batch)
}

/// What a ResNet checkpoint holds besides its tensors: the normalization and input size of
/// the run that wrote it (`None` for a plain timm file).
#[derive(Clone, Debug, PartialEq)]
pub struct SavedInput {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    pub image_size: usize,
}

/// The `model_config` of a nabla run's `state.json` next to `file`, when it is a ResNet's.
fn saved_input(file: &Path) -> Result<Option<SavedInput>> {
    let state = file.with_file_name("state.json");
    if !state.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&state).map_err(|e| NablaError::io(&state, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| NablaError::format(&state, e.to_string()))?;
    let Some(mc) = v.get("model_config") else {
        return Ok(None);
    };
    if let Some(m) = mc.get("model").and_then(|m| m.as_str()) {
        if m != "resnet" {
            return Err(invalid!(
                "{}: the checkpoint is a {m} run, not a ResNet (use `nabla {m} ...`)",
                file.display()
            ));
        }
    }
    let f = |k: &str| -> Option<Vec<f64>> {
        mc.get("normalize")?
            .get(k)?
            .as_array()?
            .iter()
            .map(|x| x.as_f64())
            .collect()
    };
    let size = mc.get("image_size").and_then(|s| s.as_u64());
    Ok(match (f("mean"), f("std"), size) {
        (Some(mean), Some(std), Some(s)) => Some(SavedInput {
            mean,
            std,
            image_size: s as usize,
        }),
        _ => None,
    })
}

/// Loads a ResNet from a `.safetensors` file (a timm state dict or a nabla checkpoint) or a
/// run / checkpoint folder: the architecture inferred from the tensors, parameters and running
/// statistics loaded (a tensor whose shape does not chain is an error naming it).
pub fn load_model(ckpt: &Path) -> Result<(Resnet<f32>, ParamStore<f32>, Option<SavedInput>)> {
    let (file, _) = resolve_checkpoint(ckpt)?;
    let saved = saved_input(&file)?;
    let tensors: BTreeMap<String, Tensor<f32>> = crate::io::load_safetensors(&file)?;
    let cfg = Resnet::infer_config(&tensors)
        .map_err(|e| invalid!("{}: {}", file.display(), e.to_string()))?;
    let (net, store) = Resnet::from_tensors(&tensors, cfg).map_err(|e| match e {
        NablaError::Shape { msg, .. } => invalid!("{}: {msg}", file.display()),
        other => invalid!("{}: {other}", file.display()),
    })?;
    Ok((net, store, saved))
}
