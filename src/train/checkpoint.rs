//! Checkpoints: `model.safetensors` (parameters + model buffers, PyTorch names),
//! `optimizer.safetensors` (optimizer state) and `state.json` (step, RNG, schedule base rate,
//! model and trainer config, the metrics so far, best value, early-stopping counter, the partial
//! evaluation interval). The three files are written into a fresh temporary folder which then
//! replaces the old one by rename, so a crash never leaves a mixed or half-written checkpoint.

use super::metrics::MetricsRecord;
use super::Metrics;
use crate::error::{NablaError, Result};
use crate::io::{atomic_write, save_safetensors};
use crate::tensor::{Element, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Value of `state.json`'s `format` field.
pub const CHECKPOINT_FORMAT: &str = "nabla-checkpoint-1";

/// The best value of the monitored metric so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    pub metric: String,
    pub value: f64,
    pub step: u64,
}

/// Sums over the steps since the last evaluation (so a checkpoint taken between evaluations
/// resumes with the same averages).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalState {
    pub loss_sum: f64,
    pub items: u64,
    pub steps: u64,
    pub grad_norm_sum: f64,
    pub metric_sums: Metrics,
    pub wall_s: f64,
    /// Item-weighted loss sum and items since the last log line (or evaluation).
    #[serde(default)]
    pub log_loss_sum: f64,
    #[serde(default)]
    pub log_items: u64,
    /// `(step, mean loss)` of each log line of this interval.
    #[serde(default)]
    pub logged: Vec<(u64, f64)>,
}

/// Contents of `checkpoint/state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: u64,
    pub epoch: Option<f64>,
    pub optimizer_step: u64,
    /// The optimizer's rate before scheduling; the schedule multiplies from it.
    pub base_lr: f64,
    pub lr: f64,
    /// The trainer RNG (xoshiro256++ state) to hand to the next `train_step`.
    pub rng: [u64; 4],
    pub wall_time_s: f64,
    pub items_total: u64,
    pub model_config: serde_json::Value,
    pub train_config: serde_json::Value,
    /// Every evaluation so far (`metrics.jsonl` is rewritten from this on resume).
    pub metrics: Vec<MetricsRecord>,
    pub best: Option<BestRecord>,
    pub evals_without_improvement: u64,
    pub interval: IntervalState,
}

pub(crate) const MODEL_FILE: &str = "model.safetensors";
pub(crate) const OPTIM_FILE: &str = "optimizer.safetensors";
pub(crate) const STATE_FILE: &str = "state.json";

fn step_meta(step: u64) -> Option<HashMap<String, String>> {
    Some(HashMap::from([
        ("format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
    ]))
}

/// Writes a checkpoint folder `run_dir/name` atomically (temporary folder + rename).
pub(crate) fn write_checkpoint<T: Element>(
    run_dir: &Path,
    name: &str,
    model_tensors: &[(String, &Tensor<T>)],
    optim_tensors: Option<&[(String, &Tensor<T>)]>,
    state: &CheckpointState,
) -> Result<PathBuf> {
    let final_dir = run_dir.join(name);
    let pid = std::process::id();
    let tmp = run_dir.join(format!(".{name}.tmp-{pid}"));
    let old = run_dir.join(format!(".{name}.old-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| NablaError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| NablaError::io(&tmp, e))?;
    let res = (|| {
        save_safetensors(tmp.join(MODEL_FILE), model_tensors, step_meta(state.step))?;
        if let Some(o) = optim_tensors {
            save_safetensors(tmp.join(OPTIM_FILE), o, step_meta(state.step))?;
        }
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| NablaError::Other(format!("serializing checkpoint state: {e}")))?;
        atomic_write(tmp.join(STATE_FILE), &json)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(|e| NablaError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| NablaError::io(&final_dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| NablaError::io(&old, e))?;
    }
    Ok(final_dir)
}

/// Reads `state.json` of a checkpoint folder (`RUN/checkpoint` or `RUN/best`), or of the
/// `checkpoint/` inside a run folder.
pub fn load_checkpoint_state(dir: impl AsRef<Path>) -> Result<CheckpointState> {
    let dir = checkpoint_dir(dir.as_ref())?;
    let p = dir.join(STATE_FILE);
    let bytes = std::fs::read(&p).map_err(|e| NablaError::io(&p, e))?;
    let st: CheckpointState = serde_json::from_slice(&bytes)
        .map_err(|e| NablaError::format(&p, format!("not a nabla checkpoint state: {e}")))?;
    if st.format != CHECKPOINT_FORMAT {
        return Err(NablaError::format(
            &p,
            format!("format {:?}, expected {CHECKPOINT_FORMAT:?}", st.format),
        ));
    }
    Ok(st)
}

/// `dir` itself if it holds `state.json`, else `dir/checkpoint`; a clear error otherwise. A
/// crash between the two renames of [`write_checkpoint`] leaves `.checkpoint.old-PID`: used then.
pub(crate) fn checkpoint_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let c = dir.join("checkpoint");
    if c.join(STATE_FILE).is_file() {
        return Ok(c);
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".checkpoint.old-") && e.path().join(STATE_FILE).is_file() {
                return Ok(e.path());
            }
        }
    }
    Err(NablaError::InvalidArgument(format!(
        "no checkpoint in {} (expected {}/checkpoint/{STATE_FILE})",
        dir.display(),
        dir.display()
    )))
}

/// Loads a checkpoint's tensor file and checks it belongs to step `step`.
pub(crate) fn load_tensors<T: Element>(
    dir: &Path,
    file: &str,
    step: u64,
) -> Result<BTreeMap<String, Tensor<T>>> {
    let p = dir.join(file);
    let bytes = std::fs::read(&p).map_err(|e| NablaError::io(&p, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| NablaError::format(&p, format!("not a valid safetensors file: {e}")))?;
    let file_step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step").cloned());
    if file_step.as_deref() != Some(step.to_string().as_str()) {
        return Err(NablaError::format(
            &p,
            format!(
                "written at step {file_step:?}, but state.json is at step {step}: mixed checkpoint"
            ),
        ));
    }
    crate::io::parse_safetensors(&bytes, &p)
}
