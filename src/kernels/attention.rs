//! The attention core of one (item, head): scores, masked softmax and the weighted sum forward;
//! the five products and the softmax backward of its gradient. nn/attention.rs holds the math
//! (its module doc derives both passes) and the projections around it.
//!
//! ```text
//! forward:   S = q Kᵀ,  P = softmax_rows(α S + M),  o = P V                α = dh^{-1/2}
//! backward:  dP = do Vᵀ (+ dP₀),  dS = α P ⊙ (dP − rowsum(P ⊙ dP)),
//!            dq = dS K,  dk = dSᵀ q,  dv = Pᵀ do
//! ```
//!
//! Every product is a [`small_mm`](super::small_mm) register-blocked tile over unpacked rows
//! (`Kᵀ`, `Vᵀ`, `Pᵀ`, `dSᵀ` are transposed into per-thread scratch first), every row a
//! [`softmax`](super::softmax) row kernel. For f32 the whole head runs in **one** dispatch of
//! the selected SIMD path: a small ViT's head (T = 17, dh = 16) is a few hundred vector
//! instructions, and dispatching each of its 6 products and 2·17 rows separately (five
//! dispatches per softmax row) cost more than the arithmetic — 27 % of a ViT-MNIST training step
//! on one thread, measured with perf. The fused head runs the same per-path code in the same
//! order as those separate calls ([`head_forward_composed`], [`head_backward_composed`], kept
//! as the reference and as the f64 path), so its results are the same bits (tested on every
//! path).

use super::isa::{self, Isa};
use super::small_mm::{small_mm_on, small_mm_simd};
use super::softmax::{
    scaled_masked_softmax_row_on, scaled_masked_softmax_row_simd, softmax_backward_row_on,
    softmax_backward_row_simd,
};
use crate::tensor::Element;
use pulp::{Simd, WithSimd};

/// Strided row access: row `i` of a (rows, dh) matrix stored with row stride `rs`.
#[derive(Clone, Copy)]
pub struct Rows<'a, T> {
    pub buf: &'a [T],
    pub rs: usize,
    pub dh: usize,
}

impl<'a, T> Rows<'a, T> {
    #[inline]
    fn row(&self, i: usize) -> &'a [T] {
        &self.buf[i * self.rs..i * self.rs + self.dh]
    }
}

/// The blocked (query, key) pairs of one item: row `i` is `data[i·row_stride..][..tk]`
/// (`row_stride` 0: one row shared by every query). `true` = blocked.
#[derive(Clone, Copy)]
pub struct MaskRows<'a> {
    pub data: &'a [bool],
    pub row_stride: usize,
}

impl<'a> MaskRows<'a> {
    #[inline]
    fn row(&self, i: usize, tk: usize) -> &'a [bool] {
        &self.data[i * self.row_stride..i * self.row_stride + tk]
    }
}

/// Per-thread scratch of the attention core, reused across (item, head) pairs.
pub struct HeadScratch<T> {
    /// `Kᵀ` or `Vᵀ` (dh, tkp) with `tkp` = `tk` rounded up to 16 (whole vectors on every
    /// path, so no product runs partial loads down its k loop); padding columns stay 0.
    mt: Vec<T>,
    /// Scores `S` or `dP` (tq, tkp).
    s: Vec<T>,
    tkp: usize,
    /// `dS` (tq, tk).
    ds: Vec<T>,
    /// `Pᵀ` and `dSᵀ` (tk, tq).
    pt: Vec<T>,
    dst: Vec<T>,
    dims: (usize, usize, usize),
}

impl<T: Element> HeadScratch<T> {
    /// Scratch for `tq` queries, `tk` keys and head width `dh`.
    pub fn new(tq: usize, tk: usize, dh: usize) -> Self {
        let tkp = tk.div_ceil(16) * 16;
        HeadScratch {
            mt: vec![T::zero(); dh * tkp],
            s: vec![T::zero(); tq * tkp],
            tkp,
            ds: vec![T::zero(); tq * tk],
            pt: vec![T::zero(); tk * tq],
            dst: vec![T::zero(); tk * tq],
            dims: (tq, tk, dh),
        }
    }
}

/// `dst (cols, rows) = srcᵀ` for `src` rows `src.row(r)`, `dst` row stride `ds`.
#[inline(always)]
fn transpose_into<T: Copy>(src: Rows<'_, T>, rows: usize, dst: &mut [T], ds: usize) {
    for r in 0..rows {
        for (c, &x) in src.row(r).iter().enumerate() {
            dst[c * ds + r] = x;
        }
    }
}

/// One head's forward. `q` has `tq` rows, `k`, `v` `tk` rows, all `dh` wide; fills
/// `p (tq, tk)` and the `tq` rows of `o` (row stride `o_rs`, `dh` entries each).
#[derive(Clone, Copy)]
pub struct HeadInputs<'a, T> {
    pub q: Rows<'a, T>,
    pub k: Rows<'a, T>,
    pub v: Rows<'a, T>,
    pub scale: T,
    pub mask: Option<MaskRows<'a>>,
}

/// The rows as f32 rows when the element type is f32.
fn rows_f32<T: Element>(r: Rows<'_, T>) -> Option<Rows<'_, f32>> {
    T::as_f32(r.buf).map(|buf| Rows {
        buf,
        rs: r.rs,
        dh: r.dh,
    })
}

fn check_dims<T: Element>(x: &HeadInputs<'_, T>, sc: &HeadScratch<T>) -> (usize, usize, usize) {
    let (tq, tk, dh) = sc.dims;
    assert!(
        x.q.dh == dh && x.k.dh == dh && x.v.dh == dh,
        "attention core: head width {} / {} / {} with scratch for {dh}",
        x.q.dh,
        x.k.dh,
        x.v.dh
    );
    (tq, tk, dh)
}

/// The forward of one (item, head) on the selected path.
pub fn head_forward<T: Element>(
    x: HeadInputs<'_, T>,
    p: &mut [T],
    o: (&mut [T], usize),
    sc: &mut HeadScratch<T>,
) {
    head_forward_on(isa::selected(), x, p, o, sc)
}

/// [`head_forward`] on a given path: f32 in one dispatch, f64 as [`head_forward_composed`].
pub fn head_forward_on<T: Element>(
    isa: Isa,
    x: HeadInputs<'_, T>,
    p: &mut [T],
    (o, o_rs): (&mut [T], usize),
    sc: &mut HeadScratch<T>,
) {
    let (tq, tk, dh) = check_dims(&x, sc);
    let tkp = sc.tkp;
    let f = rows_f32;
    if let (Some(q), Some(k), Some(v)) = (f(x.q), f(x.k), f(x.v)) {
        let op = ForwardF32 {
            q,
            k,
            v,
            dims: (tq, tk, dh, tkp),
            scale: x.scale.as_f64() as f32, // exact: an f32
            mask: x.mask,
            p: T::as_f32_mut(p).expect("f32 like q"),
            o: T::as_f32_mut(o).expect("f32 like q"),
            o_rs,
            mt: T::as_f32_mut(&mut sc.mt).expect("f32 like q"),
            s: T::as_f32_mut(&mut sc.s).expect("f32 like q"),
        };
        return isa::dispatch_on(isa, op);
    }
    head_forward_composed(isa, x, p, (o, o_rs), sc)
}

/// The forward as separate kernel calls, each its own dispatch: the reference order of
/// operations of the fused f32 head, and the f64 path.
pub fn head_forward_composed<T: Element>(
    isa: Isa,
    x: HeadInputs<'_, T>,
    p: &mut [T],
    (o, o_rs): (&mut [T], usize),
    sc: &mut HeadScratch<T>,
) {
    let (tq, tk, dh) = check_dims(&x, sc);
    let tkp = sc.tkp;
    transpose_into(x.k, tk, &mut sc.mt, tkp);
    // S = q Kᵀ over the padded width; the padding columns are never read.
    small_mm_on(
        isa,
        (tq, tkp, dh),
        (x.q.buf, x.q.rs),
        (&sc.mt, tkp),
        (&mut sc.s, tkp),
        false,
    );
    for i in 0..tq {
        // P_i = softmax(scale · S_i) with blocked keys at probability 0 (all blocked: zeros).
        let blocked = x.mask.map(|m| m.row(i, tk));
        let pi = &mut p[i * tk..(i + 1) * tk];
        scaled_masked_softmax_row_on(isa, &sc.s[i * tkp..], x.scale, blocked, pi);
    }
    // o = P V
    small_mm_on(
        isa,
        (tq, dh, tk),
        (p, tk),
        (x.v.buf, x.v.rs),
        (o, o_rs),
        false,
    );
}

struct ForwardF32<'a> {
    q: Rows<'a, f32>,
    k: Rows<'a, f32>,
    v: Rows<'a, f32>,
    /// (tq, tk, dh, tkp)
    dims: (usize, usize, usize, usize),
    scale: f32,
    mask: Option<MaskRows<'a>>,
    p: &'a mut [f32],
    o: &'a mut [f32],
    o_rs: usize,
    mt: &'a mut [f32],
    s: &'a mut [f32],
}

impl WithSimd for ForwardF32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (tq, tk, dh, tkp) = self.dims;
        transpose_into(self.k, tk, self.mt, tkp);
        let (q, s) = (self.q, &mut *self.s);
        small_mm_simd(
            simd,
            (tq, tkp, dh),
            (q.buf, q.rs),
            (self.mt, tkp),
            (s, tkp),
            false,
        );
        for i in 0..tq {
            let blocked = self.mask.map(|m| m.row(i, tk));
            let pi = &mut self.p[i * tk..(i + 1) * tk];
            scaled_masked_softmax_row_simd(simd, &s[i * tkp..], self.scale, blocked, pi);
        }
        let v = self.v;
        small_mm_simd(
            simd,
            (tq, dh, tk),
            (self.p, tk),
            (v.buf, v.rs),
            (self.o, self.o_rs),
            false,
        );
    }
}

/// What one head's backward reads besides its forward inputs: the probabilities `p (tq, tk)`,
/// the gradient `dout` of its output rows and, if any, the gradient `gp (tq, tk)` reaching the
/// returned probabilities.
#[derive(Clone, Copy)]
pub struct HeadGrads<'a, T> {
    pub p: &'a [T],
    pub dout: Rows<'a, T>,
    pub gp: Option<&'a [T]>,
}

/// Where a head's backward writes: `dq` rows at `d[off.0..]`, `dk` at `d[off.1..]`, `dv` at
/// `d[off.2..]`, all with row stride `rs`; every one of those rows is overwritten.
pub struct HeadOut<'a, T> {
    pub d: &'a mut [T],
    pub off: (usize, usize, usize),
    pub rs: usize,
}

/// The backward of one (item, head) on the selected path.
pub fn head_backward<T: Element>(
    x: HeadInputs<'_, T>,
    g: HeadGrads<'_, T>,
    out: HeadOut<'_, T>,
    sc: &mut HeadScratch<T>,
) {
    head_backward_on(isa::selected(), x, g, out, sc)
}

/// [`head_backward`] on a given path: f32 in one dispatch, f64 as [`head_backward_composed`].
pub fn head_backward_on<T: Element>(
    isa: Isa,
    x: HeadInputs<'_, T>,
    g: HeadGrads<'_, T>,
    out: HeadOut<'_, T>,
    sc: &mut HeadScratch<T>,
) {
    let (tq, tk, dh) = check_dims(&x, sc);
    let f = rows_f32;
    let gp = match g.gp {
        Some(gp) => T::as_f32(gp).map(Some),
        None => Some(None),
    };
    if let (Some(q), Some(k), Some(v), Some(dout), Some(p), Some(gp)) =
        (f(x.q), f(x.k), f(x.v), f(g.dout), T::as_f32(g.p), gp)
    {
        let op = BackwardF32 {
            q,
            k,
            v,
            dims: (tq, tk, dh, sc.tkp),
            scale: x.scale.as_f64() as f32, // exact: an f32
            p,
            dout,
            gp,
            d: T::as_f32_mut(out.d).expect("f32 like q"),
            off: out.off,
            d_rs: out.rs,
            mt: T::as_f32_mut(&mut sc.mt).expect("f32 like q"),
            s: T::as_f32_mut(&mut sc.s).expect("f32 like q"),
            ds: T::as_f32_mut(&mut sc.ds).expect("f32 like q"),
            pt: T::as_f32_mut(&mut sc.pt).expect("f32 like q"),
            dst: T::as_f32_mut(&mut sc.dst).expect("f32 like q"),
        };
        return isa::dispatch_on(isa, op);
    }
    head_backward_composed(isa, x, g, out, sc)
}

/// The backward as separate kernel calls: the reference of the fused f32 head, and f64's path.
pub fn head_backward_composed<T: Element>(
    isa: Isa,
    x: HeadInputs<'_, T>,
    g: HeadGrads<'_, T>,
    out: HeadOut<'_, T>,
    sc: &mut HeadScratch<T>,
) {
    let (tq, tk, dh) = check_dims(&x, sc);
    let tkp = sc.tkp;
    let (p, dout) = (g.p, g.dout);
    let (d, off, d_rs) = (out.d, out.off, out.rs);
    transpose_into(x.v, tk, &mut sc.mt, tkp);
    // dP = do Vᵀ (+ the gradient reaching P); dS = P ⊙ (dP − rowsum(P ⊙ dP)), scaled.
    let s = &mut sc.s;
    small_mm_on(
        isa,
        (tq, tkp, dh),
        (dout.buf, dout.rs),
        (&sc.mt, tkp),
        (s, tkp),
        false,
    );
    for i in 0..tq {
        let prow = &p[i * tk..(i + 1) * tk];
        let dprow = &mut s[i * tkp..i * tkp + tk];
        if let Some(gp) = g.gp {
            dprow
                .iter_mut()
                .zip(&gp[i * tk..(i + 1) * tk])
                .for_each(|(d, &g)| *d += g);
        }
        softmax_backward_row_on(isa, prow, dprow, x.scale, &mut sc.ds[i * tk..(i + 1) * tk]);
    }
    // dq = dS K  (scale already folded into dS)
    let (q, k) = (x.q, x.k);
    let ds = &sc.ds;
    small_mm_on(
        isa,
        (tq, dh, tk),
        (ds, tk),
        (k.buf, k.rs),
        (&mut d[off.0..], d_rs),
        false,
    );
    let square = |buf| Rows {
        buf,
        rs: tk,
        dh: tk,
    };
    transpose_into(square(p), tq, &mut sc.pt, tq);
    transpose_into(square(ds), tq, &mut sc.dst, tq);
    // dv = Pᵀ do ; dk = dSᵀ q
    let dv = (&mut d[off.2..], d_rs);
    small_mm_on(
        isa,
        (tk, dh, tq),
        (&sc.pt, tq),
        (dout.buf, dout.rs),
        dv,
        false,
    );
    let dk = (&mut d[off.1..], d_rs);
    small_mm_on(isa, (tk, dh, tq), (&sc.dst, tq), (q.buf, q.rs), dk, false);
}

struct BackwardF32<'a> {
    q: Rows<'a, f32>,
    k: Rows<'a, f32>,
    v: Rows<'a, f32>,
    /// (tq, tk, dh, tkp)
    dims: (usize, usize, usize, usize),
    scale: f32,
    p: &'a [f32],
    dout: Rows<'a, f32>,
    gp: Option<&'a [f32]>,
    d: &'a mut [f32],
    off: (usize, usize, usize),
    d_rs: usize,
    mt: &'a mut [f32],
    s: &'a mut [f32],
    ds: &'a mut [f32],
    pt: &'a mut [f32],
    dst: &'a mut [f32],
}

impl WithSimd for BackwardF32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (tq, tk, dh, tkp) = self.dims;
        let (p, dout, d, off, d_rs) = (self.p, self.dout, self.d, self.off, self.d_rs);
        transpose_into(self.v, tk, self.mt, tkp);
        let s = &mut *self.s;
        small_mm_simd(
            simd,
            (tq, tkp, dh),
            (dout.buf, dout.rs),
            (self.mt, tkp),
            (s, tkp),
            false,
        );
        for i in 0..tq {
            let prow = &p[i * tk..(i + 1) * tk];
            let dprow = &mut s[i * tkp..i * tkp + tk];
            if let Some(gp) = self.gp {
                dprow
                    .iter_mut()
                    .zip(&gp[i * tk..(i + 1) * tk])
                    .for_each(|(d, &g)| *d += g);
            }
            let dsi = &mut self.ds[i * tk..(i + 1) * tk];
            softmax_backward_row_simd(simd, prow, dprow, self.scale, dsi);
        }
        let (q, k, ds) = (self.q, self.k, &*self.ds);
        let dq = (&mut d[off.0..], d_rs);
        small_mm_simd(simd, (tq, dh, tk), (ds, tk), (k.buf, k.rs), dq, false);
        let square = |buf| Rows {
            buf,
            rs: tk,
            dh: tk,
        };
        transpose_into(square(p), tq, self.pt, tq);
        transpose_into(square(ds), tq, self.dst, tq);
        let dv = (&mut d[off.2..], d_rs);
        small_mm_simd(
            simd,
            (tk, dh, tq),
            (self.pt, tq),
            (dout.buf, dout.rs),
            dv,
            false,
        );
        let dk = (&mut d[off.1..], d_rs);
        small_mm_simd(simd, (tk, dh, tq), (self.dst, tq), (q.buf, q.rs), dk, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn data(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The fused head (one dispatch) gives the same bits as the composed kernel calls on
    /// every path, forward and backward, for square and rectangular heads, strided (packed
    /// qkv-like) rows, with and without a mask (one query row fully blocked) and a gradient
    /// reaching the probabilities; and every path agrees with the scalar path within 2e-5
    /// relative to the largest entry (lane-order sums, stated in reduce.rs).
    #[test]
    fn fused_head_is_bit_identical_to_composed_calls_on_every_path() {
        let mut rng = Rng::new(11);
        for &(tq, tk, dh) in &[
            (17, 17, 16),
            (5, 9, 8),
            (33, 20, 24),
            (1, 1, 1),
            (16, 16, 64),
        ] {
            let rs = 3 * dh + 5; // rows of a packed [q | k | v] buffer with slack
            let qkv = data(&mut rng, tq.max(tk) * rs);
            let dout = data(&mut rng, tq * (dh + 2));
            let gp = data(&mut rng, tq * tk);
            let mut mask = vec![false; tq * tk];
            for (i, m) in mask.iter_mut().enumerate() {
                *m = (i * 7) % 5 == 1 || i < tk; // row 0 fully blocked
            }
            let rows = |c: usize| Rows {
                buf: &qkv[c..],
                rs,
                dh,
            };
            for masked in [false, true] {
                let x = HeadInputs {
                    q: rows(0),
                    k: rows(dh),
                    v: rows(2 * dh),
                    scale: 1.0 / (dh as f32).sqrt(),
                    mask: masked.then_some(MaskRows {
                        data: &mask,
                        row_stride: tk,
                    }),
                };
                let mut results = Vec::new();
                for isa in isa::detected() {
                    let mut per_path = Vec::new();
                    for fused in [true, false] {
                        let mut sc = HeadScratch::<f32>::new(tq, tk, dh);
                        let (mut p, mut o) = (vec![0.0; tq * tk], vec![9.0; tq * (dh + 1)]);
                        if fused {
                            head_forward_on(isa, x, &mut p, (&mut o, dh + 1), &mut sc);
                        } else {
                            head_forward_composed(isa, x, &mut p, (&mut o, dh + 1), &mut sc);
                        }
                        let mut d = vec![7.0; (tq + 2 * tk) * dh];
                        let g = HeadGrads {
                            p: &p,
                            dout: Rows {
                                buf: &dout,
                                rs: dh + 2,
                                dh,
                            },
                            gp: masked.then_some(&gp[..]),
                        };
                        let out = HeadOut {
                            d: &mut d,
                            off: (0, tq * dh, (tq + tk) * dh),
                            rs: dh,
                        };
                        if fused {
                            head_backward_on(isa, x, g, out, &mut sc);
                        } else {
                            head_backward_composed(isa, x, g, out, &mut sc);
                        }
                        per_path.push((p, o, d));
                    }
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let (f, c) = (&per_path[0], &per_path[1]);
                    let what = format!("{isa} ({tq},{tk},{dh}) masked={masked}");
                    assert_eq!(bits(&f.0), bits(&c.0), "p {what}");
                    assert_eq!(bits(&f.1), bits(&c.1), "o {what}");
                    assert_eq!(bits(&f.2), bits(&c.2), "dq dk dv {what}");
                    if masked {
                        assert!(f.0[..tk].iter().all(|&x| x == 0.0), "blocked row {what}");
                    }
                    assert!(f.2.iter().all(|x| x.is_finite()), "{what}");
                    results.push(per_path.swap_remove(0));
                }
                let scalar = results.last().unwrap();
                for r in &results {
                    for (a, b) in [(&r.0, &scalar.0), (&r.1, &scalar.1), (&r.2, &scalar.2)] {
                        let big = b.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                        for (x, y) in a.iter().zip(b.iter()) {
                            assert!((x - y).abs() <= 2e-5 * big, "{x} vs {y}");
                        }
                    }
                }
            }
        }
    }

    /// f64 (the gradient checks' type) takes the composed path: same result either way.
    #[test]
    fn f64_heads_take_the_composed_path() {
        let (tq, tk, dh) = (3, 4, 2);
        let qkv: Vec<f64> = (0..tk * 3 * dh).map(|i| (i as f64 * 0.37).sin()).collect();
        let rows = |c: usize| Rows {
            buf: &qkv[c..],
            rs: 3 * dh,
            dh,
        };
        let x = HeadInputs {
            q: rows(0),
            k: rows(dh),
            v: rows(2 * dh),
            scale: 0.5,
            mask: None,
        };
        let mut sc = HeadScratch::<f64>::new(tq, tk, dh);
        let (mut p, mut o) = (vec![0.0; tq * tk], vec![0.0; tq * dh]);
        head_forward(x, &mut p, (&mut o, dh), &mut sc);
        for i in 0..tq {
            let row = &p[i * tk..(i + 1) * tk];
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-15);
            // P_ij ∝ exp(α q_i · k_j), by definition.
            let s: Vec<f64> = (0..tk)
                .map(|j| {
                    0.5 * (0..dh)
                        .map(|c| qkv[i * 6 + c] * qkv[j * 6 + dh + c])
                        .sum::<f64>()
                })
                .collect();
            let z: f64 = s.iter().map(|v| v.exp()).sum();
            for j in 0..tk {
                assert!((row[j] - s[j].exp() / z).abs() < 1e-14);
            }
        }
    }
}
