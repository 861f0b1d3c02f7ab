//! The one way to build a layer: a [`Module`] runs forward on a [`Tape`] and owns named
//! parameters, created or found through a [`VarBuilder`] whose path gives their names.
//!
//! As in candle (`VarBuilder::pp`) and timm (state-dict names), a parameter's name is the path of
//! the modules that own it: a ViT builds `vb.pp("blocks").pp(3).pp("attn").pp("qkv")`, the
//! `Linear` there asks for `"weight"`, and the name `blocks.3.attn.qkv.weight` follows from the
//! structure, spelled once. The module that owns a parameter declares its initializer; the same
//! constructor then either initializes (seeded, in creation order: the same seed gives the same
//! bits), loads from a checkpoint's tensors (shapes checked, names reported when missing), or
//! binds to parameters already in a [`ParamStore`].
//!
//! Parameters stay in the store, outside the module, so one module value serves `f32` training
//! and an `f64` gradient check (`store.cast()`), and several threads can run forward passes of the
//! same module at once (the ViT's micro-batches).

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::{Init, Rng};
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};
use std::collections::BTreeMap;
use std::fmt::Display;

/// Training or evaluation mode of one forward pass, and the random stream of its dropout
/// (PyTorch's `module.train()` / `module.eval()`, given per call so that threads running the same
/// module in different modes cannot race).
#[derive(Default)]
pub struct Ctx<'a> {
    pub train: bool,
    pub rng: Option<&'a mut Rng>,
}

impl<'a> Ctx<'a> {
    /// Evaluation mode: dropout off, running statistics used.
    pub fn eval() -> Self {
        Ctx {
            train: false,
            rng: None,
        }
    }
    /// Training mode drawing dropout masks from `rng`.
    pub fn train(rng: &'a mut Rng) -> Self {
        Ctx {
            train: true,
            rng: Some(rng),
        }
    }
    /// The random stream, or an error naming who needed it.
    pub fn rng(&mut self, who: &str) -> Result<&mut Rng> {
        self.rng
            .as_deref_mut()
            .ok_or_else(|| invalid!("{who} in training mode needs a random stream (Ctx::train)"))
    }
}

/// A layer or a model: forward on a tape, its parameters (named in the store by the
/// [`VarBuilder`] path that made them) and its buffers.
pub trait Module<T: Element>: Send + Sync {
    /// `y = f(x)`, recorded on `tape`, reading parameters from `store`.
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var>;
    /// Every parameter this module and its children own, in creation order.
    fn params(&self) -> Vec<ParamId>;
    /// Non-trainable state saved beside the parameters (BatchNorm's running statistics),
    /// with their full names.
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        Vec::new()
    }
    /// `(name, id)` of every parameter, as PyTorch's `named_parameters()`.
    fn named_params(&self, store: &ParamStore<T>) -> Vec<(String, ParamId)> {
        self.params()
            .into_iter()
            .map(|id| (store.get(id).name.clone(), id))
            .collect()
    }
    /// Number of scalar parameters.
    fn num_params(&self, store: &ParamStore<T>) -> usize {
        self.params()
            .into_iter()
            .map(|id| store.get(id).value.numel())
            .sum()
    }
}

/// The parameters of a parent's children, in order: what a composed module's
/// [`Module::params`] returns.
pub fn params_of<T: Element>(children: &[&dyn Module<T>]) -> Vec<ParamId> {
    children.iter().flat_map(|c| c.params()).collect()
}

/// Modules applied one after the other (PyTorch's `nn.Sequential`; children are named `0`, `1`, …
/// by the caller's `vb.pp(i)`).
#[derive(Default)]
pub struct Sequential<T: Element> {
    layers: Vec<Box<dyn Module<T>>>,
}

impl<T: Element> Sequential<T> {
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }
    /// Appends a layer.
    pub fn push(mut self, layer: impl Module<T> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }
    pub fn len(&self) -> usize {
        self.layers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<T: Element> Module<T> for Sequential<T> {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        mut x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        for l in &self.layers {
            x = l.forward(tape, store, x, ctx)?;
        }
        Ok(x)
    }
    fn params(&self) -> Vec<ParamId> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }
    fn buffers(&self) -> Vec<(String, Tensor<T>)> {
        self.layers.iter().flat_map(|l| l.buffers()).collect()
    }
}

/// Where a [`VarBuilder`]'s parameters come from.
enum Backend<'a, T: Element> {
    /// Fresh values from each parameter's declared initializer, drawn from `rng` in creation order.
    Init {
        store: &'a mut ParamStore<T>,
        rng: &'a mut Rng,
    },
    /// Copies of a checkpoint's tensors, added to `store`.
    Load {
        store: &'a mut ParamStore<T>,
        tensors: &'a BTreeMap<String, Tensor<T>>,
    },
    /// Parameters already in `store` (a model rebuilt over trained weights).
    Bind { store: &'a ParamStore<T> },
    /// Only the names and shapes, nothing allocated (a checkpoint checked against a
    /// configuration, a parameter count); the ids returned are positions in `shapes`.
    Shapes {
        shapes: &'a mut Vec<(String, Vec<usize>)>,
    },
}

/// Builds a module's parameters under a dotted path (candle's `VarBuilder`).
pub struct VarBuilder<'a, T: Element> {
    backend: Backend<'a, T>,
    prefix: String,
}

impl<'a, T: Element> VarBuilder<'a, T> {
    /// Parameters initialized by their modules, drawn from `rng`, added to `store`.
    pub fn init(store: &'a mut ParamStore<T>, rng: &'a mut Rng) -> Self {
        VarBuilder {
            backend: Backend::Init { store, rng },
            prefix: String::new(),
        }
    }
    /// Parameters copied from `tensors` (e.g. a timm state dict) into `store`.
    pub fn load(store: &'a mut ParamStore<T>, tensors: &'a BTreeMap<String, Tensor<T>>) -> Self {
        VarBuilder {
            backend: Backend::Load { store, tensors },
            prefix: String::new(),
        }
    }
    /// Parameters found in `store` by name, shapes checked.
    pub fn bind(store: &'a ParamStore<T>) -> Self {
        VarBuilder {
            backend: Backend::Bind { store },
            prefix: String::new(),
        }
    }
    /// Records each parameter's name and shape instead of creating it: the names and shapes of
    /// a model, from its constructor (so they are spelled once), without allocating it.
    pub fn shapes(shapes: &'a mut Vec<(String, Vec<usize>)>) -> Self {
        VarBuilder {
            backend: Backend::Shapes { shapes },
            prefix: String::new(),
        }
    }
    /// A builder one level down: `vb.pp("blocks").pp(3)` names `blocks.3.*`.
    pub fn pp(&mut self, name: impl Display) -> VarBuilder<'_, T> {
        let prefix = self.path(&name.to_string());
        let backend = match &mut self.backend {
            Backend::Init { store, rng } => Backend::Init {
                store: &mut **store,
                rng,
            },
            Backend::Load { store, tensors } => Backend::Load {
                store: &mut **store,
                tensors,
            },
            Backend::Bind { store } => Backend::Bind { store },
            Backend::Shapes { shapes } => Backend::Shapes { shapes },
        };
        VarBuilder { backend, prefix }
    }
    /// The same builder, reborrowed (for a child module whose parameters sit at this level, like
    /// the ViT's `cls_token` beside `patch_embed.proj`).
    pub fn by_ref(&mut self) -> VarBuilder<'_, T> {
        self.pp("")
    }
    /// The full name of `name` under this builder's path.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }
    /// This builder's own path (`""` at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The parameter `name` of `shape`: initialized with `init`, loaded, or bound, by mode.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<ParamId> {
        let full = self.path(name);
        match &mut self.backend {
            Backend::Init { store, rng } => {
                let t = init.tensor(shape, rng)?;
                store.add(full, t)
            }
            Backend::Load { store, tensors } => {
                let t = tensors.get(&full).ok_or_else(|| {
                    invalid!("the checkpoint has no tensor {full:?} (shape {shape:?})")
                })?;
                check_shape(&full, t.shape(), shape)?;
                store.add(full, t.clone())
            }
            Backend::Bind { store } => {
                let id = store
                    .find(&full)
                    .ok_or_else(|| invalid!("no parameter named {full} (shape {shape:?})"))?;
                check_shape(&full, store.get(id).value.shape(), shape)?;
                Ok(id)
            }
            Backend::Shapes { shapes } => {
                if shapes.iter().any(|(n, _)| *n == full) {
                    return Err(invalid!("duplicate parameter name {full}"));
                }
                shapes.push((full, shape.to_vec()));
                Ok(ParamId(shapes.len() - 1))
            }
        }
    }
    /// A loaded tensor by name under this path, for buffers (running statistics) that live
    /// outside the store: `Some` when loading and present, `None` otherwise.
    pub fn get_buffer(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor<T>>> {
        let full = self.path(name);
        match &self.backend {
            Backend::Load { tensors, .. } => match tensors.get(&full) {
                Some(t) => {
                    check_shape(&full, t.shape(), shape)?;
                    Ok(Some(t.clone()))
                }
                None => Ok(None),
            },
            _ => Ok(None),
        }
    }
}

fn check_shape(name: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got != want {
        return Err(shape_err!(
            "parameter",
            "{name} has shape {got:?}, the model needs {want:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_with_dots_and_modes_agree() {
        let mut store = ParamStore::<f64>::new();
        let mut rng = Rng::new(5);
        {
            let mut vb = VarBuilder::init(&mut store, &mut rng);
            let mut blocks = vb.pp("blocks");
            let mut b3 = blocks.pp(3);
            let mut qkv = b3
                .pp("attn")
                .pp("qkv")
                .get("weight", &[2, 3], Init::KaimingUniform);
            assert!(qkv.is_ok());
            qkv = b3.get("scale", &[1], Init::Constant(2.0));
            assert!(qkv.is_ok());
        }
        let names: Vec<_> = store.iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, ["blocks.3.attn.qkv.weight", "blocks.3.scale"]);
        // Bind finds them; a wrong shape or a missing name is an error that names the parameter.
        let mut vb = VarBuilder::bind(&store);
        let id = vb.pp("blocks.3").get("scale", &[1], Init::Zeros).unwrap();
        assert_eq!(store.get(id).value.data(), &[2.0]);
        let e = vb
            .pp("blocks.3")
            .get("scale", &[2], Init::Zeros)
            .unwrap_err();
        assert!(e.to_string().contains("blocks.3.scale"), "{e}");
        let e = vb.get("nope", &[1], Init::Zeros).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        // Load copies values from a state dict.
        let tensors: BTreeMap<String, Tensor<f64>> = store
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        let mut loaded = ParamStore::new();
        let mut vb = VarBuilder::load(&mut loaded, &tensors);
        vb.pp("blocks")
            .pp(3)
            .pp("attn.qkv")
            .get("weight", &[2, 3], Init::Zeros)
            .unwrap();
        assert!(vb.get("missing", &[1], Init::Zeros).is_err());
        let mut shapes = Vec::new();
        let mut vb = VarBuilder::<f32>::shapes(&mut shapes);
        vb.pp("a").get("w", &[4, 2], Init::KaimingUniform).unwrap();
        assert!(vb.pp("a").get("w", &[1], Init::Zeros).is_err());
        assert_eq!(shapes, [("a.w".to_string(), vec![4, 2])]);
        assert_eq!(
            loaded.by_name("blocks.3.attn.qkv.weight").unwrap().value,
            store.by_name("blocks.3.attn.qkv.weight").unwrap().value
        );
    }
}
