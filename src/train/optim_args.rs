//! The optimizer flags a `train` command can flatten next to [`super::TrainArgs`], and an
//! optimizer chosen at run time.

use crate::autograd::ParamStore;
use crate::error::Result;
use crate::invalid;
use crate::optim::{Adam, AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use crate::tensor::{Element, Tensor};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
}

/// The command's own defaults for what the user does not set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimDefaults {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
}

/// `--optim sgd|adam|adamw --lr --weight-decay --momentum --nesterov --betas B1,B2 --eps`
/// (`#[command(flatten)] #[serde(flatten)] optim: OptimArgs`).
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Optimizer")]
pub struct OptimArgs {
    /// Update rule (PyTorch semantics) [default per command].
    #[arg(long, value_enum)]
    pub optim: Option<OptimizerKind>,
    /// Base learning rate (the schedule scales from it) [default per command].
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD/Adam: L2 added to the gradient; AdamW: decoupled decay [default per command].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// SGD Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Adam/AdamW decay rates of the first and second moment.
    #[arg(long, value_delimiter = ',', value_name = "B1,B2", default_values_t = [0.9, 0.999])]
    pub betas: Vec<f64>,
    /// Adam/AdamW denominator term.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
}

impl Default for OptimArgs {
    fn default() -> Self {
        OptimArgs {
            optim: None,
            lr: None,
            weight_decay: None,
            momentum: 0.9,
            nesterov: false,
            betas: vec![0.9, 0.999],
            eps: 1e-8,
        }
    }
}

impl OptimArgs {
    /// Fills the optimizer, rate and weight decay the user did not give with the command's.
    pub fn fill_defaults(&mut self, d: OptimDefaults) {
        self.optim.get_or_insert(d.kind);
        self.lr.get_or_insert(d.lr);
        self.weight_decay.get_or_insert(d.weight_decay);
    }

    /// The optimizer, validated (a non-positive rate or bad beta is an error naming it).
    pub fn build<T: Element>(&self, d: OptimDefaults) -> Result<AnyOptimizer<T>> {
        let lr = self.lr.unwrap_or(d.lr);
        let weight_decay = self.weight_decay.unwrap_or(d.weight_decay);
        let betas = match self.betas[..] {
            [b1, b2] => (b1, b2),
            _ => {
                return Err(invalid!(
                    "--betas takes two numbers, B1,B2, got {:?}",
                    self.betas
                ))
            }
        };
        let adam = AdamConfig {
            lr,
            betas,
            eps: self.eps,
            weight_decay,
        };
        Ok(match self.optim.unwrap_or(d.kind) {
            OptimizerKind::Sgd => AnyOptimizer::Sgd(Sgd::new(SgdConfig {
                lr,
                momentum: self.momentum,
                dampening: 0.0,
                weight_decay,
                nesterov: self.nesterov,
            })?),
            OptimizerKind::Adam => AnyOptimizer::Adam(Adam::new(adam)?),
            OptimizerKind::Adamw => AnyOptimizer::AdamW(AdamW::new(adam)?),
        })
    }
}

/// One of the optimizers of [`crate::optim`], chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyOptimizer<T: Element> {
    Sgd(Sgd<T>),
    Adam(Adam<T>),
    AdamW(AdamW<T>),
}

macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            AnyOptimizer::Sgd($o) => $e,
            AnyOptimizer::Adam($o) => $e,
            AnyOptimizer::AdamW($o) => $e,
        }
    };
}

impl<T: Element> Optimizer<T> for AnyOptimizer<T> {
    fn step(&mut self, params: &mut ParamStore<T>) -> Result<()> {
        each!(self, o => o.step(params))
    }
    fn lr(&self) -> f64 {
        each!(self, o => o.lr())
    }
    fn set_lr(&mut self, lr: f64) {
        each!(self, o => o.set_lr(lr))
    }
    fn step_count(&self) -> u64 {
        each!(self, o => o.step_count())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        each!(self, o => o.state_tensors())
    }
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor<T>>, step: u64) -> Result<()> {
        each!(self, o => o.load_state_tensors(state, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        optim: OptimArgs,
        #[command(flatten)]
        train: crate::train::TrainArgs,
    }

    #[test]
    fn flags_build_the_optimizer() {
        let d = OptimDefaults {
            kind: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.05,
        };
        let c = Cli::try_parse_from(["x", "--steps", "5"]).unwrap();
        assert_eq!(c.optim, OptimArgs::default());
        let o = c.optim.build::<f32>(d).unwrap();
        assert!(matches!(o, AnyOptimizer::AdamW(_)));
        assert_eq!(o.lr(), 1e-3);
        let c = Cli::try_parse_from(["x", "--optim", "sgd", "--lr", "0.5", "--quiet"]).unwrap();
        assert!(matches!(
            c.optim.build::<f32>(d).unwrap(),
            AnyOptimizer::Sgd(_)
        ));
        let cfg = c.train.config("runs/x");
        assert!(cfg.unwrap_err().to_string().contains("--steps"));
        let c = Cli::try_parse_from(["x", "--lr=-1"]).unwrap();
        assert!(c
            .optim
            .build::<f32>(d)
            .unwrap_err()
            .to_string()
            .contains("learning rate"));
        let c = Cli::try_parse_from(["x", "--optim", "adam", "--betas", "0.8,0.99"]).unwrap();
        assert_eq!(c.optim.betas, [0.8, 0.99]);
        let c = Cli::try_parse_from(["x", "--betas", "1.5,0.99"]).unwrap();
        assert!(c
            .optim
            .build::<f32>(d)
            .unwrap_err()
            .to_string()
            .contains("beta1"));
        let c = Cli::try_parse_from(["x", "--betas", "0.9"]).unwrap();
        assert!(c
            .optim
            .build::<f32>(d)
            .unwrap_err()
            .to_string()
            .contains("--betas"));
    }
}
