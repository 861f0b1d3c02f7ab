//! Question 3.3: for linear regression with dropout on the inputs, `R_ij ~ Bernoulli(p)`
//! i.i.d. with `p` the *keep* probability,
//!
//! ```text
//!   E_R ‖y − (X ⊙ R) w‖² = ‖y − p X w‖² + p(1 − p) ‖Γ w‖²,   Γ = diag((XᵀX)_jj^{1/2}).
//! ```
//!
//! Row i: `(X⊙R)w` has mean `p (Xw)_i` and variance `p(1 − p) Σ_j x_ij² w_j²`; summing the
//! variances over i gives `p(1 − p) Σ_j (XᵀX)_jj w_j²`. [`dropout_identity`] checks the right
//! side against the expectation computed exactly (by enumerating every mask when `n·d ≤ 20`)
//! and by Monte Carlo with a 95% confidence interval.

use crate::error::Result;
use crate::init::Rng;
use crate::nn::dropout::KeepProb;
use crate::tensor::Tensor;
use crate::{invalid, shape_err};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct DropoutIdentityReport {
    pub n: usize,
    pub d: usize,
    pub keep_prob: f64,
    /// `‖y − pXw‖² + p(1 − p)‖Γw‖²`.
    pub closed_form: f64,
    /// `‖y − pXw‖²` and `p(1 − p)‖Γw‖²` separately.
    pub fit_term: f64,
    pub penalty_term: f64,
    /// `E_R L` by enumerating all `2^{n·d}` masks (None when `n·d > 20`).
    pub exact_enumeration: Option<f64>,
    pub mc_samples: usize,
    pub mc_mean: f64,
    pub mc_std_error: f64,
    /// 95% interval `mean ± 1.96 · s.e.`.
    pub mc_ci95: (f64, f64),
    pub closed_form_in_ci: bool,
    /// `(mc_mean − closed_form) / s.e.`.
    pub z_score: f64,
}

fn loss(x: &[f64], y: &[f64], w: &[f64], keep: &dyn Fn(usize) -> bool, d: usize) -> f64 {
    y.iter()
        .enumerate()
        .map(|(i, yi)| {
            let p: f64 = (0..d)
                .filter(|&j| keep(i * d + j))
                .map(|j| x[i * d + j] * w[j])
                .sum();
            (yi - p).powi(2)
        })
        .sum()
}

/// Checks the identity for `x` `(n, d)`, `y` `(n)`, `w` `(d)`.
pub fn dropout_identity(
    x: &Tensor<f64>,
    y: &Tensor<f64>,
    w: &Tensor<f64>,
    keep_prob: KeepProb,
    samples: usize,
    seed: u64,
) -> Result<DropoutIdentityReport> {
    if x.ndim() != 2 || y.shape() != [x.dim(0)] || w.shape() != [x.dim(1)] {
        return Err(shape_err!(
            "dropout_identity",
            "needs X (n, d), y (n), w (d); got {:?}, {:?}, {:?}",
            x.shape(),
            y.shape(),
            w.shape()
        ));
    }
    if samples < 2 {
        return Err(invalid!("dropout_identity: needs >= 2 Monte Carlo samples"));
    }
    let (n, d) = (x.dim(0), x.dim(1));
    let p = keep_prob.keep();
    let (xd, yd, wd) = (x.data(), y.data(), w.data());
    let fit: f64 = (0..n)
        .map(|i| {
            let xw: f64 = (0..d).map(|j| xd[i * d + j] * wd[j]).sum();
            (yd[i] - p * xw).powi(2)
        })
        .sum();
    // ‖Γw‖² = Σ_j (XᵀX)_jj w_j².
    let gw2: f64 = (0..d)
        .map(|j| (0..n).map(|i| xd[i * d + j].powi(2)).sum::<f64>() * wd[j].powi(2))
        .sum();
    let penalty = p * (1.0 - p) * gw2;
    let closed = fit + penalty;
    let nd = n * d;
    let exact = (nd <= 20).then(|| {
        (0u64..1 << nd)
            .map(|bits| {
                let k = bits.count_ones() as i32;
                let prob = p.powi(k) * (1.0 - p).powi(nd as i32 - k);
                prob * loss(xd, yd, wd, &|e| bits >> e & 1 == 1, d)
            })
            .sum::<f64>()
    });
    let mut rng = Rng::new(seed);
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut r = vec![false; nd];
    for _ in 0..samples {
        r.iter_mut().for_each(|v| *v = rng.bernoulli(p));
        let l = loss(xd, yd, wd, &|e| r[e], d);
        s1 += l;
        s2 += l * l;
    }
    let m = samples as f64;
    let mean = s1 / m;
    let var = ((s2 - m * mean * mean) / (m - 1.0)).max(0.0);
    let se = (var / m).sqrt();
    let ci = (mean - 1.96 * se, mean + 1.96 * se);
    Ok(DropoutIdentityReport {
        n,
        d,
        keep_prob: p,
        closed_form: closed,
        fit_term: fit,
        penalty_term: penalty,
        exact_enumeration: exact,
        mc_samples: samples,
        mc_mean: mean,
        mc_std_error: se,
        mc_ci95: ci,
        closed_form_in_ci: ci.0 <= closed && closed <= ci.1,
        z_score: if se > 0.0 { (mean - closed) / se } else { 0.0 },
    })
}

/// The identity on a random seeded problem of size `(n, d)`.
pub fn dropout_identity_demo(
    n: usize,
    d: usize,
    keep_prob: KeepProb,
    samples: usize,
    seed: u64,
) -> Result<DropoutIdentityReport> {
    if n == 0 || d == 0 {
        return Err(invalid!("dropout_identity_demo: n and d must be positive"));
    }
    let mut rng = Rng::new(seed);
    let x = Tensor::from_fn(&[n, d], |_| rng.normal());
    let w = Tensor::from_fn(&[d], |_| rng.normal());
    let y = Tensor::from_fn(&[n], |_| rng.normal());
    dropout_identity(&x, &y, &w, keep_prob, samples, seed ^ 0x9e37_79b9)
}
