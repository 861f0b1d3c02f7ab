//! The data movement of 2-D convolution and pooling over one `(C, H, W)` image: im2col (the
//! patches of every output position as the columns of a `(C·kh·kw, Ho·Wo)` matrix, so that a
//! convolution is one `gemm`), its adjoint col2im (a scatter-add), and max pooling with the
//! arg-max kept for the backward pass.
//!
//! Each fast kernel copies or adds whole contiguous runs of a row (for stride 1 every kernel
//! offset `(i, j)` maps a run of output columns onto a run of input pixels), compiled for the
//! selected SIMD path through [`isa::dispatch_on`] so the run loops vectorize; `*_reference`
//! is the per-element loop of the definition, which the tests compare with every path.

use super::isa::{self, Isa};
use crate::tensor::Element;

/// A window sweep over one image: `c` channels of `h × w`, a `kh × kw` window moved by
/// `stride`, `pad` zeros (or −∞ for pooling) around the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Window {
    /// Output height and width, `(h + 2p − kh)/s + 1` (PyTorch's floor); `None` when the padded
    /// image is smaller than the window or the stride is 0.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        if self.stride == 0 || self.kh == 0 || self.kw == 0 {
            return None;
        }
        let (ph, pw) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        if ph < self.kh || pw < self.kw {
            return None;
        }
        Some((
            (ph - self.kh) / self.stride + 1,
            (pw - self.kw) / self.stride + 1,
        ))
    }
    /// Rows of the im2col matrix: `c · kh · kw`, ordered `(channel, i, j)` as a PyTorch
    /// weight `(out, in, kh, kw)` is.
    pub fn col_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Entries of one image, `c · h · w`.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// The output columns `ox` whose input column `ox·s + j − p` lies inside `0..w`, as a range.
    #[inline]
    fn valid_cols(&self, j: usize, wo: usize) -> (usize, usize) {
        let s = self.stride;
        // ox·s + j ≥ p  ⇔  ox ≥ ⌈(p − j)/s⌉;  ox·s + j − p < w  ⇔  ox < ⌈(w + p − j)/s⌉.
        let lo = self.pad.saturating_sub(j).div_ceil(s);
        let hi = if self.w + self.pad > j {
            (self.w + self.pad - j).div_ceil(s).min(wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// `cols (C·kh·kw, Ho·Wo)` of `x (C, H, W)`: `cols[(ch, i, j), (oy, ox)] = x[ch, oy·s + i − p,
/// ox·s + j − p]`, 0 outside the image. The plain loop of the definition.
pub fn im2col_reference<T: Element>(x: &[T], g: &Window, cols: &mut [T]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    let (s, p) = (g.stride as isize, g.pad as isize);
    for ch in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = (ch * g.kh + i) * g.kw + j;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let iy = oy as isize * s + i as isize - p;
                        let ix = ox as isize * s + j as isize - p;
                        let inside =
                            iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                        cols[row * ho * wo + oy * wo + ox] = if inside {
                            x[(ch * g.h + iy as usize) * g.w + ix as usize]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// [`im2col_reference`] by runs: for each row `(ch, i, j)` and output row `oy`, the zero
/// borders are filled and the inside copied (one `copy_from_slice` at stride 1), on `isa`.
pub fn im2col_on<T: Element>(isa: Isa, x: &[T], g: &Window, cols: &mut [T]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    assert!(x.len() >= g.image_len() && cols.len() >= g.col_rows() * ho * wo);
    isa::dispatch_on(isa, || {
        let s = g.stride;
        for ch in 0..g.c {
            let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = (ch * g.kh + i) * g.kw + j;
                    let (lo, hi) = g.valid_cols(j, wo);
                    let dst_row = &mut cols[row * ho * wo..(row + 1) * ho * wo];
                    for oy in 0..ho {
                        let dst = &mut dst_row[oy * wo..(oy + 1) * wo];
                        let iy = (oy * s + i) as isize - g.pad as isize;
                        if iy < 0 || iy as usize >= g.h || lo >= hi {
                            dst.fill(T::zero());
                            continue;
                        }
                        let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        dst[..lo].fill(T::zero());
                        dst[hi..].fill(T::zero());
                        let x0 = lo * s + j - g.pad;
                        if s == 1 {
                            dst[lo..hi].copy_from_slice(&src[x0..x0 + (hi - lo)]);
                        } else {
                            for (k, d) in dst[lo..hi].iter_mut().enumerate() {
                                *d = src[x0 + k * s];
                            }
                        }
                    }
                }
            }
        }
    })
}

/// [`im2col_on`] on the selected path.
pub fn im2col<T: Element>(x: &[T], g: &Window, cols: &mut [T]) {
    im2col_on(isa::selected(), x, g, cols)
}

/// The adjoint of im2col: `x[ch, iy, ix] += cols[(ch, i, j), (oy, ox)]` over every window
/// position that reads the pixel (padding positions dropped). `x` is accumulated into.
pub fn col2im_reference<T: Element>(cols: &[T], g: &Window, x: &mut [T]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    let (s, p) = (g.stride as isize, g.pad as isize);
    for ch in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = (ch * g.kh + i) * g.kw + j;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let iy = oy as isize * s + i as isize - p;
                        let ix = ox as isize * s + j as isize - p;
                        if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                            x[(ch * g.h + iy as usize) * g.w + ix as usize] +=
                                cols[row * ho * wo + oy * wo + ox];
                        }
                    }
                }
            }
        }
    }
}

/// [`col2im_reference`] by runs (a contiguous add at stride 1), on `isa`. The additions into
/// each pixel happen in the reference's order (rows `(ch, i, j)` ascending), so every path gives
/// the reference's bits.
pub fn col2im_on<T: Element>(isa: Isa, cols: &[T], g: &Window, x: &mut [T]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    assert!(x.len() >= g.image_len() && cols.len() >= g.col_rows() * ho * wo);
    isa::dispatch_on(isa, || {
        let s = g.stride;
        for ch in 0..g.c {
            let plane = &mut x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = (ch * g.kh + i) * g.kw + j;
                    let (lo, hi) = g.valid_cols(j, wo);
                    if lo >= hi {
                        continue;
                    }
                    let src_row = &cols[row * ho * wo..(row + 1) * ho * wo];
                    for oy in 0..ho {
                        let iy = (oy * s + i) as isize - g.pad as isize;
                        if iy < 0 || iy as usize >= g.h {
                            continue;
                        }
                        let src = &src_row[oy * wo + lo..oy * wo + hi];
                        let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = lo * s + j - g.pad;
                        if s == 1 {
                            dst[x0..x0 + src.len()]
                                .iter_mut()
                                .zip(src)
                                .for_each(|(d, &v)| *d += v);
                        } else {
                            for (k, &v) in src.iter().enumerate() {
                                dst[x0 + k * s] += v;
                            }
                        }
                    }
                }
            }
        }
    })
}

/// [`col2im_on`] on the selected path.
pub fn col2im<T: Element>(cols: &[T], g: &Window, x: &mut [T]) {
    col2im_on(isa::selected(), cols, g, x)
}

/// Max pooling of one image `x (C, H, W)` into `y (C, Ho, Wo)`, with `arg` the flat index
/// `iy·W + ix` inside its channel of each maximum (padding counts as −∞, as in PyTorch; the
/// first maximum in row-major window order wins ties; a NaN wins, so it propagates).
pub fn max_pool_on<T: Element>(isa: Isa, x: &[T], g: &Window, y: &mut [T], arg: &mut [u32]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    isa::dispatch_on(isa, || {
        for ch in 0..g.c {
            let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
            for oy in 0..ho {
                let y0 = oy * g.stride;
                let (iy0, iy1) = (
                    y0.saturating_sub(g.pad),
                    (y0 + g.kh).saturating_sub(g.pad).min(g.h),
                );
                for ox in 0..wo {
                    let x0 = ox * g.stride;
                    let (ix0, ix1) = (
                        x0.saturating_sub(g.pad),
                        (x0 + g.kw).saturating_sub(g.pad).min(g.w),
                    );
                    let (mut best, mut at) = (T::neg_infinity(), iy0 * g.w + ix0);
                    for iy in iy0..iy1 {
                        for ix in ix0..ix1 {
                            let v = plane[iy * g.w + ix];
                            if v > best || v.is_nan() && !best.is_nan() {
                                best = v;
                                at = iy * g.w + ix;
                            }
                        }
                    }
                    let o = (ch * ho + oy) * wo + ox;
                    y[o] = best;
                    arg[o] = at as u32;
                }
            }
        }
    })
}

/// [`max_pool_on`] on the selected path.
pub fn max_pool<T: Element>(x: &[T], g: &Window, y: &mut [T], arg: &mut [u32]) {
    max_pool_on(isa::selected(), x, g, y, arg)
}

/// The backward pass of [`max_pool`]: `dx[ch, arg] += dy[ch, o]` for every output `o`
/// (`dx` is accumulated into; overlapping windows that share a maximum add up).
pub fn max_pool_backward<T: Element>(dy: &[T], arg: &[u32], g: &Window, dx: &mut [T]) {
    let (ho, wo) = g.out_hw().expect("valid window");
    let (hw, per) = (g.h * g.w, ho * wo);
    for ch in 0..g.c {
        let plane = &mut dx[ch * hw..(ch + 1) * hw];
        for (&a, &d) in arg[ch * per..(ch + 1) * per]
            .iter()
            .zip(&dy[ch * per..(ch + 1) * per])
        {
            plane[a as usize] += d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Vec<Window> {
        let mut v = Vec::new();
        for &(c, h, w) in &[(1, 5, 5), (2, 7, 6), (3, 4, 9)] {
            for &(kh, kw) in &[(1, 1), (3, 3), (2, 3), (7, 7)] {
                for stride in 1..=3 {
                    for pad in 0..=3 {
                        let g = Window {
                            c,
                            h,
                            w,
                            kh,
                            kw,
                            stride,
                            pad,
                        };
                        if g.out_hw().is_some() && pad < kh.max(kw) {
                            v.push(g);
                        }
                    }
                }
            }
        }
        v
    }

    /// Every path gives the per-element definition's bits, for strides 1–3, paddings 0–3,
    /// square and rectangular windows.
    #[test]
    fn runs_match_the_reference_on_every_path() {
        for g in windows() {
            let (ho, wo) = g.out_hw().unwrap();
            let x: Vec<f32> = (0..g.image_len())
                .map(|i| ((i * 37 % 101) as f32) / 7.0 - 6.0)
                .collect();
            let mut want = vec![f32::NAN; g.col_rows() * ho * wo];
            im2col_reference(&x, &g, &mut want);
            let cols: Vec<f32> = (0..want.len())
                .map(|i| ((i * 13 % 29) as f32) / 5.0 - 2.0)
                .collect();
            let mut want_x = vec![0.5f32; g.image_len()];
            col2im_reference(&cols, &g, &mut want_x);
            for isa in isa::detected() {
                let mut got = vec![f32::NAN; want.len()];
                im2col_on(isa, &x, &g, &mut got);
                assert_eq!(got, want, "im2col {g:?} {isa:?}");
                let mut got_x = vec![0.5f32; g.image_len()];
                col2im_on(isa, &cols, &g, &mut got_x);
                assert_eq!(got_x, want_x, "col2im {g:?} {isa:?}");
            }
            // col2im is the adjoint: <im2col(x), c> = <x, col2im(c)>.
            let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let cd: Vec<f64> = cols.iter().map(|&v| v as f64).collect();
            let mut a = vec![0.0; want.len()];
            im2col(&xd, &g, &mut a);
            let mut b = vec![0.0; g.image_len()];
            col2im(&cd, &g, &mut b);
            let l: f64 = a.iter().zip(&cd).map(|(p, q)| p * q).sum();
            let r: f64 = b.iter().zip(&xd).map(|(p, q)| p * q).sum();
            assert!(
                (l - r).abs() <= 1e-9 * l.abs().max(1.0),
                "{g:?}: {l} vs {r}"
            );
        }
    }

    /// Max pooling against a brute-force window scan (padding = −∞, first maximum wins).
    #[test]
    fn max_pool_matches_a_window_scan() {
        for g in windows() {
            if g.pad * 2 > g.kh.min(g.kw) {
                continue; // PyTorch's limit: a window never lies entirely in the padding.
            }
            let (ho, wo) = g.out_hw().unwrap();
            let x: Vec<f64> = (0..g.image_len())
                .map(|i| ((i * 7 % 5) as f64) - 2.0)
                .collect();
            for isa in isa::detected() {
                let mut y = vec![0.0; g.c * ho * wo];
                let mut arg = vec![0u32; y.len()];
                max_pool_on(isa, &x, &g, &mut y, &mut arg);
                for ch in 0..g.c {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut best = (f64::NEG_INFINITY, 0);
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let iy = (oy * g.stride + i) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + j) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w
                                    {
                                        continue;
                                    }
                                    let at = iy as usize * g.w + ix as usize;
                                    let v = x[ch * g.h * g.w + at];
                                    if v > best.0 {
                                        best = (v, at);
                                    }
                                }
                            }
                            let o = (ch * ho + oy) * wo + ox;
                            assert_eq!((y[o], arg[o] as usize), best, "{g:?} {isa:?}");
                        }
                    }
                }
                let dy: Vec<f64> = (0..y.len()).map(|i| i as f64 + 1.0).collect();
                let mut dx = vec![0.0; g.image_len()];
                max_pool_backward(&dy, &arg, &g, &mut dx);
                assert_eq!(dx.iter().sum::<f64>(), dy.iter().sum::<f64>());
            }
        }
    }
}
