//! The training loop.

use super::checkpoint::{
    checkpoint_dir, load_checkpoint_state, load_tensors, write_checkpoint, BestRecord,
    CheckpointState, IntervalState, CHECKPOINT_FORMAT, MODEL_FILE, OPTIM_FILE,
};
use super::config::{PlotFormat, TrainConfig};
use super::metrics::{to_jsonl, MetricsRecord, RESERVED};
use super::progress::{fmt_duration, fmt_num, format_log_line, Progress};
use super::{Metrics, StepOutput, TrainModel, TrainOptimizer};
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::io::atomic_write;
use crate::optim::clip_grad_norm;
use crate::tensor::{Element, Tensor};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// How a run ended (errors — non-finite values, I/O — are `Err` instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the configured number of steps/epochs.
    Completed,
    /// The monitored metric stopped improving for `patience` evaluations.
    EarlyStopped,
    /// Ctrl-C or [`Trainer::interrupt_handle`]: a checkpoint was saved; `--resume` continues.
    Interrupted,
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
}

impl TrainSummary {
    /// A few human-readable lines for the end of a `train` command.
    pub fn describe(&self) -> String {
        let what = match self.outcome {
            Outcome::Completed => "finished".to_string(),
            Outcome::EarlyStopped => "stopped early (no improvement)".to_string(),
            Outcome::Interrupted => format!(
                "interrupted; resume with --resume {}",
                self.run_dir.display()
            ),
        };
        let mut s = format!(
            "{what} at step {}/{} after {}; checkpoint: {}",
            self.step,
            self.total_steps,
            fmt_duration(self.wall_time_s),
            self.checkpoint.display()
        );
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
        if let Some(p) = &self.plot {
            s.push_str(&format!("\nplot: {}", p.display()));
        }
        s
    }
}

static SIGINT: AtomicBool = AtomicBool::new(false);
static HANDLER: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Installs (once per process) the Ctrl-C handler: the first SIGINT asks running trainers to
/// checkpoint and return [`Outcome::Interrupted`]; a second one exits at once with status 130.
pub fn request_interrupt_on_sigint() -> Result<()> {
    HANDLER
        .get_or_init(|| {
            ctrlc::set_handler(|| {
                if SIGINT.swap(true, Ordering::SeqCst) {
                    eprintln!("second Ctrl-C: exiting without a checkpoint");
                    std::process::exit(130);
                }
            })
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| NablaError::Other(format!("cannot install the Ctrl-C handler: {e}")))
}

/// Trains a [`TrainModel`] with an optimizer; see the [module docs](super) for an example.
pub struct Trainer<T: Element, O: TrainOptimizer<T>> {
    cfg: TrainConfig,
    opt: O,
    interrupt: Arc<AtomicBool>,
    sink: Option<Box<dyn Write + Send>>,
    _t: PhantomData<T>,
}

/// Mutable state of a run between steps.
struct Run {
    st: CheckpointState,
    last_ckpt: Option<(PathBuf, u64)>,
}

impl<T: Element, O: TrainOptimizer<T>> Trainer<T, O> {
    pub fn new(cfg: TrainConfig, opt: O) -> Self {
        Trainer {
            cfg,
            opt,
            interrupt: Arc::new(AtomicBool::new(false)),
            sink: None,
            _t: PhantomData,
        }
    }
    /// Setting this flag (from anywhere) makes the run checkpoint and stop before its next step,
    /// exactly as Ctrl-C does.
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

        // Everything that can be checked before training is checked before training.
        let param_bytes = (model.params().num_elements()
            + model
                .state_tensors()
                .iter()
                .map(|(_, t)| t.numel())
                .sum::<usize>())
            * std::mem::size_of::<T>();
        prepare_run_dir(&run_dir, (4 * param_bytes).min(256 << 20) as u64)?;
        if cfg.resume.is_none() && !cfg.overwrite && run_dir.join("checkpoint").exists() {
            return Err(invalid!(
                "run folder {} already holds a checkpoint; pass --resume {} to continue it, \
                 --overwrite to start afresh, or another --out",
                run_dir.display(),
                run_dir.display()
            ));
        }
        let model_config = model.config_json();
        let train_config = serde_json::to_value(&cfg)
            .map_err(|e| NablaError::Other(format!("serializing the trainer config: {e}")))?;

        let mut notes = Vec::new();
        let mut run = match &cfg.resume {
            None => Run {
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
            },
            Some(dir) => {
                let run = self.restore(model, dir, &model_config, &train_config, &mut notes)?;
                if run.st.step > total {
                    return Err(invalid!(
                        "the checkpoint in {} is at step {}, beyond this run's {total} steps",
                        dir.display(),
                        run.st.step
                    ));
                }
                run
            }
        };
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
        atomic_write(
            run_dir.join("config.json"),
            &serde_json::to_vec_pretty(&config_json).expect("json values serialize"),
        )?;
        atomic_write(
            run_dir.join("metrics.jsonl"),
            to_jsonl(&run.st.metrics)?.as_bytes(),
        )?;
        if cfg.handle_sigint {
            if let Err(e) = request_interrupt_on_sigint() {
                notes.push(format!("{e}; Ctrl-C will not save a checkpoint"));
            }
            SIGINT.store(false, Ordering::SeqCst);
        }

        let mut progress = Progress::new(cfg.progress, self.sink.take(), total, run.st.step);
        for n in &notes {
            progress.line(&format!("note {n}"));
        }
        let result = self.train_loop(model, &cfg, &mut run, &mut progress, total, eval_every, spe);
        progress.finish();
        let outcome = result?;

        let plot = match cfg.plot {
            PlotFormat::None => None,
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
        })
    }

    fn restore<M: TrainModel<T>>(
        &mut self,
        model: &mut M,
        dir: &Path,
        model_config: &serde_json::Value,
        train_config: &serde_json::Value,
        notes: &mut Vec<String>,
    ) -> Result<Run> {
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
        let mp = cdir.join(MODEL_FILE);
        for p in model.params_mut().iter_mut() {
            let t = crate::io::take(&tensors, &p.name, &mp)?;
            if t.shape() != p.value.shape() {
                return Err(NablaError::format(
                    &mp,
                    format!(
                        "tensor {} has shape {:?}, the model expects {:?}",
                        p.name,
                        t.shape(),
                        p.value.shape()
                    ),
                ));
            }
            p.value = t.clone();
        }
        let buffers: std::collections::BTreeMap<String, Tensor<T>> = tensors
            .into_iter()
            .filter(|(k, _)| model.params().find(k).is_none())
            .collect();
        model.load_state_tensors(&buffers)?;
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
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn train_loop<M: TrainModel<T>>(
        &mut self,
        model: &mut M,
        cfg: &TrainConfig,
        run: &mut Run,
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

        while run.st.step < total {
            if self.interrupt.load(Ordering::SeqCst)
                || (cfg.handle_sigint && SIGINT.swap(false, Ordering::SeqCst))
            {
                self.interrupt.store(false, Ordering::SeqCst);
                run.st.wall_time_s = wall_base + session.elapsed().as_secs_f64();
                let p = self.checkpoint(model, run, &rng, "checkpoint")?;
                progress.line(&format!(
                    "note interrupted at step {}: checkpoint saved to {}; continue with --resume {}",
                    run.st.step,
                    p.display(),
                    cfg.out_dir.display()
                ));
                return Ok(Outcome::Interrupted);
            }
            let s = run.st.step;
            let t0 = Instant::now();
            model.params_mut().zero_grad();
            let out: StepOutput = model.train_step(s, &mut rng)?;
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
            let eta = |now: f64| {
                let done = (step - session_start_step) as f64;
                now / done * (total - step) as f64
            };
            progress.tick(step, || {
                let mut m = format!("loss {}", fmt_num(out.loss));
                if let (Some((name, _)), Some(r)) = (&cfg.monitor, st.metrics.last()) {
                    if let Some(v) = r.metrics.get(name) {
                        m.push_str(&format!(" {name} {}", fmt_num(*v)));
                    }
                }
                m.push_str(&format!(
                    " {:.0} items/s",
                    iv.items as f64 / iv.wall_s.max(1e-9)
                ));
                m
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
                fields.push(("eta".into(), fmt_duration(eta(el))));
                progress.train_line(&format_log_line("train", step, total, &fields));
                let log_mean = iv.log_loss_sum / iv.log_items.max(1) as f64;
                iv.logged.push((step, log_mean));
                (iv.log_loss_sum, iv.log_items) = (0.0, 0);
                (log_t, log_items) = (Instant::now(), 0);
            }

            let epoch_end = spe.is_some_and(|e| step.is_multiple_of(e));
            let do_eval = step == total
                || (cfg.eval_every > 0 && step.is_multiple_of(eval_every))
                || (cfg.eval_every == 0 && epoch_end);
            if do_eval {
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
                atomic_write(
                    cfg.out_dir.join("metrics.jsonl"),
                    to_jsonl(&st.metrics)?.as_bytes(),
                )?;

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
                progress.line(&format_log_line("eval", step, total, &fields));
                if improved {
                    self.checkpoint(model, run, &rng, "best")?;
                }
                self.checkpoint(model, run, &rng, "checkpoint")?;
                if let Some(es) = &cfg.early_stopping {
                    if run.st.evals_without_improvement >= es.patience {
                        progress.line(&format!(
                            "note early stopping at step {step}: no improvement of {} for {} evaluations",
                            cfg.monitor.as_ref().map_or("", |m| m.0.as_str()),
                            es.patience
                        ));
                        return Ok(Outcome::EarlyStopped);
                    }
                }
            } else if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) {
                run.st.wall_time_s = wall_base + session.elapsed().as_secs_f64();
                self.checkpoint(model, run, &rng, "checkpoint")?;
            }
        }
        Ok(Outcome::Completed)
    }

    /// Writes `run_dir/name` (`checkpoint` with optimizer state, or `best` with weights only).
    fn checkpoint<M: TrainModel<T>>(
        &self,
        model: &M,
        run: &mut Run,
        rng: &Rng,
        name: &str,
    ) -> Result<PathBuf> {
        run.st.rng = rng.state();
        let buffers = model.state_tensors();
        let mut list: Vec<(String, &Tensor<T>)> = model
            .params()
            .iter()
            .map(|p| (p.name.clone(), &p.value))
            .collect();
        for (k, t) in &buffers {
            if model.params().find(k).is_some() {
                return Err(invalid!(
                    "model state tensor {k:?} has the name of a parameter"
                ));
            }
            list.push((k.clone(), t));
        }
        let opt_state = self.opt.state_tensors();
        let opt_list: Vec<(String, &Tensor<T>)> =
            opt_state.iter().map(|(k, t)| (k.clone(), t)).collect();
        let with_opt = name == "checkpoint";
        let p = write_checkpoint(
            &self.cfg.out_dir,
            name,
            &list,
            with_opt.then_some(opt_list.as_slice()),
            &run.st,
        )?;
        if with_opt {
            run.last_ckpt = Some((p.clone(), run.st.step));
        }
        Ok(p)
    }
}

fn non_finite(
    what: String,
    step: u64,
    spe: Option<u64>,
    run: &Run,
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
        f.sync_all()
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
