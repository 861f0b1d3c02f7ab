//! Character-level language model: one-hot characters → Elman RNN (tanh or sigmoid, with
//! biases) → linear readout → softmax cross-entropy, trained by Williams & Peng's TBPTT(k1, k2)
//! over `batch` parallel streams of the text, with gradient-norm clipping and Adam.
//!
//! Streaming: every `k1` steps, the window of the last `k2` steps is run forward from the
//! (detached) state at its start with the current weights, and the losses of its last `k1`
//! steps are backpropagated through the whole window. The state at the next window's start is
//! taken from this window's states. Memory is O(k2·batch·hidden), whatever the text length.
//!
//! Checkpoints are one safetensors file: the weights (`rnn.W`, `rnn.U`, `rnn.V`, `rnn.b_h`,
//! `rnn.b_y`), the Adam moments (`optim.<param>.exp_avg[_sq]`), the carried state `state.h`, and
//! the whole configuration + progress as JSON in the metadata (`config.json` is a readable copy).
//! Both are written atomically.

use crate::autograd::{ParamStore, Tape};
use crate::data::text::{embedded_reber, CharCorpus, CharStreams, Vocab};
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::kernels::log_softmax_rows;
use crate::nn::rnn::{Activation, ElmanRnn, ElmanRnnConfig, ForwardState, TbpttSchedule};
use crate::ops::{cross_entropy, reshape, CrossEntropyOptions};
use crate::optim::{clip_grad_norm, Adam, AdamConfig, Optimizer};
use crate::tensor::Tensor;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything needed to rebuild the model and continue training.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CharRnnConfig {
    /// The vocabulary, as its sorted characters.
    pub vocab: String,
    pub hidden: usize,
    pub activation: Activation,
    pub k1: usize,
    pub k2: usize,
    pub batch: usize,
    pub lr: f64,
    pub clip: f64,
    pub seed: u64,
    pub val_frac: f64,
    /// `None` = the built-in Reber corpus.
    pub text: Option<String>,
    pub text_chars: usize,
}

/// Training progress saved with a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Updates done.
    pub step: u64,
    /// Text steps consumed by each stream.
    pub consumed: usize,
    /// First step of the next window (its state is `state.h`).
    pub window_start: usize,
    pub best_val_nats: Option<f64>,
}

/// The model: an [`ElmanRnn`] whose input and output are the vocabulary.
pub struct CharRnn {
    pub config: CharRnnConfig,
    pub vocab: Vocab,
    pub rnn: ElmanRnn,
    pub store: ParamStore<f32>,
}

impl CharRnn {
    pub fn new(config: CharRnnConfig) -> Result<Self> {
        let vocab = Vocab::from_chars(&config.vocab)?;
        if config.hidden == 0 {
            return Err(invalid!("--hidden must be at least 1"));
        }
        let mut store = ParamStore::new();
        let mut rng = Rng::new(config.seed);
        let rnn = ElmanRnn::new(
            &mut store,
            "rnn.",
            ElmanRnnConfig {
                input: vocab.len(),
                hidden: config.hidden,
                output: vocab.len(),
                activation: config.activation,
                bias: true,
            },
            &mut rng,
        )?;
        Ok(CharRnn {
            config,
            vocab,
            rnn,
            store,
        })
    }

    fn one_hot(&self, ids: &[usize], batch: usize) -> Tensor<f32> {
        let v = self.vocab.len();
        let mut x = vec![0f32; ids.len() * v];
        for (r, &i) in ids.iter().enumerate() {
            x[r * v + i] = 1.0;
        }
        Tensor::new(&[batch, ids.len() / batch, v], x).expect("sizes agree")
    }

    /// Forward without gradient over `ids (B·T)` from `h0 (B, H)`: logits `(B, T, V)` and states.
    pub fn forward_nograd(
        &self,
        ids: &[usize],
        batch: usize,
        h0: &Tensor<f32>,
    ) -> Result<(Tensor<f32>, ForwardState<f32>)> {
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(self.one_hot(ids, batch));
        let h = tape.constant(h0.clone());
        let out = self.rnn.forward(&mut tape, &self.store, x, Some(h), None)?;
        Ok((tape.value(out.y).clone(), (*out.states).clone()))
    }

    /// Mean cross-entropy (nats per character) of `ids` read as `batch` contiguous segments, each
    /// from a zero state, in windows of `chunk` steps carrying the state.
    pub fn evaluate(&self, ids: &[usize], batch: usize, chunk: usize) -> Result<f64> {
        if ids.len() < 2 {
            return Err(invalid!("evaluation needs at least 2 characters"));
        }
        let b = batch.clamp(1, (ids.len() - 1).max(1));
        let seg = (ids.len() - 1) / b;
        let v = self.vocab.len();
        let mut h = Tensor::zeros(&[b, self.config.hidden]);
        let (mut total, mut count) = (0.0f64, 0usize);
        let mut s = 0;
        while s < seg {
            let e = (s + chunk).min(seg);
            let mut x = Vec::with_capacity(b * (e - s));
            let mut y = Vec::with_capacity(b * (e - s));
            for r in 0..b {
                x.extend_from_slice(&ids[r * seg + s..r * seg + e]);
                y.extend_from_slice(&ids[r * seg + s + 1..r * seg + e + 1]);
            }
            let (logits, st) = self.forward_nograd(&x, b, &h)?;
            let mut lp = logits.into_data();
            log_softmax_rows(&mut lp, v);
            for (row, &t) in lp.chunks(v).zip(&y) {
                total -= row[t] as f64;
            }
            count += y.len();
            h = st.state(e - s);
            s = e;
        }
        let nats = total / count as f64;
        if !nats.is_finite() {
            return Err(NablaError::NonFinite(format!("validation loss is {nats}")));
        }
        Ok(nats)
    }

    /// Samples `len` characters after `prime` at `temperature` (0 = most likely character).
    pub fn sample(&self, prime: &str, len: usize, temperature: f64, seed: u64) -> Result<String> {
        if temperature.is_nan() || temperature < 0.0 || temperature.is_infinite() {
            return Err(invalid!(
                "--temperature must be >= 0 and finite, got {temperature}"
            ));
        }
        let mut ids = self.vocab.encode(prime)?;
        if ids.is_empty() {
            // Start from the newline when there is one, else from the first character.
            ids.push(self.vocab.id('\n').unwrap_or(0));
        }
        let v = self.vocab.len();
        let mut rng = Rng::new(seed);
        let (logits, st) =
            self.forward_nograd(&ids, 1, &Tensor::zeros(&[1, self.config.hidden]))?;
        let mut h = st.state(ids.len());
        let mut last: Vec<f32> = logits.data()[(ids.len() - 1) * v..].to_vec();
        let mut out = String::new();
        for _ in 0..len {
            let next = if temperature == 0.0 {
                (0..v)
                    .max_by(|&a, &b| last[a].total_cmp(&last[b]))
                    .unwrap_or(0)
            } else {
                let m = last.iter().copied().fold(f32::MIN, f32::max) as f64;
                let p: Vec<f64> = last
                    .iter()
                    .map(|&l| ((l as f64 - m) / temperature).exp())
                    .collect();
                let mut u = rng.uniform() * p.iter().sum::<f64>();
                let mut k = v - 1;
                for (i, &pi) in p.iter().enumerate() {
                    if u < pi {
                        k = i;
                        break;
                    }
                    u -= pi;
                }
                k
            };
            out.push(self.vocab.char(next));
            let (lg, st) = self.forward_nograd(&[next], 1, &h)?;
            h = st.state(1);
            last = lg.into_data();
        }
        Ok(out)
    }
}

/// `nabla rnn train` flags.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Text file (UTF-8). Without it, a built-in corpus of embedded-Reber-grammar strings.
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Hidden nonlinearity: tanh, sigmoid or relu.
    #[arg(long, default_value = "tanh")]
    pub activation: String,
    /// Update every k1 steps...
    #[arg(long, default_value_t = 25)]
    pub k1: usize,
    /// ...backpropagating through the last k2 steps (k2 >= k1).
    #[arg(long, default_value_t = 25)]
    pub k2: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Number of updates (with --time-limit, whichever comes first).
    #[arg(long, default_value_t = 2000)]
    pub steps: u64,
    /// Stop after this many seconds of training (0 = no limit).
    #[arg(long, default_value_t = 0.0)]
    pub time_limit: f64,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long, default_value_t = 5.0)]
    pub clip: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the text held out (its tail) for validation.
    #[arg(long, default_value_t = 0.05)]
    pub val_frac: f64,
    /// Validate (and checkpoint) every this many updates.
    #[arg(long, default_value_t = 200)]
    pub eval_every: u64,
    /// Output folder: checkpoint.safetensors, config.json, metrics.jsonl.
    #[arg(long, default_value = "char-rnn")]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
}

/// `nabla rnn sample` flags.
#[derive(Args, Debug, Clone)]
pub struct SampleArgs {
    /// checkpoint.safetensors written by `nabla rnn train` (or its folder).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    pub prime: String,
    #[arg(long, default_value_t = 500)]
    pub len: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

const META_CONFIG: &str = "char_rnn_config";
const META_PROGRESS: &str = "char_rnn_progress";

fn json_err(e: serde_json::Error) -> NablaError {
    NablaError::Other(format!("JSON: {e}"))
}

/// Writes the checkpoint (weights, Adam state, carried state, config + progress) atomically.
pub fn save_checkpoint(
    dir: &Path,
    m: &CharRnn,
    opt: &Adam<f32>,
    h: &Tensor<f32>,
    p: &Progress,
) -> Result<()> {
    let cfg = serde_json::to_string(&m.config).map_err(json_err)?;
    let prog = serde_json::to_string(p).map_err(json_err)?;
    let opt_state = opt.state_tensors();
    let mut list: Vec<(String, &Tensor<f32>)> =
        m.store.iter().map(|q| (q.name.clone(), &q.value)).collect();
    for (n, t) in &opt_state {
        list.push((format!("optim.{n}"), t));
    }
    list.push(("state.h".into(), h));
    let meta = HashMap::from([
        (META_CONFIG.to_string(), cfg.clone()),
        (META_PROGRESS.to_string(), prog),
        ("optim_steps".to_string(), opt.step_count().to_string()),
    ]);
    crate::io::save_safetensors(dir.join("checkpoint.safetensors"), &list, Some(meta))?;
    let pretty =
        serde_json::to_string_pretty(&serde_json::json!({"config": m.config, "progress": p}))
            .map_err(json_err)?;
    crate::io::atomic_write(dir.join("config.json"), pretty.as_bytes())
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub model: CharRnn,
    pub progress: Progress,
    pub optim_state: BTreeMap<String, Tensor<f32>>,
    pub optim_steps: u64,
    pub h: Tensor<f32>,
}

/// Loads `path` (a checkpoint.safetensors or its folder), checking every tensor.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let file = if path.is_dir() {
        path.join("checkpoint.safetensors")
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| NablaError::io(&file, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| NablaError::format(&file, format!("not a valid safetensors file: {e}")))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        md.get(k).ok_or_else(|| {
            NablaError::format(
                &file,
                format!("no {k:?} in the metadata: not a `nabla rnn train` checkpoint"),
            )
        })
    };
    let config: CharRnnConfig = serde_json::from_str(get(META_CONFIG)?)
        .map_err(|e| NablaError::format(&file, format!("bad {META_CONFIG}: {e}")))?;
    let progress: Progress = serde_json::from_str(get(META_PROGRESS)?)
        .map_err(|e| NablaError::format(&file, format!("bad {META_PROGRESS}: {e}")))?;
    let optim_steps: u64 = get("optim_steps")?
        .parse()
        .map_err(|e| NablaError::format(&file, format!("bad optim_steps: {e}")))?;
    let tensors = crate::io::parse_safetensors::<f32>(&bytes, &file)?;
    let mut model = CharRnn::new(config)?;
    for p in model.store.iter_mut() {
        let t = crate::io::take(&tensors, &p.name, &file)?;
        if t.shape() != p.value.shape() {
            return Err(NablaError::format(
                &file,
                format!(
                    "tensor {} has shape {:?}, the model expects {:?}",
                    p.name,
                    t.shape(),
                    p.value.shape()
                ),
            ));
        }
        t.check_finite(&format!("{} in {}", p.name, file.display()))?;
        p.value = t.clone();
    }
    let h = crate::io::take(&tensors, "state.h", &file)?.clone();
    if h.shape() != [model.config.batch, model.config.hidden] {
        return Err(NablaError::format(
            &file,
            format!("state.h has shape {:?}", h.shape()),
        ));
    }
    let optim_state = tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("optim.").map(|n| (n.to_string(), t.clone())))
        .collect();
    Ok(Checkpoint {
        model,
        progress,
        optim_state,
        optim_steps,
        h,
    })
}

/// Result of a training run.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub steps: u64,
    pub seconds: f64,
    pub train_loss: f64,
    pub val_nats: Option<f64>,
    pub val_bpc: Option<f64>,
    pub tokens_per_s: f64,
    /// Floats held by the window's forward state: `(k2 + 1)·batch·hidden` at most.
    pub peak_state_floats: usize,
}

fn load_text(a: &TrainArgs) -> Result<(String, Option<String>)> {
    match &a.text {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| NablaError::io(p, e))?;
            Ok((t, Some(p.display().to_string())))
        }
        None => Ok((embedded_reber(4000, &mut Rng::new(a.seed ^ 0x5EB)), None)),
    }
}

/// Trains per the flags, prints progress, writes checkpoints and metrics; returns the summary.
pub fn train(a: &TrainArgs) -> Result<TrainReport> {
    let sched = TbpttSchedule::new(a.k1, a.k2)?;
    if a.batch == 0 {
        return Err(invalid!("--batch must be at least 1"));
    }
    if a.clip.is_nan() || a.clip <= 0.0 {
        return Err(invalid!("--clip must be positive, got {}", a.clip));
    }
    if a.eval_every == 0 {
        return Err(invalid!("--eval-every must be at least 1"));
    }
    let activation = Activation::parse(&a.activation)?;
    let (text, text_name) = load_text(a)?;
    let corpus = CharCorpus::new(&text, a.val_frac)?;
    std::fs::create_dir_all(&a.out).map_err(|e| NablaError::io(&a.out, e))?;

    let (mut model, mut opt, mut h, mut prog) = if a.resume {
        let ck = load_checkpoint(&a.out)?;
        if ck.model.config.vocab != corpus.vocab.as_string()
            || ck.model.config.text_chars != text.chars().count()
        {
            return Err(invalid!(
                "--resume: the checkpoint in {} was trained on another text ({} characters, vocabulary of {}), this one has {} characters and {}",
                a.out.display(),
                ck.model.config.text_chars,
                ck.model.config.vocab.chars().count(),
                text.chars().count(),
                corpus.vocab.len()
            ));
        }
        let mut opt = Adam::new(AdamConfig::new(ck.model.config.lr))?;
        opt.load_state_tensors(&ck.optim_state, ck.optim_steps)?;
        (ck.model, opt, ck.h, ck.progress)
    } else {
        let config = CharRnnConfig {
            vocab: corpus.vocab.as_string(),
            hidden: a.hidden,
            activation,
            k1: a.k1,
            k2: a.k2,
            batch: a.batch,
            lr: a.lr,
            clip: a.clip,
            seed: a.seed,
            val_frac: a.val_frac,
            text: text_name,
            text_chars: text.chars().count(),
        };
        let model = CharRnn::new(config)?;
        let h = Tensor::zeros(&[a.batch, a.hidden]);
        let opt = Adam::new(AdamConfig::new(a.lr))?;
        let p = Progress {
            step: 0,
            consumed: 0,
            window_start: 0,
            best_val_nats: None,
        };
        (model, opt, h, p)
    };
    let cfg = model.config.clone();
    let sched = if a.resume {
        TbpttSchedule::new(cfg.k1, cfg.k2)?
    } else {
        sched
    };
    let streams = CharStreams::new(corpus.train.len(), cfg.batch)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(a.out.join("metrics.jsonl"))
        .map_err(|e| NablaError::io(a.out.join("metrics.jsonl"), e))?;

    let total = a.steps;
    let bar = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("static template"),
        );
        pb.set_position(prog.step.min(total));
        Some(pb)
    } else {
        None
    };
    let t0 = Instant::now();
    let mut tokens = 0usize;
    let mut peak = 0usize;
    let (mut run_loss, mut run_n) = (0.0f64, 0usize);
    let mut last_train = f64::NAN;
    let mut last_val: Option<f64> = None;
    let v = corpus.vocab.len();
    while prog.step < total && !(a.time_limit > 0.0 && t0.elapsed().as_secs_f64() >= a.time_limit) {
        let end = prog.consumed + sched.k1;
        let win = sched.window_ending(end, prog.consumed);
        debug_assert_eq!(win.start, prog.window_start);
        let len = win.end - win.start;
        let (xi, yi) = streams.window(&corpus.train, win.start, win.end);
        // Only the last k1 steps' losses are new; earlier ones were counted by earlier updates.
        let mask: Vec<bool> = (0..cfg.batch * len)
            .map(|r| win.start + r % len >= win.loss_from)
            .collect();
        let mut tape = Tape::<f32>::new();
        let x = tape.constant(model.one_hot(&xi, cfg.batch));
        let h0 = tape.constant(h.clone());
        let out = model
            .rnn
            .forward(&mut tape, &model.store, x, Some(h0), None)?;
        peak = peak.max(out.states.hs.len());
        let logits = reshape(&mut tape, out.y, &[cfg.batch * len, v])?;
        let loss = cross_entropy(
            &mut tape,
            logits,
            &yi,
            &CrossEntropyOptions {
                mask: Some(mask),
                ..Default::default()
            },
        )?;
        let lv = tape.value(loss).item() as f64;
        if !lv.is_finite() {
            return Err(NablaError::NonFinite(format!(
                "training loss is {lv} at update {} (try a smaller --lr or --clip)",
                prog.step + 1
            )));
        }
        tape.backward(loss)?;
        model.store.zero_grad();
        tape.accumulate_grads(&mut model.store)?;
        let gn = clip_grad_norm(&mut model.store, cfg.clip);
        if !gn.is_finite() {
            return Err(NablaError::NonFinite(format!(
                "gradient norm is {gn} at update {}",
                prog.step + 1
            )));
        }
        opt.step(&mut model.store)?;
        // The next window starts k2 − k1 steps before the next update's end.
        let next = sched.window_ending(end + sched.k1, end);
        h = out.states.state(next.start - win.start);
        prog.window_start = next.start;
        prog.consumed = end;
        prog.step += 1;
        tokens += cfg.batch * sched.k1;
        run_loss += lv;
        run_n += 1;

        let final_step = prog.step == total
            || (a.time_limit > 0.0 && t0.elapsed().as_secs_f64() >= a.time_limit);
        if prog.step % a.eval_every == 0 || final_step {
            last_train = run_loss / run_n as f64;
            (run_loss, run_n) = (0.0, 0);
            let val = if corpus.val.len() >= 2 {
                Some(model.evaluate(&corpus.val, cfg.batch, 256)?)
            } else {
                None
            };
            last_val = val;
            if let Some(vn) = val {
                prog.best_val_nats = Some(prog.best_val_nats.map_or(vn, |b| b.min(vn)));
            }
            let el = t0.elapsed().as_secs_f64();
            let rec = serde_json::json!({
                "step": prog.step, "train_nats": last_train,
                "val_nats": val, "val_bpc": val.map(|x| x / std::f64::consts::LN_2),
                "tokens_per_s": tokens as f64 / el, "elapsed_s": el, "grad_norm": gn,
            });
            writeln!(metrics, "{rec}")
                .map_err(|e| NablaError::io(a.out.join("metrics.jsonl"), e))?;
            save_checkpoint(&a.out, &model, &opt, &h, &prog)?;
            let line = format!(
                "step {}/{} train {:.4} nats, val {} , {:.0} tok/s",
                prog.step,
                total,
                last_train,
                val.map(|x| format!("{x:.4} nats = {:.4} bits/char", x / std::f64::consts::LN_2))
                    .unwrap_or_else(|| "-".into()),
                tokens as f64 / el
            );
            match &bar {
                Some(pb) => pb.println(line),
                None => eprintln!("{line}"),
            }
        }
        if let Some(pb) = &bar {
            pb.set_position(prog.step);
            pb.set_message(format!(
                "loss {lv:.3} | {:.0} tok/s",
                tokens as f64 / t0.elapsed().as_secs_f64()
            ));
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(TrainReport {
        steps: prog.step,
        seconds: secs,
        train_loss: last_train,
        val_nats: last_val,
        val_bpc: last_val.map(|x| x / std::f64::consts::LN_2),
        tokens_per_s: tokens as f64 / secs.max(1e-9),
        peak_state_floats: peak,
    })
}

pub fn train_cli(a: &TrainArgs) -> Result<()> {
    let r = train(a)?;
    println!("{}", serde_json::to_string(&r).map_err(json_err)?);
    Ok(())
}

pub fn sample_cli(a: &SampleArgs) -> Result<()> {
    let ck = load_checkpoint(&a.checkpoint)?;
    let s = ck.model.sample(&a.prime, a.len, a.temperature, a.seed)?;
    println!("{}{}", a.prime, s);
    Ok(())
}
