//! `nabla plot --metrics RUN/metrics.jsonl --out FILE.svg|.png`: loss and metric curves.

use crate::error::Result;
use crate::outln;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A metrics.jsonl written by training.
    #[arg(long)]
    pub metrics: PathBuf,
    /// Output image: .svg (always works) or .png (needs a TrueType font under /usr/share/fonts
    /// or in $NABLA_FONT).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &PlotArgs) -> Result<()> {
    crate::train::plot::plot_file(&a.metrics, &a.out)?;
    outln!("wrote {}", a.out.display())?;
    Ok(())
}
