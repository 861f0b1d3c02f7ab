//! Gradient flow through time in the assignment's Elman RNN (exercises 1.2–1.5):
//! the recursion for `∇_{h_t}L` checked by finite differences, the size of `∇_{h_t}L` over time
//! (vanishing/exploding), the Jacobian bound `‖∂h_{t+1}/∂h_t‖ ≤ ¼‖U‖` for the sigmoid, and the
//! bias of truncated BPTT against the exact gradient.
//!
//! Everything works on an [`RnnProblem`] (weights + one batch) in f64, and is cheap on the small
//! examples of the exercises.

use crate::analysis::gated::GatedWeights;
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::io;
use crate::nn::rnn::{
    forward_tm, mse_grad, swap01, Activation, BackwardOptions, CellKind, ElmanWeights, SeqDims,
};
use crate::tensor::Tensor;
use crate::{invalid, shape_err};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

/// Weights and one batch: `x (B, T, I)`, targets `z (B, T, O)`, optional `h0 (B, H)`.
#[derive(Clone, Debug)]
pub struct RnnProblem {
    pub weights: ElmanWeights<f64>,
    pub x: Tensor<f64>,
    pub z: Tensor<f64>,
    pub h0: Option<Tensor<f64>>,
}

impl RnnProblem {
    /// Checks the shapes and returns the sizes.
    pub fn dims(&self) -> Result<SeqDims> {
        self.weights.check(&self.x, &self.z, self.h0.as_ref())
    }
    /// Loss and gradients, exact (`truncate = None`) or chunked-truncated.
    pub fn bptt(
        &self,
        truncate: Option<usize>,
        keep_grad_h: bool,
    ) -> Result<crate::nn::rnn::MseBptt<f64>> {
        self.weights.mse_bptt(
            &self.x,
            &self.z,
            self.h0.as_ref(),
            &BackwardOptions {
                truncate,
                need_x: false,
                keep_grad_h,
            },
        )
    }
}

/// Reads `W`, `U`, `V` (+ optional `h0`) from `params` and `x`, `z` from `batch` (safetensors,
/// any float dtype), with the sigmoid of the assignment. Every shape is checked.
pub fn load_problem(params: &Path, batch: &Path) -> Result<RnnProblem> {
    let p = io::load_safetensors::<f64>(params)?;
    let d = io::load_safetensors::<f64>(batch)?;
    let get2 = |name: &str| -> Result<Tensor<f64>> {
        let t = io::take(&p, name, params)?;
        if t.ndim() != 2 {
            return Err(NablaError::format(
                params,
                format!("{name} must be 2-D, got shape {:?}", t.shape()),
            ));
        }
        Ok(t.clone())
    };
    let weights = ElmanWeights {
        w: get2("W")?,
        u: get2("U")?,
        v: get2("V")?,
        b_h: None,
        b_y: None,
        activation: Activation::Sigmoid,
    };
    let h0 = p.get("h0").cloned();
    let x = io::take(&d, "x", batch)?.clone();
    let z = io::take(&d, "z", batch)?.clone();
    let prob = RnnProblem { weights, x, z, h0 };
    prob.dims().map_err(|e| {
        NablaError::format(
            format!("{} / {}", params.display(), batch.display()),
            e.to_string(),
        )
    })?;
    for (name, t) in [("x", &prob.x), ("z", &prob.z)] {
        t.check_finite(&format!("{name} in {}", batch.display()))?;
    }
    for (name, t) in [
        ("W", &prob.weights.w),
        ("U", &prob.weights.u),
        ("V", &prob.weights.v),
    ] {
        t.check_finite(&format!("{name} in {}", params.display()))?;
    }
    Ok(prob)
}

/// `{"loss": …, "grad": {"W": …, "U": …, "V": …, ["h0": …]}}`, the `nabla rnn grad` output.
pub fn grad_json(p: &RnnProblem, truncate: Option<usize>) -> Result<Value> {
    let g = p.bptt(truncate, false)?;
    finite_loss(g.loss)?;
    let mut grad = serde_json::Map::new();
    for (name, t) in g.named() {
        grad.insert(name.into(), t.to_json());
    }
    if p.h0.is_some() {
        grad.insert("h0".into(), g.h0.to_json());
    }
    Ok(json!({"loss": g.loss, "grad": grad}))
}

/// `loss` when it is finite; otherwise the error of `nabla rnn grad` (an overflowing model
/// gives NaN gradients that must not be reported as numbers).
pub fn finite_loss(loss: f64) -> Result<f64> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(NablaError::NonFinite(format!(
            "the loss is {loss} (inputs too large for the model?)"
        )))
    }
}

/// `‖∇_{h_t}L‖` (Frobenius over the batch) for t = 1..T: the total gradient of the recursion
/// `∇_{h_t}L = 2Vᵀ(y_t − z_t) + (∂h_{t+1}/∂h_t)ᵀ ∇_{h_{t+1}}L`.
pub fn grad_h_norms(p: &RnnProblem) -> Result<Vec<f64>> {
    let d = p.dims()?;
    let g = p.bptt(None, true)?;
    let gh = g.grad_h.expect("asked for grad_h");
    let bh = d.batch * d.hidden;
    Ok(gh
        .data()
        .chunks(bh.max(1))
        .map(|c| c.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect())
}

/// Largest singular value by power iteration on `MᵀM` (to relative change `1e-13`).
pub fn spectral_norm(m: &Tensor<f64>) -> Result<f64> {
    if m.ndim() != 2 {
        return Err(shape_err!(
            "spectral_norm",
            "expected a matrix, got {:?}",
            m.shape()
        ));
    }
    let (r, c) = (m.dim(0), m.dim(1));
    if r == 0 || c == 0 {
        return Ok(0.0);
    }
    let a = m.data();
    // A fixed, generic start vector (not orthogonal to the top singular vector in practice).
    let mut v: Vec<f64> = (0..c)
        .map(|j| 1.0 + 0.1 * ((j * 7919) % 13) as f64)
        .collect();
    let mut sigma = 0.0;
    for _ in 0..5000 {
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n == 0.0 {
            return Ok(0.0);
        }
        v.iter_mut().for_each(|x| *x /= n);
        let mv: Vec<f64> = (0..r)
            .map(|i| (0..c).map(|j| a[i * c + j] * v[j]).sum())
            .collect();
        let s = mv.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut w = vec![0.0; c];
        for i in 0..r {
            for j in 0..c {
                w[j] += a[i * c + j] * mv[i];
            }
        }
        let done = (s - sigma).abs() <= 1e-13 * s;
        sigma = s;
        v = w;
        if done {
            break;
        }
    }
    Ok(sigma)
}

/// `‖∂h_{t+1}/∂h_t‖₂ = ‖diag(σ'(a_{t+1})) U‖₂` for batch item `item`, t = 0..T−1.
pub fn jacobian_norms(p: &RnnProblem, item: usize) -> Result<Vec<f64>> {
    let d = p.dims()?;
    if item >= d.batch {
        return Err(invalid!(
            "batch item {item} out of range for batch {}",
            d.batch
        ));
    }
    let st = p.weights.forward(&p.x, p.h0.as_ref())?;
    let h = d.hidden;
    let u = p.weights.u.data();
    let act = p.weights.activation;
    (1..=d.seq_len)
        .map(|t| {
            let hs = &st.hs[(t * d.batch + item) * h..(t * d.batch + item + 1) * h];
            let j = Tensor::from_fn(&[h, h], |k| act.grad_from_output(hs[k / h]) * u[k]);
            spectral_norm(&j)
        })
        .collect()
}

/// The loss as a function of the state `h_t` alone (the steps before `t` are constants):
/// `‖z_t − V h_t‖² + Σ_{s>t} ‖z_s − y_s‖²` with the steps after `t` rerun from `h_t`.
fn loss_from_state(
    p: &RnnProblem,
    d: SeqDims,
    x_tm: &[f64],
    z_tm: &[f64],
    t: usize,
    ht: &[f64],
) -> f64 {
    let wr = p.weights.as_ref();
    let (b, o) = (d.batch, d.output);
    // y_t = V h_t (+ b_y)
    let mut yt = vec![0.0; b * o];
    crate::kernels::gemm(
        b,
        o,
        d.hidden,
        ht,
        crate::kernels::MatLayout::N,
        wr.v,
        crate::kernels::MatLayout::T,
        &mut yt,
        false,
    );
    if let Some(by) = wr.b_y {
        for row in yt.chunks_mut(o) {
            row.iter_mut().zip(by).for_each(|(r, b)| *r += b);
        }
    }
    let (mut l, _) = mse_grad(&yt, &z_tm[(t - 1) * b * o..t * b * o]);
    if t < d.seq_len {
        let rest = SeqDims {
            seq_len: d.seq_len - t,
            ..d
        };
        let st = forward_tm(&wr, rest, &x_tm[t * b * d.input..], ht);
        l += mse_grad(&st.y, &z_tm[t * b * o..]).0;
    }
    l
}

/// Exercise 1.2/1.3 check: the largest relative error (normwise per step) between `∇_{h_t}L`
/// from the recursion and central finite differences of the loss in `h_t`, over all t.
pub fn recursion_fd_check(p: &RnnProblem, eps: f64) -> Result<f64> {
    let d = p.dims()?;
    let g = p.bptt(None, true)?;
    let gh = g.grad_h.expect("asked for grad_h");
    let st = p.weights.forward(&p.x, p.h0.as_ref())?;
    let x_tm = swap01(p.x.data(), d.batch, d.seq_len, d.input);
    let z_tm = swap01(p.z.data(), d.batch, d.seq_len, d.output);
    let bh = d.batch * d.hidden;
    let mut worst = 0.0f64;
    for t in 1..=d.seq_len {
        let mut ht = st.hs[t * bh..(t + 1) * bh].to_vec();
        let mut num = vec![0.0; bh];
        for k in 0..bh {
            let h0 = ht[k];
            ht[k] = h0 + eps;
            let lp = loss_from_state(p, d, &x_tm, &z_tm, t, &ht);
            ht[k] = h0 - eps;
            let lm = loss_from_state(p, d, &x_tm, &z_tm, t, &ht);
            ht[k] = h0;
            num[k] = (lp - lm) / (2.0 * eps);
        }
        let ana = &gh.data()[(t - 1) * bh..t * bh];
        let diff = ana
            .iter()
            .zip(&num)
            .map(|(a, n)| (a - n).abs())
            .fold(0.0, f64::max);
        let scale = num.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        worst = worst.max(diff / scale);
    }
    Ok(worst)
}

/// Truncated vs exact gradient for one truncation length.
#[derive(Clone, Debug, Serialize)]
pub struct TruncationBias {
    pub k: usize,
    /// Cosine between the truncated and the exact `(∇_W, ∇_U)` (∇_V is never affected).
    pub cosine: f64,
    /// `‖g_k − g‖ / ‖g‖` on `(∇_W, ∇_U)`.
    pub rel_error: f64,
    pub rel_error_u: f64,
    pub rel_error_w: f64,
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

/// Exercise 1.5: how far chunked-truncated BPTT with each `k` is from the exact gradient.
pub fn truncation_bias(p: &RnnProblem, ks: &[usize]) -> Result<Vec<TruncationBias>> {
    let full = p.bptt(None, false)?;
    let wu = |g: &crate::nn::rnn::MseBptt<f64>| {
        let mut v = g.w.to_f64_vec();
        v.extend(g.u.to_f64_vec());
        v
    };
    let gf = wu(&full);
    ks.iter()
        .map(|&k| {
            let g = p.bptt(Some(k), false)?;
            let gk = wu(&g);
            let dot: f64 = gk.iter().zip(&gf).map(|(a, b)| a * b).sum();
            let na = gk.iter().map(|a| a * a).sum::<f64>().sqrt();
            let nb = gf.iter().map(|a| a * a).sum::<f64>().sqrt();
            Ok(TruncationBias {
                k,
                cosine: if na * nb > 0.0 { dot / (na * nb) } else { 0.0 },
                rel_error: rel_err(&gk, &gf),
                rel_error_u: rel_err(g.u.data(), full.u.data()),
                rel_error_w: rel_err(g.w.data(), full.w.data()),
            })
        })
        .collect()
}

/// A small random problem of the assignment's shape (sigmoid, no biases), weights uniform in
/// `±scale/√hidden`, `x`, `z` standard normal.
pub fn random_problem(
    batch: usize,
    seq_len: usize,
    input: usize,
    hidden: usize,
    output: usize,
    scale: f64,
    seed: u64,
) -> RnnProblem {
    let mut rng = Rng::new(seed);
    let weights = ElmanWeights::random(input, hidden, output, Activation::Sigmoid, scale, &mut rng);
    RnnProblem {
        weights,
        x: Tensor::from_fn(&[batch, seq_len, input], |_| rng.normal()),
        z: Tensor::from_fn(&[batch, seq_len, output], |_| rng.normal()),
        h0: None,
    }
}

/// An example where long dependencies matter: a delay line, `z_t = x_{t−lag}` (0 for t ≤ lag),
/// with a recurrent matrix `U = gain·4·Q` (Q random orthogonal), so the linearised recurrence
/// `diag(σ') U` keeps a gain close to `gain` per step, and a bias `b_h = −U·½` that centres the
/// pre-activations where `σ' = ¼`. The exact gradient carries information over `lag` steps; a
/// truncation `k < lag` cannot, so its estimate is biased.
pub fn delay_problem(
    batch: usize,
    seq_len: usize,
    lag: usize,
    hidden: usize,
    gain: f64,
    seed: u64,
) -> Result<RnnProblem> {
    if lag >= seq_len || hidden == 0 || batch == 0 {
        return Err(invalid!(
            "delay problem needs lag < seq_len and positive sizes, got lag {lag}, seq_len {seq_len}, hidden {hidden}, batch {batch}"
        ));
    }
    let mut rng = Rng::new(seed);
    let q = random_orthogonal(hidden, &mut rng);
    let u = Tensor::from_fn(&[hidden, hidden], |k| 4.0 * gain * q[k]);
    let b_h = Tensor::from_fn(&[hidden], |i| {
        -0.5 * (0..hidden).map(|j| u.data()[i * hidden + j]).sum::<f64>()
    });
    let a = 1.0 / (hidden as f64).sqrt();
    let weights = ElmanWeights {
        w: Tensor::from_fn(&[hidden, 1], |_| a * (2.0 * rng.uniform() - 1.0)),
        u,
        v: Tensor::from_fn(&[1, hidden], |_| a * (2.0 * rng.uniform() - 1.0)),
        b_h: Some(b_h),
        b_y: None,
        activation: Activation::Sigmoid,
    };
    let x = Tensor::from_fn(&[batch, seq_len, 1], |_| {
        if rng.bernoulli(0.5) {
            1.0
        } else {
            -1.0
        }
    });
    let z = Tensor::from_fn(&[batch, seq_len, 1], |k| {
        let (b, t) = (k / seq_len, k % seq_len);
        if t >= lag {
            x.data()[b * seq_len + t - lag]
        } else {
            0.0
        }
    });
    Ok(RnnProblem {
        weights,
        x,
        z,
        h0: None,
    })
}

/// A random orthogonal `n×n` matrix (Gram–Schmidt on a Gaussian matrix), row-major.
fn random_orthogonal(n: usize, rng: &mut Rng) -> Vec<f64> {
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(n);
    while rows.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for r in &rows {
            let d: f64 = r.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(r).for_each(|(x, y)| *x -= d * y);
        }
        let nrm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if nrm > 1e-8 {
            v.iter_mut().for_each(|x| *x /= nrm);
            rows.push(v);
        }
    }
    rows.concat()
}

/// Everything `nabla rnn analyze` reports.
#[derive(Clone, Debug, Serialize)]
pub struct RnnAnalysis {
    pub batch: usize,
    pub seq_len: usize,
    pub hidden: usize,
    pub activation: &'static str,
    pub loss: f64,
    /// `‖∇_{h_t}L‖` for t = 1..T.
    pub grad_h_norm: Vec<f64>,
    /// `‖U‖₂`.
    pub spectral_norm_u: f64,
    /// `sup|σ'|·‖U‖₂` (¼‖U‖ for the sigmoid): the bound on every `‖∂h_{t+1}/∂h_t‖`.
    pub jacobian_bound: f64,
    /// `‖∂h_{t+1}/∂h_t‖₂` for batch item 0, t = 0..T−1 (empty when hidden > 256).
    pub jacobian_norm: Vec<f64>,
    pub truncation: Vec<TruncationBias>,
}

/// Runs every analysis on a problem.
pub fn analyze(p: &RnnProblem, ks: &[usize]) -> Result<RnnAnalysis> {
    let d = p.dims()?;
    if ks.contains(&0) {
        return Err(invalid!(
            "truncation lengths must be at least 1, got {ks:?}"
        ));
    }
    let full = p.bptt(None, false)?;
    if !full.loss.is_finite() {
        return Err(NablaError::NonFinite(format!("the loss is {}", full.loss)));
    }
    let sn = spectral_norm(&p.weights.u)?;
    Ok(RnnAnalysis {
        batch: d.batch,
        seq_len: d.seq_len,
        hidden: d.hidden,
        activation: p.weights.activation.name(),
        loss: full.loss,
        grad_h_norm: grad_h_norms(p)?,
        spectral_norm_u: sn,
        jacobian_bound: p.weights.activation.max_slope() * sn,
        jacobian_norm: if d.hidden <= 256 && d.batch > 0 {
            jacobian_norms(p, 0)?
        } else {
            Vec::new()
        },
        truncation: truncation_bias(p, ks)?,
    })
}

/// Draws the analysis: `‖∇_{h_t}L‖` over t (log scale), the Jacobian norms against the bound,
/// and the truncation bias over k. SVG or PNG by the file extension.
pub fn plot(a: &RnnAnalysis, path: &Path) -> Result<()> {
    use crate::plot::{write_charts, Axis, Chart, Mark, Series};
    let t_end = a.seq_len.max(1) as f64;
    let by_t = |v: &[f64], first: usize| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| ((i + first) as f64, x))
            .collect()
    };
    let ks = |f: fn(&TruncationBias) -> f64| -> Vec<(f64, f64)> {
        a.truncation.iter().map(|t| (t.k as f64, f(t))).collect()
    };
    write_charts(
        path,
        &[
            Chart {
                title: format!("Gradient flow back in time (T = {})", a.seq_len),
                x: Axis::new("time step t").integer().range(1.0, t_end),
                y: Axis::new("‖∇h_t L‖ (gradient norm, log scale)").log(),
                series: vec![Series::new(
                    "‖∇h_t L‖",
                    by_t(&a.grad_h_norm, 1),
                    Mark::LinePoints,
                )],
            },
            Chart {
                title: "Step Jacobian vs its bound (item 0)".into(),
                x: Axis::new("time step t").integer().range(0.0, t_end),
                y: Axis::new("spectral norm ‖∂h_t+1/∂h_t‖₂"),
                series: vec![
                    Series::new("‖diag(σ')U‖₂", by_t(&a.jacobian_norm, 0), Mark::LinePoints),
                    Series::new(
                        "sup σ' · ‖U‖₂",
                        vec![(0.0, a.jacobian_bound), (t_end, a.jacobian_bound)],
                        Mark::Line,
                    ),
                ],
            },
            Chart {
                title: "Truncated BPTT vs exact gradient".into(),
                // k doubles from point to point: a log axis spaces them evenly.
                x: Axis::new("truncation length k (steps, log scale)").log(),
                y: Axis::new("cosine / relative error (dimensionless)"),
                series: vec![
                    Series::new("cosine", ks(|t| t.cosine), Mark::LinePoints),
                    Series::new("relative error", ks(|t| t.rel_error), Mark::LinePoints),
                ],
            },
        ],
    )
}

/// Gradient flow of one cell on the delay-line task: how the gradient reaching `h_t` decays
/// going back in time.
#[derive(Clone, Debug, Serialize)]
pub struct CellFlow {
    pub cell: &'static str,
    pub loss: f64,
    /// `‖∇_{h_t}L‖` (Frobenius over the batch), t = 1..T: every step's loss and the recursion.
    pub grad_h_norm: Vec<f64>,
    /// `‖∇_{h_t}L_T‖`, t = 1..T: the gradient of the last step's loss alone, i.e. how much of
    /// a late error signal survives the way back to step t — the vanishing-gradient curve.
    pub last_loss_grad_h_norm: Vec<f64>,
    /// `‖∇_{h_{T−lag}}L_T‖ / ‖∇_{h_T}L_T‖`: what survives over the task's delay.
    pub ratio_over_lag: f64,
}

/// The three cells side by side on the same delay-line task: the Elman RNN of
/// [`delay_problem`], an LSTM and a GRU with PyTorch's default initialization `U(±1/√hidden)`
/// drawn from the same seed; same `x`, `z`, sizes (input 1, output 1).
#[derive(Clone, Debug, Serialize)]
pub struct CellComparison {
    pub batch: usize,
    pub seq_len: usize,
    pub lag: usize,
    pub hidden: usize,
    pub seed: u64,
    pub cells: Vec<CellFlow>,
}

fn frob_per_step(v: &[f64], bh: usize) -> Vec<f64> {
    v.chunks(bh.max(1))
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect()
}

/// `∇_{h_t}L` for the total loss and for the last step's loss alone, `(T, B, H)` each, of the
/// Elman problem `p`.
fn elman_flows(p: &RnnProblem) -> Result<(f64, Vec<f64>, Vec<f64>)> {
    use crate::nn::rnn::backward_tm;
    let d = p.dims()?;
    let wr = p.weights.as_ref();
    let x_tm = swap01(p.x.data(), d.batch, d.seq_len, d.input);
    let z_tm = swap01(p.z.data(), d.batch, d.seq_len, d.output);
    let h0 =
        p.h0.as_ref()
            .map_or_else(|| vec![0.0; d.batch * d.hidden], |h| h.data().to_vec());
    let st = forward_tm(&wr, d, &x_tm, &h0);
    let (loss, mut gy) = mse_grad(&st.y, &z_tm);
    let opts = BackwardOptions {
        keep_grad_h: true,
        ..Default::default()
    };
    let all = backward_tm(&wr, &x_tm, &st, &gy, None, &opts)
        .grad_h
        .unwrap_or_default();
    let bo = d.batch * d.output;
    let last = d.seq_len.saturating_sub(1) * bo;
    gy[..last].iter_mut().for_each(|g| *g = 0.0);
    let lt = backward_tm(&wr, &x_tm, &st, &gy, None, &opts)
        .grad_h
        .unwrap_or_default();
    Ok((loss, all, lt))
}

/// Runs the comparison for `cells` on `delay_problem(batch, seq_len, lag, hidden, gain, seed)`.
pub fn compare_cells(
    cells: &[CellKind],
    batch: usize,
    seq_len: usize,
    lag: usize,
    hidden: usize,
    gain: f64,
    seed: u64,
) -> Result<CellComparison> {
    if cells.is_empty() {
        return Err(invalid!("--cell needs at least one of elman, lstm, gru"));
    }
    let p = delay_problem(batch, seq_len, lag, hidden, gain, seed)?;
    let bh = batch * hidden;
    let mut out = Vec::new();
    for &cell in cells {
        let (loss, all, last) = match cell {
            CellKind::Elman => elman_flows(&p)?,
            _ => {
                let w = GatedWeights::<f64>::random(cell, 1, hidden, 1, &mut Rng::new(seed))?;
                let opts = BackwardOptions {
                    keep_grad_h: true,
                    ..Default::default()
                };
                let g = w.mse_bptt(&p.x, &p.z, None, None, &opts)?;
                // The last step's loss alone: targets equal to the outputs elsewhere (zero
                // residual), so only step T's error is backpropagated.
                let mut zl = p.z.clone();
                let y = w.outputs(&p.x)?;
                let (t, o) = (seq_len, 1);
                for b in 0..batch {
                    for s in 0..t - 1 {
                        let k = (b * t + s) * o;
                        zl.data_mut()[k] = y.data()[k];
                    }
                }
                let gl = w.mse_bptt(&p.x, &zl, None, None, &opts)?;
                let gh = |g: &crate::analysis::gated::GatedBptt<f64>| {
                    g.grad_h
                        .as_ref()
                        .map(|t| t.data().to_vec())
                        .unwrap_or_default()
                };
                (g.loss, gh(&g), gh(&gl))
            }
        };
        if !loss.is_finite() {
            return Err(NablaError::NonFinite(format!("{cell}: the loss is {loss}")));
        }
        let lt = frob_per_step(&last, bh);
        let end = lt.last().copied().unwrap_or(0.0);
        let at_lag = lt.get(seq_len - 1 - lag).copied().unwrap_or(0.0);
        out.push(CellFlow {
            cell: cell.name(),
            loss,
            grad_h_norm: frob_per_step(&all, bh),
            last_loss_grad_h_norm: lt,
            ratio_over_lag: if end > 0.0 { at_lag / end } else { 0.0 },
        });
    }
    Ok(CellComparison {
        batch,
        seq_len,
        lag,
        hidden,
        seed,
        cells: out,
    })
}

/// The cells side by side: `‖∇_{h_t}L_T‖` (the last step's error going back) and `‖∇_{h_t}L‖`,
/// log scale, one series per cell. SVG or PNG by the file extension.
pub fn plot_cells(c: &CellComparison, path: &Path) -> Result<()> {
    use crate::plot::{write_charts, Axis, Chart, Mark, Series};
    let t_end = c.seq_len.max(1) as f64;
    let series = |f: fn(&CellFlow) -> &Vec<f64>| -> Vec<Series> {
        c.cells
            .iter()
            .map(|cf| {
                // A zero cannot go on a log axis (an exactly vanished gradient): left out.
                let pts = f(cf)
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v > 0.0)
                    .map(|(i, &v)| ((i + 1) as f64, v))
                    .collect();
                Series::new(cf.cell, pts, Mark::LinePoints)
            })
            .collect()
    };
    write_charts(
        path,
        &[
            Chart {
                title: format!(
                    "Last step's error going back (T = {}, lag {}, H = {})",
                    c.seq_len, c.lag, c.hidden
                ),
                x: Axis::new("time step t").integer().range(1.0, t_end),
                y: Axis::new("‖∇h_t L_T‖ (gradient norm, log scale)").log(),
                series: series(|f| &f.last_loss_grad_h_norm),
            },
            Chart {
                title: "Total gradient reaching each state".into(),
                x: Axis::new("time step t").integer().range(1.0, t_end),
                y: Axis::new("‖∇h_t L‖ (gradient norm, log scale)").log(),
                series: series(|f| &f.grad_h_norm),
            },
        ],
    )
}
