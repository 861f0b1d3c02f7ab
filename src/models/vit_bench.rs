//! `nabla bench vit`: one training step of a ViT (forward, backward, AdamW) on random data.
//!
//! FLOPs per step are counted as `3 × 2 × forward multiply-adds × batch` (the backward pass of
//! a product costs two products), the usual estimate; the achieved rate is reported next to the
//! f32 matmul rate measured in the same process (512³, all threads) and next to the FMA peak
//! (register-only chains on every thread), as fractions. `peak_step_ms` = FLOPs / peak is the
//! time under which no f32 implementation of this step can go on this machine.

use crate::bench::{self, BenchOptions, BenchResult};
use crate::error::Result;
use crate::init::Rng;
use crate::models::vit::{Vit, VitConfig};
use crate::optim::{AdamConfig, AdamW, Optimizer};
use crate::tensor::Tensor;
use crate::ParamStore;
use serde_json::json;

/// Times `batch`-image training steps of `cfg` and returns the result with images/s, GFLOP/s
/// and the fractions of the measured matmul rate and FMA peak in `extra`.
pub fn bench_vit(cfg: &VitConfig, batch: usize, opts: &BenchOptions) -> Result<BenchResult> {
    cfg.validate()?;
    cfg.memory(batch, true)
        .f32s(
            "the batch",
            batch as f64 * (cfg.in_chans * cfg.image_size * cfg.image_size) as f64,
        )
        .check("bench vit")?;
    let mut store = ParamStore::<f32>::new();
    let vit = Vit::init(cfg.clone(), &mut store, 0)?;
    let mut rng = Rng::new(1);
    let s = cfg.image_size;
    let x = Tensor::<f32>::from_fn(&[batch, cfg.in_chans, s, s], |_| rng.normal() as f32);
    let y: Vec<usize> = (0..batch).map(|_| rng.below(cfg.num_classes)).collect();
    let mut opt = AdamW::<f32>::new(AdamConfig::new(1e-3).weight_decay(0.05))?;
    let mut err = None;
    let params = json!({
        "image_size": s, "channels": cfg.in_chans, "patch": cfg.patch, "dim": cfg.dim,
        "depth": cfg.depth, "heads": cfg.heads, "mlp_dim": cfg.mlp_dim, "batch": batch,
        "threads": rayon::current_num_threads(),
    });
    let mut r = bench::run("vit_train_step", params, opts, || {
        let res = (|| -> Result<()> {
            store.zero_grad();
            vit.loss_and_grads(&mut store, &x, &y, 0.0, None)?;
            opt.step(&mut store)
        })();
        if let Err(e) = res {
            err.get_or_insert(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let flops = 6.0 * cfg.forward_macs() * batch as f64;
    let gflops = flops / r.median_s / 1e9;
    let mm_opts = BenchOptions {
        warmup: 2,
        min_reps: 5,
        min_time_s: 0.3,
        max_reps: 200,
    };
    let (_, mm) = bench::matmul_gflops::<f32>(512, 512, 512, &mm_opts);
    r.extra
        .insert("images_per_s".into(), json!(batch as f64 / r.median_s));
    r.extra.insert("gflop_per_step".into(), json!(flops / 1e9));
    r.extra.insert("gflops".into(), json!(gflops));
    r.extra.insert("matmul512_gflops".into(), json!(mm));
    r.extra
        .insert("fraction_of_matmul".into(), json!(gflops / mm));
    let (_, peak) = bench::fma_peak_gflops(&mm_opts);
    r.extra.insert("fma_peak_gflops".into(), json!(peak));
    r.extra
        .insert("fraction_of_peak".into(), json!(gflops / peak));
    r.extra
        .insert("peak_step_ms".into(), json!(flops / (peak * 1e6)));
    Ok(r)
}
