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
use crate::nn::attention::Attention;
use crate::nn::mlp::Mlp;
use crate::nn::norm::LayerNorm;
use crate::nn::patch_embed::TokenEmbed;
use crate::nn::{params_of, Ctx, Dropout, KeepProb, Linear, Module, VarBuilder};
use crate::ops;
use crate::tensor::{Element, Tensor, TensorView};
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

/// One pre-norm Transformer block (timm `Block`):
/// `z' = z + drop(attn(norm1(z)))`, `z'' = z' + drop(mlp(norm2(z')))`.
#[derive(Clone, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    /// timm's `proj_drop` after the attention projection and in the MLP output.
    pub drop: Dropout,
}

impl Block {
    /// `weight` initializes the attention and MLP weights (timm: truncated normal, std 0.02).
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        cfg: &VitConfig,
        weight: Init,
    ) -> Result<Self> {
        let d = cfg.dim;
        Ok(Block {
            norm1: LayerNorm::new(vb.pp("norm1"), &[d], cfg.eps, true)?,
            attn: Attention::new(vb.pp("attn"), d, cfg.heads, true, weight)?,
            norm2: LayerNorm::new(vb.pp("norm2"), &[d], cfg.eps, true)?,
            mlp: Mlp::new(vb.pp("mlp"), d, cfg.mlp_dim, weight)?,
            drop: Dropout::new(KeepProb::from_torch_drop_prob(cfg.dropout)?),
        })
    }
    /// The block, and its attention probabilities `(B, H, T, T)` when `need_attn`.
    pub fn forward_with_attn<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        z: Var,
        ctx: &mut Ctx<'_>,
        need_attn: bool,
    ) -> Result<(Var, Option<Var>)> {
        let h = self.norm1.forward(tape, store, z, ctx)?;
        let (a, p) = self
            .attn
            .forward_with_weights(tape, store, h, None, need_attn)?;
        let a = self.drop.forward(tape, store, a, ctx)?;
        let z = ops::add(tape, z, a)?;
        let h = self.norm2.forward(tape, store, z, ctx)?;
        let m = self.mlp.forward(tape, store, h, ctx)?;
        let m = self.drop.forward(tape, store, m, ctx)?;
        Ok((ops::add(tape, z, m)?, p))
    }
}

impl<T: Element> Module<T> for Block {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        z: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        Ok(self.forward_with_attn(tape, store, z, ctx, false)?.0)
    }
    fn params(&self) -> Vec<ParamId> {
        params_of::<T>(&[&self.norm1, &self.attn, &self.norm2, &self.mlp])
    }
}

/// A ViT composed of modules; its parameters (timm names, from the composition) live in a
/// [`ParamStore`].
#[derive(Clone, Debug)]
pub struct Vit {
    pub cfg: VitConfig,
    /// `cls_token`, `pos_embed`, `patch_embed.proj`.
    pub embed: TokenEmbed,
    /// `blocks.{i}`.
    pub blocks: Vec<Block>,
    /// `norm` (token pooling) or `fc_norm` (avg pooling).
    pub norm: LayerNorm,
    pub head: Linear,
    /// timm's `pos_drop`.
    pub drop: Dropout,
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

/// Micro-batches of [`Vit::loss_and_grads`] in a batch of `b` images.
pub fn micro_batches(b: usize) -> usize {
    b.div_ceil(MICRO_BATCH)
}

/// One micro-batch of a step ([`Vit::micro_batch_grads`]).
pub struct MicroBatch<T: Element> {
    /// Its cross-entropy times its share of the batch (the batch mean is the sum of these).
    pub loss: f64,
    pub correct: usize,
    /// Its share of the batch mean's gradients.
    pub grads: Vec<(ParamId, Tensor<T>)>,
}

/// What one forward/backward of a batch yields besides the gradients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f64,
    /// Images whose arg-max logit is the target.
    pub correct: usize,
}

/// The timm parameter names and shapes of a configuration, in timm's state-dict order: the
/// model's own constructor run on a [`VarBuilder::shapes`] (nothing allocated).
pub fn param_shapes(cfg: &VitConfig) -> Result<Vec<(String, Vec<usize>)>> {
    let mut shapes = Vec::new();
    Vit::build::<f32>(cfg.clone(), VarBuilder::shapes(&mut shapes))?;
    Ok(shapes)
}

impl Vit {
    /// The model over parameters from `vb` (initialized, loaded or bound). Initializers are
    /// timm's: truncated normal std 0.02 for linear weights and `pos_embed`, `cls_token` ~
    /// N(0, 1e-6²), PyTorch's Conv2d default for the patch projection, zero biases, unit
    /// LayerNorm weights — each declared by the module that owns the parameter.
    pub fn build<T: Element>(cfg: VitConfig, mut vb: VarBuilder<'_, T>) -> Result<Vit> {
        cfg.validate()?;
        let tn = Init::TruncNormal {
            mean: 0.0,
            std: 0.02,
            a: -0.04,
            b: 0.04,
        };
        let embed = TokenEmbed::new(
            vb.by_ref(),
            cfg.in_chans,
            cfg.patch,
            cfg.num_patches(),
            cfg.dim,
            true,
            tn,
        )?;
        let blocks = {
            let mut bv = vb.pp("blocks");
            (0..cfg.depth)
                .map(|i| Block::new(bv.pp(i), &cfg, tn))
                .collect::<Result<Vec<_>>>()?
        };
        let norm = LayerNorm::new(vb.pp(norm_name(cfg.pool)), &[cfg.dim], cfg.eps, true)?;
        let head = Linear::with_init(
            vb.pp("head"),
            cfg.dim,
            cfg.num_classes,
            Some(Init::Zeros),
            tn,
        )?;
        let drop = Dropout::new(KeepProb::from_torch_drop_prob(cfg.dropout)?);
        Ok(Vit {
            cfg,
            embed,
            blocks,
            norm,
            head,
            drop,
        })
    }

    /// Adds freshly initialized parameters to `store` (seeded: the same seed gives the same
    /// bits) and binds them.
    pub fn init<T: Element>(cfg: VitConfig, store: &mut ParamStore<T>, seed: u64) -> Result<Vit> {
        let mut rng = Rng::new(seed);
        Vit::build(cfg, VarBuilder::init(store, &mut rng))
    }

    /// Binds to parameters already in `store`, checking every name and shape.
    pub fn bind<T: Element>(cfg: VitConfig, store: &ParamStore<T>) -> Result<Vit> {
        Vit::build(cfg, VarBuilder::bind(store))
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
        let mut store = ParamStore::new();
        let vit = Vit::build(cfg, VarBuilder::load(&mut store, tensors))?;
        Ok((vit, store))
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
        let z = self.tokens(tape, store, x)?;
        self.blocks_of_tokens(tape, store, z, opts)
    }

    /// The embedded tokens `(B, 1+N, D)` of images `x (B, C, H, W)` on the tape.
    fn tokens<T: Element>(&self, tape: &mut Tape<T>, store: &ParamStore<T>, x: Var) -> Result<Var> {
        self.check_images(tape.shape(x))?;
        // The embedding has no train/eval difference.
        self.embed.forward(tape, store, x, &mut Ctx::eval())
    }

    /// Checks images `(B, C, H, W)` against the model: 4-D, the channels, the resolution.
    fn check_images(&self, xs: &[usize]) -> Result<()> {
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
        Ok(())
    }

    /// From the embedded tokens `z (B, T, D)`: the position dropout and the blocks, as
    /// [`Vit::forward_blocks`] returns them.
    fn blocks_of_tokens<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        z: Var,
        opts: &mut ForwardOptions<'_>,
    ) -> Result<(Var, Vec<Var>)> {
        let mut ctx = Ctx {
            train: opts.train,
            rng: opts.rng.as_deref_mut(),
        };
        let mut z = self.drop.forward(tape, store, z, &mut ctx)?;
        let mut attn = Vec::new();
        for b in &self.blocks {
            let (nz, pa) = b.forward_with_attn(tape, store, z, &mut ctx, opts.need_attn)?;
            attn.extend(pa);
            z = nz;
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
        self.norm.forward(tape, store, pooled, &mut Ctx::eval())
    }

    /// Logits `(B, classes)` of images `x (B, C, H, W)`.
    pub fn forward<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        opts: ForwardOptions<'_>,
    ) -> Result<VitOutput> {
        let z = self.tokens(tape, store, x)?;
        self.forward_tokens(tape, store, z, opts)
    }

    /// [`Vit::forward`] of borrowed images (a NumPy array's buffer, say): on a no-grad tape
    /// the patch embedding reads `x` in place and only the tokens go on the tape
    /// ([`TokenEmbed::forward_view`]); a recording tape keeps its own copy of `x`.
    pub fn forward_view<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: TensorView<'_, T>,
        opts: ForwardOptions<'_>,
    ) -> Result<VitOutput> {
        self.check_images(x.shape())?;
        let z = self.embed.forward_view(tape, store, x)?; // (B, T, D)
        self.forward_tokens(tape, store, z, opts)
    }

    /// From the embedded tokens `z (B, T, D)` to the logits: the blocks, the pooling, the
    /// head.
    fn forward_tokens<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        z: Var,
        mut opts: ForwardOptions<'_>,
    ) -> Result<VitOutput> {
        let (z, attn) = self.blocks_of_tokens(tape, store, z, &mut opts)?;
        let f = self.pre_logits(tape, store, z)?;
        let logits = self.head.forward(tape, store, f, &mut Ctx::eval())?;
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
        let all = 0..micro_batches(x.shape().first().copied().unwrap_or(0));
        let parts = self.micro_batch_grads(store, x, y, label_smoothing, rng, all, None)?;
        let mut stats = StepStats {
            loss: 0.0,
            correct: 0,
        };
        for part in parts {
            stats.loss += part.loss;
            stats.correct += part.correct;
            for (id, g) in part.grads {
                store.get_mut(id).grad.axpy(T::one(), &g)?;
            }
        }
        Ok(stats)
    }

    /// The micro-batches `range` (of [`micro_batches`]`(B)`) of [`Vit::loss_and_grads`], each
    /// with its share-weighted loss, its correct count and its gradients, in order: what one
    /// rank of a data-parallel step computes ([`crate::dist`]), the sum over all of them being
    /// the whole batch's. `rng` is forked once per micro-batch of the *whole* batch, so the
    /// streams and the state `rng` is left in do not depend on `range`. With a `sink`, each
    /// micro-batch's backward hands its gradients to a data-parallel reduction as they become
    /// final ([`crate::dist::Group::sum_grads_overlapped`]; micro-batch `range.start + i` is
    /// the sink's `i`).
    #[allow(clippy::too_many_arguments)]
    pub fn micro_batch_grads<T: Element>(
        &self,
        store: &ParamStore<T>,
        x: &Tensor<T>,
        y: &[usize],
        label_smoothing: f64,
        rng: Option<&mut Rng>,
        range: std::ops::Range<usize>,
        sink: Option<&crate::dist::GradSink<T>>,
    ) -> Result<Vec<MicroBatch<T>>> {
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
        if range.end > chunks.len() {
            return Err(invalid!(
                "micro-batches {range:?} of a batch of {} ({} micro-batches)",
                b,
                chunks.len()
            ));
        }
        let train = rng.is_some();
        let mut seeds = vec![None; chunks.len()];
        if let Some(rng) = rng {
            seeds.iter_mut().for_each(|s| *s = Some(rng.fork()));
        }
        let c = self.cfg.num_classes;
        chunks[range.clone()]
            .to_vec()
            .into_par_iter()
            .zip(seeds[range].to_vec())
            .enumerate()
            .map(|(i, ((s, e), mut rng))| -> Result<_> {
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
                let out = self.forward(&mut tape, store, xv, opts)?;
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
                match sink {
                    Some(sink) => sink.backward(i, &mut tape, loss, seed)?,
                    None => tape.backward_with(loss, seed)?,
                }
                Ok(MicroBatch {
                    loss: l,
                    correct,
                    grads: tape.take_param_grads(),
                })
            })
            .collect()
    }

    /// Inference convenience: logits of a batch of images, no tape kept.
    pub fn predict<T: Element>(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        self.predict_view(store, x.view())
    }

    /// [`Vit::predict`] of borrowed images, read in place ([`Vit::forward_view`]).
    pub fn predict_view<T: Element>(
        &self,
        store: &ParamStore<T>,
        x: TensorView<'_, T>,
    ) -> Result<Tensor<T>> {
        let mut tape = Tape::<T>::no_grad();
        let out = self.forward_view(&mut tape, store, x, ForwardOptions::default())?;
        Ok(tape.value(out.logits).clone())
    }

    /// The attention probabilities `(B, H, T, T)` of every block (rows = queries, columns =
    /// keys, token 0 = the class token) for borrowed images, read in place, in evaluation
    /// mode.
    pub fn attention_view<T: Element>(
        &self,
        store: &ParamStore<T>,
        x: TensorView<'_, T>,
    ) -> Result<Vec<Tensor<T>>> {
        let mut tape = Tape::<T>::no_grad();
        let opts = ForwardOptions {
            need_attn: true,
            ..Default::default()
        };
        let out = self.forward_view(&mut tape, store, x, opts)?;
        Ok(out.attn.iter().map(|&v| tape.value(v).clone()).collect())
    }
}

impl<T: Element> Module<T> for Vit {
    /// Logits `(B, classes)` of images `x (B, C, H, W)`.
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let opts = ForwardOptions {
            train: ctx.train,
            rng: ctx.rng.as_deref_mut(),
            need_attn: false,
        };
        Ok(Vit::forward(self, tape, store, x, opts)?.logits)
    }
    fn params(&self) -> Vec<ParamId> {
        let mut children: Vec<&dyn Module<T>> = vec![&self.embed];
        children.extend(self.blocks.iter().map(|b| b as &dyn Module<T>));
        children.extend([&self.norm as &dyn Module<T>, &self.head]);
        params_of(&children)
    }
}
