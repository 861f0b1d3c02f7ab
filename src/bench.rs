//! Benchmark convention shared by every `nabla bench …` command: warm up, repeat, report the
//! median/min/max seconds per call; `--json` prints one JSON object per configuration per line.

use crate::kernels::{gemm, MatLayout};
use crate::tensor::Element;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// How long/often to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: usize,
    /// Minimum repetitions.
    pub min_reps: usize,
    /// Keep repeating until this many seconds have been spent (or `max_reps`).
    pub min_time_s: f64,
    pub max_reps: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            warmup: 2,
            min_reps: 5,
            min_time_s: 0.5,
            max_reps: 1000,
        }
    }
}

/// One measured configuration.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub name: String,
    pub params: Map<String, Value>,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub reps: usize,
    /// Extra derived figures (GFLOP/s, items/s, bandwidth …).
    pub extra: Map<String, Value>,
}

impl BenchResult {
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        m.insert("median_s".into(), json!(self.median_s));
        m.insert("min_s".into(), json!(self.min_s));
        m.insert("max_s".into(), json!(self.max_s));
        m.insert("reps".into(), json!(self.reps));
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
    /// One human-readable line.
    pub fn to_text(&self) -> String {
        let p: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let e: Vec<String> = self
            .extra
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) => format!("{k}={f:.2}"),
                None => format!("{k}={v}"),
            })
            .collect();
        format!(
            "{:<14} {:<40} median {:>10.3} ms  (min {:.3}, max {:.3}, {} reps)  {}",
            self.name,
            p.join(" "),
            self.median_s * 1e3,
            self.min_s * 1e3,
            self.max_s * 1e3,
            self.reps,
            e.join(" ")
        )
    }
}

/// Times `f` per the options and returns (median, min, max, reps) in seconds.
pub fn measure(opts: &BenchOptions, mut f: impl FnMut()) -> (f64, f64, f64, usize) {
    for _ in 0..opts.warmup {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < opts.min_reps
        || (start.elapsed().as_secs_f64() < opts.min_time_s && times.len() < opts.max_reps)
    {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (
        times[times.len() / 2],
        times[0],
        *times.last().unwrap(),
        times.len(),
    )
}

/// Builds a [`BenchResult`] by timing `f`.
pub fn run(name: &str, params: Value, opts: &BenchOptions, f: impl FnMut()) -> BenchResult {
    let (median_s, min_s, max_s, reps) = measure(opts, f);
    BenchResult {
        name: name.to_string(),
        params: params.as_object().cloned().unwrap_or_default(),
        median_s,
        min_s,
        max_s,
        reps,
        extra: Map::new(),
    }
}

/// Runs `f` on a rayon pool of `threads` threads (0 = all cores).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads == 0 {
        return f();
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("building a rayon pool")
        .install(f)
}

/// Times one f32 `m×k · k×n` product and returns its rate in GFLOP/s (`2mnk` flops per call).
pub fn matmul_gflops<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    opts: &BenchOptions,
) -> (BenchResult, f64) {
    let a: Vec<T> = (0..m * k)
        .map(|i| T::c(((i % 17) as f64 - 8.0) / 8.0))
        .collect();
    let b: Vec<T> = (0..k * n)
        .map(|i| T::c(((i % 13) as f64 - 6.0) / 6.0))
        .collect();
    let mut c = vec![T::zero(); m * n];
    let r = run(
        "matmul",
        json!({"m": m, "n": n, "k": k, "dtype": T::DTYPE, "threads": rayon::current_num_threads()}),
        opts,
        || gemm(m, n, k, &a, MatLayout::N, &b, MatLayout::N, &mut c, false),
    );
    let gf = 2.0 * (m * n * k) as f64 / r.median_s / 1e9;
    (r, gf)
}

/// Peak f32 FMA rate of the current rayon pool in GFLOP/s: every thread runs
/// register-only FMA chains at the same time (widest vectors the CPU has). No product can
/// beat it; `bench vit` and `bench matmul` report their rates against it.
pub fn fma_peak_gflops(opts: &BenchOptions) -> (BenchResult, f64) {
    let threads = rayon::current_num_threads();
    let mut flops = 0.0;
    let r = run(
        "fma_peak",
        json!({"dtype": "f32", "threads": threads}),
        opts,
        || {
            // broadcast, not a parallel iterator: a short job may finish on one thread before
            // the other wakes up to steal.
            flops = rayon::broadcast(|_| crate::kernels::peak::fma_chains())
                .iter()
                .sum::<f64>()
        },
    );
    let gf = flops / r.median_s / 1e9;
    (r, gf)
}

/// `nabla bench matmul`: square sizes 64…1024 and the RNN-step shape 32×256·256×256, on one
/// thread and on all threads.
pub fn bench_matmul(opts: &BenchOptions) -> Vec<BenchResult> {
    let shapes: Vec<(usize, usize, usize)> = vec![
        (64, 64, 64),
        (128, 128, 128),
        (256, 256, 256),
        (512, 512, 512),
        (1024, 1024, 1024),
        (32, 256, 256),
    ];
    let all = rayon::current_num_threads();
    let mut thread_counts = vec![1];
    if all > 1 {
        thread_counts.push(all);
    }
    let mut out = Vec::new();
    for &t in &thread_counts {
        let (mut r, peak) = with_threads(t, || fma_peak_gflops(opts));
        r.extra.insert("gflops".into(), json!(peak));
        out.push(r);
        for &(m, n, k) in &shapes {
            let (mut r, gf) = with_threads(t, || matmul_gflops::<f32>(m, n, k, opts));
            r.extra.insert("gflops".into(), json!(gf));
            r.extra.insert("fraction_of_peak".into(), json!(gf / peak));
            out.push(r);
        }
    }
    out
}
