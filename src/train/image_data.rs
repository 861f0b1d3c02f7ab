//! The data and augmentation flags every image-classification `train` command shares
//! (`vit train`, `cnn train`: `#[command(flatten)] data: ImageDataArgs`), the splits they
//! describe (training, validation carved from the end of the training set, test), and the one
//! accuracy/loss evaluation of a classifier on an image set.

use crate::data::{self, BatchOptions, ImageDataset};
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::kernels::log_softmax_rows;
use crate::models::vit::argmax;
use crate::tensor::Tensor;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Data, batch, loss and augmentation flags of an image classifier's `train` command.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Data and augmentation")]
pub struct ImageDataArgs {
    /// Data folder (MNIST-style IDX, CIFAR-10/100 binaries, PNG/JPEG folders by class:
    /// train/<class>/ [+ test/<class>/] or <class>/); the built-in synthetic shapes if omitted.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation images, carved from the END of the training set (in file order): they select
    /// best/ and drive --patience; the test set is used once, at the end, on best/. Default: a
    /// tenth of the training images, at most 5000 (MNIST: the last 5,000 of the 60,000).
    #[arg(long)]
    pub val_size: Option<usize>,
    /// Side of the (square) model input; images are resized bilinearly if it differs from the
    /// data's. Default: the data's own size.
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Random-crop padding in pixels (0 = off).
    #[arg(long, default_value_t = 2)]
    pub crop_pad: usize,
    /// Random horizontal flips (only applied to data sets where a flip keeps the class).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub hflip: bool,
    /// Use only the first N training images (after the validation split is carved off).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Validate on the first N validation images only (the final test uses the whole test set).
    #[arg(long)]
    pub eval_limit: Option<usize>,
}

impl Default for ImageDataArgs {
    /// The flags' defaults (what the command line gives when none is typed).
    fn default() -> Self {
        ImageDataArgs {
            data: None,
            val_size: None,
            image_size: None,
            batch: 128,
            label_smoothing: 0.1,
            crop_pad: 2,
            hflip: true,
            train_limit: None,
            eval_limit: None,
        }
    }
}

/// The splits of an image task and how its batches are made.
#[derive(Clone, Debug)]
pub struct ImageData {
    pub train: ImageDataset,
    /// Carved from the end of the training set: selection and early stopping.
    pub val: ImageDataset,
    /// Images carved off for validation (before `--eval-limit`).
    pub val_carved: usize,
    /// Used once at the end; `None` when the data has none.
    pub test: Option<ImageDataset>,
    /// Normalization (the training images' per-channel statistics), input size, augmentation.
    pub batch_opts: BatchOptions,
}

impl ImageDataArgs {
    /// Loads the data and carves the splits: validation = the last `--val-size` training
    /// images, before `--train-limit` (so it is disjoint from every image trained on).
    pub fn load(&self, seed: u64) -> Result<ImageData> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(invalid!(
                "--label-smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        if self.batch == 0 {
            return Err(invalid!("--batch must be at least 1"));
        }
        let splits = data::load(self.data.as_deref(), seed)?;
        let val_size = self
            .val_size
            .unwrap_or_else(|| data::default_val_size(splits.train.len()));
        let (mut train, mut val) = splits.train.split_off_val(val_size)?;
        if let Some(n) = self.train_limit {
            train = train.take(n);
        }
        if let Some(n) = self.eval_limit {
            val = val.take(n);
        }
        // An empty test split (a single IDX pair of under six images) is no test split.
        let test = splits.test.filter(|t| !t.is_empty());
        if train.is_empty() || val.is_empty() {
            return Err(invalid!("empty training or validation set"));
        }
        let (mean, std) = train.channel_stats();
        let batch_opts = BatchOptions {
            mean,
            std,
            image_size: self.image_size.unwrap_or(train.height),
            crop_pad: self.crop_pad,
            hflip: self.hflip && train.flip_ok,
        };
        Ok(ImageData {
            train,
            val,
            val_carved: val_size,
            test,
            batch_opts,
        })
    }
}

/// What a classifier is evaluated with: its input channels, its classes, and its logits
/// `(B, classes)` of a normalized batch `(B, C, S, S)`.
pub struct Classifier<'a> {
    pub in_chans: usize,
    pub num_classes: usize,
    pub logits: &'a dyn Fn(&Tensor<f32>) -> Result<Tensor<f32>>,
}

/// Accuracy and mean cross-entropy of a classifier on `ds` (batches of `batch`, no
/// augmentation beyond what `opts` says — pass `crop_pad: 0, hflip: false`).
pub fn evaluate_classifier(
    model: &Classifier<'_>,
    ds: &ImageDataset,
    opts: &BatchOptions,
    batch: usize,
) -> Result<(f64, f64)> {
    if ds.channels != model.in_chans {
        return Err(invalid!(
            "{} has {}-channel images, the model expects {} channels",
            ds.name,
            ds.channels,
            model.in_chans
        ));
    }
    if ds.num_classes > model.num_classes {
        return Err(invalid!(
            "{} has {} classes, the model's head has {}",
            ds.name,
            ds.num_classes,
            model.num_classes
        ));
    }
    if ds.is_empty() {
        return Err(invalid!("{}: no images to evaluate", ds.name));
    }
    let (mut correct, mut loss) = (0usize, 0.0f64);
    let idx: Vec<usize> = (0..ds.len()).collect();
    let c = model.num_classes;
    for chunk in idx.chunks(batch.max(1)) {
        let (x, y) = data::make_batch(ds, chunk, opts, None)?;
        let logits = (model.logits)(&x)?; // (B, classes)
        let mut logp = logits.data().to_vec();
        log_softmax_rows(&mut logp, c);
        for ((r, lp), &t) in logits.data().chunks(c).zip(logp.chunks(c)).zip(&y) {
            correct += (argmax(r) == t) as usize;
            loss -= lp[t] as f64;
        }
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
