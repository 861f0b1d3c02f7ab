//! Checkpoints: `model.safetensors` (parameters + model buffers, PyTorch names),
//! `optimizer.safetensors` (optimizer state) and `state.json` (step, RNG, schedule base rate,
//! model and trainer config, the metrics so far, best value, early-stopping counter, the partial
//! evaluation interval). The three files are written into a fresh temporary folder which then
//! replaces the old one by rename, so a crash never leaves a mixed or half-written checkpoint.
//! Every tensor carries its checksum ([`crate::io`]), verified on every load.
//!
//! **One writer per run folder.** A training run holds an exclusive advisory lock (`flock`) on
//! `RUN/.lock` from start to end ([`claim_run_dir`]); a second process training into the same
//! folder is refused with the PID of the first (written into the file), instead of the two
//! interleaving their checkpoints. Having the lock also proves that every temporary entry in
//! the folder belongs to a process that has died, so the run first recovers or removes them
//! ([`recover_run_dir`]): `.checkpoint.tmp-PID/` and `.checkpoint.old-PID/` (and those of
//! `best/`) compete with `checkpoint/` and the newest *complete* one becomes `checkpoint/`;
//! `.FILE.PID.tmp` files and write probes are removed; each action is said on stderr.

use super::metrics::MetricsRecord;
use super::Metrics;
use crate::errln;
use crate::error::{NablaError, Result};
use crate::invalid;
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
    read_state(&checkpoint_dir(dir.as_ref())?)
}

/// `dir` itself if it holds `state.json`, else `dir/checkpoint`; a clear error otherwise. A
/// crash between the two renames of [`write_checkpoint`] leaves `.checkpoint.old-PID`: the one
/// with the latest step is used then (the next training run in the folder recovers it for good,
/// see [`recover_run_dir`]).
pub(crate) fn checkpoint_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join(STATE_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    let c = dir.join("checkpoint");
    if c.join(STATE_FILE).is_file() {
        return Ok(c);
    }
    let newest = leftovers(dir, "checkpoint")
        .into_iter()
        .filter(|(_, kind, _)| *kind == Leftover::Old)
        .filter_map(|(p, _, _)| Some((read_state(&p).ok()?.step, p)))
        .max();
    if let Some((_, p)) = newest {
        return Ok(p);
    }
    Err(NablaError::InvalidArgument(format!(
        "no checkpoint in {} (expected {}/checkpoint/{STATE_FILE})",
        dir.display(),
        dir.display()
    )))
}

/// `state.json` of exactly this folder.
fn read_state(dir: &Path) -> Result<CheckpointState> {
    let p = dir.join(STATE_FILE);
    let bytes = std::fs::read(&p).map_err(|e| NablaError::io(&p, e))?;
    parse_state_bytes(&bytes, &p)
}

/// The checkpoint state in the bytes of a `state.json`; `path` names the file in errors, which
/// quote at most [`crate::io::QUOTE_LIMIT`] bytes of it.
pub fn parse_state_bytes(bytes: &[u8], path: &Path) -> Result<CheckpointState> {
    use crate::io::excerpt;
    let st: CheckpointState = serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's message quotes the offending value whole (a string of any length).
        NablaError::format(
            path,
            format!("not a nabla checkpoint state: {}", excerpt(&e.to_string())),
        )
    })?;
    if st.format != CHECKPOINT_FORMAT {
        return Err(NablaError::format(
            path,
            format!(
                "format {:?}, expected {CHECKPOINT_FORMAT:?}",
                excerpt(&st.format)
            ),
        ));
    }
    Ok(st)
}

/// The lock file of a run folder (see the [module docs](self)).
pub(crate) const LOCK_FILE: &str = ".lock";

/// The exclusive lock on a run folder; dropping it (the file's closing) releases it.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: std::fs::File,
}

/// Takes the run folder's writer lock ([`lock_run_dir`]) and then cleans what dead writers left
/// in it ([`recover_run_dir`]). The caller keeps the lock for the whole run.
pub(crate) fn claim_run_dir(dir: &Path) -> Result<RunLock> {
    let lock = lock_run_dir(dir)?;
    recover_run_dir(dir)?;
    Ok(lock)
}

/// Locks `dir/.lock` exclusively without waiting, or refuses with the holder's PID.
pub(crate) fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    use std::io::{Seek, Write};
    let p = dir.join(LOCK_FILE);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| NablaError::io(&p, e))?;
    // std's `File::try_lock` is flock(2) on Unix (LockFileEx on Windows): advisory, released by
    // the kernel when the process dies however it dies, so a killed run never leaves the
    // folder locked.
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&p)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map_or_else(
                    || "another process".to_string(),
                    |pid| format!("process {pid}"),
                );
            return Err(invalid!(
                "run folder {} is in use: {holder} is training into it (it holds the lock {}); \
                 wait for it to end or stop it, or choose another --out",
                dir.display(),
                p.display()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            // A file system without locks (some network mounts) should not forbid training.
            errln!(
                "warning: cannot lock {} ({e}); nothing stops a second process from training into {} at the same time",
                p.display(),
                dir.display()
            );
        }
    }
    // The holder's PID, for the message that refuses the next writer. Rewritten in place: the
    // lock belongs to this inode, so the file must never be replaced by a rename.
    let pid = format!("{}\n", std::process::id());
    f.set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| f.write_all(pid.as_bytes()))
        .map_err(|e| NablaError::io(&p, e))?;
    Ok(RunLock { _file: f })
}

/// What a writer's temporary entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Leftover {
    /// `.NAME.tmp-PID/`: a checkpoint being built (complete if the writer died just before
    /// the renames).
    Tmp,
    /// `.NAME.old-PID/`: the previous checkpoint, moved aside for the new one.
    Old,
}

/// The `.NAME.tmp-PID/` and `.NAME.old-PID/` folders in `dir`, sorted by name.
fn leftovers(dir: &Path, name: &str) -> Vec<(PathBuf, Leftover, u32)> {
    let (tmp, old) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let mut v: Vec<(PathBuf, Leftover, u32)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let (kind, pid) = match (n.strip_prefix(&tmp), n.strip_prefix(&old)) {
                (Some(pid), _) => (Leftover::Tmp, pid),
                (_, Some(pid)) => (Leftover::Old, pid),
                _ => return None,
            };
            Some((e.path(), kind, pid.parse().ok()?))
        })
        .collect();
    v.sort();
    v
}

/// The step of a checkpoint folder whose state and tensor files all load (checksums included)
/// and agree; `None` for an incomplete or corrupt one.
fn complete_step(dir: &Path, with_optimizer: bool) -> Option<u64> {
    let st = read_state(dir).ok()?;
    load_tensors::<f32>(dir, MODEL_FILE, st.step).ok()?;
    if with_optimizer {
        load_tensors::<f32>(dir, OPTIM_FILE, st.step).ok()?;
    }
    Some(st.step)
}

/// Recovers or removes the temporary entries of writers that died in `dir`, which the caller
/// has locked ([`lock_run_dir`]): for `checkpoint/` and `best/`, the newest complete one of the
/// folder itself, its `.tmp-PID` and its `.old-PID` copies becomes the folder and the others
/// are removed; stray `.FILE.PID.tmp` files and write probes are removed. Says what it did on
/// stderr; does nothing (and reads nothing) in a folder without leftovers.
pub(crate) fn recover_run_dir(dir: &Path) -> Result<()> {
    let rm_dir = |p: &Path| std::fs::remove_dir_all(p).map_err(|e| NablaError::io(p, e));
    let short = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    for (name, with_optimizer) in [("checkpoint", true), ("best", false)] {
        let left = leftovers(dir, name);
        if left.is_empty() {
            continue;
        }
        let fin = dir.join(name);
        let fin_step = fin
            .is_dir()
            .then(|| complete_step(&fin, with_optimizer))
            .flatten();
        let steps: Vec<Option<u64>> = left
            .iter()
            .map(|(p, _, _)| complete_step(p, with_optimizer))
            .collect();
        // The newest complete copy; on a tie the folder in place wins, then `.old` over `.tmp`.
        let best_left = left
            .iter()
            .zip(&steps)
            .filter_map(|(l, s)| Some((s.as_ref().copied()?, l.1, l)))
            .max_by_key(|(s, kind, _)| (*s, *kind));
        let promote = match (best_left, fin_step) {
            (Some((s, _, l)), Some(f)) if s > f => Some((s, l)),
            (Some((s, _, l)), None) => Some((s, l)),
            _ => None,
        };
        for ((p, kind, pid), step) in left.iter().zip(&steps) {
            if promote.is_some_and(|(_, l)| &l.0 == p) {
                continue;
            }
            rm_dir(p)?;
            let what = match (kind, step) {
                (_, None) => "an incomplete checkpoint".to_string(),
                (Leftover::Tmp, Some(s)) => {
                    format!("a complete checkpoint at step {s}, not newer than {name}/")
                }
                (Leftover::Old, Some(s)) => format!("the checkpoint at step {s} it replaced"),
            };
            errln!(
                "note removed {} in {}: {what}, left by process {pid}, which died while writing {name}/",
                short(p),
                dir.display()
            );
        }
        if let Some((s, (p, _, pid))) = promote {
            // Removing the stale folder first is safe: a crash in between leaves the newest
            // copy under its temporary name, which the next start promotes the same way.
            if fin.exists() {
                rm_dir(&fin)?;
            }
            std::fs::rename(p, &fin).map_err(|e| NablaError::io(&fin, e))?;
            errln!(
                "note recovered {name}/ (step {s}) in {} from {}, the newest complete checkpoint left by process {pid}, which died while writing it{}",
                dir.display(),
                short(p),
                match fin_step {
                    Some(f) => format!(" (it replaces step {f})"),
                    None => String::new(),
                }
            );
        }
    }
    // `.FILE.PID.tmp` of `io::atomic_write`/`replace_file` and the trainer's write probes.
    for e in std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let is_tmp_file = n.starts_with('.')
            && n.strip_suffix(".tmp")
                .and_then(|b| b.rsplit_once('.'))
                .is_some_and(|(f, pid)| {
                    f.len() > 1 && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
                });
        let is_probe = n
            .strip_prefix(".nabla-write-probe-")
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if (is_tmp_file || is_probe) && e.path().is_file() {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|e| NablaError::io(&p, e))?;
            errln!(
                "note removed {n} in {}: a temporary file left by a process that died",
                dir.display()
            );
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrong value of 1 MB in `state.json`, or a `format` of 1 MB: the error quotes at most
    /// 200 bytes of it.
    #[test]
    fn state_errors_quote_at_most_200_bytes() {
        let p = Path::new("state.json");
        let long = "9".repeat(1 << 20);
        let e = parse_state_bytes(format!("{{\"format\":\"{long}\"}}").as_bytes(), p)
            .unwrap_err()
            .to_string();
        // Deserialization stops at the first missing field: the format is never printed whole.
        assert!(
            e.contains("state.json") && e.len() < 400,
            "{} bytes",
            e.len()
        );
        let e = parse_state_bytes(
            format!("{{\"format\":\"x\",\"step\":\"{long}\"}}").as_bytes(),
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("not a nabla checkpoint state: invalid type: string \"999")
                && e.contains("(")
                && e.len() < 400,
            "{} bytes: {}",
            e.len(),
            &e[..300.min(e.len())]
        );
    }

    /// The lock is exclusive (a second open of the file cannot take it, even in this process),
    /// names the holder's PID, and is free again once the holder is dropped.
    #[test]
    fn one_lock_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_run_dir(dir.path()).unwrap();
        let e = lock_run_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "process {} is training into it",
                std::process::id()
            )) && e.contains(".lock"),
            "{e}"
        );
        drop(held);
        let again = lock_run_dir(dir.path()).unwrap();
        drop(again);
        // Recovery in a folder without leftovers touches nothing.
        std::fs::write(dir.path().join("metrics.jsonl"), "x").unwrap();
        std::fs::write(dir.path().join(".hidden.tmp"), "x").unwrap();
        recover_run_dir(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".hidden.tmp", ".lock", "metrics.jsonl"]);
    }
}
