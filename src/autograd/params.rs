//! Named parameters with their gradients; saved and loaded as safetensors with PyTorch/timm names.

use crate::error::{NablaError, Result};
use crate::tensor::{Element, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub usize);

#[derive(Clone, Debug)]
pub struct Param<T: Element> {
    /// PyTorch-style dotted name, e.g. `blocks.0.attn.qkv.weight`.
    pub name: String,
    pub value: Tensor<T>,
    pub grad: Tensor<T>,
    pub requires_grad: bool,
}

/// An ordered set of named parameters.
#[derive(Clone, Debug, Default)]
pub struct ParamStore<T: Element> {
    params: Vec<Param<T>>,
}

impl<T: Element> ParamStore<T> {
    pub fn new() -> Self {
        ParamStore { params: Vec::new() }
    }
    /// Adds a parameter; names must be unique.
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<T>) -> Result<ParamId> {
        let name = name.into();
        if self.find(&name).is_some() {
            return Err(NablaError::InvalidArgument(format!(
                "duplicate parameter name {name}"
            )));
        }
        let grad = Tensor::zeros(value.shape());
        self.params.push(Param {
            name,
            value,
            grad,
            requires_grad: true,
        });
        Ok(ParamId(self.params.len() - 1))
    }
    pub fn get(&self, id: ParamId) -> &Param<T> {
        &self.params[id.0]
    }
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param<T> {
        &mut self.params[id.0]
    }
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(ParamId)
    }
    /// Looks a parameter up by name, with an error naming what is missing.
    pub fn by_name(&self, name: &str) -> Result<&Param<T>> {
        self.find(name)
            .map(|id| self.get(id))
            .ok_or_else(|| NablaError::InvalidArgument(format!("no parameter named {name}")))
    }
    pub fn len(&self) -> usize {
        self.params.len()
    }
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Param<T>> {
        self.params.iter()
    }
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param<T>> {
        self.params.iter_mut()
    }
    pub fn ids(&self) -> impl Iterator<Item = ParamId> {
        (0..self.params.len()).map(ParamId)
    }
    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.grad.fill(T::zero());
        }
    }
    /// Global L2 norm of all gradients.
    pub fn grad_norm(&self) -> f64 {
        self.params
            .iter()
            .map(|p| p.grad.norm().powi(2))
            .sum::<f64>()
            .sqrt()
    }
    /// The same parameters in another element type (e.g. f32 model → f64 gradient check).
    pub fn cast<U: Element>(&self) -> ParamStore<U> {
        ParamStore {
            params: self
                .params
                .iter()
                .map(|p| Param {
                    name: p.name.clone(),
                    value: p.value.cast(),
                    grad: p.grad.cast(),
                    requires_grad: p.requires_grad,
                })
                .collect(),
        }
    }
}
