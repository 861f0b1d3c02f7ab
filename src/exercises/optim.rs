//! 3.1–3.4: normalization statistics, BatchNorm with padding, the dropout identity and the
//! minimum-norm bias of gradient descent — through `nn::norm`, `nn::dropout` and `analysis`.

use super::Entry;
use crate::analysis::dropout_identity::dropout_identity_demo;
use crate::analysis::min_norm::min_norm_demo;
use crate::analysis::norm_exercise::assignment_norm_stats;
use crate::analysis::padding::padding_demo;
use crate::error::Result;
use crate::nn::KeepProb;
use serde_json::json;

/// The exact answers of 3.1 (population variances), as fractions.
pub const BATCH_MEAN: [f64; 2] = [2.5, 2.5];
pub const BATCH_VAR: [f64; 2] = [13.0 / 12.0, 17.0 / 12.0];
pub const LAYER_MEAN: [f64; 4] = [17.0 / 6.0, 8.0 / 3.0, 2.5, 2.0];
pub const LAYER_VAR: [f64; 4] = [41.0 / 36.0, 11.0 / 9.0, 11.0 / 12.0, 4.0 / 3.0];
pub const INSTANCE_MEAN: [f64; 8] = [
    3.0,
    8.0 / 3.0,
    8.0 / 3.0,
    8.0 / 3.0,
    8.0 / 3.0,
    7.0 / 3.0,
    5.0 / 3.0,
    7.0 / 3.0,
];
pub const INSTANCE_VAR: [f64; 8] = [
    2.0 / 3.0,
    14.0 / 9.0,
    14.0 / 9.0,
    8.0 / 9.0,
    2.0 / 9.0,
    14.0 / 9.0,
    8.0 / 9.0,
    14.0 / 9.0,
];

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
}

fn fmt(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn norm_statistics() -> Result<Entry> {
    let s = assignment_norm_stats()?;
    let ok = close(&s.batch_mean, &BATCH_MEAN)
        && close(&s.batch_var, &BATCH_VAR)
        && close(&s.layer_mean, &LAYER_MEAN)
        && close(&s.layer_var, &LAYER_VAR)
        && close(&s.instance_mean, &INSTANCE_MEAN)
        && close(&s.instance_var, &INSTANCE_VAR)
        && s.max_output_check_error < 1e-12;
    Ok(Entry {
        id: "3.1".into(),
        title: "Batch-, layer- and instance-norm statistics of the 4×2×3 tensor".into(),
        derivation: vec![
            "BatchNorm: per channel c, over batch and features (12 values); LayerNorm: per sample n, over channels and features (6 values);".into(),
            "InstanceNorm: per sample and channel, over features (3 values). Variances are population variances (÷ count).".into(),
            "E.g. channel 0 holds 4,3,2,3,4,1,3,2,3,1,1,3: mean 30/12 = 2.5, variance 88/12 − 2.5² = 13/12.".into(),
        ],
        values: json!({
            "batch": {"mean": s.batch_mean, "var": s.batch_var},
            "layer": {"mean": s.layer_mean, "var": s.layer_var},
            "instance": {"mean": s.instance_mean, "var": s.instance_var, "order": "(n, c) row-major"},
            "max_output_check_error": s.max_output_check_error,
        }),
        summary: vec![
            format!("batch norm (per channel): mean [{}], var [{}]", fmt(&s.batch_mean), fmt(&s.batch_var)),
            format!("layer norm (per sample): mean [{}], var [{}]", fmt(&s.layer_mean), fmt(&s.layer_var)),
            format!("instance norm (per sample, channel): mean [{}]", fmt(&s.instance_mean)),
            format!("instance norm variances: [{}]", fmt(&s.instance_var)),
            format!("the layers' outputs equal (x − μ)/√(σ² + ε) with these statistics to {:.1e}", s.max_output_check_error),
        ],
        artefact: None,
        ok,
    })
}

pub fn padding() -> Result<Entry> {
    let r = padding_demo(&[3, 7, 5, 2], 4, 4, 21)?;
    let get = |name: &str| r.effects.iter().find(|e| e.layer == name).cloned();
    let (bn, mbn, ln) = (
        get("batch_norm"),
        get("masked_batch_norm"),
        get("layer_norm"),
    );
    let ok = match (&bn, &mbn, &ln) {
        (Some(bn), Some(mbn), Some(ln)) => {
            bn.more_padding > 1e-3 * r.output_rms
                && bn.other_sentences > 1e-3 * r.output_rms
                && mbn.more_padding < 1e-12
                && ln.more_padding < 1e-12
                && ln.other_sentences < 1e-12
        }
        _ => false,
    };
    let summary = r
        .effects
        .iter()
        .map(|e| {
            format!(
                "{:<18} max |Δ output| of sentence 0: more padding {:.3e}, other sentences {:.3e}",
                e.layer, e.more_padding, e.other_sentences
            )
        })
        .chain(std::iter::once(format!(
            "(output scale: RMS {:.3})",
            r.output_rms
        )))
        .collect();
    Ok(Entry {
        id: "3.2".into(),
        title: "Why BatchNorm works badly on padded variable-length text".into(),
        derivation: vec![
            "A naïve BatchNorm averages each channel over all positions of the padded batch, padding included:".into(),
            "a sentence's output then depends on how much padding there is and on the other sentences,".into(),
            "and batch statistics of variable-length, small NLP batches are noisy. LayerNorm normalizes each token alone.".into(),
        ],
        values: serde_json::to_value(&r).unwrap_or_default(),
        summary,
        artefact: None,
        ok,
    })
}

pub fn dropout() -> Result<Entry> {
    let r = dropout_identity_demo(3, 4, KeepProb::new(0.7)?, 200_000, 5)?;
    let exact_ok = r
        .exact_enumeration
        .is_some_and(|e| (e - r.closed_form).abs() < 1e-9 * r.closed_form.abs().max(1.0));
    let ok = exact_ok && r.z_score.abs() < 4.0;
    Ok(Entry {
        id: "3.3".into(),
        title: "Dropout on linear regression = a data-scaled ridge penalty".into(),
        derivation: vec![
            "Row i: (X⊙R)w = Σ_j R_ij x_ij w_j has mean p(Xw)_i and variance p(1 − p) Σ_j x_ij² w_j².".into(),
            "E[(y_i − a_i)²] = (y_i − E a_i)² + Var a_i; summing over i, Σ_i x_ij² = (XᵀX)_jj, so".into(),
            "E_R‖y − (X⊙R)w‖² = ‖y − pXw‖² + p(1 − p)‖Γw‖²,  Γ = diag((XᵀX)_jj^{1/2}).".into(),
        ],
        values: serde_json::to_value(&r).unwrap_or_default(),
        summary: vec![
            format!("n = {}, d = {}, keep p = {}: closed form {:.6} = fit {:.6} + penalty {:.6}", r.n, r.d, r.keep_prob, r.closed_form, r.fit_term, r.penalty_term),
            format!("exact expectation over all 2^{} masks: {:.6}", r.n * r.d, r.exact_enumeration.unwrap_or(f64::NAN)),
            format!("Monte Carlo ({} masks): {:.6} ± {:.6} (95% CI [{:.6}, {:.6}], z = {:.2})", r.mc_samples, r.mc_mean, 1.96 * r.mc_std_error, r.mc_ci95.0, r.mc_ci95.1, r.z_score),
        ],
        artefact: None,
        ok,
    })
}

pub fn min_norm() -> Result<Entry> {
    let (zero, nonzero) = min_norm_demo(5, 12, 8)?;
    let ok = zero.converged
        && nonzero.converged
        && zero.dist_to_pinv_solution < 1e-8
        && nonzero.dist_to_predicted_limit < 1e-8
        && nonzero.dist_to_pinv_solution > 1e-3;
    Ok(Entry {
        id: "3.4".into(),
        title: "Gradient descent finds the minimum-norm solution".into(),
        derivation: vec![
            "∇f(w) = 2Xᵀ(Xw − y) lies in the row space of X, so from w⁽⁰⁾ = 0 every iterate stays in row(X): w = Xᵀα.".into(),
            "With η < 2/λ_max(2XᵀX), GD converges to a solution of Xw = y; the only one of the form Xᵀα is Xᵀ(XXᵀ)⁻¹y = X⁺y.".into(),
            "KKT of min ½‖w‖² s.t. Xw = y: w = Xᵀλ, Xw = y ⇒ the same point. From w₀ ≠ 0 the limit is X⁺y + (I − X⁺X)w₀.".into(),
        ],
        values: json!({"from_zero": zero, "from_random_w0": nonzero}),
        summary: vec![
            format!("n = {}, d = {}, step {:.4} (bound 2/λ_max = {:.4})", zero.n, zero.d, zero.step, zero.step_bound),
            format!("w₀ = 0: {} iterations, ‖w − X⁺y‖ = {:.2e}, ‖w‖ = {:.6} = ‖X⁺y‖ = {:.6}", zero.iterations, zero.dist_to_pinv_solution, zero.norm_w, zero.norm_pinv_solution),
            format!("w₀ ≠ 0: {} iterations, ‖w − X⁺y‖ = {:.3}, ‖w − (X⁺y + (I − X⁺X)w₀)‖ = {:.2e}", nonzero.iterations, nonzero.dist_to_pinv_solution, nonzero.dist_to_predicted_limit),
        ],
        artefact: None,
        ok,
    })
}
