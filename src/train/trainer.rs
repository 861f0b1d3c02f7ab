//! The training loop.

use super::checkpoint::{
    checkpoint_dir, claim_run_dir, load_checkpoint_state, load_tensors, write_checkpoint,
    BestRecord, CheckpointState, IntervalState, CHECKPOINT_FORMAT, MODEL_FILE, OPTIM_FILE,
};
use super::config::ProgressMode;
use super::config::{
    PlotFormat, TrainConfig, AUTO_CHECKPOINT_INTERVAL_S, AUTO_CHECKPOINT_IO_SHARE,
};
use super::metrics::{to_jsonl, MetricsRecord, RESERVED};
use super::progress::{fmt_duration, fmt_num, format_log_line, Progress};
use super::signals::{install_stop_handlers, stop_signal, StopSignal};
use super::tfevents::{EventWriter, LOGGED_TRAIN_LOSS};
use super::{Metrics, StepOutput, TrainModel, TrainOptimizer};
use crate::dist::Group;
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::io::{atomic_write, replace_file};
use crate::optim::clip_grad_norm;
use crate::tensor::{Element, Tensor};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a run ended (errors — non-finite values, I/O — are `Err` instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the configured number of steps/epochs.
    Completed,
    /// The monitored metric stopped improving for `patience` evaluations.
    EarlyStopped,
    /// A stop signal ([`TrainSummary::signal`]) or [`Trainer::interrupt_handle`]: a checkpoint
    /// was saved; `--resume` continues.
    Interrupted,
    /// [`TrainConfig::time_limit_s`] ran out: a checkpoint was saved; `--resume` continues.
    TimeLimit,
}

impl Outcome {
    /// `completed`, `early_stopped`, `interrupted`, `time_limit` (the `outcome` of JSON reports).
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::EarlyStopped => "early_stopped",
            Outcome::Interrupted => "interrupted",
            Outcome::TimeLimit => "time_limit",
        }
    }
}

/// What [`Trainer::fit`] returns.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub outcome: Outcome,
    /// Optimizer steps completed.
    pub step: u64,
    pub total_steps: u64,
    /// The last evaluation.
    pub last: Option<MetricsRecord>,
    pub best: Option<BestRecord>,
    pub run_dir: PathBuf,
    /// The latest checkpoint folder.
    pub checkpoint: PathBuf,
    pub plot: Option<PathBuf>,
    pub wall_time_s: f64,
    /// The signal that interrupted the run (`None` for [`Trainer::interrupt_handle`]).
    pub signal: Option<StopSignal>,
    /// The test metrics of the selected weights, evaluated once at the end of a finished run
    /// (`None`: interrupted, or the data has no test split).
    pub test: Option<super::TestRecord>,
}

impl TrainSummary {
    /// A few human-readable lines for the end of a `train` command.
    pub fn describe(&self) -> String {
        let what = match self.outcome {
            Outcome::Completed => "finished".to_string(),
            Outcome::EarlyStopped => "stopped early (no improvement)".to_string(),
            Outcome::Interrupted => format!(
                "interrupted{}",
                self.signal
                    .map_or(String::new(), |s| format!(" by {}", s.name()))
            ),
            Outcome::TimeLimit => "stopped by the time limit".to_string(),
        };
        let mut s = format!(
            "{what} at step {}/{} after {}; checkpoint: {}",
            self.step,
            self.total_steps,
            fmt_duration(self.wall_time_s),
            self.checkpoint.display()
        );
        if matches!(self.outcome, Outcome::Interrupted | Outcome::TimeLimit) {
            s.push_str(&format!(
                "; continue with --resume {}",
                self.run_dir.display()
            ));
        }
        if let Some(l) = &self.last {
            s.push_str(&format!(
                "\nlast evaluation: train_loss={}",
                fmt_num(l.train_loss)
            ));
            for (k, v) in &l.metrics {
                s.push_str(&format!(" {k}={}", fmt_num(*v)));
            }
        }
        if let Some(b) = &self.best {
            s.push_str(&format!(
                "\nbest {}={} at step {} (weights in {})",
                b.metric,
                fmt_num(b.value),
                b.step,
                self.run_dir.join("best").display()
            ));
        }
        if let Some(t) = &self.test {
            s.push_str(&format!("\ntest: {}", t.describe()));
        }
        if let Some(p) = &self.plot {
            s.push_str(&format!("\nplot: {}", p.display()));
        }
        s
    }
}

/// Trains a [`TrainModel`] with an optimizer; see the [module docs](super) for an example.
pub struct Trainer<T: Element, O: TrainOptimizer<T>> {
    cfg: TrainConfig,
    opt: O,
    interrupt: Arc<AtomicBool>,
    sink: Option<Box<dyn Write + Send>>,
    /// The ranks of a data-parallel job (one outside MPI): rank 0 owns the run folder and the
    /// output; every rank trains ([`crate::dist`]).
    group: Group,
    _t: PhantomData<T>,
}

/// Mutable state of a run between steps.
struct Run<T: Element> {
    st: CheckpointState,
    last_ckpt: Option<(PathBuf, u64)>,
    /// Weights, buffers and state of the best evaluation not yet written to `best/`: kept in
    /// memory and written with the next checkpoint (or when the run ends, however it ends), so
    /// an improving metric costs no disk I/O at each evaluation.
    pending_best: Option<(NamedTensors<T>, CheckpointState)>,
    /// When `metrics.jsonl` was last rewritten, and whether records were added since: it is
    /// rewritten at most every [`METRICS_WRITE_INTERVAL`], with every checkpoint, and when the
    /// run ends, so frequent evaluations of a fast model (a GCN epoch is milliseconds) cost no
    /// more than a percent of the run in file I/O.
    metrics_written: Option<Instant>,
    metrics_dirty: bool,
    /// The TensorBoard events file, appended to at every log line and evaluation (started
    /// once the run's history is known: [`super::tfevents::EventWriter::start`]).
    events: Option<EventWriter>,
}

/// The shortest time between two rewrites of `metrics.jsonl` during training.
const METRICS_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Tensors by their checkpoint names.
type NamedTensors<T> = Vec<(String, Tensor<T>)>;

/// When the automatic checkpoint is due ([`TrainConfig::checkpoint_every`] = 0).
struct CheckpointClock {
    since: Instant,
    /// Seconds the previous checkpoint took to write.
    last_write_s: f64,
}

impl CheckpointClock {
    fn due(&self) -> bool {
        let wait = AUTO_CHECKPOINT_INTERVAL_S.max(self.last_write_s / AUTO_CHECKPOINT_IO_SHARE);
        self.since.elapsed().as_secs_f64() >= wait
    }
}

impl<T: Element, O: TrainOptimizer<T>> Trainer<T, O> {
    pub fn new(cfg: TrainConfig, opt: O) -> Self {
        Trainer {
            cfg,
            opt,
            interrupt: Arc::new(AtomicBool::new(false)),
            sink: None,
            group: crate::dist::world(),
            _t: PhantomData,
        }
    }
    /// Setting this flag (from anywhere) makes the run checkpoint and stop before its next step,
    /// exactly as a stop signal does.
    pub fn interrupt_handle(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }
    /// Sends the plain log lines to `w` instead of stderr (forces plain mode unless quiet).
    pub fn with_log_sink(mut self, w: Box<dyn Write + Send>) -> Self {
        self.sink = Some(w);
        self
    }
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    pub fn optimizer(&self) -> &O {
        &self.opt
    }
    pub fn into_optimizer(self) -> O {
        self.opt
    }

    /// Trains `model` to the configured length (or early stop / interrupt), evaluating,
    /// logging and checkpointing on the way; resumes first if `cfg.resume` is set.
    pub fn fit<M: TrainModel<T>>(&mut self, model: &mut M) -> Result<TrainSummary> {
        let cfg = self.cfg.clone();
        cfg.validate()?;
        let spe = model.steps_per_epoch();
        if spe == Some(0) {
            return Err(invalid!("the model reports 0 steps per epoch"));
        }
        let total = match (cfg.max_steps, cfg.epochs) {
            (Some(s), None) => s,
            (s, Some(e)) => {
                let spe = spe.ok_or_else(|| {
                    invalid!("training by epochs needs the model's steps_per_epoch(); use --steps")
                })?;
                let by_epochs = e * spe;
                s.map_or(by_epochs, |s| s.min(by_epochs))
            }
            (None, None) => unreachable!("validate() requires a length"),
        };
        let eval_every = if cfg.eval_every == 0 {
            spe.ok_or_else(|| {
                invalid!(
                    "evaluating per epoch needs the model's steps_per_epoch(); give --eval-every N"
                )
            })?
        } else {
            cfg.eval_every
        };
        let run_dir = cfg.out_dir.clone();
        let group = self.group;
        let root = group.rank() == 0;
        if group.size() > 1 && !model.data_parallel() {
            return Err(invalid!(
                "this model trains in one process only (it has no batch to split across ranks); \
                 run it without mpirun"
            ));
        }
        let model_config = model.config_json();
        let train_config = serde_json::to_value(&cfg)
            .map_err(|e| NablaError::Other(format!("serializing the trainer config: {e}")))?;
        // Ranks started with other flags (or data, or binary) would train different models
        // into one run folder: compared before anything else.
        group.check_same(
            "configuration",
            serde_json::json!({
                "model": model_config, "train": train_config,
                "num_params": model.params().num_elements(), "dtype": T::DTYPE,
                "nabla_version": env!("CARGO_PKG_VERSION"),
            })
            .to_string()
            .as_bytes(),
        )?;

        // Everything that can be checked before training is checked before training; the run
        // folder is rank 0's alone.
        let param_bytes = (model.params().num_elements()
            + model
                .state_tensors()
                .iter()
                .map(|(_, t)| t.numel())
                .sum::<usize>())
            * std::mem::size_of::<T>();
        let claim = || -> Result<_> {
            prepare_run_dir(&run_dir, (4 * param_bytes).min(256 << 20) as u64)?;
            // One writer per run folder, held to the end of the run; what dead writers left
            // in it is recovered or removed before anything reads it.
            let writer = claim_run_dir(&run_dir)?;
            if cfg.resume.is_none() && !cfg.overwrite && run_dir.join("checkpoint").exists() {
                return Err(invalid!(
                    "run folder {} already holds a checkpoint; pass --resume {} to continue it, \
                     --overwrite to start afresh, or another --out",
                    run_dir.display(),
                    run_dir.display()
                ));
            }
            Ok(writer)
        };
        let _writer = group.agree(if root { claim().map(Some) } else { Ok(None) })?;

        let mut notes = Vec::new();
        let resume = cfg.resume.as_ref().filter(|_| root);
        let run = match resume {
            None => Ok(Run {
                st: CheckpointState {
                    format: CHECKPOINT_FORMAT.into(),
                    step: 0,
                    epoch: spe.map(|_| 0.0),
                    optimizer_step: self.opt.step_count(),
                    base_lr: self.opt.lr(),
                    lr: self.opt.lr(),
                    rng: cfg.train_rng().state(),
                    wall_time_s: 0.0,
                    items_total: 0,
                    model_config: model_config.clone(),
                    train_config: train_config.clone(),
                    metrics: Vec::new(),
                    best: None,
                    evals_without_improvement: 0,
                    interval: IntervalState::default(),
                },
                last_ckpt: None,
                pending_best: None,
                metrics_written: None,
                metrics_dirty: false,
                events: None,
            }),
            Some(dir) => self
                .restore(model, dir, &model_config, &train_config, &mut notes)
                .and_then(|run| {
                    if run.st.step > total {
                        return Err(invalid!(
                            "the checkpoint in {} is at step {}, beyond this run's {total} steps",
                            dir.display(),
                            run.st.step
                        ));
                    }
                    Ok(run)
                }),
        };
        let mut run = group.agree(run)?;
        if group.size() > 1 {
            self.sync_from_root(model, &mut run)?;
        }
        let config_json = serde_json::json!({
            "model": model_config,
            "train": train_config,
            "num_params": model.params().num_elements(),
            "dtype": T::DTYPE,
            "threads": rayon::current_num_threads(),
            "total_steps": total,
            "steps_per_epoch": spe,
            "nabla_version": env!("CARGO_PKG_VERSION"),
        });
        if root {
            atomic_write(
                run_dir.join("config.json"),
                &serde_json::to_vec_pretty(&config_json).expect("json values serialize"),
            )?;
        }
        run.metrics_dirty = true;
        self.flush_metrics(&mut run, true)?;
        // Rank 0 alone writes the run folder, the events file with it.
        if root {
            run.events = Some(EventWriter::start(
                &run_dir,
                cfg.resume.as_ref().map(|_| run.st.step),
                &run.st.metrics,
                &run.st.interval.logged,
                run.st.wall_time_s,
            )?);
        }
        if cfg.handle_signals {
            if let Err(e) = install_stop_handlers() {
                notes.push(format!(
                    "{e}; SIGINT/SIGTERM/SIGHUP will not save a checkpoint"
                ));
            }
        }

        // Progress from rank 0 only.
        let mode = if root {
            cfg.progress
        } else {
            ProgressMode::Quiet
        };
        let mut progress = Progress::new(mode, self.sink.take(), total, run.st.step);
        for n in &notes {
            progress.line(&format!("note {n}"));
        }
        let result = self.train_loop(model, &cfg, &mut run, &mut progress, total, eval_every, spe);
        progress.finish();
        if result.is_err() {
            // The best weights so far are good whatever stopped the run.
            if let Err(e) = self.write_pending_best(&mut run) {
                progress.line(&format!("note best/ not written: {e}"));
            }
            if let Err(e) = self.flush_metrics(&mut run, true) {
                progress.line(&format!("note metrics.jsonl not written: {e}"));
            }
        } else {
            self.flush_metrics(&mut run, true)?;
        }
        let outcome = result?;
        // The test split, once, on the selected weights — only when the run is finished.
        let test = match outcome {
            Outcome::Interrupted => None,
            _ if !root => None,
            _ => super::final_test::evaluate_selected(
                model,
                &run_dir,
                run.st.best.as_ref(),
                run.st.step,
            )?,
        };
        if let (Some(t), Some(ev)) = (&test, &mut run.events) {
            ev.test(t)?;
        }

        let plot = match cfg.plot {
            PlotFormat::None => None,
            _ if !root => None,
            f if !run.st.metrics.is_empty() => {
                let ext = if f == PlotFormat::Png { "png" } else { "svg" };
                let p = run_dir.join(format!("metrics.{ext}"));
                match super::plot::plot_metrics(&run.st.metrics, &p) {
                    Ok(()) => Some(p),
                    Err(e) => {
                        progress.line(&format!("note plot not written: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        let signal = match outcome {
            Outcome::Interrupted if cfg.handle_signals => stop_signal(),
            _ => None,
        };
        let checkpoint = run
            .last_ckpt
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| run_dir.join("checkpoint"));
        Ok(TrainSummary {
            outcome,
            step: run.st.step,
            total_steps: total,
            last: run.st.metrics.last().cloned(),
            best: run.st.best.clone(),
            run_dir,
            checkpoint,
            plot,
            wall_time_s: run.st.wall_time_s,
            signal,
            test,
        })
    }

    fn restore<M: TrainModel<T>>(
        &mut self,
        model: &mut M,
        dir: &Path,
        model_config: &serde_json::Value,
        train_config: &serde_json::Value,
        notes: &mut Vec<String>,
    ) -> Result<Run<T>> {
        let cdir = checkpoint_dir(dir)?;
        let mut st = load_checkpoint_state(&cdir)?;
        if &st.model_config != model_config {
            return Err(invalid!(
                "cannot resume {}: it was trained with model config {}, this run has {}",
                dir.display(),
                st.model_config,
                model_config
            ));
        }
        let tensors = load_tensors::<T>(&cdir, MODEL_FILE, st.step)?;
        super::final_test::load_weights(model, tensors, &cdir.join(MODEL_FILE))?;
        let opt_tensors = load_tensors::<T>(&cdir, OPTIM_FILE, st.step)?;
        self.opt
            .load_state_tensors(&opt_tensors, st.optimizer_step)?;
        self.opt.set_lr(st.lr);
        let changed = changed_fields(&st.train_config, train_config);
        if !changed.is_empty() {
            notes.push(format!(
                "resuming with changed trainer settings: {}",
                changed.join(", ")
            ));
        }
        st.train_config = train_config.clone();
        notes.push(format!(
            "resumed from {} at step {}",
            cdir.display(),
            st.step
        ));
        Ok(Run {
            last_ckpt: Some((cdir, st.step)),
            st,
            pending_best: None,
            metrics_written: None,
            metrics_dirty: false,
            events: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn train_loop<M: TrainModel<T>>(
        &mut self,
        model: &mut M,
        cfg: &TrainConfig,
        run: &mut Run<T>,
        progress: &mut Progress,
        total: u64,
        eval_every: u64,
        spe: Option<u64>,
    ) -> Result<Outcome> {
        let mut rng = Rng::from_state(run.st.rng);
        let session = Instant::now();
        let wall_base = run.st.wall_time_s;
        let (mut log_t, mut log_items) = (Instant::now(), 0u64);
        let session_start_step = run.st.step;
        let epoch_of = |s: u64| spe.map(|e| s as f64 / e as f64);
        let mut clock = CheckpointClock {
            since: Instant::now(),
            last_write_s: 0.0,
        };
        // Seconds to the end: from the pace of this session, or the time limit when sooner (a
        // time-limited run ends at its limit, not at --steps).
        let eta = |step: u64, now: f64| {
            let done = (step - session_start_step).max(1) as f64;
            let by_steps = now / done * (total - step) as f64;
            cfg.time_limit_s
                .map_or(by_steps, |l| by_steps.min((l - now).max(0.0)))
        };

        while run.st.step < total {
            let stop = if self.interrupt.swap(false, Ordering::SeqCst) {
                Some((Outcome::Interrupted, "interrupted".to_string()))
            } else if let Some(sig) = stop_signal().filter(|_| cfg.handle_signals) {
                Some((Outcome::Interrupted, format!("stopped by {}", sig.name())))
            } else {
                cfg.time_limit_s
                    .filter(|&l| session.elapsed().as_secs_f64() >= l)
                    .map(|l| {
                        (
                            Outcome::TimeLimit,
                            format!("time limit of {} reached", fmt_duration(l)),
                        )
                    })
            };
            // Rank 0 decides for all (the ranks' clocks and signals differ).
            let stop = match self.group.size() {
                1 => stop,
                _ => {
                    let code = self.group.broadcast_u64(stop_code(stop.as_ref()))?;
                    stop.or_else(|| stop_of_code(code))
                }
            };
            if let Some((outcome, why)) = stop {
                if self.group.rank() != 0 {
                    return Ok(outcome);
                }
                run.st.wall_time_s = wall_base + session.elapsed().as_secs_f64();
                let p = self.save(model, run, &rng)?;
                progress.notice(&format!(
                    "note {why} at step {}/{total}: checkpoint saved to {}; continue with --resume {}",
                    run.st.step,
                    p.display(),
                    cfg.out_dir.display()
                ));
                return Ok(outcome);
            }
            let s = run.st.step;
            crate::dist::fault_point(s);
            let t0 = Instant::now();
            model.params_mut().zero_grad();
            let out: StepOutput = model.train_step_shard(s, &mut rng, self.group)?;
            if !out.loss.is_finite() {
                return Err(non_finite(
                    format!("training loss {}", out.loss),
                    s,
                    spe,
                    run,
                    cfg,
                ));
            }
            // Norm before clipping; clipping leaves non-finite gradients untouched.
            let gn = match cfg.clip_grad_norm {
                Some(max) => clip_grad_norm(model.params_mut(), max),
                None => model.params().grad_norm(),
            };
            if !gn.is_finite() {
                let bad = model
                    .params()
                    .iter()
                    .filter(|p| !p.grad.all_finite())
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>();
                return Err(non_finite(
                    format!("gradient norm {gn} (in {})", bad.join(", ")),
                    s,
                    spe,
                    run,
                    cfg,
                ));
            }
            let lr = cfg.schedule.lr(run.st.base_lr, s, total, cfg.warmup_steps);
            self.opt.set_lr(lr);
            self.opt.step(model.params_mut())?;

            let st = &mut run.st;
            st.step += 1;
            st.lr = lr;
            st.optimizer_step = self.opt.step_count();
            st.epoch = epoch_of(st.step);
            st.items_total += out.items as u64;
            let iv = &mut st.interval;
            iv.loss_sum += out.loss * out.items as f64;
            iv.items += out.items as u64;
            iv.log_loss_sum += out.loss * out.items as f64;
            iv.log_items += out.items as u64;
            iv.steps += 1;
            iv.grad_norm_sum += gn;
            for (k, v) in &out.metrics {
                *iv.metric_sums.entry(k.clone()).or_insert(0.0) += v * out.items as f64;
            }
            iv.wall_s += t0.elapsed().as_secs_f64();
            log_items += out.items as u64;

            let step = st.step;
            let items_per_s = iv.items as f64 / iv.wall_s.max(1e-9);
            progress.tick(step, || {
                bar_message(
                    out.loss,
                    &cfg.monitor,
                    st.metrics.last(),
                    items_per_s,
                    eta(step, session.elapsed().as_secs_f64()),
                )
            });
            if step.is_multiple_of(cfg.log_every) || step == total {
                let dt = log_t.elapsed().as_secs_f64();
                let mut fields = Vec::new();
                if let Some(e) = st.epoch {
                    fields.push(("epoch".to_string(), fmt_num(e)));
                }
                fields.push(("loss".into(), fmt_num(iv.loss_sum / iv.items.max(1) as f64)));
                fields.push(("lr".into(), fmt_num(lr)));
                fields.push(("grad_norm".into(), fmt_num(gn)));
                fields.push((
                    "items/s".into(),
                    format!("{:.0}", log_items as f64 / dt.max(1e-9)),
                ));
                let el = session.elapsed().as_secs_f64();
                fields.push(("elapsed".into(), fmt_duration(wall_base + el)));
                fields.push(("eta".into(), fmt_duration(eta(step, el))));
                progress.train_line(&format_log_line("train", step, total, &fields));
                let log_mean = iv.log_loss_sum / iv.log_items.max(1) as f64;
                iv.logged.push((step, log_mean));
                if let Some(ev) = &mut run.events {
                    ev.scalars(step, &[(LOGGED_TRAIN_LOSS, log_mean)])?;
                }
                (iv.log_loss_sum, iv.log_items) = (0.0, 0);
                (log_t, log_items) = (Instant::now(), 0);
            }

            let epoch_end = spe.is_some_and(|e| step.is_multiple_of(e));
            let do_eval = step == total
                || (cfg.eval_every > 0 && step.is_multiple_of(eval_every))
                || (cfg.eval_every == 0 && epoch_end);
            // Only rank 0 evaluates: the others have the same weights and write nothing; an
            // early stop reaches them with the next step's decision.
            if do_eval && self.group.rank() == 0 {
                let metrics = model.evaluate()?;
                for (k, v) in &metrics {
                    if RESERVED.contains(&k.as_str()) {
                        return Err(invalid!(
                            "model metric name {k:?} is reserved by the trainer"
                        ));
                    }
                    if !v.is_finite() {
                        return Err(non_finite(
                            format!("validation {k} = {v}"),
                            step,
                            spe,
                            run,
                            cfg,
                        ));
                    }
                }
                let st = &mut run.st;
                st.wall_time_s = wall_base + session.elapsed().as_secs_f64();
                let iv = std::mem::take(&mut st.interval);
                let n = iv.items.max(1) as f64;
                let mut all: Metrics = iv
                    .metric_sums
                    .iter()
                    .map(|(k, v)| (k.clone(), v / n))
                    .collect();
                all.extend(metrics.clone());
                let rec = MetricsRecord {
                    step,
                    epoch: st.epoch,
                    wall_time_s: st.wall_time_s,
                    train_loss: iv.loss_sum / n,
                    lr,
                    grad_norm: iv.grad_norm_sum / iv.steps.max(1) as f64,
                    items_per_s: iv.items as f64 / iv.wall_s.max(1e-9),
                    // A single log interval ending here is `train_loss` itself.
                    logged_train_loss: match iv.logged[..] {
                        [(s, _)] if s == step => Vec::new(),
                        _ => iv.logged.clone(),
                    },
                    metrics: all,
                };
                st.metrics.push(rec.clone());
                if let Some(ev) = &mut run.events {
                    ev.record(&rec, !iv.logged.is_empty())?;
                }
                run.metrics_dirty = true;
                self.flush_metrics(run, false)?;
                let st = &mut run.st;

                let mut improved = false;
                if let Some((name, mode)) = &cfg.monitor {
                    let v = *metrics.get(name).ok_or_else(|| {
                        invalid!(
                            "monitored metric {name:?} is not among the model's evaluation metrics ({})",
                            metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                        )
                    })?;
                    let delta = cfg.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
                    improved = st
                        .best
                        .as_ref()
                        .is_none_or(|b| mode.improves(v, b.value, delta));
                    if improved {
                        st.best = Some(BestRecord {
                            metric: name.clone(),
                            value: v,
                            step,
                        });
                        st.evals_without_improvement = 0;
                    } else {
                        st.evals_without_improvement += 1;
                    }
                }
                let mut fields = Vec::new();
                if let Some(e) = st.epoch {
                    fields.push(("epoch".to_string(), fmt_num(e)));
                }
                fields.push(("train_loss".into(), fmt_num(rec.train_loss)));
                for (k, v) in &metrics {
                    fields.push((k.clone(), fmt_num(*v)));
                }
                if let Some(b) = &st.best {
                    fields.push((
                        "best".into(),
                        format!("{}:{}@{}", b.metric, fmt_num(b.value), b.step),
                    ));
                }
                // The bar shows this evaluation at once (it is redrawn below the eval line),
                // not from the next step on.
                progress.tick(step, || {
                    bar_message(
                        out.loss,
                        &cfg.monitor,
                        Some(&rec),
                        rec.items_per_s,
                        eta(step, session.elapsed().as_secs_f64()),
                    )
                });
                progress.line(&format_log_line("eval", step, total, &fields));
                if improved {
                    run.pending_best = Some((model_tensors(model)?, {
                        let mut b = run.st.clone();
                        b.rng = rng.state();
                        b
                    }));
                }
                if let Some(es) = &cfg.early_stopping {
                    if run.st.evals_without_improvement >= es.patience {
                        self.save(model, run, &rng)?;
                        if self.group.size() > 1 && step < total {
                            self.group
                                .broadcast_u64(stop_code(Some(&(Outcome::EarlyStopped, ()))))?;
                        }
                        progress.line(&format!(
                            "note early stopping at step {step}: no improvement of {} for {} evaluations",
                            cfg.monitor.as_ref().map_or("", |m| m.0.as_str()),
                            es.patience
                        ));
                        return Ok(Outcome::EarlyStopped);
                    }
                }
            }
            let due = match cfg.checkpoint_every {
                0 => clock.due(),
                n => step.is_multiple_of(n),
            };
            if step == total || due {
                run.st.wall_time_s = wall_base + session.elapsed().as_secs_f64();
                let t = Instant::now();
                self.save(model, run, &rng)?;
                clock = CheckpointClock {
                    since: Instant::now(),
                    last_write_s: t.elapsed().as_secs_f64(),
                };
            }
        }
        Ok(Outcome::Completed)
    }

    /// Writes the pending `best/` (if any) and `checkpoint/` (optimizer state included) at the
    /// current step; returns the checkpoint folder. `best/` goes first, so the best record in
    /// every checkpoint names weights that are on disk.
    fn save<M: TrainModel<T>>(&self, model: &M, run: &mut Run<T>, rng: &Rng) -> Result<PathBuf> {
        if self.group.rank() != 0 {
            return Ok(self.cfg.out_dir.join("checkpoint"));
        }
        self.flush_metrics(run, true)?;
        self.write_pending_best(run)?;
        if let Some((p, s)) = &run.last_ckpt {
            if *s == run.st.step {
                return Ok(p.clone());
            }
        }
        run.st.rng = rng.state();
        let list = model_tensors(model)?;
        let list: Vec<(String, &Tensor<T>)> = list.iter().map(|(k, t)| (k.clone(), t)).collect();
        let opt_state = self.opt.state_tensors();
        let opt_list: Vec<(String, &Tensor<T>)> =
            opt_state.iter().map(|(k, t)| (k.clone(), t)).collect();
        let p = write_checkpoint(
            &self.cfg.out_dir,
            "checkpoint",
            &list,
            Some(opt_list.as_slice()),
            &run.st,
        )?;
        run.last_ckpt = Some((p.clone(), run.st.step));
        Ok(p)
    }

    /// Rewrites `metrics.jsonl` from the records in memory when records were added since the
    /// last write and `force` is set or [`METRICS_WRITE_INTERVAL`] has passed. Not fsynced: the
    /// durable copy of every record is in the checkpoint's state.json, from which `--resume`
    /// rewrites this file.
    fn flush_metrics(&self, run: &mut Run<T>, force: bool) -> Result<()> {
        if self.group.rank() != 0 {
            return Ok(());
        }
        let due = force
            || run
                .metrics_written
                .is_none_or(|t| t.elapsed() >= METRICS_WRITE_INTERVAL);
        if run.metrics_dirty && due {
            replace_file(
                self.cfg.out_dir.join("metrics.jsonl"),
                to_jsonl(&run.st.metrics)?.as_bytes(),
            )?;
            run.metrics_written = Some(Instant::now());
            run.metrics_dirty = false;
        }
        Ok(())
    }

    /// Writes `best/` (weights and state.json, no optimizer state) from the in-memory copy.
    fn write_pending_best(&self, run: &mut Run<T>) -> Result<()> {
        if self.group.rank() != 0 {
            return Ok(());
        }
        if let Some((tensors, st)) = run.pending_best.take() {
            let list: Vec<(String, &Tensor<T>)> =
                tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
            write_checkpoint(&self.cfg.out_dir, "best", &list, None, &st)?;
        }
        Ok(())
    }
}

impl<T: Element, O: TrainOptimizer<T>> Trainer<T, O> {
    /// Gives every rank rank 0's weights, model buffers, optimizer state and run state (the
    /// checkpoint rank 0 resumed from, or its fresh start): the ranks start alike whatever the
    /// folder they can see, and `--resume` works with any number of ranks.
    fn sync_from_root<M: TrainModel<T>>(&mut self, model: &mut M, run: &mut Run<T>) -> Result<()> {
        let root = self.group.rank() == 0;
        let (weights, optim, state) = if root {
            let list = model_tensors(model)?;
            let refs: Vec<(String, &Tensor<T>)> =
                list.iter().map(|(k, t)| (k.clone(), t)).collect();
            let opt = self.opt.state_tensors();
            let opt_refs: Vec<(String, &Tensor<T>)> =
                opt.iter().map(|(k, t)| (k.clone(), t)).collect();
            (
                crate::io::safetensors_bytes(&refs, None)?,
                crate::io::safetensors_bytes(&opt_refs, None)?,
                serde_json::to_vec(&run.st)
                    .map_err(|e| NablaError::Other(format!("serializing the run state: {e}")))?,
            )
        } else {
            Default::default()
        };
        let weights = self.group.broadcast_bytes(weights)?;
        let optim = self.group.broadcast_bytes(optim)?;
        let state = self.group.broadcast_bytes(state)?;
        if root {
            return Ok(());
        }
        let from = Path::new("<rank 0's state>");
        let st = super::checkpoint::parse_state_bytes(&state, from)?;
        super::final_test::load_weights(
            model,
            crate::io::parse_safetensors(&weights, from)?,
            from,
        )?;
        let opt_tensors = crate::io::parse_safetensors::<T>(&optim, from)?;
        if !opt_tensors.is_empty() {
            self.opt
                .load_state_tensors(&opt_tensors, st.optimizer_step)?;
        }
        self.opt.set_lr(st.lr);
        run.st = st;
        Ok(())
    }
}

/// The stop decision broadcast from rank 0 before every step: 0 = go on.
fn stop_code<W>(stop: Option<&(Outcome, W)>) -> u64 {
    match stop.map(|s| &s.0) {
        None | Some(Outcome::Completed) => 0,
        Some(Outcome::Interrupted) => 1,
        Some(Outcome::TimeLimit) => 2,
        Some(Outcome::EarlyStopped) => 3,
    }
}

fn stop_of_code(code: u64) -> Option<(Outcome, String)> {
    let o = match code {
        1 => Outcome::Interrupted,
        2 => Outcome::TimeLimit,
        3 => Outcome::EarlyStopped,
        _ => return None,
    };
    Some((o, "stopped by rank 0".into()))
}

/// Parameters and model buffers by name, as checkpoints store them.
fn model_tensors<T: Element, M: TrainModel<T>>(model: &M) -> Result<NamedTensors<T>> {
    let mut list: NamedTensors<T> = model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    for (k, t) in model.state_tensors() {
        if model.params().find(&k).is_some() {
            return Err(invalid!(
                "model state tensor {k:?} has the name of a parameter"
            ));
        }
        list.push((k, t));
    }
    Ok(list)
}

/// The bar's status: this step's loss, the latest value of the monitored metric (with its step),
/// the time left and the throughput.
fn bar_message(
    loss: f64,
    monitor: &Option<(String, super::Mode)>,
    last_eval: Option<&MetricsRecord>,
    items_per_s: f64,
    eta_s: f64,
) -> String {
    let mut m = format!("loss {}", fmt_num(loss));
    if let (Some((name, _)), Some(r)) = (monitor, last_eval) {
        if let Some(v) = r.metrics.get(name) {
            m.push_str(&format!(" {name} {} (step {})", fmt_num(*v), r.step));
        }
    }
    // The time left before the throughput: a narrow terminal cuts the bar's end off.
    m.push_str(&format!(
        " eta {} {items_per_s:.0} items/s",
        fmt_duration(eta_s)
    ));
    m
}

fn non_finite<T: Element>(
    what: String,
    step: u64,
    spe: Option<u64>,
    run: &Run<T>,
    cfg: &TrainConfig,
) -> NablaError {
    let epoch = spe.map_or(String::new(), |e| format!(" (epoch {})", step / e));
    let last = match &run.last_ckpt {
        Some((p, s)) => format!(
            "last good checkpoint: {} (step {s}); continue from it with --resume {} \
             (e.g. with a lower learning rate or --clip-grad-norm)",
            p.display(),
            cfg.out_dir.display()
        ),
        None => "no checkpoint was written before this step".to_string(),
    };
    NablaError::NonFinite(format!(
        "{what} at step {step}{epoch}; training stopped; {last}"
    ))
}

/// Creates the run folder and proves it can hold a checkpoint by writing (and removing) a probe
/// of `probe_bytes`, so an unwritable folder or a full disk fails before any training.
fn prepare_run_dir(dir: &Path, probe_bytes: u64) -> Result<()> {
    let hint = "choose another --out";
    std::fs::create_dir_all(dir).map_err(|e| {
        invalid!(
            "cannot create the run folder {}: {e}; {hint}",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".nabla-write-probe-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&probe)?;
        let chunk = vec![0u8; 1 << 20];
        let mut left = probe_bytes.max(1);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        // No fsync: the file systems nabla runs on reserve the blocks at write() (delayed
        // allocation included), so a full disk or quota shows here, and an fsync of the
        // probe would cost a short run (GCN on Cora) several percent of its wall time.
        f.flush()
    })();
    let _ = std::fs::remove_file(&probe);
    res.map_err(|e| {
        invalid!(
            "the run folder {} is not writable or the disk is full ({e}) — tried to write {} bytes; {hint}",
            dir.display(),
            probe_bytes
        )
    })
}

/// Top-level keys whose values differ, ignoring the ones that may change between sessions.
fn changed_fields(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let ignore = [
        "resume",
        "out_dir",
        "overwrite",
        "progress",
        "handle_sigint",
        "handle_signals",
        // The command's flags: a `train` command compares them itself before resuming.
        "command",
    ];
    match (old.as_object(), new.as_object()) {
        (Some(a), Some(b)) => b
            .iter()
            .filter(|(k, _)| !ignore.contains(&k.as_str()))
            .filter(|(k, v)| a.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}: {} -> {v}", a.get(k).cloned().unwrap_or_default()))
            .collect(),
        _ => Vec::new(),
    }
}
