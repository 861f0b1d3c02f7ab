//! Vision Transformer (Dosovitskiy et al. 2020), parameter-compatible with timm's
//! `VisionTransformer` (`class_token=True`, `qkv_bias=True`, `global_pool='token'|'avg'`, LayerNorm
//! eps 1e-6, exact GELU, no `fc_norm` for token pooling).
//!
//! ```text
//! z0 = [cls; patches W_e] + pos                          (B, 1+N, D)    patch_embed (fused)
//! z' = z + attn.proj(MHSA(norm1(z)))                     (B, 1+N, D)    attention (fused)
//! z  = z' + mlp.fc2(GELU(mlp.fc1(norm2(z'))))            (B, 1+N, D)    mlp (fused)
//! token: logits = head(norm(z[:, 0]))                    (B, classes)
//! avg:   logits = head(fc_norm(mean(z[:, 1..])))         (B, classes)
//! ```
//!
//! timm applies `norm` to every token and then takes the class token; LayerNorm works per token,
//! so taking the class token first is the same value for a fraction of the work.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::{NablaError, Result};
use crate::init::{Init, Rng};
use crate::nn::attention::{multi_head_self_attention, AttnOptions, MhaWeights};
use crate::nn::mlp::{mlp, MlpWeights};
use crate::nn::norm::layer_norm;
use crate::nn::patch_embed::{patch_embed, EmbedWeights};
use crate::ops;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use std::collections::BTreeMap;

/// How the token sequence becomes one feature vector for the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The class token after the final `norm` (timm `global_pool='token'`).
    Cls,
    /// Mean of the patch tokens (class token excluded), then `fc_norm` (timm `global_pool='avg'`).
    Avg,
}

impl std::str::FromStr for Pool {
    type Err = NablaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cls" | "token" => Ok(Pool::Cls),
            "avg" | "mean" => Ok(Pool::Avg),
            _ => Err(invalid!("pool must be cls or avg, got {s:?}")),
        }
    }
}

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch: usize,
    pub in_chans: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub num_classes: usize,
    pub pool: Pool,
    pub eps: f64,
    /// Dropout after the position embedding, the attention projection and in the MLP output
    /// (timm `drop_rate`/`proj_drop_rate`), training only.
    pub dropout: f64,
}

impl VitConfig {
    /// Checks that the numbers describe a buildable model, within the stated limits (a
    /// configuration read from a run folder is checked as a whole before any size is used).
    pub fn validate(&self) -> Result<()> {
        if self.patch == 0 || self.image_size == 0 {
            return Err(invalid!("image size and patch size must be positive"));
        }
        if self.dim == 0 {
            return Err(invalid!("the embedding dim must be positive"));
        }
        for (name, v, max) in [
            ("image size", self.image_size, 1 << 14),
            ("input channels", self.in_chans, 1 << 10),
            ("embedding dim", self.dim, 1 << 20),
            ("depth", self.depth, 1 << 12),
            ("mlp dim", self.mlp_dim, 1 << 20),
            ("classes", self.num_classes, 1 << 16),
        ] {
            if v > max {
                return Err(invalid!("{name} {v} is over the limit of {max}"));
            }
        }
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(invalid!(
                "LayerNorm eps must be in (0, 1), got {}",
                self.eps
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return Err(invalid!(
                "image size {} is not divisible by the patch size {}",
                self.image_size,
                self.patch
            ));
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
            return Err(invalid!(
                "embedding dim {} is not divisible by {} heads",
                self.dim,
                self.heads
            ));
        }
        if self.in_chans == 0 || self.depth == 0 || self.mlp_dim == 0 || self.num_classes == 0 {
            return Err(invalid!(
                "channels, depth, mlp dim and classes must be positive: {self:?}"
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Sequence length: the class token plus the patches.
    pub fn tokens(&self) -> usize {
        1 + self.num_patches()
    }
    /// Number of parameters (as `f64`: counted before anything is allocated).
    pub fn num_params(&self) -> f64 {
        let (d, m) = (self.dim as f64, self.mlp_dim as f64);
        let k = (self.in_chans * self.patch * self.patch) as f64;
        let block = 4.0 * d * d + 2.0 * d * m + 9.0 * d + m;
        d + self.tokens() as f64 * d
            + k * d
            + d
            + self.depth as f64 * block
            + 2.0 * d
            + (d + 1.0) * self.num_classes as f64
    }

    /// The memory a step on `batch` images holds: the parameters (with gradients and AdamW's
    /// two moments when training, and the copy kept for `best/`), and the activations the tape
    /// keeps per block — the token streams (`10·D + 2·M` per token: norms, qkv, projections,
    /// residuals, the MLP's hidden layer before and after GELU) and the attention
    /// probabilities (`heads·T` per token) — doubled for their gradients when training.
    pub fn memory(&self, batch: usize, train: bool) -> crate::memory::Estimate {
        let (t, d, m, h) = (
            self.tokens() as f64,
            self.dim as f64,
            self.mlp_dim as f64,
            self.heads as f64,
        );
        let copies = if train { 5.0 } else { 1.0 };
        let per_image = self.depth as f64 * t * (10.0 * d + 2.0 * m + h * t)
            + t * (d + (self.in_chans * self.patch * self.patch) as f64);
        let grads = if train { 2.0 } else { 1.0 };
        crate::memory::Estimate::new()
            .f32s("parameters", copies * self.num_params())
            .f32s("activations", grads * batch as f64 * per_image)
    }

    /// Multiply-adds of one forward pass for one image (linear layers + attention products).
    pub fn forward_macs(&self) -> f64 {
        let (t, d, m) = (self.tokens() as f64, self.dim as f64, self.mlp_dim as f64);
        let k = (self.in_chans * self.patch * self.patch) as f64;
        let embed = self.num_patches() as f64 * k * d;
        let block = t * (3.0 * d * d + d * d + 2.0 * d * m) + 2.0 * t * t * d;
        embed + self.depth as f64 * block + d * self.num_classes as f64
    }
}

/// Ids of one block's parameters.
#[derive(Clone, Debug)]
struct BlockIds {
    norm1: (ParamId, ParamId),
    qkv: (ParamId, ParamId),
    proj: (ParamId, ParamId),
    norm2: (ParamId, ParamId),
    fc1: (ParamId, ParamId),
    fc2: (ParamId, ParamId),
}

/// A ViT bound to the parameters of a [`ParamStore`] (timm names).
#[derive(Clone, Debug)]
pub struct Vit {
    pub cfg: VitConfig,
    cls: ParamId,
    pos: ParamId,
    patch: (ParamId, ParamId),
    blocks: Vec<BlockIds>,
    /// `norm` (token pooling) or `fc_norm` (avg pooling).
    norm: (ParamId, ParamId),
    head: (ParamId, ParamId),
}

/// What [`Vit::forward`] returns.
pub struct VitOutput {
    pub logits: Var,
    /// Per block, the attention probabilities (B, H, T, T) when requested.
    pub attn: Vec<Var>,
}

/// Forward-pass options.
#[derive(Default)]
pub struct ForwardOptions<'a> {
    /// Training mode: dropout active (needs `rng` when dropout > 0).
    pub train: bool,
    pub rng: Option<&'a mut Rng>,
    pub need_attn: bool,
}

fn norm_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Cls => "norm",
        Pool::Avg => "fc_norm",
    }
}

/// Index of the largest entry of a row of logits (the first on ties, NaN ordered by
/// `total_cmp`); 0 for an empty row.
pub fn argmax<T: Element>(row: &[T]) -> usize {
    (0..row.len())
        .max_by(|&i, &j| row[i].as_f64().total_cmp(&row[j].as_f64()))
        .unwrap_or(0)
}

/// Images per micro-batch of [`Vit::loss_and_grads`].
pub const MICRO_BATCH: usize = 32;

/// What one forward/backward of a batch yields besides the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Images whose arg-max logit is the target.
    pub correct: usize,
}

/// The timm parameter names and shapes of a configuration, in timm's state-dict order.
pub fn param_shapes(cfg: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, m) = (cfg.dim, cfg.mlp_dim);
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, cfg.tokens(), d]),
        (
            "patch_embed.proj.weight".into(),
            vec![d, cfg.in_chans, cfg.patch, cfg.patch],
        ),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    for i in 0..cfg.depth {
        let p = format!("blocks.{i}.");
        for (n, s) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.qkv.bias", vec![3 * d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("mlp.fc1.weight", vec![m, d]),
            ("mlp.fc1.bias", vec![m]),
            ("mlp.fc2.weight", vec![d, m]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            v.push((format!("{p}{n}"), s));
        }
    }
    let nn = norm_name(cfg.pool);
    v.push((format!("{nn}.weight"), vec![d]));
    v.push((format!("{nn}.bias"), vec![d]));
    v.push(("head.weight".into(), vec![cfg.num_classes, d]));
    v.push(("head.bias".into(), vec![cfg.num_classes]));
    v
}

impl Vit {
    /// Adds freshly initialized parameters (timm's scheme: truncated normal std 0.02 for
    /// linear weights and `pos_embed`, `cls_token` ~ N(0, 1e-6²), PyTorch's Conv2d default for
    /// the patch projection, zero biases, unit LayerNorm weights) to `store` and binds them.
    pub fn init<T: Element>(cfg: VitConfig, store: &mut ParamStore<T>, seed: u64) -> Result<Vit> {
        cfg.validate()?;
        let mut rng = Rng::new(seed);
        let tn = Init::TruncNormal {
            mean: 0.0,
            std: 0.02,
            a: -0.04,
            b: 0.04,
        };
        for (name, shape) in param_shapes(&cfg) {
            let init = if name == "cls_token" {
                Init::Normal {
                    mean: 0.0,
                    std: 1e-6,
                }
            } else if name == "patch_embed.proj.weight" || name == "patch_embed.proj.bias" {
                let fan_in = (cfg.in_chans * cfg.patch * cfg.patch) as f64;
                let bound = 1.0 / fan_in.sqrt();
                Init::Uniform {
                    low: -bound,
                    high: bound,
                }
            } else if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name == "norm.weight"
                || name == "fc_norm.weight"
            {
                Init::Constant(1.0)
            } else if name.ends_with(".bias") {
                Init::Zeros
            } else {
                tn
            };
            store.add(name, init.tensor(&shape, &mut rng)?)?;
        }
        Vit::bind(cfg, store)
    }

    /// Binds to parameters already in `store`, checking every name and shape.
    pub fn bind<T: Element>(cfg: VitConfig, store: &ParamStore<T>) -> Result<Vit> {
        cfg.validate()?;
        for (name, shape) in param_shapes(&cfg) {
            let p = store.by_name(&name)?;
            if p.value.shape() != shape.as_slice() {
                return Err(shape_err!(
                    "vit",
                    "parameter {name} has shape {:?}, the configuration needs {:?} ({cfg:?})",
                    p.value.shape(),
                    shape
                ));
            }
        }
        let id = |n: &str| store.find(n).expect("checked above");
        let pair = |n: &str| (id(&format!("{n}.weight")), id(&format!("{n}.bias")));
        let blocks = (0..cfg.depth)
            .map(|i| BlockIds {
                norm1: pair(&format!("blocks.{i}.norm1")),
                qkv: pair(&format!("blocks.{i}.attn.qkv")),
                proj: pair(&format!("blocks.{i}.attn.proj")),
                norm2: pair(&format!("blocks.{i}.norm2")),
                fc1: pair(&format!("blocks.{i}.mlp.fc1")),
                fc2: pair(&format!("blocks.{i}.mlp.fc2")),
            })
            .collect();
        Ok(Vit {
            cls: id("cls_token"),
            pos: id("pos_embed"),
            patch: pair("patch_embed.proj"),
            blocks,
            norm: pair(norm_name(cfg.pool)),
            head: pair("head"),
            cfg,
        })
    }

    /// Infers the architecture of a timm state dict from its tensor shapes (heads and pooling
    /// cannot be read from shapes and are given). `dropout` is 0.
    pub fn infer_config<T: Element>(
        tensors: &BTreeMap<String, Tensor<T>>,
        heads: usize,
        pool: Pool,
    ) -> Result<VitConfig> {
        let get = |n: &str| -> Result<&Tensor<T>> {
            tensors.get(n).ok_or_else(|| {
                invalid!(
                    "checkpoint has no tensor {n:?}; is it a timm VisionTransformer state dict?"
                )
            })
        };
        let pw = get("patch_embed.proj.weight")?;
        if pw.ndim() != 4 || pw.dim(2) != pw.dim(3) {
            return Err(invalid!(
                "patch_embed.proj.weight must be (D, C, P, P), got {:?}",
                pw.shape()
            ));
        }
        let (dim, in_chans, patch) = (pw.dim(0), pw.dim(1), pw.dim(2));
        let pos = get("pos_embed")?;
        if pos.ndim() != 3 || pos.dim(0) != 1 || pos.dim(1) < 2 {
            return Err(invalid!(
                "pos_embed must be (1, 1+N, D), got {:?}",
                pos.shape()
            ));
        }
        let n = pos.dim(1) - 1;
        let grid = (n as f64).sqrt().round() as usize;
        if grid * grid != n {
            return Err(invalid!(
                "pos_embed has {n} patch positions, not a square grid"
            ));
        }
        let mut depth = 0;
        while tensors.contains_key(&format!("blocks.{depth}.norm1.weight")) {
            depth += 1;
        }
        if depth == 0 {
            return Err(invalid!("checkpoint has no blocks.0.*"));
        }
        let mlp_dim = get("blocks.0.mlp.fc1.weight")?.dim(0);
        let num_classes = get("head.weight")?.dim(0);
        let has = |n: &str| tensors.contains_key(n);
        match pool {
            Pool::Cls if !has("norm.weight") => {
                return Err(invalid!(
                    "--pool cls needs norm.weight, the checkpoint has none (an avg-pool model? it has fc_norm: {})",
                    has("fc_norm.weight")
                ))
            }
            Pool::Avg if !has("fc_norm.weight") => {
                return Err(invalid!(
                    "--pool avg needs fc_norm.weight, the checkpoint has none (a token-pool model?)"
                ))
            }
            _ => {}
        }
        let cfg = VitConfig {
            image_size: grid * patch,
            patch,
            in_chans,
            dim,
            depth,
            heads,
            mlp_dim,
            num_classes,
            pool,
            eps: 1e-6,
            dropout: 0.0,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Loads a timm-named checkpoint into a fresh store and binds a model to it.
    pub fn from_tensors<T: Element>(
        tensors: &BTreeMap<String, Tensor<T>>,
        cfg: VitConfig,
    ) -> Result<(Vit, ParamStore<T>)> {
        cfg.validate()?;
        let mut store = ParamStore::new();
        for (name, shape) in param_shapes(&cfg) {
            let t = tensors
                .get(&name)
                .ok_or_else(|| invalid!("checkpoint has no tensor {name:?}"))?;
            if t.shape() != shape.as_slice() {
                return Err(shape_err!(
                    "vit",
                    "checkpoint tensor {name} has shape {:?}, the flags need {:?}",
                    t.shape(),
                    shape
                ));
            }
            store.add(name, t.clone())?;
        }
        let vit = Vit::bind(cfg, &store)?;
        Ok((vit, store))
    }

    fn dropout<T: Element>(
        &self,
        tape: &mut Tape<T>,
        x: Var,
        opts: &mut ForwardOptions<'_>,
    ) -> Result<Var> {
        let p = self.cfg.dropout;
        if !opts.train || p == 0.0 {
            return Ok(x);
        }
        let rng = opts
            .rng
            .as_deref_mut()
            .ok_or_else(|| invalid!("dropout in training mode needs an rng"))?;
        let keep = T::c(1.0 / (1.0 - p));
        let mask = Tensor::from_fn(tape.shape(x), |_| {
            if rng.bernoulli(p) {
                T::zero()
            } else {
                keep
            }
        });
        let m = tape.constant(mask);
        ops::mul(tape, x, m)
    }

    /// Token features after the blocks (before the final norm): `(B, 1+N, D)`, and the
    /// per-block attention probabilities if requested.
    pub fn forward_blocks<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        opts: &mut ForwardOptions<'_>,
    ) -> Result<(Var, Vec<Var>)> {
        let xs = tape.shape(x).to_vec();
        let c = &self.cfg;
        if xs.len() != 4 {
            return Err(shape_err!(
                "vit",
                "images must be (B, C, H, W), got {:?}",
                xs
            ));
        }
        if xs[1] != c.in_chans {
            return Err(shape_err!(
                "vit",
                "images have {} channels ({:?}), the model was built for {}",
                xs[1],
                xs,
                c.in_chans
            ));
        }
        if xs[2] != c.image_size || xs[3] != c.image_size {
            return Err(shape_err!(
                "vit",
                "images are {}x{}, the model was built for {}x{} (use `nabla vit finetune` to change resolution)",
                xs[2],
                xs[3],
                c.image_size,
                c.image_size
            ));
        }
        let p = |tape: &mut Tape<T>, id: ParamId| tape.param(store, id);
        let ew = EmbedWeights {
            proj_w: p(tape, self.patch.0),
            proj_b: p(tape, self.patch.1),
            cls: Some(p(tape, self.cls)),
            pos: p(tape, self.pos),
        };
        let mut z = patch_embed(tape, x, &ew)?; // (B, T, D)
        z = self.dropout(tape, z, opts)?;
        let mut attn = Vec::new();
        for b in &self.blocks {
            let (g, bb) = (p(tape, b.norm1.0), p(tape, b.norm1.1));
            let h = layer_norm(tape, z, 1, Some(g), Some(bb), c.eps, None)?;
            let w = MhaWeights {
                qkv_w: p(tape, b.qkv.0),
                qkv_b: Some(p(tape, b.qkv.1)),
                proj_w: p(tape, b.proj.0),
                proj_b: Some(p(tape, b.proj.1)),
            };
            let ao = AttnOptions {
                heads: c.heads,
                mask: None,
                need_weights: opts.need_attn,
            };
            let (a, pa) = multi_head_self_attention(tape, h, &w, &ao)?;
            attn.extend(pa);
            let a = self.dropout(tape, a, opts)?;
            z = ops::add(tape, z, a)?;
            let (g, bb) = (p(tape, b.norm2.0), p(tape, b.norm2.1));
            let h = layer_norm(tape, z, 1, Some(g), Some(bb), c.eps, None)?;
            let mw = MlpWeights {
                fc1_w: p(tape, b.fc1.0),
                fc1_b: p(tape, b.fc1.1),
                fc2_w: p(tape, b.fc2.0),
                fc2_b: p(tape, b.fc2.1),
            };
            let m = mlp(tape, h, &mw)?;
            let m = self.dropout(tape, m, opts)?;
            z = ops::add(tape, z, m)?;
        }
        Ok((z, attn))
    }

    /// The pooled, normalized features fed to the head: `(B, D)`.
    pub fn pre_logits<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        z: Var,
    ) -> Result<Var> {
        let (b, t, d) = (tape.shape(z)[0], tape.shape(z)[1], self.cfg.dim);
        let pooled = match self.cfg.pool {
            Pool::Cls => {
                let c = ops::narrow(tape, z, 1, 0, 1)?;
                ops::reshape(tape, c, &[b, d])?
            }
            Pool::Avg => {
                let pt = ops::narrow(tape, z, 1, 1, t - 1)?;
                ops::mean(tape, pt, 1, false)?
            }
        };
        let (g, bb) = (
            tape.param(store, self.norm.0),
            tape.param(store, self.norm.1),
        );
        layer_norm(tape, pooled, 1, Some(g), Some(bb), self.cfg.eps, None)
    }

    /// Logits `(B, classes)` of images `x (B, C, H, W)`.
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        mut opts: ForwardOptions<'_>,
    ) -> Result<VitOutput> {
        let (z, attn) = self.forward_blocks(tape, store, x, &mut opts)?;
        let f = self.pre_logits(tape, store, z)?;
        let (w, b) = (
            tape.param(store, self.head.0),
            tape.param(store, self.head.1),
        );
        let logits = ops::linear(tape, f, w, Some(b))?;
        Ok(VitOutput { logits, attn })
    }

    /// The mean cross-entropy of a batch `x (B, C, H, W)`, `y` (B), and its parameter gradients,
    /// added into `store`'s `grad`s (they accumulate, as with [`Tape::accumulate_grads`]).
    ///
    /// The batch is cut into micro-batches of [`MICRO_BATCH`] images, each forwarded and
    /// back-propagated on its own tape, the micro-batches in parallel: one parallel section per
    /// step instead of one per op. On 2 cores the per-op sections of these small products
    /// scale ~1.4× (every op waits for its slower half; worse when a neighbour takes a core for
    /// a moment), whole micro-batches with work stealing ~1.9×. Micro-batch `i` of `n_i`
    /// images seeds its backward with `n_i / B`, so its gradient is its share of the batch
    /// mean's; the shares are summed in micro-batch order, so the bits depend on `B` but not on
    /// the thread count. `rng` given = training mode: dropout is active and micro-batch `i`
    /// draws from the `i`-th stream forked from `rng`; `None` = evaluation mode.
    pub fn loss_and_grads<T: Element>(
        &self,
        store: &mut ParamStore<T>,
        x: &Tensor<T>,
        y: &[usize],
        label_smoothing: f64,
        rng: Option<&mut Rng>,
    ) -> Result<StepStats> {
        use rayon::prelude::*;
        if x.ndim() != 4 {
            return Err(shape_err!(
                "vit",
                "images must be (B, C, H, W), got {:?}",
                x.shape()
            ));
        }
        let b = x.dim(0);
        if y.len() != b || b == 0 {
            return Err(shape_err!(
                "vit",
                "{} targets for a batch of {b} images",
                y.len()
            ));
        }
        let per = x.numel() / b;
        let chunks: Vec<(usize, usize)> = (0..b)
            .step_by(MICRO_BATCH)
            .map(|s| (s, (s + MICRO_BATCH).min(b)))
            .collect();
        let train = rng.is_some();
        let mut seeds = vec![None; chunks.len()];
        if let Some(rng) = rng {
            seeds.iter_mut().for_each(|s| *s = Some(rng.fork()));
        }
        let c = self.cfg.num_classes;
        let shared: &ParamStore<T> = store;
        let parts = chunks
            .into_par_iter()
            .zip(seeds)
            .map(|((s, e), mut rng)| -> Result<_> {
                let mut shape = x.shape().to_vec();
                shape[0] = e - s;
                let xs = Tensor::new(&shape, x.data()[s * per..e * per].to_vec())?;
                let mut tape = Tape::<T>::new();
                let xv = tape.constant(xs);
                let opts = ForwardOptions {
                    train,
                    rng: rng.as_mut(),
                    need_attn: false,
                };
                let out = self.forward(&mut tape, shared, xv, opts)?;
                let ce = ops::CrossEntropyOptions {
                    label_smoothing,
                    ..Default::default()
                };
                let loss = ops::cross_entropy(&mut tape, out.logits, &y[s..e], &ce)?;
                let correct = tape
                    .value(out.logits)
                    .data()
                    .chunks(c)
                    .zip(&y[s..e])
                    .filter(|(r, &t)| argmax(r) == t)
                    .count();
                let share = (e - s) as f64 / b as f64;
                let l = tape.value(loss).item().as_f64() * share;
                let seed = Tensor::full(tape.shape(loss), T::c(share));
                tape.backward_with(loss, seed)?;
                Ok((l, correct, tape.take_param_grads()))
            })
            .collect::<Vec<_>>();
        let mut stats = StepStats {
            loss: 0.0,
            correct: 0,
        };
        for part in parts {
            let (l, correct, grads) = part?;
            stats.loss += l;
            stats.correct += correct;
            for (id, g) in grads {
                store.get_mut(id).grad.axpy(T::one(), &g)?;
            }
        }
        Ok(stats)
    }

    /// Inference convenience: logits of a batch of images, no tape kept.
    pub fn predict<T: Element>(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        let mut tape = Tape::<T>::no_grad();
        let xv = tape.constant(x.clone());
        let out = self.forward(&mut tape, store, xv, ForwardOptions::default())?;
        Ok(tape.value(out.logits).clone())
    }
}
