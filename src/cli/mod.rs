//! The `nabla` command line. Each subcommand parses its flags and calls library functions;
//! nothing here computes anything the library can't.

use crate::bench::{self, BenchOptions, BenchResult};
use crate::error::Result;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

pub mod plot;
pub mod rnn;

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Version, thread count and the measured f32 matmul rate of this machine.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Elman RNN: gradients, gradient-flow analysis, character-level language model.
    #[command(subcommand)]
    Rnn(rnn::RnnCommand),
    /// Benchmarks (median seconds per call; --json prints one object per configuration).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Loss and metric curves of a training run (metrics.jsonl → .svg or .png).
    Plot(plot::PlotArgs),
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
    /// Seconds per Elman RNN training step (forward + BPTT + SGD), f32.
    Rnn(rnn::BenchRnnArgs),
}

/// Prints results per the benchmark convention.
pub fn print_bench(results: &[BenchResult], json: bool) {
    for r in results {
        if json {
            println!("{}", r.to_json());
        } else {
            println!("{}", r.to_text());
        }
    }
}

fn info(as_json: bool) -> Result<()> {
    let opts = BenchOptions {
        warmup: 2,
        min_reps: 5,
        min_time_s: 0.5,
        max_reps: 200,
    };
    let (_, gf) = bench::matmul_gflops::<f32>(512, 512, 512, &opts);
    let threads = rayon::current_num_threads();
    let v = json!({
        "name": "nabla",
        "version": env!("CARGO_PKG_VERSION"),
        "threads": threads,
        "matmul_f32_512_gflops": gf,
    });
    if as_json {
        println!("{v}");
    } else {
        println!("nabla {}", env!("CARGO_PKG_VERSION"));
        println!("threads: {threads}");
        println!("f32 matmul 512×512×512: {gf:.1} GFLOP/s");
    }
    Ok(())
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { json } => info(json),
        Command::Plot(a) => plot::run(&a),
        Command::Bench(BenchCommand::Matmul(c)) => {
            print_bench(&bench::bench_matmul(&c.options()), c.json);
            Ok(())
        }
        Command::Rnn(c) => rnn::run(c),
        Command::Bench(BenchCommand::Rnn(a)) => {
            print_bench(&rnn::bench_rnn(&a)?, a.common.json);
            Ok(())
        }
    }
}

/// Entry point of the binary: parses arguments, runs, maps errors to exit status 1.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
