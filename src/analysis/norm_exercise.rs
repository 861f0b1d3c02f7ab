//! Question 3.1: the means and variances batch, layer and instance norm use on the
//! assignment's `(batch 4, channels 2, features 3)` tensor, taken by the norm layers' own
//! statistics kernels ([`crate::nn::norm::norm_stats`]) and checked against their outputs.

use crate::autograd::Tape;
use crate::error::Result;
use crate::nn::norm::{self, NormStats, RefKind};
use crate::tensor::Tensor;
use serde::Serialize;

/// The tensor of question 3.1, shape (4, 2, 3).
pub fn assignment_tensor() -> Tensor<f64> {
    let v = [
        4., 3., 2., 1., 4., 3., 3., 4., 1., 4., 2., 2., 3., 2., 3., 4., 1., 2., 1., 1., 3., 4., 1.,
        2.,
    ];
    Tensor::from_f64(&[4, 2, 3], &v).expect("24 values")
}

/// Statistics per layer: `batch` per channel (2), `layer` per sample (4), `instance` per
/// sample and channel (4 × 2, row-major). Variances are the population variances used to
/// normalize.
#[derive(Clone, Debug, Serialize)]
pub struct AssignmentNormStats {
    pub batch_mean: Vec<f64>,
    pub batch_var: Vec<f64>,
    pub layer_mean: Vec<f64>,
    pub layer_var: Vec<f64>,
    pub instance_mean: Vec<f64>,
    pub instance_var: Vec<f64>,
    /// Max |y − (x − μ)/√(σ² + ε)| over the three layers' forward outputs (no affine): the
    /// statistics are the ones the layers normalize with.
    pub max_output_check_error: f64,
}

pub fn assignment_norm_stats() -> Result<AssignmentNormStats> {
    let x = assignment_tensor();
    let kinds = [
        RefKind::Batch,
        RefKind::Layer { normalized_ndim: 2 },
        RefKind::Group { groups: 2 },
    ];
    let eps = 1e-5;
    let mut stats: Vec<NormStats> = Vec::new();
    let mut worst = 0.0f64;
    for kind in kinds {
        let st = norm::norm_stats(&x, kind, None)?;
        let mut tape = Tape::<f64>::no_grad();
        let xv = tape.constant(x.clone());
        let y = match kind {
            RefKind::Batch => norm::batch_norm(
                &mut tape,
                xv,
                None,
                None,
                norm::BatchNormMode::Train {
                    running: None,
                    factor: 0.1,
                },
                eps,
                None,
            )?,
            RefKind::Layer { normalized_ndim } => {
                norm::layer_norm(&mut tape, xv, normalized_ndim, None, None, eps, None)?
            }
            RefKind::Group { .. } => norm::instance_norm(&mut tape, xv, None, None, eps, None)?,
        };
        for (i, (&yi, &xi)) in tape.value(y).data().iter().zip(x.data()).enumerate() {
            let (n, c) = (i / 6, (i / 3) % 2);
            let g = match kind {
                RefKind::Batch => c,
                RefKind::Layer { .. } => n,
                RefKind::Group { .. } => n * 2 + c,
            };
            let want = (xi - st.mean[g]) / (st.var[g] + eps).sqrt();
            worst = worst.max((yi - want).abs());
        }
        stats.push(st);
    }
    let mut it = stats.into_iter();
    let (b, l, i) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    Ok(AssignmentNormStats {
        batch_mean: b.mean,
        batch_var: b.var,
        layer_mean: l.mean,
        layer_var: l.var,
        instance_mean: i.mean,
        instance_var: i.var,
        max_output_check_error: worst,
    })
}
