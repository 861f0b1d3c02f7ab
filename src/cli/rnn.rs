//! `nabla rnn …` and `nabla bench rnn`: the Elman RNN's external gradient interface, its
//! gradient-flow analysis, the character-level language model, and the training-step benchmark.

use crate::analysis::gated::{self, GatedWeights, GatedWorkspace};
use crate::analysis::rnn::{self as an, RnnProblem};
use crate::bench::{self, BenchResult};
use crate::cli::resume::{self, Typed};
use crate::cli::BenchCommon;
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::models::char_rnn::CharTrainConfig;
use crate::nn::rnn::{Activation, CellKind, ElmanWeights, RnnWorkspace};
use crate::outln;
use crate::tensor::Tensor;
use crate::train::{Mode, OptimDefaults, OptimizerKind, TrainDefaults};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum RnnCommand {
    /// Loss and exact (or chunked-truncated) BPTT gradients of the assignment's model
    /// h_t = σ(W x_t + U h_{t−1}), y_t = V h_t, L = Σ‖z_t − y_t‖², for weights and a batch in
    /// safetensors files.
    Grad(GradArgs),
    /// Gradient flow through time: ‖∇_{h_t}L‖ per t, ‖U‖₂ and the ¼‖U‖ Jacobian bound, and the
    /// bias of truncated BPTT for a list of k; JSON + plot.
    Analyze(AnalyzeArgs),
    /// Trains the character-level language model with TBPTT(k1, k2) on the shared trainer
    /// (default Adam 2e-3, gradient clipping at 5, 2000 updates, best/ on val_loss).
    /// Data-parallel under `mpirun -np N` (built with `--features mpi`): the --batch streams
    /// are shared among the ranks in micro-batches of 16, same weights as one process, bit for
    /// bit; rank 0 writes the run folder.
    Train(Box<RnnTrainArgs>),
    /// Samples text from a trained character-level model.
    Sample(SampleArgs),
}

#[derive(Args, Debug)]
pub struct GradArgs {
    /// Recurrent cell: elman (W, U, V), lstm or gru (PyTorch's weight_ih, weight_hh, bias_ih,
    /// bias_hh, and a readout V).
    #[arg(long, default_value = "elman")]
    pub cell: CellKind,
    /// safetensors with W (hidden, input), U (hidden, hidden), V (output, hidden), optional h0
    /// (batch, hidden); for lstm/gru weight_ih (G·hidden, input), weight_hh (G·hidden, hidden),
    /// bias_ih, bias_hh (G·hidden), V (output, hidden), optional h0 (and c0 for lstm).
    #[arg(long)]
    pub params: PathBuf,
    /// safetensors with x (batch, time, input) and z (batch, time, output).
    #[arg(long)]
    pub batch: PathBuf,
    /// Chunked truncated BPTT with chunks of K steps (no gradient crosses t = K, 2K, …).
    #[arg(long)]
    pub truncate: Option<usize>,
    /// Print one JSON object {"loss": …, "grad": {"W": …, "U": …, "V": …[, "h0": …]}}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// Cells to compare on the built-in delay-line task (comma-separated or repeated):
    /// ‖∇_{h_t}L‖ over t side by side in cells.svg / cells.json. The Elman analysis
    /// (analysis.json / analysis.svg) runs when elman is among them.
    #[arg(long, value_delimiter = ',', default_value = "elman,lstm,gru")]
    pub cell: Vec<CellKind>,
    /// Weights as for `rnn grad` (with --batch); without them, the built-in delay-line example.
    #[arg(long, requires = "batch")]
    pub params: Option<PathBuf>,
    #[arg(long, requires = "params")]
    pub batch: Option<PathBuf>,
    /// Truncation lengths to compare with the exact gradient.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub ks: Vec<usize>,
    /// Built-in example: sequence length, delay, hidden size, recurrent gain, batch and seed.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 12)]
    pub lag: usize,
    #[arg(long, default_value_t = 16)]
    pub hidden: usize,
    #[arg(long, default_value_t = 0.95)]
    pub gain: f64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: analysis.json, analysis.svg, cells.json, cells.svg (and PNGs with --png).
    #[arg(long, default_value = "rnn-analysis")]
    pub out: PathBuf,
    #[arg(long)]
    pub png: bool,
}

/// `nabla rnn train` flags: the model and data, then the shared trainer and optimizer flags.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(
    after_help = "Defaults of rnn train: --steps 2000, --optim adam --lr 2e-3 --weight-decay 0, --schedule constant, --clip-grad-norm 5, --eval-every 200, --monitor val_loss (with a validation part), --out runs/char-rnn."
)]
pub struct RnnTrainArgs {
    /// Text file (UTF-8). Without it, a built-in corpus of embedded-Reber-grammar strings.
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Recurrent cell: elman, lstm or gru (PyTorch's gated cells; --activation is the Elman's).
    #[arg(long, default_value = "elman")]
    pub cell: CellKind,
    /// Hidden nonlinearity: tanh, sigmoid or relu.
    #[arg(long, default_value = "tanh")]
    pub activation: String,
    /// Update every k1 steps...
    #[arg(long, default_value_t = 25)]
    pub k1: usize,
    /// ...backpropagating through the last k2 steps (k2 >= k1).
    #[arg(long, default_value_t = 25)]
    pub k2: usize,
    /// Parallel streams of the text.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Fraction of the text held out for validation (just before the test tail): it selects
    /// best/ (lowest val_loss) and drives --patience.
    #[arg(long, default_value_t = 0.05)]
    pub val_frac: f64,
    /// Fraction of the text held out at its end for the test, evaluated once after training on
    /// best/ (test_loss, test_bpc); 0 = no test.
    #[arg(long, default_value_t = 0.05)]
    pub test_frac: f64,
    #[command(flatten)]
    #[serde(flatten)]
    pub train: crate::train::TrainArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub optim: crate::train::OptimArgs,
}

/// `nabla rnn sample` flags.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// checkpoint.safetensors written by `nabla rnn train` (or its folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    pub prime: String,
    #[arg(long, default_value_t = 500)]
    pub len: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Run folder of `nabla rnn train` without `--out`.
pub const DEFAULT_OUT: &str = "runs/char-rnn";

/// The character model's optimizer defaults: Adam, 2e-3, no weight decay.
pub const OPTIM_DEFAULTS: OptimDefaults = OptimDefaults {
    kind: OptimizerKind::Adam,
    lr: 2e-3,
    weight_decay: 0.0,
};

/// The character model's trainer defaults: 2000 updates, validation every 200, clipping at 5,
/// best/ on val_loss (when there is a validation part).
pub fn train_defaults(val_frac: f64) -> TrainDefaults {
    TrainDefaults {
        steps: Some(2000),
        eval_every: 200,
        clip_grad_norm: Some(5.0),
        monitor: (val_frac > 0.0).then(|| ("val_loss".to_string(), Mode::Min)),
        ..TrainDefaults::new(DEFAULT_OUT)
    }
}

fn train(a: &RnnTrainArgs, typed: &Typed) -> Result<()> {
    let mut a = a.clone();
    if let Some(dir) = a.train.resume.clone() {
        a = resume::restore(&a, typed, &dir, &[])?;
    }
    a.optim.fill_defaults(OPTIM_DEFAULTS);
    let lr = a.optim.lr.unwrap_or(OPTIM_DEFAULTS.lr);
    a.train.fill_defaults(&train_defaults(a.val_frac), lr);
    let opt = a.optim.build::<f32>(OPTIM_DEFAULTS)?;
    let mut tc = a.train.config(DEFAULT_OUT)?;
    tc.command = Some(serde_json::to_value(&a).map_err(|e| invalid!("flags: {e}"))?);
    let c = CharTrainConfig {
        text: a.text.clone(),
        hidden: a.hidden,
        cell: a.cell,
        activation: a.activation.clone(),
        k1: a.k1,
        k2: a.k2,
        batch: a.batch,
        val_frac: a.val_frac,
        test_frac: a.test_frac,
    };
    let r = crate::models::char_rnn::train(&c, tc, opt)?;
    if !crate::dist::is_root() {
        return Ok(());
    }
    outln!(
        "{}",
        serde_json::to_string(&r).map_err(|e| NablaError::Other(format!("JSON: {e}")))?
    )?;
    Ok(())
}

fn sample(a: &SampleArgs) -> Result<()> {
    // The sample is built in memory, then printed: up to 4 bytes per character.
    crate::memory::Estimate::new()
        .elements("the sampled text", a.len as f64, 4)
        .check("rnn sample")?;
    let ck = crate::models::char_rnn::load_checkpoint(&a.checkpoint)?;
    let s = ck.model.sample(&a.prime, a.len, a.temperature, a.seed)?;
    outln!("{}{}", a.prime, s)?;
    Ok(())
}

fn grad(a: &GradArgs) -> Result<()> {
    if a.truncate == Some(0) {
        return Err(invalid!("--truncate must be at least 1"));
    }
    let (v, d) = match a.cell {
        CellKind::Elman => {
            let p = an::load_problem(&a.params, &a.batch)?;
            (an::grad_json(&p, a.truncate)?, p.dims()?)
        }
        cell => {
            let p = gated::load_problem(cell, &a.params, &a.batch)?;
            (gated::grad_json(&p, a.truncate)?, p.dims()?)
        }
    };
    if a.json {
        outln!("{v}")?;
    } else {
        outln!(
            "{} batch {} time {} input {} hidden {} output {}{}",
            a.cell,
            d.batch,
            d.seq_len,
            d.input,
            d.hidden,
            d.output,
            a.truncate
                .map(|k| format!(", truncated BPTT k = {k}"))
                .unwrap_or_default()
        )?;
        outln!("loss {}", v["loss"])?;
        for (k, g) in v["grad"].as_object().into_iter().flatten() {
            outln!("grad {k}: {g}")?;
        }
    }
    Ok(())
}

fn analyze(a: &AnalyzeArgs) -> Result<()> {
    let gated = a.cell.iter().any(|&c| c != CellKind::Elman);
    if a.params.is_some() && gated {
        return Err(invalid!(
            "--params holds Elman weights (W, U, V): the lstm/gru comparison runs on the built-in delay-line task; drop --params or use --cell elman"
        ));
    }
    std::fs::create_dir_all(&a.out).map_err(|e| NablaError::io(&a.out, e))?;
    if a.cell.len() > 1 || gated {
        let c = an::compare_cells(
            &a.cell,
            a.batch_size,
            a.seq_len,
            a.lag,
            a.hidden,
            a.gain,
            a.seed,
        )?;
        let jpath = a.out.join("cells.json");
        let text =
            serde_json::to_string_pretty(&c).map_err(|e| NablaError::Other(e.to_string()))?;
        crate::io::atomic_write(&jpath, text.as_bytes())?;
        let spath = a.out.join("cells.svg");
        an::plot_cells(&c, &spath)?;
        if a.png {
            an::plot_cells(&c, &a.out.join("cells.png"))?;
        }
        for f in &c.cells {
            let lt = &f.last_loss_grad_h_norm;
            outln!(
                "{:>5}: loss {:.6}  ‖∇h_t L_T‖ t=T {:.4e}, t=T−{} {:.4e} (ratio {:.3e}), t=1 {:.4e}",
                f.cell,
                f.loss,
                lt.last().copied().unwrap_or(0.0),
                c.lag,
                lt.get(c.seq_len - 1 - c.lag).copied().unwrap_or(0.0),
                f.ratio_over_lag,
                lt.first().copied().unwrap_or(0.0)
            )?;
        }
        outln!("wrote {} and {}", jpath.display(), spath.display())?;
        if !a.cell.contains(&CellKind::Elman) {
            return Ok(());
        }
    }
    let p: RnnProblem = match (&a.params, &a.batch) {
        (Some(pp), Some(bp)) => an::load_problem(pp, bp)?,
        _ => an::delay_problem(a.batch_size, a.seq_len, a.lag, a.hidden, a.gain, a.seed)?,
    };
    let res = an::analyze(&p, &a.ks)?;
    let jpath = a.out.join("analysis.json");
    let text = serde_json::to_string_pretty(&res).map_err(|e| NablaError::Other(e.to_string()))?;
    crate::io::atomic_write(&jpath, text.as_bytes())?;
    let spath = a.out.join("analysis.svg");
    an::plot(&res, &spath)?;
    if a.png {
        an::plot(&res, &a.out.join("analysis.png"))?;
    }
    let gh = &res.grad_h_norm;
    outln!(
        "loss {:.6}  ‖U‖₂ {:.4}  bound sup|σ'|·‖U‖ {:.4}  max ‖∂h_t+1/∂h_t‖ {:.4}",
        res.loss,
        res.spectral_norm_u,
        res.jacobian_bound,
        res.jacobian_norm.iter().copied().fold(0.0, f64::max)
    )?;
    if let (Some(first), Some(last)) = (gh.first(), gh.last()) {
        outln!("‖∇h_t L‖: t=1 {first:.4e}, t=T {last:.4e}")?;
    }
    for t in &res.truncation {
        outln!(
            "k {:>4}: cosine {:.6}  rel. error {:.4e} (U {:.4e}, W {:.4e})",
            t.k,
            t.cosine,
            t.rel_error,
            t.rel_error_u,
            t.rel_error_w
        )?;
    }
    outln!("wrote {} and {}", jpath.display(), spath.display())?;
    Ok(())
}

/// `nabla bench rnn` flags.
#[derive(Args, Debug)]
pub struct BenchRnnArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    /// Recurrent cell: elman (the assignment's sigmoid RNN), lstm or gru (PyTorch's cells with a
    /// linear readout); compare with `scripts/bench_rnn.py --cell …` (torch.nn.LSTM / GRU).
    #[arg(long, default_value = "elman")]
    pub cell: CellKind,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub input: usize,
    /// Hidden sizes to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub hidden: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub output: usize,
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Chunked truncated BPTT with chunks of K steps.
    #[arg(long)]
    pub truncate: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Median seconds per f32 training step (fused forward + BPTT + SGD update, the assignment's
/// loss) on random data.
/// CPU time consumed so far by the calling thread, from `/proc/thread-self/schedstat` (ns).
fn thread_cpu_s() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

pub fn bench_rnn(a: &BenchRnnArgs) -> Result<Vec<BenchResult>> {
    if a.batch == 0 || a.input == 0 || a.output == 0 || a.seq_len == 0 || a.hidden.contains(&0) {
        return Err(invalid!("bench rnn sizes must be positive"));
    }
    if a.truncate == Some(0) {
        return Err(invalid!("--truncate must be at least 1"));
    }
    // Weights and gradients, the data, and per step and sequence the states, pre-activations
    // and their gradients (4·H) and the outputs with theirs (2·O).
    let (b, t, i, o) = (
        a.batch as f64,
        a.seq_len as f64,
        a.input as f64,
        a.output as f64,
    );
    let g = a.cell.gates() as f64;
    for &h in &a.hidden {
        let h = h as f64;
        // Gated cells keep per step the gates (G·H), states and cell states, and their
        // gradients; the Elman RNN 4·H.
        let per_step = if a.cell == CellKind::Elman {
            4.0 * h
        } else {
            2.0 * g * h + 5.0 * h
        };
        crate::memory::Estimate::new()
            .f32s("weights and gradients", 2.0 * (g * h * (i + h) + o * h))
            .f32s("the batch", b * t * (i + o))
            .f32s("the tape", b * t * (per_step + 2.0 * o))
            .check(&format!("bench rnn --hidden {h}"))?;
    }
    let mut out = Vec::new();
    // The step is compute-bound (products): its rate against the pool's FMA peak.
    let (_, peak) = bench::fma_peak_gflops(&bench::BenchOptions {
        warmup: 1,
        min_reps: 5,
        min_time_s: 0.2,
        max_reps: 100,
    });
    for &h in &a.hidden {
        let mut rng = Rng::new(a.seed);
        // Elman: the assignment's sigmoid RNN; lstm/gru: PyTorch's cells at their default init.
        let mut elman =
            ElmanWeights::<f32>::random(a.input, h, a.output, Activation::Sigmoid, 1.0, &mut rng);
        let mut gated = match a.cell {
            CellKind::Elman => None,
            cell => Some(GatedWeights::<f32>::random(
                cell, a.input, h, a.output, &mut rng,
            )?),
        };
        let x = Tensor::<f32>::from_fn(&[a.batch, a.seq_len, a.input], |_| rng.normal() as f32);
        let z = Tensor::<f32>::from_fn(&[a.batch, a.seq_len, a.output], |_| rng.normal() as f32);
        let mut err = None;
        // Buffers reused across steps, as a training loop holds them.
        let mut ws = RnnWorkspace::new();
        let mut gws = GatedWorkspace::default();
        let mut cpu = Vec::new();
        let name = match a.cell {
            CellKind::Elman => "rnn_train_step",
            CellKind::Lstm => "lstm_train_step",
            CellKind::Gru => "gru_train_step",
        };
        let activation = match a.cell {
            CellKind::Elman => "sigmoid",
            _ => "gates",
        };
        let mut r = bench::run(
            name,
            json!({"cell": a.cell.name(), "batch": a.batch, "input": a.input, "hidden": h,
                   "output": a.output, "seq_len": a.seq_len, "truncate": a.truncate,
                   "activation": activation, "dtype": "f32",
                   "threads": rayon::current_num_threads()}),
            &a.common.options(),
            || {
                let c0 = thread_cpu_s();
                let res = match gated.as_mut() {
                    None => elman.sgd_step_ws(&mut ws, &x, &z, None, 1e-6, a.truncate),
                    Some(w) => w.sgd_step_ws(&mut gws, &x, &z, 1e-6, a.truncate),
                };
                if let Err(e) = res {
                    err = Some(e);
                }
                if let (Some(c0), Some(c1)) = (c0, thread_cpu_s()) {
                    cpu.push(c1 - c0);
                }
            },
        );
        if let Some(e) = err {
            return Err(e);
        }
        // Multiply-adds per step: forward 2·T·B·H·(G·(I + H) + O) with G gate blocks (1 for
        // the Elman RNN, 4 LSTM, 3 GRU), backward twice that.
        let gates = a.cell.gates();
        let flops = 6.0 * (a.seq_len * a.batch * h * (gates * (a.input + h) + a.output)) as f64;
        r.extra
            .insert("gflops".into(), json!(flops / r.median_s / 1e9));
        r.extra.insert("fma_peak_gflops".into(), json!(peak));
        r.extra.insert(
            "fraction_of_peak".into(),
            json!(flops / r.median_s / 1e9 / peak),
        );
        r.extra.insert(
            "tokens_per_s".into(),
            json!((a.batch * a.seq_len) as f64 / r.median_s),
        );
        if !cpu.is_empty() {
            cpu.sort_by(f64::total_cmp);
            // CPU time of the calling thread per step (Linux): with 1 thread, a figure that other
            // processes competing for the cores do not inflate, unlike the wall-clock median.
            r.extra
                .insert("thread_cpu_median_s".into(), json!(cpu[cpu.len() / 2]));
        }
        out.push(r);
    }
    Ok(out)
}

pub fn run(cmd: RnnCommand, typed: &Typed) -> Result<()> {
    match cmd {
        RnnCommand::Grad(a) => grad(&a),
        RnnCommand::Analyze(a) => analyze(&a),
        RnnCommand::Train(a) => train(&a, typed),
        RnnCommand::Sample(a) => sample(&a),
    }
}
