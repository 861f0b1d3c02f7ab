//! Matrix products through the `gemm` crate. Transposed operands are expressed as strides, so
//! no operand is ever copied to be transposed.

use crate::tensor::Element;

/// Whether an operand is stored as given or as its transpose (row-major storage either way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatLayout {
    N,
    T,
}

/// Products smaller than this many multiply-adds run on one thread.
const PAR_FLOPS: usize = 96 * 96 * 96;

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
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].iter_mut().for_each(|x| *x = T::zero());
        }
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
    let par = if m * n * k >= PAR_FLOPS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the strides above describe in-bounds row-major (or transposed) layouts of
    // buffers whose lengths were checked, and `c` does not alias `a` or `b` (borrow rules).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
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
    let mut c = vec![T::zero(); m * n];
    gemm(m, n, k, a, la, b, lb, &mut c, false);
    c
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
}
