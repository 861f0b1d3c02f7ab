//! Loss and metric curves from `metrics.jsonl`, drawn with `plotters`.
//!
//! Left panel: `train_loss` and every metric whose name contains `loss`; right panel (when
//! there are any): the other metrics (accuracy, perplexity, …); x axis: optimizer step.
//! SVG is written by the SVG backend; PNG rasterizes text with a TrueType font found under
//! `/usr/share/fonts` (or `$NABLA_FONT`), registered with plotters' `ab_glyph` renderer.

use super::metrics::{read_metrics_jsonl, MetricsRecord, RESERVED};
use crate::error::{NablaError, Result};
use crate::invalid;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

type Series = (String, Vec<(f64, f64)>);

/// The curves of each panel: (title, series).
pub fn panels(records: &[MetricsRecord]) -> Vec<(String, Vec<Series>)> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        for k in r.metrics.keys() {
            if !names.contains(k) && !RESERVED.contains(&k.as_str()) {
                names.push(k.clone());
            }
        }
    }
    names.sort();
    let series = |name: &str| -> Series {
        let pts = records
            .iter()
            .filter_map(|r| {
                r.get(name)
                    .filter(|v| v.is_finite())
                    .map(|v| (r.step as f64, v))
            })
            .collect();
        (name.to_string(), pts)
    };
    let mut loss = vec![series("train_loss")];
    let mut other = Vec::new();
    for n in &names {
        if n.contains("loss") {
            loss.push(series(n));
        } else {
            other.push(series(n));
        }
    }
    let mut out = vec![("loss".to_string(), loss)];
    if !other.is_empty() {
        out.push(("metrics".to_string(), other));
    }
    out
}

/// The first usable TrueType font: `$NABLA_FONT`, DejaVu Sans, then any `*Sans*.ttf` / `*.ttf`
/// under `/usr/share/fonts` and `/usr/local/share/fonts`.
pub fn find_font() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NABLA_FONT").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
    }
    let known = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    if let Some(p) = known.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    let mut found = Vec::new();
    for root in ["/usr/share/fonts", "/usr/local/share/fonts"] {
        collect_ttf(Path::new(root), 0, &mut found);
    }
    found.sort();
    let sans = found.iter().find(|p| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        n.contains("Sans") && !n.contains("Bold") && !n.contains("Oblique") && !n.contains("Italic")
    });
    sans.or(found.first()).cloned()
}

fn collect_ttf(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 4 {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_ttf(&p, depth + 1, out);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
                out.push(p);
            }
        }
    }
}

static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Registers the font as plotters' `sans-serif` (once per process); `None` if there is none.
fn ensure_font() -> Option<PathBuf> {
    FONT.get_or_init(|| {
        let path = find_font()?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(&path).ok()?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
        Some(path)
    })
    .clone()
}

/// Reads `metrics` (JSONL) and writes the plot to `out` (`.svg` or `.png`).
pub fn plot_file(metrics: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<()> {
    let records = read_metrics_jsonl(metrics.as_ref())?;
    if records.is_empty() {
        return Err(NablaError::format(
            metrics.as_ref(),
            "no metrics records to plot (the run has not evaluated yet)",
        ));
    }
    plot_metrics(&records, out)
}

/// Writes the plot of `records` to `out`; the extension picks the format. The image is drawn
/// to a temporary name and renamed, like every file nabla writes.
pub fn plot_metrics(records: &[MetricsRecord], out: impl AsRef<Path>) -> Result<()> {
    let out = out.as_ref();
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let font = ensure_font();
    let (w, h) = (1200u32, 480u32);
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp.{ext}",
        out.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        std::process::id()
    ));
    let err = |e: String| NablaError::Other(format!("drawing {}: {e}", out.display()));
    match ext.as_str() {
        "svg" => {
            // Without a font plotters cannot measure text: draw the curves and grid only.
            let root = SVGBackend::new(&tmp, (w, h)).into_drawing_area();
            draw(&root, records, font.is_some()).map_err(err)?;
        }
        "png" => {
            if font.is_none() {
                return Err(invalid!(
                    "PNG plots need a TrueType font and none was found under /usr/share/fonts \
                     (set NABLA_FONT=/path/to/font.ttf); write {} as .svg instead",
                    out.display()
                ));
            }
            let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
            draw(&root, records, true).map_err(err)?;
        }
        other => {
            return Err(invalid!(
                "plot file {} has extension {other:?}; use .svg or .png",
                out.display()
            ))
        }
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        NablaError::io(out, e)
    })
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    records: &[MetricsRecord],
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let panels = panels(records);
    let areas = root.split_evenly((1, panels.len()));
    for (area, (title, series)) in areas.iter().zip(&panels) {
        let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
        let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
        let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(y), b.max(y))
        });
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-9 * y1.abs().max(1.0));
        (y0, y1) = (y0 - pad, y1 + pad);
        let mut builder = ChartBuilder::on(area);
        builder.margin(15);
        if text {
            builder
                .caption(title, ("sans-serif", 20))
                .x_label_area_size(40)
                .y_label_area_size(60);
        }
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("step")
                .label_style(("sans-serif", 14))
                .x_label_formatter(&|x| format!("{x:.0}"));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(e)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line = chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(e)?;
            if text {
                line.label(name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
            chart
                .draw_series(PointSeries::of_element(
                    pts.iter().copied(),
                    3,
                    color.filled(),
                    &|c, s, st| Circle::new(c, s, st),
                ))
                .map_err(e)?;
        }
        if text {
            chart
                .configure_series_labels()
                // Losses fall and metrics (accuracy) mostly rise: keep the legend off the curves.
                .position(if title == "loss" {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(e)?;
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Metrics;

    fn records() -> Vec<MetricsRecord> {
        (1..=5)
            .map(|i| {
                let mut m = Metrics::new();
                m.insert("val_loss".into(), 1.0 / i as f64);
                m.insert("val_acc".into(), 0.5 + 0.1 * i as f64);
                MetricsRecord {
                    step: 10 * i,
                    epoch: None,
                    wall_time_s: i as f64,
                    train_loss: 1.2 / i as f64,
                    lr: 0.1,
                    grad_norm: 1.0,
                    items_per_s: 10.0,
                    metrics: m,
                }
            })
            .collect()
    }

    #[test]
    fn panels_split_losses_from_metrics() {
        let p = panels(&records());
        assert_eq!(p.len(), 2);
        let names: Vec<&str> = p[0].1.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["train_loss", "val_loss"]);
        assert_eq!(p[1].1[0].0, "val_acc");
        assert_eq!(p[1].1[0].1.len(), 5);
    }

    #[test]
    fn svg_png_and_bad_extension() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("m.svg");
        plot_metrics(&records(), &svg).unwrap();
        let s = std::fs::read_to_string(&svg).unwrap();
        assert!(
            s.starts_with("<svg") && s.contains("polyline"),
            "{}",
            &s[..200.min(s.len())]
        );
        // Without text (the no-font path) the SVG still draws.
        let n = dir.path().join("n.svg");
        let root = SVGBackend::new(&n, (300, 200)).into_drawing_area();
        draw(&root, &records(), false).unwrap();
        drop(root);
        if find_font().is_some() {
            let png = dir.path().join("m.png");
            plot_metrics(&records(), &png).unwrap();
            assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        }
        let e = plot_metrics(&records(), dir.path().join("m.jpg"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(".svg"), "{e}");
    }
}
