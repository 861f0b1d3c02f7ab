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
use super::reduce::{add_lanes_at, add_row, flush_partials};
use super::{load, store};
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

/// [`normalize_row`] on f32 rows in explicit lanes: a row shorter than LLVM's unrolled vector
/// loop (LayerNorm over 16 features, say) would otherwise run entirely in its scalar remainder.
struct NormalizeRow<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    w: &'a [f32],
    b: &'a [f32],
    mu: f32,
    rs: f32,
}

impl WithSimd for NormalizeRow<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (mu, rs) = (s.splat_f32s(self.mu), s.splat_f32s(self.rs));
        let mut i = 0;
        while i < self.y.len() {
            // ((x − μ) σ̃⁻¹) γ + β: the scalar loop's operations in its order (no FMA).
            let xh = s.mul_f32s(s.sub_f32s(load(s, self.x, i), mu), rs);
            let y = s.add_f32s(s.mul_f32s(xh, load(s, self.w, i)), load(s, self.b, i));
            store(s, self.y, i, y);
            i += S::F32_LANES;
        }
    }
}

/// `y = (x − μ) σ̃⁻¹ γ + β` along a row with per-entry `γ, β` (LayerNorm).
pub fn normalize_row<T: Element>(x: &[T], y: &mut [T], mu: T, rs: T, w: &[T], b: &[T]) {
    let n = y.len();
    let (x, w, b) = (&x[..n], &w[..n], &b[..n]);
    if let (Some([x, w, b]), Some(y)) = (f32_rows(x, w, b), T::as_f32_mut(y)) {
        let (mu, rs) = (mu.as_f64() as f32, rs.as_f64() as f32);
        return isa::dispatch(NormalizeRow { x, y, w, b, mu, rs });
    }
    for i in 0..n {
        y[i] = (x[i] - mu) * rs * w[i] + b[i];
    }
}

/// [`scale_shift`] on f32 segments in explicit lanes.
struct ScaleShift<'a> {
    x: &'a [f32],
    y: &'a mut [f32],
    a: f32,
    c: f32,
}

impl WithSimd for ScaleShift<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (a, c) = (s.splat_f32s(self.a), s.splat_f32s(self.c));
        let mut i = 0;
        while i < self.y.len() {
            let y = s.add_f32s(s.mul_f32s(load(s, self.x, i), a), c);
            store(s, self.y, i, y);
            i += S::F32_LANES;
        }
    }
}

/// `y = x a + c` along a segment (one channel: `a = σ̃⁻¹ γ`, `c = β − μ a`).
pub fn scale_shift<T: Element>(x: &[T], y: &mut [T], a: T, c: T) {
    scale_shift_on(isa::selected(), x, y, a, c)
}

/// [`scale_shift`] on `isa`.
pub fn scale_shift_on<T: Element>(isa: Isa, x: &[T], y: &mut [T], a: T, c: T) {
    let n = y.len().min(x.len());
    let (x, y) = (&x[..n], &mut y[..n]);
    if let (Some(x), Some(y)) = (T::as_f32(x), T::as_f32_mut(y)) {
        let (a, c) = (a.as_f64() as f32, c.as_f64() as f32);
        return isa::dispatch_on(isa, ScaleShift { x, y, a, c });
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * a + c;
    }
}

/// LayerNorm's forward over contiguous rows (no mask, per-entry `γ, β` of the row's length):
/// per row the shifted statistics (`K = x₀`: `σ² = mean((x − K)²) − mean(x − K)²`, clamped at
/// 0), `σ̃⁻¹ = 1/√(σ² + ε)`, then `y = x̂ γ + β`. One dispatch for all the rows, with the row
/// kernels inlined: the same operations as [`shifted_sums`] then [`normalize_row`] row by
/// row (bit-identical), without a dispatch per 16-entry row.
pub fn layer_norm_rows<T: Element>(
    x: &[T],
    w: &[T],
    b: &[T],
    eps: f64,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    layer_norm_rows_on(isa::selected(), x, w, b, eps, y, mean, rstd)
}

/// [`layer_norm_rows`] on `isa`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_rows_on<T: Element>(
    isa: Isa,
    x: &[T],
    w: &[T],
    b: &[T],
    eps: f64,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    let rows = mean.len().min(rstd.len());
    if rows == 0 {
        return;
    }
    let l = x.len() / rows;
    let stats = |v: (f64, f64), k: f64| {
        let inv_n = 1.0 / l as f64;
        let md = v.0 * inv_n;
        (
            k + md,
            1.0 / ((v.1 * inv_n - md * md).max(0.0) + eps).sqrt(),
        )
    };
    if let (Some([xf, wf, bf]), Some(yf), Some(mf), Some(rf)) = (
        f32_rows(x, w, b),
        T::as_f32_mut(y),
        T::as_f32_mut(mean),
        T::as_f32_mut(rstd),
    ) {
        struct Rows<'a, F> {
            x: &'a [f32],
            w: &'a [f32],
            b: &'a [f32],
            y: &'a mut [f32],
            mean: &'a mut [f32],
            rstd: &'a mut [f32],
            l: usize,
            stats: F,
        }
        impl<F: Fn((f64, f64), f64) -> (f64, f64)> WithSimd for Rows<'_, F> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let l = self.l;
                let (w, b) = (&self.w[..l], &self.b[..l]);
                for (r, yr) in self.y.chunks_exact_mut(l).enumerate().take(self.mean.len()) {
                    let xr = &self.x[r * l..(r + 1) * l];
                    let k = xr[0];
                    let sums = Sums2 {
                        a: xr,
                        b: xr,
                        c: xr,
                        f: Shifted(k),
                    }
                    .with_simd(s);
                    let (mu, rs) = (self.stats)(sums, k as f64);
                    let (mu, rs) = (mu as f32, rs as f32);
                    self.mean[r] = mu;
                    self.rstd[r] = rs;
                    NormalizeRow {
                        x: xr,
                        y: yr,
                        w,
                        b,
                        mu,
                        rs,
                    }
                    .with_simd(s);
                }
            }
        }
        let (mean, rstd) = (&mut mf[..rows], &mut rf[..rows]);
        return isa::dispatch_on(
            isa,
            Rows {
                x: xf,
                w: wf,
                b: bf,
                y: yf,
                mean,
                rstd,
                l,
                stats,
            },
        );
    }
    for r in 0..rows {
        let xr = &x[r * l..(r + 1) * l];
        let (mu, rs) = stats(shifted_sums(xr, xr[0]), xr[0].as_f64());
        mean[r] = T::c(mu);
        rstd[r] = T::c(rs);
        normalize_row(xr, &mut y[r * l..(r + 1) * l], mean[r], rstd[r], w, b);
    }
}

/// [`ln_backward_row`] on f32 rows in explicit lanes (see [`NormalizeRow`] for why).
struct LnBackwardRow<'a> {
    x: &'a [f32],
    g: &'a [f32],
    w: &'a [f32],
    mu: f32,
    rs: f32,
    c: (f32, f32),
    dx: Option<&'a mut [f32]>,
    dw: &'a mut [f32],
    db: &'a mut [f32],
}

impl WithSimd for LnBackwardRow<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (mu, rs) = (s.splat_f32s(self.mu), s.splat_f32s(self.rs));
        let (c1, c2) = (s.splat_f32s(self.c.0), s.splat_f32s(self.c.1));
        let (x, g, w, dw, db) = (self.x, self.g, self.w, self.dw, self.db);
        let mut dx = self.dx;
        let mut i = 0;
        while i < x.len() {
            let (xv, gv) = (load(s, x, i), load(s, g, i));
            let xh = s.mul_f32s(s.sub_f32s(xv, mu), rs);
            store(s, dw, i, s.add_f32s(load(s, dw, i), s.mul_f32s(gv, xh)));
            add_lanes_at(s, db, i, gv);
            if let Some(dx) = dx.as_deref_mut() {
                // σ̃⁻¹ (g γ − c₁ − x̂ c₂), as the scalar loop groups it.
                let h = s.sub_f32s(s.mul_f32s(gv, load(s, w, i)), c1);
                let d = s.mul_f32s(rs, s.sub_f32s(h, s.mul_f32s(xh, c2)));
                store(s, dx, i, d);
            }
            i += S::F32_LANES;
        }
    }
}

/// LayerNorm's backward row (no mask): with `x̂ = (x − μ) σ̃⁻¹`,
/// `dγ += g x̂`, `dβ += g` (the bias-gradient step of [`crate::kernels::reduce`], so `dβ` over
/// the rows is the one bias-gradient kernel's), and, when `dx` is given,
/// `dx = σ̃⁻¹ (g γ − c₁ − x̂ c₂)`.
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
    if let (Some([x, g, w]), Some(dwf), Some(dbf)) =
        (f32_rows(x, g, w), T::as_f32_mut(dw), T::as_f32_mut(db))
    {
        let f = |v: T| v.as_f64() as f32;
        let dx = dx.map(|d| T::as_f32_mut(&mut d[..l]).expect("T is f32"));
        return isa::dispatch(LnBackwardRow {
            x,
            g,
            w,
            mu: f(mu),
            rs: f(rs),
            c: (f(c1), f(c2)),
            dx,
            dw: dwf,
            db: dbf,
        });
    }
    match dx {
        Some(dx) => {
            let dx = &mut dx[..l];
            for i in 0..l {
                let (xv, gv) = (x[i], g[i]);
                let xh = (xv - mu) * rs;
                dw[i] += gv * xh;
                dx[i] = rs * (gv * w[i] - c1 - xh * c2);
            }
        }
        None => {
            for i in 0..l {
                dw[i] += g[i] * ((x[i] - mu) * rs);
            }
        }
    }
    add_row(g, db);
}

/// LayerNorm's backward over contiguous rows (no mask): per row `c₁ = mean(h)`,
/// `c₂ = mean(h x̂)` with `h = g γ` ([`ln_grad_sums`]), then [`ln_backward_row`] into the
/// T partials `dwt, dbt`, which are added into the f64 totals `dw, db` after every
/// `flush` rows and after the last (so a partial holds few terms). One dispatch for all the
/// rows, the row kernels inlined: bit-identical to calling them row by row.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_rows<T: Element>(
    x: &[T],
    g: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    flush: usize,
    dx: Option<&mut [T]>,
    parts: (&mut [T], &mut [T]),
    totals: (&mut [f64], &mut [f64]),
) {
    let isa = isa::selected();
    layer_norm_backward_rows_on(isa, x, g, w, mean, rstd, flush, dx, parts, totals)
}

/// [`layer_norm_backward_rows`] on `isa`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward_rows_on<T: Element>(
    isa: Isa,
    x: &[T],
    g: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    flush: usize,
    mut dx: Option<&mut [T]>,
    (dwt, dbt): (&mut [T], &mut [T]),
    (dw, db): (&mut [f64], &mut [f64]),
) {
    let rows = mean.len().min(rstd.len());
    if rows == 0 {
        return;
    }
    let l = x.len() / rows;
    let flush = flush.max(1);
    let f32_dx = match dx.as_deref_mut() {
        Some(d) => T::as_f32_mut(d).map(Some),
        None => Some(None),
    };
    if let (Some([xf, gf, wf]), Some(dxf), Some(dwf), Some(dbf), Some(mf), Some(rf)) = (
        f32_rows(x, g, w),
        f32_dx,
        T::as_f32_mut(dwt),
        T::as_f32_mut(dbt),
        T::as_f32(mean),
        T::as_f32(rstd),
    ) {
        struct Rows<'a> {
            x: &'a [f32],
            g: &'a [f32],
            w: &'a [f32],
            mean: &'a [f32],
            rstd: &'a [f32],
            l: usize,
            flush: usize,
            dx: Option<&'a mut [f32]>,
            dwt: &'a mut [f32],
            dbt: &'a mut [f32],
            dw: &'a mut [f64],
            db: &'a mut [f64],
        }
        impl WithSimd for Rows<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let (l, rows) = (self.l, self.mean.len());
                let inv_l = 1.0 / l as f64;
                let w = &self.w[..l];
                let (dwt, dbt) = (&mut self.dwt[..l], &mut self.dbt[..l]);
                let mut dx = self.dx;
                for r in 0..rows {
                    let xr = &self.x[r * l..(r + 1) * l];
                    let gr = &self.g[r * l..(r + 1) * l];
                    let (mu, rs) = (self.mean[r], self.rstd[r]);
                    let (s1, s2) = Sums2 {
                        a: gr,
                        b: w,
                        c: xr,
                        f: LnGrad(mu, rs),
                    }
                    .with_simd(s);
                    let c = ((s1 * inv_l) as f32, (s2 * inv_l) as f32);
                    let dxr = dx.as_deref_mut().map(|d| &mut d[r * l..(r + 1) * l]);
                    LnBackwardRow {
                        x: xr,
                        g: gr,
                        w,
                        mu,
                        rs,
                        c,
                        dx: dxr,
                        dw: &mut *dwt,
                        db: &mut *dbt,
                    }
                    .with_simd(s);
                    if (r + 1) % self.flush == 0 || r + 1 == rows {
                        flush_partials(dwt, self.dw);
                        flush_partials(dbt, self.db);
                    }
                }
            }
        }
        let (mean, rstd) = (&mf[..rows], &rf[..rows]);
        return isa::dispatch_on(
            isa,
            Rows {
                x: xf,
                g: gf,
                w: wf,
                mean,
                rstd,
                l,
                flush,
                dx: dxf,
                dwt: dwf,
                dbt: dbf,
                dw,
                db,
            },
        );
    }
    let inv_l = 1.0 / l as f64;
    for r in 0..rows {
        let xr = &x[r * l..(r + 1) * l];
        let gr = &g[r * l..(r + 1) * l];
        let (mu, rs) = (mean[r], rstd[r]);
        let (s1, s2) = ln_grad_sums(gr, w, xr, mu, rs);
        let c = (T::c(s1 * inv_l), T::c(s2 * inv_l));
        let dxr = dx.as_deref_mut().map(|d| &mut d[r * l..(r + 1) * l]);
        ln_backward_row(xr, gr, w, mu, rs, c, dxr, dwt, dbt);
        if (r + 1) % flush == 0 || r + 1 == rows {
            flush_partials(dwt, dw);
            flush_partials(dbt, db);
        }
    }
}

/// [`segment_input_grad`] without a mask, on f32 segments in explicit lanes.
struct SegmentInputGrad<'a> {
    x: &'a [f32],
    g: &'a [f32],
    wa: f32,
    mu: f32,
    rs: f32,
    c: (f32, f32),
    dx: &'a mut [f32],
}

impl WithSimd for SegmentInputGrad<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (mu, rs, wa) = (
            s.splat_f32s(self.mu),
            s.splat_f32s(self.rs),
            s.splat_f32s(self.wa),
        );
        let (c1, c2) = (s.splat_f32s(self.c.0), s.splat_f32s(self.c.1));
        let mut i = 0;
        while i < self.dx.len() {
            let xh = s.mul_f32s(s.sub_f32s(load(s, self.x, i), mu), rs);
            let h = s.sub_f32s(s.mul_f32s(load(s, self.g, i), wa), c1);
            store(
                s,
                self.dx,
                i,
                s.mul_f32s(rs, s.sub_f32s(h, s.mul_f32s(xh, c2))),
            );
            i += S::F32_LANES;
        }
    }
}

/// The layout of GroupNorm's rows: `seg` segments of `seg_len` entries per row; segment `s` of
/// row `r` uses the affine index `(r mod period) seg + s`.
#[derive(Clone, Copy, Debug)]
pub struct Segments {
    pub seg: usize,
    pub seg_len: usize,
    pub period: usize,
}

/// GroupNorm's forward over contiguous rows (no mask; the first row is row `r0` of the
/// tensor, for the affine index): per row the statistics of [`layer_norm_rows`], then per
/// segment `y = x a + c` with `a = σ̃⁻¹ γ`, `c = β − μ a` ([`scale_shift`]). One dispatch for all
/// rows, bit-identical to the row-by-row calls.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_rows_on<T: Element>(
    isa: Isa,
    x: &[T],
    w: &[T],
    b: &[T],
    lay: Segments,
    r0: usize,
    eps: f64,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    let rows = mean.len().min(rstd.len());
    let l = lay.seg * lay.seg_len;
    if rows == 0 || l == 0 {
        return;
    }
    let stats = move |v: (f64, f64), k: f64| {
        let inv_n = 1.0 / l as f64;
        let md = v.0 * inv_n;
        (
            k + md,
            1.0 / ((v.1 * inv_n - md * md).max(0.0) + eps).sqrt(),
        )
    };
    let base = move |r: usize| ((r0 + r) % lay.period) * lay.seg;
    if let (Some([xf, wf, bf]), Some(yf), Some(mf), Some(rf)) = (
        f32_rows(x, w, b),
        T::as_f32_mut(y),
        T::as_f32_mut(mean),
        T::as_f32_mut(rstd),
    ) {
        struct Rows<'a, F, B> {
            x: &'a [f32],
            w: &'a [f32],
            b: &'a [f32],
            y: &'a mut [f32],
            mean: &'a mut [f32],
            rstd: &'a mut [f32],
            lay: Segments,
            stats: F,
            base: B,
        }
        impl<F: Fn((f64, f64), f64) -> (f64, f64), B: Fn(usize) -> usize> WithSimd for Rows<'_, F, B> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let (sl, l) = (self.lay.seg_len, self.lay.seg * self.lay.seg_len);
                for (r, yr) in self.y.chunks_exact_mut(l).enumerate().take(self.mean.len()) {
                    let xr = &self.x[r * l..(r + 1) * l];
                    let k = xr[0];
                    let sums = Sums2 {
                        a: xr,
                        b: xr,
                        c: xr,
                        f: Shifted(k),
                    }
                    .with_simd(s);
                    let (mu, rs) = (self.stats)(sums, k as f64);
                    let (mu, rs) = (mu as f32, rs as f32);
                    self.mean[r] = mu;
                    self.rstd[r] = rs;
                    let base = (self.base)(r);
                    for (j, (ys, xs)) in yr.chunks_mut(sl).zip(xr.chunks(sl)).enumerate() {
                        let a = rs * self.w[base + j];
                        let c = self.b[base + j] - mu * a;
                        ScaleShift { x: xs, y: ys, a, c }.with_simd(s);
                    }
                }
            }
        }
        let (mean, rstd) = (&mut mf[..rows], &mut rf[..rows]);
        let rows = Rows {
            x: xf,
            w: wf,
            b: bf,
            y: yf,
            mean,
            rstd,
            lay,
            stats,
            base,
        };
        return isa::dispatch_on(isa, rows);
    }
    for r in 0..rows {
        let xr = &x[r * l..(r + 1) * l];
        let (mu, rs) = stats(shifted_sums(xr, xr[0]), xr[0].as_f64());
        mean[r] = T::c(mu);
        rstd[r] = T::c(rs);
        let (mu, rs) = (mean[r], rstd[r]);
        let yr = &mut y[r * l..(r + 1) * l];
        for (j, (ys, xs)) in yr
            .chunks_mut(lay.seg_len)
            .zip(xr.chunks(lay.seg_len))
            .enumerate()
        {
            let a = rs * w[base(r) + j];
            scale_shift_on(isa, xs, ys, a, b[base(r) + j] - mu * a);
        }
    }
}

/// GroupNorm's backward over contiguous rows (no mask; rows from row `r0` of the tensor):
/// per segment the affine gradients `(dβ, dγ) += (Σ g, Σ g x̂)` ([`affine_grad_sums`]) into
/// the f64 totals, `c₁ = Σ_s γ_s dβ_s / L`, `c₂ = Σ_s γ_s dγ_s / L` over the row, then, when `dx`
/// is given, per segment `dx = σ̃⁻¹ (g γ_s − c₁ − x̂ c₂)`. One dispatch for all rows,
/// bit-identical to the segment-by-segment calls.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward_rows_on<T: Element>(
    isa: Isa,
    x: &[T],
    g: &[T],
    w: &[T],
    mean: &[T],
    rstd: &[T],
    lay: Segments,
    r0: usize,
    mut dx: Option<&mut [T]>,
    (dw, db): (&mut [f64], &mut [f64]),
) {
    let rows = mean.len().min(rstd.len());
    let l = lay.seg * lay.seg_len;
    if rows == 0 || l == 0 {
        return;
    }
    let f32_dx = match dx.as_deref_mut() {
        Some(d) => T::as_f32_mut(d).map(Some),
        None => Some(None),
    };
    if let (Some([xf, gf, wf]), Some(dxf), Some(mf), Some(rf)) =
        (f32_rows(x, g, w), f32_dx, T::as_f32(mean), T::as_f32(rstd))
    {
        struct Rows<'a> {
            x: &'a [f32],
            g: &'a [f32],
            w: &'a [f32],
            mean: &'a [f32],
            rstd: &'a [f32],
            lay: Segments,
            r0: usize,
            dx: Option<&'a mut [f32]>,
            dw: &'a mut [f64],
            db: &'a mut [f64],
        }
        impl WithSimd for Rows<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let (sl, l) = (self.lay.seg_len, self.lay.seg * self.lay.seg_len);
                let n = l as f64;
                let mut dx = self.dx;
                for r in 0..self.mean.len() {
                    let xr = &self.x[r * l..(r + 1) * l];
                    let gr = &self.g[r * l..(r + 1) * l];
                    let (mu, rs) = (self.mean[r], self.rstd[r]);
                    let base = ((self.r0 + r) % self.lay.period) * self.lay.seg;
                    let (mut s1, mut s2) = (0.0f64, 0.0f64);
                    for (j, (xs, gs)) in xr.chunks(sl).zip(gr.chunks(sl)).enumerate() {
                        let f = AffineGrad(mu, rs, false);
                        let (gb, gw) = Sums2 {
                            a: gs,
                            b: gs,
                            c: xs,
                            f,
                        }
                        .with_simd(s);
                        let (a, wa) = (base + j, self.w[base + j] as f64);
                        self.dw[a] += gw;
                        self.db[a] += gb;
                        s1 += wa * gb;
                        s2 += wa * gw;
                    }
                    let Some(dx) = dx.as_deref_mut() else {
                        continue;
                    };
                    let c = ((s1 / n) as f32, (s2 / n) as f32);
                    let dxr = &mut dx[r * l..(r + 1) * l];
                    for (j, ((ds, xs), gs)) in dxr
                        .chunks_mut(sl)
                        .zip(xr.chunks(sl))
                        .zip(gr.chunks(sl))
                        .enumerate()
                    {
                        let wa = self.w[base + j];
                        SegmentInputGrad {
                            x: xs,
                            g: gs,
                            wa,
                            mu,
                            rs,
                            c,
                            dx: ds,
                        }
                        .with_simd(s);
                    }
                }
            }
        }
        let (mean, rstd) = (&mf[..rows], &rf[..rows]);
        let rows = Rows {
            x: xf,
            g: gf,
            w: wf,
            mean,
            rstd,
            lay,
            r0,
            dx: dxf,
            dw,
            db,
        };
        return isa::dispatch_on(isa, rows);
    }
    let n = l as f64;
    for r in 0..rows {
        let xr = &x[r * l..(r + 1) * l];
        let gr = &g[r * l..(r + 1) * l];
        let (mu, rs) = (mean[r], rstd[r]);
        let base = ((r0 + r) % lay.period) * lay.seg;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for (j, (xs, gs)) in xr
            .chunks(lay.seg_len)
            .zip(gr.chunks(lay.seg_len))
            .enumerate()
        {
            let (gb, gw) = affine_grad_sums_on(isa, gs, None, xs, mu, rs);
            dw[base + j] += gw;
            db[base + j] += gb;
            s1 += w[base + j].as_f64() * gb;
            s2 += w[base + j].as_f64() * gw;
        }
        let Some(dx) = dx.as_deref_mut() else {
            continue;
        };
        let c = (T::c(s1 / n), T::c(s2 / n));
        let dxr = &mut dx[r * l..(r + 1) * l];
        for (j, ((ds, xs), gs)) in dxr
            .chunks_mut(lay.seg_len)
            .zip(xr.chunks(lay.seg_len))
            .zip(gr.chunks(lay.seg_len))
            .enumerate()
        {
            segment_input_grad(xs, gs, None, w[base + j], mu, rs, c, ds);
        }
    }
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

/// BatchNorm's layout of an `(N, C, F)` input: segment `(s, ch)` — channel `ch` of sample
/// `s` — is the `f` entries from `(s c + ch) f`.
#[derive(Clone, Copy, Debug)]
pub struct Channels {
    pub n: usize,
    pub c: usize,
    pub f: usize,
}

/// [`Sums2`] over the `n` strided segments of one channel in one dispatch. Segments shorter
/// than a block share the accumulators: their whole vectors add into the same lanes, their
/// leftover entries into one scalar pair, and both go to f64 before a block would pass
/// [`BLOCK`] entries — so the bound of the module docs holds, without a dispatch and two
/// horizontal sums per 16-entry segment. Longer segments are summed one by one.
struct ChannelSums2<'a, F> {
    a: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    lay: Channels,
    ch: usize,
    f: F,
}

impl<F: Terms2> WithSimd for ChannelSums2<'_, F> {
    type Output = (f64, f64);
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> (f64, f64) {
        let Channels { n, c, f } = self.lay;
        let ch = self.ch;
        fn segment(v: &[f32], o: usize, f: usize) -> &[f32] {
            &v[o..o + f]
        }
        let seg = |v, s: usize| segment(v, (s * c + ch) * f, f);
        let (mut sa, mut sb) = (0.0f64, 0.0f64);
        if f >= BLOCK {
            for s in 0..n {
                let (a, b, c) = (seg(self.a, s), seg(self.b, s), seg(self.c, s));
                let (p, q) = Sums2 { a, b, c, f: self.f }.with_simd(simd);
                sa += p;
                sb += q;
            }
            return (sa, sb);
        }
        let one = pulp::Scalar::new();
        let (mut u, mut v) = (simd.splat_f32s(0.0), simd.splat_f32s(0.0));
        let (mut tu, mut tv) = (0.0f32, 0.0f32);
        let mut in_block = 0;
        for s in 0..n {
            if in_block + f > BLOCK {
                sa += simd.reduce_sum_f32s(u) as f64 + tu as f64;
                sb += simd.reduce_sum_f32s(v) as f64 + tv as f64;
                (u, v) = (simd.splat_f32s(0.0), simd.splat_f32s(0.0));
                (tu, tv) = (0.0, 0.0);
                in_block = 0;
            }
            in_block += f;
            let (ha, ta) = S::as_simd_f32s(seg(self.a, s));
            let (hb, tb) = S::as_simd_f32s(seg(self.b, s));
            let (hc, tc) = S::as_simd_f32s(seg(self.c, s));
            for k in 0..ha.len() {
                let (p, q) = self.f.terms(simd, ha[k], hb[k], hc[k]);
                u = simd.add_f32s(u, p);
                v = simd.add_f32s(v, q);
            }
            for j in 0..ta.len() {
                let (p, q) = self.f.terms(one, ta[j], tb[j], tc[j]);
                tu += p;
                tv += q;
            }
        }
        (
            sa + simd.reduce_sum_f32s(u) as f64 + tu as f64,
            sb + simd.reduce_sum_f32s(v) as f64 + tv as f64,
        )
    }
}

/// The f64 path of the channel sums: per segment left to right, the segments in order.
fn channel_sum2_f64<T: Element>(
    lay: Channels,
    ch: usize,
    f: impl Fn(usize) -> (T, T),
) -> (f64, f64) {
    let mut acc = (0.0, 0.0);
    for s in 0..lay.n {
        let o = (s * lay.c + ch) * lay.f;
        for i in o..o + lay.f {
            let (p, q) = f(i);
            acc = (acc.0 + p.as_f64(), acc.1 + q.as_f64());
        }
    }
    acc
}

/// `(Σ (x − k), Σ (x − k)²)` over the `n` segments of channel `ch` on `isa`: BatchNorm's
/// shifted sums, one dispatch per channel.
pub fn channel_shifted_sums_on<T: Element>(
    isa: Isa,
    x: &[T],
    lay: Channels,
    ch: usize,
    k: T,
) -> (f64, f64) {
    match T::as_f32(x) {
        Some(a) => isa::dispatch_on(
            isa,
            ChannelSums2 {
                a,
                b: a,
                c: a,
                lay,
                ch,
                f: Shifted(k.as_f64() as f32),
            },
        ),
        None => channel_sum2_f64(lay, ch, |i| {
            let d = x[i] - k;
            (d, d * d)
        }),
    }
}

/// [`channel_shifted_sums_on`] on the selected path.
pub fn channel_shifted_sums<T: Element>(x: &[T], lay: Channels, ch: usize, k: T) -> (f64, f64) {
    channel_shifted_sums_on(isa::selected(), x, lay, ch, k)
}

/// `(Σ g', Σ g' (x − μ) σ̃⁻¹)` with `g' = m g` (or `g`) over the `n` segments of channel `ch`
/// on `isa`: BatchNorm's `(dβ, dγ)` of one channel, one dispatch.
#[allow(clippy::too_many_arguments)]
pub fn channel_affine_grad_sums_on<T: Element>(
    isa: Isa,
    g: &[T],
    m: Option<&[T]>,
    x: &[T],
    lay: Channels,
    ch: usize,
    mu: T,
    rs: T,
) -> (f64, f64) {
    match f32_rows(g, m.unwrap_or(g), x) {
        Some([a, b, c]) => isa::dispatch_on(
            isa,
            ChannelSums2 {
                a,
                b,
                c,
                lay,
                ch,
                f: AffineGrad(mu.as_f64() as f32, rs.as_f64() as f32, m.is_some()),
            },
        ),
        None => channel_sum2_f64(lay, ch, |i| {
            let gi = m.map_or(g[i], |m| g[i] * m[i]);
            (gi, gi * (x[i] - mu) * rs)
        }),
    }
}

/// [`channel_affine_grad_sums_on`] on the selected path.
#[allow(clippy::too_many_arguments)]
pub fn channel_affine_grad_sums<T: Element>(
    g: &[T],
    m: Option<&[T]>,
    x: &[T],
    lay: Channels,
    ch: usize,
    mu: T,
    rs: T,
) -> (f64, f64) {
    channel_affine_grad_sums_on(isa::selected(), g, m, x, lay, ch, mu, rs)
}

/// `y = x a + c` over whole segments of `f` entries, one dispatch: segment `i` of `x`/`y` is
/// segment `seg0 + i` of the tensor, channel `(seg0 + i) mod C` with `C = a.len()` (BatchNorm's
/// forward map, `a = σ̃⁻¹ γ`, `c = β − μ a`). Bit-identical to [`scale_shift`] per segment.
pub fn channel_scale_shift_on<T: Element>(
    isa: Isa,
    x: &[T],
    y: &mut [T],
    f: usize,
    seg0: usize,
    (a, c): (&[T], &[T]),
) {
    let chans = a.len().min(c.len());
    if f == 0 || chans == 0 {
        return;
    }
    if let (Some(xf), Some(yf), Some(af), Some(cf)) =
        (T::as_f32(x), T::as_f32_mut(y), T::as_f32(a), T::as_f32(c))
    {
        struct Segs<'a> {
            x: &'a [f32],
            y: &'a mut [f32],
            f: usize,
            seg0: usize,
            a: &'a [f32],
            c: &'a [f32],
        }
        impl WithSimd for Segs<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let chans = self.a.len();
                for (i, (ys, xs)) in self
                    .y
                    .chunks_mut(self.f)
                    .zip(self.x.chunks(self.f))
                    .enumerate()
                {
                    let ch = (self.seg0 + i) % chans;
                    let (a, c) = (self.a[ch], self.c[ch]);
                    ScaleShift { x: xs, y: ys, a, c }.with_simd(s);
                }
            }
        }
        let (a, c) = (&af[..chans], &cf[..chans]);
        return isa::dispatch_on(
            isa,
            Segs {
                x: xf,
                y: yf,
                f,
                seg0,
                a,
                c,
            },
        );
    }
    for (i, (ys, xs)) in y.chunks_mut(f).zip(x.chunks(f)).enumerate() {
        let ch = (seg0 + i) % chans;
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = x * a[ch] + c[ch];
        }
    }
}

/// BatchNorm's input gradient of one channel: `a = σ̃⁻¹ γ`, the batch means `c₁ = S₁/n`,
/// `c₂ = S₂/n` of the affine gradients (0 in evaluation), and the statistics `μ`, `σ̃⁻¹`.
#[derive(Clone, Copy, Debug)]
pub struct ChannelGrad<T> {
    pub a: T,
    pub c1: T,
    pub c2: T,
    pub mu: T,
    pub rs: T,
}

/// `dx = a (g − c₁ − x̂ c₂)`, `x̂ = (x − μ) σ̃⁻¹`, over whole segments of `f` entries, one
/// dispatch; segment `i` is segment `seg0 + i` of the tensor, channel `(seg0 + i) mod C` with
/// `C = coef.len()`. The same operations in the same order on every path (bit-identical).
pub fn channel_input_grad_on<T: Element>(
    isa: Isa,
    x: &[T],
    g: &[T],
    dx: &mut [T],
    f: usize,
    seg0: usize,
    coef: &[ChannelGrad<T>],
) {
    if f == 0 || coef.is_empty() {
        return;
    }
    if let (Some(xf), Some(gf), Some(df)) = (T::as_f32(x), T::as_f32(g), T::as_f32_mut(dx)) {
        struct Segs<'a> {
            x: &'a [f32],
            g: &'a [f32],
            dx: &'a mut [f32],
            f: usize,
            seg0: usize,
            coef: &'a [ChannelGrad<f32>],
        }
        impl WithSimd for Segs<'_> {
            type Output = ();
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) {
                let chans = self.coef.len();
                for (i, ds) in self.dx.chunks_mut(self.f).enumerate() {
                    let o = i * self.f;
                    let k = self.coef[(self.seg0 + i) % chans];
                    let (a, c1, c2) = (s.splat_f32s(k.a), s.splat_f32s(k.c1), s.splat_f32s(k.c2));
                    let (mu, rs) = (s.splat_f32s(k.mu), s.splat_f32s(k.rs));
                    let (xs, gs) = (&self.x[o..o + ds.len()], &self.g[o..o + ds.len()]);
                    let mut j = 0;
                    while j < ds.len() {
                        let xh = s.mul_f32s(s.sub_f32s(load(s, xs, j), mu), rs);
                        let h = s.sub_f32s(s.sub_f32s(load(s, gs, j), c1), s.mul_f32s(xh, c2));
                        store(s, ds, j, s.mul_f32s(a, h));
                        j += S::F32_LANES;
                    }
                }
            }
        }
        let coef: Vec<ChannelGrad<f32>> = coef
            .iter()
            .map(|k| ChannelGrad {
                a: k.a.as_f64() as f32,
                c1: k.c1.as_f64() as f32,
                c2: k.c2.as_f64() as f32,
                mu: k.mu.as_f64() as f32,
                rs: k.rs.as_f64() as f32,
            })
            .collect();
        let segs = Segs {
            x: xf,
            g: gf,
            dx: df,
            f,
            seg0,
            coef: &coef,
        };
        return isa::dispatch_on(isa, segs);
    }
    let chans = coef.len();
    for (i, ds) in dx.chunks_mut(f).enumerate() {
        let k = coef[(seg0 + i) % chans];
        let o = i * f;
        for ((d, &xv), &gv) in ds.iter_mut().zip(&x[o..]).zip(&g[o..]) {
            *d = k.a * (gv - k.c1 - (xv - k.mu) * k.rs * k.c2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    /// Every path's sums within `255·2⁻²⁴·Σ|tᵢ|` (+ f64 rounding) of the exact f64 sums of the
    /// same f32 terms, at lengths around the lane widths and the 256-entry blocks; the maps are
    /// checked against their formulas elsewhere (they are plain loops).
    /// The LayerNorm row kernels and the channel map on every path the CPU has, at row
    /// lengths around the lane widths: the maps are elementwise, so `y` is bit-identical to
    /// its formula `((x − μ) σ̃⁻¹) γ + β` with the path's own statistics and `scale_shift` to
    /// `x a + c`; the statistics and the backward sums go through the blockwise sum kernel, so
    /// they match the scalar path within its bound (relative 1e-5 here, for O(1) data).
    #[test]
    fn layer_norm_rows_on_every_path() {
        let mut rng = Rng::new(11);
        for l in [1usize, 2, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257] {
            let rows = 37;
            let v = |rng: &mut Rng, n: usize| {
                (0..n)
                    .map(|_| 1.5 + rng.normal() as f32)
                    .collect::<Vec<f32>>()
            };
            let (x, g) = (v(&mut rng, rows * l), v(&mut rng, rows * l));
            let (w, b) = (v(&mut rng, l), v(&mut rng, l));
            let run = |p: Isa| {
                let (mut y, mut mu, mut rs) =
                    (vec![0f32; rows * l], vec![0f32; rows], vec![0f32; rows]);
                layer_norm_rows_on(p, &x, &w, &b, 1e-5, &mut y, &mut mu, &mut rs);
                let mut dx = vec![0f32; rows * l];
                let (mut dwt, mut dbt) = (vec![0f32; l], vec![0f32; l]);
                let (mut dw, mut db) = (vec![0f64; l], vec![0f64; l]);
                let parts = (&mut dwt[..], &mut dbt[..]);
                let tot = (&mut dw[..], &mut db[..]);
                layer_norm_backward_rows_on(p, &x, &g, &w, &mu, &rs, 8, Some(&mut dx), parts, tot);
                let mut z = vec![0f32; l];
                scale_shift_on(p, &x[..l], &mut z, 0.7, -0.3);
                (y, mu, rs, dx, dw, db, z)
            };
            let want = run(Isa::Scalar);
            let close = |a: &[f32], b: &[f32], what: &str, p: Isa| {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * scale,
                        "{what} on {p} at l={l} [{i}]: {u} vs {v}"
                    );
                }
            };
            for p in isa::detected() {
                let got = run(p);
                for r in 0..rows {
                    for i in 0..l {
                        let e = ((x[r * l + i] - got.1[r]) * got.2[r]) * w[i] + b[i];
                        assert_eq!(got.0[r * l + i].to_bits(), e.to_bits(), "y on {p}, l={l}");
                    }
                }
                for (z, &xv) in got.6.iter().zip(&x[..l]) {
                    let e = xv * 0.7 - 0.3;
                    assert_eq!(z.to_bits(), e.to_bits(), "scale_shift on {p}");
                }
                close(&got.1, &want.1, "mean", p);
                close(&got.2, &want.2, "rstd", p);
                close(&got.3, &want.3, "dx", p);
                let f = |v: &[f64]| v.iter().map(|&t| t as f32).collect::<Vec<_>>();
                close(&f(&got.4), &f(&want.4), "dw", p);
                close(&f(&got.5), &f(&want.5), "db", p);
            }
        }
    }

    /// GroupNorm's row kernels on every path: `y` bit-identical to `x a + c` with
    /// `a = σ̃⁻¹ γ`, `c = β − μ a` from the path's own statistics and the affine index
    /// `((r0 + r) mod period) seg + s`; `dx`, `dγ`, `dβ` within relative 1e-5 of the scalar path.
    #[test]
    fn group_norm_rows_on_every_path() {
        let mut rng = Rng::new(12);
        for (seg, seg_len, period) in [(2usize, 16usize, 4usize), (1, 16, 8), (3, 7, 2), (4, 33, 1)]
        {
            let (rows, r0, l) = (24, 5, seg * seg_len);
            let lay = Segments {
                seg,
                seg_len,
                period,
            };
            let v = |rng: &mut Rng, n: usize| {
                (0..n)
                    .map(|_| 0.5 + rng.normal() as f32)
                    .collect::<Vec<f32>>()
            };
            let (x, g) = (v(&mut rng, rows * l), v(&mut rng, rows * l));
            let (w, b) = (v(&mut rng, seg * period), v(&mut rng, seg * period));
            let run = |p: Isa| {
                let (mut y, mut mu, mut rs) =
                    (vec![0f32; rows * l], vec![0f32; rows], vec![0f32; rows]);
                group_norm_rows_on(p, &x, &w, &b, lay, r0, 1e-5, &mut y, &mut mu, &mut rs);
                let mut dx = vec![0f32; rows * l];
                let (mut dw, mut db) = (vec![0f64; w.len()], vec![0f64; w.len()]);
                let tot = (&mut dw[..], &mut db[..]);
                group_norm_backward_rows_on(p, &x, &g, &w, &mu, &rs, lay, r0, Some(&mut dx), tot);
                let f = |v: Vec<f64>| v.into_iter().map(|t| t as f32).collect::<Vec<_>>();
                (y, mu, rs, dx, f(dw), f(db))
            };
            let want = run(Isa::Scalar);
            let close = |a: &[f32], b: &[f32], what: &str, p: Isa| {
                let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * scale,
                        "{what} on {p} [{i}]: {u} vs {v}"
                    );
                }
            };
            for p in isa::detected() {
                let got = run(p);
                for r in 0..rows {
                    let base = ((r0 + r) % period) * seg;
                    for i in 0..l {
                        let a = got.2[r] * w[base + i / seg_len];
                        let c = b[base + i / seg_len] - got.1[r] * a;
                        let e = x[r * l + i] * a + c;
                        assert_eq!(got.0[r * l + i].to_bits(), e.to_bits(), "y on {p}");
                    }
                }
                close(&got.1, &want.1, "mean", p);
                close(&got.2, &want.2, "rstd", p);
                close(&got.3, &want.3, "dx", p);
                close(&got.4, &want.4, "dw", p);
                close(&got.5, &want.5, "db", p);
            }
        }
    }

    /// BatchNorm's channel kernels on every path, for segment lengths around the lane widths
    /// and the 256-entry block: the channel sums within the block bound of the exact sums of
    /// the same f32 terms (they share accumulators across segments); the forward map and the
    /// input gradient bit-identical to their scalar formulas (elementwise, same order).
    #[test]
    fn channel_kernels_on_every_path() {
        let mut rng = Rng::new(5);
        for (n, c, f) in [
            (32, 8, 16),
            (3, 2, 1),
            (5, 3, 7),
            (4, 2, 17),
            (2, 3, 255),
            (3, 1, 300),
            (40, 2, 9),
        ] {
            let lay = Channels { n, c, f };
            let len = n * c * f;
            let v = |rng: &mut Rng| {
                (0..len)
                    .map(|_| 3.0 + rng.normal() as f32)
                    .collect::<Vec<f32>>()
            };
            let (g, x) = (v(&mut rng), v(&mut rng));
            let m: Vec<f32> = (0..len).map(|i| (i % 3 != 0) as u8 as f32).collect();
            let (mu, rs) = (2.9f32, 0.7f32);
            for ch in 0..c {
                let idx: Vec<usize> = (0..n)
                    .flat_map(|s| (s * c + ch) * f..(s * c + ch + 1) * f)
                    .collect();
                let exact = |t: &dyn Fn(usize) -> (f32, f32)| {
                    idx.iter()
                        .fold((0.0, 0.0, 0.0, 0.0), |a: (f64, f64, f64, f64), &i| {
                            let (p, q) = t(i);
                            (
                                a.0 + p as f64,
                                a.1 + q as f64,
                                a.2 + (p as f64).abs(),
                                a.3 + (q as f64).abs(),
                            )
                        })
                };
                let k = x[ch * f];
                let sh = exact(&|i| (x[i] - k, (x[i] - k) * (x[i] - k)));
                let afm = exact(&|i| (g[i] * m[i], g[i] * m[i] * (x[i] - mu) * rs));
                let tol = |abs: f64| 255.0 * 2f64.powi(-24) * abs + 1e-12 * abs;
                for isa in isa::detected() {
                    let got = channel_shifted_sums_on(isa, &x, lay, ch, k);
                    assert!(
                        (got.0 - sh.0).abs() <= tol(sh.2) && (got.1 - sh.1).abs() <= tol(sh.3),
                        "{lay:?} {isa}"
                    );
                    let got = channel_affine_grad_sums_on(isa, &g, Some(&m), &x, lay, ch, mu, rs);
                    assert!(
                        (got.0 - afm.0).abs() <= tol(afm.2) && (got.1 - afm.1).abs() <= tol(afm.3),
                        "{lay:?} {isa}"
                    );
                }
                // f64: left to right over the segments in order.
                let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                let want = idx.iter().fold(0.0, |a, &i| a + (x64[i] - x64[ch * f]));
                assert_eq!(channel_shifted_sums(&x64, lay, ch, x64[ch * f]).0, want);
            }
            let a: Vec<f32> = (0..c).map(|_| rng.normal() as f32).collect();
            let sh: Vec<f32> = (0..c).map(|_| rng.normal() as f32).collect();
            let coef: Vec<ChannelGrad<f32>> = (0..c)
                .map(|ch| ChannelGrad {
                    a: a[ch],
                    c1: sh[ch],
                    c2: 0.3,
                    mu: 2.0 + ch as f32,
                    rs: 0.9,
                })
                .collect();
            // From segment 1 on: the channel index starts at seg0.
            let (xs, gs) = (&x[f..], &g[f..]);
            for isa in isa::detected() {
                let mut y = vec![0.0f32; xs.len()];
                channel_scale_shift_on(isa, xs, &mut y, f, 1, (&a, &sh));
                let mut dx = vec![0.0f32; xs.len()];
                channel_input_grad_on(isa, xs, gs, &mut dx, f, 1, &coef);
                for i in 0..xs.len() {
                    let ch = (1 + i / f) % c;
                    assert_eq!(y[i], xs[i] * a[ch] + sh[ch], "{lay:?} {isa} y[{i}]");
                    let k = coef[ch];
                    let want = k.a * (gs[i] - k.c1 - (xs[i] - k.mu) * k.rs * k.c2);
                    assert_eq!(dx[i], want, "{lay:?} {isa} dx[{i}]");
                }
            }
        }
    }

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
