//! Elementwise kernels: the scalar functions (exact forms for any [`Element`], branch-free f32
//! approximations that vectorize) and the slice loops over them, run through [`isa::dispatch`].
//!
//! A pure map has no reduction, so every path computes each entry with the same operations in
//! the same order (no FMA contraction happens without an explicit `mul_add`): the AVX-512,
//! AVX2 and scalar paths agree bit for bit, which the tests assert. The SIMD paths differ only
//! in how many entries LLVM processes per instruction inside pulp's `#[target_feature]` frame.

use super::isa::{self, Isa};
use super::PAR_THRESHOLD;
use crate::tensor::Element;
use rayon::prelude::*;

/// Entries per parallel task of the elementwise loops.
pub const CHUNK: usize = 4096;

/// `Φ(x)`, the standard normal CDF, via erf.
#[inline]
pub fn normal_cdf<T: Element>(x: T) -> T {
    T::c(0.5) * (T::one() + (x * T::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// `φ(x)`, the standard normal density.
#[inline]
pub fn normal_pdf<T: Element>(x: T) -> T {
    T::c(0.398_942_280_401_432_7) * (T::c(-0.5) * x * x).exp()
}

/// Exact GELU `x Φ(x)`.
#[inline]
pub fn gelu<T: Element>(x: T) -> T {
    x * normal_cdf(x)
}

/// `d/dx [x Φ(x)] = Φ(x) + x φ(x)`.
#[inline]
pub fn gelu_grad<T: Element>(x: T) -> T {
    normal_cdf(x) + x * normal_pdf(x)
}

/// The logistic sigmoid through libm `exp` (the reference formula; f64 gradient checks).
#[inline]
pub fn sigmoid<T: Element>(x: T) -> T {
    // Split by sign so exp never overflows.
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Branch-free `eˣ` for f32: Cephes' `expf` (round `x·log₂e` to n with the 1.5·2²³ trick,
/// `r = x − n·ln2` in two parts, degree-6 polynomial, scale by 2ⁿ through the exponent bits);
/// ≈ 1 ulp on the clamped range [−87.3, 88.3], which keeps 2ⁿ a normal number.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.3, 88.3);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let z = r * r;
    let p = (((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * z
        + r
        + 1.0;
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

/// `eˣ − 1` for f32 without branches (both forms computed, one selected): for |x| < ½ the
/// Taylor polynomial to x⁸ (truncation below 1.5e-8 relative), where `exp − 1` would cancel;
/// above, [`exp_f32`]`(x) − 1`. Within 4e-7 relative of the exact value (tested against libm's
/// f64 `expm1`). NaN stays NaN.
#[inline(always)]
pub fn expm1_f32(x: f32) -> f32 {
    let big = exp_f32(x) - 1.0;
    let p = ((((((x * (1.0 / 40320.0) + 1.0 / 5040.0) * x + 1.0 / 720.0) * x + 1.0 / 120.0) * x
        + 1.0 / 24.0)
        * x
        + 1.0 / 6.0)
        * x
        + 0.5)
        * x
        * x
        + x;
    if x.abs() < 0.5 || x.is_nan() {
        p
    } else {
        big
    }
}

/// `σ(x) = 1/(1 + e^{−x})` in f32 through [`exp_f32`]; NaN stays NaN (the NaN stop relies on it).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp_f32(-x));
    if x.is_nan() {
        x
    } else {
        s
    }
}

/// `tanh x` in f32 without branches (both halves computed, one selected, so loops vectorize):
/// Cephes' `tanhf` — for |x| ≥ 0.5493 (where cancellation is harmless) `1 − 2/(e^{2|x|} + 1)`
/// through [`exp_f32`], below it the odd minimax polynomial `x + x³ P(x²)`; ≈ 2 ulp. NaN stays NaN.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let big = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    // A NaN input fails the comparison and comes out of the polynomial as NaN.
    if a >= 0.549_306_15 {
        big.copysign(x)
    } else {
        small
    }
}

/// GELU and its derivative for f32, vectorizable: `Φ(x) = ½(1 + erf(x/√2))` with Abramowitz &
/// Stegun 7.1.26 for erf (|error| ≤ 1.5e-7), sharing `exp(−x²/2)` with `φ(x)`.
#[inline(always)]
pub fn gelu_and_grad_f32(x: f32) -> (f32, f32) {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let e = exp_f32(-0.5 * x * x);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let erf_abs = 1.0 - poly * e;
    let erf = if x < 0.0 { -erf_abs } else { erf_abs };
    let cdf = 0.5 * (1.0 + erf);
    let pdf = 0.398_942_3 * e;
    (x * cdf, cdf + x * pdf)
}

/// `out[i] = f(x[i])`, parallel when large, each chunk on the selected SIMD path.
pub fn map_into<T: Element>(x: &[T], out: &mut [T], f: impl Fn(T) -> T + Sync) {
    let isa = isa::selected();
    let run = |o: &mut [T], i: &[T]| {
        isa::dispatch_on(isa, || {
            o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i));
        })
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| run(o, i));
    } else {
        run(out, x);
    }
}

/// `out[i] = f(a[i], b[i])`, parallel when large, each chunk on the selected SIMD path.
pub fn zip_into<T: Element>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    let isa = isa::selected();
    let run = |o: &mut [T], a: &[T], b: &[T]| {
        isa::dispatch_on(isa, || {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b));
        })
    };
    if a.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(o, (a, b))| run(o, a, b));
    } else {
        run(out, a, b);
    }
}

/// `out[i] = f(a[i], b[i], c[i])`, parallel when large, each chunk on the selected SIMD path
/// (a backward's `g · f'(x, y)` in one pass).
pub fn zip3_into<T: Element>(
    a: &[T],
    b: &[T],
    c: &[T],
    out: &mut [T],
    f: impl Fn(T, T, T) -> T + Sync,
) {
    let isa = isa::selected();
    let run = |o: &mut [T], a: &[T], b: &[T], c: &[T]| {
        isa::dispatch_on(isa, || {
            o.iter_mut()
                .zip(a.iter().zip(b).zip(c))
                .for_each(|(o, ((&a, &b), &c))| *o = f(a, b, c));
        })
    };
    if a.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(
                a.par_chunks(CHUNK)
                    .zip(b.par_chunks(CHUNK))
                    .zip(c.par_chunks(CHUNK)),
            )
            .for_each(|(o, ((a, b), c))| run(o, a, b, c));
    } else {
        run(out, a, b, c);
    }
}

/// ELU `x > 0 ? x : α(eˣ − 1)` into `out`: f32 through [`expm1_f32`], f64 through libm.
pub fn elu_into<T: Element>(x: &[T], out: &mut [T], alpha: f64) {
    match (T::as_f32(x), T::as_f32_mut(out)) {
        (Some(x), Some(out)) => {
            let a = alpha as f32;
            map_into(x, out, move |v| if v > 0.0 { v } else { a * expm1_f32(v) })
        }
        _ => {
            let a = T::c(alpha);
            map_into(
                x,
                out,
                move |v| if v > T::zero() { v } else { a * v.exp_m1() },
            )
        }
    }
}

/// `out[r, j] = f(a[r, j], b[j])` for the rows of `a` (`b.len()` wide, a row broadcast down
/// them: bias adds, per-feature scales), parallel in whole rows when large.
pub fn zip_rows_into<T: Element>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    let m = b.len();
    if m == 0 {
        return;
    }
    let isa = isa::selected();
    let run = |o: &mut [T], a: &[T]| {
        isa::dispatch_on(isa, || {
            for (o, a) in o.chunks_exact_mut(m).zip(a.chunks_exact(m)) {
                o.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&a, &b))| *o = f(a, b));
            }
        })
    };
    if a.len() >= PAR_THRESHOLD {
        let rows = CHUNK.div_ceil(m) * m;
        out.par_chunks_mut(rows)
            .zip(a.par_chunks(rows))
            .for_each(|(o, a)| run(o, a));
    } else {
        run(out, a);
    }
}

/// `x[i] ← f(x[i])` in place on the given path (one thread: the callers' rows are small).
#[inline(always)]
fn map_in_place_on<T: Copy>(isa: Isa, x: &mut [T], f: impl Fn(T) -> T) {
    isa::dispatch_on(isa, || x.iter_mut().for_each(|v| *v = f(*v)))
}

/// `v ← σ(v)` in place: f32 through [`sigmoid_f32`] on `isa`, f64 through the libm formula.
pub fn sigmoid_in_place_on<T: Element>(isa: Isa, v: &mut [T]) {
    match T::as_f32_mut(v) {
        Some(v) => map_in_place_on(isa, v, sigmoid_f32),
        None => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
    }
}

/// [`sigmoid_in_place_on`] on the selected path.
pub fn sigmoid_in_place<T: Element>(v: &mut [T]) {
    sigmoid_in_place_on(isa::selected(), v)
}

/// `v ← tanh v` in place: f32 through [`tanh_f32`] on `isa`, f64 through libm.
pub fn tanh_in_place_on<T: Element>(isa: Isa, v: &mut [T]) {
    match T::as_f32_mut(v) {
        Some(v) => map_in_place_on(isa, v, tanh_f32),
        None => v.iter_mut().for_each(|x| *x = x.tanh()),
    }
}

/// [`tanh_in_place_on`] on the selected path.
pub fn tanh_in_place<T: Element>(v: &mut [T]) {
    tanh_in_place_on(isa::selected(), v)
}

/// `out = f(x)` for an in-place kernel `f`, in parallel chunks when large.
fn chunked_into<T: Element>(x: &[T], out: &mut [T], f: impl Fn(&mut [T]) + Sync) {
    let run = |o: &mut [T], i: &[T]| {
        o.copy_from_slice(i);
        f(o);
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| run(o, i));
    } else {
        run(out, x);
    }
}

/// `out = σ(x)` ([`sigmoid_in_place`]), parallel when large.
pub fn sigmoid_into<T: Element>(x: &[T], out: &mut [T]) {
    chunked_into(x, out, sigmoid_in_place)
}

/// `out = tanh x` ([`tanh_in_place`]), parallel when large.
pub fn tanh_into<T: Element>(x: &[T], out: &mut [T]) {
    chunked_into(x, out, tanh_in_place)
}

/// `v ← max(v, 0)` in place.
pub fn relu_in_place<T: Element>(v: &mut [T]) {
    map_in_place_on(isa::selected(), v, |x: T| x.max(T::zero()))
}

/// `g = GELU(a)`, `d = GELU'(a)` elementwise on `isa`, parallel in chunks: f32 through
/// [`gelu_and_grad_f32`], f64 through the exact erf forms.
pub fn gelu_and_grad_on<T: Element>(isa: Isa, a: &[T], g: &mut [T], d: &mut [T]) {
    let run = |a: &[T], g: &mut [T], d: &mut [T]| match (T::as_f32(a), T::as_f32_mut(g)) {
        (Some(a), Some(g)) => {
            let d = T::as_f32_mut(d).expect("same element type");
            isa::dispatch_on(isa, || {
                for ((g, d), &a) in g.iter_mut().zip(d.iter_mut()).zip(a) {
                    let (v, dv) = gelu_and_grad_f32(a);
                    *g = v;
                    *d = dv;
                }
            })
        }
        _ => {
            for ((g, d), &a) in g.iter_mut().zip(d.iter_mut()).zip(a) {
                *g = gelu(a);
                *d = gelu_grad(a);
            }
        }
    };
    if a.len() >= PAR_THRESHOLD {
        g.par_chunks_mut(CHUNK)
            .zip(d.par_chunks_mut(CHUNK))
            .zip(a.par_chunks(CHUNK))
            .for_each(|((g, d), a)| run(a, g, d));
    } else {
        run(a, g, d);
    }
}

/// [`gelu_and_grad_on`] on the selected path.
pub fn gelu_and_grad<T: Element>(a: &[T], g: &mut [T], d: &mut [T]) {
    gelu_and_grad_on(isa::selected(), a, g, d)
}

/// `x[i] ← x[i] · y[i]` (the chain rule through an elementwise derivative), parallel when large.
pub fn mul_in_place<T: Element>(x: &mut [T], y: &[T]) {
    let isa = isa::selected();
    let run = |x: &mut [T], y: &[T]| {
        isa::dispatch_on(isa, || {
            x.iter_mut().zip(y).for_each(|(x, &y)| *x *= y);
        })
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK))
            .for_each(|(x, y)| run(x, y));
    } else {
        run(x, y);
    }
}

/// `g ← g ⊙ y(1 − y)`: the chain rule through a sigmoid written by its output `y = σ(a)`.
pub fn sigmoid_backward_in_place<T: Element>(g: &mut [T], y: &[T]) {
    isa::dispatch(|| {
        g.iter_mut()
            .zip(y)
            .for_each(|(g, &y)| *g *= y * (T::one() - y))
    })
}

/// `g ← g ⊙ (1 − y²)`: the chain rule through `y = tanh a`.
pub fn tanh_backward_in_place<T: Element>(g: &mut [T], y: &[T]) {
    isa::dispatch(|| {
        g.iter_mut()
            .zip(y)
            .for_each(|(g, &y)| *g *= T::one() - y * y)
    })
}

/// `g ← g ⊙ [y > 0]`: the chain rule through `y = max(a, 0)`.
pub fn relu_backward_in_place<T: Element>(g: &mut [T], y: &[T]) {
    isa::dispatch(|| {
        g.iter_mut()
            .zip(y)
            .for_each(|(g, &y)| *g *= if y > T::zero() { T::one() } else { T::zero() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    /// Inputs covering both branches of every approximation, the clamps, ±0, ±∞ and NaN.
    fn inputs(n: usize) -> Vec<f32> {
        let mut rng = Rng::new(11);
        let mut v: Vec<f32> = (0..n).map(|_| (rng.normal() * 6.0) as f32).collect();
        v.extend([
            0.0,
            -0.0,
            0.5,
            -0.549_306_15,
            90.0,
            -90.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        v
    }

    fn same_bits(a: &[f32], b: &[f32], what: &str, isa: Isa) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{what} on {isa}, entry {i}: {x} vs scalar {y}"
            );
        }
    }

    /// Maps have no reduction: every detected path equals the scalar path bit for bit, on row
    /// lengths around every vector width (tails included).
    #[test]
    fn maps_are_bit_exact_on_every_path() {
        for n in [1usize, 7, 15, 16, 17, 33, 100, 1000] {
            let x = inputs(n);
            let mut sig0 = x.clone();
            sigmoid_in_place_on(Isa::Scalar, &mut sig0);
            let mut tanh0 = x.clone();
            tanh_in_place_on(Isa::Scalar, &mut tanh0);
            let (mut g0, mut d0) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
            gelu_and_grad_on(Isa::Scalar, &x, &mut g0, &mut d0);
            for isa in isa::detected() {
                let mut s = x.clone();
                sigmoid_in_place_on(isa, &mut s);
                same_bits(&s, &sig0, "sigmoid", isa);
                let mut t = x.clone();
                tanh_in_place_on(isa, &mut t);
                same_bits(&t, &tanh0, "tanh", isa);
                let (mut g, mut d) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
                gelu_and_grad_on(isa, &x, &mut g, &mut d);
                same_bits(&g, &g0, "gelu", isa);
                same_bits(&d, &d0, "gelu'", isa);
            }
        }
    }

    /// The f32 approximations against the f64 definitions: sigmoid and tanh within 5e-7
    /// relative (a few ulp; plus 1e-30 absolute below the clamp), GELU and GELU' within 3e-7
    /// absolute plus 3e-7 relative (erf's 1.5e-7); NaN stays NaN; f64 takes the exact forms.
    #[test]
    fn f32_forms_match_the_f64_definitions() {
        let x = inputs(4000);
        let mut s = x.clone();
        sigmoid_in_place(&mut s);
        let mut t = x.clone();
        tanh_in_place(&mut t);
        let (mut g, mut d) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        gelu_and_grad(&x, &mut g, &mut d);
        let rel = 5e-7;
        for i in 0..x.len() {
            let v = x[i] as f64;
            if v.is_nan() {
                assert!(s[i].is_nan() && t[i].is_nan(), "NaN in, NaN out");
                continue;
            }
            let ws = sigmoid(v);
            assert!((s[i] as f64 - ws).abs() <= rel * ws + 1e-30, "σ({v})");
            let wt = v.tanh();
            assert!(
                (t[i] as f64 - wt).abs() <= rel * wt.abs() + 1e-30,
                "tanh({v})"
            );
            if v.is_finite() {
                let (wg, wd) = (gelu(v), gelu_grad(v));
                assert!(
                    (g[i] as f64 - wg).abs() <= 3e-7 * (1.0 + wg.abs()),
                    "gelu({v})"
                );
                assert!(
                    (d[i] as f64 - wd).abs() <= 3e-7 * (1.0 + wd.abs()),
                    "gelu'({v})"
                );
            }
        }
        let mut s64 = vec![-1.0f64, 0.0, 2.0];
        sigmoid_in_place(&mut s64);
        assert_eq!(s64, vec![sigmoid(-1.0), 0.5, sigmoid(2.0)]);
        let mut t64 = vec![-1.0f64, 0.3];
        tanh_in_place(&mut t64);
        assert_eq!(t64, vec![(-1.0f64).tanh(), 0.3f64.tanh()]);
    }

    /// `expm1_f32` within 4e-7 relative of libm's f64 `expm1` on both sides of its switch at
    /// |x| = ½ (and near 0, where `exp − 1` would lose every digit), the same bits on every
    /// path, NaN in NaN out; ELU takes it for f32 and libm for f64.
    #[test]
    fn expm1_f32_is_accurate_and_the_same_on_every_path() {
        let mut x = inputs(4000);
        x.extend([1e-7, -1e-7, 0.499_999_97, -0.5, -0.500_000_06, 1e-30, -3e-4]);
        let mut m0 = x.clone();
        map_in_place_on(Isa::Scalar, &mut m0, expm1_f32);
        for (i, &v) in x.iter().enumerate() {
            if v.is_nan() {
                assert!(m0[i].is_nan());
                continue;
            }
            if v.abs() > 88.0 {
                continue;
            }
            let want = (v as f64).exp_m1();
            assert!(
                (m0[i] as f64 - want).abs() <= 4e-7 * want.abs(),
                "expm1({v}) = {} vs {want}",
                m0[i]
            );
        }
        for isa in isa::detected() {
            let mut m = x.clone();
            map_in_place_on(isa, &mut m, expm1_f32);
            same_bits(&m, &m0, "expm1", isa);
        }
        let (mut e32, mut e64) = (vec![0.0f32; 3], vec![0.0f64; 3]);
        elu_into(&[-1.0f32, 0.0, 2.0], &mut e32, 0.5);
        elu_into(&[-1.0f64, 0.0, 2.0], &mut e64, 0.5);
        assert_eq!(e64, vec![0.5 * (-1.0f64).exp_m1(), 0.0, 2.0]);
        assert_eq!(e32, vec![0.5 * expm1_f32(-1.0), 0.0, 2.0]);
    }

    /// The parallel maps split by shape only: the result equals the one-chunk loop exactly.
    #[test]
    fn parallel_maps_equal_the_serial_loop() {
        let n = PAR_THRESHOLD + 1234;
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.001).sin()).collect();
        let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.002).cos()).collect();
        let mut out = vec![0.0f32; n];
        zip_into(&x, &y, &mut out, |a, b| a * b + 1.0);
        let mut m = x.clone();
        mul_in_place(&mut m, &y);
        for i in 0..n {
            assert_eq!(out[i], x[i] * y[i] + 1.0);
            assert_eq!(m[i], x[i] * y[i]);
        }
        let mut e = vec![0.0f32; n];
        map_into(&x, &mut e, |v| v.exp());
        assert!(e.iter().zip(&x).all(|(e, x)| *e == x.exp()));
        // A broadcast row, wide and narrow, across the parallel split.
        for m in [1usize, 7, 64, 5000] {
            let rows = (PAR_THRESHOLD + 999) / m + 1;
            let a: Vec<f32> = (0..rows * m).map(|i| (i as f32 * 0.003).sin()).collect();
            let b: Vec<f32> = (0..m).map(|j| j as f32 * 0.5 - 1.0).collect();
            let mut out = vec![0.0f32; rows * m];
            zip_rows_into(&a, &b, &mut out, |x, y| x * y + x);
            for (i, &o) in out.iter().enumerate() {
                assert_eq!(o, a[i] * b[i % m] + a[i], "m = {m}, entry {i}");
            }
        }
    }

    /// A dense sweep of the f32 GELU pair over [−10, 10] against the exact erf forms.
    #[test]
    fn fast_f32_gelu_matches_exact() {
        let mut worst = (0.0f64, 0.0f64);
        for i in -20000..=20000 {
            let x = i as f64 * 5e-4;
            let (g, d) = gelu_and_grad_f32(x as f32);
            let (gw, dw) = (gelu(x), gelu_grad(x));
            worst.0 = worst.0.max((g as f64 - gw).abs() / gw.abs().max(1.0));
            worst.1 = worst.1.max((d as f64 - dw).abs() / dw.abs().max(1.0));
        }
        // |x|·|ΔΦ| with |ΔΦ| ≤ 7.5e-8 (+ f32 rounding).
        assert!(worst.0 < 1e-6 && worst.1 < 1e-6, "{worst:?}");
        assert_eq!(gelu_and_grad_f32(-100.0).0, -0.0);
        assert_eq!(gelu_and_grad_f32(100.0), (100.0, 1.0));
    }
}
