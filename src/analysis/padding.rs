//! Question 3.2, demonstrated: BatchNorm on padded variable-length sequences.
//!
//! A batch of token sequences (embedding dimension `D`) is padded to a common length. Plain
//! BatchNorm takes its per-channel statistics over every position, padding included, so the
//! output for one sentence's real tokens changes when the amount of padding changes or when
//! the other sentences in the batch change. Masked BatchNorm ignores padding (invariant to the
//! amount of padding) but, being a batch statistic, still depends on the other sentences;
//! LayerNorm normalizes each token on its own and depends on neither.

use crate::autograd::Tape;
use crate::error::Result;
use crate::init::Rng;
use crate::invalid;
use crate::nn::norm::{self, BatchNormMode};
use crate::ops::shape::permute_tensor;
use crate::tensor::Tensor;
use serde::Serialize;

/// Max |Δ output| over the real tokens of sentence 0 relative to the baseline batch.
#[derive(Clone, Debug, Serialize)]
pub struct PaddingEffect {
    pub layer: String,
    /// Baseline vs the same batch padded to `padded_len_more` instead of `max_len`.
    pub more_padding: f64,
    /// Baseline vs a batch where the other sentences were replaced by new ones.
    pub other_sentences: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PaddingReport {
    pub lengths: Vec<usize>,
    pub dim: usize,
    pub max_len: usize,
    pub padded_len_more: usize,
    /// Scale of the outputs (RMS of the baseline plain BatchNorm output on real tokens), to
    /// read the differences against.
    pub output_rms: f64,
    pub effects: Vec<PaddingEffect>,
}

/// Builds `(N, T, D)` token embeddings from per-sentence token lists, zero padded to `t`, and
/// the `(N, 1, T)` mask of real tokens (for the `(N, D, T)` channel layout).
fn pad(sents: &[Vec<Vec<f64>>], t: usize, d: usize) -> Result<(Tensor<f64>, Tensor<f64>)> {
    let n = sents.len();
    let mut x = vec![0.0; n * t * d];
    let mut m = vec![0.0; n * t];
    for (i, s) in sents.iter().enumerate() {
        for (j, tok) in s.iter().enumerate() {
            x[(i * t + j) * d..(i * t + j + 1) * d].copy_from_slice(tok);
            m[i * t + j] = 1.0;
        }
    }
    Ok((Tensor::new(&[n, t, d], x)?, Tensor::new(&[n, 1, t], m)?))
}

/// Outputs of each variant for sentence 0's real tokens, as `(len0, D)` row-major vectors.
fn outputs(sents: &[Vec<Vec<f64>>], t: usize, d: usize) -> Result<Vec<(String, Vec<f64>)>> {
    let (xt, mask) = pad(sents, t, d)?;
    let xc = permute_tensor(&xt, &[0, 2, 1])?; // (N, D, T): channels = embedding dims
    let len0 = sents[0].len();
    let take_ch = |y: &Tensor<f64>| -> Vec<f64> {
        // y: (N, D, T) → sentence 0, tokens 0..len0, as (len0, D)
        let mut v = Vec::with_capacity(len0 * d);
        for j in 0..len0 {
            for c in 0..d {
                v.push(y.data()[c * t + j]);
            }
        }
        v
    };
    let mut out = Vec::new();
    let train = || BatchNormMode::Train {
        running: None,
        factor: 0.1,
    };
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(xc.clone());
    let y = norm::batch_norm(&mut tape, xv, None, None, train(), 1e-5, None)?;
    out.push(("batch_norm".to_string(), take_ch(tape.value(y))));
    let y = norm::batch_norm(&mut tape, xv, None, None, train(), 1e-5, Some(&mask))?;
    out.push(("masked_batch_norm".to_string(), take_ch(tape.value(y))));
    let xtv = tape.constant(xt);
    let y = norm::layer_norm(&mut tape, xtv, 1, None, None, 1e-5, None)?;
    out.push((
        "layer_norm".to_string(),
        tape.value(y).data()[..len0 * d].to_vec(),
    ));
    Ok(out)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Runs the demonstration on random sentences of the given `lengths` (sentence 0 is the one
/// observed), embedding dimension `dim`, padded to the longest and then to `extra_pad` more.
pub fn padding_demo(
    lengths: &[usize],
    dim: usize,
    extra_pad: usize,
    seed: u64,
) -> Result<PaddingReport> {
    if lengths.len() < 2 || lengths.contains(&0) || dim < 2 || extra_pad == 0 {
        return Err(invalid!(
            "padding_demo needs >= 2 non-empty sentences, dim >= 2 and extra_pad >= 1, got lengths {lengths:?}, dim {dim}, extra_pad {extra_pad}"
        ));
    }
    let mut rng = Rng::new(seed);
    // Token embeddings with a non-zero mean per dimension, as real embeddings have, so that
    // zero padding visibly pulls the batch statistics.
    let offsets: Vec<f64> = (0..dim).map(|_| 1.0 + rng.normal()).collect();
    let sentence = |len: usize, rng: &mut Rng| -> Vec<Vec<f64>> {
        (0..len)
            .map(|_| offsets.iter().map(|o| o + rng.normal()).collect())
            .collect()
    };
    let base: Vec<Vec<Vec<f64>>> = lengths.iter().map(|&l| sentence(l, &mut rng)).collect();
    let mut other = base.clone();
    for s in other.iter_mut().skip(1) {
        *s = sentence(s.len(), &mut rng);
    }
    let t = *lengths.iter().max().unwrap();
    let a = outputs(&base, t, dim)?;
    let b = outputs(&base, t + extra_pad, dim)?;
    let c = outputs(&other, t, dim)?;
    let rms = (a[0].1.iter().map(|v| v * v).sum::<f64>() / a[0].1.len() as f64).sqrt();
    let effects = a
        .iter()
        .zip(&b)
        .zip(&c)
        .map(|(((name, ya), (_, yb)), (_, yc))| PaddingEffect {
            layer: name.clone(),
            more_padding: max_diff(ya, yb),
            other_sentences: max_diff(ya, yc),
        })
        .collect();
    Ok(PaddingReport {
        lengths: lengths.to_vec(),
        dim,
        max_len: t,
        padded_len_more: t + extra_pad,
        output_rms: rms,
        effects,
    })
}
