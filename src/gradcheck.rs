//! Gradient checking by central finite differences in f64.
//!
//! The function under test is the *real* op/layer code instantiated at `f64`. A non-scalar
//! output is reduced to a scalar with a fixed random projection `L = Σ r ⊙ out`, so every entry
//! of the Jacobian contributes. The error of one entry is
//! `|analytic − numeric| / max(|analytic|, |numeric|, floor)` — relative, with a floor so that
//! entries that are zero up to rounding don't divide by ~0.

use crate::autograd::{ParamStore, Tape, Var};
use crate::error::Result;
use crate::init::Rng;
use crate::tensor::Tensor;

/// Result of a gradient check.
#[derive(Clone, Debug)]
pub struct GradCheckReport {
    /// Max relative error over every checked entry.
    pub max_rel_error: f64,
    /// Per tensor: (name, max relative error, entries checked).
    pub per_tensor: Vec<(String, f64, usize)>,
}

impl GradCheckReport {
    pub fn worst(&self) -> &str {
        self.per_tensor
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|t| t.0.as_str())
            .unwrap_or("")
    }
}

/// Options for [`check_gradients`].
#[derive(Clone, Debug)]
pub struct GradCheckOptions {
    /// Step, scaled by `max(1, |x|)`.
    pub h: f64,
    pub floor: f64,
    /// Seed of the output projection.
    pub seed: u64,
    /// Check at most this many entries per tensor (spread evenly); `usize::MAX` = all.
    pub max_entries: usize,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions {
            h: 1e-5,
            floor: 1e-4,
            seed: 0,
            max_entries: usize::MAX,
        }
    }
}

type Forward<'f> = dyn Fn(&mut Tape<f64>, &ParamStore<f64>, &[Var]) -> Result<Var> + 'f;

fn eval(
    f: &Forward<'_>,
    params: &ParamStore<f64>,
    inputs: &[Tensor<f64>],
    proj: &Option<Tensor<f64>>,
) -> Result<f64> {
    let mut tape = Tape::<f64>::no_grad();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.constant(t.clone())).collect();
    let out = f(&mut tape, params, &vars)?;
    let o = tape.value(out);
    Ok(match proj {
        Some(r) => o.data().iter().zip(r.data()).map(|(a, b)| a * b).sum(),
        None => o.item(),
    })
}

/// Checks the gradients of `f` with respect to every entry of every parameter in `params` and
/// every tensor in `inputs`.
pub fn check_gradients(
    params: &ParamStore<f64>,
    inputs: &[Tensor<f64>],
    opts: &GradCheckOptions,
    f: impl Fn(&mut Tape<f64>, &ParamStore<f64>, &[Var]) -> Result<Var>,
) -> Result<GradCheckReport> {
    let f: &Forward<'_> = &f;
    // Analytic gradients.
    let mut tape = Tape::<f64>::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.input(t.clone())).collect();
    let out = f(&mut tape, params, &vars)?;
    let oshape = tape.shape(out).to_vec();
    let proj = if tape.value(out).numel() == 1 {
        None
    } else {
        let mut rng = Rng::new(opts.seed);
        Some(Tensor::from_fn(&oshape, |_| rng.normal()))
    };
    let seed = proj.clone().unwrap_or_else(|| Tensor::ones(&oshape));
    tape.backward_with(out, seed)?;
    let mut grads = params.clone();
    grads.zero_grad();
    tape.accumulate_grads(&mut grads)?;
    let input_grads: Vec<Tensor<f64>> = vars
        .iter()
        .zip(inputs)
        .map(|(&v, t)| {
            tape.grad(v)
                .cloned()
                .unwrap_or_else(|| Tensor::zeros(t.shape()))
        })
        .collect();
    drop(tape);

    let mut report = GradCheckReport {
        max_rel_error: 0.0,
        per_tensor: Vec::new(),
    };
    let entries = |n: usize| -> Vec<usize> {
        if n <= opts.max_entries {
            (0..n).collect()
        } else {
            (0..opts.max_entries)
                .map(|i| i * n / opts.max_entries)
                .collect()
        }
    };
    let rel = |a: f64, n: f64| (a - n).abs() / a.abs().max(n.abs()).max(opts.floor);

    // Parameters.
    let mut p = params.clone();
    for id in params.ids() {
        if !params.get(id).requires_grad {
            continue;
        }
        let n = params.get(id).value.numel();
        let mut worst = 0.0f64;
        let idxs = entries(n);
        for &i in &idxs {
            let x0 = params.get(id).value.data()[i];
            let h = opts.h * x0.abs().max(1.0);
            p.get_mut(id).value.data_mut()[i] = x0 + h;
            let lp = eval(f, &p, inputs, &proj)?;
            p.get_mut(id).value.data_mut()[i] = x0 - h;
            let lm = eval(f, &p, inputs, &proj)?;
            p.get_mut(id).value.data_mut()[i] = x0;
            let num = (lp - lm) / (2.0 * h);
            worst = worst.max(rel(grads.get(id).grad.data()[i], num));
        }
        report.max_rel_error = report.max_rel_error.max(worst);
        report
            .per_tensor
            .push((params.get(id).name.clone(), worst, idxs.len()));
    }
    // Inputs.
    let mut xs = inputs.to_vec();
    for k in 0..inputs.len() {
        let mut worst = 0.0f64;
        let idxs = entries(inputs[k].numel());
        for &i in &idxs {
            let x0 = inputs[k].data()[i];
            let h = opts.h * x0.abs().max(1.0);
            xs[k].data_mut()[i] = x0 + h;
            let lp = eval(f, params, &xs, &proj)?;
            xs[k].data_mut()[i] = x0 - h;
            let lm = eval(f, params, &xs, &proj)?;
            xs[k].data_mut()[i] = x0;
            let num = (lp - lm) / (2.0 * h);
            worst = worst.max(rel(input_grads[k].data()[i], num));
        }
        report.max_rel_error = report.max_rel_error.max(worst);
        report
            .per_tensor
            .push((format!("input{k}"), worst, idxs.len()));
    }
    Ok(report)
}

/// Gradient check of a function of inputs only (no parameters).
pub fn check_inputs(
    inputs: &[Tensor<f64>],
    f: impl Fn(&mut Tape<f64>, &[Var]) -> Result<Var>,
) -> Result<GradCheckReport> {
    check_gradients(
        &ParamStore::new(),
        inputs,
        &GradCheckOptions::default(),
        |t, _, v| f(t, v),
    )
}

/// A random f64 tensor for tests (normal entries times `scale`).
pub fn randn(shape: &[usize], scale: f64, rng: &mut Rng) -> Tensor<f64> {
    Tensor::from_fn(shape, |_| scale * rng.normal())
}
