//! 4: Vision Transformer facts from `models::vit` configurations (parameter shapes with timm names).

use super::Entry;
use crate::error::Result;
use crate::models::vit::{param_shapes, Pool, VitConfig};
use serde_json::json;

/// ViT-B/16 at 224×224 (Dosovitskiy et al., Table 1: 12 layers, width 768, MLP 3072, 12 heads).
pub fn vit_b16() -> VitConfig {
    VitConfig {
        image_size: 224,
        patch: 16,
        in_chans: 3,
        dim: 768,
        depth: 12,
        heads: 12,
        mlp_dim: 3072,
        num_classes: 1000,
        pool: Pool::Cls,
        eps: 1e-6,
        dropout: 0.0,
    }
}

/// nabla's MNIST configuration (the defaults of `nabla vit train`).
pub fn vit_mnist() -> VitConfig {
    VitConfig {
        image_size: 28,
        patch: 7,
        in_chans: 1,
        dim: 64,
        depth: 4,
        heads: 4,
        mlp_dim: 128,
        num_classes: 10,
        pool: Pool::Cls,
        eps: 1e-6,
        dropout: 0.0,
    }
}

pub fn count_params(cfg: &VitConfig) -> Result<usize> {
    Ok(param_shapes(cfg)?
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum())
}

fn facts(cfg: &VitConfig) -> Result<serde_json::Value> {
    Ok(json!({
        "image_size": cfg.image_size, "patch": cfg.patch, "channels": cfg.in_chans,
        "grid": cfg.grid(), "patches": cfg.num_patches(), "sequence_length": cfg.tokens(),
        "patch_vector": cfg.in_chans * cfg.patch * cfg.patch, "dim": cfg.dim, "depth": cfg.depth,
        "heads": cfg.heads, "mlp_dim": cfg.mlp_dim, "classes": cfg.num_classes,
        "parameters": count_params(cfg)?, "forward_gflops_per_image": 2.0 * cfg.forward_macs() / 1e9,
    }))
}

pub fn vit_facts() -> Result<Entry> {
    let (b, m) = (vit_b16(), vit_mnist());
    b.validate()?;
    m.validate()?;
    let (pb, pm) = (count_params(&b)?, count_params(&m)?);
    // timm's vit_base_patch16_224 has 86,567,656 parameters.
    let ok = b.num_patches() == 196
        && b.tokens() == 197
        && pb == 86_567_656
        && m.num_patches() == 16
        && m.tokens() == 17
        && pm == 139_018;
    Ok(Entry {
        id: "4".into(),
        title: "Vision Transformer: patches, sequence length, parameters".into(),
        derivation: vec![
            "An H×W×C image cut into P×P patches gives N = HW/P² tokens of length P²C, linearly embedded to width D;".into(),
            "a learnable class token makes the sequence N + 1, plus learnable 1-D position embeddings (N + 1)×D.".into(),
            "Each pre-norm block: x + MHSA(LN(x)), x + MLP(LN(x)) with 4D² + 2D·D_mlp weights (+ biases, LN).".into(),
        ],
        values: json!({"vit_b16_224": facts(&b)?, "nabla_mnist": facts(&m)?}),
        summary: vec![
            format!("ViT-B/16 @224: {} patches of 16×16×3 = 768 values, sequence length {}, {} parameters ({:.1} M), {:.1} GFLOPs/image", b.num_patches(), b.tokens(), pb, pb as f64 / 1e6, 2.0 * b.forward_macs() / 1e9),
            format!("nabla MNIST ViT @28: {} patches of 7×7, sequence length {}, {} parameters, {:.2} MFLOPs/image", m.num_patches(), m.tokens(), pm, 2.0 * m.forward_macs() / 1e6),
        ],
        artefact: None,
        ok,
    })
}
