//! `nabla vit predict`: class probabilities of images under a checkpoint.
//!
//! Inputs, recognised by their magic bytes (not their names): PNG and JPEG files (grey or
//! colour, any size), IDX image files (`(N, H, W)` bytes, raw or gzip, e.g. MNIST's
//! `t10k-images-idx3-ubyte.gz`) and safetensors files holding `x (B, C, H, W)` with pixel
//! values in [0, 1]. Every image is converted to the model's channel count (grey replicated to
//! RGB; RGB to grey by BT.601 luma), scaled to [0, 1], resized bilinearly to the model's input
//! size and normalized with the mean/std that the run trained with (saved in the checkpoint's
//! `state.json`) — the same path as `vit eval`'s batches. Class names come from the run too.

use crate::data::image_folder::{decode_image_bytes, sniff_image, DecodedImage};
use crate::data::{idx, resize_and_normalize, BatchOptions};
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::kernels::log_softmax_rows;
use crate::models::vit::Pool;
use crate::models::vit_task::{load_model, saved_batch_options, saved_classes};
use crate::tensor::Tensor;
use crate::{errln, outln};
use clap::Args;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Model weights: a run folder, its checkpoint/ or best/ folder, or a .safetensors file
    /// (timm names).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Images to classify: PNG or JPEG files, IDX image files (raw or .gz), or safetensors files
    /// holding `x (B, C, H, W)` with pixels in [0, 1] (format from the magic bytes).
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// More inputs (the same kinds), e.g. `--input x.safetensors`.
    #[arg(long = "input", value_name = "INPUT")]
    pub input_flag: Vec<PathBuf>,
    /// Classes shown per image, most probable first.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Classify only the first N images of an IDX or safetensors input.
    #[arg(long)]
    pub limit: Option<usize>,
    /// safetensors `x` is already normalized model input: feed it unchanged.
    #[arg(long)]
    pub normalized: bool,
    /// Attention heads (not visible in the shapes; read from a nabla checkpoint if omitted).
    #[arg(long)]
    pub heads: Option<usize>,
    /// cls (timm global_pool='token') or avg.
    #[arg(long)]
    pub pool: Option<Pool>,
    /// One JSON object per image: input, index, top-k (class, name, probability), all
    /// probabilities and the logits.
    #[arg(long)]
    pub json: bool,
}

/// One image to classify: where it came from and its `(C, H, W)` values.
struct Item {
    source: String,
    /// Index within a multi-image file (IDX, safetensors); `None` for an image file.
    index: Option<usize>,
    channels: usize,
    height: usize,
    width: usize,
    /// In [0, 1], or already normalized when `normalized`.
    values: Vec<f32>,
    normalized: bool,
}

fn from_decoded(img: DecodedImage, c: usize, source: String, index: Option<usize>) -> Result<Item> {
    let img = img.with_channels(c)?;
    Ok(Item {
        source,
        index,
        channels: c,
        height: img.height,
        width: img.width,
        values: img.pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        normalized: false,
    })
}

/// The images of one input file, converted to `c` channels.
fn read_input(path: &Path, c: usize, limit: Option<usize>, normalized: bool) -> Result<Vec<Item>> {
    let raw = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    let name = path.display().to_string();
    if sniff_image(&raw).is_some() {
        return Ok(vec![from_decoded(
            decode_image_bytes(&raw, path)?,
            c,
            name,
            None,
        )?]);
    }
    let bytes = idx::gunzip_if_gzip(raw, path)?;
    if bytes.len() >= 4 && bytes[..3] == [0, 0, 8] {
        let a = idx::parse_idx(&bytes, path)?;
        if a.dims.len() != 3 {
            return Err(NablaError::format(
                path,
                format!(
                    "an IDX image file has 3 dims (N, rows, cols), this one {:?}",
                    a.dims
                ),
            ));
        }
        let (n, h, w) = (a.dims[0], a.dims[1], a.dims[2]);
        let n = limit.map_or(n, |l| l.min(n));
        return (0..n)
            .map(|i| {
                let img = DecodedImage {
                    channels: 1,
                    height: h,
                    width: w,
                    pixels: a.data[i * h * w..(i + 1) * h * w].to_vec(),
                };
                from_decoded(img, c, name.clone(), Some(i))
            })
            .collect();
    }
    if crate::io::sniff_non_safetensors(&bytes).is_none() && bytes.len() > 8 && bytes[8] == b'{' {
        let t = crate::io::parse_safetensors::<f32>(&bytes, path)?;
        let x = crate::io::take(&t, "x", path)?;
        x.check_finite("input x")?;
        let s = x.shape().to_vec();
        if s.len() != 4 {
            return Err(NablaError::format(
                path,
                format!("x must be (B, C, H, W), has shape {s:?}"),
            ));
        }
        if s[1] != c {
            return Err(NablaError::format(
                path,
                format!("x has {} channels, the model expects {c} channels", s[1]),
            ));
        }
        let per = s[1] * s[2] * s[3];
        let n = limit.map_or(s[0], |l| l.min(s[0]));
        return Ok((0..n)
            .map(|i| Item {
                source: name.clone(),
                index: Some(i),
                channels: c,
                height: s[2],
                width: s[3],
                values: x.data()[i * per..(i + 1) * per].to_vec(),
                normalized,
            })
            .collect());
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(NablaError::format(
        path,
        format!(
            "not an input `vit predict` reads: expected a PNG or JPEG image, an IDX image file or a safetensors file with `x`; it starts with {}",
            head.join(" ")
        ),
    ))
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
fn top_k(p: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).collect();
    idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

pub fn predict(a: &PredictArgs) -> Result<()> {
    if a.top_k == 0 || a.limit == Some(0) {
        return Err(invalid!("--top-k and --limit must be at least 1"));
    }
    let inputs: Vec<&PathBuf> = a.inputs.iter().chain(&a.input_flag).collect();
    if inputs.is_empty() {
        return Err(invalid!(
            "give at least one input: image files (PNG/JPEG), an IDX image file or a safetensors file with x"
        ));
    }
    let (vit, store) = load_model(&a.checkpoint, a.heads, a.pool)?;
    let cfg = &vit.cfg;
    let s = cfg.image_size;
    let opts = match saved_batch_options(&a.checkpoint) {
        Some(o) => o,
        None => {
            errln!(
                "note: {} saves no normalization (not a nabla run): pixels are only scaled to [0, 1]",
                a.checkpoint.display()
            );
            BatchOptions {
                mean: vec![0.0; cfg.in_chans],
                std: vec![1.0; cfg.in_chans],
                image_size: s,
                crop_pad: 0,
                hflip: false,
            }
        }
    };
    let classes = saved_classes(&a.checkpoint);
    let mut items = Vec::new();
    for p in inputs {
        items.extend(read_input(p, cfg.in_chans, a.limit, a.normalized)?);
    }
    let nc = cfg.num_classes;
    let k = a.top_k.min(nc);
    for chunk in items.chunks(256) {
        let mut x = Vec::with_capacity(chunk.len() * cfg.in_chans * s * s);
        for it in chunk {
            let o = if it.normalized {
                BatchOptions {
                    mean: vec![0.0; it.channels],
                    std: vec![1.0; it.channels],
                    ..opts.clone()
                }
            } else {
                opts.clone()
            };
            resize_and_normalize(&it.values, it.channels, (it.height, it.width), &o, &mut x)?;
        }
        let x = Tensor::new(&[chunk.len(), cfg.in_chans, s, s], x)?;
        let logits = vit.predict(&store, &x)?;
        let mut logp = logits.data().to_vec();
        log_softmax_rows(&mut logp, nc);
        for (r, it) in chunk.iter().enumerate() {
            let lg: Vec<f64> = logits.data()[r * nc..(r + 1) * nc]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let p: Vec<f64> = logp[r * nc..(r + 1) * nc]
                .iter()
                .map(|&v| (v as f64).exp())
                .collect();
            let label = match it.index {
                Some(i) => format!("{}[{i}]", it.source),
                None => it.source.clone(),
            };
            // NaN logits have no top class (argmax would name the last one): an error.
            if !lg.iter().all(|v| v.is_finite()) {
                return Err(NablaError::NonFinite(format!(
                    "the model's logits for {label} are not finite ({} of {nc} are NaN or infinite)",
                    lg.iter().filter(|v| !v.is_finite()).count()
                )));
            }
            let top = top_k(&p, k);
            let name = |c: usize| classes.get(c).cloned();
            if a.json {
                let t: Vec<_> = top
                    .iter()
                    .map(|&c| json!({"class": c, "name": name(c), "prob": p[c]}))
                    .collect();
                outln!(
                    "{}",
                    json!({"input": it.source, "index": it.index, "top": t, "probs": p, "logits": lg})
                )?;
            } else {
                let t: Vec<String> = top
                    .iter()
                    .map(|&c| match name(c) {
                        Some(n) if n != c.to_string() => format!("{n} (class {c}) {:.4}", p[c]),
                        _ => format!("{c} {:.4}", p[c]),
                    })
                    .collect();
                outln!("{label}: {}", t.join(" | "))?;
            }
        }
    }
    Ok(())
}
