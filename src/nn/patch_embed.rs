//! ViT token embedding as one fused op: non-overlapping P×P patches → linear embedding (timm's
//! `patch_embed.proj`, a Conv2d with kernel = stride = P), the class token prepended and the
//! position embeddings added.
//!
//! With `cols (B·N, C·P·P)` the patches flattened in the Conv2d weight order (c, i, j) and the
//! grid row-major (patch r, c is token `1 + r·grid_w + c`):
//!
//! ```text
//! e   = cols Wᵀ + b                     (B·N, D)     W = proj.weight viewed (D, C·P·P)
//! z_b = [cls + pos_0 ; e_b + pos_1..N]  (B, 1+N, D)
//! ```
//!
//! Backward with `dz`: `dpos = Σ_b dz_b`, `dcls = Σ_b dz_{b,0}`, `de = dz_{·,1..}`,
//! `db = Σ_rows de`, `dW = deᵀ cols`, `dx = col2im(de W)` (each pixel lies in exactly one patch).
//! Without a class token (`cls = None`), `z_b = e_b + pos`.

use crate::autograd::{BackwardCtx, Op, ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::kernels::{col_sums, gemm, matmul_into, zip_into, MatLayout};
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::shape_err;
use crate::tensor::{Element, Tensor, TensorView};

/// Geometry of a patch grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchGeom {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub p: usize,
}

impl PatchGeom {
    pub fn grid(&self) -> (usize, usize) {
        (self.h / self.p, self.w / self.p)
    }
    pub fn num_patches(&self) -> usize {
        let (gh, gw) = self.grid();
        gh * gw
    }
    pub fn patch_len(&self) -> usize {
        self.c * self.p * self.p
    }
}

/// `x (B, C, H, W)` → patches `(B·N, C·P·P)` in Conv2d weight order.
pub fn im2col<T: Element>(x: &[T], g: &PatchGeom) -> Vec<T> {
    let (gh, gw) = g.grid();
    let (p, k) = (g.p, g.patch_len());
    let mut out = vec![T::zero(); g.b * gh * gw * k];
    for bi in 0..g.b {
        for r in 0..gh {
            for cc in 0..gw {
                let row = &mut out[((bi * gh + r) * gw + cc) * k..][..k];
                for ch in 0..g.c {
                    for i in 0..p {
                        let src = ((bi * g.c + ch) * g.h + r * p + i) * g.w + cc * p;
                        row[(ch * p + i) * p..][..p].copy_from_slice(&x[src..src + p]);
                    }
                }
            }
        }
    }
    out
}

/// Inverse data movement of [`im2col`] (non-overlapping patches: a pure scatter).
pub fn col2im<T: Element>(cols: &[T], g: &PatchGeom) -> Vec<T> {
    let (gh, gw) = g.grid();
    let (p, k) = (g.p, g.patch_len());
    let mut x = vec![T::zero(); g.b * g.c * g.h * g.w];
    for bi in 0..g.b {
        for r in 0..gh {
            for cc in 0..gw {
                let row = &cols[((bi * gh + r) * gw + cc) * k..][..k];
                for ch in 0..g.c {
                    for i in 0..p {
                        let dst = ((bi * g.c + ch) * g.h + r * p + i) * g.w + cc * p;
                        x[dst..dst + p].copy_from_slice(&row[(ch * p + i) * p..][..p]);
                    }
                }
            }
        }
    }
    x
}

/// The embedding parameters on the tape (timm names).
#[derive(Clone, Copy, Debug)]
pub struct EmbedWeights {
    /// `patch_embed.proj.weight` (D, C, P, P).
    pub proj_w: Var,
    /// `patch_embed.proj.bias` (D).
    pub proj_b: Var,
    /// `cls_token` (1, 1, D).
    pub cls: Option<Var>,
    /// `pos_embed` (1, [1+]N, D).
    pub pos: Var,
}

struct EmbedOp<T> {
    g: PatchGeom,
    d: usize,
    has_cls: bool,
    cols: Vec<T>,
}

impl<T: Element> Op<T> for EmbedOp<T> {
    fn name(&self) -> &'static str {
        "patch_embed"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (g, d) = (&self.g, self.d);
        let n = g.num_patches();
        let k = g.patch_len();
        let extra = self.has_cls as usize;
        let tok = n + extra;
        let dz = ctx.grad();
        let dz = dz.data();
        // Inputs: x, proj_w, proj_b, [cls], pos
        let pos_i = 3 + extra;
        let mut grads: Vec<Option<Tensor<T>>> = vec![None; ctx.inputs.len()];
        let want_cls = self.has_cls && ctx.needs_grad[3];
        if ctx.needs_grad[pos_i] || want_cls {
            // dpos = Σ_b dz_b: column sums of dz viewed (B, tok·D); dcls is its first row.
            let dpos = col_sums(dz, tok * d);
            if want_cls {
                grads[3] = Some(Tensor::from_parts(vec![1, 1, d], dpos[..d].to_vec()));
            }
            if ctx.needs_grad[pos_i] {
                grads[pos_i] = Some(Tensor::from_parts(ctx.inputs[pos_i].shape().to_vec(), dpos));
            }
        }
        // de (B·N, D): the patch rows of dz.
        let mut de = Vec::with_capacity(g.b * n * d);
        for blk in dz.chunks_exact(tok * d) {
            de.extend_from_slice(&blk[extra * d..]);
        }
        if ctx.needs_grad[2] {
            grads[2] = Some(Tensor::from_parts(vec![d], col_sums(&de, d)));
        }
        if ctx.needs_grad[1] {
            let dw = matmul_into(d, k, g.b * n, &de, MatLayout::T, &self.cols, MatLayout::N);
            grads[1] = Some(Tensor::from_parts(ctx.inputs[1].shape().to_vec(), dw));
        }
        if ctx.needs_grad[0] {
            let dcols = matmul_into(
                g.b * n,
                k,
                d,
                &de,
                MatLayout::N,
                ctx.inputs[1].data(),
                MatLayout::N,
            );
            grads[0] = Some(Tensor::from_parts(
                ctx.inputs[0].shape().to_vec(),
                col2im(&dcols, g),
            ));
        }
        Ok(grads)
    }
}

/// Images `x (B, C, H, W)` → tokens `(B, [1+]N, D)`.
pub fn patch_embed<T: Element>(tape: &mut Tape<T>, x: Var, w: &EmbedWeights) -> Result<Var> {
    let (op, z) = embed_values(tape, tape.value(x).view(), w)?;
    let mut inputs = vec![x, w.proj_w, w.proj_b];
    inputs.extend(w.cls);
    inputs.push(w.pos);
    Ok(tape.record1(op, &inputs, z))
}

/// [`patch_embed`] of images that are not on the tape (a borrowed buffer: a NumPy array's).
///
/// On a no-grad tape `x` is read in place (im2col copies its patches) and only the tokens go
/// on the tape. A recording tape keeps its own copy of `x` (the op's inputs start with it), so
/// the result is the same either way.
pub fn patch_embed_view<T: Element>(
    tape: &mut Tape<T>,
    x: TensorView<'_, T>,
    w: &EmbedWeights,
) -> Result<Var> {
    if tape.grad_enabled() {
        let xv = tape.constant(x.to_tensor());
        return patch_embed(tape, xv, w);
    }
    let (op, z) = embed_values(tape, x, w)?;
    // No input on the tape, and a no-grad tape records nothing: `z` is a constant (the op
    // only names the time in the profile).
    Ok(tape.record1(op, &[], z))
}

/// The checked geometry and the tokens of [`patch_embed`] of `x`, read from its slice.
fn embed_values<T: Element>(
    tape: &Tape<T>,
    x: TensorView<'_, T>,
    w: &EmbedWeights,
) -> Result<(EmbedOp<T>, Tensor<T>)> {
    const OP: &str = "patch_embed";
    let xs = x.shape();
    let ws = tape.shape(w.proj_w).to_vec();
    if ws.len() != 4 || ws[2] != ws[3] || ws[2] == 0 {
        return Err(shape_err!(
            OP,
            "patch_embed.proj.weight must be (D, C, P, P), got {:?}",
            ws
        ));
    }
    let (d, c, p) = (ws[0], ws[1], ws[2]);
    if xs.len() != 4 {
        return Err(shape_err!(OP, "images must be (B, C, H, W), got {:?}", xs));
    }
    if xs[1] != c {
        return Err(shape_err!(
            OP,
            "images have {} channels {:?}, the model expects {c} (patch_embed.proj.weight {:?})",
            xs[1],
            xs,
            ws
        ));
    }
    if !xs[2].is_multiple_of(p) || !xs[3].is_multiple_of(p) || xs[2] == 0 || xs[3] == 0 {
        return Err(shape_err!(
            OP,
            "image size {}x{} is not divisible by the patch size {p}",
            xs[2],
            xs[3]
        ));
    }
    let g = PatchGeom {
        b: xs[0],
        c,
        h: xs[2],
        w: xs[3],
        p,
    };
    let n = g.num_patches();
    let extra = w.cls.is_some() as usize;
    let tok = n + extra;
    if tape.shape(w.proj_b) != [d] {
        return Err(shape_err!(
            OP,
            "patch_embed.proj.bias {:?}, expected [{d}]",
            tape.shape(w.proj_b)
        ));
    }
    if let Some(cls) = w.cls {
        if tape.shape(cls) != [1, 1, d] {
            return Err(shape_err!(
                OP,
                "cls_token {:?}, expected [1, 1, {d}]",
                tape.shape(cls)
            ));
        }
    }
    if tape.shape(w.pos) != [1, tok, d] {
        return Err(shape_err!(
            OP,
            "pos_embed is {:?} but a {}x{} image in {p}x{p} patches gives {} tokens: expected [1, {tok}, {d}]",
            tape.shape(w.pos),
            g.h,
            g.w,
            tok
        ));
    }
    let cols = im2col(x.data(), &g);
    let k = g.patch_len();
    let mut e = vec![T::zero(); g.b * n * d];
    for row in e.chunks_exact_mut(d) {
        row.copy_from_slice(tape.value(w.proj_b).data());
    }
    gemm(
        g.b * n,
        d,
        k,
        &cols,
        MatLayout::N,
        tape.value(w.proj_w).data(),
        MatLayout::T,
        &mut e,
        true,
    );
    let pos = tape.value(w.pos).data();
    let mut z = vec![T::zero(); g.b * tok * d];
    for (zb, eb) in z.chunks_exact_mut(tok * d).zip(e.chunks_exact(n * d)) {
        let (zc, zp) = zb.split_at_mut(extra * d);
        if let Some(cls) = w.cls {
            zip_into(tape.value(cls).data(), &pos[..d], zc, |a, b| a + b);
        }
        zip_into(eb, &pos[extra * d..], zp, |a, b| a + b);
    }
    let op = EmbedOp {
        g,
        d,
        has_cls: w.cls.is_some(),
        cols,
    };
    Ok((op, Tensor::from_parts(vec![g.b, tok, d], z)))
}

/// The ViT's token embedding as a module over the fused [`patch_embed`]: timm's
/// `patch_embed.proj` (a Conv2d with kernel = stride = P, `weight (D, C, P, P)`, `bias (D)`),
/// and at the model's root `cls_token (1, 1, D)` and `pos_embed (1, [1+]N, D)`, created in timm's
/// state-dict order.
#[derive(Clone, Debug)]
pub struct TokenEmbed {
    pub proj_weight: ParamId,
    pub proj_bias: ParamId,
    pub cls_token: Option<ParamId>,
    pub pos_embed: ParamId,
}

impl TokenEmbed {
    /// `vb` is the model's root. Initializers: the class token `N(0, 1e-6²)`, the position
    /// embedding `pos_init` (timm: truncated normal, std 0.02), the projection PyTorch's Conv2d
    /// default `U(±1/√(C·P·P))` for weight and bias.
    pub fn new<T: Element>(
        mut vb: VarBuilder<'_, T>,
        in_chans: usize,
        patch: usize,
        num_patches: usize,
        dim: usize,
        class_token: bool,
        pos_init: Init,
    ) -> Result<Self> {
        let cls_token = if class_token {
            let init = Init::Normal {
                mean: 0.0,
                std: 1e-6,
            };
            Some(vb.get("cls_token", &[1, 1, dim], init)?)
        } else {
            None
        };
        let tokens = num_patches + class_token as usize;
        let pos_embed = vb.get("pos_embed", &[1, tokens, dim], pos_init)?;
        let bound = 1.0 / ((in_chans * patch * patch).max(1) as f64).sqrt();
        let u = Init::Uniform {
            low: -bound,
            high: bound,
        };
        let mut proj = vb.pp("patch_embed.proj");
        let proj_weight = proj.get("weight", &[dim, in_chans, patch, patch], u)?;
        let proj_bias = proj.get("bias", &[dim], u)?;
        Ok(TokenEmbed {
            proj_weight,
            proj_bias,
            cls_token,
            pos_embed,
        })
    }
    /// The parameters on the tape.
    fn weights<T: Element>(&self, tape: &mut Tape<T>, store: &ParamStore<T>) -> EmbedWeights {
        EmbedWeights {
            proj_w: tape.param(store, self.proj_weight),
            proj_b: tape.param(store, self.proj_bias),
            cls: self.cls_token.map(|c| tape.param(store, c)),
            pos: tape.param(store, self.pos_embed),
        }
    }
    /// [`Module::forward`] of borrowed images ([`patch_embed_view`]: read in place on a
    /// no-grad tape).
    pub fn forward_view<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: TensorView<'_, T>,
    ) -> Result<Var> {
        let w = self.weights(tape, store);
        patch_embed_view(tape, x, &w)
    }
}

impl<T: Element> Module<T> for TokenEmbed {
    /// Images `x (B, C, H, W)` → tokens `(B, [1+]N, D)`.
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let w = self.weights(tape, store);
        patch_embed(tape, x, &w)
    }
    fn params(&self) -> Vec<ParamId> {
        self.cls_token
            .into_iter()
            .chain([self.pos_embed, self.proj_weight, self.proj_bias])
            .collect()
    }
}
