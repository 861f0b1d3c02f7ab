//! `--resume DIR` for every `train` command: the run's own flags come back from its checkpoint.
//!
//! A `train` command saves its flags, every default filled in, as `train_config.command` of each
//! checkpoint's `state.json` ([`crate::train::TrainConfig::command`]). Resuming starts from
//! those: the model, the data, the seed, the schedule and the optimizer are the run's, so the
//! resumed run ends bit-identical to one that never stopped. A flag typed again (clap's
//! `ValueSource::CommandLine`) must agree with the run's value, or the command is refused with
//! the difference named; the session flags ([`crate::train::SESSION_FLAGS`]: output, time
//! limit, checkpoint interval) are this session's, and `--steps`/`--epochs` change the length.

use crate::error::Result;
use crate::invalid;
use crate::train::{load_checkpoint_state, LENGTH_FLAGS, SESSION_FLAGS};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The argument ids (clap's: the field names, `eval_every`) typed on the command line of the
/// subcommand that runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Typed(pub BTreeSet<String>);

impl Typed {
    /// The typed ids of the innermost subcommand of `m` (`nabla vit train …` → `train`'s).
    pub fn from_matches(m: &ArgMatches) -> Self {
        let mut m = m;
        while let Some((_, sub)) = m.subcommand() {
            m = sub;
        }
        Typed(
            m.ids()
                .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_string())
                .collect(),
        )
    }
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(id)
    }
}

/// The checkpoint folder whose flags a resumed command starts from: `dir`'s own, or for a
/// folder of per-seed runs (`gnn train --seeds N`), the first `seed-*/` that has one.
fn run_with_checkpoint(dir: &Path) -> Option<PathBuf> {
    if crate::train::checkpoint_dir(dir).is_ok() {
        return Some(dir.to_path_buf());
    }
    let mut seeds: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("seed-")?.parse().ok()?;
            let p = e.path();
            crate::train::checkpoint_dir(&p).is_ok().then_some((n, p))
        })
        .collect();
    seeds.sort();
    seeds.into_iter().next().map(|(_, p)| p)
}

/// The flags saved with the run in `dir` (`None`: no checkpoint there — the trainer says so —
/// or one written before the flags were saved).
pub fn saved_command(dir: &Path) -> Result<Option<Value>> {
    let Some(run) = run_with_checkpoint(dir) else {
        return Ok(None);
    };
    let st = load_checkpoint_state(&run)?;
    Ok(st.train_config.get("command").cloned())
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| show(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(v) => v.to_string(),
    }
}

/// The command's flags for resuming the run in `dir`: the run's saved flags, with this
/// session's output flags (and `extra_session`, the command's own output flags such as
/// `json`), and `--steps`/`--epochs` when typed (then the length is what is typed: the
/// other length flag is cleared unless typed too). Any other typed flag whose value differs
/// from the run's is an error naming each difference. A run without saved flags (an earlier
/// nabla) resumes with `args` as they are, the trainer checking the model's configuration.
pub fn restore<A: Serialize + DeserializeOwned>(
    args: &A,
    typed: &Typed,
    dir: &Path,
    extra_session: &[&str],
) -> Result<A> {
    let to_obj = |v: Value| -> Result<Map<String, Value>> {
        match v {
            Value::Object(m) => Ok(m),
            other => Err(invalid!("the command's flags are not an object: {other}")),
        }
    };
    let cur =
        to_obj(serde_json::to_value(args).map_err(|e| invalid!("serializing the flags: {e}"))?)?;
    let Some(saved) = saved_command(dir)? else {
        return serde_json::from_value(Value::Object(cur))
            .map_err(|e| invalid!("the command's flags: {e}"));
    };
    let saved = to_obj(saved).map_err(|e| invalid!("--resume {}: {e}", dir.display()))?;
    let session = |k: &str| SESSION_FLAGS.contains(&k) || extra_session.contains(&k);
    let mut merged = cur.clone();
    for (k, v) in &saved {
        // Keys this nabla does not know (a later version's) are dropped.
        if !session(k) && merged.contains_key(k) {
            merged.insert(k.clone(), v.clone());
        }
    }
    let typed_length: Vec<&str> = LENGTH_FLAGS
        .iter()
        .copied()
        .filter(|k| typed.contains(k))
        .collect();
    if !typed_length.is_empty() {
        for k in LENGTH_FLAGS {
            let v = if typed.contains(k) {
                cur.get(*k).cloned().unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            merged.insert(k.to_string(), v);
        }
    }
    let mut diffs = Vec::new();
    for k in &typed.0 {
        if session(k) || LENGTH_FLAGS.contains(&k.as_str()) {
            continue;
        }
        let (Some(s), Some(c)) = (saved.get(k), cur.get(k)) else {
            continue;
        };
        if s != c {
            diffs.push(format!(
                "--{}: the run has {}, this command line {}",
                k.replace('_', "-"),
                show(Some(s)),
                show(Some(c))
            ));
        }
    }
    if !diffs.is_empty() {
        return Err(invalid!(
            "cannot resume {}: {}; a resumed run keeps its own settings (leave these flags out, or start another run with --out)",
            dir.display(),
            diffs.join("; ")
        ));
    }
    serde_json::from_value(Value::Object(merged)).map_err(|e| {
        invalid!(
            "--resume {}: the run's saved flags do not fit this command: {e}",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser, Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    struct Cli {
        #[arg(long, default_value_t = 4)]
        dim: usize,
        #[command(flatten)]
        #[serde(flatten)]
        train: crate::train::TrainArgs,
    }

    fn parse(args: &[&str]) -> (Cli, Typed) {
        let m = Cli::command().try_get_matches_from(args).unwrap();
        (Cli::from_arg_matches(&m).unwrap(), Typed::from_matches(&m))
    }

    /// The saved flags come back, a typed length replaces the run's, and a typed flag that
    /// differs from the run's is refused with both values.
    #[test]
    fn restores_and_refuses() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        let (first, _) = parse(&["x", "--dim", "8", "--seed", "3", "--epochs", "1"]);
        let mut cfg = crate::train::TrainConfig {
            max_steps: Some(1),
            ..Default::default()
        };
        cfg.command = Some(serde_json::to_value(&first).unwrap());
        let st = crate::train::CheckpointState {
            format: crate::train::CHECKPOINT_FORMAT.into(),
            step: 1,
            epoch: None,
            optimizer_step: 1,
            base_lr: 0.1,
            lr: 0.1,
            rng: [1, 2, 3, 4],
            wall_time_s: 0.0,
            items_total: 0,
            model_config: Value::Null,
            train_config: serde_json::to_value(&cfg).unwrap(),
            metrics: vec![],
            best: None,
            evals_without_improvement: 0,
            interval: Default::default(),
        };
        std::fs::create_dir_all(run.join("checkpoint")).unwrap();
        std::fs::write(
            run.join("checkpoint/state.json"),
            serde_json::to_vec(&st).unwrap(),
        )
        .unwrap();
        let r = run.to_str().unwrap();
        let (a, t) = parse(&["x", "--resume", r, "--epochs", "2", "--quiet"]);
        let got = restore(&a, &t, run, &[]).unwrap();
        assert_eq!((got.dim, got.train.seed), (8, 3));
        assert_eq!((got.train.epochs, got.train.steps), (Some(2), None));
        assert!(got.train.quiet);
        assert_eq!(got.train.resume.as_deref(), Some(run));
        // Typing the run's own value is fine; another one is not.
        let (a, t) = parse(&["x", "--resume", r, "--seed", "3"]);
        assert_eq!(restore(&a, &t, run, &[]).unwrap().train.epochs, Some(1));
        let (a, t) = parse(&["x", "--resume", r, "--seed", "4", "--dim", "9"]);
        let e = restore(&a, &t, run, &[]).unwrap_err().to_string();
        assert!(
            e.contains("--seed: the run has 3, this command line 4")
                && e.contains("--dim: the run has 8, this command line 9"),
            "{e}"
        );
        // No checkpoint: the flags as they are (the trainer reports the missing checkpoint).
        let empty = tmp.path().join("none");
        let (a, t) = parse(&["x", "--seed", "5"]);
        assert_eq!(restore(&a, &t, &empty, &[]).unwrap(), a);
    }
}
