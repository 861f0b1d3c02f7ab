//! Question 3.4, demonstrated: on an under-determined least-squares problem (`d > n`, `X` of
//! full row rank so `y` is in its span), gradient descent on `f(w) = ‖y − Xw‖²` with a constant
//! step `η < 2/λ_max(2XᵀX)` never leaves `w₀ + row(X)` (every gradient `2Xᵀ(Xw − y)` lies in
//! the row space), so it converges to the unique solution there:
//! `X⁺y + (I − X⁺X) w₀`, which is the minimum-norm solution `X⁺y = Xᵀ(XXᵀ)⁻¹y` when `w₀ = 0`.
//! `X⁺` is computed with `faer` (thin SVD), cross-checked against `Xᵀ(XXᵀ)⁻¹y` (Cholesky).

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::tensor::Tensor;
use crate::{invalid, shape_err};
use faer::prelude::*;
use faer::{Mat, Side};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct MinNormReport {
    pub n: usize,
    pub d: usize,
    pub w0_norm: f64,
    /// `λ_max(2XᵀX)`, the step `η` used and the bound `2/λ_max`.
    pub lambda_max: f64,
    pub step: f64,
    pub step_bound: f64,
    pub iterations: usize,
    pub converged: bool,
    /// `‖Xw − y‖` at the end.
    pub residual: f64,
    /// `‖w − X⁺y‖`.
    pub dist_to_pinv_solution: f64,
    /// `‖w − (X⁺y + (I − X⁺X)w₀)‖`: the predicted limit.
    pub dist_to_predicted_limit: f64,
    pub norm_w: f64,
    pub norm_pinv_solution: f64,
    /// `‖X⁺y (SVD) − Xᵀ(XXᵀ)⁻¹y (Cholesky)‖`.
    pub pinv_crosscheck: f64,
}

fn mat(x: &Tensor<f64>) -> Mat<f64> {
    let (n, d) = (x.dim(0), x.dim(1));
    Mat::from_fn(n, d, |i, j| x.data()[i * d + j])
}

fn col(v: &[f64]) -> Mat<f64> {
    Mat::from_fn(v.len(), 1, |i, _| v[i])
}

fn to_vec(m: &Mat<f64>) -> Vec<f64> {
    (0..m.nrows()).map(|i| m[(i, 0)]).collect()
}

fn dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Runs GD from `w0` with step `step_fraction · 2/λ_max(2XᵀX)` (`0 < step_fraction < 1`) until
/// `‖∇f‖ ≤ tol` or `max_iters`.
pub fn min_norm_gd(
    x: &Tensor<f64>,
    y: &Tensor<f64>,
    w0: &Tensor<f64>,
    step_fraction: f64,
    tol: f64,
    max_iters: usize,
) -> Result<MinNormReport> {
    if x.ndim() != 2 || y.shape() != [x.dim(0)] || w0.shape() != [x.dim(1)] {
        return Err(shape_err!(
            "min_norm_gd",
            "needs X (n, d), y (n), w0 (d); got {:?}, {:?}, {:?}",
            x.shape(),
            y.shape(),
            w0.shape()
        ));
    }
    let (n, d) = (x.dim(0), x.dim(1));
    if d <= n {
        return Err(invalid!(
            "min_norm_gd: needs an under-determined problem d > n, got n {n}, d {d}"
        ));
    }
    if !(step_fraction > 0.0 && step_fraction < 1.0) {
        return Err(invalid!(
            "min_norm_gd: step_fraction must be in (0, 1), got {step_fraction}"
        ));
    }
    let xm = mat(x);
    let ym = col(y.data());
    let xxt = &xm * xm.transpose();
    // Nonzero eigenvalues of 2XᵀX = those of 2XXᵀ.
    let eig = xxt
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| NablaError::Other(format!("min_norm_gd: eigenvalues failed: {e:?}")))?;
    let lambda_max = 2.0 * eig.last().copied().unwrap_or(0.0);
    if eig[0] <= 1e-12 * eig.last().copied().unwrap_or(1.0) {
        return Err(invalid!(
            "min_norm_gd: X does not have full row rank (XXᵀ is singular)"
        ));
    }
    let pinv = xm
        .thin_svd()
        .map_err(|e| NablaError::Other(format!("min_norm_gd: SVD failed: {e:?}")))?
        .pseudoinverse();
    let w_star = to_vec(&(&pinv * &ym));
    let llt = xxt
        .llt(Side::Lower)
        .map_err(|e| NablaError::Other(format!("min_norm_gd: Cholesky failed: {e:?}")))?;
    let mut alpha = ym.clone();
    llt.solve_in_place(alpha.as_mut());
    let w_chol = to_vec(&(xm.transpose() * &alpha));
    let w0m = col(w0.data());
    let proj = &pinv * (&xm * &w0m);
    let predicted: Vec<f64> = (0..d)
        .map(|j| w_star[j] + w0.data()[j] - proj[(j, 0)])
        .collect();

    let step_bound = 2.0 / lambda_max;
    let eta = step_fraction * step_bound;
    let xd = x.data();
    let mut w = w0.data().to_vec();
    let mut r = vec![0.0; n];
    let mut iterations = 0;
    let mut converged = false;
    while iterations < max_iters {
        for i in 0..n {
            r[i] = (0..d).map(|j| xd[i * d + j] * w[j]).sum::<f64>() - y.data()[i];
        }
        let g: Vec<f64> = (0..d)
            .map(|j| 2.0 * (0..n).map(|i| xd[i * d + j] * r[i]).sum::<f64>())
            .collect();
        if g.iter().map(|v| v * v).sum::<f64>().sqrt() <= tol {
            converged = true;
            break;
        }
        w.iter_mut().zip(&g).for_each(|(w, g)| *w -= eta * g);
        iterations += 1;
    }
    let residual = (0..n)
        .map(|i| ((0..d).map(|j| xd[i * d + j] * w[j]).sum::<f64>() - y.data()[i]).powi(2))
        .sum::<f64>()
        .sqrt();
    Ok(MinNormReport {
        n,
        d,
        w0_norm: w0.norm(),
        lambda_max,
        step: eta,
        step_bound,
        iterations,
        converged,
        residual,
        dist_to_pinv_solution: dist(&w, &w_star),
        dist_to_predicted_limit: dist(&w, &predicted),
        norm_w: w.iter().map(|v| v * v).sum::<f64>().sqrt(),
        norm_pinv_solution: w_star.iter().map(|v| v * v).sum::<f64>().sqrt(),
        pinv_crosscheck: dist(&w_star, &w_chol),
    })
}

/// The demonstration on a random seeded `(n, d)` problem: from `w₀ = 0` and from a random
/// `w₀ ≠ 0`, step half the stability bound, until `‖∇f‖ ≤ 1e-10`.
pub fn min_norm_demo(n: usize, d: usize, seed: u64) -> Result<(MinNormReport, MinNormReport)> {
    let mut rng = Rng::new(seed);
    let x = Tensor::from_fn(&[n, d], |_| rng.normal());
    let y = Tensor::from_fn(&[n], |_| rng.normal());
    let zero = Tensor::zeros(&[d]);
    let w0 = Tensor::from_fn(&[d], |_| rng.normal());
    Ok((
        min_norm_gd(&x, &y, &zero, 0.5, 1e-10, 1_000_000)?,
        min_norm_gd(&x, &y, &w0, 0.5, 1e-10, 1_000_000)?,
    ))
}
