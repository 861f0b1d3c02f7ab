//! Optimizers with PyTorch (`torch.optim`, 2.x single-tensor path) semantics, gradient-norm
//! clipping and learning-rate schedules.
//!
//! Update rules, with `g` the gradient accumulated in the [`ParamStore`] and `t` the 1-based
//! step count:
//! - [`Sgd`]: `g ← g + λ w`; with momentum μ: `b ← g` on the first step, else
//!   `b ← μ b + (1 − τ) g` (τ = dampening); `d = g + μ b` (Nesterov) or `d = b`; `w ← w − η d`.
//!   Without momentum `d = g` (plain gradient descent).
//! - [`Adam`]: `g ← g + λ w` (L2, coupled); `m ← m + (g − m)(1 − β₁)`; `v ← β₂ v + (1 − β₂) g²`;
//!   `w ← w − η/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.
//! - [`AdamW`]: `w ← w (1 − η λ)` (decoupled), then the Adam step without L2.
//!
//! Optimizer state is checkpointable: [`Optimizer::state_tensors`] names each slot
//! `<parameter name>.<slot>` with PyTorch's slot names (`momentum_buffer`, `exp_avg`,
//! `exp_avg_sq`), and [`Optimizer::load_state_tensors`] restores it.

use crate::autograd::ParamStore;
use crate::error::Result;
use crate::invalid;
use crate::kernels::optim as kernels;
use crate::kernels::PAR_THRESHOLD;
use crate::tensor::{Element, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// A first-order optimizer over the parameters of a [`ParamStore`] (reads `grad`, updates
/// `value` of every parameter with `requires_grad`).
pub trait Optimizer<T: Element> {
    /// One update from the gradients currently in `params` (it does not zero them).
    fn step(&mut self, params: &mut ParamStore<T>) -> Result<()>;
    /// Current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate (e.g. from an [`LrSchedule`]). Zero is allowed (schedules reach
    /// it); a negative or non-finite value makes the next [`Optimizer::step`] fail.
    fn set_lr(&mut self, lr: f64);
    /// Number of steps taken (restored by [`Optimizer::load_state_tensors`]).
    fn step_count(&self) -> u64;
    /// The state, as `(<param name>.<slot>, tensor)` pairs in a stable order.
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)>;
    /// Restores the state written by [`Optimizer::state_tensors`] and the step count.
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor<T>>, step: u64) -> Result<()>;
}

fn check_lr_init(lr: f64, who: &str) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(invalid!(
            "{who}: learning rate must be positive and finite, got {lr}"
        ));
    }
    Ok(())
}

fn check_lr_step(lr: f64, who: &str) -> Result<()> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(invalid!(
            "{who}: learning rate must be non-negative and finite, got {lr} (set by set_lr)"
        ));
    }
    Ok(())
}

fn check_nonneg(v: f64, what: &str, who: &str) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid!(
            "{who}: {what} must be non-negative and finite, got {v}"
        ));
    }
    Ok(())
}

/// Aligned chunks of a state slot; an empty slot (an optimizer that keeps less state) yields
/// empty pieces so the zip with the parameter's chunks stays aligned.
fn slot_chunks<T>(s: &mut [T], n: usize, ch: usize) -> Vec<&mut [T]> {
    if s.len() == n {
        s.chunks_mut(ch).collect()
    } else {
        (0..n.div_ceil(ch)).map(|_| <&mut [T]>::default()).collect()
    }
}

/// Runs `f` over aligned chunks of the parameter `w`, two state slots and the gradient `g`, in
/// parallel when large. An empty slot (an optimizer that keeps less state) stays empty.
fn par_zip3<T: Element>(
    w: &mut [T],
    s1: &mut [T],
    s2: &mut [T],
    g: &[T],
    f: impl Fn(&mut [T], &mut [T], &mut [T], &[T]) + Sync,
) {
    const CH: usize = 8192;
    if w.len() < PAR_THRESHOLD {
        return f(w, s1, s2, g);
    }
    let n = w.len();
    let (c1, c2) = (slot_chunks(s1, n, CH), slot_chunks(s2, n, CH));
    w.par_chunks_mut(CH)
        .zip(c1)
        .zip(c2)
        .zip(g.par_chunks(CH))
        .for_each(|(((w, a), b), g)| f(w, a, b, g));
}

/// Loads the slots `<name>.<slot>` of `slots` from `state`, rejecting unknown keys.
fn load_slots<T: Element>(
    state: &BTreeMap<String, Tensor<T>>,
    slots: &[&str],
    who: &str,
) -> Result<BTreeMap<String, Vec<Tensor<T>>>> {
    let mut grouped: BTreeMap<String, Vec<Option<Tensor<T>>>> = BTreeMap::new();
    for (key, t) in state {
        let (name, slot) = key
            .rsplit_once('.')
            .ok_or_else(|| invalid!("{who}: state key {key:?} is not <param>.<slot>"))?;
        let k = slots.iter().position(|s| *s == slot).ok_or_else(|| {
            invalid!(
                "{who}: state key {key:?} has unknown slot {slot:?} (expected one of {slots:?})"
            )
        })?;
        let e = grouped
            .entry(name.to_string())
            .or_insert_with(|| vec![None; slots.len()]);
        e[k] = Some(t.clone());
    }
    let mut out = BTreeMap::new();
    for (name, v) in grouped {
        let mut ts = Vec::with_capacity(slots.len());
        for (k, t) in v.into_iter().enumerate() {
            ts.push(t.ok_or_else(|| invalid!("{who}: state for {name} lacks slot {}", slots[k]))?);
        }
        if ts.iter().any(|t| t.shape() != ts[0].shape()) {
            return Err(invalid!("{who}: state slots of {name} differ in shape"));
        }
        out.insert(name, ts);
    }
    Ok(out)
}

fn check_state_shape<T: Element>(
    st: &Tensor<T>,
    value: &Tensor<T>,
    name: &str,
    who: &str,
) -> Result<()> {
    if st.shape() != value.shape() {
        return Err(crate::shape_err!(
            who,
            "state of parameter {name} has shape {:?}, the parameter {:?}",
            st.shape(),
            value.shape()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// SGD
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters of [`Sgd`] (PyTorch's `torch.optim.SGD` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

impl SgdConfig {
    /// Plain gradient descent `w ← w − η g`.
    pub fn plain(lr: f64) -> Self {
        SgdConfig {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay.
#[derive(Clone, Debug)]
pub struct Sgd<T: Element> {
    cfg: SgdConfig,
    /// Momentum buffer per parameter name.
    buffers: BTreeMap<String, Tensor<T>>,
    steps: u64,
}

impl<T: Element> Sgd<T> {
    pub fn new(cfg: SgdConfig) -> Result<Self> {
        check_lr_init(cfg.lr, "SGD")?;
        check_nonneg(cfg.momentum, "momentum", "SGD")?;
        check_nonneg(cfg.dampening, "dampening", "SGD")?;
        check_nonneg(cfg.weight_decay, "weight_decay", "SGD")?;
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            return Err(invalid!(
                "SGD: Nesterov momentum requires momentum > 0 and dampening = 0, got momentum {} dampening {}",
                cfg.momentum,
                cfg.dampening
            ));
        }
        Ok(Sgd {
            cfg,
            buffers: BTreeMap::new(),
            steps: 0,
        })
    }
    /// Plain gradient descent.
    pub fn plain(lr: f64) -> Result<Self> {
        Self::new(SgdConfig::plain(lr))
    }
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl<T: Element> Optimizer<T> for Sgd<T> {
    fn step(&mut self, params: &mut ParamStore<T>) -> Result<()> {
        check_lr_step(self.cfg.lr, "SGD")?;
        let lr = T::c(self.cfg.lr);
        let wd = T::c(self.cfg.weight_decay);
        let mu = T::c(self.cfg.momentum);
        let damp = T::one() - T::c(self.cfg.dampening);
        let nesterov = self.cfg.nesterov;
        let use_momentum = self.cfg.momentum != 0.0;
        for p in params.iter_mut().filter(|p| p.requires_grad) {
            if !use_momentum {
                let g = p.grad.data();
                par_zip3(p.value.data_mut(), &mut [], &mut [], g, |w, _, _, g| {
                    kernels::sgd(w, g, lr, wd)
                });
                continue;
            }
            let first = !self.buffers.contains_key(&p.name);
            let buf = self
                .buffers
                .entry(p.name.clone())
                .or_insert_with(|| Tensor::zeros(p.value.shape()));
            check_state_shape(buf, &p.value, &p.name, "SGD")?;
            let g = p.grad.data();
            let h = kernels::Momentum {
                lr,
                wd,
                mu,
                damp,
                nesterov,
                first,
            };
            par_zip3(
                p.value.data_mut(),
                buf.data_mut(),
                &mut [],
                g,
                |w, b, _, g| kernels::sgd_momentum(w, b, g, h),
            );
        }
        self.steps += 1;
        Ok(())
    }
    fn lr(&self) -> f64 {
        self.cfg.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }
    fn step_count(&self) -> u64 {
        self.steps
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        self.buffers
            .iter()
            .map(|(n, b)| (format!("{n}.momentum_buffer"), b.clone()))
            .collect()
    }
    fn load_state_tensors(&mut self, state: &BTreeMap<String, Tensor<T>>, step: u64) -> Result<()> {
        let slots = load_slots(state, &["momentum_buffer"], "SGD")?;
        self.buffers = slots
            .into_iter()
            .map(|(n, mut v)| (n, v.remove(0)))
            .collect();
        self.steps = step;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Adam / AdamW
// ---------------------------------------------------------------------------------------------

/// Hyper-parameters shared by [`Adam`] and [`AdamW`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Adam: L2 penalty added to the gradient; AdamW: decoupled decay `w ← w(1 − ηλ)`.
    pub weight_decay: f64,
}

impl AdamConfig {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8, no weight decay.
    pub fn new(lr: f64) -> Self {
        AdamConfig {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
    pub fn weight_decay(mut self, wd: f64) -> Self {
        self.weight_decay = wd;
        self
    }
    fn validate(&self, who: &str) -> Result<()> {
        check_lr_init(self.lr, who)?;
        for (i, b) in [self.betas.0, self.betas.1].into_iter().enumerate() {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid!("{who}: beta{} must be in [0, 1), got {b}", i + 1));
            }
        }
        check_nonneg(self.eps, "eps", who)?;
        check_nonneg(self.weight_decay, "weight_decay", who)
    }
}

/// The Adam moments and step count; `decoupled` selects AdamW.
#[derive(Clone, Debug)]
struct AdamCore<T: Element> {
    cfg: AdamConfig,
    decoupled: bool,
    /// (exp_avg, exp_avg_sq) per parameter name.
    moments: BTreeMap<String, (Tensor<T>, Tensor<T>)>,
    steps: u64,
}

impl<T: Element> AdamCore<T> {
    fn who(&self) -> &'static str {
        if self.decoupled {
            "AdamW"
        } else {
            "Adam"
        }
    }
    fn step(&mut self, params: &mut ParamStore<T>) -> Result<()> {
        let who = self.who();
        check_lr_step(self.cfg.lr, who)?;
        let t = self.steps + 1;
        let (b1, b2) = self.cfg.betas;
        let bc1 = 1.0 - b1.powf(t as f64);
        let bc2_sqrt = (1.0 - b2.powf(t as f64)).sqrt();
        let step_size = T::c(self.cfg.lr / bc1);
        let bc2_sqrt = T::c(bc2_sqrt);
        let (one_m_b1, b2t, one_m_b2) = (T::c(1.0 - b1), T::c(b2), T::c(1.0 - b2));
        let eps = T::c(self.cfg.eps);
        let (l2, decay) = if self.decoupled {
            (
                T::zero(),
                T::one() - T::c(self.cfg.lr * self.cfg.weight_decay),
            )
        } else {
            (T::c(self.cfg.weight_decay), T::one())
        };
        let h = kernels::AdamStep {
            decay,
            l2,
            one_m_b1,
            b2: b2t,
            one_m_b2,
            bc2_sqrt,
            eps,
            step_size,
        };
        for p in params.iter_mut().filter(|p| p.requires_grad) {
            let (m, v) = self.moments.entry(p.name.clone()).or_insert_with(|| {
                (
                    Tensor::zeros(p.value.shape()),
                    Tensor::zeros(p.value.shape()),
                )
            });
            check_state_shape(m, &p.value, &p.name, who)?;
            let g = p.grad.data();
            par_zip3(
                p.value.data_mut(),
                m.data_mut(),
                v.data_mut(),
                g,
                |w, m, v, g| kernels::adam(w, m, v, g, h),
            );
        }
        self.steps = t;
        Ok(())
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
        let mut out = Vec::with_capacity(2 * self.moments.len());
        for (n, (m, v)) in &self.moments {
            out.push((format!("{n}.exp_avg"), m.clone()));
            out.push((format!("{n}.exp_avg_sq"), v.clone()));
        }
        out
    }
    fn load(&mut self, state: &BTreeMap<String, Tensor<T>>, step: u64) -> Result<()> {
        let slots = load_slots(state, &["exp_avg", "exp_avg_sq"], self.who())?;
        self.moments = slots
            .into_iter()
            .map(|(n, mut v)| {
                let sq = v.pop().expect("two slots");
                let m = v.pop().expect("two slots");
                (n, (m, sq))
            })
            .collect();
        self.steps = step;
        Ok(())
    }
}

macro_rules! adam_like {
    ($name:ident, $decoupled:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug)]
        pub struct $name<T: Element> {
            core: AdamCore<T>,
        }

        impl<T: Element> $name<T> {
            pub fn new(cfg: AdamConfig) -> Result<Self> {
                let core = AdamCore {
                    cfg,
                    decoupled: $decoupled,
                    moments: BTreeMap::new(),
                    steps: 0,
                };
                core.cfg.validate(core.who())?;
                Ok($name { core })
            }
            pub fn config(&self) -> &AdamConfig {
                &self.core.cfg
            }
        }

        impl<T: Element> Optimizer<T> for $name<T> {
            fn step(&mut self, params: &mut ParamStore<T>) -> Result<()> {
                self.core.step(params)
            }
            fn lr(&self) -> f64 {
                self.core.cfg.lr
            }
            fn set_lr(&mut self, lr: f64) {
                self.core.cfg.lr = lr;
            }
            fn step_count(&self) -> u64 {
                self.core.steps
            }
            fn state_tensors(&self) -> Vec<(String, Tensor<T>)> {
                self.core.state_tensors()
            }
            fn load_state_tensors(
                &mut self,
                state: &BTreeMap<String, Tensor<T>>,
                step: u64,
            ) -> Result<()> {
                self.core.load(state, step)
            }
        }
    };
}

adam_like!(
    Adam,
    false,
    "Adam (Kingma & Ba) with bias correction; `weight_decay` is an L2 term added to the gradient."
);
adam_like!(
    AdamW,
    true,
    "AdamW (Loshchilov & Hutter): Adam with decoupled weight decay `w ← w(1 − ηλ)` before the step."
);

// ---------------------------------------------------------------------------------------------
// Clipping
// ---------------------------------------------------------------------------------------------

/// Scales all gradients so that their global L2 norm is at most `max_norm`, with PyTorch's
/// `clip_grad_norm_` formula: `c = min(1, max_norm / (‖g‖ + 1e-6))`, `g ← c g`.
/// Returns the norm *before* clipping. A non-finite norm (NaN/∞ gradients) is returned as is
/// and the gradients are left untouched so the caller can detect and skip the step; a negative
/// `max_norm` is treated as 0.
pub fn clip_grad_norm<T: Element>(params: &mut ParamStore<T>, max_norm: f64) -> f64 {
    let total = params
        .iter()
        .filter(|p| p.requires_grad)
        .map(|p| kernels::sum_squares_f64(p.grad.data()))
        .sum::<f64>()
        .sqrt();
    if !total.is_finite() || max_norm.is_nan() {
        return total;
    }
    let coef = (max_norm.max(0.0) / (total + 1e-6)).min(1.0);
    if coef < 1.0 {
        let c = T::c(coef);
        for p in params.iter_mut().filter(|p| p.requires_grad) {
            kernels::scale(p.grad.data_mut(), c);
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules
// ---------------------------------------------------------------------------------------------

/// The learning rate of 0-based step `s` of a run of `total` steps, as a function of the
/// optimizer's base rate `η` (what `--lr` sets). The one schedule type of nabla: the
/// [`crate::train::Trainer`] calls [`LrSchedule::lr`] before every step.
///
/// A linear warm-up over the first `W` steps, `η (s + 1)/W`, precedes every schedule; after it
/// `s' = s − W` counts from the end of the warm-up over `n = total − W` steps:
/// - `Constant`: `η`.
/// - `Step`: `η γ^⌊s'/step_size⌋` (PyTorch `StepLR`).
/// - `Cosine`: `η_min + (η − η_min)(1 + cos(π s'/n))/2` for `s' < n`, then `η_min` (PyTorch
///   `CosineAnnealingLR` with `T_max = n`; with `W > 0`, timm's warm-up + cosine).
/// - `Linear`: `η + (η_min − η)·min(s'/n, 1)`, a linear decay to `η_min`.
#[derive(Clone, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    #[default]
    Constant,
    Step {
        step_size: u64,
        gamma: f64,
    },
    Cosine {
        min_lr: f64,
    },
    Linear {
        min_lr: f64,
    },
}

impl LrSchedule {
    /// Checks the parameters (the base rate is the optimizer's to check).
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { step_size, gamma } => {
                if step_size == 0 {
                    return Err(invalid!(
                        "step schedule: --step-size must be >= 1, got {step_size}"
                    ));
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return Err(invalid!(
                        "step schedule: --gamma must be positive and finite, got {gamma}"
                    ));
                }
                Ok(())
            }
            LrSchedule::Cosine { min_lr } | LrSchedule::Linear { min_lr } => {
                check_nonneg(min_lr, "--min-lr", "learning-rate schedule")
            }
        }
    }

    /// The rate of 0-based step `step` of `total`, from the base rate `base`, after `warmup`
    /// linear warm-up steps.
    pub fn lr(&self, base: f64, step: u64, total: u64, warmup: u64) -> f64 {
        if step < warmup {
            return base * (step + 1) as f64 / warmup as f64;
        }
        let s = step - warmup;
        let n = total.saturating_sub(warmup);
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { step_size, gamma } => {
                base * gamma.powi((s / step_size.max(1)).min(i32::MAX as u64) as i32)
            }
            LrSchedule::Cosine { min_lr } => {
                if s >= n {
                    return min_lr;
                }
                min_lr
                    + (base - min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * s as f64 / n as f64).cos())
            }
            LrSchedule::Linear { min_lr } => {
                base + (min_lr - base) * (s as f64 / n.max(1) as f64).min(1.0)
            }
        }
    }
}
