//! Row softmax kernels: forward, log-softmax, their backward passes, and the masked, scaled
//! score row of the attention core.
//!
//! For one row `x` (length n): `m = maxⱼ xⱼ`, `eⱼ = exp(xⱼ − m)`, `yⱼ = eⱼ / Σₖ eₖ`; the backward
//! of `y` is `dxⱼ = yⱼ (gⱼ − Σₖ yₖ gₖ)`, that of `log y` is `dxⱼ = gⱼ − yⱼ Σₖ gₖ`. A row whose
//! maximum is `−∞` (every entry masked) gives zeros, never NaN.
//!
//! f32 rows: the exponentials go through the vectorizable [`exp_f32`] (≈ 1 ulp) as a map on
//! the selected SIMD path, and the row max, sums and dot products through the lane reductions
//! of [`super::reduce`] (their rounding bound is stated there). f64 rows — the gradient checks —
//! keep libm `exp` and left-to-right sums.

use super::elementwise::exp_f32;
use super::isa::{self, Isa};
use super::reduce::{dot_lanes, max_f32_on, max_lanes, sum_f32_on, sum_lanes};
use super::PAR_THRESHOLD;
use crate::tensor::Element;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// `x ← e^{x − shift}` along an f32 row on `isa`, returning the new values' lane sum; a score
/// of `−∞` (masked) gives exactly 0, NaN stays NaN.
pub fn exp_shifted_f32_on(isa: Isa, row: &mut [f32], shift: f32) -> f32 {
    isa::dispatch_on(isa, || {
        for x in row.iter_mut() {
            let e = exp_f32(*x - shift);
            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
        }
    });
    sum_f32_on(isa, row)
}

/// `x ← e^{x − shift}` along a row (a softmax numerator), returning the new values' sum; a
/// score of `−∞` (masked) gives exactly 0.
pub fn exp_shifted<T: Element>(row: &mut [T], shift: T) -> T {
    if let Some(r) = T::as_f32_mut(row) {
        let shift = shift.as_f64() as f32; // exact: shift is an f32
        return T::c(exp_shifted_f32_on(isa::selected(), r, shift) as f64);
    }
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

/// `x ← α x` on `isa`.
#[inline]
fn scale_on<T: Element>(isa: Isa, x: &mut [T], alpha: T) {
    isa::dispatch_on(isa, || x.iter_mut().for_each(|v| *v *= alpha))
}

/// Softmax of one row in place on `isa`.
pub fn softmax_row_on<T: Element>(isa: Isa, row: &mut [T]) {
    let m = match T::as_f32(row) {
        Some(r) => T::c(max_f32_on(isa, r) as f64),
        None => row.iter().copied().fold(T::neg_infinity(), T::max),
    };
    let m = if m == T::neg_infinity() { T::zero() } else { m };
    let s = match T::as_f32_mut(row) {
        Some(r) => T::c(exp_shifted_f32_on(isa, r, m.as_f64() as f32) as f64),
        None => exp_shifted(row, m),
    };
    let inv = if s > T::zero() {
        T::one() / s
    } else {
        T::zero()
    };
    scale_on(isa, row, inv);
}

/// Runs `f` on every `n`-entry row of `x`, in parallel when the buffer is large (the split is
/// by rows only, so the result does not depend on the thread count).
fn rows_mut<T: Element>(x: &mut [T], n: usize, f: impl Fn(&mut [T]) + Sync + Send) {
    if n == 0 {
        return;
    }
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks_mut(n).for_each(f);
    } else {
        x.chunks_mut(n).for_each(f);
    }
}

/// Row-wise softmax of a (rows, n) buffer, in place. Subtracts the row max for stability.
pub fn softmax_rows<T: Element>(x: &mut [T], n: usize) {
    let isa = isa::selected();
    rows_mut(x, n, |row| softmax_row_on(isa, row));
}

/// Log-softmax of one row in place on `isa`: `x ← x − m − ln Σ e^{x − m}`.
pub fn log_softmax_row_on<T: Element>(isa: Isa, row: &mut [T]) {
    match T::as_f32_mut(row) {
        Some(r) => {
            let m = max_f32_on(isa, r);
            // The exponentials go through a stack block (the row must keep its values);
            // block sums are added in order.
            const BLOCK: usize = 256;
            let mut buf = [0.0f32; BLOCK];
            let mut s = 0.0f32;
            for c in r.chunks(BLOCK) {
                let b = &mut buf[..c.len()];
                isa::dispatch_on(isa, || {
                    b.iter_mut().zip(c).for_each(|(b, &x)| *b = exp_f32(x - m));
                });
                s += sum_f32_on(isa, b);
            }
            let lse = m + s.ln();
            isa::dispatch_on(isa, || r.iter_mut().for_each(|v| *v -= lse));
        }
        None => {
            let m = row.iter().copied().fold(T::neg_infinity(), T::max);
            let lse = m + row.iter().map(|&v| (v - m).exp()).sum::<T>().ln();
            row.iter_mut().for_each(|v| *v -= lse);
        }
    }
}

/// Row-wise log-softmax of a (rows, n) buffer, in place.
pub fn log_softmax_rows<T: Element>(x: &mut [T], n: usize) {
    let isa = isa::selected();
    rows_mut(x, n, |row| log_softmax_row_on(isa, row));
}

/// Softmax backward of one row, scaled: `dx = α y ⊙ (dy − ⟨y, dy⟩)` on `isa` (`α = 1` for a
/// plain softmax; the attention core folds its `1/√d` in here).
pub fn softmax_backward_row_on<T: Element>(isa: Isa, y: &[T], dy: &[T], alpha: T, dx: &mut [T]) {
    if let (Some(y), Some(dy), Some(dx)) = (T::as_f32(y), T::as_f32(dy), T::as_f32_mut(dx)) {
        let alpha = alpha.as_f64() as f32; // exact: alpha is an f32
        return isa::dispatch_on(isa, BackwardRow { y, dy, alpha, dx });
    }
    let dot = y.iter().zip(dy).fold(T::zero(), |s, (&a, &b)| s + a * b);
    for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
        *d = y * (g - dot) * alpha;
    }
}

struct BackwardRow<'a> {
    y: &'a [f32],
    dy: &'a [f32],
    alpha: f32,
    dx: &'a mut [f32],
}

impl WithSimd for BackwardRow<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        softmax_backward_row_simd(simd, self.y, self.dy, self.alpha, self.dx)
    }
}

/// Backward of a row-wise softmax: `dx = y ⊙ (dy − Σ_j y_j dy_j)`.
pub fn softmax_rows_backward<T: Element>(y: &[T], dy: &[T], dx: &mut [T], n: usize) {
    if n == 0 {
        return;
    }
    let isa = isa::selected();
    let f =
        |(dx, (y, dy)): (&mut [T], (&[T], &[T]))| softmax_backward_row_on(isa, y, dy, T::one(), dx);
    if y.len() >= PAR_THRESHOLD {
        dx.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(dy.par_chunks(n)))
            .for_each(f);
    } else {
        dx.chunks_mut(n)
            .zip(y.chunks(n).zip(dy.chunks(n)))
            .for_each(f);
    }
}

/// Log-softmax backward of one row on `isa`: `dx = g − e^{y} Σ g` (with `y = log softmax`).
pub fn log_softmax_backward_row_on<T: Element>(isa: Isa, y: &[T], g: &[T], dx: &mut [T]) {
    match (T::as_f32(y), T::as_f32(g), T::as_f32_mut(dx)) {
        (Some(y), Some(g), Some(dx)) => {
            let s = sum_f32_on(isa, g);
            isa::dispatch_on(isa, || {
                for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                    *d = g - exp_f32(y) * s;
                }
            })
        }
        _ => {
            let s: T = g.iter().copied().sum();
            for ((d, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *d = g - y.exp() * s;
            }
        }
    }
}

/// Backward of a row-wise log-softmax of a (rows, n) buffer.
pub fn log_softmax_rows_backward<T: Element>(y: &[T], g: &[T], dx: &mut [T], n: usize) {
    if n == 0 {
        return;
    }
    let isa = isa::selected();
    let f = |(dx, (y, g)): (&mut [T], (&[T], &[T]))| log_softmax_backward_row_on(isa, y, g, dx);
    if y.len() >= PAR_THRESHOLD {
        dx.par_chunks_mut(n)
            .zip(y.par_chunks(n).zip(g.par_chunks(n)))
            .for_each(f);
    } else {
        dx.chunks_mut(n)
            .zip(y.chunks(n).zip(g.chunks(n)))
            .for_each(f);
    }
}

/// One attention probability row on `isa`: `p = softmax(α s)` with the entries where
/// `blocked[j]` set to probability 0; a row with every key blocked gives zeros.
pub fn scaled_masked_softmax_row_on<T: Element>(
    isa: Isa,
    s: &[T],
    alpha: T,
    blocked: Option<&[bool]>,
    p: &mut [T],
) {
    let n = p.len();
    let s = &s[..n];
    if let (Some(s), Some(p)) = (T::as_f32(s), T::as_f32_mut(p)) {
        let alpha = alpha.as_f64() as f32; // exact: alpha is an f32
        return isa::dispatch_on(
            isa,
            ScoreRow {
                s,
                alpha,
                blocked,
                p,
            },
        );
    }
    match blocked {
        None => p.iter_mut().zip(s).for_each(|(p, &s)| *p = alpha * s),
        Some(b) => {
            for ((p, &s), &b) in p.iter_mut().zip(s).zip(&b[..n]) {
                *p = if b { T::neg_infinity() } else { alpha * s };
            }
        }
    }
    let mx = p.iter().copied().fold(T::neg_infinity(), T::max);
    if mx == T::neg_infinity() {
        p.iter_mut().for_each(|x| *x = T::zero());
        return;
    }
    let sum = exp_shifted(p, mx);
    let inv = T::one() / sum;
    p.iter_mut().for_each(|x| *x *= inv);
}

struct ScoreRow<'a> {
    s: &'a [f32],
    alpha: f32,
    blocked: Option<&'a [bool]>,
    p: &'a mut [f32],
}

impl WithSimd for ScoreRow<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        scaled_masked_softmax_row_simd(simd, self.s, self.alpha, self.blocked, self.p)
    }
}

/// [`scaled_masked_softmax_row_on`] of an f32 row inside an already dispatched SIMD context
/// (the attention core runs a head's rows in one dispatch). Scores `α s` (blocked: `−∞`), the
/// row max in lanes, `e^{x − max}` (`−∞` → exactly 0), the lane sum, then one scaling by
/// `1 / sum`; the max, the numerators and the sum are those of [`exp_shifted_f32_on`].
#[inline(always)]
pub(crate) fn scaled_masked_softmax_row_simd<S: Simd>(
    simd: S,
    s: &[f32],
    alpha: f32,
    blocked: Option<&[bool]>,
    p: &mut [f32],
) {
    let n = p.len();
    let s = &s[..n];
    match blocked {
        None => p.iter_mut().zip(s).for_each(|(p, &s)| *p = alpha * s),
        Some(b) => {
            for ((p, &s), &b) in p.iter_mut().zip(s).zip(&b[..n]) {
                *p = if b { f32::NEG_INFINITY } else { alpha * s };
            }
        }
    }
    let mx = max_lanes(simd, p);
    if mx == f32::NEG_INFINITY {
        p.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    for x in p.iter_mut() {
        let e = exp_f32(*x - mx);
        *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
    }
    let inv = 1.0 / sum_lanes(simd, p);
    p.iter_mut().for_each(|x| *x *= inv);
}

/// [`softmax_backward_row_on`] of f32 rows inside an already dispatched SIMD context.
#[inline(always)]
pub(crate) fn softmax_backward_row_simd<S: Simd>(
    simd: S,
    y: &[f32],
    dy: &[f32],
    alpha: f32,
    dx: &mut [f32],
) {
    let dot = dot_lanes(simd, y, dy);
    for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
        *d = y * (g - dot) * alpha;
    }
}

/// [`scaled_masked_softmax_row_on`] on the selected path.
pub fn scaled_masked_softmax_row<T: Element>(
    s: &[T],
    alpha: T,
    blocked: Option<&[bool]>,
    p: &mut [T],
) {
    scaled_masked_softmax_row_on(isa::selected(), s, alpha, blocked, p)
}

/// [`softmax_backward_row_on`] on the selected path.
pub fn softmax_backward_row<T: Element>(y: &[T], dy: &[T], alpha: T, dx: &mut [T]) {
    softmax_backward_row_on(isa::selected(), y, dy, alpha, dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn scores(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                if i % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    (rng.normal() * 8.0) as f32
                }
            })
            .collect()
    }

    /// The f32 numerators agree with f64 `exp` (relative 1e-6 per entry and in the sum),
    /// masked scores give exactly 0, NaN propagates, and f64 rows take the plain path.
    #[test]
    fn exp_shifted_matches_f64_and_zeroes_masked_scores() {
        let mut rng = Rng::new(3);
        for n in [1usize, 15, 16, 17, 40, 300] {
            let s = scores(&mut rng, n);
            let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            for isa in isa::detected() {
                let mut row = s.clone();
                let sum = exp_shifted_f32_on(isa, &mut row, mx);
                let mut want_sum = 0.0f64;
                for (&x, &e) in s.iter().zip(&row) {
                    if x == f32::NEG_INFINITY {
                        assert_eq!(e, 0.0);
                        continue;
                    }
                    // The shifted score is rounded to f32 first (as in any f32 softmax).
                    let w = ((x - mx) as f64).exp();
                    want_sum += w;
                    assert!((e as f64 - w).abs() <= 1e-6 * w + 1e-37, "{x}: {e} vs {w}");
                }
                assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum, "{isa}");
            }
        }
        let mut nan = vec![0.0f32, f32::NAN];
        assert!(exp_shifted(&mut nan, 0.0).is_nan() && nan[1].is_nan());
        let mut r64 = vec![0.5f64, -1.0, f64::NEG_INFINITY];
        let s64 = exp_shifted(&mut r64, 0.5);
        assert_eq!(r64, vec![1.0, (-1.5f64).exp(), 0.0]);
        assert_eq!(s64, 1.0 + (-1.5f64).exp());
    }

    /// Softmax, log-softmax and both backward passes on every path against the f64
    /// definitions: every entry within 4e-6 relative + 1e-7 absolute (a few ulp of exp, the
    /// sum's lane rounding and the final scaling); all-masked rows give zeros; paths agree
    /// with the scalar path to the same bound.
    #[test]
    fn softmax_rows_on_every_path_match_f64() {
        let mut rng = Rng::new(21);
        for n in [1usize, 3, 16, 17, 64, 65, 300] {
            let x: Vec<f32> = (0..n).map(|_| (rng.normal() * 4.0) as f32).collect();
            let g: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
            let mut y64 = x64.clone();
            softmax_row_on(Isa::Scalar, &mut y64);
            let mut l64 = x64.clone();
            log_softmax_row_on(Isa::Scalar, &mut l64);
            let mut dy64 = vec![0.0f64; n];
            softmax_backward_row_on(Isa::Scalar, &y64, &g64, 0.5, &mut dy64);
            let mut dl64 = vec![0.0f64; n];
            log_softmax_backward_row_on(Isa::Scalar, &l64, &g64, &mut dl64);
            // `scale`: the magnitude of the terms that cancel in the entry (0 where none do).
            let close = |a: f32, b: f64, scale: f64, what: &str, isa: Isa| {
                assert!(
                    (a as f64 - b).abs() <= 4e-6 * (b.abs() + scale) + 1e-7,
                    "{what} n = {n} on {isa}: {a} vs {b}"
                );
            };
            let gdot: f64 = y64.iter().zip(&g64).map(|(y, g)| y * g).sum::<f64>().abs();
            let gsum: f64 = g64.iter().sum::<f64>().abs();
            for isa in isa::detected() {
                let mut y = x.clone();
                softmax_row_on(isa, &mut y);
                let mut l = x.clone();
                log_softmax_row_on(isa, &mut l);
                let mut dy = vec![0.0f32; n];
                softmax_backward_row_on(isa, &y, &g, 0.5, &mut dy);
                let mut dl = vec![0.0f32; n];
                log_softmax_backward_row_on(isa, &l, &g, &mut dl);
                let mut p = vec![0.0f32; n];
                scaled_masked_softmax_row_on(isa, &x, 1.0, None, &mut p);
                for j in 0..n {
                    close(y[j], y64[j], 0.0, "softmax", isa);
                    close(p[j], y64[j], 0.0, "attention row", isa);
                    close(l[j], l64[j], x64[j].abs() + 1.0, "log_softmax", isa);
                    let c = y64[j] * (g64[j].abs() + gdot);
                    close(dy[j], dy64[j], c, "softmax backward", isa);
                    let c = g64[j].abs() + y64[j] * gsum;
                    close(dl[j], dl64[j], c, "log_softmax backward", isa);
                }
                let blocked: Vec<bool> = (0..n).map(|j| j % 3 == 1).collect();
                scaled_masked_softmax_row_on(isa, &x, 0.5, Some(&blocked), &mut p);
                let kept: f64 = p.iter().map(|&v| v as f64).sum();
                for j in 0..n {
                    if blocked[j] {
                        assert_eq!(p[j], 0.0);
                    }
                }
                assert!((kept - 1.0).abs() < 1e-5, "{kept}");
                scaled_masked_softmax_row_on(isa, &x, 0.5, Some(&vec![true; n]), &mut p);
                assert!(p.iter().all(|&v| v == 0.0));
                let mut masked = vec![f32::NEG_INFINITY; n];
                softmax_row_on(isa, &mut masked);
                assert!(masked.iter().all(|&v| v == 0.0), "all-masked row on {isa}");
            }
        }
    }

    /// The row-parallel drivers equal the one-row kernels exactly (rows split by shape only).
    #[test]
    fn row_drivers_equal_the_row_kernels() {
        let n = 50;
        let rows = PAR_THRESHOLD / n + 3;
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1)
            .collect();
        let mut y = x.clone();
        softmax_rows(&mut y, n);
        let mut l = x.clone();
        log_softmax_rows(&mut l, n);
        let mut dx = vec![0.0f32; x.len()];
        softmax_rows_backward(&y, &x, &mut dx, n);
        let mut dl = vec![0.0f32; x.len()];
        log_softmax_rows_backward(&l, &x, &mut dl, n);
        let isa = isa::selected();
        for r in 0..rows {
            let sl = r * n..(r + 1) * n;
            let mut yr = x[sl.clone()].to_vec();
            softmax_row_on(isa, &mut yr);
            assert_eq!(&y[sl.clone()], &yr[..]);
            let mut lr = x[sl.clone()].to_vec();
            log_softmax_row_on(isa, &mut lr);
            assert_eq!(&l[sl.clone()], &lr[..]);
            let mut d = vec![0.0f32; n];
            softmax_backward_row_on(isa, &yr, &x[sl.clone()], 1.0, &mut d);
            assert_eq!(&dx[sl.clone()], &d[..]);
            log_softmax_backward_row_on(isa, &lr, &x[sl.clone()], &mut d);
            assert_eq!(&dl[sl], &d[..]);
        }
    }
}
