//! The held-out test evaluation at the end of a finished run: once, on the selected weights.
//!
//! Selection (the `best/` checkpoint) and early stopping see validation metrics only; the test
//! split is touched exactly once, after training, through [`TrainModel::test`] on the weights
//! of `best/` (or the final weights when nothing is monitored). The result is the last line of
//! `metrics.jsonl`:
//!
//! ```json
//! {"test":true,"step":600,"selected_step":540,"selected_by":"val_acc","weights":"best",
//!  "test_acc":0.9893,"test_loss":0.61}
//! ```
//! [`super::read_metrics_jsonl`] skips it (it is not an evaluation during training);
//! [`read_test_record`] reads it.

use super::checkpoint::{load_tensors, BestRecord, MODEL_FILE};
use super::{Metrics, TrainModel};
use crate::error::{NablaError, Result};
use crate::io::atomic_write;
use crate::tensor::{Element, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The final test evaluation of a run (the `"test": true` line of `metrics.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    /// Always `true`: marks the line.
    pub test: bool,
    /// Optimizer steps of the finished run.
    pub step: u64,
    /// Step of the evaluated weights.
    pub selected_step: u64,
    /// The validation metric that selected them (`None`: nothing monitored, final weights).
    pub selected_by: Option<String>,
    /// `best` (the `best/` folder) or `last` (the final weights).
    pub weights: String,
    /// `test_acc`, `test_loss`, … as the model names them.
    #[serde(flatten)]
    pub metrics: Metrics,
}

impl TestRecord {
    /// `test_acc=0.9893 test_loss=0.61 (weights of best/ at step 540, selected by val_acc)`.
    pub fn describe(&self) -> String {
        let m: Vec<String> = self
            .metrics
            .iter()
            .map(|(k, v)| format!("{k}={}", super::progress::fmt_num(*v)))
            .collect();
        let sel = match &self.selected_by {
            Some(s) => format!(
                "weights of best/ at step {}, selected by {s} on the validation split",
                self.selected_step
            ),
            None => format!(
                "final weights at step {} (no monitored metric)",
                self.selected_step
            ),
        };
        format!("{} ({sel})", m.join(" "))
    }
}

/// Copies the tensors of a weights file into the model's parameters and state tensors,
/// checking names and shapes; `path` names the file in errors.
pub(crate) fn load_weights<T: Element, M: TrainModel<T>>(
    model: &mut M,
    tensors: BTreeMap<String, Tensor<T>>,
    path: &Path,
) -> Result<()> {
    for p in model.params_mut().iter_mut() {
        p.value = crate::io::take_shaped(&tensors, &p.name, p.value.shape(), path)?.clone();
    }
    let buffers: BTreeMap<String, Tensor<T>> = tensors
        .into_iter()
        .filter(|(k, _)| model.params().find(k).is_none())
        .collect();
    model.load_state_tensors(&buffers)
}

/// Loads the selected weights (`best/` when a metric is monitored), runs [`TrainModel::test`]
/// and appends its record to `metrics.jsonl`; `None` when the model has no test split.
pub(crate) fn evaluate_selected<T: Element, M: TrainModel<T>>(
    model: &mut M,
    run_dir: &Path,
    best: Option<&BestRecord>,
    step: u64,
) -> Result<Option<TestRecord>> {
    if let Some(b) = best {
        let dir = run_dir.join("best");
        let tensors = load_tensors::<T>(&dir, MODEL_FILE, b.step)?;
        load_weights(model, tensors, &dir.join(MODEL_FILE))?;
    }
    let Some(metrics) = model.test()? else {
        return Ok(None);
    };
    if let Some((k, v)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(NablaError::NonFinite(format!("test metric {k} = {v}")));
    }
    let rec = TestRecord {
        test: true,
        step,
        selected_step: best.map_or(step, |b| b.step),
        selected_by: best.map(|b| b.metric.clone()),
        weights: if best.is_some() { "best" } else { "last" }.into(),
        metrics,
    };
    let path = run_dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).map_err(|e| NablaError::io(&path, e))?;
    let line = serde_json::to_string(&rec)
        .map_err(|e| NablaError::Other(format!("serializing the test record: {e}")))?;
    text.push_str(&line);
    text.push('\n');
    atomic_write(&path, text.as_bytes())?;
    Ok(Some(rec))
}

/// Whether a `metrics.jsonl` line is the final test record.
pub(crate) fn is_test_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|v| v.get("test") == Some(&serde_json::Value::Bool(true)))
}

/// The final test record of a run's `metrics.jsonl`, if the run wrote one.
pub fn read_test_record(path: impl AsRef<Path>) -> Result<Option<TestRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| NablaError::io(path, e))?;
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        if is_test_line(line) {
            let r: TestRecord = serde_json::from_str(line).map_err(|e| {
                NablaError::format(path, format!("line {}: not a test record: {e}", i + 1))
            })?;
            if found.is_some() {
                return Err(NablaError::format(
                    path,
                    format!("line {}: a second test record", i + 1),
                ));
            }
            found = Some(r);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::ParamStore;
    use crate::init::Rng;
    use crate::optim::{Sgd, SgdConfig};
    use crate::train::{
        read_metrics_jsonl, Mode, Outcome, PlotFormat, ProgressMode, StepOutput, TrainConfig,
        Trainer,
    };

    /// One weight `w` that SGD (lr 1, gradient −1) moves to `w = step`; scripted validation
    /// accuracies; a "test accuracy" that reads `w`, so the test shows which weights it saw.
    struct Scripted {
        store: ParamStore<f64>,
        val: Vec<f64>,
        evals: usize,
        /// (evaluations done when `test` was called, w at that time).
        test_calls: Vec<(usize, f64)>,
    }

    impl TrainModel<f64> for Scripted {
        fn params(&self) -> &ParamStore<f64> {
            &self.store
        }
        fn params_mut(&mut self) -> &mut ParamStore<f64> {
            &mut self.store
        }
        fn train_step(&mut self, _s: u64, _rng: &mut Rng) -> Result<StepOutput> {
            for p in self.store.iter_mut() {
                p.grad = Tensor::new(&[1], vec![-1.0])?;
            }
            Ok(StepOutput::new(1.0, 1))
        }
        fn evaluate(&mut self) -> Result<Metrics> {
            let mut m = Metrics::new();
            m.insert("val_acc".into(), self.val[self.evals]);
            self.evals += 1;
            Ok(m)
        }
        fn test(&mut self) -> Result<Option<Metrics>> {
            let w = self.store.by_name("w")?.value.data()[0];
            self.test_calls.push((self.evals, w));
            let mut m = Metrics::new();
            m.insert("test_acc".into(), w / 10.0);
            Ok(Some(m))
        }
        fn config_json(&self) -> serde_json::Value {
            serde_json::json!({"model": "scripted"})
        }
    }

    fn model() -> Scripted {
        let mut store = ParamStore::new();
        store.add("w", Tensor::zeros(&[1])).unwrap();
        Scripted {
            store,
            val: vec![0.5, 0.9, 0.7, 0.6],
            evals: 0,
            test_calls: Vec::new(),
        }
    }

    fn cfg(dir: &Path, steps: u64, monitor: bool) -> TrainConfig {
        TrainConfig {
            out_dir: dir.to_path_buf(),
            max_steps: Some(steps),
            eval_every: 1,
            monitor: monitor.then(|| ("val_acc".to_string(), Mode::Max)),
            progress: ProgressMode::Quiet,
            plot: PlotFormat::None,
            handle_signals: false,
            ..TrainConfig::default()
        }
    }

    fn sgd() -> Sgd<f64> {
        Sgd::new(SgdConfig::plain(1.0)).unwrap()
    }

    /// The test runs once, after every evaluation, on the weights of best/ (step 2: w = 2, not
    /// the final w = 4); it is the last line of metrics.jsonl, which the metrics reader skips.
    #[test]
    fn test_once_at_the_end_on_the_best_weights() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model();
        let s = Trainer::new(cfg(dir.path(), 4, true), sgd())
            .fit(&mut m)
            .unwrap();
        assert_eq!(s.outcome, Outcome::Completed);
        assert_eq!(m.test_calls, vec![(4, 2.0)]);
        let t = s.test.clone().unwrap();
        assert_eq!(
            (t.step, t.selected_step, t.weights.as_str()),
            (4, 2, "best")
        );
        assert_eq!(t.metrics["test_acc"], 0.2);
        assert!(
            s.describe().contains("test: test_acc=0.2"),
            "{}",
            s.describe()
        );
        let path = dir.path().join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().filter(|l| l.contains("test_acc")).count(), 1);
        assert!(text.lines().last().unwrap().starts_with("{\"test\":true"));
        assert_eq!(read_metrics_jsonl(&path).unwrap().len(), 4);
        assert_eq!(read_test_record(&path).unwrap(), Some(t));
        // Without a monitored metric: the final weights.
        let dir = tempfile::tempdir().unwrap();
        let mut m = model();
        let s = Trainer::new(cfg(dir.path(), 3, false), sgd())
            .fit(&mut m)
            .unwrap();
        assert_eq!(m.test_calls, vec![(3, 3.0)]);
        assert_eq!(s.test.unwrap().weights, "last");
        // Interrupted: no test at all (the resumed run reports it).
        let dir = tempfile::tempdir().unwrap();
        let mut m = model();
        let mut tr = Trainer::new(cfg(dir.path(), 3, true), sgd());
        tr.interrupt_handle()
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let s = tr.fit(&mut m).unwrap();
        assert_eq!(s.outcome, Outcome::Interrupted);
        assert!(s.test.is_none() && m.test_calls.is_empty());
        assert_eq!(
            read_test_record(dir.path().join("metrics.jsonl")).unwrap(),
            None
        );
    }
}
