//! Raw kernels over slices: matrix products through `gemm`, and the elementwise loops that the
//! ops build on. Parallel with `rayon` above a size where it pays.

pub mod isa;
pub mod matmul;
pub mod peak;
pub mod small_mm;
pub use matmul::{gemm, gemm_to, linear_into, matmul_into, transpose, MatLayout};

use crate::tensor::Element;
use rayon::prelude::*;
use std::any::TypeId;

/// Elementwise work below this many elements runs on one thread: spawning costs more.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// `out[i] = f(x[i])`, parallel when large.
pub fn map_into<T: Element>(x: &[T], out: &mut [T], f: impl Fn(T) -> T + Sync) {
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i)));
    } else {
        out.iter_mut().zip(x).for_each(|(o, &i)| *o = f(i));
    }
}

/// `out[i] = f(a[i], b[i])`, parallel when large.
pub fn zip_into<T: Element>(a: &[T], b: &[T], out: &mut [T], f: impl Fn(T, T) -> T + Sync) {
    if a.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
            .for_each(|(o, (a, b))| {
                o.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (&a, &b))| *o = f(a, b))
            });
    } else {
        out.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(o, (&a, &b))| *o = f(a, b));
    }
}

/// Row-wise softmax of a (rows, n) buffer, in place. Subtracts the row max for stability.
pub fn softmax_rows<T: Element>(x: &mut [T], n: usize) {
    let f = |row: &mut [T]| {
        let m = row.iter().copied().fold(T::neg_infinity(), T::max);
        let m = if m == T::neg_infinity() { T::zero() } else { m };
        let mut s = T::zero();
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        let inv = if s > T::zero() {
            T::one() / s
        } else {
            T::zero()
        };
        row.iter_mut().for_each(|v| *v *= inv);
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks_mut(n).for_each(f);
    } else {
        x.chunks_mut(n).for_each(f);
    }
}

/// Row-wise log-softmax of a (rows, n) buffer, in place.
pub fn log_softmax_rows<T: Element>(x: &mut [T], n: usize) {
    let f = |row: &mut [T]| {
        let m = row.iter().copied().fold(T::neg_infinity(), T::max);
        let lse = m + row.iter().map(|&v| (v - m).exp()).sum::<T>().ln();
        row.iter_mut().for_each(|v| *v -= lse);
    };
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks_mut(n).for_each(f);
    } else {
        x.chunks_mut(n).for_each(f);
    }
}

/// Backward of a row-wise softmax: `dx = y ⊙ (dy − Σ_j y_j dy_j)`.
pub fn softmax_rows_backward<T: Element>(y: &[T], dy: &[T], dx: &mut [T], n: usize) {
    let f = |(dx, (y, dy)): (&mut [T], (&[T], &[T]))| {
        let dot: T = y.iter().zip(dy).map(|(&a, &b)| a * b).sum();
        for j in 0..n {
            dx[j] = y[j] * (dy[j] - dot);
        }
    };
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

/// `x ← e^{x − shift}` along a row (a softmax numerator), returning the new values' sum, taken
/// in order; a score of `−∞` (masked) gives exactly 0. f32 rows go through the vectorizable
/// [`exp_f32`]: one libm `expf` call per entry kept every register spilled around it.
pub fn exp_shifted<T: Element>(row: &mut [T], shift: T) -> T {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: T is f32 (checked through TypeId), so the slice has f32's layout.
        let row =
            unsafe { std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut f32, row.len()) };
        let shift = shift.as_f64() as f32; // exact: shift is an f32
        for x in row.iter_mut() {
            let e = exp_f32(*x - shift);
            *x = if *x == f32::NEG_INFINITY { 0.0 } else { e };
        }
        return T::c(row.iter().sum::<f32>() as f64);
    }
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
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

/// Keeps freed tensor buffers in the process instead of handing them back to the kernel.
///
/// A training step allocates and frees the same few-hundred-KiB activations every step. glibc
/// serves blocks above its mmap threshold (128 KiB at start) with fresh `mmap`s, so each step
/// pays a page fault and a kernel zeroing per 4 KiB page: ~15 % of a ViT step here. Raising the
/// mmap threshold to its maximum (32 MiB on 64-bit) and the trim threshold keeps those blocks on
/// the heap for reuse. Called once by the `nabla` binary; harmless to call again. No-op on other
/// C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; valid before or after other allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f32 path agrees with f64 `exp` (relative 1e-6 per entry and in the sum), masked
    /// scores give exactly 0, NaN propagates, and f64 rows take the plain path.
    #[test]
    fn exp_shifted_matches_f64_and_zeroes_masked_scores() {
        let scores: Vec<f32> = (0..40)
            .map(|i| {
                if i % 7 == 3 {
                    f32::NEG_INFINITY
                } else {
                    (i as f32 * 0.37).sin() * 30.0
                }
            })
            .collect();
        let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut row = scores.clone();
        let sum = exp_shifted(&mut row, mx);
        let mut want_sum = 0.0f64;
        for (&s, &e) in scores.iter().zip(&row) {
            if s == f32::NEG_INFINITY {
                assert_eq!(e, 0.0);
                continue;
            }
            // The shifted score is rounded to f32 first (as in any f32 softmax).
            let w = ((s - mx) as f64).exp();
            want_sum += w;
            assert!((e as f64 - w).abs() <= 1e-6 * w + 1e-37, "{s}: {e} vs {w}");
        }
        assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum);
        let mut nan = vec![0.0f32, f32::NAN];
        assert!(exp_shifted(&mut nan, 0.0).is_nan() && nan[1].is_nan());
        let mut r64 = vec![0.5f64, -1.0, f64::NEG_INFINITY];
        let s64 = exp_shifted(&mut r64, 0.5);
        assert_eq!(r64, vec![1.0, (-1.5f64).exp(), 0.0]);
        assert_eq!(s64, 1.0 + (-1.5f64).exp());
    }
}
