//! 2-D resampling: position embeddings of a patch grid for fine-tuning at another resolution
//! (timm's `resample_abs_pos_embed`), and image resizing. Pure functions on plain tensors.
//!
//! Both interpolations follow PyTorch's `F.interpolate` with `align_corners` either way:
//! output index `i` of `n_out` samples the source coordinate
//! `x = (i + ½)·n_in/n_out − ½` (align_corners = false) or `x = i·(n_in−1)/(n_out−1)` (true);
//! bilinear mixes the two neighbours `⌊x⌋, ⌊x⌋+1` (coordinates clamped into the grid), bicubic
//! the four neighbours with Keys' cubic convolution, `A = −0.75` (indices clamped at the border).
//! The 2-D resampling is separable: rows first, then columns.

use crate::error::Result;
use crate::tensor::{Element, Tensor};
use crate::{invalid, shape_err};

/// Interpolation kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interp {
    Bilinear,
    Bicubic,
}

impl std::str::FromStr for Interp {
    type Err = crate::error::NablaError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bilinear" => Ok(Interp::Bilinear),
            "bicubic" => Ok(Interp::Bicubic),
            _ => Err(invalid!(
                "interpolation must be bilinear or bicubic, got {s:?}"
            )),
        }
    }
}

fn cubic_weights(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// The interpolation matrix `(n_out, n_in)` of one axis, as (index, weight) lists per output.
fn axis_weights(
    n_in: usize,
    n_out: usize,
    method: Interp,
    align_corners: bool,
) -> Vec<Vec<(usize, f64)>> {
    (0..n_out)
        .map(|i| {
            let x = if align_corners {
                if n_out > 1 {
                    i as f64 * (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                (i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5
            };
            let last = n_in as isize - 1;
            match method {
                Interp::Bilinear => {
                    let x = x.clamp(0.0, last as f64);
                    let x0 = (x.floor() as isize).min(last);
                    let x1 = (x0 + 1).min(last);
                    let t = x - x0 as f64;
                    vec![(x0 as usize, 1.0 - t), (x1 as usize, t)]
                }
                Interp::Bicubic => {
                    let f = x.floor();
                    let w = cubic_weights(x - f);
                    (0..4)
                        .map(|k| {
                            let idx = (f as isize - 1 + k as isize).clamp(0, last) as usize;
                            (idx, w[k])
                        })
                        .collect()
                }
            }
        })
        .collect()
}

/// Resamples a stack of planes `src (planes, h, w)` (plane-major) to `(planes, h2, w2)`.
pub fn resize_planes<T: Element>(
    src: &[T],
    planes: usize,
    (h, w): (usize, usize),
    (h2, w2): (usize, usize),
    method: Interp,
    align_corners: bool,
) -> Result<Vec<T>> {
    if h == 0 || w == 0 || h2 == 0 || w2 == 0 {
        return Err(invalid!("cannot resample {h}x{w} to {h2}x{w2}"));
    }
    if src.len() != planes * h * w {
        return Err(shape_err!(
            "resize",
            "{} values for {planes} planes of {h}x{w}",
            src.len()
        ));
    }
    let wy = axis_weights(h, h2, method, align_corners);
    let wx = axis_weights(w, w2, method, align_corners);
    let mut out = vec![T::zero(); planes * h2 * w2];
    let mut tmp = vec![0.0f64; h2 * w];
    for p in 0..planes {
        let s = &src[p * h * w..(p + 1) * h * w];
        for (i, ws) in wy.iter().enumerate() {
            let row = &mut tmp[i * w..(i + 1) * w];
            row.iter_mut().for_each(|v| *v = 0.0);
            for &(r, c) in ws {
                for (o, v) in row.iter_mut().zip(&s[r * w..(r + 1) * w]) {
                    *o += c * v.as_f64();
                }
            }
        }
        let o = &mut out[p * h2 * w2..(p + 1) * h2 * w2];
        for i in 0..h2 {
            for (j, ws) in wx.iter().enumerate() {
                let v: f64 = ws.iter().map(|&(k, c)| c * tmp[i * w + k]).sum();
                o[i * w2 + j] = T::c(v);
            }
        }
    }
    Ok(out)
}

/// Resamples ViT position embeddings `pos (1, prefix + gh·gw, D)` to a `new_grid`, keeping the
/// `prefix` entries (the class token's) unchanged. The grid is row-major, as timm lays it out.
pub fn resample_pos_embed<T: Element>(
    pos: &Tensor<T>,
    old_grid: (usize, usize),
    new_grid: (usize, usize),
    prefix: usize,
    method: Interp,
) -> Result<Tensor<T>> {
    let s = pos.shape();
    if s.len() != 3 || s[0] != 1 || s[1] != prefix + old_grid.0 * old_grid.1 {
        return Err(shape_err!(
            "resample_pos_embed",
            "pos_embed {:?} does not hold {prefix} prefix token(s) + a {}x{} grid",
            s,
            old_grid.0,
            old_grid.1
        ));
    }
    let d = s[2];
    if old_grid == new_grid {
        return Ok(pos.clone());
    }
    let data = pos.data();
    // (N, D) → (D, gh, gw) planes
    let n = old_grid.0 * old_grid.1;
    let mut planes = vec![T::zero(); d * n];
    for t in 0..n {
        for c in 0..d {
            planes[c * n + t] = data[(prefix + t) * d + c];
        }
    }
    let r = resize_planes(&planes, d, old_grid, new_grid, method, false)?;
    let n2 = new_grid.0 * new_grid.1;
    let mut out = Vec::with_capacity((prefix + n2) * d);
    out.extend_from_slice(&data[..prefix * d]);
    for t in 0..n2 {
        for c in 0..d {
            out.push(r[c * n2 + t]);
        }
    }
    Tensor::new(&[1, prefix + n2, d], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(gh: usize, gw: usize, d: usize) -> Tensor<f64> {
        // prefix token = 7.0; channel c: (c+1)·row − 0.5·col + c
        let mut v = vec![7.0; d];
        for r in 0..gh {
            for c in 0..gw {
                for ch in 0..d {
                    v.push((ch as f64 + 1.0) * r as f64 - 0.5 * c as f64 + ch as f64);
                }
            }
        }
        Tensor::new(&[1, 1 + gh * gw, d], v).unwrap()
    }

    #[test]
    fn identity_at_same_size() {
        let p = ramp(4, 4, 3).map(|x| x.sin());
        for m in [Interp::Bilinear, Interp::Bicubic] {
            let q = resample_pos_embed(&p, (4, 4), (4, 4), 1, m).unwrap();
            assert_eq!(q, p);
            // The kernels themselves are the identity at equal sizes too.
            let r = resize_planes(&p.data()[3..], 3, (4, 4), (4, 4), m, false).unwrap();
            assert!(r
                .iter()
                .zip(&p.data()[3..])
                .all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    #[test]
    fn bilinear_exact_on_linear_ramp() {
        // Downsampling 8→4: every sample lies inside the grid, so bilinear is exact everywhere.
        let p = ramp(8, 8, 2);
        let q = resample_pos_embed(&p, (8, 8), (4, 4), 1, Interp::Bilinear).unwrap();
        assert_eq!(&q.data()[..2], &[7.0, 7.0]);
        for i in 0..4 {
            for j in 0..4 {
                let (y, x) = (2.0 * i as f64 + 0.5, 2.0 * j as f64 + 0.5);
                for ch in 0..2 {
                    let want = (ch as f64 + 1.0) * y - 0.5 * x + ch as f64;
                    let got = q.data()[(1 + i * 4 + j) * 2 + ch];
                    assert!((got - want).abs() < 1e-12, "({i},{j},{ch}) {got} vs {want}");
                }
            }
        }
        // Upsampling 4→7 with align_corners: exact everywhere.
        let planes: Vec<f64> = (0..16)
            .map(|k| 3.0 * (k / 4) as f64 + (k % 4) as f64)
            .collect();
        let r = resize_planes(&planes, 1, (4, 4), (7, 7), Interp::Bilinear, true).unwrap();
        for i in 0..7 {
            for j in 0..7 {
                let want = 3.0 * i as f64 * 0.5 + j as f64 * 0.5;
                assert!((r[i * 7 + j] - want).abs() < 1e-12);
            }
        }
        // Upsampling 4→8 without align_corners: exact for interior samples (edges clamp).
        let r = resize_planes(&planes, 1, (4, 4), (8, 8), Interp::Bilinear, false).unwrap();
        for i in 1..7 {
            for j in 1..7 {
                let (y, x) = (0.5 * i as f64 - 0.25, 0.5 * j as f64 - 0.25);
                assert!((r[i * 8 + j] - (3.0 * y + x)).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn bicubic_matches_pytorch_and_rejects_bad_shapes() {
        // A ramp over rows 0..5, 6x6 → 12x12; want = torch.nn.functional.interpolate(x,
        // size=(12, 12), mode='bicubic', align_corners=False) in float64 (Keys A = −0.75 does not
        // reproduce linear functions exactly: PyTorch's values, not the ramp, are the reference).
        let want = [
            -0.10546875,
            0.19140625,
            0.66796875,
            1.296875,
            1.703125,
            2.296875,
            2.703125,
            3.296875,
            3.703125,
            4.33203125,
            4.80859375,
            5.10546875,
        ];
        let planes: Vec<f64> = (0..36).map(|k| (k / 6) as f64).collect();
        let r = resize_planes(&planes, 1, (6, 6), (12, 12), Interp::Bicubic, false).unwrap();
        for i in 0..12 {
            for j in 0..12 {
                assert!(
                    (r[i * 12 + j] - want[i]).abs() < 1e-12,
                    "({i},{j}) {}",
                    r[i * 12 + j]
                );
            }
        }
        // Constants are reproduced (weights sum to 1).
        let c = resize_planes(&[2.5f64; 16], 1, (4, 4), (7, 7), Interp::Bicubic, false).unwrap();
        assert!(c.iter().all(|v| (v - 2.5).abs() < 1e-12));
        let p = ramp(3, 3, 2);
        let e = resample_pos_embed(&p, (4, 4), (2, 2), 1, Interp::Bilinear).unwrap_err();
        assert!(e.to_string().contains("4x4 grid"), "{e}");
    }
}
