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

/// The rollout colour map: value `a` in [0, 1] over grey level `g` (the dimmed image; 0 on
/// the colour bar): dark → red → yellow as `a` rises.
fn heat_rgb(a: f64, g: f64) -> [f64; 3] {
    [
        g + a * (1.0 - g),
        g + a * a * (1.0 - g) * 0.8,
        g * (1.0 - a),
    ]
}

/// Writes a rollout figure as an 8-bit RGB PNG: `title` on top, the image (left), the rollout
/// map over the dimmed image (right), and a colour bar for the map (min-max normalized over the
/// image's patches, so 0 = least and 1 = most attended patch). `image` is `(C, S, S)` with
/// values in [0, 1]; `map` is `grid × grid`. Without a TrueType font the text is left out.
#[allow(clippy::too_many_arguments)]
pub fn write_rollout_png(
    path: &Path,
    title: &str,
    image: &[f32],
    channels: usize,
    size: usize,
    map: &[f64],
    grid: usize,
    zoom: usize,
) -> Result<()> {
    use plotters::prelude::*;
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
    let text = crate::plot::font().is_some();
    // Layout in pixels: margin, title band, two panels, the colour bar and its tick labels.
    let (m, top, p) = (12usize, if text { 56 } else { 12 }, size * zoom);
    let (bar_x, bar_w) = (m + 2 * p + 2 * m, 18usize);
    let (w, h) = (bar_x + bar_w + if text { 150 } else { m }, top + p + m);
    let mut px = vec![255u8; w * h * 3];
    let mut put = |x: usize, y: usize, rgb: [f64; 3]| {
        for c in 0..3 {
            px[(y * w + x) * 3 + c] = (rgb[c].clamp(0.0, 1.0) * 255.0).round() as u8;
        }
    };
    for y in 0..p {
        for x in 0..p {
            let k = (y / zoom) * size + x / zoom;
            let rgb: [f64; 3] = if channels >= 3 {
                [image[k], image[size * size + k], image[2 * size * size + k]].map(|v| v as f64)
            } else {
                [image[k] as f64; 3]
            };
            put(m + x, top + y, rgb);
            // Dimmed image, heat in red/yellow on top.
            let g = 0.35 * (rgb[0] + rgb[1] + rgb[2]) / 3.0;
            put(m + p + m + x, top + y, heat_rgb(heat[k].clamp(0.0, 1.0), g));
        }
    }
    for y in 0..p {
        let a = 1.0 - y as f64 / (p - 1).max(1) as f64;
        for x in 0..bar_w {
            put(bar_x + x, top + y, heat_rgb(a, 0.0));
        }
    }
    if text {
        let err = |e: String| NablaError::Other(format!("drawing {}: {e}", path.display()));
        let root = BitMapBackend::with_buffer(&mut px, (w as u32, h as u32)).into_drawing_area();
        let font = |sz: i32| ("sans-serif", sz).into_font().color(&BLACK);
        let draw =
            |el: Text<'_, (i32, i32), String>| root.draw(&el).map_err(|e| err(e.to_string()));
        let (m, top, p, bx) = (m as i32, top as i32, p as i32, (bar_x + bar_w) as i32);
        draw(Text::new(title.to_string(), (m, 6), font(18)))?;
        draw(Text::new("image".to_string(), (m, top - 20), font(14)))?;
        draw(Text::new(
            "attention rollout (class token)".to_string(),
            (2 * m + p, top - 20),
            font(14),
        ))?;
        for (v, label) in [(1.0, "1 (most)"), (0.5, "0.5"), (0.0, "0 (least)")] {
            let y = top + ((1.0 - v) * (p - 1) as f64) as i32;
            root.draw(&PathElement::new(vec![(bx, y), (bx + 5, y)], BLACK))
                .map_err(|e| err(e.to_string()))?;
            draw(Text::new(
                label.to_string(),
                (bx + 8, (y - 7).max(top)),
                font(13),
            ))?;
        }
        // The bar's caption midway between the "1" and "0.5" labels, clear of both.
        draw(Text::new(
            "rollout, min-max".to_string(),
            (bx + 8, top + p / 4 - 14),
            font(13),
        ))?;
        draw(Text::new(
            "normalized".to_string(),
            (bx + 8, top + p / 4 + 2),
            font(13),
        ))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let bytes = crate::plot::encode_png(&px, (w as u32, h as u32))?;
    crate::io::atomic_write(path, &bytes)
}

/// Plot of mean attention distance (pixels) against layer: one point per head and the layer
/// mean, with the image's largest possible mean distance for scale.
pub fn plot_distances(path: &Path, per_layer: &[Vec<f64>], image_size: usize) -> Result<()> {
    use crate::plot::{write_charts, Axis, Chart, Mark, Series};
    let l = per_layer.len().max(1);
    let ymax = per_layer
        .iter()
        .flatten()
        .cloned()
        .fold(image_size as f64 * 0.5, f64::max)
        * 1.05;
    let heads = per_layer
        .iter()
        .enumerate()
        .flat_map(|(li, hs)| hs.iter().map(move |&d| ((li + 1) as f64, d)))
        .collect();
    let mean = per_layer
        .iter()
        .enumerate()
        .filter(|(_, hs)| !hs.is_empty())
        .map(|(li, hs)| ((li + 1) as f64, hs.iter().sum::<f64>() / hs.len() as f64))
        .collect();
    write_charts(
        path,
        &[Chart {
            title: format!("Mean attention distance per head ({image_size}×{image_size} images)"),
            x: Axis::new("encoder block (layer)")
                .integer()
                .range(0.5, l as f64 + 0.5),
            y: Axis::new("mean attention distance (pixels)").range(0.0, ymax),
            series: vec![
                Series::new("one head", heads, Mark::Points),
                Series::new("layer mean", mean, Mark::LinePoints),
            ],
        }],
    )
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

    #[test]
    fn distance_plot_has_labelled_whole_layers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.svg");
        let per_layer: Vec<Vec<f64>> = (0..6)
            .map(|l| vec![2.0 + l as f64, 4.0 + l as f64])
            .collect();
        plot_distances(&p, &per_layer, 28).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg"));
        if crate::plot::tests::font_or_skip() {
            let texts = crate::plot::tests::svg_texts(&svg);
            for want in [
                "encoder block (layer)",
                "mean attention distance (pixels)",
                "layer mean",
            ] {
                assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
            }
            assert_eq!(
                crate::plot::tests::svg_x_ticks(&svg),
                ["1", "2", "3", "4", "5", "6"]
            );
        }
    }

    #[test]
    fn rollout_png_has_both_panels_and_a_colour_bar() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.png");
        let (size, grid, zoom) = (8, 2, 4);
        let image = vec![0.5f32; size * size];
        let map = [0.0, 1.0, 2.0, 3.0];
        write_rollout_png(
            &p,
            "label 3, predicted 3",
            &image,
            1,
            size,
            &map,
            grid,
            zoom,
        )
        .unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        let (w, h) = (info.width as usize, info.height as usize);
        let text = crate::plot::font().is_some();
        let (m, top, pw) = (12, if text { 56 } else { 12 }, size * zoom);
        assert_eq!(h, top + pw + m);
        let at = |x: usize, y: usize| [0, 1, 2].map(|c| buf[(y * w + x) * 3 + c]);
        // Left panel: the grey image as it is.
        assert_eq!(at(m + 1, top + 1), [128, 128, 128]);
        // Colour bar: brightest (yellow) at the top, black at the bottom.
        let bar_x = m + 2 * pw + 2 * m + 4;
        assert_eq!(at(bar_x, top), [255, 204, 0]);
        assert_eq!(at(bar_x, top + pw - 1), [0, 0, 0]);
        // Right panel: the most attended patch (bottom right) is hotter than the least.
        let hot = at(m + pw + m + pw - 1, top + pw - 1);
        let cold = at(m + pw + m, top);
        assert!(hot[0] > cold[0] && hot[1] > cold[1], "{hot:?} {cold:?}");
        assert!(write_rollout_png(&p, "", &image, 1, size, &map[..3], grid, zoom).is_err());
    }
}
