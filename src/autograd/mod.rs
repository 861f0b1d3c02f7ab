//! Reverse-mode automatic differentiation on a tape.
//!
//! A forward pass records each op — primitive (`add`, `matmul`) or coarse and fused (a whole
//! RNN sequence, a whole attention) — together with its inputs and outputs. [`Tape::backward`]
//! walks the records in reverse and calls each op's hand-written [`Op::backward`]. Both kinds of
//! op plug into the same mechanism: an op is anything that implements [`Op`].
//!
//! Parameters live outside the tape in a [`ParamStore`]; a forward pass brings them onto the tape
//! with [`Tape::param`], and [`Tape::accumulate_grads`] adds their gradients into the store
//! (gradients accumulate until [`ParamStore::zero_grad`]).

mod params;
pub mod profile;
pub use params::{Param, ParamId, ParamStore};

use crate::error::{NablaError, Result};
use crate::tensor::{Element, Tensor};

/// A handle to a value on a [`Tape`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

impl Var {
    pub fn index(self) -> usize {
        self.0
    }
}

/// What an op's backward sees: its inputs, its outputs, and the gradients of the loss with
/// respect to its outputs (`None` where no gradient reached an output).
pub struct BackwardCtx<'a, T: Element> {
    pub inputs: Vec<&'a Tensor<T>>,
    pub outputs: Vec<&'a Tensor<T>>,
    pub grad_outputs: Vec<Option<&'a Tensor<T>>>,
    /// Which inputs need a gradient; an op may skip the others and return `None` for them.
    pub needs_grad: Vec<bool>,
}

impl<'a, T: Element> BackwardCtx<'a, T> {
    /// Gradient of output `i`, or zeros of its shape.
    pub fn grad_output(&self, i: usize) -> std::borrow::Cow<'a, Tensor<T>> {
        match self.grad_outputs[i] {
            Some(g) => std::borrow::Cow::Borrowed(g),
            None => std::borrow::Cow::Owned(Tensor::zeros(self.outputs[i].shape())),
        }
    }
    /// Gradient of the single output (most ops have one).
    pub fn grad(&self) -> std::borrow::Cow<'a, Tensor<T>> {
        self.grad_output(0)
    }
}

/// An operation with a hand-derived backward pass.
pub trait Op<T: Element>: Send + Sync {
    fn name(&self) -> &'static str;
    /// Returns one entry per input: the gradient of the loss with respect to that input
    /// (same shape as the input), or `None` if the op does not propagate to it.
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>>;
}

struct Record<T: Element> {
    op: Box<dyn Op<T>>,
    inputs: Vec<Var>,
    outputs: Vec<Var>,
}

/// The autodiff tape. Generic over the element type so `f64` gradient checks run the same ops.
pub struct Tape<T: Element = f32> {
    values: Vec<Tensor<T>>,
    requires_grad: Vec<bool>,
    grads: Vec<Option<Tensor<T>>>,
    params: Vec<(Var, ParamId)>,
    records: Vec<Record<T>>,
    grad_enabled: bool,
    /// The last event on this tape, while [`profile::enabled`].
    last_event: Option<std::time::Instant>,
}

impl<T: Element> Default for Tape<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Element> Tape<T> {
    pub fn new() -> Self {
        Tape {
            values: Vec::new(),
            requires_grad: Vec::new(),
            grads: Vec::new(),
            params: Vec::new(),
            records: Vec::new(),
            grad_enabled: true,
            // Time before the tape existed (the previous step's optimizer, say) is no op's.
            last_event: profile::enabled().then(std::time::Instant::now),
        }
    }
    /// A tape that records nothing (evaluation / inference): ops only compute forward values.
    pub fn no_grad() -> Self {
        let mut t = Self::new();
        t.grad_enabled = false;
        t
    }
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }
    /// Charges the time since the previous event on this tape to `name`'s forward.
    fn profile_forward(&mut self, name: &'static str) {
        if profile::enabled() {
            let now = std::time::Instant::now();
            if let Some(t) = self.last_event {
                profile::add(name, false, (now - t).as_secs_f64());
            }
            self.last_event = Some(now);
        }
    }
    fn push(&mut self, t: Tensor<T>, requires_grad: bool) -> Var {
        self.values.push(t);
        self.requires_grad.push(requires_grad && self.grad_enabled);
        self.grads.push(None);
        Var(self.values.len() - 1)
    }
    /// A leaf that does not need a gradient (data, targets, masks).
    pub fn constant(&mut self, t: Tensor<T>) -> Var {
        self.profile_forward("(constant)");
        self.push(t, false)
    }
    /// A leaf whose gradient is wanted (an input being differentiated).
    pub fn input(&mut self, t: Tensor<T>) -> Var {
        self.profile_forward("(input)");
        self.push(t, true)
    }
    /// Brings parameter `id` of `store` onto the tape; its gradient flows back to the store
    /// through [`Tape::accumulate_grads`].
    pub fn param(&mut self, store: &ParamStore<T>, id: ParamId) -> Var {
        self.profile_forward("(param)");
        let p = store.get(id);
        let v = self.push(p.value.clone(), p.requires_grad);
        self.params.push((v, id));
        v
    }
    pub fn value(&self, v: Var) -> &Tensor<T> {
        &self.values[v.0]
    }
    pub fn shape(&self, v: Var) -> &[usize] {
        self.values[v.0].shape()
    }
    pub fn requires_grad(&self, v: Var) -> bool {
        self.requires_grad[v.0]
    }
    pub fn grad(&self, v: Var) -> Option<&Tensor<T>> {
        self.grads[v.0].as_ref()
    }
    /// Number of recorded ops (for tests and memory accounting).
    pub fn num_records(&self) -> usize {
        self.records.len()
    }
    /// Records an op with several outputs. If no input needs a gradient the op is not recorded
    /// (its outputs are plain constants), so inference keeps no activations.
    pub fn record(
        &mut self,
        op: impl Op<T> + 'static,
        inputs: &[Var],
        outputs: Vec<Tensor<T>>,
    ) -> Vec<Var> {
        self.profile_forward(op.name());
        let rg = self.grad_enabled && inputs.iter().any(|v| self.requires_grad[v.0]);
        let outs: Vec<Var> = outputs.into_iter().map(|t| self.push(t, rg)).collect();
        if rg {
            self.records.push(Record {
                op: Box::new(op),
                inputs: inputs.to_vec(),
                outputs: outs.clone(),
            });
        }
        outs
    }
    /// Records an op with one output.
    pub fn record1(&mut self, op: impl Op<T> + 'static, inputs: &[Var], output: Tensor<T>) -> Var {
        self.record(op, inputs, vec![output])[0]
    }
    /// Backpropagates from a one-element `loss` (seeded with 1).
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        if self.values[loss.0].numel() != 1 {
            return Err(crate::shape_err!(
                "backward",
                "loss must have one element, got shape {:?}; use backward_with for a seed",
                self.values[loss.0].shape()
            ));
        }
        let seed = Tensor::ones(self.values[loss.0].shape());
        self.backward_with(loss, seed)
    }
    /// Backpropagates from `v` with the given seed gradient `∂L/∂v`.
    pub fn backward_with(&mut self, v: Var, seed: Tensor<T>) -> Result<()> {
        self.values[v.0].check_same_shape("backward seed", &seed)?;
        accumulate(&mut self.grads[v.0], seed)?;
        let records = std::mem::take(&mut self.records);
        let result = (|| {
            for rec in records.iter().rev() {
                if rec.outputs.iter().all(|o| self.grads[o.0].is_none()) {
                    continue;
                }
                let t0 = profile::enabled().then(std::time::Instant::now);
                let needs: Vec<bool> = rec.inputs.iter().map(|i| self.requires_grad[i.0]).collect();
                let grads_in = {
                    let ctx = BackwardCtx {
                        inputs: rec.inputs.iter().map(|i| &self.values[i.0]).collect(),
                        outputs: rec.outputs.iter().map(|o| &self.values[o.0]).collect(),
                        grad_outputs: rec
                            .outputs
                            .iter()
                            .map(|o| self.grads[o.0].as_ref())
                            .collect(),
                        needs_grad: needs.clone(),
                    };
                    rec.op.backward(&ctx)?
                };
                if grads_in.len() != rec.inputs.len() {
                    return Err(NablaError::Other(format!(
                        "op {} returned {} gradients for {} inputs",
                        rec.op.name(),
                        grads_in.len(),
                        rec.inputs.len()
                    )));
                }
                for ((inp, g), need) in rec.inputs.iter().zip(grads_in).zip(needs) {
                    if let (Some(g), true) = (g, need) {
                        if g.shape() != self.values[inp.0].shape() {
                            return Err(crate::shape_err!(
                                rec.op.name(),
                                "backward produced gradient {:?} for input {:?}",
                                g.shape(),
                                self.values[inp.0].shape()
                            ));
                        }
                        accumulate(&mut self.grads[inp.0], g)?;
                    }
                }
                if let Some(t0) = t0 {
                    profile::add(rec.op.name(), true, t0.elapsed().as_secs_f64());
                }
            }
            Ok(())
        })();
        self.records = records;
        result
    }
    /// Adds the gradients of every parameter brought onto this tape into `store`.
    pub fn accumulate_grads(&self, store: &mut ParamStore<T>) -> Result<()> {
        for &(v, id) in &self.params {
            if let Some(g) = &self.grads[v.0] {
                store.get_mut(id).grad.axpy(T::one(), g)?;
            }
        }
        Ok(())
    }
    /// Moves the gradients of the parameters on this tape out, in the order they were brought
    /// in (what [`Tape::accumulate_grads`] would add), e.g. to sum several tapes' gradients in a
    /// fixed order.
    pub fn take_param_grads(&mut self) -> Vec<(ParamId, Tensor<T>)> {
        let mut out = Vec::with_capacity(self.params.len());
        for &(v, id) in &self.params {
            if let Some(g) = self.grads[v.0].take() {
                out.push((id, g));
            }
        }
        out
    }
    /// Bytes of every value and gradient the tape holds: what benchmarks count as the
    /// compulsory memory traffic of a step (each tensor written once and read at least once).
    pub fn tensor_bytes(&self) -> usize {
        let values: usize = self.values.iter().map(|t| t.numel()).sum();
        let grads: usize = self.grads.iter().flatten().map(|g| g.numel()).sum();
        (values + grads) * std::mem::size_of::<T>()
    }
    /// Drops all recorded ops and gradients but keeps nothing else alive; reuse for the next step.
    pub fn clear(&mut self) {
        let enabled = self.grad_enabled;
        *self = Self::new();
        self.grad_enabled = enabled;
    }
}

fn accumulate<T: Element>(slot: &mut Option<Tensor<T>>, g: Tensor<T>) -> Result<()> {
    match slot {
        Some(acc) => acc.axpy(T::one(), &g),
        None => {
            *slot = Some(g);
            Ok(())
        }
    }
}
