//! Lane transposes: 16 rows of a matrix ↔ vectors of 16 lanes (lane `l` = row `l`), the
//! layout change of the lane-batched kernels ([`super::attention_lanes`]).
//!
//! `rows_to_lanes` turns the first `w` entries of 16 rows into `w` vectors (`dst[c][l] =
//! row_l[c]`), `lanes_to_rows` the reverse. Left to the compiler, these loops become AVX-512
//! gathers and scatters (16 scattered accesses each — most of the lane kernels' time, measured
//! with perf); the AVX-512 path is an in-register 16×16 transpose instead (4 rounds of 16
//! shuffles, masked loads and stores for `w` < 16). The other paths run the plain loops, which
//! are the reference: a transpose moves values without arithmetic, so every path gives the
//! same bits (tested).

use super::isa::Isa;

/// Lanes (rows) per transpose.
pub const LANES: usize = 16;

/// Where the 16 rows are: row `l` is `buf[offs[l]..][..w]`, or absent (`None`).
pub type RowOffsets = [Option<usize>; LANES];

fn check(len: usize, offs: &RowOffsets, w: usize) {
    for &o in offs.iter().flatten() {
        assert!(
            o.checked_add(w).is_some_and(|e| e <= len),
            "lane transpose: row at {o} of {w} entries past the buffer's {len}"
        );
    }
}

/// `dst[c][l] = src[offs[l] + c]` for `c < dst.len()`; an absent row fills its lane with 0.
pub fn rows_to_lanes(isa: Isa, src: &[f32], offs: &RowOffsets, dst: &mut [[f32; LANES]]) {
    let w = dst.len();
    check(src.len(), offs, w);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.is_supported() {
        for c0 in (0..w).step_by(LANES) {
            let n = (w - c0).min(LANES);
            // SAFETY: AVX-512F is present (checked above); every present row has its entries
            // `o + c0 .. o + c0 + n` inside `src` (checked above), `dst` has c0 + n vectors,
            // and the masked loads touch only those n entries.
            unsafe { x86::rows_to_lanes_avx512(src, offs, c0, n, &mut dst[c0..c0 + n]) };
        }
        return;
    }
    let _ = isa;
    for (l, o) in offs.iter().enumerate() {
        match o {
            Some(o) => dst.iter_mut().zip(&src[*o..]).for_each(|(v, &x)| v[l] = x),
            None => dst.iter_mut().for_each(|v| v[l] = 0.0),
        }
    }
}

/// `dst[offs[l] + c] = src[c][l]` for `c < src.len()` and every present row (absent lanes
/// are dropped).
pub fn lanes_to_rows(isa: Isa, src: &[[f32; LANES]], dst: &mut [f32], offs: &RowOffsets) {
    let w = src.len();
    check(dst.len(), offs, w);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && isa.is_supported() {
        for c0 in (0..w).step_by(LANES) {
            let n = (w - c0).min(LANES);
            // SAFETY: as in `rows_to_lanes`, with `dst` the buffer of the rows.
            unsafe { x86::lanes_to_rows_avx512(&src[c0..c0 + n], dst, offs, c0, n) };
        }
        return;
    }
    let _ = isa;
    for (l, o) in offs.iter().enumerate() {
        if let Some(o) = o {
            dst[*o..*o + w]
                .iter_mut()
                .zip(src)
                .for_each(|(x, v)| *x = v[l]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// In-register 16×16 transpose: `r[c]` becomes column `c` of the rows `r[0..16]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for k in 0..8 {
            t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
        }
        // u[4q + m]: column 4k + m of rows 4q..4q + 4 in 128-bit lane k.
        let mut u = [_mm512_setzero_ps(); 16];
        for q in 0..4 {
            let (a, b, c, d) = (t[4 * q], t[4 * q + 2], t[4 * q + 1], t[4 * q + 3]);
            u[4 * q] = _mm512_shuffle_ps::<0x44>(a, b);
            u[4 * q + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
            u[4 * q + 2] = _mm512_shuffle_ps::<0x44>(c, d);
            u[4 * q + 3] = _mm512_shuffle_ps::<0xEE>(c, d);
        }
        let mut v = [_mm512_setzero_ps(); 16];
        for m in 0..4 {
            for half in [0, 8] {
                let (a, b) = (u[half + m], u[half + 4 + m]);
                v[half + m] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[half + 4 + m] = _mm512_shuffle_f32x4::<0xDD>(a, b);
            }
        }
        for m in 0..4 {
            r[m] = _mm512_shuffle_f32x4::<0x88>(v[m], v[8 + m]);
            r[4 + m] = _mm512_shuffle_f32x4::<0x88>(v[4 + m], v[12 + m]);
            r[8 + m] = _mm512_shuffle_f32x4::<0xDD>(v[m], v[8 + m]);
            r[12 + m] = _mm512_shuffle_f32x4::<0xDD>(v[4 + m], v[12 + m]);
        }
    }

    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Columns `c0..c0 + n` (n ≤ 16) of the rows into `dst` (n vectors).
    ///
    /// # Safety
    /// AVX-512F must be available; every present row's entries `o + c0 .. o + c0 + n` must
    /// lie inside `src`, and `dst` must hold n vectors.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows_to_lanes_avx512(
        src: &[f32],
        offs: &super::RowOffsets,
        c0: usize,
        n: usize,
        dst: &mut [[f32; LANES]],
    ) {
        let k = mask(n);
        let mut r = [_mm512_setzero_ps(); 16];
        for (v, o) in r.iter_mut().zip(offs) {
            if let Some(o) = o {
                // SAFETY: the mask reads entries o + c0 .. o + c0 + n, inside `src`.
                *v = unsafe { _mm512_maskz_loadu_ps(k, src.as_ptr().add(o + c0)) };
            }
        }
        transpose16(&mut r);
        for (d, v) in dst[..n].iter_mut().zip(&r) {
            // SAFETY: one whole 16-lane vector.
            unsafe { _mm512_storeu_ps(d.as_mut_ptr(), *v) };
        }
    }

    /// The n vectors of `src` into columns `c0..c0 + n` of the present rows of `dst`.
    ///
    /// # Safety
    /// As [`rows_to_lanes_avx512`], with `dst` the buffer of the rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn lanes_to_rows_avx512(
        src: &[[f32; LANES]],
        dst: &mut [f32],
        offs: &super::RowOffsets,
        c0: usize,
        n: usize,
    ) {
        let k = mask(n);
        let mut r = [_mm512_setzero_ps(); 16];
        for (v, s) in r.iter_mut().zip(&src[..n]) {
            // SAFETY: one whole 16-lane vector.
            *v = unsafe { _mm512_loadu_ps(s.as_ptr()) };
        }
        transpose16(&mut r);
        for (v, o) in r.iter().zip(offs) {
            if let Some(o) = o {
                // SAFETY: the mask writes entries o + c0 .. o + c0 + n, inside `dst`.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(o + c0), k, *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::isa;

    /// Both directions on every path equal the plain loops (exactly: values are only moved)
    /// for widths 1…40 (partial, whole and several 16-column chunks), absent lanes 0 one
    /// way and untouched the other, entries past each row never written; a row past the
    /// buffer is refused.
    #[test]
    fn transposes_on_every_path_equal_the_plain_loops() {
        for w in 1..=40 {
            let stride = w + 3;
            let data: Vec<f32> = (0..LANES * stride).map(|i| i as f32 + 0.5).collect();
            let mut offs: RowOffsets = [None; LANES];
            for (l, o) in offs.iter_mut().enumerate() {
                if l % 5 != 3 {
                    *o = Some(((l * 7) % LANES) * stride + 1); // rows in shuffled order
                }
            }
            for isa in isa::detected() {
                let mut dst = vec![[7.0f32; LANES]; w];
                rows_to_lanes(isa, &data, &offs, &mut dst);
                for (c, v) in dst.iter().enumerate() {
                    for (l, &x) in v.iter().enumerate() {
                        let want = offs[l].map_or(0.0, |o| data[o + c]);
                        assert_eq!(x.to_bits(), want.to_bits(), "{isa} w={w} c={c} l={l}");
                    }
                }
                let mut back = vec![-1.0f32; data.len()];
                lanes_to_rows(isa, &dst, &mut back, &offs);
                let mut want = vec![-1.0f32; data.len()];
                for o in offs.iter().flatten() {
                    want[*o..*o + w].copy_from_slice(&data[*o..*o + w]);
                }
                assert_eq!(back, want, "{isa} back w={w}");
            }
        }
        let r = std::panic::catch_unwind(|| {
            let mut offs: RowOffsets = [None; LANES];
            offs[2] = Some(10);
            rows_to_lanes(isa::Isa::Scalar, &[0.0; 12], &offs, &mut [[0.0; LANES]; 4]);
        });
        assert!(r.is_err(), "a row past the buffer");
    }
}
