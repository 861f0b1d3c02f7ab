//! Register-blocked products for small and skinny shapes, where `gemm`'s packing and dispatch
//! cost more than the arithmetic: the RNN's per-step `(B, H)·(H, H)` with B = 32, and the
//! attention core's per-head `(T, dh)·(dh, T)` products of a small ViT (T = 17, dh = 16).
//!
//! `C (m, n) = [C +] A (m, k) · B (k, n)`, all three row-major with row strides `lda`, `ldb`,
//! `ldc`. Neither operand is packed: a tile of `R` rows × `W` vectors of C stays in registers
//! while the loop runs down the k rows of B; each loaded vector of B feeds R broadcast
//! multiply-adds, and the R·W independent accumulators hide the FMA latency (4 cycles, two
//! pipes: ≥ 8 chains in flight). Column blocks are the outer loop, so one block of B
//! (k × W·lanes) is reused from L1/L2 by every row tile.
//!
//! Every entry of C is one fused multiply-add chain over k in order — on every path and
//! however the columns are split among threads — so the result is bit-identical on the scalar
//! reference, AVX2, AVX-512 and NEON, and for any thread count (tested).

use super::isa::{self, Isa};
use crate::tensor::Element;
use pulp::{Simd, WithSimd};
use rayon::prelude::*;

thread_local! {
    /// A thread's packed panel of B (see `Cols::block`), kept between calls.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Products with fewer multiply-adds than this run on one thread.
const PAR_FMAS: usize = 1 << 20;

/// The operands of one product (f32).
struct Mm<'a> {
    m: usize,
    k: usize,
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    accumulate: bool,
}

/// Rows of C handed to one task: a column range `c0..c1` of rows `0..m`, through a raw
/// pointer because column blocks of row-major C interleave in memory.
struct CPtr {
    ptr: *mut f32,
    ldc: usize,
}
// SAFETY: tasks write disjoint column ranges of C (see `small_mm_f32`).
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

struct Cols<'a> {
    mm: &'a Mm<'a>,
    c: &'a CPtr,
    c0: usize,
    c1: usize,
}

impl WithSimd for Cols<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let lanes = std::mem::size_of::<S::f32s>() / 4;
        // Tiles sized to the register file: AVX-512 (32 registers) 8 rows × 3 vectors = 24
        // accumulators; AVX2 (16 registers) 6 × 2 = 12; NEON (32) 8 × 2; scalar 4 × 4.
        match lanes {
            16 => self.run::<S, 8, 3>(simd, lanes),
            8 => self.run::<S, 6, 2>(simd, lanes),
            4 => self.run::<S, 8, 2>(simd, lanes),
            _ => self.run::<S, 4, 4>(simd, lanes),
        }
    }
}

impl Cols<'_> {
    #[inline(always)]
    fn run<S: Simd, const R: usize, const W: usize>(&self, simd: S, lanes: usize) {
        let mut c0 = self.c0;
        while c0 + W * lanes <= self.c1 {
            self.block::<S, R, W>(simd, c0, lanes, lanes);
            c0 += W * lanes;
        }
        while c0 + lanes <= self.c1 {
            self.block::<S, R, 1>(simd, c0, lanes, lanes);
            c0 += lanes;
        }
        if c0 < self.c1 {
            self.block::<S, R, 1>(simd, c0, lanes, self.c1 - c0);
        }
    }

    /// Columns `c0..c0 + (W−1)·lanes + last` of every row of C; `last ≤ lanes` is the width of
    /// the final vector (partial loads and stores when it is short).
    #[inline(always)]
    fn block<S: Simd, const R: usize, const W: usize>(
        &self,
        simd: S,
        c0: usize,
        lanes: usize,
        last: usize,
    ) {
        let mm = self.mm;
        let m = mm.m;
        // Wide B (rows ≥ 2 KiB apart): every step down k would touch a new page and defeat the
        // prefetcher, so the panel B[.., c0..] is first copied into contiguous rows when more
        // than one row tile will read it.
        let cols = (W - 1) * lanes + last;
        let pack = mm.ldb >= 512 && m > R && mm.k > 0;
        // Taken out of the thread-local and put back, not used inside `with`'s closure: code in
        // a closure is compiled without this function's target features (no inlined SIMD).
        // Only a packing block touches the thread-local: a tiny product (an attention head's)
        // would otherwise pay two thread-local accesses per column block.
        let mut panel = if pack {
            PANEL.with(|p| std::mem::take(&mut *p.borrow_mut()))
        } else {
            Vec::new()
        };
        {
            let src = if pack {
                panel.clear();
                panel.reserve(mm.k * cols);
                for kk in 0..mm.k {
                    panel.extend_from_slice(&mm.b[kk * mm.ldb + c0..kk * mm.ldb + c0 + cols]);
                }
                (panel.as_ptr(), cols)
            } else {
                // SAFETY: c0 < n ≤ ldb, inside B.
                (unsafe { mm.b.as_ptr().add(c0) }, mm.ldb)
            };
            let mut i0 = 0;
            while i0 + R <= m {
                self.tile::<S, R, W>(simd, src, i0, c0, lanes, last);
                i0 += R;
            }
            // Leftover rows one at a time (R = 1 keeps W accumulators: still W chains).
            while i0 < m {
                self.tile::<S, 1, W>(simd, src, i0, c0, lanes, last);
                i0 += 1;
            }
        }
        if pack {
            PANEL.with(|p| *p.borrow_mut() = panel);
        }
    }

    #[inline(always)]
    fn tile<S: Simd, const R: usize, const W: usize>(
        &self,
        simd: S,
        b: (*const f32, usize),
        i0: usize,
        c0: usize,
        lanes: usize,
        last: usize,
    ) {
        if last == lanes {
            self.tile_k::<S, R, W, true>(simd, b, i0, c0, lanes, last)
        } else {
            self.tile_k::<S, R, W, false>(simd, b, i0, c0, lanes, last)
        }
    }

    /// One R × W tile over all of k. With `FULL` every vector is whole: the loop is plain
    /// unaligned loads, broadcasts and FMAs on raw pointers (bounds were checked once by the
    /// caller); otherwise the last vector of each row goes through pulp's partial loads.
    #[inline(always)]
    fn tile_k<S: Simd, const R: usize, const W: usize, const FULL: bool>(
        &self,
        simd: S,
        (mut b, ldb): (*const f32, usize),
        i0: usize,
        c0: usize,
        lanes: usize,
        last: usize,
    ) {
        let mm = self.mm;
        let width = |w: usize| if !FULL && w + 1 == W { last } else { lanes };
        // SAFETY (every raw access below): rows i0..i0+R < m of A (k entries each) and of C,
        // rows 0..k of B, and columns c0 .. c0 + (W−1)·lanes + width(W−1) ≤ c1 ≤ n lie inside
        // the operands, whose lengths `small_mm_f32` checked; this task alone writes columns
        // c0..c1 of C.
        let load = |p: *const f32, w: usize| -> S::f32s {
            if FULL || w + 1 < W {
                unsafe { std::ptr::read_unaligned(p as *const S::f32s) }
            } else {
                simd.partial_load_f32s(unsafe { std::slice::from_raw_parts(p, last) })
            }
        };
        let cp =
            |r: usize, w: usize| unsafe { self.c.ptr.add((i0 + r) * self.c.ldc + c0 + w * lanes) };
        let mut acc = [[simd.splat_f32s(0.0); W]; R];
        if mm.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (w, v) in row.iter_mut().enumerate() {
                    *v = load(cp(r, w), w);
                }
            }
        }
        let a = unsafe { mm.a.as_ptr().add(i0 * mm.lda) };
        for kk in 0..mm.k {
            let mut bv = [simd.splat_f32s(0.0); W];
            for (w, v) in bv.iter_mut().enumerate() {
                *v = load(unsafe { b.add(w * lanes) }, w);
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let av = simd.splat_f32s(unsafe { *a.add(r * mm.lda + kk) });
                for (w, v) in row.iter_mut().enumerate() {
                    *v = simd.mul_add_f32s(av, bv[w], *v);
                }
            }
            b = b.wrapping_add(ldb);
        }
        for (r, row) in acc.iter().enumerate() {
            for (w, v) in row.iter().enumerate() {
                let p = cp(r, w);
                if FULL || w + 1 < W {
                    unsafe { std::ptr::write_unaligned(p as *mut S::f32s, *v) }
                } else {
                    simd.partial_store_f32s(
                        unsafe { std::slice::from_raw_parts_mut(p, width(w)) },
                        *v,
                    )
                }
            }
        }
    }
}

fn check(m: usize, n: usize, k: usize, la: usize, lda: usize, lb: usize, ldb: usize) {
    assert!(
        (m == 0 || k == 0 || (lda >= k && la >= (m - 1) * lda + k))
            && (k == 0 || n == 0 || (ldb >= n && lb >= (k - 1) * ldb + n)),
        "small_mm: operands too short for ({m}, {k})·({k}, {n})"
    );
}

/// Checks the operands of a product and packs them for the tile code; `None` when C is empty.
fn prepare<'a>(
    (m, n, k): (usize, usize, usize),
    (a, lda): (&'a [f32], usize),
    (b, ldb): (&'a [f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) -> Option<(Mm<'a>, CPtr)> {
    check(m, n, k, a.len(), lda, b.len(), ldb);
    assert!(
        m == 0 || n == 0 || (ldc >= n && c.len() >= (m - 1) * ldc + n),
        "small_mm: C too short for ({m}, {n})"
    );
    if m == 0 || n == 0 {
        return None;
    }
    let mm = Mm {
        m,
        k,
        a,
        lda,
        b,
        ldb,
        accumulate,
    };
    let cp = CPtr {
        ptr: c.as_mut_ptr(),
        ldc,
    };
    Some((mm, cp))
}

#[allow(clippy::too_many_arguments)]
fn small_mm_f32(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    let Some((mm, cp)) = prepare((m, n, k), (a, lda), (b, ldb), (c, ldc), accumulate) else {
        return;
    };
    // Columns split in blocks of 48 (a whole AVX-512 tile width, two AVX2 ones): the split
    // depends on the shape only, and no entry's arithmetic depends on which task computes it.
    let threads = rayon::current_num_threads();
    if threads > 1 && m * n * k >= PAR_FMAS && n >= 96 {
        let blocks = n.div_ceil(48);
        let per = blocks.div_ceil(threads.min(blocks));
        let tasks = blocks.div_ceil(per);
        (0..tasks).into_par_iter().for_each(|t| {
            let (c0, c1) = (t * per * 48, ((t + 1) * per * 48).min(n));
            isa::dispatch_on(
                isa,
                Cols {
                    mm: &mm,
                    c: &cp,
                    c0,
                    c1,
                },
            );
        });
    } else {
        isa::dispatch_on(
            isa,
            Cols {
                mm: &mm,
                c: &cp,
                c0: 0,
                c1: n,
            },
        );
    }
}

/// [`small_mm`] of f32 operands inside an already dispatched SIMD context, on one thread: the
/// same tiles and the same bits as the dispatched call, for kernels that run many tiny products
/// (an attention head's) in one dispatch.
#[inline(always)]
pub(crate) fn small_mm_simd<S: Simd>(
    simd: S,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    let Some((mm, cp)) = prepare((m, n, k), (a, lda), (b, ldb), (c, ldc), accumulate) else {
        return;
    };
    Cols {
        mm: &mm,
        c: &cp,
        c0: 0,
        c1: n,
    }
    .with_simd(simd)
}

/// The definition, one fused multiply-add chain per entry of C (f32), for tests.
#[allow(clippy::too_many_arguments)]
pub fn small_mm_reference(
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    accumulate: bool,
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = if accumulate { c[i * ldc + j] } else { 0.0 };
            for kk in 0..k {
                acc = a[i * lda + kk].mul_add(b[kk * ldb + j], acc);
            }
            c[i * ldc + j] = acc;
        }
    }
}

/// `C (m, n) = [C +] A (m, k) · B (k, n)` with row strides; f32 through the run-time selected
/// SIMD path, f64 (the gradient-check type) through the plain loop.
#[allow(clippy::too_many_arguments)]
pub fn small_mm<T: Element>(
    dims: (usize, usize, usize),
    a: (&[T], usize),
    b: (&[T], usize),
    c: (&mut [T], usize),
    accumulate: bool,
) {
    small_mm_on(isa::selected(), dims, a, b, c, accumulate)
}

/// [`small_mm`] on a given path (tests compare the paths).
#[allow(clippy::too_many_arguments)]
pub fn small_mm_on<T: Element>(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    (a, lda): (&[T], usize),
    (b, ldb): (&[T], usize),
    (c, ldc): (&mut [T], usize),
    accumulate: bool,
) {
    if let (Some(a32), Some(b32)) = (T::as_f32(a), T::as_f32(b)) {
        let c32 = T::as_f32_mut(c).expect("C has the element type of A and B");
        return small_mm_f32(
            isa,
            (m, n, k),
            (a32, lda),
            (b32, ldb),
            (c32, ldc),
            accumulate,
        );
    }
    check(m, n, k, a.len(), lda, b.len(), ldb);
    for i in 0..m {
        for j in 0..n {
            let mut acc = if accumulate {
                c[i * ldc + j]
            } else {
                T::zero()
            };
            for kk in 0..k {
                acc += a[i * lda + kk] * b[kk * ldb + j];
            }
            c[i * ldc + j] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa::detected;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32)
            .map(|v| v / (1u32 << 24) as f32 - 0.5)
            .collect()
    }

    /// Every path equals the fused-multiply-add reference bit for bit, on shapes with row and
    /// column tails (lanes 16/8/4, tiles of 8/6 rows), strided operands, with and without
    /// accumulation, on 1 and 3 threads.
    #[test]
    fn every_path_is_bit_identical_to_the_reference() {
        let shapes = [
            (1, 1, 1),
            (17, 17, 16),
            (17, 16, 17),
            (32, 64, 64),
            (13, 100, 9),
            (32, 300, 40),
            (7, 5, 0),
            (33, 257, 70),
        ];
        for &(m, n, k) in &shapes {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a = data(m * lda, 1);
            let b = data(k.max(1) * ldb, 2);
            let c0 = data(m * ldc, 3);
            for acc in [false, true] {
                let mut want = c0.clone();
                small_mm_reference((m, n, k), (&a, lda), (&b, ldb), (&mut want, ldc), acc);
                for isa in detected() {
                    for threads in [1, 3] {
                        let mut got = c0.clone();
                        crate::bench::with_threads(threads, || {
                            small_mm_on(isa, (m, n, k), (&a, lda), (&b, ldb), (&mut got, ldc), acc)
                        });
                        for i in 0..m {
                            for j in 0..ldc {
                                let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                                assert_eq!(
                                    g.to_bits(),
                                    w.to_bits(),
                                    "{isa} {threads}t ({m},{n},{k}) acc={acc} at ({i},{j}): {g} vs {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A product big enough for the parallel column split gives the same bits as one thread.
    #[test]
    fn parallel_split_is_thread_count_independent() {
        let (m, n, k) = (32, 1000, 64);
        let (a, b) = (data(m * k, 4), data(k * n, 5));
        let run = |t| {
            let mut c = vec![0.0f32; m * n];
            crate::bench::with_threads(t, || {
                small_mm((m, n, k), (&a, k), (&b, n), (&mut c, n), false)
            });
            c
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(5));
    }

    #[test]
    fn f64_is_the_plain_product() {
        let a = [1.0f64, 2.0, 3.0, 4.0]; // (2, 2)
        let b = [5.0f64, 6.0, 7.0, 8.0]; // (2, 2)
        let mut c = [1.0f64; 4];
        small_mm((2, 2, 2), (&a, 2), (&b, 2), (&mut c, 2), true);
        assert_eq!(c, [20.0, 23.0, 44.0, 51.0]);
    }
}
