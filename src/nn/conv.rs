//! Convolutional layers over NCHW images (PyTorch's `nn.Conv2d`, `nn.BatchNorm2d`,
//! `nn.MaxPool2d`, and the global average pooling of timm's `SelectAdaptivePool2d('avg')`), as
//! fused ops with hand-derived backward passes, the modules that own their parameters, and the
//! same computations unrolled into primitive [`crate::ops`] for checking.
//!
//! **Conv2d** (stride `s`, zero padding `p`, `G` groups; weight `(Co, Ci/G, kh, kw)`, bias `(Co)`).
//! Per image `n` and group `g`, with `cols_n (Ci·kh·kw, Ho·Wo)` the im2col matrix of `x_n`
//! (row `(c, i, j)`, column `(oy, ox)`: `x_n[c, oy·s+i−p, ox·s+j−p]`, 0 in the padding) and
//! `W_g (Co/G, Ci/G·kh·kw)` the weight viewed as a matrix:
//!
//! ```text
//! forward   y_n,g = W_g cols_n,g + b_g 1ᵀ                         (Co/G, Ho·Wo)
//! backward  dW_g  = Σ_n dy_n,g cols_n,gᵀ,   db = Σ_n Σ_(oy,ox) dy_n
//!           dx_n  = col2im(W_gᵀ dy_n,g)     (col2im = im2colᵀ: adds each column entry back
//!                                            into the pixel it was copied from)
//! ```
//!
//! **Why im2col + gemm.** The products go through the one matmul kernel layer
//! ([`crate::kernels::gemm`], the `gemm` crate's packed, register-blocked kernels) instead of a
//! hand-written direct or implicit-GEMM convolution: a ResNet's 3×3 convolutions are
//! `(Co × Ci·9) · (Ci·9 × Ho·Wo)` products large enough for gemm to run near its peak, and the
//! im2col copy (contiguous runs at stride 1, [`crate::kernels::conv`]) is a few percent of the
//! product's time. The matrix is built per image in a per-thread buffer (`Ci·9·Ho·Wo` values,
//! ~1 MB for 64 channels at 28×28) and rebuilt in the backward pass rather than kept, so the
//! tape holds only `x` and `y`. A 1×1 stride-1 convolution without padding uses the image
//! itself as its matrix.
//!
//! **Parallelism and determinism.** Images run in parallel (rayon). The forward pass and `dx`
//! are per image; `dW` and `db` are summed over [`IMAGES_PER_TASK`] images per task in image
//! order and the task partials added in task order — a split fixed by the batch size, so the
//! bits are the same on any number of threads.
//!
//! **BatchNorm2d** is [`BatchNorm`] on `(N, C, H, W)`: the existing per-channel kernels reduce
//! over `(N, H·W)`, the derivation is in [`crate::nn::norm`].
//!
//! **MaxPool2d** (`k`, `s`, `p`, padding −∞): `y = max_window x`; the backward pass sends each
//! `dy` to the arg-max of its window (`dx[argmax] += dy`; the first maximum on ties).
//!
//! **Global average pooling** `(N, C, H, W) → (N, C)`: `y = (1/HW) Σ x`, `dx = dy/HW`.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::kernels::conv::{col2im, im2col, max_pool, max_pool_backward, Window};
use crate::kernels::{gemm, MatLayout};
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::nn::norm::BatchNorm;
use crate::ops;
use crate::tensor::{Element, Tensor, TensorView};
use crate::{invalid, shape_err};
use rayon::prelude::*;

/// PyTorch's `nn.BatchNorm2d`: [`BatchNorm`] over `(N, C, H, W)`, statistics per channel over
/// `(N, H, W)`, buffers `running_mean`, `running_var`, `num_batches_tracked`.
pub type BatchNorm2d<T> = BatchNorm<T>;

/// Images whose weight-gradient contributions one task sums (in image order) before the task
/// partials are added in task order: fixed, so the sums do not depend on the thread count.
pub const IMAGES_PER_TASK: usize = 8;

/// Stride, padding and groups of a convolution (dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl Default for ConvSpec {
    fn default() -> Self {
        ConvSpec {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

/// The sizes of one convolution, checked against each other.
#[derive(Clone, Copy, Debug)]
struct ConvGeom {
    n: usize,
    co: usize,
    groups: usize,
    /// The input image and the window (`c` = all input channels).
    win: Window,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn new(xs: &[usize], ws: &[usize], spec: ConvSpec) -> Result<Self> {
        const OP: &str = "conv2d";
        if xs.len() != 4 {
            return Err(shape_err!(OP, "input must be (N, C, H, W), got {:?}", xs));
        }
        if ws.len() != 4 {
            return Err(shape_err!(
                OP,
                "weight must be (out, in/groups, kh, kw), got {:?}",
                ws
            ));
        }
        let g = spec.groups;
        if g == 0 || spec.stride == 0 {
            return Err(invalid!("conv2d: stride and groups must be positive"));
        }
        if !ws[0].is_multiple_of(g) || ws[0] == 0 {
            return Err(shape_err!(
                OP,
                "{} output channels are not divisible by {g} groups",
                ws[0]
            ));
        }
        if xs[1] != ws[1] * g {
            return Err(shape_err!(
                OP,
                "input has {} channels {:?}, the weight {:?} with {g} group(s) expects {}",
                xs[1],
                xs,
                ws,
                ws[1] * g
            ));
        }
        let win = Window {
            c: xs[1],
            h: xs[2],
            w: xs[3],
            kh: ws[2],
            kw: ws[3],
            stride: spec.stride,
            pad: spec.padding,
        };
        let (ho, wo) = win.out_hw().ok_or_else(|| {
            shape_err!(
                OP,
                "a {}x{} kernel does not fit the {}x{} input padded by {}",
                ws[2],
                ws[3],
                xs[2],
                xs[3],
                spec.padding
            )
        })?;
        if xs[0] == 0 || ws[1] == 0 {
            return Err(shape_err!(OP, "empty input {:?} or weight {:?}", xs, ws));
        }
        Ok(ConvGeom {
            n: xs[0],
            co: ws[0],
            groups: g,
            win,
            ho,
            wo,
        })
    }
    fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// Rows of one group's im2col block, `Ci/G · kh · kw`.
    fn kg(&self) -> usize {
        self.win.col_rows() / self.groups
    }
    /// The image is its own im2col matrix (1×1 kernel, stride 1, no padding).
    fn direct(&self) -> bool {
        let w = &self.win;
        w.kh == 1 && w.kw == 1 && w.stride == 1 && w.pad == 0
    }
    fn out_shape(&self) -> Vec<usize> {
        vec![self.n, self.co, self.ho, self.wo]
    }
}

/// `x_n`'s im2col matrix: the image itself for a direct convolution, else built into `buf`.
fn cols_of<'a, T: Element>(g: &ConvGeom, x: &'a [T], buf: &'a mut Vec<T>) -> &'a [T] {
    if g.direct() {
        return x;
    }
    buf.resize(g.win.col_rows() * g.hw_out(), T::zero());
    im2col(x, &g.win, buf);
    buf
}

/// `y (N, Co, Ho, Wo)` of `x (N, Ci, H, W)`, weight `w (Co, Ci/G, kh, kw)`, bias `(Co)`.
fn conv_forward<T: Element>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>) -> Vec<T> {
    let (hw, cog, kg) = (g.hw_out(), g.co / g.groups, g.kg());
    let img = g.win.image_len();
    let mut y = vec![T::zero(); g.n * g.co * hw];
    y.par_chunks_mut(g.co * hw)
        .enumerate()
        .for_each_init(Vec::new, |buf, (n, yn)| {
            let cols = cols_of(g, &x[n * img..(n + 1) * img], buf);
            if let Some(b) = b {
                for (row, &bc) in yn.chunks_exact_mut(hw).zip(b) {
                    row.fill(bc);
                }
            }
            for gi in 0..g.groups {
                gemm(
                    cog,
                    hw,
                    kg,
                    &w[gi * cog * kg..(gi + 1) * cog * kg],
                    MatLayout::N,
                    &cols[gi * kg * hw..(gi + 1) * kg * hw],
                    MatLayout::N,
                    &mut yn[gi * cog * hw..(gi + 1) * cog * hw],
                    b.is_some(),
                );
            }
        });
    y
}

/// One task's share of the backward pass: `dx` of its images (when wanted) and its partial
/// `dW`, `db`.
struct ConvPartial<T> {
    dx: Vec<T>,
    dw: Vec<T>,
    db: Vec<T>,
}

struct Conv2dOp {
    geom: ConvGeom,
    has_bias: bool,
}

impl<T: Element> Op<T> for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let g = &self.geom;
        let (x, w) = (ctx.inputs[0].data(), ctx.inputs[1].data());
        let dy = ctx.grad();
        let dy = dy.data();
        let (hw, cog, kg) = (g.hw_out(), g.co / g.groups, g.kg());
        let (img, out_img) = (g.win.image_len(), g.co * hw);
        let (need_x, need_w) = (ctx.needs_grad[0], ctx.needs_grad[1]);
        let need_b = self.has_bias && ctx.needs_grad[2];
        let tasks = g.n.div_ceil(IMAGES_PER_TASK);
        let parts: Vec<ConvPartial<T>> = (0..tasks)
            .into_par_iter()
            .map(|t| {
                let (n0, n1) = (t * IMAGES_PER_TASK, ((t + 1) * IMAGES_PER_TASK).min(g.n));
                let mut p = ConvPartial {
                    dx: if need_x {
                        vec![T::zero(); (n1 - n0) * img]
                    } else {
                        Vec::new()
                    },
                    dw: if need_w {
                        vec![T::zero(); w.len()]
                    } else {
                        Vec::new()
                    },
                    db: vec![T::zero(); if need_b { g.co } else { 0 }],
                };
                let (mut buf, mut dcols) = (Vec::new(), Vec::new());
                for n in n0..n1 {
                    let dyn_ = &dy[n * out_img..(n + 1) * out_img];
                    if need_b {
                        for (d, row) in p.db.iter_mut().zip(dyn_.chunks_exact(hw)) {
                            *d += crate::kernels::reduce::sum(row);
                        }
                    }
                    if need_w {
                        let cols = cols_of(g, &x[n * img..(n + 1) * img], &mut buf);
                        for gi in 0..g.groups {
                            // dW_g += dy_g (Co/G, HW) · cols_gᵀ (HW, Kg)
                            gemm(
                                cog,
                                kg,
                                hw,
                                &dyn_[gi * cog * hw..(gi + 1) * cog * hw],
                                MatLayout::N,
                                &cols[gi * kg * hw..(gi + 1) * kg * hw],
                                MatLayout::T,
                                &mut p.dw[gi * cog * kg..(gi + 1) * cog * kg],
                                true,
                            );
                        }
                    }
                    if need_x {
                        let dxn = &mut p.dx[(n - n0) * img..(n - n0 + 1) * img];
                        let direct = g.direct();
                        if !direct {
                            dcols.resize(g.win.col_rows() * hw, T::zero());
                        }
                        for gi in 0..g.groups {
                            // dcols_g (Kg, HW) = W_gᵀ (Kg, Co/G) · dy_g (Co/G, HW)
                            let out = if direct {
                                &mut dxn[gi * kg * hw..(gi + 1) * kg * hw]
                            } else {
                                &mut dcols[gi * kg * hw..(gi + 1) * kg * hw]
                            };
                            gemm(
                                kg,
                                hw,
                                cog,
                                &w[gi * cog * kg..(gi + 1) * cog * kg],
                                MatLayout::T,
                                &dyn_[gi * cog * hw..(gi + 1) * cog * hw],
                                MatLayout::N,
                                out,
                                false,
                            );
                        }
                        if !direct {
                            col2im(&dcols, &g.win, dxn);
                        }
                    }
                }
                p
            })
            .collect();
        let mut grads: Vec<Option<Tensor<T>>> = vec![None; ctx.inputs.len()];
        if need_x {
            let mut dx = Vec::with_capacity(g.n * img);
            for p in &parts {
                dx.extend_from_slice(&p.dx);
            }
            grads[0] = Some(Tensor::from_parts(ctx.inputs[0].shape().to_vec(), dx));
        }
        let sum_parts = |pick: fn(&ConvPartial<T>) -> &Vec<T>, len: usize| {
            let mut acc = vec![T::zero(); len];
            for p in &parts {
                crate::kernels::reduce::add_row(pick(p), &mut acc);
            }
            acc
        };
        if need_w {
            let dw = sum_parts(|p| &p.dw, w.len());
            grads[1] = Some(Tensor::from_parts(ctx.inputs[1].shape().to_vec(), dw));
        }
        if need_b {
            grads[2] = Some(Tensor::from_parts(vec![g.co], sum_parts(|p| &p.db, g.co)));
        }
        Ok(grads)
    }
}

/// Fused 2-D convolution: `x (N, Ci, H, W)`, `weight (Co, Ci/G, kh, kw)`, `bias (Co)` →
/// `(N, Co, Ho, Wo)` (see the module doc for the derivation).
pub fn conv2d<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    spec: ConvSpec,
) -> Result<Var> {
    let (op, y) = conv2d_values(tape, tape.value(x).view(), weight, bias, spec)?;
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Ok(tape.record1(op, &inputs, y))
}

/// [`conv2d`] of images that are not on the tape (a borrowed buffer: a NumPy array's).
///
/// On a no-grad tape the kernel reads `x` in place and only the output `(N, Co, Ho, Wo)` goes
/// on the tape: an inference stem needs its input for nothing else. A recording tape keeps
/// its own copy of `x` (the backward's `dW = Σ dy colsᵀ` reads it), so the result is the same
/// either way.
pub fn conv2d_view<T: Element>(
    tape: &mut Tape<T>,
    x: TensorView<'_, T>,
    weight: Var,
    bias: Option<Var>,
    spec: ConvSpec,
) -> Result<Var> {
    if tape.grad_enabled() {
        let xv = tape.constant(x.to_tensor());
        return conv2d(tape, xv, weight, bias, spec);
    }
    let (op, y) = conv2d_values(tape, x, weight, bias, spec)?;
    // No input on the tape, and a no-grad tape records nothing: `y` is a constant (the op
    // only names the time in the profile).
    Ok(tape.record1(op, &[], y))
}

/// The op (its checked geometry) and the output of [`conv2d`] of `x`, read from its slice.
fn conv2d_values<T: Element>(
    tape: &Tape<T>,
    x: TensorView<'_, T>,
    weight: Var,
    bias: Option<Var>,
    spec: ConvSpec,
) -> Result<(Conv2dOp, Tensor<T>)> {
    let g = ConvGeom::new(x.shape(), tape.shape(weight), spec)?;
    if let Some(b) = bias {
        if tape.shape(b) != [g.co] {
            return Err(shape_err!(
                "conv2d",
                "bias has shape {:?}, expected [{}]",
                tape.shape(b),
                g.co
            ));
        }
    }
    let y = conv_forward(
        &g,
        x.data(),
        tape.value(weight).data(),
        bias.map(|b| tape.value(b).data()),
    );
    let op = Conv2dOp {
        geom: g,
        has_bias: bias.is_some(),
    };
    Ok((op, Tensor::from_parts(g.out_shape(), y)))
}

/// The same convolution unrolled into primitive ops: the zero-padded patches gathered
/// (`ops::gather_rows` from the flattened image plus one zero row), one batched product per
/// group (`ops::bmm`), the result permuted to NCHW and the bias broadcast-added — the
/// reference [`conv2d`] is checked against.
pub fn conv2d_reference<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    weight: Var,
    bias: Option<Var>,
    spec: ConvSpec,
) -> Result<Var> {
    let g = ConvGeom::new(tape.shape(x), tape.shape(weight), spec)?;
    let w = &g.win;
    let (hw, kg, cog, gr) = (g.hw_out(), g.kg(), g.co / g.groups, g.groups);
    let total = g.n * w.image_len();
    let flat = ops::reshape(tape, x, &[total, 1])?;
    let zero = tape.constant(Tensor::zeros(&[1, 1]));
    let padded = ops::concat(tape, &[flat, zero], 0)?; // (N·C·H·W + 1, 1); the last row is 0
    let cpg = w.c / gr;
    let mut idx = Vec::with_capacity(gr * g.n * hw * kg);
    for gi in 0..gr {
        for n in 0..g.n {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    for c in gi * cpg..(gi + 1) * cpg {
                        for i in 0..w.kh {
                            for j in 0..w.kw {
                                let iy = (oy * w.stride + i) as isize - w.pad as isize;
                                let ix = (ox * w.stride + j) as isize - w.pad as isize;
                                let inside = iy >= 0
                                    && ix >= 0
                                    && (iy as usize) < w.h
                                    && (ix as usize) < w.w;
                                idx.push(if inside {
                                    ((n * w.c + c) * w.h + iy as usize) * w.w + ix as usize
                                } else {
                                    total
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    let patches = ops::gather_rows(tape, padded, &idx)?;
    let patches = ops::reshape(tape, patches, &[gr, g.n * hw, kg])?;
    let wm = ops::reshape(tape, weight, &[gr, cog, kg])?;
    let y = ops::bmm(tape, patches, wm, false, true)?; // (G, N·HW, Co/G)
    let y = ops::reshape(tape, y, &[gr, g.n, hw, cog])?;
    let y = ops::permute(tape, y, &[1, 0, 3, 2])?; // (N, G, Co/G, HW)
    let y = ops::reshape(tape, y, &g.out_shape())?;
    match bias {
        Some(b) => {
            let b4 = ops::reshape(tape, b, &[1, g.co, 1, 1])?;
            ops::add(tape, y, b4)
        }
        None => Ok(y),
    }
}

/// PyTorch's `nn.Conv2d(in, out, kernel, stride, padding, groups, bias)` (dilation 1):
/// `weight (out, in/groups, k, k)`, optional `bias (out)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub spec: ConvSpec,
}

impl Conv2d {
    /// With PyTorch's default initialization (`kaiming_uniform_(a=√5)`: weight and bias
    /// `U(±1/√fan_in)`, `fan_in = in/groups · k²`).
    pub fn new<T: Element>(
        vb: VarBuilder<'_, T>,
        (in_channels, out_channels, kernel): (usize, usize, usize),
        spec: ConvSpec,
        bias: bool,
    ) -> Result<Self> {
        let fan_in = (in_channels / spec.groups.max(1) * kernel * kernel).max(1);
        let b = 1.0 / (fan_in as f64).sqrt();
        let u = Init::Uniform { low: -b, high: b };
        Self::with_init(
            vb,
            (in_channels, out_channels, kernel),
            spec,
            bias.then_some(u),
            u,
        )
    }
    /// With the initializers a model declares (timm's ResNet: He normal in fan-out mode).
    pub fn with_init<T: Element>(
        mut vb: VarBuilder<'_, T>,
        (in_channels, out_channels, kernel): (usize, usize, usize),
        spec: ConvSpec,
        bias: Option<Init>,
        weight: Init,
    ) -> Result<Self> {
        if spec.groups == 0
            || spec.stride == 0
            || kernel == 0
            || !in_channels.is_multiple_of(spec.groups)
            || !out_channels.is_multiple_of(spec.groups)
            || in_channels == 0
            || out_channels == 0
        {
            return Err(invalid!(
                "Conv2d {:?}: {in_channels} -> {out_channels} channels, kernel {kernel}, {spec:?} is not a valid convolution (positive sizes, channels divisible by groups)",
                vb.prefix()
            ));
        }
        let shape = [out_channels, in_channels / spec.groups, kernel, kernel];
        let w = vb.get("weight", &shape, weight)?;
        let b = match bias {
            Some(init) => Some(vb.get("bias", &[out_channels], init)?),
            None => None,
        };
        Ok(Conv2d {
            weight: w,
            bias: b,
            in_channels,
            out_channels,
            kernel,
            spec,
        })
    }
    /// Output height and width for an `h × w` input (`None` if the kernel does not fit).
    pub fn out_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Window {
            c: self.in_channels,
            h,
            w,
            kh: self.kernel,
            kw: self.kernel,
            stride: self.spec.stride,
            pad: self.spec.padding,
        }
        .out_hw()
    }
    /// Multiply-adds of one image's forward pass at input size `h × w`.
    pub fn macs(&self, h: usize, w: usize) -> f64 {
        let (ho, wo) = self.out_hw(h, w).unwrap_or((0, 0));
        let k = self.in_channels / self.spec.groups * self.kernel * self.kernel;
        (ho * wo * self.out_channels * k) as f64
    }
    /// [`Module::forward`] of borrowed images ([`conv2d_view`]: read in place on a no-grad
    /// tape).
    pub fn forward_view<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: TensorView<'_, T>,
    ) -> Result<Var> {
        let w = tape.param(store, self.weight);
        let b = self.bias.map(|b| tape.param(store, b));
        conv2d_view(tape, x, w, b, self.spec)
    }
}

impl<T: Element> Module<T> for Conv2d {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let w = tape.param(store, self.weight);
        let b = self.bias.map(|b| tape.param(store, b));
        conv2d(tape, x, w, b, self.spec)
    }
    fn params(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }
}

/// The pooling window of an `(N, C, H, W)` input, checked as PyTorch does.
fn pool_window(xs: &[usize], kernel: usize, stride: usize, padding: usize) -> Result<Window> {
    if xs.len() != 4 {
        return Err(shape_err!(
            "max_pool2d",
            "input must be (N, C, H, W), got {:?}",
            xs
        ));
    }
    if kernel == 0 || stride == 0 || 2 * padding > kernel {
        return Err(invalid!(
            "max_pool2d: kernel {kernel}, stride {stride}, padding {padding}: sizes must be positive and the padding at most half the kernel"
        ));
    }
    let win = Window {
        c: xs[1],
        h: xs[2],
        w: xs[3],
        kh: kernel,
        kw: kernel,
        stride,
        pad: padding,
    };
    if win.out_hw().is_none() || xs[0] * xs[1] == 0 {
        return Err(shape_err!(
            "max_pool2d",
            "a {kernel}x{kernel} window does not fit the input {:?} padded by {padding}",
            xs
        ));
    }
    Ok(win)
}

struct MaxPoolOp {
    win: Window,
    n: usize,
    arg: Vec<u32>,
}

impl<T: Element> Op<T> for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let dy = ctx.grad();
        let (ho, wo) = self.win.out_hw().expect("checked in forward");
        let (img, out_img) = (self.win.image_len(), self.win.c * ho * wo);
        let mut dx = vec![T::zero(); self.n * img];
        dx.par_chunks_mut(img).enumerate().for_each(|(n, dxn)| {
            let r = n * out_img..(n + 1) * out_img;
            max_pool_backward(&dy.data()[r.clone()], &self.arg[r], &self.win, dxn);
        });
        Ok(vec![Some(Tensor::from_parts(
            ctx.inputs[0].shape().to_vec(),
            dx,
        ))])
    }
}

/// Fused max pooling `(N, C, H, W) → (N, C, Ho, Wo)` over `kernel × kernel` windows.
pub fn max_pool2d<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let win = pool_window(&xs, kernel, stride, padding)?;
    let (ho, wo) = win.out_hw().expect("checked");
    let (img, out_img) = (win.image_len(), win.c * ho * wo);
    let n = xs[0];
    let mut y = vec![T::zero(); n * out_img];
    let mut arg = vec![0u32; n * out_img];
    let xd = tape.value(x).data();
    y.par_chunks_mut(out_img)
        .zip(arg.par_chunks_mut(out_img))
        .enumerate()
        .for_each(|(i, (yn, an))| max_pool(&xd[i * img..(i + 1) * img], &win, yn, an));
    let out = Tensor::from_parts(vec![n, win.c, ho, wo], y);
    Ok(tape.record1(MaxPoolOp { win, n, arg }, &[x], out))
}

/// Max pooling as primitive ops: the arg-max of every window (found by a plain scan) gathered
/// with `ops::gather_rows` — `∂ max / ∂x` is the one-hot of the arg-max, which is the gather's
/// backward. The reference [`max_pool2d`] is checked against.
pub fn max_pool2d_reference<T: Element>(
    tape: &mut Tape<T>,
    x: Var,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    let w = pool_window(&xs, kernel, stride, padding)?;
    let (ho, wo) = w.out_hw().expect("checked");
    let xd = tape.value(x).data().to_vec();
    let mut idx = Vec::new();
    for plane in 0..xs[0] * xs[1] {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut best: Option<(T, usize)> = None;
                for i in 0..kernel {
                    for j in 0..kernel {
                        let iy = (oy * stride + i) as isize - padding as isize;
                        let ix = (ox * stride + j) as isize - padding as isize;
                        if iy < 0 || ix < 0 || iy as usize >= w.h || ix as usize >= w.w {
                            continue;
                        }
                        let at = (plane * w.h + iy as usize) * w.w + ix as usize;
                        if best.is_none_or(|(b, _)| xd[at] > b) {
                            best = Some((xd[at], at));
                        }
                    }
                }
                idx.push(best.expect("a window has an inside pixel").1);
            }
        }
    }
    let flat = ops::reshape(tape, x, &[xd.len(), 1])?;
    let y = ops::gather_rows(tape, flat, &idx)?;
    ops::reshape(tape, y, &[xs[0], xs[1], ho, wo])
}

/// PyTorch's `nn.MaxPool2d(kernel, stride, padding)` (no parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl<T: Element> Module<T> for MaxPool2d {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        _store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        max_pool2d(tape, x, self.kernel, self.stride, self.padding)
    }
    fn params(&self) -> Vec<ParamId> {
        Vec::new()
    }
}

struct GlobalAvgPoolOp {
    hw: usize,
}

impl<T: Element> Op<T> for GlobalAvgPoolOp {
    fn name(&self) -> &'static str {
        "global_avg_pool"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let dy = ctx.grad();
        let inv = T::one() / T::c(self.hw as f64);
        let mut dx = Vec::with_capacity(dy.numel() * self.hw);
        for &d in dy.data() {
            dx.extend(std::iter::repeat_n(d * inv, self.hw));
        }
        Ok(vec![Some(Tensor::from_parts(
            ctx.inputs[0].shape().to_vec(),
            dx,
        ))])
    }
}

/// Global average pooling `(N, C, H, W) → (N, C)` (timm's `global_pool` + flatten).
pub fn global_avg_pool<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    if xs.len() != 4 || xs[2] * xs[3] == 0 {
        return Err(shape_err!(
            "global_avg_pool",
            "input must be a non-empty (N, C, H, W), got {:?}",
            xs
        ));
    }
    let hw = xs[2] * xs[3];
    let inv = T::one() / T::c(hw as f64);
    let y: Vec<T> = tape
        .value(x)
        .data()
        .chunks_exact(hw)
        .map(|plane| crate::kernels::reduce::sum(plane) * inv)
        .collect();
    let out = Tensor::from_parts(vec![xs[0], xs[1]], y);
    Ok(tape.record1(GlobalAvgPoolOp { hw }, &[x], out))
}

/// Global average pooling as primitive ops: `mean` over the flattened spatial axis.
pub fn global_avg_pool_reference<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let xs = tape.shape(x).to_vec();
    if xs.len() != 4 {
        return Err(shape_err!(
            "global_avg_pool",
            "input must be (N, C, H, W), got {:?}",
            xs
        ));
    }
    let v = ops::reshape(tape, x, &[xs[0], xs[1], xs[2] * xs[3]])?;
    ops::mean(tape, v, -1, false)
}
