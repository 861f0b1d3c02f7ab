//! `Linear`: `y = x Wᵀ + b` over the last axis (PyTorch's `nn.Linear`; names `weight (out, in)`,
//! `bias (out)`).
//!
//! ```text
//! forward   y = x Wᵀ + b                    x (…, in), W (out, in), b (out), y (…, out)
//! backward  dx = dy W,  dW = dyᵀ x,  db = Σ_rows dy   (rows = every leading index of x)
//! ```
//!
//! The product and its backward are [`crate::ops::linear`] (one `gemm` each way, the bias
//! gradient through the one column-sum kernel); this file is the module that owns the parameters
//! and declares their initializer.

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Init;
use crate::nn::module::{Ctx, Module, VarBuilder};
use crate::ops;
use crate::tensor::Element;

/// A fully connected layer.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// PyTorch's default initialization: weight and bias `U(±1/√in)` (`kaiming_uniform_(a=√5)`).
    pub fn new<T: Element>(
        vb: VarBuilder<'_, T>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let b = 1.0 / (in_features.max(1) as f64).sqrt();
        let u = Init::Uniform { low: -b, high: b };
        Self::with_init(vb, in_features, out_features, bias.then_some(u), u)
    }
    /// With the initializers of a model that declares its own (timm's ViT: truncated normal
    /// weights, zero biases); `bias: None` = no bias.
    pub fn with_init<T: Element>(
        mut vb: VarBuilder<'_, T>,
        in_features: usize,
        out_features: usize,
        bias: Option<Init>,
        weight: Init,
    ) -> Result<Self> {
        let w = vb.get("weight", &[out_features, in_features], weight)?;
        let b = match bias {
            Some(init) => Some(vb.get("bias", &[out_features], init)?),
            None => None,
        };
        Ok(Linear {
            weight: w,
            bias: b,
            in_features,
            out_features,
        })
    }
    /// The weight and bias on the tape (for fused ops that take them as inputs).
    pub fn vars<T: Element>(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
    ) -> (Var, Option<Var>) {
        let w = tape.param(store, self.weight);
        let b = self.bias.map(|b| tape.param(store, b));
        (w, b)
    }
}

impl<T: Element> Module<T> for Linear {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        _ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let (w, b) = self.vars(tape, store);
        ops::linear(tape, x, w, b)
    }
    fn params(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }
}
