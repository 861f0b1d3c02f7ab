//! Message-passing kernels over CSR segments (`nn::graph_ops` and `nn::sparse_linear` hold
//! the ops and their math): gathers that sum (optionally weighted, per head) the table rows that
//! the edges of a segment read, per-edge head dot products, segment maxima with their arg-max
//! and its backward, the per-edge sum of two gathered rows, the scatter-add of rows, the sparse
//! × dense product of a CSR (or CSC) matrix, and the segment softmax over the incoming edges of a node (per head) with
//! its backward.
//!
//! **Order of operations.** The gathers, maxima, edge sums, scatters and sparse products add the edges of
//! a segment in their stored order, one output entry at a time (`o ← o + α·v`, no FMA), so every
//! path gives the scalar path's bits — the plain loops — and so does any thread count: rows are
//! split into fixed blocks by shape. Head dots (`edge_dots`) sum each head's `d` products in
//! the lane order of [`super::reduce`] (f32) on the path [`head_dot_path`] picks, within
//! `(d − 1)·2⁻²⁴·Σ|tᵢ| + 2⁻²⁴·Σ|tᵢ|` of the exact value (tested); the scalar path, and every
//! path when `d` is below its vector width, is the left-to-right loop. f64 takes the plain
//! loops everywhere.
//!
//! A segment softmax block is the `(len, heads)` block of edge rows `ip[i]..ip[i + 1]` of one
//! node. It works across heads in vector order — column maxima, exponentials, column sums in
//! edge order, scaling — so every head sums its edges left to right as the plain definition
//! does: the f64 results equal the per-head loops exactly, and every SIMD path gives the same
//! bits as the scalar one (f32 exponentials through `exp_f32`).

use super::elementwise::exp_f32;
use super::isa::{self, Isa};
use super::reduce::dot_lanes;
use super::{load, store};
use crate::tensor::Element;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Output rows per parallel task (and per dispatch) of the segment kernels: enough work to
/// amortize a task, enough tasks to balance a few thousand nodes over the threads.
const ROW_BLOCK: usize = 32;
/// Edges per parallel task of the per-edge kernels.
const EDGE_BLOCK: usize = 256;

/// Which edges feed each output row of a segment kernel: row `r` reads the edges
/// `ptr[r]..ptr[r + 1]` themselves (CSR by destination), or with `ids` the edge ids
/// `ids[ptr[r]..ptr[r + 1]]` (the by-row grouping `EdgeIndex::groups`).
#[derive(Clone, Copy, Debug)]
pub struct Segments<'a> {
    pub ptr: &'a [usize],
    pub ids: Option<&'a [usize]>,
}

impl<'a> Segments<'a> {
    /// Row `r` reads edges `ptr[r]..ptr[r + 1]`.
    pub fn csr(ptr: &'a [usize]) -> Self {
        Segments { ptr, ids: None }
    }
    /// Row `r` reads edges `ids[ptr[r]..ptr[r + 1]]`.
    pub fn grouped(ptr: &'a [usize], ids: &'a [usize]) -> Self {
        Segments {
            ptr,
            ids: Some(ids),
        }
    }
    /// Number of output rows.
    pub fn len(&self) -> usize {
        self.ptr.len().saturating_sub(1)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f(e)` for the edges of row `r`, in stored order.
    #[inline(always)]
    fn for_each(&self, r: usize, mut f: impl FnMut(usize)) {
        let (lo, hi) = (self.ptr[r], self.ptr[r + 1]);
        match self.ids {
            None => (lo..hi).for_each(f),
            Some(ids) => ids[lo..hi].iter().for_each(|&e| f(e)),
        }
    }
}

/// Per-edge, per-head weights of a gather: edge `e`, head `h` adds with `scale · alpha[e·heads + h]`.
#[derive(Clone, Copy, Debug)]
pub struct EdgeWeights<'a, T> {
    pub alpha: &'a [T],
    pub heads: usize,
    pub scale: T,
}

/// `o ← o + v`.
#[inline(always)]
fn add_row<T: Element>(o: &mut [T], v: &[T]) {
    o.iter_mut().zip(v).for_each(|(o, &v)| *o += v);
}

/// `o ← o + a·v`.
#[inline(always)]
fn axpy_row<T: Element>(o: &mut [T], a: T, v: &[T]) {
    o.iter_mut().zip(v).for_each(|(o, &v)| *o += a * v);
}

/// Vectors kept in registers per pass of [`accumulate_row32`] over a row's items.
const ACC_VECTORS: usize = 4;

/// An output row in explicit f32 lanes: `o = init + Σ_t c_t ⊙ v_t` over the `n` items `t` of a
/// segment, `v_t = row(t)` and `c_t` the coefficient vector `coef(t, j)` of lanes `j..`. The
/// partial sums stay in up to [`ACC_VECTORS`] registers per pass over the items (the scalar
/// loop loads and stores the output row once per item); each lane adds the products in item
/// order, a product then a sum, so the bits are the scalar loop's (`o ← o + c·v`).
#[inline(always)]
fn accumulate_row32<'r, S: Simd>(
    s: S,
    o: &mut [f32],
    init: Option<&[f32]>,
    n: usize,
    row: impl Fn(usize) -> &'r [f32],
    coef: impl Fn(usize, usize) -> S::f32s,
) {
    let (w, l) = (o.len(), S::F32_LANES);
    let mut j = 0;
    while j < w {
        let nv = (w - j).div_ceil(l).min(ACC_VECTORS);
        let mut acc = [s.splat_f32s(0.0); ACC_VECTORS];
        if let Some(b) = init {
            for (v, a) in acc.iter_mut().enumerate().take(nv) {
                *a = load(s, b, j + v * l);
            }
        }
        for t in 0..n {
            let r = row(t);
            for (v, a) in acc.iter_mut().enumerate().take(nv) {
                let c = coef(t, j + v * l);
                *a = s.add_f32s(*a, s.mul_f32s(c, load(s, r, j + v * l)));
            }
        }
        for (v, a) in acc.iter().enumerate().take(nv) {
            store(s, o, j + v * l, *a);
        }
        j += nv * l;
    }
}

/// The rows of one block of [`segment_gather_on`] (f32).
struct GatherRows32<'a> {
    out: &'a mut [f32],
    first: usize,
    width: usize,
    seg: Segments<'a>,
    table: &'a [f32],
    rows: Option<&'a [usize]>,
    weights: Option<EdgeWeights<'a, f32>>,
}

impl WithSimd for GatherRows32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let w = self.width;
        let (mut edges, mut coef, mut init) = (Vec::new(), Vec::new(), Vec::new());
        for (k, o) in self.out.chunks_exact_mut(w).enumerate() {
            edges.clear();
            self.seg.for_each(self.first + k, |e| edges.push(e));
            let table_row = |t: usize| {
                let e = edges[t];
                let tr = self.rows.map_or(e, |rows| rows[e]);
                &self.table[tr * w..(tr + 1) * w]
            };
            // The gather adds onto what `o` holds.
            init.clear();
            init.extend_from_slice(o);
            let init = &init[..];
            match self.weights {
                None => accumulate_row32(s, o, Some(init), edges.len(), table_row, |_, _| {
                    s.splat_f32s(1.0)
                }),
                Some(wt) => {
                    // Each edge's head weights spread over the full width (`d = W/heads` lanes
                    // per head), so heads narrower than a vector still take whole vectors.
                    let d = w / wt.heads;
                    coef.resize(edges.len() * w, 0.0);
                    for (t, &e) in edges.iter().enumerate() {
                        let al = &wt.alpha[e * wt.heads..(e + 1) * wt.heads];
                        for (c, &a) in coef[t * w..(t + 1) * w].chunks_exact_mut(d).zip(al) {
                            c.fill(wt.scale * a);
                        }
                    }
                    let coef = &coef;
                    accumulate_row32(s, o, Some(init), edges.len(), table_row, |t, j| {
                        load(s, &coef[t * w..(t + 1) * w], j)
                    })
                }
            }
        }
    }
}

/// Runs `f(first, rows)` on every block of [`ROW_BLOCK`] `width`-rows of `out` seen as f32
/// (`first` = the block's first row), in parallel: the f32 fast paths, which dispatch their own
/// explicit-lane op on each block. `out` must hold f32.
fn for_each_row_block32<T: Element>(
    out: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    out.par_chunks_mut(ROW_BLOCK * width)
        .enumerate()
        .for_each(|(b, blk)| f(b * ROW_BLOCK, T::as_f32_mut(blk).expect("one element type")));
}

/// Runs `f(r, row)` for every `width`-row of `out`, in parallel blocks of [`ROW_BLOCK`] rows,
/// each block in one dispatch on `isa`.
fn for_each_row_block<T: Element>(
    isa: Isa,
    out: &mut [T],
    width: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    if width == 0 {
        return;
    }
    out.par_chunks_mut(ROW_BLOCK * width)
        .enumerate()
        .for_each(|(b, blk)| {
            isa::dispatch_on(isa, || {
                for (k, o) in blk.chunks_exact_mut(width).enumerate() {
                    f(b * ROW_BLOCK + k, o);
                }
            })
        });
}

/// Segment gather-sum into `out (seg.len(), W)`: `out[r] += Σ_{e ∈ seg(r)} w_e ⊙ S[row_e]` with
/// `S (·, W)` the `table`, `row_e = rows[e]` (or `e` itself without `rows`) and `w_e` the
/// weights of edge `e` (head `h` scales its block `h·d..(h+1)·d`, `d = W/heads`), or 1 without
/// weights. Message passing's aggregation (`rows` = the message row of each edge), and every
/// backward that sums over the edges leaving a row (`seg` grouped, `rows` = destinations).
pub fn segment_gather_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    width: usize,
    seg: Segments<'_>,
    table: &[T],
    rows: Option<&[usize]>,
    weights: Option<EdgeWeights<'_, T>>,
) {
    if weights.is_some_and(|w| w.heads == 0 || !width.is_multiple_of(w.heads)) {
        return;
    }
    if let (Some(table), true) = (T::as_f32(table), width > 0) {
        let weights = weights.map(|w| EdgeWeights {
            alpha: T::as_f32(w.alpha).expect("one element type"),
            heads: w.heads,
            scale: w.scale.as_f64() as f32,
        });
        for_each_row_block32(out, width, |first, out| {
            let op = GatherRows32 {
                out,
                first,
                width,
                seg,
                table,
                rows,
                weights,
            };
            isa::dispatch_on(isa, op)
        });
        return;
    }
    // f64: the plain loops.
    for_each_row_block(isa, out, width, |r, o| {
        seg.for_each(r, |e| {
            let tr = rows.map_or(e, |rows| rows[e]);
            let sr = &table[tr * width..(tr + 1) * width];
            match weights {
                None => add_row(o, sr),
                Some(w) => {
                    let d = width / w.heads;
                    let al = &w.alpha[e * w.heads..(e + 1) * w.heads];
                    for ((oh, sh), &a) in o.chunks_exact_mut(d).zip(sr.chunks_exact(d)).zip(al) {
                        axpy_row(oh, w.scale * a, sh);
                    }
                }
            }
        })
    });
}

/// [`segment_gather_on`] on the selected path.
pub fn segment_gather<T: Element>(
    out: &mut [T],
    width: usize,
    seg: Segments<'_>,
    table: &[T],
    rows: Option<&[usize]>,
    weights: Option<EdgeWeights<'_, T>>,
) {
    segment_gather_on(isa::selected(), out, width, seg, table, rows, weights)
}

struct EdgeDots32<'a> {
    out: &'a mut [f32],
    first: usize,
    a: &'a [f32],
    a_rows: &'a [usize],
    b: &'a [f32],
    b_rows: &'a [usize],
    width: usize,
    heads: usize,
    scale: f32,
}

impl WithSimd for EdgeDots32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let (w, h) = (self.width, self.heads);
        let d = w / h;
        for (k, o) in self.out.chunks_exact_mut(h).enumerate() {
            let e = self.first + k;
            let ar = &self.a[self.a_rows[e] * w..(self.a_rows[e] + 1) * w];
            let br = &self.b[self.b_rows[e] * w..(self.b_rows[e] + 1) * w];
            for ((o, ah), bh) in o.iter_mut().zip(ar.chunks_exact(d)).zip(br.chunks_exact(d)) {
                *o = self.scale * dot_lanes(simd, ah, bh);
            }
        }
    }
}

/// The path the head dots of `d` entries take on `isa`: AVX-512 hands heads of 8 to 15 entries
/// to the AVX2 lanes (one 8-wide vector and its tree instead of a scalar tail of 8–15 products;
/// GAT and graph-Transformer heads are 8 wide). AVX-512 CPUs always have AVX2.
pub fn head_dot_path(isa: Isa, d: usize) -> Isa {
    if isa == Isa::Avx512 && (8..16).contains(&d) {
        Isa::Avx2
    } else {
        isa
    }
}

/// Per-edge head dots into `out (E, heads)`: `out[e,h] = scale · ⟨A[a_rows[e], h], B[b_rows[e], h]⟩`
/// for `A, B (·, W)` split into `heads` blocks of `d = W/heads` (f32 in lane order, see the
/// module doc). Dot-product attention scores on edges, and the gradient of per-edge weights.
#[allow(clippy::too_many_arguments)]
pub fn edge_dots_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    a: &[T],
    a_rows: &[usize],
    b: &[T],
    b_rows: &[usize],
    width: usize,
    heads: usize,
    scale: T,
) {
    if heads == 0 || !width.is_multiple_of(heads) {
        return;
    }
    let d = width / heads;
    let isa = head_dot_path(isa, d);
    out.par_chunks_mut(EDGE_BLOCK * heads)
        .enumerate()
        .for_each(|(bi, blk)| {
            let first = bi * EDGE_BLOCK;
            if let (Some(a), Some(b)) = (T::as_f32(a), T::as_f32(b)) {
                let out = T::as_f32_mut(blk).expect("same element type");
                let scale = scale.as_f64() as f32;
                let op = EdgeDots32 {
                    out,
                    first,
                    a,
                    a_rows,
                    b,
                    b_rows,
                    width,
                    heads,
                    scale,
                };
                return isa::dispatch_on(isa, op);
            }
            // f64: each head's products summed left to right.
            isa::dispatch_on(isa, || {
                for (k, o) in blk.chunks_exact_mut(heads).enumerate() {
                    let e = first + k;
                    let ar = &a[a_rows[e] * width..(a_rows[e] + 1) * width];
                    let br = &b[b_rows[e] * width..(b_rows[e] + 1) * width];
                    for ((o, ah), bh) in
                        o.iter_mut().zip(ar.chunks_exact(d)).zip(br.chunks_exact(d))
                    {
                        let dot = ah.iter().zip(bh).fold(T::zero(), |s, (&x, &y)| s + x * y);
                        *o = scale * dot;
                    }
                }
            })
        });
}

/// [`edge_dots_on`] on the selected path.
#[allow(clippy::too_many_arguments)]
pub fn edge_dots<T: Element>(
    out: &mut [T],
    a: &[T],
    a_rows: &[usize],
    b: &[T],
    b_rows: &[usize],
    width: usize,
    heads: usize,
    scale: T,
) {
    edge_dots_on(
        isa::selected(),
        out,
        a,
        a_rows,
        b,
        b_rows,
        width,
        heads,
        scale,
    )
}

/// "No edge" in an arg-max table of [`segment_max_on`].
pub const NO_EDGE: u32 = u32::MAX;

/// The rows `first..` of a segment-max block: each row starts as its first edge's table row
/// (arg = that edge), then `update(o, a, v, e)` folds in every further edge; rows without
/// edges get 0 and [`NO_EDGE`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn max_rows<T: Copy>(
    ob: &mut [T],
    ab: &mut [u32],
    first: usize,
    width: usize,
    seg: Segments<'_>,
    table: &[T],
    rows: &[usize],
    zero: T,
    mut update: impl FnMut(&mut [T], &mut [u32], &[T], u32),
) {
    for (k, (o, a)) in ob
        .chunks_exact_mut(width)
        .zip(ab.chunks_exact_mut(width))
        .enumerate()
    {
        o.fill(zero);
        a.fill(NO_EDGE);
        let mut fresh = true;
        seg.for_each(first + k, |e| {
            let sr = &table[rows[e] * width..(rows[e] + 1) * width];
            if fresh {
                o.copy_from_slice(sr);
                a.fill(e as u32);
                fresh = false;
            } else {
                update(o, a, sr, e as u32);
            }
        })
    }
}

/// `(o, a) ← (v, e)` where `v > o`: one edge's arg-max update, in f32 vectors (compare and
/// select, no branch to mispredict).
#[inline(always)]
fn max_update<S: Simd>(simd: S, o: &mut [f32], a: &mut [u32], v: &[f32], e: u32) {
    let (oh, ot) = S::as_mut_simd_f32s(o);
    let (ah, at) = S::as_mut_simd_u32s(a);
    let (vh, vt) = S::as_simd_f32s(v);
    let ev = simd.splat_u32s(e);
    for ((o, a), &v) in oh.iter_mut().zip(ah.iter_mut()).zip(vh) {
        let take = simd.greater_than_f32s(v, *o);
        *o = simd.select_f32s(take, v, *o);
        *a = simd.select_u32s(take, ev, *a);
    }
    for ((o, a), &v) in ot.iter_mut().zip(at.iter_mut()).zip(vt) {
        if v > *o {
            *o = v;
            *a = e;
        }
    }
}

/// `o ← o + g` where `a = e`: one edge's share of the max backward, in f32 vectors.
#[inline(always)]
fn max_route<S: Simd>(simd: S, o: &mut [f32], a: &[u32], g: &[f32], e: u32) {
    let (oh, ot) = S::as_mut_simd_f32s(o);
    let (ah, at) = S::as_simd_u32s(a);
    let (gh, gt) = S::as_simd_f32s(g);
    let ev = simd.splat_u32s(e);
    for ((o, &a), &g) in oh.iter_mut().zip(ah).zip(gh) {
        let hit = simd.equal_u32s(a, ev);
        *o = simd.select_f32s(hit, simd.add_f32s(*o, g), *o);
    }
    for ((o, &a), &g) in ot.iter_mut().zip(at).zip(gt) {
        if a == e {
            *o += g;
        }
    }
}

struct MaxBlock32<'a> {
    ob: &'a mut [f32],
    ab: &'a mut [u32],
    first: usize,
    width: usize,
    seg: Segments<'a>,
    table: &'a [f32],
    rows: &'a [usize],
}

impl WithSimd for MaxBlock32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let update = |o: &mut [f32], a: &mut [u32], v: &[f32], e| max_update(simd, o, a, v, e);
        let (first, width, seg) = (self.first, self.width, self.seg);
        max_rows(
            self.ob, self.ab, first, width, seg, self.table, self.rows, 0.0, update,
        );
    }
}

/// Segment maxima into `out (seg.len(), W)` and `arg`: `out[r,c] = max_{e ∈ seg(r)} S[rows[e], c]`
/// with `arg[r,c]` the first edge reaching it (a later edge wins only when strictly greater,
/// so a NaN of the first edge stays); rows without edges get 0 and [`NO_EDGE`]. Edge ids must
/// be below `u32::MAX` (the caller checks). Comparisons and selects only: exact on every path.
pub fn segment_max_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    arg: &mut [u32],
    width: usize,
    seg: Segments<'_>,
    table: &[T],
    rows: &[usize],
) {
    if width == 0 {
        return;
    }
    out.par_chunks_mut(ROW_BLOCK * width)
        .zip(arg.par_chunks_mut(ROW_BLOCK * width))
        .enumerate()
        .for_each(|(b, (ob, ab))| {
            let first = b * ROW_BLOCK;
            if let Some(table) = T::as_f32(table) {
                let ob = T::as_f32_mut(ob).expect("same element type");
                let op = MaxBlock32 {
                    ob,
                    ab,
                    first,
                    width,
                    seg,
                    table,
                    rows,
                };
                return isa::dispatch_on(isa, op);
            }
            isa::dispatch_on(isa, || {
                let update = |o: &mut [T], a: &mut [u32], v: &[T], e| {
                    for ((o, a), &v) in o.iter_mut().zip(a.iter_mut()).zip(v) {
                        if v > *o {
                            *o = v;
                            *a = e;
                        }
                    }
                };
                max_rows(ob, ab, first, width, seg, table, rows, T::zero(), update)
            })
        });
}

/// [`segment_max_on`] on the selected path.
pub fn segment_max<T: Element>(
    out: &mut [T],
    arg: &mut [u32],
    width: usize,
    seg: Segments<'_>,
    table: &[T],
    rows: &[usize],
) {
    segment_max_on(isa::selected(), out, arg, width, seg, table, rows)
}

struct MaxBackBlock32<'a> {
    db: &'a mut [f32],
    first: usize,
    width: usize,
    seg: Segments<'a>,
    dst: &'a [usize],
    arg: &'a [u32],
    g: &'a [f32],
}

impl WithSimd for MaxBackBlock32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let w = self.width;
        for (k, o) in self.db.chunks_exact_mut(w).enumerate() {
            self.seg.for_each(self.first + k, |e| {
                let i = self.dst[e];
                let (a, g) = (&self.arg[i * w..(i + 1) * w], &self.g[i * w..(i + 1) * w]);
                max_route(simd, o, a, g, e as u32);
            })
        }
    }
}

/// Backward of [`segment_max_on`] into `ds (rows, W)`: `ds[r,c] += Σ_{e ∈ seg(r)} [arg[dst_e, c] = e] · G[dst_e, c]`
/// with `seg` the edges reading table row `r` (grouped) and `dst_e` the output row of edge `e`.
pub fn segment_max_backward_on<T: Element>(
    isa: Isa,
    ds: &mut [T],
    width: usize,
    seg: Segments<'_>,
    dst: &[usize],
    arg: &[u32],
    g: &[T],
) {
    if width == 0 {
        return;
    }
    ds.par_chunks_mut(ROW_BLOCK * width)
        .enumerate()
        .for_each(|(b, db)| {
            let first = b * ROW_BLOCK;
            if let Some(g) = T::as_f32(g) {
                let db = T::as_f32_mut(db).expect("same element type");
                let op = MaxBackBlock32 {
                    db,
                    first,
                    width,
                    seg,
                    dst,
                    arg,
                    g,
                };
                return isa::dispatch_on(isa, op);
            }
            isa::dispatch_on(isa, || {
                for (k, o) in db.chunks_exact_mut(width).enumerate() {
                    seg.for_each(first + k, |e| {
                        let i = dst[e];
                        let (ar, gr) = (
                            &arg[i * width..(i + 1) * width],
                            &g[i * width..(i + 1) * width],
                        );
                        for ((o, &a), &gv) in o.iter_mut().zip(ar).zip(gr) {
                            if a == e as u32 {
                                *o += gv;
                            }
                        }
                    })
                }
            })
        });
}

/// [`segment_max_backward_on`] on the selected path.
pub fn segment_max_backward<T: Element>(
    ds: &mut [T],
    width: usize,
    seg: Segments<'_>,
    dst: &[usize],
    arg: &[u32],
    g: &[T],
) {
    segment_max_backward_on(isa::selected(), ds, width, seg, dst, arg, g)
}

/// Per-edge sums of two gathered rows into `out (E, W)`: `out[e] = A[a_rows[e]] + B[b_rows[e]]`
/// (GAT's source and destination score terms). Exact on every path.
pub fn edge_add_rows_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    a: &[T],
    a_rows: &[usize],
    b: &[T],
    b_rows: &[usize],
    width: usize,
) {
    if width == 0 {
        return;
    }
    out.par_chunks_mut(EDGE_BLOCK * width)
        .enumerate()
        .for_each(|(bi, blk)| {
            isa::dispatch_on(isa, || {
                for (k, o) in blk.chunks_exact_mut(width).enumerate() {
                    let e = bi * EDGE_BLOCK + k;
                    let ar = &a[a_rows[e] * width..(a_rows[e] + 1) * width];
                    let br = &b[b_rows[e] * width..(b_rows[e] + 1) * width];
                    for ((o, &x), &y) in o.iter_mut().zip(ar).zip(br) {
                        *o = x + y;
                    }
                }
            })
        });
}

/// [`edge_add_rows_on`] on the selected path.
pub fn edge_add_rows<T: Element>(
    out: &mut [T],
    a: &[T],
    a_rows: &[usize],
    b: &[T],
    b_rows: &[usize],
    width: usize,
) {
    edge_add_rows_on(isa::selected(), out, a, a_rows, b, b_rows, width)
}

/// Scatter-add of rows: `out[idx[e]] += src[e]` for `e = 0, 1, …` in order (rows `width`
/// wide) — the adjoint of a row gather. One thread: the targets of different `e` may collide.
/// Exact on every path.
pub fn scatter_add_rows_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    width: usize,
    idx: &[usize],
    src: &[T],
) {
    if width == 0 {
        return;
    }
    isa::dispatch_on(isa, || {
        for (&i, s) in idx.iter().zip(src.chunks_exact(width)) {
            add_row(&mut out[i * width..(i + 1) * width], s);
        }
    })
}

/// [`scatter_add_rows_on`] on the selected path.
pub fn scatter_add_rows<T: Element>(out: &mut [T], width: usize, idx: &[usize], src: &[T]) {
    scatter_add_rows_on(isa::selected(), out, width, idx, src)
}

/// A sparse matrix in compressed rows (CSR) — or compressed columns read as rows (CSC) — with
/// f64 values: row `r` holds entries `k ∈ ptr[r]..ptr[r + 1]` in column `cols[k]` with value
/// `vals[k]`, or `vals[pos[k]]` when the values are stored in another order (a CSC view of a
/// CSR matrix keeps the position of each entry in the CSR value array).
#[derive(Clone, Copy, Debug)]
pub struct CsrView<'a> {
    pub ptr: &'a [usize],
    pub cols: &'a [usize],
    pub vals: &'a [f64],
    pub pos: Option<&'a [usize]>,
}

/// Sparse × dense: `out (rows, W) = init + X · D` for `X` a [`CsrView`] and `D (·, W)` dense:
/// `out[r] = init + Σ_k X[r, cols[k]] · D[cols[k]]` in stored order (`init` = a bias row
/// broadcast to every row, or 0). Exact on every path.
pub fn spmm_on<T: Element>(
    isa: Isa,
    out: &mut [T],
    width: usize,
    x: CsrView<'_>,
    dense: &[T],
    init: Option<&[T]>,
) {
    if let (Some(dense), true) = (T::as_f32(dense), width > 0) {
        let init = init.map(|b| T::as_f32(b).expect("one element type"));
        for_each_row_block32(out, width, |first, out| {
            let op = SpmmRows32 {
                out,
                first,
                width,
                x,
                dense,
                init,
            };
            isa::dispatch_on(isa, op)
        });
        return;
    }
    for_each_row_block(isa, out, width, |r, o| {
        match init {
            Some(b) => o.copy_from_slice(b),
            None => o.fill(T::zero()),
        }
        for k in x.ptr[r]..x.ptr[r + 1] {
            let v = T::c(x.vals[x.pos.map_or(k, |p| p[k])]);
            let c = x.cols[k];
            axpy_row(o, v, &dense[c * width..(c + 1) * width]);
        }
    });
}

/// The rows of one block of [`spmm_on`] (f32).
struct SpmmRows32<'a> {
    out: &'a mut [f32],
    first: usize,
    width: usize,
    x: CsrView<'a>,
    dense: &'a [f32],
    init: Option<&'a [f32]>,
}

impl WithSimd for SpmmRows32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let (w, x) = (self.width, self.x);
        for (k, o) in self.out.chunks_exact_mut(w).enumerate() {
            let r = self.first + k;
            let lo = x.ptr[r];
            let n = x.ptr[r + 1] - lo;
            let row = |t: usize| {
                let c = x.cols[lo + t];
                &self.dense[c * w..(c + 1) * w]
            };
            let val = |t: usize, _j: usize| {
                let k = lo + t;
                s.splat_f32s(x.vals[x.pos.map_or(k, |p| p[k])] as f32)
            };
            accumulate_row32(s, o, self.init, n, row, val);
        }
    }
}

/// [`spmm_on`] on the selected path.
pub fn spmm<T: Element>(
    out: &mut [T],
    width: usize,
    x: CsrView<'_>,
    dense: &[T],
    init: Option<&[T]>,
) {
    spmm_on(isa::selected(), out, width, x, dense, init)
}

/// Splits `data` into consecutive mutable parts of `(ptr[k+1] − ptr[k])·width` elements.
fn split_by_ptr<'a, T>(data: &'a mut [T], ptr: &[usize], width: usize) -> Vec<&'a mut [T]> {
    let mut out = Vec::with_capacity(ptr.len().saturating_sub(1));
    let mut rest = data;
    for w in ptr.windows(2) {
        let (a, b) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * width);
        out.push(a);
        rest = b;
    }
    out
}

/// Node boundaries of the parallel blocks of [`edge_softmax_on`]: every [`ROW_BLOCK`]-th entry
/// of the CSR pointer, and its last.
fn block_ptr(ip: &[usize]) -> Vec<usize> {
    let n = ip.len().saturating_sub(1);
    (0..n.div_ceil(ROW_BLOCK))
        .map(|b| ip[b * ROW_BLOCK])
        .chain(ip.last().copied())
        .collect()
}

/// The softmax of one `(len, heads)` segment with the scratch rows `m`, `z` (`heads` long) and
/// the exponential `exp` of the element type.
#[inline(always)]
fn softmax_segment<T: Element>(
    seg: &mut [T],
    heads: usize,
    m: &mut [T],
    z: &mut [T],
    exp: impl Fn(T) -> T,
) {
    m.fill(T::neg_infinity());
    for row in seg.chunks_exact(heads) {
        m.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
    }
    m.iter_mut().for_each(|m| {
        if *m == T::neg_infinity() {
            *m = T::zero()
        }
    });
    for row in seg.chunks_exact_mut(heads) {
        for (v, &mh) in row.iter_mut().zip(m.iter()) {
            // The mask: exact 0 (the clamped f32 exponential would give a tiny positive value).
            let e = exp(*v - mh);
            *v = if *v == T::neg_infinity() {
                T::zero()
            } else {
                e
            };
        }
    }
    z.fill(T::zero());
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
        row.iter_mut().zip(z.iter()).for_each(|(v, &inv)| *v *= inv);
    }
}

/// Softmaxes of the segments `ptr[k]..ptr[k+1]` of `a`, in one dispatch: f32 through
/// `exp_f32`, f64 through libm.
fn softmax_segments_on<T: Element>(isa: Isa, a: &mut [T], ptr: &[usize], heads: usize) {
    let mut m = vec![T::zero(); heads];
    let mut z = vec![T::zero(); heads];
    let base = ptr.first().copied().unwrap_or(0);
    match T::as_f32_mut(a) {
        Some(a) => {
            let (m, z) = (
                T::as_f32_mut(&mut m).expect("same element type"),
                T::as_f32_mut(&mut z).expect("same element type"),
            );
            isa::dispatch_on(isa, || {
                for w in ptr.windows(2) {
                    let seg = &mut a[(w[0] - base) * heads..(w[1] - base) * heads];
                    softmax_segment(seg, heads, m, z, exp_f32);
                }
            })
        }
        None => isa::dispatch_on(isa, || {
            for w in ptr.windows(2) {
                let seg = &mut a[(w[0] - base) * heads..(w[1] - base) * heads];
                softmax_segment(seg, heads, &mut m, &mut z, T::exp);
            }
        }),
    }
}

/// Softmax down each of the `heads` columns of a `(len, heads)` segment, in place:
/// `α[e,h] = exp(s[e,h] − m_h) / Σ_e' exp(s[e',h] − m_h)`; a score of `−∞` gets weight 0 and an
/// all-`−∞` column gives zeros.
pub fn segment_softmax_on<T: Element>(isa: Isa, seg: &mut [T], heads: usize) {
    if heads == 0 || seg.is_empty() {
        return;
    }
    let len = seg.len() / heads;
    softmax_segments_on(isa, seg, &[0, len], heads)
}

/// [`segment_softmax_on`] on the selected path.
pub fn segment_softmax<T: Element>(seg: &mut [T], heads: usize) {
    segment_softmax_on(isa::selected(), seg, heads)
}

/// The edge softmax of `scores (E, heads)` in place: [`segment_softmax_on`] on the segment
/// `ip[i]..ip[i + 1]` of every node `i` (CSR by destination), in parallel blocks of nodes.
pub fn edge_softmax_on<T: Element>(isa: Isa, scores: &mut [T], ip: &[usize], heads: usize) {
    if heads == 0 {
        return;
    }
    let bp = block_ptr(ip);
    split_by_ptr(scores, &bp, heads)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, blk)| {
            let nodes = &ip[b * ROW_BLOCK..(ip.len() - 1).min((b + 1) * ROW_BLOCK) + 1];
            softmax_segments_on(isa, blk, nodes, heads)
        });
}

/// [`edge_softmax_on`] on the selected path.
pub fn edge_softmax<T: Element>(scores: &mut [T], ip: &[usize], heads: usize) {
    edge_softmax_on(isa::selected(), scores, ip, heads)
}

/// Backward of one segment with the scratch row `dot`: `ds = α ⊙ (g − Σ_e' α g)` per head.
#[inline(always)]
fn softmax_segment_backward<T: Element>(
    a: &[T],
    g: &[T],
    heads: usize,
    ds: &mut [T],
    dot: &mut [T],
) {
    dot.fill(T::zero());
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
        for (((d, &a), &g), &dt) in dr.iter_mut().zip(ar).zip(gr).zip(dot.iter()) {
            *d = a * (g - dt);
        }
    }
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
    isa::dispatch_on(isa, || softmax_segment_backward(a, g, heads, ds, &mut dot))
}

/// [`segment_softmax_backward_on`] on the selected path.
pub fn segment_softmax_backward<T: Element>(a: &[T], g: &[T], heads: usize, ds: &mut [T]) {
    segment_softmax_backward_on(isa::selected(), a, g, heads, ds)
}

/// Backward of [`edge_softmax_on`]: [`segment_softmax_backward_on`] on every node's segment of
/// `α`, `g` and `ds (E, heads)`, in parallel blocks of nodes.
pub fn edge_softmax_backward_on<T: Element>(
    isa: Isa,
    a: &[T],
    g: &[T],
    ip: &[usize],
    heads: usize,
    ds: &mut [T],
) {
    if heads == 0 {
        return;
    }
    let bp = block_ptr(ip);
    split_by_ptr(ds, &bp, heads)
        .into_par_iter()
        .enumerate()
        .for_each(|(b, blk)| {
            let nodes = &ip[b * ROW_BLOCK..(ip.len() - 1).min((b + 1) * ROW_BLOCK) + 1];
            let base = nodes[0];
            let mut dot = vec![T::zero(); heads];
            isa::dispatch_on(isa, || {
                for w in nodes.windows(2) {
                    let (lo, hi) = (w[0] * heads, w[1] * heads);
                    let d = &mut blk[lo - base * heads..hi - base * heads];
                    softmax_segment_backward(&a[lo..hi], &g[lo..hi], heads, d, &mut dot);
                }
            })
        });
}

/// [`edge_softmax_backward_on`] on the selected path.
pub fn edge_softmax_backward<T: Element>(
    a: &[T],
    g: &[T],
    ip: &[usize],
    heads: usize,
    ds: &mut [T],
) {
    edge_softmax_backward_on(isa::selected(), a, g, ip, heads, ds)
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
            let gather = |isa, o: &mut [f32], a: &[f32]| {
                let w = EdgeWeights {
                    alpha: a,
                    heads,
                    scale: 1.0,
                };
                let ptr = [0, len];
                segment_gather_on(
                    isa,
                    o,
                    heads * 3,
                    Segments::csr(&ptr),
                    &table,
                    Some(&rows),
                    Some(w),
                );
            };
            gather(Isa::Scalar, &mut o0, &a0);
            for isa in isa::detected() {
                let mut a = s.clone();
                segment_softmax_on(isa, &mut a, heads);
                assert_eq!(a, a0, "softmax {len}×{heads} on {isa}");
                let mut d = vec![0.0f32; s.len()];
                segment_softmax_backward_on(isa, &a, &g, heads, &mut d);
                assert_eq!(d, d0, "backward on {isa}");
                let mut o = vec![0.0f32; heads * 3];
                gather(isa, &mut o, &a);
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

    /// A random multigraph of `n` nodes and `e` edges: CSR by destination (`ip`, `dst`), the
    /// source row of each edge, and the by-source grouping (`gp`, `gids`).
    struct TestGraph {
        ip: Vec<usize>,
        dst: Vec<usize>,
        src: Vec<usize>,
        gp: Vec<usize>,
        gids: Vec<usize>,
    }

    fn test_graph(rng: &mut Rng, n: usize, e: usize) -> TestGraph {
        let mut pairs: Vec<(usize, usize)> = (0..e).map(|_| (rng.below(n), rng.below(n))).collect();
        // Node n − 1 keeps no in-edges (an empty segment).
        pairs.iter_mut().for_each(|p| p.0 = p.0.min(n - 2));
        pairs.sort();
        let mut ip = vec![0usize; n + 1];
        pairs.iter().for_each(|&(d, _)| ip[d + 1] += 1);
        (0..n).for_each(|i| ip[i + 1] += ip[i]);
        let dst: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        let src: Vec<usize> = pairs.iter().map(|p| p.1).collect();
        let mut gp = vec![0usize; n + 1];
        src.iter().for_each(|&r| gp[r + 1] += 1);
        (0..n).for_each(|r| gp[r + 1] += gp[r]);
        let mut next = gp.clone();
        let mut gids = vec![0usize; e];
        for (k, &r) in src.iter().enumerate() {
            gids[next[r]] = k;
            next[r] += 1;
        }
        TestGraph {
            ip,
            dst,
            src,
            gp,
            gids,
        }
    }

    fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
        // A coarse grid of values: ties for the maxima, exact zeros, negative zeros.
        (0..n)
            .map(|i| match i % 29 {
                3 => -0.0,
                7 => 0.0,
                _ => (rng.normal() * 4.0).round() as f32 * 0.25 + (rng.normal() as f32) * 1e-3,
            })
            .collect()
    }

    fn same_bits(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                "{what}: entry {k}: {x} vs {y}"
            );
        }
    }

    /// Gathers (weighted and plain, CSR and grouped), maxima and their backward, edge sums and
    /// the sparse products equal their plain definitions written out here bit for bit, on every
    /// path (and so equal the scalar path), across the row and edge block boundaries.
    #[test]
    fn gathers_maxima_edge_sums_and_spmm_are_exact_on_every_path() {
        let mut rng = Rng::new(21);
        let (n, ne) = (100, 700);
        let g = test_graph(&mut rng, n, ne);
        for (w, heads) in [(1usize, 1usize), (7, 7), (16, 2), (24, 8), (64, 8), (40, 1)] {
            let d = w / heads;
            let table = values(&mut rng, n * w);
            let gtab = values(&mut rng, ne * w);
            let alpha = values(&mut rng, ne * heads);
            let scale = 0.7f32;
            // Weighted gather over CSR segments: out[i] += Σ_e (scale·α[e,h]) S[src_e].
            let mut want = vec![0.0f32; n * w];
            for i in 0..n {
                for e in g.ip[i]..g.ip[i + 1] {
                    for c in 0..w {
                        want[i * w + c] +=
                            scale * alpha[e * heads + c / d] * table[g.src[e] * w + c];
                    }
                }
            }
            // Plain gather over the by-source grouping of an edge table: out[r] += Σ G[e].
            let mut want_g = vec![0.0f32; n * w];
            for r in 0..n {
                for &e in &g.gids[g.gp[r]..g.gp[r + 1]] {
                    for c in 0..w {
                        want_g[r * w + c] += gtab[e * w + c];
                    }
                }
            }
            // Maxima with the first arg-max, and the gradient routed back to it.
            let (mut want_m, mut want_a) = (vec![0.0f32; n * w], vec![NO_EDGE; n * w]);
            for i in 0..n {
                for e in g.ip[i]..g.ip[i + 1] {
                    for c in 0..w {
                        let v = table[g.src[e] * w + c];
                        if want_a[i * w + c] == NO_EDGE || v > want_m[i * w + c] {
                            want_m[i * w + c] = v;
                            want_a[i * w + c] = e as u32;
                        }
                    }
                }
            }
            let gm = values(&mut rng, n * w);
            let mut want_dm = vec![0.0f32; n * w];
            for r in 0..n {
                for &e in &g.gids[g.gp[r]..g.gp[r + 1]] {
                    for c in 0..w {
                        if want_a[g.dst[e] * w + c] == e as u32 {
                            want_dm[r * w + c] += gm[g.dst[e] * w + c];
                        }
                    }
                }
            }
            let want_add: Vec<f32> = (0..ne * w)
                .map(|k| table[g.src[k / w] * w + k % w] + table[g.dst[k / w] * w + k % w])
                .collect();
            // The edge list as a sparse (n, n) matrix with values α[e, 0], by rows and by
            // columns through positions, times a dense (n, w) matrix.
            let vals: Vec<f64> = (0..ne).map(|e| alpha[e * heads] as f64).collect();
            let bias = values(&mut rng, w);
            let mut want_sp = vec![0.0f32; n * w];
            let mut want_spt = vec![0.0f32; n * w];
            for i in 0..n {
                want_sp[i * w..(i + 1) * w].copy_from_slice(&bias);
                for e in g.ip[i]..g.ip[i + 1] {
                    for c in 0..w {
                        want_sp[i * w + c] += vals[e] as f32 * table[g.src[e] * w + c];
                    }
                }
            }
            for r in 0..n {
                for &e in &g.gids[g.gp[r]..g.gp[r + 1]] {
                    for c in 0..w {
                        want_spt[r * w + c] += vals[e] as f32 * gm[g.dst[e] * w + c];
                    }
                }
            }
            // Scatter-add of the edge table into source rows, edges in order (collisions).
            let mut want_sc = vec![0.0f32; n * w];
            for e in 0..ne {
                for c in 0..w {
                    want_sc[g.src[e] * w + c] += gtab[e * w + c];
                }
            }
            for isa in isa::detected() {
                let what = |k: &str| format!("{k} w = {w}, heads = {heads} on {isa}");
                let mut o = vec![0.0f32; n * w];
                let wts = EdgeWeights {
                    alpha: &alpha,
                    heads,
                    scale,
                };
                segment_gather_on(
                    isa,
                    &mut o,
                    w,
                    Segments::csr(&g.ip),
                    &table,
                    Some(&g.src),
                    Some(wts),
                );
                same_bits(&o, &want, &what("weighted gather"));
                let mut o = vec![0.0f32; n * w];
                segment_gather_on(
                    isa,
                    &mut o,
                    w,
                    Segments::grouped(&g.gp, &g.gids),
                    &gtab,
                    None,
                    None,
                );
                same_bits(&o, &want_g, &what("grouped gather"));
                let (mut m, mut a) = (vec![9.0f32; n * w], vec![7u32; n * w]);
                segment_max_on(isa, &mut m, &mut a, w, Segments::csr(&g.ip), &table, &g.src);
                same_bits(&m, &want_m, &what("max"));
                assert_eq!(a, want_a, "{}", what("arg-max"));
                let mut dm = vec![0.0f32; n * w];
                segment_max_backward_on(
                    isa,
                    &mut dm,
                    w,
                    Segments::grouped(&g.gp, &g.gids),
                    &g.dst,
                    &a,
                    &gm,
                );
                same_bits(&dm, &want_dm, &what("max backward"));
                let mut ea = vec![0.0f32; ne * w];
                edge_add_rows_on(isa, &mut ea, &table, &g.src, &table, &g.dst, w);
                same_bits(&ea, &want_add, &what("edge add"));
                let csr = CsrView {
                    ptr: &g.ip,
                    cols: &g.src,
                    vals: &vals,
                    pos: None,
                };
                let mut sp = vec![1.0f32; n * w];
                spmm_on(isa, &mut sp, w, csr, &table, Some(&bias));
                same_bits(&sp, &want_sp, &what("spmm"));
                let dst_of_group: Vec<usize> = g.gids.iter().map(|&e| g.dst[e]).collect();
                let csc = CsrView {
                    ptr: &g.gp,
                    cols: &dst_of_group,
                    vals: &vals,
                    pos: Some(&g.gids),
                };
                let mut spt = vec![1.0f32; n * w];
                spmm_on(isa, &mut spt, w, csc, &gm, None);
                same_bits(&spt, &want_spt, &what("spmm through positions"));
                let mut sc = vec![0.0f32; n * w];
                scatter_add_rows_on(isa, &mut sc, w, &g.src, &gtab);
                same_bits(&sc, &want_sc, &what("scatter-add"));
            }
        }
        // A NaN on the first edge stays the maximum (nothing compares greater).
        let (mut m, mut a) = (vec![0.0f32; 2], vec![0u32; 2]);
        let t = [f32::NAN, 1.0, 5.0, -1.0];
        segment_max(&mut m, &mut a, 2, Segments::csr(&[0, 2]), &t, &[0, 1]);
        assert!(m[0].is_nan() && m[1] == 1.0 && a == [0, 0], "{m:?} {a:?}");
    }

    /// Head dots: the scalar path is the left-to-right loop bit for bit, every path lies within
    /// the stated bound of the exact (f64) value, and paths agree bit for bit when `d` is below
    /// the vector width; f64 is the plain loop.
    #[test]
    fn edge_dots_on_every_path_within_the_stated_bound() {
        let mut rng = Rng::new(22);
        let (n, ne) = (60, 600);
        let g = test_graph(&mut rng, n, ne);
        for (w, heads) in [
            (8usize, 1usize),
            (64, 8),
            (64, 2),
            (96, 3),
            (33, 1),
            (128, 1),
        ] {
            let d = w / heads;
            let q: Vec<f32> = (0..n * w).map(|_| rng.normal() as f32).collect();
            let k: Vec<f32> = (0..n * w).map(|_| rng.normal() as f32).collect();
            let scale = 0.35f32;
            let mut s0 = vec![0.0f32; ne * heads];
            edge_dots_on(
                Isa::Scalar,
                &mut s0,
                &q,
                &g.dst,
                &k,
                &g.src,
                w,
                heads,
                scale,
            );
            for e in 0..ne {
                for h in 0..heads {
                    let (qa, ka) = (g.dst[e] * w + h * d, g.src[e] * w + h * d);
                    let seq = (0..d).fold(0.0f32, |s, j| s + q[qa + j] * k[ka + j]);
                    assert_eq!(s0[e * heads + h].to_bits(), (scale * seq).to_bits());
                }
            }
            for isa in isa::detected() {
                let mut s = vec![0.0f32; ne * heads];
                edge_dots_on(isa, &mut s, &q, &g.dst, &k, &g.src, w, heads, scale);
                let taken = head_dot_path(isa, d);
                if d < taken.f32_lanes() {
                    same_bits(&s, &s0, &format!("dots d = {d} on {isa}"));
                }
                if taken != isa {
                    let mut st = vec![0.0f32; ne * heads];
                    edge_dots_on(taken, &mut st, &q, &g.dst, &k, &g.src, w, heads, scale);
                    same_bits(&s, &st, &format!("dots d = {d} on {isa} as {taken}"));
                }
                for e in 0..ne {
                    for h in 0..heads {
                        let t: Vec<f64> = (0..d)
                            .map(|j| {
                                q[g.dst[e] * w + h * d + j] as f64
                                    * k[g.src[e] * w + h * d + j] as f64
                            })
                            .collect();
                        let exact = scale as f64 * t.iter().sum::<f64>();
                        let abs = scale as f64 * t.iter().map(|v| v.abs()).sum::<f64>();
                        // The bound of the dot, one more rounding for the scale.
                        let bound =
                            d as f64 * 2f64.powi(-24) * abs + 2f64.powi(-24) * exact.abs() + 1e-30;
                        let got = s[e * heads + h] as f64;
                        assert!(
                            (got - exact).abs() <= bound,
                            "w = {w}, heads = {heads}, edge {e} on {isa}: {got} vs {exact}"
                        );
                    }
                }
            }
            let (q64, k64): (Vec<f64>, Vec<f64>) = (
                q.iter().map(|&v| v as f64).collect(),
                k.iter().map(|&v| v as f64).collect(),
            );
            let mut s64 = vec![0.0f64; ne * heads];
            edge_dots(&mut s64, &q64, &g.dst, &k64, &g.src, w, heads, 0.35);
            for e in 0..ne {
                for h in 0..heads {
                    let (qa, ka) = (g.dst[e] * w + h * d, g.src[e] * w + h * d);
                    let seq = (0..d).fold(0.0f64, |s, j| s + q64[qa + j] * k64[ka + j]);
                    assert_eq!(s64[e * heads + h], 0.35 * seq);
                }
            }
        }
    }

    /// The edge softmax and its backward over all nodes (parallel blocks of nodes, empty
    /// segments included) equal the one-segment kernels applied node by node, on every path.
    #[test]
    fn edge_softmax_blocks_equal_per_node_segments() {
        let mut rng = Rng::new(23);
        let (n, ne) = (100, 900);
        let g = test_graph(&mut rng, n, ne);
        for heads in [1usize, 3, 8] {
            let s: Vec<f32> = (0..ne * heads)
                .map(|i| {
                    if i % 13 == 5 {
                        f32::NEG_INFINITY
                    } else {
                        (rng.normal() * 2.0) as f32
                    }
                })
                .collect();
            let gr: Vec<f32> = (0..ne * heads).map(|_| rng.normal() as f32).collect();
            let mut a0 = s.clone();
            let mut d0 = vec![0.0f32; ne * heads];
            for i in 0..n {
                let (lo, hi) = (g.ip[i] * heads, g.ip[i + 1] * heads);
                segment_softmax_on(Isa::Scalar, &mut a0[lo..hi], heads);
                let a = a0[lo..hi].to_vec();
                segment_softmax_backward_on(Isa::Scalar, &a, &gr[lo..hi], heads, &mut d0[lo..hi]);
            }
            for isa in isa::detected() {
                let mut a = s.clone();
                edge_softmax_on(isa, &mut a, &g.ip, heads);
                same_bits(&a, &a0, &format!("edge softmax, {heads} heads on {isa}"));
                let mut d = vec![0.0f32; ne * heads];
                edge_softmax_backward_on(isa, &a, &gr, &g.ip, heads, &mut d);
                same_bits(
                    &d,
                    &d0,
                    &format!("edge softmax backward, {heads} heads on {isa}"),
                );
            }
        }
    }
}
