//! Matrix products through the `gemm` crate. Transposed operands are expressed as strides, so
//! no operand is ever copied to be transposed.

use crate::tensor::Element;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Whether an operand is stored as given or as its transpose (row-major storage either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatLayout {
    N,
    T,
}

/// Products with at most this many rows of C (and both operands as stored) go through
/// [`super::small_mm`].
const SMALL_M: usize = 64;

/// Products smaller than this many multiply-adds run on one thread.
const PAR_FLOPS: usize = 96 * 96 * 96;

/// `(cols, rows)` row-major transpose of a `(rows, cols)` buffer.
pub fn transpose<T: Element>(rows: usize, cols: usize, x: &[T]) -> Vec<T> {
    assert!(
        x.len() >= rows * cols,
        "transpose: buffer shorter than ({rows}, {cols})"
    );
    let mut t = vec![T::zero(); rows * cols];
    // 32×32 blocks keep both the rows read and the rows written in L1.
    for r0 in (0..rows).step_by(32) {
        for c0 in (0..cols).step_by(32) {
            for r in r0..(r0 + 32).min(rows) {
                for c in c0..(c0 + 32).min(cols) {
                    t[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
    t
}

/// `C (m,n) = beta·C + op(A) (m,k) · op(B) (k,n)`; row-major buffers, `beta ∈ {0, 1}`
/// selected by `accumulate`. With `MatLayout::T` the operand buffer holds the transpose,
/// i.e. A is stored (k,m) or B is stored (n,k).
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    la: MatLayout,
    b: &[T],
    lb: MatLayout,
    c: &mut [T],
    accumulate: bool,
) {
    // SAFETY: `[T]` and `[MaybeUninit<T>]` have the same layout, `gemm_to` stores only
    // initialized values, and `c` is initialized, as `accumulate` requires.
    unsafe {
        let c = &mut *(c as *mut [T] as *mut [MaybeUninit<T>]);
        gemm_to(m, n, k, a, la, b, lb, c, accumulate)
    }
}

/// [`gemm`] into possibly uninitialized storage: on return the first `m·n` entries of `c` are
/// initialized. Fresh outputs skip the zero fill of `vec![0; m·n]` (memset was 6.5 % of the
/// profile of a small ViT's training step): with `accumulate == false` gemm never reads C.
///
/// # Safety
/// With `accumulate`, the first `m·n` entries of `c` must be initialized.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_to<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    la: MatLayout,
    b: &[T],
    lb: MatLayout,
    c: &mut [MaybeUninit<T>],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|x| {
                x.write(T::zero());
            });
        }
        return;
    }
    if m <= SMALL_M && la == MatLayout::N && lb == MatLayout::N {
        // Few rows (the RNN's per-step (B, H)·(H, H) with B = 32): gemm would pack B at every
        // call; the unpacked register-blocked kernel streams it once (measured 1.0–1.5× gemm
        // at B = 32 and H = 64…1024 on one thread).
        // SAFETY: `small_mm` without `accumulate` only writes C; with it C is initialized.
        let c = unsafe { &mut *(&mut c[..m * n] as *mut [MaybeUninit<T>] as *mut [T]) };
        super::small_mm::small_mm((m, n, k), (a, k), (b, n), (c, n), accumulate);
        return;
    }
    let (a_rs, a_cs) = match la {
        MatLayout::N => (k as isize, 1),
        MatLayout::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match lb {
        MatLayout::N => (n as isize, 1),
        MatLayout::T => (1, k as isize),
    };
    let threads = rayon::current_num_threads();
    if m * n * k >= PAR_FLOPS {
        // Tall and skinny shapes (a transformer's token-by-feature products: 2176×64·64×192,
        // and their weight gradients 192×2176·2176×64) barely scale with gemm's own
        // parallelism (1.0–1.3× on 2 threads, measured). Split them ourselves into
        // independent single-threaded products: rows of C when M dominates, the inner
        // dimension when K does.
        // The K split depends on the shape only (also on one thread): a fixed number of chunks
        // summed in a fixed order, so the bits do not depend on how many threads ran it.
        if k >= 4 * m.max(n) && k >= 1024 {
            let parts = (k / 1024).clamp(2, 8);
            let kb = k.div_ceil(parts);
            let partial: Vec<Vec<T>> = (0..parts)
                .into_par_iter()
                .map(|p| {
                    let (k0, k1) = (p * kb, ((p + 1) * kb).min(k));
                    let mut cp = vec![T::zero(); m * n];
                    if k1 > k0 {
                        // SAFETY: columns k0..k1 of op(A) and rows k0..k1 of op(B) lie inside
                        // the checked buffers; `cp` is this task's own m×n buffer.
                        unsafe {
                            raw(
                                (m, n, k1 - k0),
                                cp.as_mut_ptr(),
                                n as isize,
                                false,
                                (a.as_ptr().offset(k0 as isize * a_cs), a_cs, a_rs),
                                (b.as_ptr().offset(k0 as isize * b_rs), b_cs, b_rs),
                                gemm::Parallelism::None,
                            )
                        };
                    }
                    cp
                })
                .collect();
            let c = &mut c[..m * n];
            if !accumulate {
                c.iter_mut().zip(&partial[0]).for_each(|(c, &p)| {
                    c.write(p);
                });
            }
            // SAFETY: written just above, or initialized by the caller when accumulating.
            let c = unsafe { &mut *(c as *mut [MaybeUninit<T>] as *mut [T]) };
            let sum_from = if accumulate { 0 } else { 1 };
            for part in &partial[sum_from..] {
                c.iter_mut().zip(part).for_each(|(c, &p)| *c += p);
            }
            return;
        }
        if threads > 1 && m >= 4 * n && m >= 128 * threads {
            let rows = m.div_ceil(threads).next_multiple_of(8);
            c[..m * n]
                .par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(i, cb)| {
                    let (i0, mb) = (i * rows, cb.len() / n);
                    let a_off = i0 as isize * a_rs;
                    // SAFETY: rows i0..i0+mb of op(A) lie inside `a` (checked length), and the
                    // chunk `cb` is this task's own rows of C.
                    unsafe {
                        raw(
                            (mb, n, k),
                            cb.as_mut_ptr().cast::<T>(),
                            n as isize,
                            accumulate,
                            (a.as_ptr().offset(a_off), a_cs, a_rs),
                            (b.as_ptr(), b_cs, b_rs),
                            gemm::Parallelism::None,
                        )
                    };
                });
            return;
        }
    }
    let par = if m * n * k >= PAR_FLOPS && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the strides above describe in-bounds row-major (or transposed) layouts of
    // buffers whose lengths were checked, and `c` does not alias `a` or `b` (borrow rules).
    unsafe {
        raw(
            (m, n, k),
            c.as_mut_ptr().cast::<T>(),
            n as isize,
            accumulate,
            (a.as_ptr(), a_cs, a_rs),
            (b.as_ptr(), b_cs, b_rs),
            par,
        )
    };
}

/// One `gemm::gemm` call: `C = [C +] A·B` with (pointer, column stride, row stride) operands.
///
/// # Safety
/// The pointers and strides must describe in-bounds matrices of the given shape, and `c` must
/// not alias `a` or `b`.
unsafe fn raw<T: Element>(
    (m, n, k): (usize, usize, usize),
    c: *mut T,
    c_rs: isize,
    accumulate: bool,
    (a, a_cs, a_rs): (*const T, isize, isize),
    (b, b_cs, b_rs): (*const T, isize, isize),
    par: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs,
            accumulate,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Convenience: `C = op(A)·op(B)` into a fresh buffer.
pub fn matmul_into<T: Element>(
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    la: MatLayout,
    b: &[T],
    lb: MatLayout,
) -> Vec<T> {
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: not accumulating, so `gemm_to` reads nothing of C and initializes all m·n.
    unsafe {
        gemm_to(m, n, k, a, la, b, lb, c.spare_capacity_mut(), false);
        c.set_len(m * n);
    }
    c
}

/// `out (n, o) = x (n, i) Wᵀ + b` with `W` (o, i): a linear layer's forward into a fresh buffer.
pub fn linear_into<T: Element>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    n: usize,
    i: usize,
    o: usize,
) -> Vec<T> {
    let Some(b) = b else {
        return matmul_into(n, o, i, x, MatLayout::N, w, MatLayout::T);
    };
    assert_eq!(b.len(), o);
    let mut out = Vec::with_capacity(n * o);
    for _ in 0..n {
        out.extend_from_slice(b);
    }
    gemm(n, o, i, x, MatLayout::N, w, MatLayout::T, &mut out, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    fn transpose(r: usize, c: usize, x: &[f64]) -> Vec<f64> {
        let mut o = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                o[j * r + i] = x[i * c + j];
            }
        }
        o
    }

    #[test]
    fn all_layouts_match_naive() {
        for &(m, n, k) in &[(3, 5, 7), (1, 1, 1), (33, 17, 65), (128, 130, 129)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) * 0.5).collect();
            let want = naive(m, n, k, &a, &b);
            let at = transpose(m, k, &a);
            let bt = transpose(k, n, &b);
            for (aa, la) in [(&a, MatLayout::N), (&at, MatLayout::T)] {
                for (bb, lb) in [(&b, MatLayout::N), (&bt, MatLayout::T)] {
                    let got = matmul_into(m, n, k, aa, la, bb, lb);
                    let err = got
                        .iter()
                        .zip(&want)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max);
                    assert!(err < 1e-9, "{m}x{n}x{k} {la:?}{lb:?} err {err}");
                }
            }
            // accumulate = C + AB
            let mut c = want.clone();
            gemm(m, n, k, &a, MatLayout::N, &b, MatLayout::N, &mut c, true);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - 2.0 * y).abs() < 1e-9);
            }
        }
    }

    /// Fresh outputs are never read: a C full of NaN comes back as the product, on every
    /// path (gemm's small-matrix kernels, its blocked kernels, our row and K splits, k = 0),
    /// and the bias rows of `linear_into` are added, not overwritten.
    #[test]
    fn fresh_outputs_do_not_read_c() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let shapes = [
            (1, 1, 1),
            (1, 7, 3),
            (5, 1, 9),
            (4, 4, 0),
            (16, 16, 16),
            (33, 17, 65),
            (1100, 24, 40),
            (24, 40, 3000),
        ];
        for &(m, n, k) in &shapes {
            let a: Vec<f64> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f64) / 3.0 - 2.1)
                .collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) / 7.0).collect();
            let want = naive(m, n, k, &a, &b);
            let mut c = vec![std::mem::MaybeUninit::new(f64::NAN); m * n];
            // SAFETY: not accumulating.
            pool.install(|| unsafe {
                gemm_to(m, n, k, &a, MatLayout::N, &b, MatLayout::N, &mut c, false)
            });
            for (x, y) in c.iter().zip(&want) {
                // SAFETY: gemm_to initialized all m·n entries.
                let x = unsafe { x.assume_init() };
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                    "{m}x{n}x{k}: {x} vs {y}"
                );
            }
            let bias: Vec<f64> = (0..n).map(|j| j as f64 - 0.5).collect();
            let bt = transpose(k, n, &b);
            let got = pool.install(|| linear_into(&a, &bt, Some(&bias), m, k, n));
            for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                let y = y + bias[i % n];
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs().max(1.0),
                    "{m}x{n}x{k} bias"
                );
            }
        }
    }

    /// The row split (tall M) and the K split (long inner dimension) of a multi-threaded call
    /// give the naive product for every layout, with and without accumulation, and the same
    /// bits on 1, 2 and 3 threads (the K chunks depend on the shape only).
    #[test]
    fn split_products_match_naive_and_do_not_depend_on_threads() {
        for &(m, n, k) in &[(1100, 24, 40), (24, 40, 3000), (40, 12, 2100)] {
            // Non-integer values, so a different summation order would show in the bits.
            let a: Vec<f64> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f64) / 3.0 - 2.1)
                .collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) / 7.0).collect();
            let want = naive(m, n, k, &a, &b);
            let at = transpose(m, k, &a);
            let bt = transpose(k, n, &b);
            let mut first: Option<Vec<f64>> = None;
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for (aa, la) in [(&a, MatLayout::N), (&at, MatLayout::T)] {
                    for (bb, lb) in [(&b, MatLayout::N), (&bt, MatLayout::T)] {
                        let got = pool.install(|| matmul_into(m, n, k, aa, la, bb, lb));
                        let err = got
                            .iter()
                            .zip(&want)
                            .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
                            .fold(0.0, f64::max);
                        assert!(
                            err < 1e-12,
                            "{m}x{n}x{k} {la:?}{lb:?} {threads} threads: {err}"
                        );
                        match &first {
                            None => first = Some(got),
                            Some(f) if la == MatLayout::N && lb == MatLayout::N => {
                                assert_eq!(f, &got, "{m}x{n}x{k}: {threads} threads changed bits")
                            }
                            _ => {}
                        }
                        let mut c = want.clone();
                        pool.install(|| gemm(m, n, k, aa, la, bb, lb, &mut c, true));
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - 2.0 * y).abs() <= 1e-12 * y.abs().max(1.0));
                        }
                    }
                }
            }
        }
    }
}
