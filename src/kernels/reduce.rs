//! Reductions: row sums, dot products and maxima in explicit SIMD lanes, and the column sums
//! that give every broadcast bias its gradient.
//!
//! **Order of operations.** A row reduction on a path with `L` f32 lanes keeps one vector
//! accumulator: lane `l` sums entries `l, l + L, l + 2L, …` of the part of the row that fills
//! whole vectors, the lanes are combined by pulp's tree (`reduce_sum_f32s`), and the remaining
//! `< L` entries are added one by one. The scalar path (`L = 1`) is the plain left-to-right
//! loop, the definition. Paths therefore differ by rounding only; for `n` terms each result is
//! within `(n − 1)·2⁻²⁴·Σ|tᵢ|` of the exact sum (the classic bound for any summation order),
//! which the tests assert. Maxima are exact on every path. Column sums — the one bias-gradient
//! kernel, [`bias_grad_into_on`] — add the rows in order down each column (in blocks of
//! [`BIAS_GRAD_BLOCK`] rows flushed into f64), so they are bit-identical on every path (and
//! independent of threads).
//!
//! f64 rows (the gradient checks) take the plain loops.

use super::isa::{self, Isa};
use super::{load, store};
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

/// Rows a bias-gradient partial (in the element type) takes before it is added into the f64
/// totals: an f32 partial holds at most 32 terms, whatever the number of rows.
pub const BIAS_GRAD_BLOCK: usize = 32;

/// `accⱼ ← accⱼ + rowⱼ` in explicit lanes, inside an already dispatched SIMD context: the step
/// of every bias gradient (fused kernels, LayerNorm's backward, call it on each row they hold).
/// Each lane adds one entry into one accumulator, so every path gives the scalar path's bits.
#[inline(always)]
pub(crate) fn add_row_lanes<S: Simd>(simd: S, row: &[f32], acc: &mut [f32]) {
    let n = row.len().min(acc.len());
    let (hr, tr) = S::as_simd_f32s(&row[..n]);
    let (ha, ta) = S::as_mut_simd_f32s(&mut acc[..n]);
    for (a, &r) in ha.iter_mut().zip(hr) {
        *a = simd.add_f32s(*a, r);
    }
    for (a, &r) in ta.iter_mut().zip(tr) {
        *a += r;
    }
}

/// The same step for one vector a fused kernel already holds: `acc[i..i + L] ← acc[i..i + L] + v`
/// (a row's tail through the partial load and store). LayerNorm's backward adds `g` into `dβ`
/// this way inside its `dx`/`dγ` loop, so the row is read once.
#[inline(always)]
pub(crate) fn add_lanes_at<S: Simd>(simd: S, acc: &mut [f32], i: usize, v: S::f32s) {
    store(simd, acc, i, simd.add_f32s(load(simd, acc, i), v));
}

/// `accⱼ ← accⱼ + rowⱼ`, the plain loop (the definition of [`add_row_lanes`], and the f64 path).
#[inline(always)]
pub fn add_row<T: Element>(row: &[T], acc: &mut [T]) {
    acc.iter_mut().zip(row).for_each(|(a, &r)| *a += r);
}

/// `totalⱼ ← totalⱼ + partⱼ` in f64 and `partⱼ ← 0`: a bias-gradient partial flushed after
/// [`BIAS_GRAD_BLOCK`] rows and after the last.
#[inline(always)]
pub fn flush_partials<T: Element>(part: &mut [T], total: &mut [f64]) {
    for (t, p) in total.iter_mut().zip(part.iter_mut()) {
        *t += p.as_f64();
        *p = T::zero();
    }
}

/// The rows of a bias gradient in one dispatch: [`add_row_lanes`] per row, flushed every
/// [`BIAS_GRAD_BLOCK`] rows.
struct BiasRows<'a> {
    g: &'a [f32],
    part: &'a mut [f32],
    total: &'a mut [f64],
}

impl WithSimd for BiasRows<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let w = self.part.len();
        for (r, row) in self.g.chunks_exact(w).enumerate() {
            add_row_lanes(simd, row, self.part);
            if (r + 1) % BIAS_GRAD_BLOCK == 0 {
                flush_partials(self.part, self.total);
            }
        }
        flush_partials(self.part, self.total);
    }
}

/// **The bias-gradient kernel.** The gradient of a bias of `cols` entries broadcast over the
/// `rows` leading and `inner` trailing entries of `g (rows, cols, inner)`:
/// `outⱼ = Σᵢ Σₖ g[i, j, k]`, into `out` (resized to `cols`). `inner = 1` is a bias over rows
/// (`Linear`, attention, MLP: `db = Σ_rows dy`); `inner = F` a per-channel bias of
/// `(N, C, F)` (`(C, 1, …)` broadcast).
///
/// Order, the same on every path and thread count (the definition): the rows are added in
/// order, entry by entry, into partials in `T`; after every [`BIAS_GRAD_BLOCK`] rows and after
/// the last, the partials are added into f64 totals; the `inner` totals of a column are added
/// left to right in f64 and rounded to `T` once. Every addition is vertical (one entry into one
/// accumulator), so the SIMD paths give the scalar path's bits, and an f32 result is within
/// `(32 + inner)·2⁻²⁴·Σ|gᵢⱼₖ|` of the exact sum at any number of rows.
pub fn bias_grad_into_on<T: Element>(
    isa: Isa,
    g: &[T],
    (cols, inner): (usize, usize),
    out: &mut Vec<T>,
) {
    out.clear();
    out.resize(cols, T::zero());
    let w = cols * inner;
    if w == 0 {
        return;
    }
    let mut part = vec![T::zero(); w];
    let mut total = vec![0.0f64; w];
    match (T::as_f32(g), T::as_f32_mut(&mut part)) {
        (Some(gf), Some(pf)) => isa::dispatch_on(
            isa,
            BiasRows {
                g: gf,
                part: pf,
                total: &mut total,
            },
        ),
        _ => {
            for (r, row) in g.chunks_exact(w).enumerate() {
                add_row(row, &mut part);
                if (r + 1) % BIAS_GRAD_BLOCK == 0 {
                    flush_partials(&mut part, &mut total);
                }
            }
            flush_partials(&mut part, &mut total);
        }
    }
    for (o, t) in out.iter_mut().zip(total.chunks_exact(inner)) {
        *o = T::c(t.iter().fold(0.0f64, |s, &v| s + v));
    }
}

/// [`bias_grad_into_on`] on the selected path.
pub fn bias_grad_into<T: Element>(g: &[T], cols_inner: (usize, usize), out: &mut Vec<T>) {
    bias_grad_into_on(isa::selected(), g, cols_inner, out)
}

/// Column sums of a `(rows, cols)` buffer into `out`: `outⱼ = Σᵢ gᵢⱼ`, the gradient of a bias
/// broadcast over rows — [`bias_grad_into_on`] with `inner = 1`. `cols = 0` gives an empty
/// vector.
pub fn col_sums_into_on<T: Element>(isa: Isa, g: &[T], cols: usize, out: &mut Vec<T>) {
    bias_grad_into_on(isa, g, (cols, 1), out)
}

/// [`col_sums_into_on`] on the selected path.
pub fn col_sums_into<T: Element>(g: &[T], cols: usize, out: &mut Vec<T>) {
    col_sums_into_on(isa::selected(), g, cols, out)
}

/// Column sums of a `(rows, cols)` buffer as a new vector: see [`bias_grad_into_on`].
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

    /// The definition of the bias-gradient order, written out independently: f32 partials per
    /// block of 32 rows, block totals in f64, the `inner` entries of a column in f64.
    fn bias_grad_definition(g: &[f32], cols: usize, inner: usize) -> Vec<f32> {
        let w = cols * inner;
        let rows = g.len().checked_div(w).unwrap_or(0);
        let mut total = vec![0.0f64; w];
        for block in (0..rows).step_by(32) {
            let mut part = vec![0.0f32; w];
            for r in block..(block + 32).min(rows) {
                for j in 0..w {
                    part[j] += g[r * w + j];
                }
            }
            for j in 0..w {
                total[j] += part[j] as f64;
            }
        }
        (0..cols)
            .map(|c| total[c * inner..(c + 1) * inner].iter().sum::<f64>() as f32)
            .collect()
    }

    /// The bias-gradient kernel is bit-identical on every path and equals its written-out
    /// definition (rows up to 1000, so many blocks are flushed), lies within
    /// `(32 + inner)·2⁻²⁴·Σ|g|` of the exact sum, and the bias broadcast adds rows; f64 takes
    /// the same order.
    #[test]
    fn bias_grad_and_bias_rows_are_exact_on_every_path() {
        let mut rng = Rng::new(9);
        let shapes = [
            (1, 1, 1),
            (3, 7, 1),
            (17, 33, 1),
            (64, 16, 1),
            (5, 0, 1),
            (1000, 7, 1),
            (33, 6, 5),
            (4, 3, 17),
            (0, 4, 2),
        ];
        for (rows, cols, inner) in shapes {
            let g = row(&mut rng, rows * cols * inner);
            let want = bias_grad_definition(&g, cols, inner);
            let mut exact = vec![0.0f64; cols];
            let mut abs = vec![0.0f64; cols];
            for (i, &v) in g.iter().enumerate() {
                exact[(i / inner.max(1)) % cols.max(1)] += v as f64;
                abs[(i / inner.max(1)) % cols.max(1)] += (v as f64).abs();
            }
            for isa in isa::detected() {
                let mut out = vec![9.0f32; 3];
                bias_grad_into_on(isa, &g, (cols, inner), &mut out);
                assert_eq!(out, want, "{rows}×{cols}×{inner} on {isa}");
                let bound = (32 + inner) as f64 * 2f64.powi(-24);
                for c in 0..cols {
                    let e = (out[c] as f64 - exact[c]).abs();
                    assert!(
                        e <= bound * abs[c] + 1e-30,
                        "{rows}×{cols}×{inner} col {c}: {e:e}"
                    );
                }
                if inner == 1 {
                    col_sums_into_on(isa, &g, cols, &mut out);
                    assert_eq!(out, want, "col_sums {rows}×{cols} on {isa}");
                }
            }
            if inner == 1 && cols > 0 {
                let bias = row(&mut rng, cols);
                let mut buf = g.clone();
                add_row_bias(&mut buf, &bias);
                for (i, v) in buf.iter().enumerate() {
                    assert_eq!(*v, g[i] + bias[i % cols]);
                }
            }
        }
        // f64: the same order (2 columns × 2 inner entries over 40 rows of small integers, exact).
        let g: Vec<f64> = (0..160).map(|i| (i % 7) as f64).collect();
        let mut out = Vec::new();
        bias_grad_into_on(Isa::Scalar, &g, (2, 2), &mut out);
        let want: Vec<f64> = (0..2)
            .map(|c| (0..160).filter(|i| (i / 2) % 2 == c).map(|i| g[i]).sum())
            .collect();
        assert_eq!(out, want);
        let g64 = vec![1.0f64, 2.0, 3.0, 4.0];
        assert_eq!(col_sums(&g64, 2), vec![4.0, 6.0]);
        assert_eq!(sum(&g64), 10.0);
        assert_eq!(dot(&g64, &g64), 30.0);
        assert_eq!(max(&g64), 4.0);
    }
}
