//! Loss and metric curves of a run (`metrics.jsonl`), drawn by the one chart helper
//! [`crate::plot`].
//!
//! First chart: the training loss at its logged resolution (one point per `--log-every` steps,
//! [`MetricsRecord::logged_train_loss`]; the per-evaluation mean for files without it) and
//! every evaluated metric whose name contains `loss`, marked at each evaluation; every model
//! trained by [`crate::train::Trainer`] minimises a mean cross-entropy, so the axis is in nats.
//! Then one chart per unit of the other metrics: accuracies (`*_acc`) in percent, bits per
//! character (`*_bpc`), anything else as plain values. x axis: optimizer steps (epochs for
//! full-batch training, one step each) from 0 to the last evaluation.

use super::metrics::{read_metrics_jsonl, MetricsRecord, RESERVED};
use crate::error::{NablaError, Result};
use crate::plot::{write_charts, Axis, Chart, Mark, Series};
use std::path::Path;

/// What a metric measures, by its name: (chart title, y-axis label, scale applied to values).
fn unit_of(name: &str) -> (&'static str, &'static str, f64) {
    if name.contains("loss") {
        ("Loss", "cross-entropy (nats)", 1.0)
    } else if name.ends_with("_acc") || name.ends_with("accuracy") {
        ("Accuracy", "accuracy (%)", 100.0)
    } else if name.ends_with("_bpc") {
        (
            "Bits per character",
            "cross-entropy (bits per character)",
            1.0,
        )
    } else {
        ("Other metrics", "value", 1.0)
    }
}

/// The charts of a run: the loss chart first, then one per metric unit.
pub fn charts(records: &[MetricsRecord]) -> Vec<Chart> {
    let mut names: Vec<String> = Vec::new();
    for r in records {
        for k in r.metrics.keys() {
            if !names.contains(k) && !RESERVED.contains(&k.as_str()) {
                names.push(k.clone());
            }
        }
    }
    names.sort();
    let last_step = records.iter().map(|r| r.step).max().unwrap_or(1).max(1);
    // Full-batch training (gnn train): one step per epoch, and epochs are what the user counts.
    let full_batch = records.iter().all(|r| r.epoch == Some(r.step as f64));
    let x_label = if full_batch {
        "epoch (one full-batch optimizer step each)"
    } else {
        "optimizer step"
    };
    let x = Axis::new(x_label).integer().range(0.0, last_step as f64);
    let logged: Vec<(f64, f64)> = records
        .iter()
        .flat_map(|r| r.logged_train_loss.iter())
        .filter(|p| p.1.is_finite())
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let train = if logged.is_empty() {
        let pts = records.iter().map(|r| (r.step as f64, r.train_loss));
        Series::new("train_loss", pts.collect(), Mark::LinePoints)
    } else {
        Series::new("train_loss (logged)", logged, Mark::Line)
    };
    let (title, label, _) = unit_of("loss");
    let mut out = vec![Chart {
        title: title.into(),
        x: x.clone(),
        y: Axis::new(label),
        series: vec![train],
    }];
    for n in &names {
        let (title, label, scale) = unit_of(n);
        let pts: Vec<(f64, f64)> = records
            .iter()
            .filter_map(|r| {
                let v = r.get(n).filter(|v| v.is_finite())?;
                Some((r.step as f64, v * scale))
            })
            .collect();
        let series = Series::new(n.clone(), pts, Mark::LinePoints);
        match out.iter_mut().find(|c| c.title == title) {
            Some(c) => c.series.push(series),
            None => out.push(Chart {
                title: title.into(),
                x: x.clone(),
                y: Axis::new(label),
                series: vec![series],
            }),
        }
    }
    out
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

/// Writes the plot of `records` to `out`; the extension picks the format.
pub fn plot_metrics(records: &[MetricsRecord], out: impl AsRef<Path>) -> Result<()> {
    write_charts(out.as_ref(), &charts(records))
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
                    logged_train_loss: Vec::new(),
                    metrics: m,
                }
            })
            .collect()
    }

    #[test]
    fn charts_split_losses_from_metrics_by_unit() {
        let mut recs = records();
        recs[0].logged_train_loss = vec![(5, 1.4), (10, 1.2)];
        let c = charts(&recs);
        let titles: Vec<&str> = c.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["Loss", "Accuracy"]);
        let names: Vec<&str> = c[0].series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train_loss (logged)", "val_loss"]);
        // The logged resolution: 2 points from the first record's interval.
        assert_eq!(c[0].series[0].points, [(5.0, 1.4), (10.0, 1.2)]);
        assert_eq!(c[0].series[0].mark, Mark::Line);
        assert_eq!(c[0].y.label, "cross-entropy (nats)");
        assert_eq!((c[0].x.integer, c[0].x.range), (true, Some((0.0, 50.0))));
        // Accuracy in percent.
        assert_eq!(c[1].y.label, "accuracy (%)");
        assert_eq!(c[1].series[0].points.len(), 5);
        assert!((c[1].series[0].points[0].1 - 60.0).abs() < 1e-9);
        // Without logged points the per-evaluation means are drawn.
        let c = charts(&records());
        assert_eq!(c[0].series[0].name, "train_loss");
        assert_eq!(c[0].series[0].points.len(), 5);
        assert_eq!(c[0].x.label, "optimizer step");
        // Full-batch training (one step per epoch) counts epochs on the x axis.
        let mut full_batch = records();
        for r in &mut full_batch {
            r.epoch = Some(r.step as f64);
        }
        assert!(charts(&full_batch)[0].x.label.starts_with("epoch "));
    }

    #[test]
    fn svg_has_labels_and_integer_step_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("m.svg");
        plot_metrics(&records(), &svg).unwrap();
        let s = std::fs::read_to_string(&svg).unwrap();
        assert!(
            s.starts_with("<svg") && s.contains("polyline"),
            "{}",
            &s[..200.min(s.len())]
        );
        if crate::plot::tests::font_or_skip() {
            let texts = crate::plot::tests::svg_texts(&s);
            for want in [
                "optimizer step",
                "cross-entropy (nats)",
                "accuracy (%)",
                "val_acc",
            ] {
                assert!(texts.iter().any(|t| t == want), "{want:?} not in {texts:?}");
            }
            assert!(texts.iter().any(|t| t == "50"), "{texts:?}");
            assert!(!texts.iter().any(|t| t.ends_with(".0")), "{texts:?}");
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
