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

/// What [`Tape::backward_with_hook`] calls with a parameter and its final gradients.
pub type FinalHook<'a, T> = dyn FnMut(ParamId, &[&Tensor<T>]) + 'a;

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
        self.sweep(v, seed, None)
    }
    /// [`Tape::backward_with`] that also calls `on_final(id, grads)` for every parameter on
    /// the tape as soon as its gradient is final — when the reverse sweep has passed the
    /// earliest recorded op that reads it (a parameter is a leaf: only ops that take it as an
    /// input add to its gradient) — so that a data-parallel step can start reducing the last
    /// layers' gradients while the first layers' backward still runs ([`crate::dist`]).
    /// `grads` are the gradients of the parameter's tape values in the order they were brought
    /// in (what [`Tape::take_param_grads`] returns for it; empty when none reached it), each
    /// parameter once; a parameter no op reads is final before the sweep starts.
    pub fn backward_with_hook(
        &mut self,
        v: Var,
        seed: Tensor<T>,
        on_final: &mut FinalHook<'_, T>,
    ) -> Result<()> {
        self.sweep(v, seed, Some(on_final))
    }
    /// For every parameter on the tape, the index of the earliest record that reads one of its
    /// values (`None`: no record does), sorted by that index, latest first: the order in which
    /// the reverse sweep makes the parameters' gradients final.
    fn final_order(&self) -> Vec<(Option<usize>, ParamId)> {
        let mut first_read = vec![None::<usize>; self.values.len()];
        for (i, rec) in self.records.iter().enumerate().rev() {
            for inp in &rec.inputs {
                first_read[inp.0] = Some(i);
            }
        }
        let mut at: Vec<(Option<usize>, ParamId)> = Vec::new();
        for &(v, id) in &self.params {
            match at.iter_mut().find(|(_, p)| *p == id) {
                // The parameter's gradient is final when the earliest read of any of its values
                // has been swept (None < Some: a value never read does not delay it).
                Some(e) => {
                    e.0 = match (e.0, first_read[v.0]) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                }
                None => at.push((first_read[v.0], id)),
            }
        }
        // Latest record first (a parameter read by no record comes first of all).
        at.sort_by_key(|&(i, _)| std::cmp::Reverse(i.map_or(usize::MAX, |i| i)));
        at
    }
    /// Calls `on_final` with parameter `id`'s gradients (see [`Tape::backward_with_hook`]).
    fn announce(&self, id: ParamId, on_final: &mut FinalHook<'_, T>) {
        let grads: Vec<&Tensor<T>> = self
            .params
            .iter()
            .filter(|(_, p)| *p == id)
            .filter_map(|(v, _)| self.grads[v.0].as_ref())
            .collect();
        on_final(id, &grads);
    }
    fn sweep(
        &mut self,
        v: Var,
        seed: Tensor<T>,
        mut on_final: Option<&mut FinalHook<'_, T>>,
    ) -> Result<()> {
        self.values[v.0].check_same_shape("backward seed", &seed)?;
        accumulate(&mut self.grads[v.0], seed)?;
        let order = match on_final {
            Some(_) => self.final_order(),
            None => Vec::new(),
        };
        let mut next_final = 0;
        let records = std::mem::take(&mut self.records);
        let result = (|| {
            for (i, rec) in records.iter().enumerate().rev() {
                if let Some(hook) = on_final.as_deref_mut() {
                    // Every parameter first read after record i is final now.
                    while let Some(&(at, id)) = order.get(next_final) {
                        if at.is_some_and(|at| at <= i) {
                            break;
                        }
                        self.announce(id, hook);
                        next_final += 1;
                    }
                }
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
            if let Some(hook) = on_final.as_deref_mut() {
                for &(_, id) in &order[next_final..] {
                    self.announce(id, hook);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops;
    use std::sync::{Arc, Mutex};

    /// The identity, whose backward writes its label into a log: marks the moments of the
    /// reverse sweep.
    struct Mark(&'static str, Arc<Mutex<Vec<String>>>);

    impl Op<f64> for Mark {
        fn name(&self) -> &'static str {
            "mark"
        }
        fn backward(&self, ctx: &BackwardCtx<'_, f64>) -> Result<Vec<Option<Tensor<f64>>>> {
            self.1.lock().unwrap().push(self.0.to_string());
            Ok(vec![Some(ctx.grad().into_owned())])
        }
    }

    /// `loss = Σ tanh(tanh(x·W1 + x·W1)·W2 + b)` with an unread parameter `u` and two marks
    /// (after the inner and the outer tanh): the reverse sweep makes `u` final before any op's
    /// backward (no op reads it), `b` and `W2` (read by the last ops) between the marks, and
    /// `W1` (on the tape twice, read by the first ops) after both; each gradient handed to the
    /// hook is, bit for bit, the one the tape holds at the end of backward.
    #[test]
    fn hook_announces_each_parameter_once_when_its_gradient_is_final() {
        let mut store = ParamStore::<f64>::new();
        let f = |shape: &[usize], k: f64| {
            let n: usize = shape.iter().product();
            Tensor::new(
                shape,
                (0..n).map(|i| ((i as f64 + k) * 0.37).sin()).collect(),
            )
            .unwrap()
        };
        let w1 = store.add("w1", f(&[3, 4], 1.0)).unwrap();
        let u = store.add("u", f(&[2], 2.0)).unwrap();
        let w2 = store.add("w2", f(&[4, 2], 3.0)).unwrap();
        let b = store.add("b", f(&[1, 2], 4.0)).unwrap();
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tape = Tape::<f64>::new();
        let x = tape.constant(f(&[5, 3], 5.0));
        let w1a = tape.param(&store, w1);
        let _ = tape.param(&store, u);
        let w2v = tape.param(&store, w2);
        let bv = tape.param(&store, b);
        let w1b = tape.param(&store, w1);
        let h1 = ops::matmul(&mut tape, x, w1a).unwrap();
        let h2 = ops::matmul(&mut tape, x, w1b).unwrap();
        let h = ops::add(&mut tape, h1, h2).unwrap();
        let h = ops::tanh(&mut tape, h).unwrap();
        let hv = tape.value(h).clone();
        let h = tape.record1(Mark("inner", log.clone()), &[h], hv);
        let z = ops::matmul(&mut tape, h, w2v).unwrap();
        let z = ops::add(&mut tape, z, bv).unwrap();
        let z = ops::tanh(&mut tape, z).unwrap();
        let zv = tape.value(z).clone();
        let z = tape.record1(Mark("outer", log.clone()), &[z], zv);
        let loss = ops::sum_all(&mut tape, z).unwrap();
        let name = |id: ParamId| store.get(id).name.clone();
        let mut seen: Vec<(ParamId, Vec<Tensor<f64>>)> = Vec::new();
        tape.backward_with_hook(loss, Tensor::ones(&[]), &mut |id, g| {
            log.lock().unwrap().push(name(id));
            seen.push((id, g.iter().map(|t| (*t).clone()).collect()));
        })
        .unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["u", "outer", "b", "w2", "inner", "w1"],
            "the moments parameters become final"
        );
        assert!(seen[0].1.is_empty(), "an unread parameter has no gradient");
        assert_eq!(seen[3].1.len(), 2, "w1 is on the tape twice");
        let end = tape.take_param_grads();
        assert_eq!(end.len(), 4);
        for (id, grads) in &seen {
            let at_end: Vec<&Tensor<f64>> = end
                .iter()
                .filter(|(p, _)| p == id)
                .map(|(_, g)| g)
                .collect();
            assert_eq!(grads.len(), at_end.len(), "{id:?}");
            for (a, b) in grads.iter().zip(at_end) {
                let bits =
                    |t: &Tensor<f64>| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(a),
                    bits(b),
                    "gradient of {id:?} changed after it was final"
                );
            }
        }
    }
}
