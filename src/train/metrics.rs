//! The metrics log: one JSON object per evaluation, one per line (`metrics.jsonl`).

use crate::error::{NablaError, Result};
use crate::train::Metrics;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of `metrics.jsonl`.
///
/// ```json
/// {"step":200,"epoch":2.0,"wall_time_s":3.1,"train_loss":0.41,"lr":0.001,"grad_norm":0.83,
///  "items_per_s":5120.0,"val_acc":0.93,"val_loss":0.25}
/// ```
/// `train_loss` and `grad_norm` (before clipping) are item-weighted / step means over the steps
/// since the previous evaluation; `lr` is the rate of the last step; the model's evaluation
/// metrics and its averaged per-step metrics follow under their own names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer steps completed.
    pub step: u64,
    /// Epochs completed, fractional (absent when the model has no epoch length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<f64>,
    /// Seconds of training so far (summed over resumed sessions).
    pub wall_time_s: f64,
    pub train_loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub items_per_s: f64,
    /// The training loss at its logged resolution: `(step, mean loss)` at every `--log-every`
    /// step of this interval (the mean over the steps since the previous log line or
    /// evaluation), so a plot can show more than one point per evaluation. Absent when the
    /// interval was a single log interval ending at this evaluation (then it is `train_loss`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logged_train_loss: Vec<(u64, f64)>,
    #[serde(flatten)]
    pub metrics: Metrics,
}

/// Field names a model's metric may not use.
pub(crate) const RESERVED: [&str; 8] = [
    "step",
    "epoch",
    "wall_time_s",
    "train_loss",
    "lr",
    "grad_norm",
    "items_per_s",
    "logged_train_loss",
];

impl MetricsRecord {
    /// The value of a field or metric by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "step" => Some(self.step as f64),
            "epoch" => self.epoch,
            "wall_time_s" => Some(self.wall_time_s),
            "train_loss" => Some(self.train_loss),
            "lr" => Some(self.lr),
            "grad_norm" => Some(self.grad_norm),
            "items_per_s" => Some(self.items_per_s),
            other => self.metrics.get(other).copied(),
        }
    }
    pub fn to_line(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| {
            NablaError::Other(format!("serializing metrics at step {}: {e}", self.step))
        })
    }
}

/// Serializes records as JSONL.
pub(crate) fn to_jsonl(records: &[MetricsRecord]) -> Result<String> {
    let mut s = String::new();
    for r in records {
        s.push_str(&r.to_line()?);
        s.push('\n');
    }
    Ok(s)
}

/// Reads a `metrics.jsonl` file; a malformed line is an error naming the file and line.
pub fn read_metrics_jsonl(path: impl AsRef<Path>) -> Result<Vec<MetricsRecord>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    parse_metrics_jsonl(&bytes, path)
}

/// The records of a `metrics.jsonl` file's bytes (see [`read_metrics_jsonl`]); `path` names
/// the file in errors, which quote at most [`crate::io::QUOTE_LIMIT`] bytes of a line.
pub fn parse_metrics_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<MetricsRecord>> {
    let text = crate::data::utf8_text(bytes, path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // The final test record is not an evaluation during training: see `read_test_record`.
        if line.trim().is_empty() || super::final_test::is_test_line(line) {
            continue;
        }
        let r: MetricsRecord = serde_json::from_str(line).map_err(|e| {
            // serde_json's message quotes the offending value whole (a string of any length).
            NablaError::format(
                path,
                format!(
                    "line {}: not a metrics record: {}",
                    i + 1,
                    crate::io::excerpt(&e.to_string())
                ),
            )
        })?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_exact() {
        let mut m = Metrics::new();
        m.insert("val_acc".into(), 0.1 + 0.2);
        let r = MetricsRecord {
            step: 3,
            epoch: Some(1.5),
            wall_time_s: 0.25,
            train_loss: 1.0 / 3.0,
            lr: 1e-3,
            grad_norm: 2.5,
            items_per_s: 100.0,
            logged_train_loss: vec![(2, 0.5), (3, 0.25)],
            metrics: m,
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
        std::fs::write(&p, to_jsonl(&[r.clone(), r.clone()]).unwrap()).unwrap();
        let back = read_metrics_jsonl(&p).unwrap();
        assert_eq!(back, vec![r.clone(), r]);
        std::fs::write(&p, "{\"step\":1}\n").unwrap();
        let e = read_metrics_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("m.jsonl"), "{e}");
    }

    /// serde_json quotes a wrong value whole; the error quotes at most 200 bytes of it.
    #[test]
    fn errors_about_long_lines_are_short() {
        let line = format!("{{\"step\":\"{}\"}}\n", "7".repeat(1 << 20));
        let e = parse_metrics_jsonl(line.as_bytes(), Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.jsonl: line 1: not a metrics record: invalid type: string \"777")
                && e.len() < 400,
            "{} bytes: {}",
            e.len(),
            &e[..300.min(e.len())]
        );
        let e = parse_metrics_jsonl(b"\n\xff\n", Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: not UTF-8 text"), "{e}");
    }
}
