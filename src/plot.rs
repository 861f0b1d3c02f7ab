//! The one plotting helper: every chart nabla draws (training curves, RNN gradient flow, graph
//! influence, ViT attention distance) is a [`Chart`] drawn by [`write_charts`]; every PNG is
//! encoded by [`encode_png`]; the one TrueType font is registered by [`font`].
//!
//! A chart has a title, labelled axes (the label states the unit), integer ticks on integer
//! axes (steps, layers, hops: never "0.5" or "10.0"), and its legend in a column to the right
//! of the data, so no curve is ever hidden under it. SVG always works: without a font the text
//! is left out (plotters cannot measure text without one); PNG needs the font.

use crate::error::{NablaError, Result};
use crate::invalid;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One axis of a [`Chart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// The quantity and its unit, e.g. `"mean attention distance (pixels)"`.
    pub label: String,
    /// Ticks only at whole numbers, labelled without decimals (steps, layers, hops).
    pub integer: bool,
    /// Logarithmic scale (non-positive values are left out).
    pub log: bool,
    /// Fixed `(lo, hi)`; `None`: the data's range (plus a margin on a value axis).
    pub range: Option<(f64, f64)>,
}

impl Axis {
    pub fn new(label: impl Into<String>) -> Axis {
        Axis {
            label: label.into(),
            integer: false,
            log: false,
            range: None,
        }
    }
    pub fn integer(mut self) -> Axis {
        self.integer = true;
        self
    }
    pub fn log(mut self) -> Axis {
        self.log = true;
        self
    }
    pub fn range(mut self, lo: f64, hi: f64) -> Axis {
        self.range = Some((lo, hi));
        self
    }
}

/// How a [`Series`] is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// A thin line: dense curves (the training loss at every logged step).
    Line,
    /// Markers only: one value per item (attention distance per head).
    Points,
    /// A line with a marker at each point: sparse measurements (evaluations, hops); dense ones
    /// (over [`MAX_MARKERS`] points) get the line alone.
    LinePoints,
}

/// A named curve of `(x, y)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub mark: Mark,
    /// The spread of each point, `(low, high)` (e.g. min and max over seeds), drawn as a
    /// vertical error bar with caps where `high > low`; empty: none. One entry per point.
    pub spread: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, mark: Mark) -> Series {
        Series {
            name: name.into(),
            points,
            mark,
            spread: Vec::new(),
        }
    }
    /// Adds error bars from `low` to `high` at each point (see [`Series::spread`]).
    pub fn with_spread(mut self, spread: Vec<(f64, f64)>) -> Series {
        self.spread = spread;
        self
    }
}

/// One panel: a title, two axes and its series.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
}

/// The first usable TrueType font: `$NABLA_FONT`, DejaVu Sans or Liberation Sans in their usual
/// places, then the first plain `*Sans*.ttf` (else any `*.ttf`) under `/usr/share/fonts` and
/// `/usr/local/share/fonts`.
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
    fn collect(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for p in rd.flatten().map(|e| e.path()) {
            if p.is_dir() && depth < 4 {
                collect(&p, depth + 1, out);
            } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    for root in ["/usr/share/fonts", "/usr/local/share/fonts"] {
        collect(Path::new(root), 0, &mut found);
    }
    found.sort();
    let plain_sans = |p: &&PathBuf| {
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        n.contains("Sans") && !["Bold", "Oblique", "Italic"].iter().any(|s| n.contains(s))
    };
    found.iter().find(plain_sans).or(found.first()).cloned()
}

/// Registers [`find_font`]'s font as plotters' `sans-serif`, once per process; the path, or
/// `None` when there is no font (then text cannot be drawn).
pub fn font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<PathBuf>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = find_font()?;
        // plotters keeps a 'static reference; the font lives for the whole process anyway.
        let bytes: &'static [u8] = Box::leak(std::fs::read(&path).ok()?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
        Some(path)
    })
    .as_deref()
}

/// The error for a PNG that needs text when there is no font.
pub fn no_font_error(path: &Path) -> NablaError {
    invalid!(
        "PNG plots need a TrueType font and none was found under /usr/share/fonts \
         (set NABLA_FONT=/path/to/font.ttf); write {} as .svg instead",
        path.display()
    )
}

/// Encodes 8-bit RGB pixels (`w × h × 3`, row-major) as PNG.
pub fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| NablaError::Other(format!("PNG encoding: {e}"));
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .map_err(err)?
            .write_image_data(rgb)
            .map_err(err)?;
    }
    Ok(bytes)
}

/// Palette of distinguishable colours (Tableau 10).
pub const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Pixel width of one chart's data area (the legend column comes on top).
const CHART_W: u32 = 520;
const CHART_H: u32 = 400;

/// The legend column's width for these series names (≈ 8 px per character at 14 px).
fn legend_width(c: &Chart) -> u32 {
    let chars = c.series.iter().map(|s| s.name.chars().count()).max();
    chars.map_or(0, |n| 44 + 8 * n as u32)
}

/// Tick count for plotters' key-point search, so that an integer axis gets a step ≥ 1.
/// Plotters picks the finest step in {1, 2, 5}·10^k whose points in the range number at most
/// the count. With K whole numbers in the range, step 1 gives K points and any step below 1 at
/// least 2K − 1 > K (K ≥ 2; for K = 1 at least 2), so a count of min(K, 10) allows step 1 and
/// rules out every fractional step (plotters' steps ≥ 1 are whole).
fn tick_count(axis: &Axis, (lo, hi): (f64, f64)) -> usize {
    if axis.integer {
        let whole = hi.floor() - lo.ceil() + 1.0;
        (whole.max(1.0) as usize).min(10)
    } else {
        10
    }
}

/// The labelled ticks of a logarithmic axis over `lo..=hi` (0 < lo < hi): the powers of ten in
/// the range when there are at least three (every 2nd, 3rd, … when there are more than eight),
/// else the 1-2-5 steps of each decade, else — a range under a factor of about 2.5 — evenly
/// spaced round values (step 1, 2 or 5 · 10^k). Plotters' own log ticks are the powers of ten
/// only, which leaves one label or none on an axis spanning less than a decade or two.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Vec::new();
    }
    let in_range = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let (k0, k1) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
    let decades: Vec<f64> = (k0..=k1).map(|k| 10f64.powi(k)).collect();
    if decades.len() >= 3 {
        let every = decades.len().div_ceil(8);
        return decades.into_iter().step_by(every).collect();
    }
    let steps125: Vec<f64> = (k0 - 1..=k1)
        .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
        .filter(|&v| in_range(v))
        .collect();
    if steps125.len() >= 3 {
        return steps125;
    }
    // The largest round step that gives at least three ticks (at most about eight).
    // (A factor hi/lo > 1 + 1e-12 reaches three ticks within about 14 decades of steps.)
    let mut step = 10f64.powi(hi.log10().ceil() as i32);
    for _ in 0..16 {
        for m in [5.0, 2.0, 1.0] {
            let st = step * m / 10.0;
            let first = (lo / st - 1e-9).ceil() as i64;
            let last = (hi / st + 1e-9).floor() as i64;
            if last - first + 1 >= 3 {
                return (first..=last).map(|i| i as f64 * st).collect();
            }
        }
        step /= 10.0;
    }
    vec![lo, hi]
}

/// The minor (unlabelled) grid of a log axis whose ticks are decades: 2·10^k … 9·10^k.
fn log_minor(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (k0..=k1)
        .flat_map(|k| (2..10).map(move |m| m as f64 * 10f64.powi(k)))
        .filter(|&v| v >= lo && v <= hi)
        .collect()
}

/// A logarithmic coordinate with the ticks of [`log_ticks`].
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl plotters::coord::ranged1d::Ranged for LogAxis {
    type FormatOption = plotters::coord::ranged1d::NoDefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let (a, b) = (self.lo.ln(), self.hi.ln());
        let t = (v.max(f64::MIN_POSITIVE).ln() - a) / (b - a);
        limit.0 + (f64::from(limit.1 - limit.0) * t + 1e-3).floor() as i32
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let major = log_ticks(self.lo, self.hi);
        let decades = major
            .iter()
            .all(|v| (v.log10() - v.log10().round()).abs() < 1e-9);
        if hint.weight().allow_light_points() && decades {
            let mut all = major;
            all.extend(log_minor(self.lo, self.hi));
            all.sort_by(f64::total_cmp);
            all
        } else {
            major
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl plotters::coord::ranged1d::ValueFormatter<f64> for LogAxis {
    /// Used only where no label formatter is set (a chart drawn without text).
    fn format(v: &f64) -> String {
        format!("{v}")
    }
}

/// Whether a log axis over `lo..hi` labels its ticks as powers of ten (`10⁻⁵ … 10⁰`): when
/// they are decades and some lie outside [1e-3, 1e5), where plain labels would mix `0.01` with
/// `1e-5`.
fn pow10_labels(axis: &Axis, (lo, hi): (f64, f64)) -> bool {
    let ticks = log_ticks(lo, hi);
    axis.log
        && ticks
            .iter()
            .all(|v| (v.log10() - v.log10().round()).abs() < 1e-9)
        && ticks.iter().any(|v| !(1e-3..1e5).contains(v))
}

/// `10` with the exponent `k` in superscript digits: `10⁻⁵`.
fn pow10_label(k: i32) -> String {
    const SUP: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let digits: String = k
        .unsigned_abs()
        .to_string()
        .bytes()
        .map(|b| SUP[(b - b'0') as usize])
        .collect();
    format!("10{}{digits}", if k < 0 { "⁻" } else { "" })
}

fn tick_label(axis: &Axis, v: f64, pow10: bool) -> String {
    if pow10 && v > 0.0 {
        return pow10_label(v.log10().round() as i32);
    }
    if axis.integer {
        format!("{}", v.round() as i64)
    } else {
        let a = v.abs();
        if a == 0.0 {
            "0".into()
        } else if !(1e-3..1e5).contains(&a) {
            // 1e-5, 2e-5, 2.5e-5: the mantissa without trailing zeros.
            let s = format!("{v:.3e}");
            let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
            let m = if m.contains('.') {
                m.trim_end_matches('0').trim_end_matches('.')
            } else {
                m
            };
            format!("{m}e{e}")
        } else {
            // Enough decimals for the tick spacing, no trailing zeros.
            let s = format!("{v:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            s.to_string()
        }
    }
}

/// The axis range: the fixed one, else the data's, with a 5 % margin on a value axis (none on
/// an integer axis, which ends where the data end).
fn range_of(axis: &Axis, values: impl Iterator<Item = f64>) -> (f64, f64) {
    if let Some(r) = axis.range {
        return r;
    }
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite() && (!axis.log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return if axis.log { (0.1, 1.0) } else { (0.0, 1.0) };
    }
    if axis.log {
        if hi <= lo {
            hi = lo * 10.0;
        }
        return (lo / 1.5, hi * 1.5);
    }
    if hi <= lo {
        let d = if axis.integer {
            1.0
        } else {
            lo.abs().max(1e-9) * 0.1
        };
        return (lo - d, hi + d);
    }
    if !axis.integer {
        let pad = 0.05 * (hi - lo);
        (lo, hi) = (lo - pad, hi + pad);
    }
    (lo, hi)
}

fn visible(c: &Chart, (x, y): (f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && (!c.x.log || x > 0.0) && (!c.y.log || y > 0.0)
}

/// A [`Mark::LinePoints`] series with more points than this is drawn as a line alone: 200
/// per-epoch evaluations of a GCN run would otherwise merge into a thick beaded band.
const MAX_MARKERS: usize = 60;

/// Whether the points of `s` get markers (in the chart and in the legend).
fn shows_markers(c: &Chart, s: &Series) -> bool {
    match s.mark {
        Mark::Line => false,
        Mark::Points => true,
        Mark::LinePoints => s.points.iter().filter(|&&p| visible(c, p)).count() <= MAX_MARKERS,
    }
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &Chart,
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let lw = if text { legend_width(c) } else { 0 };
    let (w, _) = area.dim_in_pixel();
    let (plot, legend) = area.split_horizontally(w.saturating_sub(lw) as i32);
    // The value range covers the error bars as well as the points.
    let pts = || {
        c.series.iter().flat_map(|s| {
            let bars = s
                .spread
                .iter()
                .zip(&s.points)
                .flat_map(|(&(lo, hi), &(x, _))| [(x, lo), (x, hi)]);
            s.points.iter().copied().chain(bars)
        })
    };
    let xr = range_of(&c.x, pts().filter(|&p| visible(c, p)).map(|p| p.0));
    let yr = range_of(&c.y, pts().filter(|&p| visible(c, p)).map(|p| p.1));
    let mut b = ChartBuilder::on(&plot);
    b.margin(12).margin_right(18);
    if text {
        b.caption(&c.title, ("sans-serif", 18))
            .x_label_area_size(48)
            .y_label_area_size(72);
    }
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            let mut mesh = chart.configure_mesh();
            if text {
                let (xp, yp) = (pow10_labels(&c.x, xr), pow10_labels(&c.y, yr));
                let xf = |v: &f64| tick_label(&c.x, *v, xp);
                let yf = |v: &f64| tick_label(&c.y, *v, yp);
                mesh.x_desc(c.x.label.as_str())
                    .y_desc(c.y.label.as_str())
                    .x_labels(tick_count(&c.x, xr))
                    .y_labels(tick_count(&c.y, yr))
                    .x_label_formatter(&xf)
                    .y_label_formatter(&yf)
                    .label_style(("sans-serif", 13))
                    .axis_desc_style(("sans-serif", 15))
                    .draw()
                    .map_err(e)?;
            } else {
                mesh.x_labels(0).y_labels(0).draw().map_err(e)?;
            }
            for (i, s) in c.series.iter().enumerate() {
                let col = COLORS[i % COLORS.len()];
                let data: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|&p| visible(c, p))
                    .collect();
                if s.mark != Mark::Points {
                    let width = if s.mark == Mark::Line { 1 } else { 2 };
                    chart
                        .draw_series(LineSeries::new(
                            data.iter().copied(),
                            col.stroke_width(width),
                        ))
                        .map_err(e)?;
                }
                if shows_markers(c, s) {
                    chart
                        .draw_series(data.iter().map(|&p| Circle::new(p, 3, col.filled())))
                        .map_err(e)?;
                }
                let bars = s
                    .points
                    .iter()
                    .zip(&s.spread)
                    .filter(|&(&(x, _), &(lo, hi))| {
                        hi > lo && visible(c, (x, lo)) && visible(c, (x, hi))
                    });
                for (&(x, _), &(lo, hi)) in bars {
                    // The bar in data coordinates, its caps 8 px wide in pixel offsets (so they
                    // are the same width on a log axis).
                    chart
                        .draw_series([PathElement::new(
                            vec![(x, lo), (x, hi)],
                            col.stroke_width(1),
                        )])
                        .map_err(e)?;
                    chart
                        .draw_series([lo, hi].map(|y| {
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(-4, 0), (4, 0)], col.stroke_width(1))
                        }))
                        .map_err(e)?;
                }
            }
        }};
    }
    let (xl, yl) = (
        LogAxis { lo: xr.0, hi: xr.1 },
        LogAxis { lo: yr.0, hi: yr.1 },
    );
    match (c.x.log, c.y.log) {
        (false, false) => body!(b.build_cartesian_2d(xr.0..xr.1, yr.0..yr.1).map_err(e)?),
        (false, true) => body!(b.build_cartesian_2d(xr.0..xr.1, yl).map_err(e)?),
        (true, false) => body!(b.build_cartesian_2d(xl, yr.0..yr.1).map_err(e)?),
        (true, true) => body!(b.build_cartesian_2d(xl, yl).map_err(e)?),
    }
    if text {
        // The legend: a column beside the data, one row per series, aligned with the top of
        // the plotting area (below the caption).
        for (i, s) in c.series.iter().enumerate() {
            let col = COLORS[i % COLORS.len()];
            let y = 52 + 22 * i as i32;
            if s.mark != Mark::Points {
                legend
                    .draw(&PathElement::new(
                        vec![(4, y), (28, y)],
                        col.stroke_width(if s.mark == Mark::Line { 1 } else { 2 }),
                    ))
                    .map_err(e)?;
            }
            if shows_markers(c, s) {
                legend
                    .draw(&Circle::new((16, y), 3, col.filled()))
                    .map_err(e)?;
            }
            legend
                .draw(&Text::new(
                    s.name.clone(),
                    (36, y - 7),
                    ("sans-serif", 14).into_font().color(&BLACK),
                ))
                .map_err(e)?;
        }
    }
    Ok(())
}

fn draw_all<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    charts: &[Chart],
    widths: &[u32],
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut rest = root.clone();
    for (c, &w) in charts.iter().zip(widths) {
        let (area, r) = rest.split_horizontally(w as i32);
        draw_chart(&area, c, text)?;
        rest = r;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws the charts side by side into `path` (`.svg` or `.png` by its extension), through a
/// temporary file renamed into place ([`crate::io::atomic_write`]).
pub fn write_charts(path: &Path, charts: &[Chart]) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "svg" && ext != "png" {
        return Err(invalid!(
            "plot file {} has extension {ext:?}; use .svg or .png",
            path.display()
        ));
    }
    let text = font().is_some();
    if ext == "png" && !text {
        return Err(no_font_error(path));
    }
    let widths: Vec<u32> = charts
        .iter()
        .map(|c| CHART_W + if text { legend_width(c) } else { 0 })
        .collect();
    let size = (widths.iter().sum::<u32>().max(1), CHART_H);
    let err = |e: String| NablaError::Other(format!("drawing {}: {e}", path.display()));
    let bytes = if ext == "svg" {
        let mut s = String::new();
        draw_all(
            SVGBackend::with_string(&mut s, size).into_drawing_area(),
            charts,
            &widths,
            text,
        )
        .map_err(err)?;
        s.into_bytes()
    } else {
        let mut buf = vec![0u8; (size.0 * size.1 * 3) as usize];
        draw_all(
            BitMapBackend::with_buffer(&mut buf, size).into_drawing_area(),
            charts,
            &widths,
            text,
        )
        .map_err(err)?;
        encode_png(&buf, size)?
    };
    crate::io::atomic_write(path, &bytes)
}

/// How the values of a [`Tiles`] figure map to colours.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TileScale {
    /// Each tile on its own scale `[−m, m]`, `m` its largest magnitude (principal components,
    /// whose sign and size are arbitrary).
    SymmetricPerTile,
    /// One scale `[lo, hi]` for every tile (e.g. cosine similarity in `[−1, 1]`).
    Fixed(f64, f64),
}

/// A grid of small images — filters, principal components, similarity maps — with a
/// diverging colour map (blue below the middle of the scale, white at it, red above) and a
/// colour bar; drawn by [`write_tiles`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tiles {
    pub title: String,
    /// `(rows, columns)` of values in each tile.
    pub tile: (usize, usize),
    /// One row-major `rows × columns` image per tile.
    pub data: Vec<Vec<f64>>,
    /// A caption under each tile (empty: none).
    pub captions: Vec<String>,
    /// Tiles per row of the figure.
    pub columns: usize,
    pub scale: TileScale,
    /// Pixels per value.
    pub zoom: usize,
    /// What the rows and the columns of tiles stand for (empty: unlabelled).
    pub rows_label: String,
    pub columns_label: String,
    /// What the colour means, beside the colour bar.
    pub colour_label: String,
}

/// The diverging colour of `t` in `[−1, 1]`: blue (−1) through white (0) to red (1).
fn diverging(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let (end, a) = if t < 0.0 {
        ([59.0, 76.0, 192.0], -t)
    } else {
        ([180.0, 4.0, 38.0], t)
    };
    let mix = |k: usize| (255.0 + a * (end[k] - 255.0)).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

fn draw_tiles<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    t: &Tiles,
    layout: &TileLayout,
    text: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (th, tw) = t.tile;
    let z = t.zoom as i32;
    let font = |sz: i32| ("sans-serif", sz).into_font().color(&BLACK);
    for (k, tile) in t.data.iter().enumerate() {
        let (x0, y0) = layout.origin(k);
        let m = match t.scale {
            TileScale::SymmetricPerTile => tile.iter().fold(0.0f64, |a, v| a.max(v.abs())),
            TileScale::Fixed(..) => 0.0,
        };
        for (i, &v) in tile.iter().enumerate().take(th * tw) {
            let u = match t.scale {
                TileScale::SymmetricPerTile if m > 0.0 => v / m,
                TileScale::SymmetricPerTile => 0.0,
                TileScale::Fixed(lo, hi) => 2.0 * (v - lo) / (hi - lo) - 1.0,
            };
            let (px, py) = (x0 + (i % tw) as i32 * z, y0 + (i / tw) as i32 * z);
            root.draw(&Rectangle::new(
                [(px, py), (px + z, py + z)],
                diverging(u).filled(),
            ))
            .map_err(e)?;
        }
        if text {
            if let Some(c) = t.captions.get(k).filter(|c| !c.is_empty()) {
                root.draw(&Text::new(
                    c.clone(),
                    (x0, y0 + th as i32 * z + 2),
                    font(11),
                ))
                .map_err(e)?;
            }
        }
    }
    // The colour bar: top = top of the scale.
    let (bx, by, bh) = layout.bar;
    for y in 0..bh {
        let u = 1.0 - 2.0 * y as f64 / (bh - 1).max(1) as f64;
        root.draw(&Rectangle::new(
            [(bx, by + y), (bx + 14, by + y + 1)],
            diverging(u).filled(),
        ))
        .map_err(e)?;
    }
    if text {
        root.draw(&Text::new(t.title.clone(), (12, 8), font(16)))
            .map_err(e)?;
        let (lo, mid, hi) = match t.scale {
            TileScale::SymmetricPerTile => {
                ("−max".to_string(), "0".to_string(), "+max".to_string())
            }
            TileScale::Fixed(lo, hi) => (
                format!("{lo}"),
                format!("{}", (lo + hi) / 2.0),
                format!("{hi}"),
            ),
        };
        for (frac, label) in [(0.0, hi), (0.5, mid), (1.0, lo)] {
            let y = by + (frac * (bh - 1) as f64) as i32;
            root.draw(&PathElement::new(vec![(bx + 14, y), (bx + 18, y)], BLACK))
                .map_err(e)?;
            root.draw(&Text::new(label, (bx + 21, y - 6), font(12)))
                .map_err(e)?;
        }
        root.draw(&Text::new(
            t.colour_label.clone(),
            (bx, by + bh + 8),
            font(12),
        ))
        .map_err(e)?;
        if !t.columns_label.is_empty() {
            let (x0, y0) = layout.origin(0);
            root.draw(&Text::new(
                format!("{} →", t.columns_label),
                (x0, y0 - 18),
                font(13),
            ))
            .map_err(e)?;
        }
        if !t.rows_label.is_empty() {
            let (x0, y0) = layout.origin(0);
            let style = font(13).transform(FontTransform::Rotate270);
            root.draw(&Text::new(
                format!("← {}", t.rows_label),
                (x0 - 20, y0 + layout.grid_h),
                style,
            ))
            .map_err(e)?;
        }
    }
    root.present().map_err(e)
}

/// Pixel positions of a [`Tiles`] figure.
struct TileLayout {
    left: i32,
    top: i32,
    /// Pitch from one tile to the next, across and down.
    step: (i32, i32),
    columns: usize,
    /// Height of the tile grid in pixels.
    grid_h: i32,
    /// Colour bar: x, y, height.
    bar: (i32, i32, i32),
    size: (u32, u32),
}

impl TileLayout {
    fn new(t: &Tiles, text: bool) -> TileLayout {
        let (th, tw) = t.tile;
        let z = t.zoom as i32;
        let n = t.data.len().max(1);
        let columns = t.columns.clamp(1, n);
        let rows = n.div_ceil(columns) as i32;
        // Gaps between tiles: a quarter of a tile, 2 to 8 px; captions need a line.
        let gap = ((th.min(tw) as i32 * z) / 4).clamp(2, 8);
        let caption = if text && t.captions.iter().any(|c| !c.is_empty()) {
            16
        } else {
            0
        };
        let step = (
            tw as i32 * z + gap.max(if caption > 0 { 10 } else { 0 }),
            th as i32 * z + gap + caption,
        );
        let left = 12
            + if text && !t.rows_label.is_empty() {
                24
            } else {
                0
            };
        let top = if text { 36 } else { 12 }
            + if text && !t.columns_label.is_empty() {
                22
            } else {
                0
            };
        let grid_w = columns as i32 * step.0 - gap;
        let grid_h = rows * step.1 - gap;
        let bar_h = grid_h.clamp(60, 240);
        let bar = (left + grid_w + 16, top, bar_h);
        let right = bar.0 + if text { 14 + 60 } else { 14 + 12 };
        // Room for the colour label under the bar and for the title across the top.
        let label_w = if text {
            7 * t.colour_label.chars().count() as i32
        } else {
            0
        };
        let title_w = if text {
            9 * t.title.chars().count() as i32 + 24
        } else {
            0
        };
        let w = (right.max(bar.0 + label_w + 12)).max(title_w);
        let h = (top + grid_h).max(top + bar_h + if text { 28 } else { 0 }) + 12;
        TileLayout {
            left,
            top,
            step,
            columns,
            grid_h,
            bar,
            size: (w as u32, h as u32),
        }
    }
    fn origin(&self, k: usize) -> (i32, i32) {
        (
            self.left + (k % self.columns) as i32 * self.step.0,
            self.top + (k / self.columns) as i32 * self.step.1,
        )
    }
}

/// Draws a [`Tiles`] figure into `path` (`.svg` or `.png` by its extension, written through
/// [`crate::io::atomic_write`]).
pub fn write_tiles(path: &Path, t: &Tiles) -> Result<()> {
    let (th, tw) = t.tile;
    if th == 0 || tw == 0 || t.zoom == 0 || t.data.is_empty() {
        return Err(invalid!(
            "{}: tiles need a positive size and zoom and at least one tile",
            path.display()
        ));
    }
    if let Some(bad) = t.data.iter().position(|d| d.len() != th * tw) {
        return Err(invalid!(
            "{}: tile {bad} has {} values, not {th}×{tw}",
            path.display(),
            t.data[bad].len()
        ));
    }
    if let TileScale::Fixed(lo, hi) = t.scale {
        if !(lo < hi && lo.is_finite() && hi.is_finite()) {
            return Err(invalid!(
                "{}: colour scale [{lo}, {hi}] is empty",
                path.display()
            ));
        }
    }
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let text = font().is_some();
    let layout = TileLayout::new(t, text);
    let err = |e: String| NablaError::Other(format!("drawing {}: {e}", path.display()));
    let bytes = match ext.as_str() {
        "svg" => {
            let mut s = String::new();
            draw_tiles(
                SVGBackend::with_string(&mut s, layout.size).into_drawing_area(),
                t,
                &layout,
                text,
            )
            .map_err(err)?;
            s.into_bytes()
        }
        "png" => {
            if !text {
                return Err(no_font_error(path));
            }
            let (w, h) = layout.size;
            let mut buf = vec![0u8; (w * h * 3) as usize];
            draw_tiles(
                BitMapBackend::with_buffer(&mut buf, layout.size).into_drawing_area(),
                t,
                &layout,
                text,
            )
            .map_err(err)?;
            encode_png(&buf, layout.size)?
        }
        _ => {
            return Err(invalid!(
                "plot file {} has extension {ext:?}; use .svg or .png",
                path.display()
            ))
        }
    };
    crate::io::atomic_write(path, &bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `(x, y, text)` of every `<text>` element of an SVG, in order.
    pub(crate) fn svg_text_items(svg: &str) -> Vec<(f64, f64, String)> {
        let attr = |tag: &str, name: &str| -> f64 {
            let k = format!(" {name}=\"");
            tag.find(&k)
                .and_then(|i| {
                    let v = &tag[i + k.len()..];
                    v[..v.find('"')?].parse().ok()
                })
                .unwrap_or(f64::NAN)
        };
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let end = t.find('>')?;
                let body = &t[end + 1..];
                let text = body[..body.find("</text>")?].trim().to_string();
                Some((attr(&t[..end], "x"), attr(&t[..end], "y"), text))
            })
            .collect()
    }

    /// The text of every `<text>` element of an SVG, in order.
    pub(crate) fn svg_texts(svg: &str) -> Vec<String> {
        svg_text_items(svg).into_iter().map(|t| t.2).collect()
    }

    /// The numeric labels of the x axis: the lowest row of numeric texts.
    pub(crate) fn svg_x_ticks(svg: &str) -> Vec<String> {
        let items = svg_text_items(svg);
        let numeric: Vec<&(f64, f64, String)> = items
            .iter()
            .filter(|t| t.2.parse::<f64>().is_ok())
            .collect();
        let low = numeric.iter().map(|t| t.1).fold(f64::MIN, f64::max);
        numeric
            .iter()
            .filter(|t| t.1 == low)
            .map(|t| t.2.clone())
            .collect()
    }

    /// Whether a TrueType font is there for the text checks; if not, one `SKIPPED` line (once
    /// per test binary) goes straight to stderr, past libtest's capture (which takes only
    /// `print!`/`eprint!`), so a plain `cargo test` shows what went unchecked.
    pub(crate) fn font_or_skip() -> bool {
        use std::io::Write;
        static SAID: std::sync::Once = std::sync::Once::new();
        if font().is_some() {
            return true;
        }
        SAID.call_once(|| {
            let _ = std::io::stderr().write_all(
                b"SKIPPED nabla lib tests: no TrueType font under /usr/share/fonts (NABLA_FONT=FILE \
                  names one), so the text of the plots (titles, labels, ticks, legends) went \
                  unchecked\n",
            );
        });
        false
    }

    fn chart() -> Chart {
        Chart {
            title: "influence by hop".into(),
            x: Axis::new("hop distance (edges)").integer(),
            y: Axis::new("mean influence (relative)").log(),
            series: vec![
                Series::new(
                    "ring",
                    (0..=4).map(|h| (h as f64, 0.5f64.powi(h))).collect(),
                    Mark::LinePoints,
                ),
                Series::new("chain", vec![(0.0, 1.0), (3.0, 0.01)], Mark::Line),
            ],
        }
    }

    #[test]
    fn svg_has_title_axis_labels_integer_ticks_and_legend() {
        if !font_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        write_charts(&p, &[chart()]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        let texts = svg_texts(&svg);
        for want in [
            "influence by hop",
            "hop distance (edges)",
            "mean influence (relative)",
            "ring",
            "chain",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
        }
        // The hop axis ends where the data end: ticks 0..=4 exactly, all whole.
        assert_eq!(svg_x_ticks(&svg), ["0", "1", "2", "3", "4"]);
        // The legend is beside the data: right of the last x tick.
        let items = svg_text_items(&svg);
        let x_of = |s: &str| items.iter().find(|t| t.2 == s).unwrap().0;
        assert!(x_of("ring") > x_of("4"), "{items:?}");

        // A layer axis centred on whole numbers (0.5 .. 12.5): whole ticks only.
        let mut lin = chart();
        lin.y = Axis::new("value (units)");
        lin.x = Axis::new("layer").integer().range(0.5, 12.5);
        write_charts(&p, &[lin]).unwrap();
        let ticks = svg_x_ticks(&std::fs::read_to_string(&p).unwrap());
        let ticks: Vec<i64> = ticks.iter().map(|t| t.parse().unwrap()).collect();
        assert!(
            ticks.len() >= 4 && ticks.iter().all(|&t| (1..=12).contains(&t)),
            "{ticks:?}"
        );
    }

    #[test]
    fn integer_ticks_for_every_range() {
        // The key-point search must never choose a step below 1.
        for (lo, hi) in [
            (0.0, 1.0),
            (0.0, 2.0),
            (0.0, 4.0),
            (0.5, 3.5),
            (1.0, 31.0),
            (0.0, 600.0),
        ] {
            let axis = Axis::new("step").integer();
            let n = tick_count(&axis, (lo, hi));
            let keys = plotters::coord::types::RangedCoordf64::from(lo..hi).key_points(n);
            assert!(!keys.is_empty(), "{lo}..{hi}");
            for k in keys {
                assert_eq!(k, k.round(), "{lo}..{hi}: tick {k}");
            }
        }
    }

    #[test]
    fn every_log_axis_has_at_least_three_labelled_ticks() {
        let cases: [((f64, f64), &[f64]); 5] = [
            ((3e-7, 2.0), &[1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
            (
                (9e-13, 1.1e3),
                &[1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2],
            ),
            ((0.15, 7.0), &[0.2, 0.5, 1.0, 2.0, 5.0]),
            ((0.3, 0.6), &[0.3, 0.4, 0.5, 0.6]),
            (
                (2.1e-5, 3.3e-5),
                &[2.2e-5, 2.4e-5, 2.6e-5, 2.8e-5, 3.0e-5, 3.2e-5],
            ),
        ];
        for ((lo, hi), want) in cases {
            let got = log_ticks(lo, hi);
            assert_eq!(got.len(), want.len(), "{lo}..{hi}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!((g / w - 1.0).abs() < 1e-9, "{lo}..{hi}: {got:?}");
            }
        }
        let y = Axis::new("v").log();
        assert_eq!(tick_label(&y, 2.5e-5, false), "2.5e-5");
        assert_eq!(tick_label(&y, 1e-6, false), "1e-6");
        assert_eq!(tick_label(&y, 0.2, false), "0.2");
        // Decades reaching below 1e-3 are all written as powers of ten, not "0.01" beside "1e-5".
        assert!(pow10_labels(&y, (3e-7, 2.0)));
        assert!(!pow10_labels(&y, (0.15, 7.0)));
        assert!(!pow10_labels(&y, (0.05, 200.0)));
        assert_eq!(tick_label(&y, 1e-5, true), "10⁻⁵");
        assert_eq!(tick_label(&y, 1.0, true), "10⁰");
        assert_eq!(tick_label(&y, 1e12, true), "10¹²");

        // Drawn: the y axis of a chart whose values span under a decade has >= 3 labels.
        if !font_or_skip() {
            return;
        }
        let c = Chart {
            title: "t".into(),
            x: Axis::new("step").integer(),
            y: Axis::new("norm").log(),
            series: vec![Series::new(
                "a",
                vec![(0.0, 0.31), (1.0, 0.45), (2.0, 0.52)],
                Mark::Line,
            )],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.svg");
        write_charts(&p, &[c]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        let x_ticks = svg_x_ticks(&svg);
        let y_ticks: Vec<String> = svg_text_items(&svg)
            .into_iter()
            .filter(|t| t.2.parse::<f64>().is_ok() && !x_ticks.contains(&t.2))
            .map(|t| t.2)
            .collect();
        assert!(y_ticks.len() >= 3, "{y_ticks:?}");
    }

    #[test]
    fn svg_without_text_png_and_bad_extension() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("n.svg");
        let mut s = String::new();
        draw_all(
            SVGBackend::with_string(&mut s, (600, 300)).into_drawing_area(),
            &[chart()],
            &[600],
            false,
        )
        .unwrap();
        assert!(s.contains("polyline") || s.contains("<path"), "{s}");
        std::fs::write(&n, s).unwrap();
        if font_or_skip() {
            let png = dir.path().join("c.png");
            write_charts(&png, &[chart()]).unwrap();
            assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
        }
        let e = write_charts(&dir.path().join("c.jpg"), &[chart()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(".svg"), "{e}");
    }
}
