//! Message-passing kernels over CSR segments (`nn::graph_ops` holds the ops and their math):
//! the weighted gather-and-sum of one destination node, and the segment softmax over the
//! incoming edges of a node (per head) with its backward.
//!
//! A segment is the `(len, heads)` block of edge rows `ip[i]..ip[i + 1]` of one node. The
//! softmax works across heads in vector order — column maxima, exponentials, column sums in
//! edge order, scaling — so every head sums its edges left to right as the plain definition
//! does: the f64 results equal the per-head loops exactly, and every SIMD path gives the same
//! bits as the scalar one (f32 exponentials through `exp_f32`).

use super::elementwise::exp_f32;
use super::isa::{self, Isa};
use crate::tensor::Element;

/// `o[h·d..(h+1)·d] += α[e, h] · S[rows[e], h·d..(h+1)·d]` for every edge `e` in `edges` and
/// head `h`, where `S` is a `(M, heads·d)` table and `α (E, heads)`: one node's aggregation.
pub fn weighted_gather_on<T: Element>(
    isa: Isa,
    o: &mut [T],
    table: &[T],
    edges: std::ops::Range<usize>,
    rows: &[usize],
    alpha: &[T],
    heads: usize,
) {
    let w = o.len();
    if heads == 0 || w == 0 {
        return;
    }
    let d = w / heads;
    isa::dispatch_on(isa, || {
        for e in edges {
            let sr = &table[rows[e] * w..(rows[e] + 1) * w];
            for hh in 0..heads {
                let al = alpha[e * heads + hh];
                o[hh * d..(hh + 1) * d]
                    .iter_mut()
                    .zip(&sr[hh * d..(hh + 1) * d])
                    .for_each(|(o, &v)| *o += al * v);
            }
        }
    })
}

/// [`weighted_gather_on`] on the selected path.
pub fn weighted_gather<T: Element>(
    o: &mut [T],
    table: &[T],
    edges: std::ops::Range<usize>,
    rows: &[usize],
    alpha: &[T],
    heads: usize,
) {
    weighted_gather_on(isa::selected(), o, table, edges, rows, alpha, heads)
}

/// Softmax down each of the `heads` columns of a `(len, heads)` segment, in place:
/// `α[e,h] = exp(s[e,h] − m_h) / Σ_e' exp(s[e',h] − m_h)`; a score of `−∞` gets weight 0 and an
/// all-`−∞` column gives zeros.
pub fn segment_softmax_on<T: Element>(isa: Isa, seg: &mut [T], heads: usize) {
    if heads == 0 || seg.is_empty() {
        return;
    }
    let mut m = vec![T::neg_infinity(); heads];
    let mut z = vec![T::zero(); heads];
    isa::dispatch_on(isa, || {
        for row in seg.chunks_exact(heads) {
            m.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
        }
        m.iter_mut().for_each(|m| {
            if *m == T::neg_infinity() {
                *m = T::zero()
            }
        });
    });
    match T::as_f32_mut(seg) {
        Some(s32) => {
            let m32 = T::as_f32(&m).expect("same element type");
            isa::dispatch_on(isa, || {
                for row in s32.chunks_exact_mut(heads) {
                    for (v, &mh) in row.iter_mut().zip(m32) {
                        let e = exp_f32(*v - mh);
                        *v = if *v == f32::NEG_INFINITY { 0.0 } else { e };
                    }
                }
            })
        }
        None => {
            for row in seg.chunks_exact_mut(heads) {
                for (v, &mh) in row.iter_mut().zip(&m) {
                    *v = (*v - mh).exp();
                }
            }
        }
    }
    isa::dispatch_on(isa, || {
        for row in seg.chunks_exact(heads) {
            z.iter_mut().zip(row).for_each(|(z, &v)| *z += v);
        }
        z.iter_mut().for_each(|z| {
            *z = if *z > T::zero() {
                T::one() / *z
            } else {
                T::zero()
            }
        });
        for row in seg.chunks_exact_mut(heads) {
            row.iter_mut().zip(&z).for_each(|(v, &inv)| *v *= inv);
        }
    })
}

/// [`segment_softmax_on`] on the selected path.
pub fn segment_softmax<T: Element>(seg: &mut [T], heads: usize) {
    segment_softmax_on(isa::selected(), seg, heads)
}

/// Backward of [`segment_softmax_on`] for one segment: `ds[e,h] = α[e,h] (g[e,h] − Σ_e' α g)`.
pub fn segment_softmax_backward_on<T: Element>(
    isa: Isa,
    a: &[T],
    g: &[T],
    heads: usize,
    ds: &mut [T],
) {
    if heads == 0 {
        return;
    }
    let mut dot = vec![T::zero(); heads];
    isa::dispatch_on(isa, || {
        for (ar, gr) in a.chunks_exact(heads).zip(g.chunks_exact(heads)) {
            for ((d, &a), &g) in dot.iter_mut().zip(ar).zip(gr) {
                *d += a * g;
            }
        }
        for ((dr, ar), gr) in ds
            .chunks_exact_mut(heads)
            .zip(a.chunks_exact(heads))
            .zip(g.chunks_exact(heads))
        {
            for (((d, &a), &g), &dt) in dr.iter_mut().zip(ar).zip(gr).zip(&dot) {
                *d = a * (g - dt);
            }
        }
    })
}

/// [`segment_softmax_backward_on`] on the selected path.
pub fn segment_softmax_backward<T: Element>(a: &[T], g: &[T], heads: usize, ds: &mut [T]) {
    segment_softmax_backward_on(isa::selected(), a, g, heads, ds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    /// Every path gives the scalar path's bits; f64 equals the per-head definition written
    /// out (libm exp, sums in edge order) exactly; masked edges get 0, all-masked heads zeros.
    #[test]
    fn segment_kernels_are_exact_on_every_path() {
        let mut rng = Rng::new(13);
        for (len, heads) in [(1usize, 1usize), (5, 3), (17, 4), (40, 16), (3, 33)] {
            let s: Vec<f32> = (0..len * heads)
                .map(|i| {
                    if i % 11 == 4 || i % heads == 2 {
                        f32::NEG_INFINITY
                    } else {
                        (rng.normal() * 3.0) as f32
                    }
                })
                .collect();
            let g: Vec<f32> = (0..len * heads).map(|_| rng.normal() as f32).collect();
            let mut a0 = s.clone();
            segment_softmax_on(Isa::Scalar, &mut a0, heads);
            let mut d0 = vec![0.0f32; s.len()];
            segment_softmax_backward_on(Isa::Scalar, &a0, &g, heads, &mut d0);
            let table: Vec<f32> = (0..7 * heads * 3).map(|_| rng.normal() as f32).collect();
            let rows: Vec<usize> = (0..len).map(|e| (e * 5) % 7).collect();
            let mut o0 = vec![0.0f32; heads * 3];
            weighted_gather_on(Isa::Scalar, &mut o0, &table, 0..len, &rows, &a0, heads);
            for isa in isa::detected() {
                let mut a = s.clone();
                segment_softmax_on(isa, &mut a, heads);
                assert_eq!(a, a0, "softmax {len}×{heads} on {isa}");
                let mut d = vec![0.0f32; s.len()];
                segment_softmax_backward_on(isa, &a, &g, heads, &mut d);
                assert_eq!(d, d0, "backward on {isa}");
                let mut o = vec![0.0f32; heads * 3];
                weighted_gather_on(isa, &mut o, &table, 0..len, &rows, &a, heads);
                assert_eq!(o, o0, "gather on {isa}");
            }
            for (i, &v) in s.iter().enumerate() {
                if v == f32::NEG_INFINITY {
                    assert_eq!(a0[i], 0.0);
                }
            }
            // f64: the per-head definition.
            let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
            let mut a64 = s64.clone();
            segment_softmax(&mut a64, heads);
            for hh in 0..heads {
                let col: Vec<f64> = (0..len).map(|e| s64[e * heads + hh]).collect();
                let mut m = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    m = 0.0;
                }
                let mut z = 0.0;
                for &v in &col {
                    z += (v - m).exp();
                }
                let inv = if z > 0.0 { 1.0 / z } else { 0.0 };
                for (e, &v) in col.iter().enumerate() {
                    assert_eq!(a64[e * heads + hh], (v - m).exp() * inv);
                }
                let f32_sum: f64 = (0..len).map(|e| a0[e * heads + hh] as f64).sum();
                assert!(z == 0.0 || (f32_sum - 1.0).abs() < 1e-5, "{f32_sum}");
            }
        }
    }
}
