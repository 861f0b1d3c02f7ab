//! ResNet (He et al. 2016), parameter-compatible with timm's `timm.models.resnet.ResNet`
//! (BasicBlock or Bottleneck, `cardinality=1`, `base_width=64`, plain 1×1-conv downsampling,
//! BatchNorm eps 1e-5, ReLU), any number of stages and blocks per stage.
//!
//! ```text
//! stem      default: conv1 7×7/2 → bn1 → ReLU → max-pool 3×3/2      (N, stem_width, H/4, W/4)
//!           small:   conv1 3×3/1 → bn1 → ReLU                        (N, stem_width, H, W)
//! layer{i}  blocks; block 0 of stage i > 1 has stride 2; a block whose stride or width changes
//!           adds downsample = (1×1 conv/s → BN) on the shortcut
//!   Basic       y = ReLU(bn2(conv2(ReLU(bn1(conv1₃ₓ₃/s(x))))) + shortcut(x))
//!   Bottleneck  y = ReLU(bn3(conv3₁ₓ₁(ReLU(bn2(conv2₃ₓ₃/s(ReLU(bn1(conv1₁ₓ₁(x)))))))) + shortcut(x))
//! head      global average pool → fc                                 (N, classes)
//! ```
//!
//! **In timm.** With 4 stages and a 64-wide stem this is exactly
//! `timm.models.resnet.ResNet(block, layers, channels=..., in_chans=..., num_classes=...)`
//! (the fixtures check it). Three things are not stock timm options, though every tensor keeps
//! its timm name and shape: the **small-image stem** (3×3 stride-1 `conv1`, no max-pool, so
//! 28–32 px inputs keep their resolution into `layer1`) — in timm, replace
//! `m.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)` and
//! `m.maxpool = nn.Identity()`; a **stem width other than 64** (timm's `stem_width` sizes only
//! its deep stems) — replace `m.bn1` and `m.layer1[0]` built for that width; **fewer than 4
//! stages** (timm's `forward` calls `layer1`…`layer4` by name) — set the missing `layer{i}` to
//! `nn.Identity()`. `scripts/check_resnet_timm.py` builds any nabla checkpoint that way, loads
//! it strictly and compares the logits. The stem is read back from the kernel of `conv1.weight`
//! (7×7 or 3×3), so no metadata is needed.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::{Init, Rng};
use crate::models::vit::{argmax, StepStats};
use crate::nn::conv::{global_avg_pool, BatchNorm2d, Conv2d, ConvSpec, MaxPool2d};
use crate::nn::{params_of, Ctx, Linear, Module, VarBuilder};
use crate::ops;
use crate::tensor::{Element, Tensor, TensorView};
use crate::{invalid, shape_err};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// timm's BatchNorm eps.
pub const BN_EPS: f64 = 1e-5;
/// PyTorch's BatchNorm momentum.
pub const BN_MOMENTUM: f64 = 0.1;

/// Residual block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1 → 3×3 → 1×1 (ResNet-50 and up), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Stem type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// timm's default: 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool.
    Default,
    /// 3×3 stride-1 conv, BN, ReLU, no max-pool (for 28–32 px images).
    Small,
}

/// Architecture hyper-parameters of a ResNet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResnetConfig {
    pub block: BlockKind,
    /// Blocks per stage (`layer1`, `layer2`, …).
    pub layers: Vec<usize>,
    /// `planes` of each stage (timm's `channels`; outputs are `planes · expansion`).
    pub channels: Vec<usize>,
    /// Output channels of `conv1` (timm's `stem_width`).
    pub stem_width: usize,
    pub stem: Stem,
    pub in_chans: usize,
    pub num_classes: usize,
}

impl ResnetConfig {
    /// Checks that the numbers describe a buildable network, within stated limits.
    pub fn validate(&self) -> Result<()> {
        if self.layers.is_empty() || self.layers.len() != self.channels.len() {
            return Err(invalid!(
                "a ResNet needs one block count and one width per stage, got layers {:?} and channels {:?}",
                self.layers,
                self.channels
            ));
        }
        if self.layers.len() > 8 {
            return Err(invalid!("at most 8 stages, got {}", self.layers.len()));
        }
        for (what, v, max) in [
            ("stem width", self.stem_width, 1 << 14),
            ("input channels", self.in_chans, 1 << 10),
            ("classes", self.num_classes, 1 << 16),
        ] {
            if v == 0 || v > max {
                return Err(invalid!("{what} must be in 1..={max}, got {v}"));
            }
        }
        for (&l, &c) in self.layers.iter().zip(&self.channels) {
            if l == 0 || l > 64 || c == 0 || c > 1 << 14 {
                return Err(invalid!(
                    "each stage needs 1..=64 blocks and 1..=16384 channels, got layers {:?} channels {:?}",
                    self.layers,
                    self.channels
                ));
            }
        }
        Ok(())
    }
    /// Channels into the head (`fc.in_features`).
    pub fn num_features(&self) -> usize {
        self.channels.last().copied().unwrap_or(0) * self.block.expansion()
    }
    /// Number of parameters (BatchNorm's running statistics not counted), from the model's own
    /// constructor on a [`VarBuilder::shapes`].
    pub fn num_params(&self) -> Result<usize> {
        let mut shapes = Vec::new();
        Resnet::<f32>::build(self.clone(), VarBuilder::shapes(&mut shapes))?;
        Ok(shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum())
    }
}

/// A convolution followed by its BatchNorm (the pair every block repeats).
fn conv_bn<T: Element>(
    vb: &mut VarBuilder<'_, T>,
    conv: &str,
    bn: &str,
    (cin, cout, k): (usize, usize, usize),
    stride: usize,
) -> Result<(Conv2d, BatchNorm2d<T>)> {
    // timm's init: He normal in fan-out mode for every convolution.
    let std = (2.0 / (cout * k * k) as f64).sqrt();
    let init = Init::Normal { mean: 0.0, std };
    let spec = ConvSpec {
        stride,
        padding: k / 2,
        groups: 1,
    };
    let c = Conv2d::with_init(vb.pp(conv), (cin, cout, k), spec, None, init)?;
    let b = BatchNorm2d::new(vb.pp(bn), cout, BN_EPS, Some(BN_MOMENTUM), true)?;
    Ok((c, b))
}

/// The shortcut of a block whose stride or width changes: `downsample.0` (1×1 conv, stride s,
/// no bias) and `downsample.1` (BatchNorm).
#[derive(Debug)]
pub struct Downsample<T: Element> {
    pub conv: Conv2d,
    pub bn: BatchNorm2d<T>,
}

impl<T: Element> Module<T> for Downsample<T> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let h = self.conv.forward(tape, store, x, ctx)?;
        self.bn.forward(tape, store, h, ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        params_of::<T>(&[&self.conv, &self.bn])
    }
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        self.bn.buffers()
    }
}

/// One residual block (Basic: two conv/BN pairs; Bottleneck: three), timm's names
/// `conv1`, `bn1`, `conv2`, `bn2`[, `conv3`, `bn3`], `downsample`.
#[derive(Debug)]
pub struct Block<T: Element> {
    /// `(conv_k, bn_k)` in order; ReLU after each but the last, whose output joins the shortcut.
    pub convs: Vec<(Conv2d, BatchNorm2d<T>)>,
    pub downsample: Option<Downsample<T>>,
}

impl<T: Element> Block<T> {
    /// `inplanes` → `planes · expansion` channels, first convolution of stride `stride` (the
    /// 3×3 one: `conv1` for Basic, `conv2` for Bottleneck, as timm). timm's `zero_init_last`:
    /// the last BatchNorm's weight starts at 0, so each block starts as the identity.
    pub fn new(
        mut vb: VarBuilder<'_, T>,
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Self> {
        let out = planes * kind.expansion();
        let plan: Vec<(usize, usize, usize, usize)> = match kind {
            BlockKind::Basic => vec![(inplanes, planes, 3, stride), (planes, planes, 3, 1)],
            BlockKind::Bottleneck => vec![
                (inplanes, planes, 1, 1),
                (planes, planes, 3, stride),
                (planes, out, 1, 1),
            ],
        };
        let mut convs = Vec::with_capacity(plan.len());
        for (i, &(cin, cout, k, s)) in plan.iter().enumerate() {
            let (conv, bn) = (format!("conv{}", i + 1), format!("bn{}", i + 1));
            convs.push(conv_bn(&mut vb, &conv, &bn, (cin, cout, k), s)?);
        }
        let downsample = if stride != 1 || inplanes != out {
            let mut d = vb.pp("downsample");
            let (conv, bn) = conv_bn(&mut d, "0", "1", (inplanes, out, 1), stride)?;
            Some(Downsample { conv, bn })
        } else {
            None
        };
        Ok(Block { convs, downsample })
    }
    /// The last BatchNorm (zero-initialized in a fresh model).
    fn last_bn(&self) -> &BatchNorm2d<T> {
        &self.convs.last().expect("a block has convolutions").1
    }
}

impl<T: Element> Module<T> for Block<T> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let mut h = x;
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            h = conv.forward(tape, store, h, ctx)?;
            h = bn.forward(tape, store, h, ctx)?;
            if i < last {
                h = ops::relu(tape, h)?;
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(tape, store, x, ctx)?,
            None => x,
        };
        let y = ops::add(tape, h, shortcut)?;
        ops::relu(tape, y)
    }
    fn params(&self) -> Vec<ParamId> {
        let mut v = Vec::new();
        for (c, b) in &self.convs {
            v.extend(params_of::<T>(&[c, b]));
        }
        if let Some(d) = &self.downsample {
            v.extend(d.params());
        }
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        let mut v: Vec<_> = self.convs.iter().flat_map(|(_, b)| b.buffers()).collect();
        if let Some(d) = &self.downsample {
            v.extend(d.buffers());
        }
        v
    }
}

/// A ResNet composed of modules; parameters (timm names) live in a [`ParamStore`], the
/// BatchNorm running statistics in the modules (see [`Module::buffers`]).
#[derive(Debug)]
pub struct Resnet<T: Element> {
    pub cfg: ResnetConfig,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d<T>,
    /// The default stem's max-pool (`None` for the small stem).
    pub maxpool: Option<MaxPool2d>,
    /// `layer{i+1}.{j}`.
    pub stages: Vec<Vec<Block<T>>>,
    pub fc: Linear,
}

impl<T: Element> Resnet<T> {
    /// The network over parameters from `vb` (initialized, loaded or bound), created in
    /// timm's state-dict order.
    pub fn build(cfg: ResnetConfig, mut vb: VarBuilder<'_, T>) -> Result<Self> {
        cfg.validate()?;
        let (k, s) = match cfg.stem {
            Stem::Default => (7, 2),
            Stem::Small => (3, 1),
        };
        let (conv1, bn1) = conv_bn(
            &mut vb,
            "conv1",
            "bn1",
            (cfg.in_chans, cfg.stem_width, k),
            s,
        )?;
        let maxpool = (cfg.stem == Stem::Default).then_some(MaxPool2d {
            kernel: 3,
            stride: 2,
            padding: 1,
        });
        let mut inplanes = cfg.stem_width;
        let mut stages = Vec::with_capacity(cfg.layers.len());
        for (i, (&n, &planes)) in cfg.layers.iter().zip(&cfg.channels).enumerate() {
            let mut lv = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(Block::new(lv.pp(j), cfg.block, inplanes, planes, stride)?);
                inplanes = planes * cfg.block.expansion();
            }
            stages.push(blocks);
        }
        let fc = Linear::new(vb.pp("fc"), inplanes, cfg.num_classes, true)?;
        Ok(Resnet {
            cfg,
            conv1,
            bn1,
            maxpool,
            stages,
            fc,
        })
    }

    /// Fresh parameters in `store` (seeded: the same seed gives the same bits), with timm's
    /// `zero_init_last`.
    pub fn init(cfg: ResnetConfig, store: &mut ParamStore<T>, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        let net = Resnet::build(cfg, VarBuilder::init(store, &mut rng))?;
        for b in net.stages.iter().flatten() {
            if let Some(w) = b.last_bn().weight {
                store.get_mut(w).value.fill(T::zero());
            }
        }
        Ok(net)
    }

    /// Binds to parameters already in `store` (names and shapes checked); running statistics
    /// start fresh (restore them with [`Resnet::load_buffers`]).
    pub fn bind(cfg: ResnetConfig, store: &ParamStore<T>) -> Result<Self> {
        Resnet::build(cfg, VarBuilder::bind(store))
    }

    /// Loads a timm-named state dict (parameters and running statistics) into a fresh store.
    pub fn from_tensors(
        tensors: &BTreeMap<String, Tensor<T>>,
        cfg: ResnetConfig,
    ) -> Result<(Self, ParamStore<T>)> {
        let mut store = ParamStore::new();
        let net = Resnet::build(cfg, VarBuilder::load(&mut store, tensors))?;
        Ok((net, store))
    }

    /// Every BatchNorm with its path, in state-dict order.
    pub fn batch_norms(&self) -> Vec<&BatchNorm2d<T>> {
        let mut v = vec![&self.bn1];
        for b in self.stages.iter().flatten() {
            v.extend(b.convs.iter().map(|(_, bn)| bn));
            v.extend(b.downsample.as_ref().map(|d| &d.bn));
        }
        v
    }

    /// Restores the running statistics from tensors named as [`Module::buffers`] names them
    /// (a missing `num_batches_tracked` reads 0; missing means and variances are an error).
    pub fn load_buffers(&self, tensors: &BTreeMap<String, Tensor<T>>) -> Result<()> {
        use crate::nn::norm::RunningStats;
        for bn in self.batch_norms() {
            let name = |b: &str| format!("{}.{b}", bn.path);
            let get = |b: &str| {
                tensors
                    .get(&name(b))
                    .cloned()
                    .ok_or_else(|| invalid!("no tensor {:?} for the ResNet's BatchNorm", name(b)))
            };
            let nbt = tensors
                .get(&name("num_batches_tracked"))
                .map_or(0, |t| t.data()[0].as_f64().max(0.0) as u64);
            bn.set_running_stats(RunningStats {
                mean: get("running_mean")?,
                var: get("running_var")?,
                num_batches_tracked: nbt,
            })?;
        }
        Ok(())
    }

    /// Infers the architecture from a timm state dict's names and shapes.
    pub fn infer_config(tensors: &BTreeMap<String, Tensor<T>>) -> Result<ResnetConfig> {
        let get = |n: &str| -> Result<&Tensor<T>> {
            tensors.get(n).ok_or_else(|| {
                invalid!("the checkpoint has no tensor {n:?}: it is not a timm ResNet state dict")
            })
        };
        if tensors.contains_key("conv1.0.weight") {
            return Err(invalid!(
                "the checkpoint has a deep stem (conv1.0.weight, timm stem_type 'deep'): only the default 7x7 and the small 3x3 stems are supported"
            ));
        }
        let c1 = get("conv1.weight")?;
        if c1.ndim() != 4 || c1.dim(2) != c1.dim(3) {
            return Err(invalid!(
                "conv1.weight must be (stem_width, in_chans, k, k), got {:?}",
                c1.shape()
            ));
        }
        let stem = match c1.dim(2) {
            7 => Stem::Default,
            3 => Stem::Small,
            k => {
                return Err(invalid!(
                    "conv1.weight has a {k}x{k} kernel: the stem is 7x7 (timm's default) or 3x3 (small-image)"
                ))
            }
        };
        let block = if tensors.contains_key("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let (mut layers, mut channels) = (Vec::new(), Vec::new());
        while tensors.contains_key(&format!("layer{}.0.conv1.weight", layers.len() + 1)) {
            let i = layers.len() + 1;
            let mut n = 0;
            while tensors.contains_key(&format!("layer{i}.{n}.conv1.weight")) {
                n += 1;
            }
            let planes = get(&format!("layer{i}.0.conv1.weight"))?.dim(0);
            if block == BlockKind::Bottleneck {
                let out = get(&format!("layer{i}.0.conv3.weight"))?.dim(0);
                if out != 4 * planes {
                    return Err(invalid!(
                        "layer{i}.0: a bottleneck of width {planes} outputs {out} channels, not {}: only timm's base_width=64, cardinality=1 bottlenecks are supported",
                        4 * planes
                    ));
                }
            }
            layers.push(n);
            channels.push(planes);
        }
        if layers.is_empty() {
            return Err(invalid!(
                "the checkpoint has no layer1.0.conv1.weight: it is not a timm ResNet state dict"
            ));
        }
        let fc = get("fc.weight")?;
        if fc.ndim() != 2 {
            return Err(invalid!("fc.weight must be 2-D, got {:?}", fc.shape()));
        }
        let cfg = ResnetConfig {
            block,
            layers,
            channels,
            stem_width: c1.dim(0),
            stem,
            in_chans: c1.dim(1),
            num_classes: fc.dim(0),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Multiply-adds of one image's forward pass at `h × w` (convolutions and `fc`; BatchNorm,
    /// ReLU, pooling and additions are not counted, as in the ViT's count).
    pub fn forward_macs(&self, h: usize, w: usize) -> f64 {
        let mut total = self.conv1.macs(h, w);
        let (mut h, mut w) = self.conv1.out_hw(h, w).unwrap_or((0, 0));
        if let Some(p) = self.maxpool {
            (h, w) = (
                (h + 2 * p.padding - p.kernel) / p.stride + 1,
                (w + 2 * p.padding - p.kernel) / p.stride + 1,
            );
        }
        for b in self.stages.iter().flatten() {
            let (h0, w0) = (h, w);
            for (c, _) in &b.convs {
                total += c.macs(h, w);
                (h, w) = c.out_hw(h, w).unwrap_or((0, 0));
            }
            if let Some(d) = &b.downsample {
                total += d.conv.macs(h0, w0);
            }
        }
        total + (self.fc.in_features * self.fc.out_features) as f64
    }

    /// FLOPs of one image's forward pass at `h × w`: 2 × [`Resnet::forward_macs`].
    pub fn flops_per_image(&self, h: usize, w: usize) -> f64 {
        2.0 * self.forward_macs(h, w)
    }

    /// Number of parameters in `store` that this network owns.
    pub fn param_count(&self, store: &ParamStore<T>) -> usize {
        self.num_params(store)
    }

    /// Checks an input batch against the network: 4-D, the channel count, and a size the
    /// stem and the stages can reduce (every stage leaves at least one pixel).
    pub fn check_input(&self, xs: &[usize]) -> Result<()> {
        if xs.len() != 4 {
            return Err(shape_err!(
                "resnet",
                "images must be (N, C, H, W), got {:?}",
                xs
            ));
        }
        if xs[1] != self.cfg.in_chans {
            return Err(shape_err!(
                "resnet",
                "images have {} channels ({:?}), the model's conv1 expects {}",
                xs[1],
                xs,
                self.cfg.in_chans
            ));
        }
        if xs[0] == 0 || xs[2] == 0 || xs[3] == 0 {
            return Err(shape_err!("resnet", "empty batch or image {:?}", xs));
        }
        Ok(())
    }

    /// Logits `(N, classes)` of images `x (N, C, H, W)`, in the mode of `ctx`.
    pub fn logits(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.check_input(tape.shape(x))?;
        let h = self.conv1.forward(tape, store, x, ctx)?;
        self.logits_after_conv1(tape, store, h, ctx)
    }

    /// The network from `conv1`'s output `(N, stem_width, H', W')` on: `bn1`, ReLU, the
    /// max-pool, the stages and the head.
    fn logits_after_conv1(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        h: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let mut h = self.bn1.forward(tape, store, h, ctx)?;
        h = ops::relu(tape, h)?;
        if let Some(p) = &self.maxpool {
            h = p.forward(tape, store, h, ctx)?;
        }
        for b in self.stages.iter().flatten() {
            h = b.forward(tape, store, h, ctx)?;
        }
        let f = global_avg_pool(tape, h)?;
        self.fc.forward(tape, store, f, ctx)
    }

    /// The mean cross-entropy of `x (N, C, H, W)` with targets `y`, its parameter gradients
    /// added into `store`. One tape for the whole batch (BatchNorm's statistics are the
    /// batch's, as in PyTorch); the convolutions run the images in parallel inside each op.
    /// `train`: BatchNorm uses and updates batch statistics; otherwise the running ones.
    pub fn loss_and_grads(
        &self,
        store: &mut ParamStore<T>,
        x: &Tensor<T>,
        y: &[usize],
        label_smoothing: f64,
        train: bool,
    ) -> Result<StepStats> {
        self.check_input(x.shape())?;
        if y.len() != x.dim(0) {
            return Err(shape_err!(
                "resnet",
                "{} targets for a batch of {} images",
                y.len(),
                x.dim(0)
            ));
        }
        let mut tape = Tape::<T>::new();
        let xv = tape.constant(x.clone());
        let mut ctx = Ctx { train, rng: None };
        let logits = self.logits(&mut tape, store, xv, &mut ctx)?;
        let ce = ops::CrossEntropyOptions {
            label_smoothing,
            ..Default::default()
        };
        let loss = ops::cross_entropy(&mut tape, logits, y, &ce)?;
        let c = self.cfg.num_classes;
        let correct = tape
            .value(logits)
            .data()
            .chunks(c)
            .zip(y)
            .filter(|(r, &t)| argmax(r) == t)
            .count();
        let l = tape.value(loss).item().as_f64();
        tape.backward(loss)?;
        tape.accumulate_grads(store)?;
        Ok(StepStats { loss: l, correct })
    }

    /// Inference: logits of a batch in evaluation mode (running statistics), no tape kept.
    pub fn predict(&self, store: &ParamStore<T>, x: &Tensor<T>) -> Result<Tensor<T>> {
        self.predict_view(store, x.view())
    }

    /// [`Resnet::predict`] of borrowed images (a NumPy array's buffer, say), read in place:
    /// nothing needs the input after `conv1`, so `conv1` runs on the borrowed slice and only
    /// its output goes on the no-grad tape ([`Conv2d::forward_view`]).
    pub fn predict_view(&self, store: &ParamStore<T>, x: TensorView<'_, T>) -> Result<Tensor<T>> {
        self.check_input(x.shape())?;
        let mut tape = Tape::<T>::no_grad();
        let mut ctx = Ctx::eval();
        let h = self.conv1.forward_view(&mut tape, store, x)?;
        let out = self.logits_after_conv1(&mut tape, store, h, &mut ctx)?;
        Ok(tape.value(out).clone())
    }
}

impl<T: Element> Module<T> for Resnet<T> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        self.logits(tape, store, x, ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        let mut v = params_of::<T>(&[&self.conv1, &self.bn1]);
        for b in self.stages.iter().flatten() {
            v.extend(b.params());
        }
        v.extend(Module::<T>::params(&self.fc));
        v
    }
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        let mut v = self.bn1.buffers();
        for b in self.stages.iter().flatten() {
            v.extend(b.buffers());
        }
        v
    }
}
