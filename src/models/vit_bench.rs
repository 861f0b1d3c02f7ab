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
    // The trainer's step: this rank's micro-batches, the ordered sum across ranks (one rank
    // outside MPI), the optimizer.
    let group = crate::dist::world();
    let micro = crate::models::vit::micro_batches(batch);
    let mut step = || {
        let res = (|| -> Result<()> {
            store.zero_grad();
            let mine = group.share(micro);
            group.sum_grads_overlapped(&mut store, mine.len(), |store, sink| {
                let parts = vit.micro_batch_grads(store, &x, &y, 0.0, None, mine, sink)?;
                Ok(((), parts.into_iter().map(|p| p.grads).collect()))
            })?;
            opt.step(&mut store)
        })();
        if let Err(e) = res {
            err.get_or_insert(e);
        }
    };
    // Every rank must run the same number of steps (each one communicates): rank 0 times the
    // warm-up steps and chooses the repetitions for all.
    let mut opts = opts.clone();
    if group.size() > 1 {
        let t = std::time::Instant::now();
        for _ in 0..opts.warmup.max(1) {
            step();
        }
        let per = t.elapsed().as_secs_f64() / opts.warmup.max(1) as f64;
        let want = ((opts.min_time_s / per.max(1e-9)).ceil() as usize)
            .clamp(opts.min_reps.max(1), opts.max_reps.max(1));
        let reps = group.broadcast_u64(want as u64)? as usize;
        opts = BenchOptions {
            warmup: 0,
            min_reps: reps,
            min_time_s: 0.0,
            max_reps: reps,
        };
    }
    let before = crate::dist::stats();
    let mut r = bench::run("vit_train_step", params, &opts, &mut step);
    if let Some(e) = err {
        return Err(e);
    }
    let comm = crate::dist::stats() - before;
    let n = r.reps.max(1) as f64;
    r.extra.insert("ranks".into(), json!(group.size()));
    r.extra.insert(
        "micro_batches_per_rank".into(),
        json!(group.share(micro).len()),
    );
    r.extra
        .insert("comm_s_per_step".into(), json!(comm.seconds / n));
    // The part of the reduction the step waited for after its backward (not overlapped).
    r.extra.insert(
        "exposed_comm_s_per_step".into(),
        json!(comm.exposed_seconds / n),
    );
    r.extra
        .insert("overlap".into(), json!(crate::dist::overlap_enabled()));
    r.extra.insert(
        "bytes_reduced_per_step".into(),
        json!(comm.bytes_reduced as f64 / n),
    );
    r.extra.insert(
        "bytes_sent_per_step".into(),
        json!(comm.bytes_sent as f64 / n),
    );
    r.extra.insert(
        "bucket_mib".into(),
        json!(crate::dist::bucket_bytes() as f64 / (1 << 20) as f64),
    );
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
