//! Trainer configuration, LR schedules, and the shared `clap` flags of every `train` command.

use crate::errln;
use crate::error::Result;
use crate::invalid;
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Whether a smaller or a larger value of a metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Min,
    Max,
}

impl Mode {
    /// `true` when `new` beats `best` by more than `min_delta`.
    pub fn improves(self, new: f64, best: f64, min_delta: f64) -> bool {
        match self {
            Mode::Min => new < best - min_delta,
            Mode::Max => new > best + min_delta,
        }
    }
}

/// Stop when the monitored metric has not improved for `patience` evaluations in a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub patience: u64,
    /// An improvement smaller than this does not count.
    pub min_delta: f64,
}

/// Learning rate as a multiple of the optimizer's base rate, per 0-based step `s` of `total`.
///
/// A linear warm-up over the first `warmup` steps (`lr = base·(s+1)/warmup`) precedes every
/// schedule; `s'` below counts from the end of the warm-up, `n = total − warmup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    /// `base`.
    #[default]
    Constant,
    /// `base · gamma^⌊s'/step_size⌋` (PyTorch `StepLR`).
    Step { step_size: u64, gamma: f64 },
    /// `min + (base − min)·(1 + cos(π s'/n))/2` (PyTorch `CosineAnnealingLR`, `T_max = n`).
    Cosine { min_lr: f64 },
    /// `base + (min − base)·s'/n`, a linear decay to `min_lr`.
    Linear { min_lr: f64 },
}

impl LrSchedule {
    /// The rate of 0-based step `step` of `total`, computed by [`crate::optim::LrSchedule`]
    /// (the formulas live there, checked against PyTorch) except the linear decay.
    pub fn lr(&self, base: f64, step: u64, total: u64, warmup: u64) -> f64 {
        use crate::optim::LrSchedule as S;
        let (s, t, w) = (step as usize, total as usize, warmup as usize);
        match *self {
            // Warm-up then cosine from `base` to `base` = warm-up then constant.
            LrSchedule::Constant if warmup == 0 => S::Constant { lr: base }.lr_at(s),
            LrSchedule::Constant => S::WarmupCosine {
                lr: base,
                warmup_steps: w,
                total_steps: t.max(w),
                min_lr: base,
            }
            .lr_at(s),
            LrSchedule::Cosine { min_lr } => S::WarmupCosine {
                lr: base,
                warmup_steps: w,
                total_steps: t.max(w),
                min_lr,
            }
            .lr_at(s),
            _ if step < warmup => base * (step + 1) as f64 / warmup as f64,
            LrSchedule::Step { step_size, gamma } => S::Step {
                lr: base,
                step_size: step_size as usize,
                gamma,
            }
            .lr_at(s - w),
            LrSchedule::Linear { min_lr } => {
                let n = total.saturating_sub(warmup).max(1) as f64;
                base + (min_lr - base) * ((step - warmup) as f64 / n).min(1.0)
            }
        }
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Bar,
    /// One line per `log_every` steps and one per evaluation (see [`super::format_log_line`]).
    Plain,
    /// Nothing but errors.
    Quiet,
}

/// Image format of the plot written at the end of training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlotFormat {
    #[default]
    Svg,
    Png,
    None,
}

/// Everything the [`super::Trainer`] needs besides the model and the optimizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The run folder (created if absent).
    pub out_dir: PathBuf,
    /// Continue the run whose folder this is (its `checkpoint/`); `out_dir` should be the same.
    pub resume: Option<PathBuf>,
    /// Allow starting a fresh run in a folder that already holds a checkpoint.
    pub overwrite: bool,
    /// Seeds the trainer's RNG (passed to `train_step`); models should initialize from
    /// [`TrainConfig::init_rng`] so one seed fixes everything.
    pub seed: u64,
    /// Total optimizer steps; with `epochs` as well, the smaller wins.
    pub max_steps: Option<u64>,
    /// Total epochs (needs [`super::TrainModel::steps_per_epoch`]).
    pub epochs: Option<u64>,
    /// Evaluate every this many steps; 0 = at the end of every epoch. Always at the last step.
    pub eval_every: u64,
    /// A progress line (or bar update) every this many steps.
    pub log_every: u64,
    /// A checkpoint every this many steps; 0 = automatic: the first step after
    /// [`AUTO_CHECKPOINT_INTERVAL_S`] since the previous one, later still if writing one took
    /// more than [`AUTO_CHECKPOINT_IO_SHARE`] of that time. Always at the end and on a stop
    /// signal, whatever the value.
    pub checkpoint_every: u64,
    /// Stop (with a checkpoint, [`super::Outcome::TimeLimit`]) before the first step that would
    /// start after this many seconds of this session.
    pub time_limit_s: Option<f64>,
    pub schedule: LrSchedule,
    pub warmup_steps: u64,
    /// Rescale gradients so their global L2 norm is at most this.
    pub clip_grad_norm: Option<f64>,
    /// The validation metric that picks the best checkpoint and drives early stopping.
    pub monitor: Option<(String, Mode)>,
    pub early_stopping: Option<EarlyStopping>,
    pub progress: ProgressMode,
    pub plot: PlotFormat,
    /// Install the SIGINT/SIGTERM/SIGHUP handlers ([`super::signals`]): a stop signal saves a
    /// checkpoint and returns [`super::Outcome::Interrupted`]. Off by default, so a library
    /// caller's process keeps its own signal handling; every `train` command turns it on.
    #[serde(alias = "handle_sigint")]
    pub handle_signals: bool,
}

/// Automatic checkpoints ([`TrainConfig::checkpoint_every`] = 0) are at least this many seconds
/// apart: a kill without warning (`kill -9`, power loss) loses at most about this much training,
/// and a run shorter than this writes its checkpoint once, at the end.
pub const AUTO_CHECKPOINT_INTERVAL_S: f64 = 30.0;
/// …and writing them takes at most this share of the wall time (the interval grows with the
/// time the previous checkpoint took to write, for models whose checkpoints are slow to write).
pub const AUTO_CHECKPOINT_IO_SHARE: f64 = 0.02;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            out_dir: PathBuf::from("runs/run"),
            resume: None,
            overwrite: false,
            seed: 0,
            max_steps: None,
            epochs: None,
            eval_every: 0,
            log_every: 50,
            checkpoint_every: 0,
            time_limit_s: None,
            schedule: LrSchedule::Constant,
            warmup_steps: 0,
            clip_grad_norm: None,
            monitor: None,
            early_stopping: None,
            progress: ProgressMode::Auto,
            plot: PlotFormat::Svg,
            handle_signals: false,
        }
    }
}

impl TrainConfig {
    /// The RNG a model should initialize its parameters from (distinct from the training stream).
    pub fn init_rng(&self) -> crate::init::Rng {
        crate::init::Rng::new(self.seed)
    }
    /// The RNG stream handed to `train_step` at step 0.
    pub fn train_rng(&self) -> crate::init::Rng {
        crate::init::Rng::new(self.seed ^ 0x7472_6169_6e5f_726e)
    }
    /// Checks the values, before anything is written.
    pub fn validate(&self) -> Result<()> {
        if self.max_steps.is_none() && self.epochs.is_none() {
            return Err(invalid!(
                "give the length of training: max_steps (--steps) or epochs (--epochs)"
            ));
        }
        if self.max_steps == Some(0) || self.epochs == Some(0) {
            return Err(invalid!("--steps/--epochs must be positive"));
        }
        if let Some(t) = self.time_limit_s {
            if !(t > 0.0 && t.is_finite()) {
                return Err(invalid!(
                    "--time-limit must be a positive, finite number of seconds, got {t}"
                ));
            }
        }
        if self.log_every == 0 {
            return Err(invalid!("--log-every must be positive"));
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c > 0.0 && c.is_finite()) {
                return Err(invalid!(
                    "--clip-grad-norm must be positive and finite, got {c}"
                ));
            }
        }
        if let LrSchedule::Step { step_size, gamma } = self.schedule {
            if step_size == 0 || !(gamma > 0.0 && gamma.is_finite()) {
                return Err(invalid!(
                    "step schedule needs step_size > 0 and gamma > 0, got {step_size} and {gamma}"
                ));
            }
        }
        if let LrSchedule::Cosine { min_lr } | LrSchedule::Linear { min_lr } = self.schedule {
            if !(min_lr >= 0.0 && min_lr.is_finite()) {
                return Err(invalid!(
                    "--min-lr must be a finite number >= 0, got {min_lr}"
                ));
            }
        }
        if let Some(es) = &self.early_stopping {
            // NaN would make every comparison false: the first evaluation would stay the best.
            if !(es.min_delta >= 0.0 && es.min_delta.is_finite()) {
                return Err(invalid!(
                    "--min-delta must be a finite number >= 0, got {}",
                    es.min_delta
                ));
            }
        }
        if self.early_stopping.is_some() && self.monitor.is_none() {
            return Err(invalid!(
                "early stopping needs a monitored metric (--monitor NAME)"
            ));
        }
        Ok(())
    }
}

/// A command's default run folder, or, when that already holds something, the first free
/// `DEFAULT-2`, `DEFAULT-3`, … (said on stderr): a repeated command without `--out` never
/// replaces an earlier run (`--overwrite` does, on purpose).
pub fn fresh_run_dir(default: &Path) -> PathBuf {
    let taken = |p: &Path| {
        p.exists()
            && std::fs::read_dir(p)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
    };
    if !taken(default) {
        return default.to_path_buf();
    }
    let name = default
        .file_name()
        .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned());
    let dir = (2u64..)
        .map(|k| default.with_file_name(format!("{name}-{k}")))
        .find(|p| !taken(p))
        .expect("an unbounded range has a free name");
    errln!(
        "note {} holds an earlier run; this run goes to {} (--out DIR chooses the folder, --overwrite replaces {})",
        default.display(),
        dir.display(),
        default.display()
    );
    dir
}

/// The run folder of a `train` command and the folder it resumes from, if any: `--out`, else the
/// folder of `--resume DIR`, else the command's `default` folder — as it is with `--resume` or
/// `--overwrite` alone (they name it on purpose), otherwise [`fresh_run_dir`] of it. `resume` is
/// `Some(None)` for a bare `--resume` (continue the run folder itself).
pub fn run_dirs(
    out: Option<&Path>,
    resume: Option<Option<&Path>>,
    overwrite: bool,
    default: &str,
) -> (PathBuf, Option<PathBuf>) {
    let out_dir = match (out, resume) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(Some(r))) => r.to_path_buf(),
        (None, Some(None)) => PathBuf::from(default),
        (None, None) if overwrite => PathBuf::from(default),
        (None, None) => fresh_run_dir(Path::new(default)),
    };
    let resume = resume.map(|r| r.map_or_else(|| out_dir.clone(), Path::to_path_buf));
    (out_dir, resume)
}

/// Schedule names of `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
    Linear,
}

/// The flags every `nabla <model> train` command shares: `#[command(flatten)] train: TrainArgs`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Run folder: config.json, metrics.jsonl, checkpoint/, best/, plots.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its checkpoint (exactly: same result as no stop).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start afresh even if the run folder already holds a checkpoint.
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of every random choice (initialization, batches, dropout).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimizer steps.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training data.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Evaluate every N steps (0 = every epoch).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// A progress line every N steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Checkpoint every N steps (0 = automatically, every 30 s of training or less often if
    /// writing takes over 2% of the time); always at the end and on SIGINT/SIGTERM/SIGHUP.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub checkpoint_every: u64,
    /// Stop after this many seconds of training, with a checkpoint (exit status 0).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Learning-rate schedule after the warm-up.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Constant)]
    pub schedule: ScheduleKind,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Final learning rate of the cosine and linear schedules.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Step schedule: multiply by --gamma every --step-size steps.
    #[arg(long, default_value_t = 1000)]
    pub step_size: u64,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,
    /// Validation metric for the best checkpoint and early stopping, e.g. val_acc.
    #[arg(long)]
    pub monitor: Option<String>,
    /// Whether the monitored metric should go down or up.
    #[arg(long, value_enum)]
    pub monitor_mode: Option<Mode>,
    /// Stop after this many evaluations without improvement of the monitored metric.
    #[arg(long)]
    pub patience: Option<u64>,
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Plot written at the end of training.
    #[arg(long, value_enum, default_value_t = PlotFormat::Svg)]
    pub plot: PlotFormat,
}

impl TrainArgs {
    /// Without `--out`, `--resume` or `--overwrite`: sets `--out` to [`fresh_run_dir`] of the
    /// command's default folder (once, before a command derives per-seed folders from it).
    pub fn resolve_default_out(&mut self, default_out: &str) {
        if self.out.is_none() && self.resume.is_none() && !self.overwrite {
            self.out = Some(fresh_run_dir(Path::new(default_out)));
        }
    }
    /// The configuration, with the command's defaults for what the user did not give:
    /// `default_out` (e.g. `runs/vit`), `default_monitor` (e.g. `("val_acc", Mode::Max)`) and
    /// `default_eval_every`.
    pub fn config(
        &self,
        default_out: &str,
        default_monitor: Option<(&str, Mode)>,
        default_eval_every: u64,
    ) -> Result<TrainConfig> {
        let (out_dir, resume) = run_dirs(
            self.out.as_deref(),
            self.resume.as_deref().map(Some),
            self.overwrite,
            default_out,
        );
        let monitor = match (&self.monitor, default_monitor) {
            (Some(name), _) => {
                let mode = self.monitor_mode.unwrap_or_else(|| guess_mode(name));
                Some((name.clone(), mode))
            }
            (None, Some((name, mode))) => {
                Some((name.to_string(), self.monitor_mode.unwrap_or(mode)))
            }
            (None, None) => None,
        };
        let schedule = match self.schedule {
            ScheduleKind::Constant => LrSchedule::Constant,
            ScheduleKind::Step => LrSchedule::Step {
                step_size: self.step_size,
                gamma: self.gamma,
            },
            ScheduleKind::Cosine => LrSchedule::Cosine {
                min_lr: self.min_lr,
            },
            ScheduleKind::Linear => LrSchedule::Linear {
                min_lr: self.min_lr,
            },
        };
        let cfg = TrainConfig {
            out_dir,
            resume,
            overwrite: self.overwrite,
            seed: self.seed,
            max_steps: self.steps,
            epochs: self.epochs,
            eval_every: self.eval_every.unwrap_or(default_eval_every),
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            time_limit_s: self.time_limit,
            schedule,
            warmup_steps: self.warmup,
            clip_grad_norm: self.clip_grad_norm,
            monitor,
            early_stopping: self.patience.map(|patience| EarlyStopping {
                patience,
                min_delta: self.min_delta,
            }),
            progress: if self.quiet {
                ProgressMode::Quiet
            } else if self.plain {
                ProgressMode::Plain
            } else {
                ProgressMode::Auto
            },
            plot: self.plot,
            handle_signals: true,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Losses, errors and perplexities go down; everything else (accuracy, F1) goes up.
fn guess_mode(name: &str) -> Mode {
    let n = name.to_ascii_lowercase();
    if ["loss", "err", "ppl", "perplexity", "mse", "bpc"]
        .iter()
        .any(|k| n.contains(k))
    {
        Mode::Min
    } else {
        Mode::Max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = LrSchedule::Constant;
        assert_eq!(c.lr(0.1, 5, 10, 0), 0.1);
        assert_eq!(c.lr(0.1, 0, 10, 4), 0.1 * 0.25);
        assert_eq!(c.lr(0.1, 3, 10, 4), 0.1);
        let s = LrSchedule::Step {
            step_size: 3,
            gamma: 0.5,
        };
        assert_eq!(s.lr(1.0, 2, 10, 0), 1.0);
        assert_eq!(s.lr(1.0, 3, 10, 0), 0.5);
        assert_eq!(s.lr(1.0, 7, 10, 0), 0.25);
        let cos = LrSchedule::Cosine { min_lr: 0.0 };
        assert!((cos.lr(1.0, 5, 10, 0) - 0.5).abs() < 1e-12);
        assert!((cos.lr(1.0, 0, 10, 0) - 1.0).abs() < 1e-12);
        let lin = LrSchedule::Linear { min_lr: 0.0 };
        assert!((lin.lr(1.0, 5, 10, 0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn validation_and_modes() {
        assert!(TrainConfig::default().validate().is_err());
        let mut c = TrainConfig {
            max_steps: Some(10),
            ..Default::default()
        };
        c.validate().unwrap();
        c.clip_grad_norm = Some(-1.0);
        assert!(c.validate().unwrap_err().to_string().contains("clip"));
        c.clip_grad_norm = None;
        c.monitor = Some(("val_acc".into(), Mode::Max));
        for bad in [f64::NAN, f64::INFINITY, -0.5] {
            c.early_stopping = Some(EarlyStopping {
                patience: 3,
                min_delta: bad,
            });
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("--min-delta") && e.contains(&bad.to_string()),
                "{e}"
            );
        }
        c.early_stopping = None;
        c.schedule = LrSchedule::Cosine { min_lr: f64::NAN };
        assert!(c.validate().unwrap_err().to_string().contains("--min-lr"));
        assert_eq!(guess_mode("val_loss"), Mode::Min);
        assert_eq!(guess_mode("val_acc"), Mode::Max);
        assert!(Mode::Min.improves(0.5, 0.6, 0.0));
        assert!(!Mode::Max.improves(0.5, 0.6, 0.0));
    }
}
