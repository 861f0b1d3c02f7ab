//! Benchmark convention shared by every `nabla bench …` command: warm up, repeat, report the
//! median/min/max seconds per call; `--json` prints one JSON object per configuration per line.

use crate::kernels::peak::{self, ProbeRun};
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

/// Times an all-threads probe: `warmup` runs, then runs until the options are met. The times
/// reported are the probe's own wall times (first start to last end inside the threads, see
/// [`peak::on_every_thread`]), and the rate is the work of a run over the median of them.
fn time_probe(
    name: &str,
    params: Value,
    opts: &BenchOptions,
    mut probe: impl FnMut() -> ProbeRun,
) -> (BenchResult, f64) {
    let mut walls = Vec::new();
    let mut work = 0.0;
    let mut r = run(name, params, opts, || {
        let p = probe();
        work = p.work();
        walls.push(p.wall_s());
    });
    // The first `warmup` entries are the warm-up runs.
    let mut walls = walls.split_off(opts.warmup.min(walls.len()));
    walls.sort_by(f64::total_cmp);
    if let (Some(&lo), Some(&hi)) = (walls.first(), walls.last()) {
        (r.median_s, r.min_s, r.max_s) = (walls[walls.len() / 2], lo, hi);
    }
    let rate = work / r.median_s.max(1e-12);
    (r, rate)
}

/// Peak f32 FMA rate of the current rayon pool in GFLOP/s: every thread runs register-only FMA
/// chains at the same time (widest vectors the CPU has), ≈ N× one thread on N cores. No product
/// can beat it; the compute-bound `nabla bench` rows report their rates against it.
pub fn fma_peak_gflops(opts: &BenchOptions) -> (BenchResult, f64) {
    let threads = rayon::current_num_threads();
    let (r, flops_per_s) = time_probe(
        "fma_peak",
        json!({"dtype": "f32", "threads": threads}),
        opts,
        peak::fma_all_threads,
    );
    (r, flops_per_s / 1e9)
}

/// Copy bandwidth of the current rayon pool in GB/s: every thread copies its part of two
/// buffers far larger than the last-level cache at the same time
/// ([`peak::CopyBuffers::copy_all_threads`]; bytes read + bytes written). The memory-bound
/// `nabla bench` rows report their traffic against it.
pub fn copy_bandwidth_gbs(opts: &BenchOptions) -> (BenchResult, f64) {
    let bytes = peak::copy_buffer_bytes();
    let mut bufs = peak::CopyBuffers::new(bytes);
    let (r, bytes_per_s) = time_probe(
        "copy_bandwidth",
        json!({"buffer_bytes": bytes, "threads": rayon::current_num_threads()}),
        opts,
        || bufs.copy_all_threads(),
    );
    (r, bytes_per_s / 1e9)
}

/// The options of the ceilings' probes inside other benchmarks: short, a few runs.
pub fn probe_options() -> BenchOptions {
    BenchOptions {
        warmup: 1,
        min_reps: 5,
        min_time_s: 0.2,
        max_reps: 50,
    }
}

/// `nabla bench matmul`: square sizes 64…1024 and the RNN-step shape 32×256·256×256, on one
/// thread and on all threads. Products are compute-bound: `2mnk` flops each, against the FMA
/// peak of the same thread count (`fraction_of_peak`); the `fma_peak` rows report their
/// fraction of `threads ×` the one-thread peak.
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
    let mut peak_1 = 0.0;
    for &t in &thread_counts {
        let (mut r, peak) = with_threads(t, || fma_peak_gflops(opts));
        if t == 1 {
            peak_1 = peak;
        }
        r.extra.insert("gflops".into(), json!(peak));
        // The peak row against the ideal of t single threads: how well the probe (and the
        // machine: SMT siblings share FMA units) scales.
        r.extra
            .insert("fraction_of_peak".into(), json!(peak / (t as f64 * peak_1)));
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
