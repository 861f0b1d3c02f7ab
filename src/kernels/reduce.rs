//! Reductions: row sums, dot products and maxima in explicit SIMD lanes, and the column sums
//! that give every broadcast bias its gradient.
//!
//! **Order of operations.** A row reduction on a path with `L` f32 lanes keeps one vector
//! accumulator: lane `l` sums entries `l, l + L, l + 2L, …` of the part of the row that fills
//! whole vectors, the lanes are combined by pulp's tree (`reduce_sum_f32s`), and the remaining
//! `< L` entries are added one by one. The scalar path (`L = 1`) is the plain left-to-right
//! loop, the definition. Paths therefore differ by rounding only; for `n` terms each result is
//! within `(n − 1)·2⁻²⁴·Σ|tᵢ|` of the exact sum (the classic bound for any summation order),
//! which the tests assert. Maxima are exact on every path. Column sums add the rows in order
//! down each column, so they are bit-identical on every path (and independent of threads).
//!
//! f64 rows (the gradient checks) take the plain loops.

use super::isa::{self, Isa};
use crate::tensor::Element;
use pulp::{Simd, WithSimd};

struct Sum<'a>(&'a [f32]);

impl WithSimd for Sum<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        sum_lanes(simd, self.0)
    }
}

/// `Σ xᵢ` in the lane order of the module doc, inside an already dispatched SIMD context.
#[inline(always)]
pub(super) fn sum_lanes<S: Simd>(simd: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut acc = simd.splat_f32s(0.0);
    for &v in head {
        acc = simd.add_f32s(acc, v);
    }
    let mut s = simd.reduce_sum_f32s(acc);
    for &v in tail {
        s += v;
    }
    s
}

struct Dot<'a>(&'a [f32], &'a [f32]);

impl WithSimd for Dot<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        dot_lanes(simd, self.0, self.1)
    }
}

/// `Σ aᵢ bᵢ` in the lane order of the module doc, inside an already dispatched SIMD context
/// (kernels that take many short dots — per head, per edge — call it in one dispatch).
#[inline(always)]
pub(super) fn dot_lanes<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ha, ta) = S::as_simd_f32s(&a[..n]);
    let (hb, tb) = S::as_simd_f32s(&b[..n]);
    let mut acc = simd.splat_f32s(0.0);
    for (&a, &b) in ha.iter().zip(hb) {
        // Multiply, then add: no FMA, so the scalar path is the plain loop.
        acc = simd.add_f32s(acc, simd.mul_f32s(a, b));
    }
    // A row shorter than one vector skips the lane tree (its sum of zeros is +0 anyway).
    let mut s = if ha.is_empty() {
        0.0
    } else {
        simd.reduce_sum_f32s(acc)
    };
    for (&a, &b) in ta.iter().zip(tb) {
        s += a * b;
    }
    s
}

struct Max<'a>(&'a [f32]);

impl WithSimd for Max<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f32 {
        max_lanes(simd, self.0)
    }
}

/// `max xᵢ` (`−∞` for an empty row) inside an already dispatched SIMD context.
#[inline(always)]
pub(super) fn max_lanes<S: Simd>(simd: S, x: &[f32]) -> f32 {
    let (head, tail) = S::as_simd_f32s(x);
    let mut acc = simd.splat_f32s(f32::NEG_INFINITY);
    for &v in head {
        acc = simd.max_f32s(acc, v);
    }
    let mut m = if head.is_empty() {
        f32::NEG_INFINITY
    } else {
        simd.reduce_max_f32s(acc)
    };
    for &v in tail {
        m = m.max(v);
    }
    m
}

/// `Σ xᵢ` of an f32 row on `isa` (lane order: see the module doc).
pub fn sum_f32_on(isa: Isa, x: &[f32]) -> f32 {
    isa::dispatch_on(isa, Sum(x))
}

/// `Σ aᵢ bᵢ` of two f32 rows on `isa` (over the shorter length).
pub fn dot_f32_on(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    isa::dispatch_on(isa, Dot(a, b))
}

/// `max xᵢ` of an f32 row on `isa`; `−∞` for an empty row. A row without NaN gives the same
/// value on every path; a NaN entry may or may not win (callers propagate NaN elsewhere).
pub fn max_f32_on(isa: Isa, x: &[f32]) -> f32 {
    isa::dispatch_on(isa, Max(x))
}

/// `Σ xᵢ` of a row: f32 in SIMD lanes on the selected path, f64 left to right.
pub fn sum<T: Element>(x: &[T]) -> T {
    match T::as_f32(x) {
        Some(x) => T::c(sum_f32_on(isa::selected(), x) as f64),
        None => x.iter().copied().fold(T::zero(), |s, v| s + v),
    }
}

/// `Σ aᵢ bᵢ`: f32 in SIMD lanes on the selected path, f64 left to right.
pub fn dot<T: Element>(a: &[T], b: &[T]) -> T {
    match (T::as_f32(a), T::as_f32(b)) {
        (Some(a), Some(b)) => T::c(dot_f32_on(isa::selected(), a, b) as f64),
        _ => a.iter().zip(b).fold(T::zero(), |s, (&a, &b)| s + a * b),
    }
}

/// `max xᵢ` (`−∞` for an empty row; NaN entries are skipped by the f64 loop).
pub fn max<T: Element>(x: &[T]) -> T {
    match T::as_f32(x) {
        Some(x) => T::c(max_f32_on(isa::selected(), x) as f64),
        None => x.iter().copied().fold(T::neg_infinity(), T::max),
    }
}

/// `y ← y + α x` on `isa` (a map: bit-identical on every path).
#[inline]
pub fn axpy_on<T: Element>(isa: Isa, alpha: T, x: &[T], y: &mut [T]) {
    isa::dispatch_on(isa, || {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
    })
}

/// `y ← y + α x` on the selected path.
#[inline]
pub fn axpy<T: Element>(alpha: T, x: &[T], y: &mut [T]) {
    axpy_on(isa::selected(), alpha, x, y)
}

/// Column sums of a `(rows, cols)` buffer into `out` (resized to `cols`): `outⱼ = Σᵢ gᵢⱼ`, the
/// gradient of a bias broadcast over rows. Rows are added in order, so the result is the same
/// on every path and thread count. `cols = 0` gives an empty vector.
pub fn col_sums_into_on<T: Element>(isa: Isa, g: &[T], cols: usize, out: &mut Vec<T>) {
    out.clear();
    out.resize(cols, T::zero());
    if cols == 0 {
        return;
    }
    isa::dispatch_on(isa, || {
        for row in g.chunks_exact(cols) {
            out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
    })
}

/// [`col_sums_into_on`] on the selected path.
pub fn col_sums_into<T: Element>(g: &[T], cols: usize, out: &mut Vec<T>) {
    col_sums_into_on(isa::selected(), g, cols, out)
}

/// Column sums of a `(rows, cols)` buffer as a new vector: see [`col_sums_into_on`].
pub fn col_sums<T: Element>(g: &[T], cols: usize) -> Vec<T> {
    let mut out = Vec::new();
    col_sums_into(g, cols, &mut out);
    out
}

/// `bufᵢⱼ ← bufᵢⱼ + biasⱼ` for every row of a `(rows, bias.len())` buffer (a broadcast bias).
pub fn add_row_bias<T: Element>(buf: &mut [T], bias: &[T]) {
    if bias.is_empty() {
        return;
    }
    isa::dispatch(|| {
        for row in buf.chunks_exact_mut(bias.len()) {
            row.iter_mut().zip(bias).for_each(|(r, &b)| *r += b);
        }
    })
}

/// Per-head dots of every row of `z (N, W)` with one vector `a (W)`, `W = heads·d`:
/// `out[n, h] = Σ_f z[n, h·d + f] · a[h·d + f]`, each head's products summed left to right
/// (GAT's node terms `a_src · W h_n`). Products are taken over the full row first, so narrow
/// heads (8 wide) still run at the vector width.
pub fn row_head_dots<T: Element>(z: &[T], a: &[T], heads: usize, out: &mut [T]) {
    let w = a.len();
    if w == 0 || heads == 0 || !w.is_multiple_of(heads) {
        return;
    }
    let d = w / heads;
    isa::dispatch(|| {
        let mut prod = vec![T::zero(); w];
        for (zr, o) in z.chunks_exact(w).zip(out.chunks_exact_mut(heads)) {
            prod.iter_mut()
                .zip(zr.iter().zip(a))
                .for_each(|(p, (&z, &a))| *p = z * a);
            for (o, ph) in o.iter_mut().zip(prod.chunks_exact(d)) {
                *o = ph.iter().fold(T::zero(), |s, &p| s + p);
            }
        }
    })
}

/// The backward of [`row_head_dots`] for `g (N, heads)`: `dz[n, j] = g[n, j/d] · a[j]` and
/// `da[j] = Σ_n g[n, j/d] · z[n, j]` (rows in order, so any thread count gives the same bits).
pub fn row_head_dots_backward<T: Element>(
    z: &[T],
    a: &[T],
    g: &[T],
    heads: usize,
    mut dz: Option<&mut [T]>,
    mut da: Option<&mut [T]>,
) {
    let w = a.len();
    if w == 0 || heads == 0 || !w.is_multiple_of(heads) {
        return;
    }
    let d = w / heads;
    isa::dispatch(|| {
        // Each row's head gradients spread over the full width, then full-width products.
        let mut coef = vec![T::zero(); w];
        for (n, gr) in g.chunks_exact(heads).enumerate() {
            for (c, &gh) in coef.chunks_exact_mut(d).zip(gr) {
                c.fill(gh);
            }
            if let Some(dz) = dz.as_deref_mut() {
                dz[n * w..(n + 1) * w]
                    .iter_mut()
                    .zip(coef.iter().zip(a))
                    .for_each(|(o, (&c, &a))| *o = c * a);
            }
            if let Some(da) = da.as_deref_mut() {
                da.iter_mut()
                    .zip(coef.iter().zip(&z[n * w..(n + 1) * w]))
                    .for_each(|(o, (&c, &z))| *o += c * z);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn row(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (rng.normal() * 3.0 + 1.0) as f32).collect()
    }

    /// Every path's sum and dot lie within `(n − 1)·2⁻²⁴·Σ|tᵢ|` of the exact (f64) value, the
    /// scalar path is the left-to-right loop bit for bit, and maxima are exact everywhere.
    #[test]
    fn row_reductions_on_every_path_within_the_stated_bound() {
        let mut rng = Rng::new(5);
        for n in (0..40).chain([63, 64, 65, 255, 256, 257, 1000, 4099]) {
            let (a, b) = (row(&mut rng, n), row(&mut rng, n));
            let exact: f64 = a.iter().map(|&v| v as f64).sum();
            let abs: f64 = a.iter().map(|&v| (v as f64).abs()).sum();
            let exact_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let abs_dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            let bound = |s: f64| (n.max(1) - 1) as f64 * 2f64.powi(-24) * s + 1e-30;
            let seq = a.iter().fold(0.0f32, |s, &v| s + v);
            assert_eq!(
                sum_f32_on(Isa::Scalar, &a).to_bits(),
                seq.to_bits(),
                "n = {n}"
            );
            let seq_dot = a.iter().zip(&b).fold(0.0f32, |s, (&x, &y)| s + x * y);
            assert_eq!(dot_f32_on(Isa::Scalar, &a, &b).to_bits(), seq_dot.to_bits());
            let mx = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for isa in isa::detected() {
                let s = sum_f32_on(isa, &a) as f64;
                assert!((s - exact).abs() <= bound(abs), "sum n = {n} on {isa}");
                let d = dot_f32_on(isa, &a, &b) as f64;
                // The products are rounded too: one more 2⁻²⁴ per term.
                assert!(
                    (d - exact_dot).abs() <= bound(abs_dot) + 2f64.powi(-24) * abs_dot,
                    "dot n = {n} on {isa}"
                );
                assert_eq!(max_f32_on(isa, &a), mx, "max n = {n} on {isa}");
            }
        }
    }

    /// Column sums and the bias broadcast are bit-identical on every path and equal the plain
    /// loops; f64 takes the same loops.
    #[test]
    fn col_sums_and_bias_rows_are_exact_on_every_path() {
        let mut rng = Rng::new(9);
        for (rows, cols) in [(1, 1), (3, 7), (17, 33), (64, 16), (5, 0)] {
            let g = row(&mut rng, rows * cols);
            let mut want = vec![0.0f32; cols];
            for r in g
                .chunks_exact(cols.max(1))
                .take(if cols == 0 { 0 } else { rows })
            {
                for (w, &v) in want.iter_mut().zip(r) {
                    *w += v;
                }
            }
            for isa in isa::detected() {
                let mut out = vec![9.0f32; 3];
                col_sums_into_on(isa, &g, cols, &mut out);
                assert_eq!(out, want, "{rows}×{cols} on {isa}");
            }
            let bias = row(&mut rng, cols);
            let mut buf = g.clone();
            add_row_bias(&mut buf, &bias);
            for (i, v) in buf.iter().enumerate() {
                assert_eq!(*v, g[i] + bias[i % cols]);
            }
        }
        let g64 = vec![1.0f64, 2.0, 3.0, 4.0];
        assert_eq!(col_sums(&g64, 2), vec![4.0, 6.0]);
        assert_eq!(sum(&g64), 10.0);
        assert_eq!(dot(&g64, &g64), 30.0);
        assert_eq!(max(&g64), 4.0);
    }
}
