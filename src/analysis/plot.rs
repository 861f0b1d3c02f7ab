//! Line plots of analysis results with `plotters`: SVG always works; PNG needs a TrueType font
//! from /usr/share/fonts (registered once), else a clear error. Without a font, an SVG is drawn
//! without text.

use crate::error::{NablaError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// One chart: named series of `(x, y)` points.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub log_y: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

fn find_ttf(dir: &Path, depth: usize) -> Option<std::path::PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    // Prefer a plain sans-serif face.
    if let Some(p) = entries
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "DejaVuSans.ttf"))
    {
        return Some(p.clone());
    }
    if let Some(p) = entries
        .iter()
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")))
    {
        return Some(p.clone());
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| find_ttf(p, depth - 1))
}

/// Registers a system TTF as "sans-serif" once; returns whether one is available.
pub fn ensure_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let Some(path) = find_ttf(Path::new("/usr/share/fonts"), 3) else {
            return false;
        };
        let Ok(bytes) = std::fs::read(&path) else {
            return false;
        };
        // plotters keeps a 'static reference; the font lives for the whole process anyway.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let pts = p
        .series
        .iter()
        .flat_map(|s| s.1.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_y || *y > 0.0));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.1, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + y0.abs().max(1e-12);
    }
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(&p.title, ("sans-serif", 18))
            .x_label_area_size(35)
            .y_label_area_size(60);
    }
    let e = |e: &dyn std::fmt::Display| e.to_string();
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            let mut mesh = chart.configure_mesh();
            if text {
                mesh.x_desc(p.x_label.as_str());
            } else {
                mesh.disable_x_mesh()
                    .disable_y_mesh()
                    .x_labels(0)
                    .y_labels(0);
            }
            mesh.draw().map_err(|x| e(&x))?;
            for (i, (name, s)) in p.series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                let data: Vec<(f64, f64)> = s
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!p.log_y || *y > 0.0))
                    .collect();
                let series = chart
                    .draw_series(LineSeries::new(data.clone(), c.stroke_width(2)))
                    .map_err(|x| e(&x))?;
                if text {
                    series.label(name.as_str()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                }
                chart
                    .draw_series(data.iter().map(|&pt| Circle::new(pt, 2, c.filled())))
                    .map_err(|x| e(&x))?;
            }
            if text {
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()
                    .map_err(|x| e(&x))?;
            }
        }};
    }
    if p.log_y {
        body!(b
            .build_cartesian_2d(x0..x1, (y0 * 0.8..y1 * 1.25).log_scale())
            .map_err(|x| e(&x))?);
    } else {
        let pad = 0.05 * (y1 - y0);
        body!(b
            .build_cartesian_2d(x0..x1, y0 - pad..y1 + pad)
            .map_err(|x| e(&x))?);
    }
    Ok(())
}

fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    panels: &[Panel],
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (a, p) in areas.iter().zip(panels) {
        draw_panel(a, p, text)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws the panels side by side into `path` (`.svg` or `.png`).
pub fn panels(path: &Path, panels: &[Panel]) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let text = ensure_font();
    let size = (460 * panels.len().max(1) as u32, 380);
    let res = match ext.as_str() {
        "svg" => {
            let mut s = String::new();
            let r = draw_all(
                SVGBackend::with_string(&mut s, size).into_drawing_area(),
                panels,
                text,
            );
            r.and_then(|_| crate::io::atomic_write(path, s.as_bytes()).map_err(|e| e.to_string()))
        }
        "png" => {
            if !text {
                return Err(NablaError::Other(format!(
                    "cannot draw {}: PNG needs a TrueType font and none was found under /usr/share/fonts (write .svg instead)",
                    path.display()
                )));
            }
            let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
            let r = draw_all(
                BitMapBackend::with_buffer(&mut buf, size).into_drawing_area(),
                panels,
                text,
            );
            r.and_then(|_| {
                let img = image_png(&buf, size).map_err(|e| e.to_string())?;
                crate::io::atomic_write(path, &img).map_err(|e| e.to_string())
            })
        }
        _ => {
            return Err(NablaError::InvalidArgument(format!(
                "plot file {} must end in .svg or .png",
                path.display()
            )))
        }
    };
    res.map_err(|e| NablaError::Other(format!("drawing {}: {e}", path.display())))
}

/// Encodes an RGB buffer as PNG (stored deflate blocks through flate2's zlib, no extra crate).
fn image_png(rgb: &[u8], (w, h): (u32, u32)) -> std::io::Result<Vec<u8>> {
    use flate2::write::ZlibEncoder;
    use std::io::Write;
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks(3 * w as usize) {
        raw.push(0u8);
        raw.extend_from_slice(row);
    }
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw)?;
    let idat = z.finish()?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend_from_slice(data);
        out.extend_from_slice(&c);
        out.extend_from_slice(&crc32(&c).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}
