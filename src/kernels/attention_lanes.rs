//! The attention core of many small heads at once: one (item, head) per SIMD lane.
//!
//! A small ViT's head is tiny — T = 17 tokens of dh = 16 channels — and [`super::attention`]
//! runs it as row operations over 17-wide rows: one full vector and a one-entry tail per row
//! on AVX-512, so half of every vector instruction is padding, and every softmax row needs its
//! horizontal max and sum. Here [`LANES`] = 16 (item, head) problems of a batch run side by
//! side instead, lane `l` of every vector belonging to problem `16·g + l` of group `g`: every
//! product, the softmax and its backward are then purely vertical — no tails, no horizontal
//! reductions, every lane useful — whatever T and dh are. The same formulas as the per-head
//! core (derived in nn/attention.rs):
//!
//! ```text
//! forward:   S = q Kᵀ,  P = softmax_rows(α S + M),  o = P V                α = dh^{-1/2}
//! backward:  dP = do Vᵀ (+ dP₀),  dS = α P ⊙ (dP − rowsum(P ⊙ dP)),
//!            dq = dS K,  dk = dSᵀ q,  dv = Pᵀ do
//! ```
//!
//! Layout: q, k, v of the packed projection `qkv (B·T, 3D)` are gathered into per-group lane
//! blocks `(3, T, dh)` of vectors, the probabilities kept as `(T, T)` vectors per group (what
//! the backward reads), the head outputs scattered back into `o (B·T, D)`. Every sum runs in
//! index order with one fused multiply-add per term, and every lane computes exactly the
//! scalar formula of its problem, so **every path gives the same bits** (a 16-lane vector is
//! one AVX-512 register, two AVX2 registers or a scalar loop); the results differ from the
//! per-head core's (lane-order sums) by rounding only (tested against it).

use super::attention::MaskRows;
use super::elementwise::exp_f32;
use super::isa::{self, Isa};
use super::transpose::{lanes_to_rows, rows_to_lanes, RowOffsets};
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

/// Problems per group: lanes of one vector.
pub const LANES: usize = 16;

/// One value of each of the [`LANES`] problems of a group.
type V = [f32; LANES];
const ZERO: V = [0.0; LANES];

/// The packed multi-head layout: `qkv (B·T, 3D)` (row = token, columns `[q | k | v]`, head `h`
/// at columns `h·dh..(h+1)·dh` of each part), outputs `(B·T, D)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedDims {
    pub b: usize,
    pub t: usize,
    pub d: usize,
    pub heads: usize,
}

impl PackedDims {
    pub fn dh(&self) -> usize {
        self.d / self.heads
    }
    /// (item, head) problems: `b·heads`; problem `p` is item `p / heads`, head `p % heads`.
    pub fn problems(&self) -> usize {
        self.b * self.heads
    }
    pub fn groups(&self) -> usize {
        self.problems().div_ceil(LANES)
    }
    fn qkv_per_group(&self) -> usize {
        3 * self.t * self.dh()
    }
    fn p_per_group(&self) -> usize {
        self.t * self.t
    }
    /// Whether the lane-batched core is the one to use: short sequences (a group's `(T, T)`
    /// probabilities stay in the core's cache, ≤ 256 KiB) and enough heads to fill at least
    /// half of the lanes. Long sequences with few heads (a graph's dense attention) take the
    /// per-head core.
    pub fn lanes_pay_off(&self) -> bool {
        self.heads > 0
            && self.d.is_multiple_of(self.heads)
            && self.t <= 64
            && self.problems() >= LANES / 2
    }
}

/// What the forward keeps for the backward: each group's gathered `q, k, v` and its
/// probabilities, in lane layout.
pub struct LaneSaved {
    dims: PackedDims,
    qkv: Vec<V>,
    p: Vec<V>,
}

impl LaneSaved {
    /// The probabilities as `(B, H, T, T)`, row-major (what `need_weights` returns).
    pub fn probs_bhtt(&self) -> Vec<f32> {
        let dm = self.dims;
        let (t, pg) = (dm.t, dm.p_per_group());
        let mut out = vec![0.0; dm.problems() * t * t];
        out.par_chunks_mut(t * t)
            .enumerate()
            .for_each(|(prob, blk)| {
                let (g, l) = (prob / LANES, prob % LANES);
                for (dst, src) in blk.iter_mut().zip(&self.p[g * pg..(g + 1) * pg]) {
                    *dst = src[l];
                }
            });
        out
    }
}

/// Item and head of lane `l` of group `g`, if that lane holds a problem.
#[inline(always)]
fn problem(dm: &PackedDims, g: usize, l: usize) -> Option<(usize, usize)> {
    let p = g * LANES + l;
    (p < dm.problems()).then(|| (p / dm.heads, p % dm.heads))
}

/// `L` lanes of a lane vector from `p` (any alignment).
///
/// # Safety
/// `p .. p + S::F32_LANES` must be readable f32s.
#[inline(always)]
unsafe fn ld<S: Simd>(p: *const f32) -> S::f32s {
    // SAFETY: by the contract; pulp's vector types are plain f32 arrays.
    unsafe { std::ptr::read_unaligned(p as *const S::f32s) }
}

/// # Safety
/// `p .. p + S::F32_LANES` must be writable f32s.
#[inline(always)]
unsafe fn st<S: Simd>(p: *mut f32, v: S::f32s) {
    // SAFETY: by the contract.
    unsafe { std::ptr::write_unaligned(p as *mut S::f32s, v) }
}

/// `C[i][j] = Σ_p A(i, p) B(p, j)` over lane vectors, `p` in order from 0 with one FMA per
/// term, for `A(i, p) = a[i·ars + p·acs]`, `B(p, j) = b[p·brs + j·bcs]`, `C` row-major with
/// row stride `crs`. The lanes are independent problems, so the product runs once per
/// path-wide slice of them (once on AVX-512, twice on AVX2, 16 times on the scalar path) with
/// `NB` columns of `C` in registers across the `p` loop. Every entry is the same chain of
/// FMAs on every path and for any `NB`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn lane_mm<S: Simd, const NB: usize>(
    simd: S,
    (m, n, k): (usize, usize, usize),
    a: &[V],
    (ars, acs): (usize, usize),
    b: &[V],
    (brs, bcs): (usize, usize),
    c: &mut [V],
    crs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last vector each operand is read or written at, checked once: the loops below then
    // index without per-access checks.
    if k > 0 {
        assert!(
            (m - 1) * ars + (k - 1) * acs < a.len(),
            "lane mm: A too short"
        );
        assert!(
            (k - 1) * brs + (n - 1) * bcs < b.len(),
            "lane mm: B too short"
        );
    }
    assert!((m - 1) * crs + n <= c.len(), "lane mm: C too short");
    let w = S::F32_LANES;
    assert!(LANES.is_multiple_of(w), "{w} lanes per vector");
    let (ap, bp, cp) = (
        a.as_ptr() as *const f32,
        b.as_ptr() as *const f32,
        c.as_mut_ptr() as *mut f32,
    );
    // SAFETY (every `ld`/`st` below): vector index < the bound asserted above, and
    // `sub + w ≤ LANES`, so each access stays inside one lane vector of its operand.
    for sub in (0..LANES).step_by(w) {
        let at = |idx: usize| idx * LANES + sub;
        for i in 0..m {
            let mut j = 0;
            while j + NB <= n {
                let mut acc = [simd.splat_f32s(0.0); NB];
                for p in 0..k {
                    let av = unsafe { ld::<S>(ap.add(at(i * ars + p * acs))) };
                    for (jj, acc) in acc.iter_mut().enumerate() {
                        let bv = unsafe { ld::<S>(bp.add(at(p * brs + (j + jj) * bcs))) };
                        *acc = simd.mul_add_f32s(av, bv, *acc);
                    }
                }
                for (jj, acc) in acc.into_iter().enumerate() {
                    unsafe { st::<S>(cp.add(at(i * crs + j + jj)), acc) };
                }
                j += NB;
            }
            while j < n {
                let mut acc = simd.splat_f32s(0.0);
                for p in 0..k {
                    let av = unsafe { ld::<S>(ap.add(at(i * ars + p * acs))) };
                    let bv = unsafe { ld::<S>(bp.add(at(p * brs + j * bcs))) };
                    acc = simd.mul_add_f32s(av, bv, acc);
                }
                unsafe { st::<S>(cp.add(at(i * crs + j)), acc) };
                j += 1;
            }
        }
    }
}

/// [`lane_mm`] with the register block of the path: 8 columns on 16- and 8-lane vectors
/// (AVX-512: 8 registers; AVX2: 8 of its 16), 4 on narrower ones.
#[inline(always)]
fn mm<S: Simd>(
    simd: S,
    dims: (usize, usize, usize),
    a: (&[V], (usize, usize)),
    b: (&[V], (usize, usize)),
    c: (&mut [V], usize),
) {
    if S::F32_LANES >= 8 {
        lane_mm::<S, 8>(simd, dims, a.0, a.1, b.0, b.1, c.0, c.1)
    } else {
        lane_mm::<S, 4>(simd, dims, a.0, a.1, b.0, b.1, c.0, c.1)
    }
}

/// Where token 0 of head part 0 of each of group `g`'s problems starts in a row-major
/// `(B·T, parts·D)` buffer; part `s` of token `i` is `i·parts·D + s·D` further.
#[inline(always)]
fn group_bases(dm: &PackedDims, g: usize, parts: usize) -> RowOffsets {
    let (t, d, dh) = (dm.t, dm.d, dm.dh());
    let mut offs = [None; LANES];
    for (l, o) in offs.iter_mut().enumerate() {
        *o = problem(dm, g, l).map(|(bi, hi)| bi * t * parts * d + hi * dh);
    }
    offs
}

/// Items per group when groups hold whole items (`heads` divides [`LANES`]): then group `g`
/// writes exactly the rows of items `g·k..(g + 1)·k`, and groups can write their outputs in
/// parallel.
fn items_per_group(dm: &PackedDims) -> Option<usize> {
    LANES.is_multiple_of(dm.heads).then(|| LANES / dm.heads)
}

#[inline(always)]
fn shifted(bases: &RowOffsets, by: usize) -> RowOffsets {
    let mut out = *bases;
    for o in out.iter_mut().flatten() {
        *o += by;
    }
    out
}

/// Gathers group `g`'s `parts` head parts (q, k, v: 3; an output gradient: 1) from the
/// row-major `src (B·T, parts·D)` into `dst (parts, T, dh)`; lanes without a problem are 0.
fn gather(isa: Isa, dm: &PackedDims, g: usize, parts: usize, src: &[f32], dst: &mut [V]) {
    let (t, d, dh) = (dm.t, dm.d, dm.dh());
    let bases = group_bases(dm, g, parts);
    for s in 0..parts {
        for i in 0..t {
            let offs = shifted(&bases, i * parts * d + s * d);
            rows_to_lanes(
                isa,
                src,
                &offs,
                &mut dst[(s * t + i) * dh..(s * t + i + 1) * dh],
            );
        }
    }
}

/// Row `i` of the group's probabilities from the scores in place: blocked keys `−∞`, `α s`,
/// the row max, `e^{x − max}` (`−∞` → exactly 0), their sum, one scaling by `1 / sum`; a row
/// with every key blocked becomes 0, a NaN score stays NaN.
///
/// Every lane loop is written in the path's vectors (left to itself, LLVM vectorizes across
/// the keys with gathers and scatters instead — measured 5× slower); the exponentials run as
/// one flat map over the row, the elementwise kernels' [`exp_f32`].
#[inline(always)]
fn softmax_row<S: Simd>(simd: S, row: &mut [V], alpha: f32, blocked: &[Option<&[bool]>; LANES]) {
    for (l, m) in blocked.iter().enumerate() {
        if let Some(m) = m {
            for (v, &b) in row.iter_mut().zip(*m) {
                if b {
                    v[l] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let w = S::F32_LANES;
    let n = row.len();
    let ninf = simd.splat_f32s(f32::NEG_INFINITY);
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let rp = row.as_mut_ptr() as *mut f32;
    // SAFETY (every `ld`/`st`): j < n = row.len() and sub + w ≤ LANES: inside lane vector j.
    for sub in (0..LANES).step_by(w) {
        let at = |j: usize| j * LANES + sub;
        let a = simd.splat_f32s(alpha);
        let mut mx = ninf;
        for j in 0..n {
            let x = simd.mul_f32s(unsafe { ld::<S>(rp.add(at(j))) }, a);
            unsafe { st::<S>(rp.add(at(j)), x) };
            mx = simd.max_f32s(mx, x);
        }
        // x − max; −∞ where the whole row is blocked (max −∞), so no NaN appears there.
        let none = simd.equal_f32s(mx, ninf);
        for j in 0..n {
            let y = simd.sub_f32s(unsafe { ld::<S>(rp.add(at(j))) }, mx);
            unsafe { st::<S>(rp.add(at(j)), simd.select_f32s(none, ninf, y)) };
        }
        unsafe { st::<S>(maxes.as_mut_ptr().add(sub), mx) };
    }
    for y in row.as_flattened_mut() {
        let e = exp_f32(*y);
        *y = if *y == f32::NEG_INFINITY { 0.0 } else { e };
    }
    for sub in (0..LANES).step_by(w) {
        let at = |j: usize| j * LANES + sub;
        let mut sum = simd.splat_f32s(0.0);
        for j in 0..n {
            sum = simd.add_f32s(sum, unsafe { ld::<S>(rp.add(at(j))) });
        }
        let mx = unsafe { ld::<S>(maxes.as_ptr().add(sub)) };
        let inv = simd.select_f32s(
            simd.equal_f32s(mx, ninf),
            simd.splat_f32s(0.0),
            simd.div_f32s(simd.splat_f32s(1.0), sum),
        );
        for j in 0..n {
            let e = unsafe { ld::<S>(rp.add(at(j))) };
            unsafe { st::<S>(rp.add(at(j)), simd.mul_f32s(e, inv)) };
        }
    }
}

/// `dS = α P ⊙ (dP − rowsum(P ⊙ dP))` of one row, in place of `dP`; the row sum in key
/// order with one FMA per term.
#[inline(always)]
fn softmax_backward_row<S: Simd>(simd: S, p: &[V], dp: &mut [V], alpha: f32) {
    let n = p.len();
    assert_eq!(dp.len(), n, "softmax backward row");
    let (pp, dpp) = (p.as_ptr() as *const f32, dp.as_mut_ptr() as *mut f32);
    let a = simd.splat_f32s(alpha);
    // SAFETY (every `ld`/`st`): j < n = both rows' lengths, sub + w ≤ LANES.
    for sub in (0..LANES).step_by(S::F32_LANES) {
        let at = |j: usize| j * LANES + sub;
        let mut dot = simd.splat_f32s(0.0);
        for j in 0..n {
            let (pv, dv) = unsafe { (ld::<S>(pp.add(at(j))), ld::<S>(dpp.add(at(j)))) };
            dot = simd.mul_add_f32s(pv, dv, dot);
        }
        for j in 0..n {
            let (pv, dv) = unsafe { (ld::<S>(pp.add(at(j))), ld::<S>(dpp.add(at(j)))) };
            let ds = simd.mul_f32s(simd.mul_f32s(pv, simd.sub_f32s(dv, dot)), a);
            unsafe { st::<S>(dpp.add(at(j)), ds) };
        }
    }
}

struct GroupForward<'a> {
    isa: Isa,
    dm: PackedDims,
    g: usize,
    alpha: f32,
    qkv: &'a [f32],
    masks: Option<&'a [MaskRows<'a>]>,
    lanes: &'a mut [V],
    p: &'a mut [V],
    o: &'a mut [V],
}

impl WithSimd for GroupForward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let dm = self.dm;
        let (t, dh) = (dm.t, dm.dh());
        gather(self.isa, &dm, self.g, 3, self.qkv, self.lanes);
        let (q, kv) = self.lanes.split_at(t * dh);
        let (k, v) = kv.split_at(t * dh);
        // S = q Kᵀ: A = q (i, c), B(c, j) = K[j][c].
        mm(simd, (t, t, dh), (q, (dh, 1)), (k, (1, dh)), (self.p, t));
        for i in 0..t {
            let mut blocked = [None; LANES];
            if let Some(masks) = self.masks {
                for (l, bl) in blocked.iter_mut().enumerate() {
                    if let Some((bi, _)) = problem(&dm, self.g, l) {
                        let m = masks[bi];
                        *bl = Some(&m.data[i * m.row_stride..i * m.row_stride + t]);
                    }
                }
            }
            softmax_row(simd, &mut self.p[i * t..(i + 1) * t], self.alpha, &blocked);
        }
        // o = P V
        mm(
            simd,
            (t, dh, t),
            (self.p, (t, 1)),
            (v, (dh, 1)),
            (self.o, dh),
        );
    }
}

/// Writes group `g`'s `(parts, T, dh)` block `grp` into the row-major `dst`, which holds
/// the `(B·T, parts·D)` rows from item `first` on.
fn scatter_group(
    isa: Isa,
    dm: &PackedDims,
    g: usize,
    grp: &[V],
    parts: usize,
    dst: &mut [f32],
    first: usize,
) {
    let (t, d, dh) = (dm.t, dm.d, dm.dh());
    let mut bases = group_bases(dm, g, parts);
    for o in bases.iter_mut().flatten() {
        *o -= first * t * parts * d;
    }
    for s in 0..parts {
        for i in 0..t {
            let offs = shifted(&bases, i * parts * d + s * d);
            lanes_to_rows(
                isa,
                &grp[(s * t + i) * dh..(s * t + i + 1) * dh],
                dst,
                &offs,
            );
        }
    }
}

/// Runs `group(g, &mut blocks[g], scratch, out)` for every group `g` and writes each
/// group's output block (`parts` head parts, left in `out`) into the row-major
/// `dst (B·T, parts·D)`: in parallel, each group into its own items' rows, when groups hold
/// whole items; else group by group. `scratch` comes from `init`, one per task.
fn for_each_group<B: Send, I>(
    isa: Isa,
    dm: &PackedDims,
    parts: usize,
    dst: &mut [f32],
    blocks: &mut [B],
    init: impl Fn() -> I + Sync + Send,
    group: impl Fn(usize, &mut B, &mut I, &mut [V]) + Sync + Send,
) {
    let per = parts * dm.t * dm.dh();
    assert_eq!(blocks.len(), dm.groups(), "one block per group");
    match items_per_group(dm) {
        Some(k) => dst
            .par_chunks_mut(k * dm.t * parts * dm.d)
            .zip(blocks.par_iter_mut())
            .enumerate()
            .for_each_init(
                || (init(), vec![ZERO; per]),
                |(sc, out), (g, (rows, blk))| {
                    group(g, blk, sc, out);
                    scatter_group(isa, dm, g, out, parts, rows, g * k);
                },
            ),
        None => {
            let (mut sc, mut out) = (init(), vec![ZERO; per]);
            for (g, blk) in blocks.iter_mut().enumerate() {
                group(g, blk, &mut sc, &mut out);
                scatter_group(isa, dm, g, &out, parts, dst, 0);
            }
        }
    }
}

fn check_forward(dm: &PackedDims, qkv: usize, o: usize, masks: Option<usize>) {
    assert!(
        dm.heads > 0 && dm.d.is_multiple_of(dm.heads),
        "attention lanes: {} heads for width {}",
        dm.heads,
        dm.d
    );
    let n = dm.b * dm.t;
    assert_eq!(qkv, n * 3 * dm.d, "attention lanes: qkv of {dm:?}");
    assert_eq!(o, n * dm.d, "attention lanes: output of {dm:?}");
    if let Some(m) = masks {
        assert_eq!(m, dm.b, "attention lanes: one mask view per item");
    }
}

/// The forward of every (item, head) of the packed `qkv (B·T, 3D)` on the selected path:
/// writes the head outputs into `o (B·T, D)` (every entry) and returns what the backward
/// needs. `masks`: one view per item, `true` = blocked.
pub fn packed_forward(
    dm: PackedDims,
    qkv: &[f32],
    alpha: f32,
    masks: Option<&[MaskRows<'_>]>,
    o: &mut [f32],
) -> LaneSaved {
    packed_forward_on(isa::selected(), dm, qkv, alpha, masks, o)
}

/// [`packed_forward`] on a given path; groups run in parallel (one dispatch each).
pub fn packed_forward_on(
    isa: Isa,
    dm: PackedDims,
    qkv: &[f32],
    alpha: f32,
    masks: Option<&[MaskRows<'_>]>,
    o: &mut [f32],
) -> LaneSaved {
    check_forward(&dm, qkv.len(), o.len(), masks.map(|m| m.len()));
    let groups = dm.groups();
    let mut lanes = vec![ZERO; groups * dm.qkv_per_group()];
    let mut p = vec![ZERO; groups * dm.p_per_group()];
    {
        let (qn, pn) = (dm.qkv_per_group(), dm.p_per_group());
        let mut blocks: Vec<(&mut [V], &mut [V])> =
            lanes.chunks_mut(qn).zip(p.chunks_mut(pn)).collect();
        let run = |g: usize, (lanes, p): &mut (&mut [V], &mut [V]), _: &mut (), og: &mut [V]| {
            let op = GroupForward {
                isa,
                dm,
                g,
                alpha,
                qkv,
                masks,
                lanes,
                p,
                o: og,
            };
            isa::dispatch_on(isa, op)
        };
        for_each_group(isa, &dm, 1, o, &mut blocks, || (), run);
    }
    LaneSaved {
        dims: dm,
        qkv: lanes,
        p,
    }
}

struct GroupBackward<'a> {
    isa: Isa,
    dm: PackedDims,
    g: usize,
    alpha: f32,
    lanes: &'a [V],
    p: &'a [V],
    dout: &'a [f32],
    gp: Option<&'a [f32]>,
    d_o: &'a mut [V],
    ds: &'a mut [V],
    dlanes: &'a mut [V],
}

impl WithSimd for GroupBackward<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let dm = self.dm;
        let (t, dh) = (dm.t, dm.dh());
        // do of the group's problems, (T, dh) lanes.
        gather(self.isa, &dm, self.g, 1, self.dout, self.d_o);
        let (q, kv) = self.lanes.split_at(t * dh);
        let (k, v) = kv.split_at(t * dh);
        let (p, d_o) = (self.p, &*self.d_o);
        // dP = do Vᵀ (+ the gradient reaching P).
        mm(simd, (t, t, dh), (d_o, (dh, 1)), (v, (1, dh)), (self.ds, t));
        if let Some(gp) = self.gp {
            for l in 0..LANES {
                if problem(&dm, self.g, l).is_some() {
                    let prob = self.g * LANES + l;
                    for (x, &gv) in self
                        .ds
                        .iter_mut()
                        .zip(&gp[prob * t * t..(prob + 1) * t * t])
                    {
                        x[l] += gv;
                    }
                }
            }
        }
        // dS = α P ⊙ (dP − rowsum(P ⊙ dP)), in place of dP.
        for i in 0..t {
            let (pr, dr) = (&p[i * t..(i + 1) * t], &mut self.ds[i * t..(i + 1) * t]);
            softmax_backward_row(simd, pr, dr, self.alpha);
        }
        let ds = &*self.ds;
        let (dq, dkv) = self.dlanes.split_at_mut(t * dh);
        let (dk, dv) = dkv.split_at_mut(t * dh);
        // dq = dS K;  dk = dSᵀ q;  dv = Pᵀ do.
        mm(simd, (t, dh, t), (ds, (t, 1)), (k, (dh, 1)), (dq, dh));
        mm(simd, (t, dh, t), (ds, (1, t)), (q, (dh, 1)), (dk, dh));
        mm(simd, (t, dh, t), (p, (1, t)), (d_o, (dh, 1)), (dv, dh));
    }
}

/// The backward of [`packed_forward`] on the selected path: from `dout (B·T, D)`, the gradient
/// of the head outputs, and `gp (B, H, T, T)`, the gradient reaching the returned
/// probabilities if any, writes `dqkv (B·T, 3D)` (every entry). Masked pairs have P = 0, so
/// their dS is 0: the masks are not needed again.
pub fn packed_backward(
    saved: &LaneSaved,
    alpha: f32,
    dout: &[f32],
    gp: Option<&[f32]>,
    dqkv: &mut [f32],
) {
    packed_backward_on(isa::selected(), saved, alpha, dout, gp, dqkv)
}

/// [`packed_backward`] on a given path.
pub fn packed_backward_on(
    isa: Isa,
    saved: &LaneSaved,
    alpha: f32,
    dout: &[f32],
    gp: Option<&[f32]>,
    dqkv: &mut [f32],
) {
    let dm = saved.dims;
    check_forward(&dm, dqkv.len(), dout.len(), None);
    if let Some(gp) = gp {
        assert_eq!(gp.len(), dm.problems() * dm.t * dm.t, "attention lanes: dP");
    }
    let (t, dh) = (dm.t, dm.dh());
    let (qn, pn) = (dm.qkv_per_group(), dm.p_per_group());
    let mut blocks = vec![(); dm.groups()];
    let init = || (vec![ZERO; t * dh], vec![ZERO; t * t]);
    let run = |g: usize, _: &mut (), (d_o, ds): &mut (Vec<V>, Vec<V>), dl: &mut [V]| {
        let op = GroupBackward {
            isa,
            dm,
            g,
            alpha,
            lanes: &saved.qkv[g * qn..(g + 1) * qn],
            p: &saved.p[g * pn..(g + 1) * pn],
            dout,
            gp,
            d_o,
            ds,
            dlanes: dl,
        };
        isa::dispatch_on(isa, op)
    };
    for_each_group(isa, &dm, 3, dqkv, &mut blocks, init, run);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;
    use crate::kernels::attention::{
        head_backward_composed, head_forward_composed, HeadGrads, HeadInputs, HeadOut, HeadScratch,
        Rows,
    };

    fn data(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The per-head core ([`head_forward_composed`] / [`head_backward_composed`], scalar path)
    /// on every (item, head) of a packed batch: the reference.
    #[allow(clippy::type_complexity)]
    fn per_head(
        dm: PackedDims,
        qkv: &[f32],
        alpha: f32,
        masks: Option<&[MaskRows<'_>]>,
        dout: &[f32],
        gp: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (b, t, d, h, dh) = (dm.b, dm.t, dm.d, dm.heads, dm.dh());
        let (mut p, mut o, mut dqkv) = (
            vec![0.0; b * h * t * t],
            vec![0.0; b * t * d],
            vec![0.0; b * t * 3 * d],
        );
        let mut sc = HeadScratch::<f32>::new(t, t, dh);
        for bi in 0..b {
            let qb = &qkv[bi * t * 3 * d..];
            for hi in 0..h {
                let c = hi * dh;
                let rows = |off: usize| Rows {
                    buf: &qb[off + c..],
                    rs: 3 * d,
                    dh,
                };
                let x = HeadInputs {
                    q: rows(0),
                    k: rows(d),
                    v: rows(2 * d),
                    scale: alpha,
                    mask: masks.map(|m| m[bi]),
                };
                let pp = (bi * h + hi) * t * t;
                let ob = &mut o[bi * t * d + c..];
                head_forward_composed(Isa::Scalar, x, &mut p[pp..pp + t * t], (ob, d), &mut sc);
                let g = HeadGrads {
                    p: &p[pp..pp + t * t],
                    dout: Rows {
                        buf: &dout[bi * t * d + c..],
                        rs: d,
                        dh,
                    },
                    gp: gp.map(|g| &g[pp..pp + t * t]),
                };
                let out = HeadOut {
                    d: &mut dqkv[bi * t * 3 * d..(bi + 1) * t * 3 * d],
                    off: (c, d + c, 2 * d + c),
                    rs: 3 * d,
                };
                head_backward_composed(Isa::Scalar, x, g, out, &mut sc);
            }
        }
        (p, o, dqkv)
    }

    /// The lane-batched core gives the same bits on every path (forward, probabilities and
    /// backward), and agrees with the per-head core within 4e-6 of the largest entry (the
    /// sums of the two run in different orders), for full and partial groups, one and many
    /// groups, heads not dividing 16, odd widths, key-padding masks with a fully blocked item
    /// (its probabilities and outputs 0), dense masks, and a gradient reaching P.
    #[test]
    fn lanes_match_the_per_head_core_and_every_path_gives_the_same_bits() {
        let mut rng = Rng::new(5);
        for &(b, t, d, heads) in &[
            (8, 17, 64, 4),
            (3, 5, 12, 3),
            (5, 9, 8, 8),
            (1, 1, 16, 16),
            (7, 33, 24, 3),
        ] {
            let dm = PackedDims { b, t, d, heads };
            let qkv = data(&mut rng, b * t * 3 * d);
            let dout = data(&mut rng, b * t * d);
            let gpv = data(&mut rng, b * heads * t * t);
            let alpha = 1.0 / (dm.dh() as f32).sqrt();
            // Item 0: every key blocked; the others: dense random blocks, never a whole row.
            let mut dense = vec![false; b * t * t];
            for (idx, m) in dense.iter_mut().enumerate() {
                let (bi, j) = (idx / (t * t), idx % t);
                *m = bi == 0 || (j > 0 && (idx * 7) % 5 == 1);
            }
            let views: Vec<MaskRows> = (0..b)
                .map(|bi| MaskRows {
                    data: &dense[bi * t * t..(bi + 1) * t * t],
                    row_stride: t,
                })
                .collect();
            for masked in [false, true] {
                let masks = masked.then_some(&views[..]);
                let gp = masked.then_some(&gpv[..]);
                let mut runs = Vec::new();
                for isa in isa::detected() {
                    let mut o = vec![9.0; b * t * d];
                    let saved = packed_forward_on(isa, dm, &qkv, alpha, masks, &mut o);
                    let mut dqkv = vec![7.0; b * t * 3 * d];
                    packed_backward_on(isa, &saved, alpha, &dout, gp, &mut dqkv);
                    runs.push((saved.probs_bhtt(), o, dqkv));
                }
                let what = format!("{dm:?} masked={masked}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                for r in &runs[1..] {
                    assert_eq!(bits(&r.0), bits(&runs[0].0), "p {what}");
                    assert_eq!(bits(&r.1), bits(&runs[0].1), "o {what}");
                    assert_eq!(bits(&r.2), bits(&runs[0].2), "dqkv {what}");
                }
                let want = per_head(dm, &qkv, alpha, masks, &dout, gp);
                let got = &runs[0];
                for (name, a, w) in [
                    ("p", &got.0, &want.0),
                    ("o", &got.1, &want.1),
                    ("dqkv", &got.2, &want.2),
                ] {
                    let big = w.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
                    for (i, (x, y)) in a.iter().zip(w.iter()).enumerate() {
                        assert!((x - y).abs() <= 4e-6 * big, "{name}[{i}] {x} vs {y} {what}");
                    }
                }
                if masked {
                    let tt = heads * t * t;
                    assert!(got.0[..tt].iter().all(|&x| x == 0.0), "blocked item {what}");
                    assert!(got.1[..t * d].iter().all(|&x| x == 0.0), "{what}");
                }
            }
        }
    }

    #[test]
    fn lanes_pay_off_for_short_sequences_with_many_heads() {
        let dm = |b, t| PackedDims {
            b,
            t,
            d: 64,
            heads: 4,
        };
        assert!(dm(32, 17).lanes_pay_off());
        assert!(dm(2, 17).lanes_pay_off()); // 8 problems: half the lanes
        assert!(!dm(1, 17).lanes_pay_off());
        assert!(!dm(32, 65).lanes_pay_off());
        let odd = PackedDims {
            b: 32,
            t: 17,
            d: 10,
            heads: 4,
        };
        assert!(!odd.lanes_pay_off());
    }
}
