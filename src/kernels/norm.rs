//! Kernels of the normalization layers (`nn::norm` holds the math): the per-row / per-channel
//! sums of the statistics and of the backward pass, and the affine maps over rows.
//!
//! **Sums.** Each sum kernel returns a pair `(Σ pᵢ, Σ qᵢ)` of terms computed from up to three
//! rows. f32 rows are summed in SIMD lanes in blocks of 256 entries: within a block lane `l`
//! adds entries `l, l + L, …` in f32 (multiply, then add — no FMA), the lanes are combined by
//! pulp's tree, and each block total is added to an f64 accumulator; the `< L` leftover entries
//! form a last block summed one by one. So each f32 partial holds at most 256 terms and every
//! path is within `255·2⁻²⁴·Σ|tᵢ|` (+ the f64 rounding) of the exact sum — the bound the tests
//! assert —; the scalar path (`L = 1`) is the plain blockwise loop. f64 rows add left to right.
//!
//! **Maps** (`y = (x − μ) σ̃⁻¹ γ + β` and the backward row of LayerNorm) have no reduction and
//! are bit-identical on every path.

use super::isa::{self, Isa};
use crate::tensor::Element;
use pulp::{Simd, WithSimd};

/// Entries per f32 partial sum before it is added in f64.
const BLOCK: usize = 256;

/// The pair of terms `(p, q)` of one entry, written once for every lane width (pulp's
/// `Scalar` is the one-lane instance, used for the leftover entries).
trait Terms2: Copy {
    fn terms<S: Simd>(self, s: S, a: S::f32s, b: S::f32s, c: S::f32s) -> (S::f32s, S::f32s);
}

struct Sums2<'a, F> {
    a: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    f: F,
}

impl<F: Terms2> WithSimd for Sums2<'_, F> {
    type Output = (f64, f64);
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> (f64, f64) {
        let n = self.a.len().min(self.b.len()).min(self.c.len());
        let (ha, ta) = S::as_simd_f32s(&self.a[..n]);
        let (hb, tb) = S::as_simd_f32s(&self.b[..n]);
        let (hc, tc) = S::as_simd_f32s(&self.c[..n]);
        let per_block = (BLOCK / S::F32_LANES).max(1);
        let (mut sa, mut sb) = (0.0f64, 0.0f64);
        let mut start = 0;
        while start < ha.len() {
            let end = (start + per_block).min(ha.len());
            let (mut u, mut v) = (simd.splat_f32s(0.0), simd.splat_f32s(0.0));
            for k in start..end {
                let (p, q) = self.f.terms(simd, ha[k], hb[k], hc[k]);
                u = simd.add_f32s(u, p);
                v = simd.add_f32s(v, q);
            }
            sa += simd.reduce_sum_f32s(u) as f64;
            sb += simd.reduce_sum_f32s(v) as f64;
            start = end;
        }
        let one = pulp::Scalar::new();
        let (mut u, mut v) = (0.0f32, 0.0f32);
        for j in 0..ta.len() {
            let (p, q) = self.f.terms(one, ta[j], tb[j], tc[j]);
            u += p;
            v += q;
        }
        (sa + u as f64, sb + v as f64)
    }
}

/// `(d, d²)` with `d = x − k`.
#[derive(Clone, Copy)]
struct Shifted(f32);
impl Terms2 for Shifted {
    #[inline(always)]
    fn terms<S: Simd>(self, s: S, x: S::f32s, _: S::f32s, _: S::f32s) -> (S::f32s, S::f32s) {
        let d = s.sub_f32s(x, s.splat_f32s(self.0));
        (d, s.mul_f32s(d, d))
    }
}

/// `(h, h x̂)` with `h = g γ`, `x̂ = (x − μ) σ̃⁻¹`.
#[derive(Clone, Copy)]
struct LnGrad(f32, f32);
impl Terms2 for LnGrad {
    #[inline(always)]
    fn terms<S: Simd>(self, s: S, g: S::f32s, w: S::f32s, x: S::f32s) -> (S::f32s, S::f32s) {
        let h = s.mul_f32s(g, w);
        let xh = s.mul_f32s(s.sub_f32s(x, s.splat_f32s(self.0)), s.splat_f32s(self.1));
        (h, s.mul_f32s(h, xh))
    }
}

/// `(g', g' (x − μ) σ̃⁻¹)` with `g' = g m` (`m = 1` when unmasked: the same row passed twice
/// would multiply by `g`, so the unmasked kernel passes a flag instead).
#[derive(Clone, Copy)]
struct AffineGrad(f32, f32, bool);
impl Terms2 for AffineGrad {
    #[inline(always)]
    fn terms<S: Simd>(self, s: S, g: S::f32s, m: S::f32s, x: S::f32s) -> (S::f32s, S::f32s) {
        let g = if self.2 { s.mul_f32s(g, m) } else { g };
        let q = s.mul_f32s(
            s.mul_f32s(g, s.sub_f32s(x, s.splat_f32s(self.0))),
            s.splat_f32s(self.1),
        );
        (g, q)
    }
}

fn f32_rows<'a, T: Element>(a: &'a [T], b: &'a [T], c: &'a [T]) -> Option<[&'a [f32]; 3]> {
    Some([T::as_f32(a)?, T::as_f32(b)?, T::as_f32(c)?])
}

/// `(Σ pᵢ, Σ qᵢ)` of `(pᵢ, qᵢ) = f(i)` in f64, left to right (the f64 path).
#[inline(always)]
fn sum2_f64<T: Element>(n: usize, f: impl Fn(usize) -> (T, T)) -> (f64, f64) {
    (0..n).fold((0.0, 0.0), |(a, b), i| {
        let (p, q) = f(i);
        (a + p.as_f64(), b + q.as_f64())
    })
}

/// `(Σ (x − k), Σ (x − k)²)` over a row on `isa`: the shifted sums of the row statistics.
pub fn shifted_sums_on<T: Element>(isa: Isa, x: &[T], k: T) -> (f64, f64) {
    match T::as_f32(x) {
        Some(a) => isa::dispatch_on(
            isa,
            Sums2 {
                a,
                b: a,
                c: a,
                f: Shifted(k.as_f64() as f32),
            },
        ),
        None => sum2_f64(x.len(), |i| {
            let d = x[i] - k;
            (d, d * d)
        }),
    }
}

/// [`shifted_sums_on`] on the selected path.
pub fn shifted_sums<T: Element>(x: &[T], k: T) -> (f64, f64) {
    shifted_sums_on(isa::selected(), x, k)
}

/// `(Σ h, Σ h x̂)` with `h = g γ`, `x̂ = (x − μ) σ̃⁻¹` over a row on `isa`: LayerNorm's
/// backward sums.
pub fn ln_grad_sums_on<T: Element>(
    isa: Isa,
    g: &[T],
    w: &[T],
    x: &[T],
    mu: T,
    rs: T,
) -> (f64, f64) {
    let n = g.len().min(w.len()).min(x.len());
    match f32_rows(g, w, x) {
        Some([a, b, c]) => isa::dispatch_on(
            isa,
            Sums2 {
                a,
                b,
                c,
                f: LnGrad(mu.as_f64() as f32, rs.as_f64() as f32),
            },
        ),
        None => sum2_f64(n, |i| {
            let h = g[i] * w[i];
            (h, h * ((x[i] - mu) * rs))
        }),
    }
}

/// [`ln_grad_sums_on`] on the selected path.
pub fn ln_grad_sums<T: Element>(g: &[T], w: &[T], x: &[T], mu: T, rs: T) -> (f64, f64) {
    ln_grad_sums_on(isa::selected(), g, w, x, mu, rs)
}

/// `(Σ g', Σ g' (x − μ) σ̃⁻¹)` with `g' = m g` (or `g` without a mask) over a segment on `isa`:
/// the affine gradients `(dβ, dγ)` of one channel.
pub fn affine_grad_sums_on<T: Element>(
    isa: Isa,
    g: &[T],
    m: Option<&[T]>,
    x: &[T],
    mu: T,
    rs: T,
) -> (f64, f64) {
    let n = g.len().min(x.len()).min(m.map_or(usize::MAX, |m| m.len()));
    let (g, x) = (&g[..n], &x[..n]);
    match f32_rows(g, m.unwrap_or(g), x) {
        Some([a, b, c]) => isa::dispatch_on(
            isa,
            Sums2 {
                a,
                b,
                c,
                f: AffineGrad(mu.as_f64() as f32, rs.as_f64() as f32, m.is_some()),
            },
        ),
        None => sum2_f64(n, |i| {
            let gi = m.map_or(g[i], |m| g[i] * m[i]);
            (gi, gi * (x[i] - mu) * rs)
        }),
    }
}

/// [`affine_grad_sums_on`] on the selected path.
pub fn affine_grad_sums<T: Element>(g: &[T], m: Option<&[T]>, x: &[T], mu: T, rs: T) -> (f64, f64) {
    affine_grad_sums_on(isa::selected(), g, m, x, mu, rs)
}

/// `y = (x − μ) σ̃⁻¹ γ + β` along a row with per-entry `γ, β` (LayerNorm).
pub fn normalize_row<T: Element>(x: &[T], y: &mut [T], mu: T, rs: T, w: &[T], b: &[T]) {
    let n = y.len();
    let (x, w, b) = (&x[..n], &w[..n], &b[..n]);
    isa::dispatch(|| {
        for i in 0..n {
            y[i] = (x[i] - mu) * rs * w[i] + b[i];
        }
    })
}

/// `y = x a + c` along a segment (one channel: `a = σ̃⁻¹ γ`, `c = β − μ a`).
pub fn scale_shift<T: Element>(x: &[T], y: &mut [T], a: T, c: T) {
    isa::dispatch(|| {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * a + c;
        }
    })
}

/// LayerNorm's backward row (no mask): with `x̂ = (x − μ) σ̃⁻¹`,
/// `dγ += g x̂`, `dβ += g`, and, when `dx` is given, `dx = σ̃⁻¹ (g γ − c₁ − x̂ c₂)`.
#[allow(clippy::too_many_arguments)]
pub fn ln_backward_row<T: Element>(
    x: &[T],
    g: &[T],
    w: &[T],
    mu: T,
    rs: T,
    (c1, c2): (T, T),
    dx: Option<&mut [T]>,
    dw: &mut [T],
    db: &mut [T],
) {
    let l = x.len();
    let (g, w, dw, db) = (&g[..l], &w[..l], &mut dw[..l], &mut db[..l]);
    isa::dispatch(|| match dx {
        Some(dx) => {
            // Equal-length slices and an index loop: no bounds checks, full vectors.
            let dx = &mut dx[..l];
            for i in 0..l {
                let (xv, gv) = (x[i], g[i]);
                let xh = (xv - mu) * rs;
                dw[i] += gv * xh;
                db[i] += gv;
                dx[i] = rs * (gv * w[i] - c1 - xh * c2);
            }
        }
        None => {
            for i in 0..l {
                dw[i] += g[i] * ((x[i] - mu) * rs);
                db[i] += g[i];
            }
        }
    })
}

/// The input gradient of one normalized segment with a shared `γ = wa`:
/// `dx = m σ̃⁻¹ (g wa − c₁ − x̂ c₂)` (`m` only when masked).
#[allow(clippy::too_many_arguments)]
pub fn segment_input_grad<T: Element>(
    x: &[T],
    g: &[T],
    m: Option<&[T]>,
    wa: T,
    mu: T,
    rs: T,
    (c1, c2): (T, T),
    dx: &mut [T],
) {
    isa::dispatch(|| {
        for (i, ((d, &xv), &gv)) in dx.iter_mut().zip(x).zip(g).enumerate() {
            let xh = (xv - mu) * rs;
            let v = rs * (gv * wa - c1 - xh * c2);
            *d = m.map_or(v, |m| v * m[i]);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    /// Every path's sums within `255·2⁻²⁴·Σ|tᵢ|` (+ f64 rounding) of the exact f64 sums of the
    /// same f32 terms, at lengths around the lane widths and the 256-entry blocks; the maps are
    /// checked against their formulas elsewhere (they are plain loops).
    #[test]
    fn norm_sums_on_every_path_within_the_block_bound() {
        let mut rng = Rng::new(7);
        for n in (1..40).chain([255, 256, 257, 263, 511, 512, 520, 1000, 4103]) {
            let v = |rng: &mut Rng| {
                (0..n)
                    .map(|_| 3.0 + rng.normal() as f32)
                    .collect::<Vec<f32>>()
            };
            let (g, w, x) = (v(&mut rng), v(&mut rng), v(&mut rng));
            let m: Vec<f32> = (0..n).map(|i| (i % 3 != 0) as u8 as f32).collect();
            let (k, mu, rs) = (x[0], 2.9f32, 0.7f32);
            // Exact sums of the terms as each path rounds them (terms rounded in f32).
            let exact = |t: &dyn Fn(usize) -> (f32, f32)| {
                let (mut a, mut b, mut aa, mut ab) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
                for i in 0..n {
                    let (p, q) = t(i);
                    a += p as f64;
                    b += q as f64;
                    aa += (p as f64).abs();
                    ab += (q as f64).abs();
                }
                (a, b, aa, ab)
            };
            let check = |got: (f64, f64), want: (f64, f64, f64, f64), what: &str, isa: Isa| {
                let tol = |abs: f64| 255.0 * 2f64.powi(-24) * abs + 1e-12 * abs;
                assert!(
                    (got.0 - want.0).abs() <= tol(want.2),
                    "{what} Σp n = {n} on {isa}"
                );
                assert!(
                    (got.1 - want.1).abs() <= tol(want.3),
                    "{what} Σq n = {n} on {isa}"
                );
            };
            let sh = exact(&|i| {
                let d = x[i] - k;
                (d, d * d)
            });
            let ln = exact(&|i| {
                let h = g[i] * w[i];
                (h, h * ((x[i] - mu) * rs))
            });
            let af = exact(&|i| (g[i], g[i] * (x[i] - mu) * rs));
            let afm = exact(&|i| {
                let gm = g[i] * m[i];
                (gm, gm * (x[i] - mu) * rs)
            });
            for isa in isa::detected() {
                check(shifted_sums_on(isa, &x, k), sh, "shifted", isa);
                check(
                    ln_grad_sums_on(isa, &g, &w, &x, mu, rs),
                    ln,
                    "LayerNorm",
                    isa,
                );
                check(
                    affine_grad_sums_on(isa, &g, None, &x, mu, rs),
                    af,
                    "affine",
                    isa,
                );
                check(
                    affine_grad_sums_on(isa, &g, Some(&m), &x, mu, rs),
                    afm,
                    "masked affine",
                    isa,
                );
            }
            // f64 rows: the left-to-right f64 sums.
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let want: f64 = x64.iter().map(|v| v - x64[0]).sum();
            assert_eq!(shifted_sums(&x64, x64[0]).0, want);
        }
    }
}
