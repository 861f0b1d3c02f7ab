//! The `nabla` command line. Each subcommand parses its flags and calls library functions;
//! nothing here computes anything the library can't.

use crate::bench::{self, BenchOptions, BenchResult};
use crate::error::{NablaError, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::Write;

pub mod norm;
use serde_json::json;

pub mod cnn;
pub mod gnn;
pub mod plot;
pub mod resume;
pub mod rnn;
pub mod study;
pub mod vit;
pub mod vit_predict;
pub mod vit_train;

/// Writes to standard output, returning a failed write as [`NablaError::Stdout`] instead of
/// panicking as `print!` does. Every command prints through [`outln!`](crate::outln) /
/// [`out!`](crate::out), so a closed pipe (`nabla reproduce | head -1`) ends the command with
/// status 141 and no message, and a full one (`> /dev/full`) with a one-line error ([`main`]).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<()> {
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(NablaError::Stdout)
}

/// `println!` through [`write_stdout`]: evaluates to `Result<()>`, to be propagated with `?`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a note or an error that cannot reach stderr (a closed pipe,
/// a full disk) has nowhere else to go, so it is dropped rather than turned into a panic.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "nabla",
    version,
    about = "Deep-learning workbench: RNNs, GNNs/attention, normalization, optimizers, ViT — with hand-derived, checked gradients"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Version, CPU, kernel paths (NABLA_ISA), FMA peak, copy bandwidth and the measured f32
    /// matmul rate.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Every numeric exercise of the assignment, computed through the library and checked.
    ///
    /// The questions, their formulas and which module answers each are in ASSIGNMENT.md at the
    /// repository root (ids as in --only: 1.1–1.5, 2.1–2.5, 3.1–3.4, 4).
    Reproduce {
        /// One JSON object keyed by exercise id.
        #[arg(long)]
        json: bool,
        /// Only this exercise id (e.g. 2.2).
        #[arg(long)]
        only: Option<String>,
        /// text, markdown, or latex (a complete document for pdflatex).
        #[arg(long, value_enum, default_value_t = crate::exercises::Format::Text)]
        format: crate::exercises::Format,
        /// Also write artefacts (e.g. the DOT graph of 1.1) into this folder.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Elman RNN: gradients, gradient-flow analysis, character-level language model.
    #[command(subcommand)]
    Rnn(rnn::RnnCommand),
    /// Graph neural networks: node classification and the reach of message passing.
    #[command(subcommand)]
    Gnn(gnn::GnnCommand),
    /// Benchmarks (median seconds per call; --json prints one object per configuration).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Loss and metric curves of a training run (metrics.jsonl → .svg or .png).
    Plot(plot::PlotArgs),
    /// Vision Transformer: predict, train, eval, analyze.
    #[command(subcommand)]
    Vit(vit::VitCommand),
    /// Convolutional network (timm-compatible ResNet): train, eval, predict.
    #[command(subcommand)]
    Cnn(cnn::CnnCommand),
    /// Experiments across models: the ViT paper's data-size study.
    #[command(subcommand)]
    Study(study::StudyCommand),
}

#[derive(Args, Debug, Clone)]
pub struct BenchCommon {
    /// One JSON object per configuration, one per line.
    #[arg(long)]
    pub json: bool,
    /// Minimum seconds spent measuring each configuration.
    #[arg(long, default_value_t = 0.5)]
    pub min_time: f64,
    /// Warm-up calls before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
}

impl BenchCommon {
    pub fn options(&self) -> BenchOptions {
        BenchOptions {
            warmup: self.warmup,
            min_time_s: self.min_time,
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// f32 GFLOP/s: squares 64…1024 and the RNN step 32×256·256×256, 1 and all threads.
    Matmul(BenchCommon),
    /// Seconds per RNN training step (forward + BPTT + SGD), f32: the Elman cell, or `--cell lstm|gru`.
    Rnn(rnn::BenchRnnArgs),
    /// Forward+backward of BatchNorm/LayerNorm/InstanceNorm/GroupNorm, bytes moved and the
    /// fraction of copy bandwidth reached.
    Norm(norm::BenchNormArgs),
    /// ViT training step (forward, backward, AdamW): median seconds, images/s, GFLOP/s.
    Vit(BenchVitArgs),
    /// Seconds per full-batch GNN training epoch on a Cora-sized random graph.
    Gnn(GnnBenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchVitArgs {
    #[command(flatten)]
    pub common: BenchCommon,
    #[arg(long, default_value_t = 28)]
    pub image_size: usize,
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    #[arg(long, default_value_t = 7)]
    pub patch: usize,
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    #[arg(long, default_value_t = 128)]
    pub mlp_dim: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Rayon threads (0 = all).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct GnnBenchArgs {
    /// gcn | gat | transformer | dense
    #[arg(long, default_value = "gcn")]
    pub model: String,
    #[command(flatten)]
    pub common: BenchCommon,
}

/// Prints results per the benchmark convention.
pub fn print_bench(results: &[BenchResult], json: bool) -> Result<()> {
    for r in results {
        if json {
            outln!("{}", r.to_json())?;
        } else {
            outln!("{}", r.to_text())?;
        }
    }
    Ok(())
}

fn info(as_json: bool) -> Result<()> {
    use crate::kernels::{isa, peak};
    let opts = BenchOptions {
        warmup: 2,
        min_reps: 5,
        min_time_s: 0.5,
        max_reps: 200,
    };
    let threads = rayon::current_num_threads();
    let (_, peak_1) = bench::with_threads(1, || bench::fma_peak_gflops(&opts));
    let (_, peak_all) = bench::fma_peak_gflops(&opts);
    let probe = bench::probe_options();
    let (_, bw_1) = bench::with_threads(1, || bench::copy_bandwidth_gbs(&probe));
    let (_, bw_all) = bench::copy_bandwidth_gbs(&probe);
    let (_, gf) = bench::matmul_gflops::<f32>(512, 512, 512, &opts);
    let cpu = peak::cpu_model();
    let detected: Vec<&str> = isa::detected().iter().map(|i| i.name()).collect();
    let selected = isa::selected();
    let forced = std::env::var("NABLA_ISA").is_ok_and(|v| !v.trim().is_empty());
    let v = json!({
        "name": "nabla",
        "version": env!("CARGO_PKG_VERSION"),
        "cpu": cpu,
        "isa_detected": detected,
        "isa_selected": selected.name(),
        "isa_forced": forced,
        "threads": threads,
        "fma_peak_gflops_1_thread": peak_1,
        "fma_peak_gflops": peak_all,
        "copy_bandwidth_gbs_1_thread": bw_1,
        "copy_bandwidth_gbs": bw_all,
        "matmul_f32_512_gflops": gf,
        "matmul_fraction_of_peak": gf / peak_all,
    });
    if as_json {
        outln!("{v}")?;
    } else {
        outln!("nabla {}", env!("CARGO_PKG_VERSION"))?;
        outln!("cpu: {cpu}")?;
        outln!(
            "kernel paths: {} detected; {} selected{}",
            detected.join(", "),
            selected,
            if forced { " (NABLA_ISA)" } else { "" }
        )?;
        outln!("threads: {threads}")?;
        outln!("f32 FMA peak: {peak_1:.1} GFLOP/s on 1 thread, {peak_all:.1} on {threads}")?;
        outln!(
            "copy bandwidth (read + write): {bw_1:.1} GB/s on 1 thread, {bw_all:.1} on {threads}"
        )?;
        outln!(
            "f32 matmul 512×512×512: {gf:.1} GFLOP/s ({:.2} of the FMA peak)",
            gf / peak_all
        )?;
    }
    Ok(())
}

fn reproduce(
    as_json: bool,
    only: Option<&str>,
    format: crate::exercises::Format,
    out: Option<std::path::PathBuf>,
) -> Result<()> {
    let entries = crate::exercises::run(only)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).map_err(|e| crate::NablaError::io(&dir, e))?;
        for e in &entries {
            if let Some((name, text)) = &e.artefact {
                crate::io::atomic_write(dir.join(name), text.as_bytes())?;
            }
        }
    }
    if as_json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&crate::exercises::to_json(&entries)).unwrap_or_default()
        )?;
    } else {
        out!("{}", crate::exercises::render(&entries, format)?)?;
    }
    let failed: Vec<&str> = entries
        .iter()
        .filter(|e| !e.ok)
        .map(|e| e.id.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::NablaError::Other(format!(
            "exercises failed their checks: {}",
            failed.join(", ")
        )))
    }
}

/// The first floating-point flag given a non-finite value (`--min-delta NaN`, `--lr inf`), as
/// `--flag: value`. No flag of nabla means anything with NaN or ±inf, and NaN passes every
/// `<`/`>` check unnoticed (`--min-delta NaN` made every evaluation "no improvement"), so the
/// command line refuses them all, whatever the flag: every `f64` argument of `cmd` and of the
/// subcommand that `m` chose.
pub fn non_finite_flag(cmd: &clap::Command, m: &clap::ArgMatches) -> Option<String> {
    for arg in cmd.get_arguments() {
        if arg.get_value_parser().type_id() != std::any::TypeId::of::<f64>() {
            continue;
        }
        let id = arg.get_id().as_str();
        if let Ok(Some(mut vals)) = m.try_get_many::<f64>(id) {
            if let Some(v) = vals.find(|v| !v.is_finite()) {
                let name = arg.get_long().map_or(id.to_string(), |l| format!("--{l}"));
                return Some(format!("{name}: {v} is not a finite number"));
            }
        }
    }
    let (name, sub) = m.subcommand()?;
    non_finite_flag(cmd.find_subcommand(name)?, sub)
}

/// Runs a parsed command line; `typed` names the flags given on it (what `--resume DIR` checks
/// against the run's own, see [`resume`]).
pub fn run(cli: Cli, typed: &resume::Typed) -> Result<()> {
    match cli.command {
        Command::Info { json } => info(json),
        Command::Plot(a) => plot::run(&a),
        Command::Reproduce {
            json,
            only,
            format,
            out,
        } => reproduce(json, only.as_deref(), format, out),
        Command::Vit(c) => vit::run(c, typed),
        Command::Cnn(c) => cnn::run(c, typed),
        Command::Study(c) => study::run(c),
        Command::Bench(BenchCommand::Vit(a)) => {
            let cfg = crate::models::vit::VitConfig {
                image_size: a.image_size,
                patch: a.patch,
                in_chans: a.channels,
                dim: a.dim,
                depth: a.depth,
                heads: a.heads,
                mlp_dim: a.mlp_dim,
                num_classes: a.classes,
                pool: crate::models::vit::Pool::Cls,
                eps: 1e-6,
                dropout: 0.0,
            };
            let opts = a.common.options();
            let r = bench::with_threads(a.threads, || {
                crate::models::vit_bench::bench_vit(&cfg, a.batch, &opts)
            })?;
            // Under mpirun every rank measures; rank 0 reports.
            if !crate::dist::is_root() {
                return Ok(());
            }
            print_bench(&[r], a.common.json)
        }
        Command::Gnn(c) => gnn::run(&c, typed),
        Command::Bench(BenchCommand::Gnn(a)) => {
            let kind = crate::models::gnn::GnnKind::parse(&a.model)?;
            print_bench(
                &crate::models::gnn_bench::bench_gnn(kind, &a.common.options())?,
                a.common.json,
            )
        }
        Command::Bench(BenchCommand::Matmul(c)) => {
            print_bench(&bench::bench_matmul(&c.options()), c.json)
        }
        Command::Rnn(c) => rnn::run(c, typed),
        Command::Bench(BenchCommand::Rnn(a)) => print_bench(&rnn::bench_rnn(&a)?, a.common.json),
        Command::Bench(BenchCommand::Norm(a)) => norm::run_bench(&a),
    }
}

/// Entry point of the binary: parses arguments, runs, maps errors to exit status 1 and a run
/// stopped by a signal to `128 + signal` ([`crate::train::StopSignal::exit_code`]). Output
/// that cannot be written ends the command quietly with 141 when its reader has gone away
/// (EPIPE, what a shell reports for a process SIGPIPE killed), with a one-line error and 1
/// otherwise (ENOSPC, EFBIG).
pub fn main() -> i32 {
    crate::kernels::tune_allocator();
    // A write beyond the file-size limit (`ulimit -f`) then fails with EFBIG, which is reported
    // like any other I/O error, instead of SIGXFSZ killing the process (and dumping core) in
    // the middle of a checkpoint — the previous checkpoint stays in place either way.
    // SIGPIPE stays ignored, as the Rust runtime sets it: a closed pipe is an EPIPE error
    // where the program can act on it (see `train::signals` for training runs).
    // SAFETY: setting a signal's disposition to SIG_IGN before any other thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let cmd = Cli::command();
    let matches = match cmd.clone().try_get_matches() {
        Ok(m) => m,
        // --help and --version go to stdout, which may be closed or full like any output.
        Err(e) if !e.use_stderr() => return exit_status(e.print().map_err(NablaError::Stdout)),
        Err(e) => e.exit(),
    };
    // Exit status 1 like every other invalid value (`--dim 0`); clap's own errors are 2.
    if let Some(msg) = non_finite_flag(&cmd, &matches) {
        errln!("error: {}", crate::invalid!("{msg}"));
        return 1;
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let typed = resume::Typed::from_matches(&matches);
    // A bad NABLA_ISA is an error before any kernel runs (never an illegal instruction).
    if let Err(e) = crate::kernels::isa::init() {
        errln!("error: {e}");
        return 2;
    }
    // One rank of a data-parallel job when launched by mpirun (see `dist`).
    let _dist = match crate::dist::init() {
        Ok(g) => g,
        Err(e) => {
            errln!("error: {e}");
            return 1;
        }
    };
    // Run the command on a worker of the rayon pool rather than on the main thread: otherwise
    // the serial parts (an RNN's time loop, the tape) run beside the pool's threads, which spin
    // for a while after each parallel section — three busy threads on two cores.
    let mut builder = rayon::ThreadPoolBuilder::new().stack_size(64 << 20);
    if let Some(n) = rank_threads() {
        builder = builder.num_threads(n);
    }
    let result = match builder.build() {
        Ok(pool) => pool.install(|| run(cli, &typed)),
        Err(_) => run(cli, &typed),
    };
    // An error on one rank of a data-parallel job ends all of them (the others would wait
    // for it); the error is printed first.
    if let Err(e) = &result {
        if !e.is_broken_pipe() {
            crate::dist::abort_job(&e.to_string());
        }
    }
    if let Some(table) = crate::autograd::profile::report() {
        errln!("{table}");
    }
    exit_status(result)
}

/// Threads per rank when several ranks share this machine and `RAYON_NUM_THREADS` is unset:
/// the cores divided among the machine's ranks (`OMPI_COMM_WORLD_LOCAL_SIZE`), so that
/// `mpirun -np 2` on 2 cores runs 2 × 1 threads, not 2 × 2.
fn rank_threads() -> Option<usize> {
    if crate::dist::world().size() == 1 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    let local: usize = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / local.max(1)).max(1))
}

/// The exit status of a command that ended with `result`, after writing what stdout still
/// buffers; reports the error (see [`main`]).
fn exit_status(mut result: Result<()>) -> i32 {
    // The last partial line is still in stdout's buffer: write it while an error can be told.
    if let (Ok(()), Err(e)) = (&result, std::io::stdout().flush()) {
        result = Err(NablaError::Stdout(e));
    }
    let code = match &result {
        Ok(()) => 0,
        // The reader has what it wanted (`| head -1`): nothing to say.
        Err(e) if e.is_broken_pipe() => crate::train::StopSignal::BrokenPipe.exit_code(),
        Err(e) => {
            match e.hint() {
                Some(h) => errln!("error: {e}; {h}"),
                None => errln!("error: {e}"),
            }
            1
        }
    };
    // A training run stopped by SIGINT/SIGTERM/SIGHUP/SIGPIPE has saved its checkpoint and said
    // so; the status tells the caller (a shell, `timeout`, a scheduler) it did not finish.
    match crate::train::stop_signal() {
        Some(sig) => sig.exit_code(),
        None => code,
    }
}
