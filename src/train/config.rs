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

pub use crate::optim::LrSchedule;

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
    /// The flags of the command that started the run, every default filled in (`nabla … train`
    /// saves them here, so they are in every checkpoint's `state.json`): `--resume DIR`
    /// restores the run's own configuration from them. `None` for library callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<serde_json::Value>,
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
            command: None,
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
        self.schedule.validate()?;
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
    // In a data-parallel job rank 0 chooses (and says so) for all: ranks looking at the
    // folders one after the other would see rank 0's new run and pick different ones.
    let group = crate::dist::world();
    if group.size() > 1 {
        use std::os::unix::ffi::OsStrExt;
        let mine = if group.rank() == 0 {
            fresh_run_dir_here(default)
        } else {
            PathBuf::new()
        };
        let bytes = mine.as_os_str().as_bytes().to_vec();
        return match group.broadcast_bytes(bytes) {
            Ok(b) => PathBuf::from(std::ffi::OsStr::from_bytes(&b)),
            Err(_) => mine,
        };
    }
    fresh_run_dir_here(default)
}

fn fresh_run_dir_here(default: &Path) -> PathBuf {
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
/// folder of `--resume DIR`, else the command's `default` folder — as it is with `--overwrite`
/// (it names it on purpose), otherwise [`fresh_run_dir`] of it.
pub fn run_dirs(
    out: Option<&Path>,
    resume: Option<&Path>,
    overwrite: bool,
    default: &str,
) -> (PathBuf, Option<PathBuf>) {
    let out_dir = match (out, resume) {
        (Some(o), _) => o.to_path_buf(),
        (None, Some(r)) => r.to_path_buf(),
        (None, None) if overwrite => PathBuf::from(default),
        (None, None) => fresh_run_dir(Path::new(default)),
    };
    (out_dir, resume.map(Path::to_path_buf))
}

/// Schedule names of `--schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
    Linear,
}

/// A command's defaults for the [`TrainArgs`] the user does not give.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainDefaults {
    /// Run folder without `--out` (the first free `DEFAULT-N` when it holds a run).
    pub out: String,
    /// Length of training when neither `--steps` nor `--epochs` is given.
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    /// `--eval-every` (0 = once per epoch).
    pub eval_every: u64,
    pub schedule: ScheduleKind,
    pub warmup: u64,
    /// `--min-lr` as a multiple of the base rate (e.g. 0.01: decay to 1% of `--lr`).
    pub min_lr_ratio: f64,
    pub clip_grad_norm: Option<f64>,
    pub monitor: Option<(String, Mode)>,
    pub patience: Option<u64>,
}

impl TrainDefaults {
    /// Constant rate, no warm-up, no clipping, nothing monitored, evaluation per epoch.
    pub fn new(out: impl Into<String>) -> Self {
        TrainDefaults {
            out: out.into(),
            steps: None,
            epochs: None,
            eval_every: 0,
            schedule: ScheduleKind::Constant,
            warmup: 0,
            min_lr_ratio: 0.0,
            clip_grad_norm: None,
            monitor: None,
            patience: None,
        }
    }
}

/// The flags every `nabla <model> train` command shares: `#[command(flatten)] train: TrainArgs`
/// (with `#[serde(flatten)]`, so a command's flags serialize as one flat object keyed by clap's
/// argument ids — what `--resume` compares). Flags without a default here take the command's
/// [`TrainDefaults`] ([`TrainArgs::fill_defaults`]).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[command(next_help_heading = "Training")]
pub struct TrainArgs {
    /// Run folder: config.json, metrics.jsonl, checkpoint/, best/, plots [default: runs/<model>,
    /// or the first free runs/<model>-N].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its checkpoint, with the run's own configuration (model,
    /// data, seed, schedule, optimizer); flags given again must agree, except --steps/--epochs
    /// (extend the run) and the output flags. The result is the same as without a stop.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start afresh even if the run folder already holds a checkpoint.
    #[arg(long)]
    pub overwrite: bool,
    /// Seed of every random choice (initialization, data, batches, dropout).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimizer steps [default per command].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the training data (with --steps, the shorter wins) [default per command].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Evaluate every N steps (0 = every epoch) [default per command].
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// A progress line every N steps.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub log_every: u64,
    /// Checkpoint every N steps (0 = automatically, every 30 s of training or less often if
    /// writing takes over 2% of the time); always at the end and on SIGINT/SIGTERM/SIGHUP.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub checkpoint_every: u64,
    /// Stop after this many seconds of training, with a checkpoint (exit status 0).
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Learning-rate schedule after the warm-up [default per command].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Linear warm-up steps [default per command].
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Final learning rate of the cosine and linear schedules [default per command].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// Step schedule: multiply by --gamma every --step-size steps.
    #[arg(long, default_value_t = 1000)]
    pub step_size: u64,
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f64,
    /// Clip the global gradient norm to this value [default per command].
    #[arg(long, value_name = "NORM")]
    pub clip_grad_norm: Option<f64>,
    /// Validation metric for best/ and early stopping, e.g. val_acc [default per command].
    #[arg(long, value_name = "METRIC")]
    pub monitor: Option<String>,
    /// Whether the monitored metric should go down or up [default: from its name].
    #[arg(long, value_enum)]
    pub monitor_mode: Option<Mode>,
    /// Stop after this many evaluations without improvement of the monitored metric.
    #[arg(long)]
    pub patience: Option<u64>,
    /// Smallest change of the monitored metric that counts as an improvement.
    #[arg(long, default_value_t = 0.0)]
    pub min_delta: f64,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Plain log lines even on a terminal (no progress bar).
    #[arg(long)]
    pub plain: bool,
    /// Plot written at the end of training.
    #[arg(long, value_enum, default_value_t = PlotFormat::Svg)]
    pub plot: PlotFormat,
}

impl TrainArgs {
    /// Fills what the user left open with the command's defaults (`base_lr` for
    /// [`TrainDefaults::min_lr_ratio`]): afterwards the flags say everything about the run.
    pub fn fill_defaults(&mut self, d: &TrainDefaults, base_lr: f64) {
        if self.steps.is_none() && self.epochs.is_none() {
            self.steps = d.steps;
            self.epochs = d.epochs;
        }
        self.eval_every.get_or_insert(d.eval_every);
        self.schedule.get_or_insert(d.schedule);
        self.warmup.get_or_insert(d.warmup);
        let schedule = self.schedule;
        if matches!(schedule, Some(ScheduleKind::Cosine | ScheduleKind::Linear)) {
            self.min_lr.get_or_insert(d.min_lr_ratio * base_lr);
        }
        if self.clip_grad_norm.is_none() {
            self.clip_grad_norm = d.clip_grad_norm;
        }
        if self.monitor.is_none() {
            if let Some((name, mode)) = &d.monitor {
                self.monitor = Some(name.clone());
                self.monitor_mode.get_or_insert(*mode);
            }
        }
        if let Some(name) = &self.monitor {
            let mode = guess_mode(name);
            self.monitor_mode.get_or_insert(mode);
        }
        if self.patience.is_none() {
            self.patience = d.patience;
        }
        if self.out.is_none() && self.resume.is_none() && !self.overwrite {
            // Chosen once, before a command derives per-seed folders from it.
            self.out = Some(fresh_run_dir(Path::new(&d.out)));
        }
    }

    /// The trainer configuration of these flags (after [`TrainArgs::fill_defaults`]; what is
    /// still open takes the plain defaults: constant rate, no warm-up, nothing monitored).
    pub fn config(&self, default_out: &str) -> Result<TrainConfig> {
        let (out_dir, resume) = run_dirs(
            self.out.as_deref(),
            self.resume.as_deref(),
            self.overwrite,
            default_out,
        );
        let monitor = self.monitor.as_ref().map(|name| {
            let mode = self.monitor_mode.unwrap_or_else(|| guess_mode(name));
            (name.clone(), mode)
        });
        let min_lr = self.min_lr.unwrap_or(0.0);
        let schedule = match self.schedule.unwrap_or(ScheduleKind::Constant) {
            ScheduleKind::Constant => LrSchedule::Constant,
            ScheduleKind::Step => LrSchedule::Step {
                step_size: self.step_size,
                gamma: self.gamma,
            },
            ScheduleKind::Cosine => LrSchedule::Cosine { min_lr },
            ScheduleKind::Linear => LrSchedule::Linear { min_lr },
        };
        let cfg = TrainConfig {
            out_dir,
            resume,
            overwrite: self.overwrite,
            seed: self.seed,
            max_steps: self.steps,
            epochs: self.epochs,
            eval_every: self.eval_every.unwrap_or(0),
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            time_limit_s: self.time_limit,
            schedule,
            warmup_steps: self.warmup.unwrap_or(0),
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
            command: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The flags of [`TrainArgs`] that belong to one session, not to the run: they never come
/// from the run folder on `--resume` and may differ from the run's (the output and where it
/// goes, how often it is written, the session's time limit). `--steps` and `--epochs` come
/// from the run unless given again, which extends (or shortens) the run.
pub const SESSION_FLAGS: &[&str] = &[
    "out",
    "resume",
    "overwrite",
    "log_every",
    "checkpoint_every",
    "time_limit",
    "quiet",
    "plain",
    "plot",
];
/// The length flags: restored from the run, may be given again to change its length.
pub const LENGTH_FLAGS: &[&str] = &["steps", "epochs"];

/// Losses, errors and perplexities go down; everything else (accuracy, F1) goes up.
pub fn guess_mode(name: &str) -> Mode {
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

    #[test]
    fn defaults_fill_what_is_open() {
        let mut d = TrainDefaults::new("runs/x");
        d.epochs = Some(20);
        d.schedule = ScheduleKind::Cosine;
        d.warmup = 300;
        d.min_lr_ratio = 0.01;
        d.monitor = Some(("val_acc".into(), Mode::Max));
        let mut a = TrainArgs {
            out: Some("o".into()),
            steps: Some(5),
            log_every: 50,
            ..Default::default()
        };
        a.fill_defaults(&d, 2e-3);
        // A given length replaces the default one entirely.
        assert_eq!((a.steps, a.epochs), (Some(5), None));
        assert_eq!(a.schedule, Some(ScheduleKind::Cosine));
        assert_eq!(a.min_lr, Some(2e-5));
        assert_eq!(a.warmup, Some(300));
        assert_eq!(a.monitor_mode, Some(Mode::Max));
        let c = a.config("runs/x").unwrap();
        assert_eq!(c.schedule, LrSchedule::Cosine { min_lr: 2e-5 });
        assert_eq!(c.monitor, Some(("val_acc".to_string(), Mode::Max)));
    }
}
