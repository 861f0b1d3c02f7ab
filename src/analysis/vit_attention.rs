//! What a ViT's attention does: mean attention distance (Dosovitskiy et al. 2020, Fig. 7) and
//! attention rollout (Abnar & Zuidema 2020), from the attention probabilities the forward pass
//! returns (`need_attn`), no hooks.
//!
//! - **Mean attention distance** of head h in layer l: for each query patch i, the
//!   attention-weighted mean of the pixel distance between the centres of patch i and key patch j,
//!   `Σ_j a_ij ‖c_i − c_j‖ / Σ_j a_ij` over the patch keys (the class token has no position and is
//!   left out on both sides), averaged over query patches and images.
//! - **Rollout**: with `Ā_l` the head-mean attention of layer l, `Â_l = ½Ā_l + ½I` (the residual
//!   path) row-normalized, `R = Â_L ⋯ Â_1`; the class-token row of R over the patches is the map.

use crate::error::{NablaError, Result};
use crate::invalid;
use crate::models::resample::{resize_planes, Interp};
use crate::tensor::{Element, Tensor};
use std::path::Path;

/// Pixel distances between patch centres, `(N, N)` for a `grid × grid` grid of `patch`-pixel patches.
pub fn patch_distances(grid: usize, patch: usize) -> Vec<f64> {
    let n = grid * grid;
    let mut d = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let (dy, dx) = (
                (i / grid) as f64 - (j / grid) as f64,
                (i % grid) as f64 - (j % grid) as f64,
            );
            d[i * n + j] = patch as f64 * (dy * dy + dx * dx).sqrt();
        }
    }
    d
}

/// Sums, per head, of the per-query mean distances of one layer's attention `(B, H, T, T)`
/// (token 0 = class token); returns (sums per head, number of (image, query) pairs).
pub fn attention_distance_sums<T: Element>(
    attn: &Tensor<T>,
    grid: usize,
    patch: usize,
) -> Result<(Vec<f64>, usize)> {
    let s = attn.shape();
    let n = grid * grid;
    if s.len() != 4 || s[2] != n + 1 || s[3] != n + 1 {
        return Err(invalid!(
            "attention {:?} does not fit a class token + {grid}x{grid} patches",
            s
        ));
    }
    let (b, h, t) = (s[0], s[1], s[2]);
    let dist = patch_distances(grid, patch);
    let mut sums = vec![0.0; h];
    let a = attn.data();
    for bi in 0..b {
        for (hi, sum) in sums.iter_mut().enumerate() {
            let base = (bi * h + hi) * t * t;
            for i in 0..n {
                let row = &a[base + (i + 1) * t + 1..base + (i + 2) * t];
                let w: f64 = row.iter().map(|v| v.as_f64()).sum();
                if w > 0.0 {
                    let dsum: f64 = row
                        .iter()
                        .zip(&dist[i * n..(i + 1) * n])
                        .map(|(v, d)| v.as_f64() * d)
                        .sum();
                    *sum += dsum / w;
                }
            }
        }
    }
    Ok((sums, b * n))
}

/// Class-token rollout maps `(B, N)` from the attention of every layer, first layer first.
pub fn attention_rollout<T: Element>(attn: &[Tensor<T>]) -> Result<Vec<Vec<f64>>> {
    let first = attn
        .first()
        .ok_or_else(|| invalid!("rollout needs at least one layer of attention"))?;
    let s = first.shape().to_vec();
    if s.len() != 4 || s[2] != s[3] {
        return Err(invalid!("attention must be (B, H, T, T), got {:?}", s));
    }
    let (b, h, t) = (s[0], s[1], s[2]);
    let mut maps = Vec::with_capacity(b);
    for bi in 0..b {
        let mut r = vec![0.0f64; t * t];
        for i in 0..t {
            r[i * t + i] = 1.0;
        }
        for a in attn {
            if a.shape() != s.as_slice() {
                return Err(invalid!(
                    "layers have attention {:?} and {:?}",
                    s,
                    a.shape()
                ));
            }
            // Â = ½ mean_h A + ½ I, rows renormalized.
            let mut m = vec![0.0f64; t * t];
            for hi in 0..h {
                let base = (bi * h + hi) * t * t;
                for (k, v) in m.iter_mut().enumerate() {
                    *v += a.data()[base + k].as_f64() / h as f64;
                }
            }
            for i in 0..t {
                let row = &mut m[i * t..(i + 1) * t];
                row.iter_mut().for_each(|v| *v *= 0.5);
                row[i] += 0.5;
                let s: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= s);
            }
            // R ← Â R
            let mut nr = vec![0.0f64; t * t];
            for i in 0..t {
                for k in 0..t {
                    let mik = m[i * t + k];
                    if mik == 0.0 {
                        continue;
                    }
                    for j in 0..t {
                        nr[i * t + j] += mik * r[k * t + j];
                    }
                }
            }
            r = nr;
        }
        maps.push(r[1..t].to_vec());
    }
    Ok(maps)
}

/// Writes the image (left) and the rollout map over it (right) as an 8-bit RGB PNG.
/// `image` is `(C, S, S)` with values in [0, 1]; `map` is `grid × grid`.
pub fn write_rollout_png(
    path: &Path,
    image: &[f32],
    channels: usize,
    size: usize,
    map: &[f64],
    grid: usize,
    zoom: usize,
) -> Result<()> {
    if image.len() != channels * size * size || map.len() != grid * grid || grid == 0 {
        return Err(invalid!(
            "rollout image: {} values for {channels}x{size}x{size}, map {} for {grid}x{grid}",
            image.len(),
            map.len()
        ));
    }
    let mx = map.iter().cloned().fold(f64::MIN, f64::max);
    let mn = map.iter().cloned().fold(f64::MAX, f64::min);
    let norm: Vec<f64> = map
        .iter()
        .map(|v| if mx > mn { (v - mn) / (mx - mn) } else { 0.0 })
        .collect();
    let heat = resize_planes(
        &norm,
        1,
        (grid, grid),
        (size, size),
        Interp::Bilinear,
        false,
    )?;
    let (w, h) = (2 * size * zoom, size * zoom);
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = ((x % (size * zoom)) / zoom, y / zoom);
            let k = sy * size + sx;
            let rgb: [f64; 3] = if channels >= 3 {
                [image[k], image[size * size + k], image[2 * size * size + k]].map(|v| v as f64)
            } else {
                [image[k] as f64; 3]
            };
            let out = if x < size * zoom {
                rgb
            } else {
                // Dimmed image, heat in red/yellow on top.
                let a = heat[k].clamp(0.0, 1.0);
                let g = 0.35 * (rgb[0] + rgb[1] + rgb[2]) / 3.0;
                [
                    g + a * (1.0 - g),
                    g + a * a * (1.0 - g) * 0.8,
                    g * (1.0 - a),
                ]
            };
            for c in 0..3 {
                px[(y * w + x) * 3 + c] = (out[c].clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc
            .write_header()
            .map_err(|e| NablaError::Other(format!("png encode {}: {e}", path.display())))?;
        wr.write_image_data(&px)
            .map_err(|e| NablaError::Other(format!("png encode {}: {e}", path.display())))?;
    }
    crate::io::atomic_write(path, &bytes)
}

/// Registers a TrueType font (`$NABLA_FONT`, else DejaVu Sans under /usr/share/fonts) as
/// plotters' `sans-serif` once per process; false if none is found.
fn ensure_font() -> bool {
    use std::sync::OnceLock;
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let mut cands: Vec<std::path::PathBuf> = Vec::new();
        if let Ok(p) = std::env::var("NABLA_FONT") {
            cands.push(p.into());
        }
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
        ] {
            cands.push(p.into());
        }
        for p in cands {
            if let Ok(bytes) = std::fs::read(&p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return true;
                }
            }
        }
        false
    })
}

/// SVG scatter plot of mean attention distance (pixels) against layer, one point per head.
pub fn plot_distances(path: &Path, per_layer: &[Vec<f64>], image_size: usize) -> Result<()> {
    use plotters::prelude::*;
    let has_font = ensure_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 420)).into_drawing_area();
        let err = |e: String| NablaError::Other(format!("plot {}: {e}", path.display()));
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let l = per_layer.len().max(1);
        let ymax = per_layer
            .iter()
            .flatten()
            .cloned()
            .fold(image_size as f64 * 0.5, f64::max)
            * 1.05;
        let mut builder = ChartBuilder::on(&root);
        if has_font {
            builder.caption("Mean attention distance per head", ("sans-serif", 18));
        }
        let mut chart = builder
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0.5f64..(l as f64 + 0.5), 0f64..ymax)
            .map_err(|e| err(e.to_string()))?;
        if has_font {
            chart
                .configure_mesh()
                .x_desc("network depth (layer)")
                .y_desc("mean attention distance (pixels)")
                .draw()
                .map_err(|e| err(e.to_string()))?;
        } else {
            // Without a font plotters cannot measure text: grid lines only.
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(0)
                .draw()
                .map_err(|e| err(e.to_string()))?;
        }
        let pts: Vec<(f64, f64)> = per_layer
            .iter()
            .enumerate()
            .flat_map(|(li, hs)| hs.iter().map(move |&d| ((li + 1) as f64, d)))
            .collect();
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::io::atomic_write(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_of_uniform_and_self_attention() {
        let (grid, patch) = (2, 7);
        let n = grid * grid;
        let t = n + 1;
        // Head 0 attends only to itself (distance 0); head 1 uniformly over all tokens.
        let mut a = vec![0.0f64; 2 * t * t];
        for i in 0..t {
            a[i * t + i] = 1.0;
            for j in 0..t {
                a[t * t + i * t + j] = 1.0 / t as f64;
            }
        }
        let attn = Tensor::new(&[1, 2, t, t], a).unwrap();
        let (s, cnt) = attention_distance_sums(&attn, grid, patch).unwrap();
        assert_eq!(cnt, 4);
        assert_eq!(s[0], 0.0);
        // Uniform over 4 patches of a 2x2 grid: distances 0, 7, 7, 7√2 from every query.
        let want = (0.0 + 7.0 + 7.0 + 7.0 * 2f64.sqrt()) / 4.0;
        assert!((s[1] / cnt as f64 - want).abs() < 1e-12);
        // Rollout of identity attention is the identity: the class token maps to zeros.
        let id = Tensor::new(
            &[1, 1, t, t],
            (0..t * t)
                .map(|k| (k % (t + 1) == 0) as u8 as f64)
                .collect(),
        )
        .unwrap();
        let m = attention_rollout(&[id.clone(), id]).unwrap();
        assert!(m[0].iter().all(|&v| v == 0.0));
        assert!(attention_distance_sums(&attn, 3, 7).is_err());
    }
}
