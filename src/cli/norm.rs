//! `nabla bench norm`: forward+backward time of the fused normalizations, with the bytes they
//! must move and the fraction of this machine's copy bandwidth they reach.

use crate::bench::{self, BenchResult};
use crate::cli::{print_bench, BenchCommon};
use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::nn::norm::{fused_forward_backward, RefKind};
use crate::tensor::Tensor;
use clap::{Args, ValueEnum};
use serde_json::json;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormLayer {
    Batch,
    Layer,
    Instance,
    Group,
}

#[derive(Args, Debug, Clone)]
pub struct BenchNormArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// One layer (default: all four). `layer` is LayerNorm over the last axis F.
    #[arg(long, value_enum)]
    pub layer: Option<NormLayer>,
    /// Input shape N,C,F (default: 256,64,1024 and 32,8,16).
    #[arg(long)]
    pub shape: Option<String>,
    /// Groups of GroupNorm (must divide C).
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
}

fn parse_shape(s: &str) -> Result<[usize; 3]> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| invalid!("--shape {s:?}: {e} (expected N,C,F)"))?;
    match v[..] {
        [n, c, f] if n * c * f > 0 => Ok([n, c, f]),
        _ => Err(invalid!(
            "--shape {s:?}: expected three positive sizes N,C,F"
        )),
    }
}

/// Runs the benchmark configurations.
pub fn bench_norm(args: &BenchNormArgs) -> Result<Vec<BenchResult>> {
    let opts = args.common.options();
    let shapes = match &args.shape {
        Some(s) => vec![parse_shape(s)?],
        None => vec![[256, 64, 1024], [32, 8, 16]],
    };
    let layers = match args.layer {
        Some(l) => vec![l],
        None => vec![
            NormLayer::Batch,
            NormLayer::Layer,
            NormLayer::Instance,
            NormLayer::Group,
        ],
    };
    // Memory-bound rows: their compulsory traffic against the pool's copy bandwidth.
    let (_, copy_gbs) = bench::copy_bandwidth_gbs(&bench::probe_options());
    let mut out = Vec::new();
    for [n, c, f] in shapes {
        // x, dy, y, dx and the saved normalized input.
        crate::memory::Estimate::new()
            .f32s(
                "five (N, C, F) tensors",
                5.0 * n as f64 * c as f64 * f as f64,
            )
            .check("bench norm")?;
        let mut rng = Rng::new(0);
        let x = Tensor::<f32>::from_fn(&[n, c, f], |_| rng.normal() as f32);
        let dy = Tensor::<f32>::from_fn(&[n, c, f], |_| rng.normal() as f32);
        for &layer in &layers {
            let (kind, pshape) = match layer {
                NormLayer::Batch => (RefKind::Batch, vec![c]),
                NormLayer::Layer => (RefKind::Layer { normalized_ndim: 1 }, vec![f]),
                NormLayer::Instance => (RefKind::Group { groups: c }, vec![c]),
                NormLayer::Group => {
                    if c % args.groups != 0 {
                        return Err(invalid!("--groups {} does not divide C = {c}", args.groups));
                    }
                    (
                        RefKind::Group {
                            groups: args.groups,
                        },
                        vec![c],
                    )
                }
            };
            let w = Tensor::<f32>::from_fn(&pshape, |i| 1.0 + 0.01 * i as f32);
            let b = Tensor::<f32>::from_fn(&pshape, |i| 0.01 * i as f32);
            // Fail before timing rather than inside the loop.
            fused_forward_backward(kind, &x, &dy, &w, &b, 1e-5)?;
            let name = format!("{layer:?}").to_lowercase();
            let mut r = bench::run(
                "norm",
                json!({"layer": name, "shape": [n, c, f], "dtype": "f32",
                       "threads": rayon::current_num_threads()}),
                &opts,
                || {
                    std::hint::black_box(
                        fused_forward_backward(kind, &x, &dy, &w, &b, 1e-5).expect("checked"),
                    );
                },
            );
            // Compulsory traffic: forward reads x and writes y; backward reads x and dy and
            // writes dx (parameters are negligible).
            let bytes = 5 * n * c * f * 4;
            let gbs = bytes as f64 / r.median_s / 1e9;
            r.extra.insert("bytes".into(), json!(bytes));
            r.extra.insert("gbs".into(), json!(gbs));
            r.extra.insert("copy_gbs".into(), json!(copy_gbs));
            r.extra.insert("bw_fraction".into(), json!(gbs / copy_gbs));
            r.extra
                .insert("fraction_of_bandwidth".into(), json!(gbs / copy_gbs));
            out.push(r);
        }
    }
    Ok(out)
}

pub fn run_bench(args: &BenchNormArgs) -> Result<()> {
    let r = bench_norm(args)?;
    print_bench(&r, args.common.json)
}
