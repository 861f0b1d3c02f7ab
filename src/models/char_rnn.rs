//! Character-level language model: one-hot characters → a recurrent cell (`--cell`: the Elman
//! RNN, tanh or sigmoid, with biases and its own readout; or an LSTM / GRU with a linear readout
//! `head`, see [`crate::models::char_cell`]) → softmax cross-entropy, trained by Williams &
//! Peng's TBPTT(k1, k2) over `batch` parallel streams of the text, with gradient-norm clipping
//! and Adam.
//!
//! Streaming: every `k1` steps, the window of the last `k2` steps is run forward from the
//! (detached) state at its start with the current weights, and the losses of its last `k1`
//! steps are backpropagated through the whole window. The state at the next window's start is
//! taken from this window's states. Memory is O(k2·batch·hidden), whatever the text length.
//!
//! Training runs on the shared [`crate::train::Trainer`] through [`CharRnnTask`]: progress bar or
//! plain logs, `metrics.jsonl` (`val_loss` in nats and `val_bpc` in bits per character),
//! atomic checkpoints in `OUT/checkpoint/` (weights `rnn.W`, `rnn.U`, `rnn.V`, `rnn.b_h`,
//! `rnn.b_y` — or `rnn.weight_ih`, `rnn.weight_hh`, `rnn.bias_ih`, `rnn.bias_hh`, `head.weight`,
//! `head.bias` —, the carried state `state.h` (and the LSTM's `state.c`), the optimizer state, and
//! the [`CharRnnConfig`] as the model config in `state.json`), exact `--resume`, NaN stop,
//! SIGINT/SIGTERM/SIGHUP and `--time-limit` stops with a checkpoint, `best/` on the validation loss, and a plot at the end.

use crate::autograd::{ParamStore, Tape};
use crate::data::text::{embedded_reber, CharCorpus, CharStreams, Vocab};
use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::kernels::log_softmax_rows;
use crate::models::char_cell::{CharCell, SeqStates, StreamState};
use crate::nn::module::VarBuilder;
use crate::nn::rnn::{Activation, CellKind, TbpttSchedule};
use crate::ops::{cross_entropy, reshape, CrossEntropyOptions};
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use crate::train::{
    load_checkpoint_state, CheckpointState, Metrics, StepOutput, TrainConfig, TrainModel, Trainer,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// The test tail (after the validation part); omitted from the JSON when 0 so runs saved
    /// before it existed still resume.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_frac: f64,
    /// `None` = the built-in Reber corpus.
    pub text: Option<String>,
    pub text_chars: usize,
    /// The recurrent cell; omitted from the JSON for the Elman RNN so runs saved before it
    /// existed still resume.
    #[serde(default, skip_serializing_if = "is_elman")]
    pub cell: CellKind,
}

fn is_elman(c: &CellKind) -> bool {
    *c == CellKind::Elman
}

impl CharRnnConfig {
    /// Checks the sizes (of flags, or of a run folder's state.json as a whole) before any is
    /// used: positive, within the stated limits, and the weights within the memory available.
    pub fn validate(&self) -> Result<()> {
        for (name, v, max) in [
            ("hidden", self.hidden, 1usize << 20),
            ("batch", self.batch, 1 << 20),
            ("k1", self.k1, 1 << 24),
            ("k2", self.k2, 1 << 24),
        ] {
            if v == 0 || v > max {
                return Err(invalid!("--{name} must be in 1..={max}, got {v}"));
            }
        }
        TbpttSchedule::new(self.k1, self.k2)?;
        let v = self.vocab.chars().count().max(1) as f64;
        crate::memory::Estimate::new()
            .f32s("weights", self.num_params(v))
            .check("the character model")
    }

    /// Parameters of the model from a vocabulary of `v` characters to itself
    /// ([`CharCell::num_params`]).
    fn num_params(&self, v: f64) -> f64 {
        CharCell::num_params(self.cell, v, self.hidden as f64)
    }

    /// The memory of one TBPTT(k1, k2) update with Adam: the weights with their gradients,
    /// two moments and the `best/` copy, and the window's tape — per step and stream the
    /// one-hot input, logits, probabilities and their gradient (`4·V`), the pre-activation,
    /// state and state gradient (`3·H`).
    pub fn train_memory(&self, vocab: usize) -> crate::memory::Estimate {
        let (v, h, b) = (vocab as f64, self.hidden as f64, self.batch as f64);
        crate::memory::Estimate::new()
            .f32s("weights and optimizer state", 5.0 * self.num_params(v))
            .f32s(
                format!("the k2 = {}-step window", self.k2),
                (self.k2 as f64 + 1.0) * b * (4.0 * v + CharCell::floats_per_step(self.cell, h)),
            )
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The model: a recurrent cell ([`CharCell`]: Elman, LSTM or GRU) whose input and output are
/// the vocabulary.
pub struct CharRnn {
    pub config: CharRnnConfig,
    pub vocab: Vocab,
    pub rnn: CharCell,
    pub store: ParamStore<f32>,
}

impl CharRnn {
    pub fn new(config: CharRnnConfig) -> Result<Self> {
        config.validate()?;
        let vocab = Vocab::from_chars(&config.vocab)?;
        let mut store = ParamStore::new();
        let mut rng = Rng::new(config.seed);
        let rnn = CharCell::new(
            VarBuilder::init(&mut store, &mut rng),
            config.cell,
            vocab.len(),
            config.hidden,
            config.activation,
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

    /// Forward without gradient over `ids (B·T)` from `state`: logits `(B, T, V)` and states.
    pub fn forward_nograd(
        &self,
        ids: &[usize],
        batch: usize,
        state: &StreamState,
    ) -> Result<(Tensor<f32>, SeqStates)> {
        let mut tape = Tape::<f32>::no_grad();
        let x = tape.constant(self.one_hot(ids, batch));
        let (y, states) = self.rnn.forward(&mut tape, &self.store, x, state)?;
        Ok((tape.value(y).clone(), states))
    }
    /// The zero state of `batch` streams.
    pub fn zero_state(&self, batch: usize) -> StreamState {
        StreamState::zeros(self.config.cell, batch, self.config.hidden)
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
        let mut h = self.zero_state(b);
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
            h = st.at(e - s);
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
        let (logits, st) = self.forward_nograd(&ids, 1, &self.zero_state(1))?;
        let mut h = st.at(ids.len());
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
            h = st.at(1);
            last = lg.into_data();
        }
        Ok(out)
    }
}

/// The model and data of a training run (`nabla rnn train`'s model flags); the trainer's
/// settings (length, seed, clipping, schedule, run folder, …) are a [`TrainConfig`] and the
/// optimizer is the caller's ([`train`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CharTrainConfig {
    /// Text file (UTF-8). Without it, a built-in corpus of embedded-Reber-grammar strings
    /// (drawn from the run's seed).
    pub text: Option<PathBuf>,
    pub hidden: usize,
    /// Recurrent cell: elman, lstm or gru.
    pub cell: CellKind,
    /// Hidden nonlinearity: tanh, sigmoid or relu.
    pub activation: String,
    /// Update every k1 steps, backpropagating through the last k2 (k2 >= k1).
    pub k1: usize,
    pub k2: usize,
    /// Parallel streams of the text.
    pub batch: usize,
    /// Fraction of the text held out for validation (just before the test tail).
    pub val_frac: f64,
    /// Fraction of the text held out at its end for the test (0 = no test).
    pub test_frac: f64,
}

/// Streams per micro-batch of a training step ([`CharRnnTask`]'s `train_step_shard`): the
/// unit of parallelism across threads and ranks, fixed so that the bits of a step depend on
/// `batch` only.
pub const STREAM_CHUNK: usize = 16;

/// Names of the carried stream state in checkpoints (`state.c`: the LSTM's cell state).
const STATE_H: &str = "state.h";
const STATE_C: &str = "state.c";

/// Streaming TBPTT(k1, k2) training of a [`CharRnn`] as a [`TrainModel`] for the shared
/// [`Trainer`].
///
/// Step `s` is the update ending at text step `(s+1)·k1` of every stream: the window
/// `[max(0, (s+1)·k1 − k2), (s+1)·k1)` is run forward from the carried (detached) state at its
/// start, and only its last `k1` steps' losses are backpropagated through the whole window. The
/// window is a function of `s` alone; the state at its start is the one thing carried between
/// steps, and it is checkpointed as the model state tensor `state.h`, so `--resume` continues
/// exactly. Memory is O(k2·batch·hidden), whatever the text length.
pub struct CharRnnTask {
    pub model: CharRnn,
    pub corpus: CharCorpus,
    streams: CharStreams,
    sched: TbpttSchedule,
    /// State at the start of the next window, `(B, H)` (and the LSTM's `c`).
    pub state: StreamState,
    /// Largest window state seen, in floats: `(k2 + 1)·batch·hidden` at most.
    pub peak_state_floats: usize,
}

impl CharRnnTask {
    pub fn new(model: CharRnn, corpus: CharCorpus) -> Result<Self> {
        let c = &model.config;
        let sched = TbpttSchedule::new(c.k1, c.k2)?;
        let streams = CharStreams::new(corpus.train.len(), c.batch)?;
        let state = model.zero_state(c.batch);
        Ok(CharRnnTask {
            model,
            corpus,
            streams,
            sched,
            state,
            peak_state_floats: 0,
        })
    }
    /// Validation loss in nats per character (None if the validation part is too short).
    pub fn val_nats(&self) -> Result<Option<f64>> {
        self.nats(&self.corpus.val)
    }
    /// Mean loss in nats per character on `ids` (None for fewer than 2 characters).
    fn nats(&self, ids: &[usize]) -> Result<Option<f64>> {
        if ids.len() < 2 {
            return Ok(None);
        }
        self.model
            .evaluate(ids, self.model.config.batch, 256)
            .map(Some)
    }
}

impl TrainModel<f32> for CharRnnTask {
    fn params(&self) -> &ParamStore<f32> {
        &self.model.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.model.store
    }
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput> {
        self.train_step_shard(step, rng, crate::dist::Group::local())
    }
    fn data_parallel(&self) -> bool {
        true
    }
    /// The streams are cut into micro-batches of [`STREAM_CHUNK`] streams, each forwarded
    /// and back-propagated on its own tape (in parallel), its loss seeded with its share of
    /// the streams; rank `r` computes its contiguous share of the micro-batches and the
    /// gradients, losses and carried states are combined in micro-batch order
    /// ([`crate::dist`]), so the bits depend on `batch`, not on the rank or thread count.
    fn train_step_shard(
        &mut self,
        step: u64,
        _rng: &mut Rng,
        group: crate::dist::Group,
    ) -> Result<StepOutput> {
        use rayon::prelude::*;
        let cfg = &self.model.config;
        let (batch, k1, hidden) = (cfg.batch, self.sched.k1, cfg.hidden);
        let consumed = step as usize * k1;
        let end = consumed + k1;
        let win = self.sched.window_ending(end, consumed);
        let len = win.end - win.start;
        // Stream r's inputs and targets are xi[r·len..(r+1)·len] (and yi's).
        let (xi, yi) = self.streams.window(&self.corpus.train, win.start, win.end);
        // The next window starts k2 − k1 steps before the next update's end.
        let next = self.sched.window_ending(end + k1, end);
        let chunks: Vec<(usize, usize)> = (0..batch)
            .step_by(STREAM_CHUNK)
            .map(|s| (s, (s + STREAM_CHUNK).min(batch)))
            .collect();
        let rows = |t: &Tensor<f32>, s: usize, e: usize| {
            Tensor::new(&[e - s, hidden], t.data()[s * hidden..e * hidden].to_vec())
        };
        let model = &self.model;
        let state = &self.state;
        let v = model.vocab.len();
        let parts = chunks[group.share(chunks.len())]
            .par_iter()
            .map(|&(s, e)| -> Result<_> {
                let nb = e - s;
                let st = StreamState {
                    h: rows(&state.h, s, e)?,
                    c: state.c.as_ref().map(|c| rows(c, s, e)).transpose()?,
                };
                // Only the last k1 steps' losses are new; earlier ones were counted by
                // earlier updates.
                let mask: Vec<bool> = (0..nb * len)
                    .map(|r| win.start + r % len >= win.loss_from)
                    .collect();
                let mut tape = Tape::<f32>::new();
                let x = tape.constant(model.one_hot(&xi[s * len..e * len], nb));
                let (y, states) = model.rnn.forward(&mut tape, &model.store, x, &st)?;
                let logits = reshape(&mut tape, y, &[nb * len, v])?; // (nb·len, V)
                let loss = cross_entropy(
                    &mut tape,
                    logits,
                    &yi[s * len..e * len],
                    &CrossEntropyOptions {
                        mask: Some(mask),
                        ..Default::default()
                    },
                )?;
                let share = nb as f64 / batch as f64;
                let lv = tape.value(loss).item() as f64 * share;
                // A non-finite loss stops the run (the trainer reports it): no backward.
                if lv.is_finite() {
                    let seed = Tensor::full(tape.shape(loss), share as f32);
                    tape.backward_with(loss, seed)?;
                }
                let carried = states.at(next.start - win.start);
                let mut scalars = vec![lv];
                scalars.extend(carried.h.data().iter().map(|&x| x as f64));
                if let Some(c) = &carried.c {
                    scalars.extend(c.data().iter().map(|&x| x as f64));
                }
                Ok((scalars, tape.take_param_grads(), states.floats()))
            })
            .collect::<Result<Vec<_>>>()?;
        self.peak_state_floats = self.peak_state_floats.max(parts.iter().map(|p| p.2).sum());
        let local: Vec<f64> = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
        let all = group.gather_f64(&local)?;
        // Per micro-batch, in order: its loss share, then its carried h (and c) rows.
        let has_c = self.state.c.is_some();
        let (mut loss, mut at) = (0.0f64, 0);
        let mut h = Vec::with_capacity(batch * hidden);
        let mut c = Vec::with_capacity(if has_c { batch * hidden } else { 0 });
        for &(s, e) in &chunks {
            let n = (e - s) * hidden;
            loss += all[at];
            h.extend(all[at + 1..at + 1 + n].iter().map(|&x| x as f32));
            at += 1 + n;
            if has_c {
                c.extend(all[at..at + n].iter().map(|&x| x as f32));
                at += n;
            }
        }
        if !loss.is_finite() {
            // The trainer stops on it (with the step and the last good checkpoint).
            return Ok(StepOutput::new(loss, batch * k1));
        }
        group.sum_grads(
            &mut self.model.store,
            parts.into_iter().map(|p| p.1).collect(),
        )?;
        self.state = StreamState {
            h: Tensor::new(&[batch, hidden], h)?,
            c: has_c
                .then(|| Tensor::new(&[batch, hidden], c))
                .transpose()?,
        };
        Ok(StepOutput::new(loss, batch * k1))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let mut m = Metrics::new();
        if let Some(v) = self.val_nats()? {
            m.insert("val_loss".into(), v);
            m.insert("val_bpc".into(), v / std::f64::consts::LN_2);
        }
        Ok(m)
    }
    fn test(&mut self) -> Result<Option<Metrics>> {
        Ok(self.nats(&self.corpus.test)?.map(|v| {
            let mut m = Metrics::new();
            m.insert("test_loss".into(), v);
            m.insert("test_bpc".into(), v / std::f64::consts::LN_2);
            m
        }))
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.model.config).expect("the config serializes")
    }
    fn state_tensors(&self) -> Vec<(String, Tensor<f32>)> {
        let mut v = vec![(STATE_H.into(), self.state.h.clone())];
        v.extend(self.state.c.clone().map(|c| (STATE_C.into(), c)));
        v
    }
    fn load_state_tensors(&mut self, tensors: &BTreeMap<String, Tensor<f32>>) -> Result<()> {
        self.state = stream_state(tensors, &self.model.config)?;
        Ok(())
    }
}

fn check_state(name: &str, h: &Tensor<f32>, c: &CharRnnConfig) -> Result<()> {
    if h.shape() != [c.batch, c.hidden] {
        return Err(invalid!(
            "{name} has shape {:?}, expected (batch, hidden) = [{}, {}]",
            h.shape(),
            c.batch,
            c.hidden
        ));
    }
    h.check_finite(name)
}

/// The carried state from a checkpoint's tensors: `state.h`, and `state.c` for the LSTM.
fn stream_state(tensors: &BTreeMap<String, Tensor<f32>>, c: &CharRnnConfig) -> Result<StreamState> {
    let get = |name: &str| -> Result<Tensor<f32>> {
        let t = tensors
            .get(name)
            .ok_or_else(|| invalid!("the checkpoint has no {name} (carried stream state)"))?;
        check_state(name, t, c)?;
        Ok(t.clone())
    };
    Ok(StreamState {
        h: get(STATE_H)?,
        c: match c.cell {
            CellKind::Lstm => Some(get(STATE_C)?),
            _ => None,
        },
    })
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub model: CharRnn,
    /// Updates done.
    pub step: u64,
    /// Carried stream state `(B, H)`.
    pub h: Tensor<f32>,
    /// The LSTM's carried cell state `(B, H)`.
    pub c: Option<Tensor<f32>>,
    /// Adam moments (empty for a `best/` folder, which holds weights only).
    pub optim_state: BTreeMap<String, Tensor<f32>>,
    pub state: CheckpointState,
}

/// The checkpoint folder for `path`: a run folder (its `checkpoint/`), a checkpoint or `best/`
/// folder, or a file inside one.
fn checkpoint_folder(path: &Path) -> PathBuf {
    if path.is_file() {
        return path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    }
    if path.join("state.json").is_file() || !path.join("checkpoint").is_dir() {
        path.to_path_buf()
    } else {
        path.join("checkpoint")
    }
}

/// Loads a checkpoint written by `nabla rnn train` (see [`checkpoint_folder`]), checking every
/// tensor.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    // The folder the state comes from (`.checkpoint.old-PID` of a run that died between the
    // renames of a checkpoint) is the one whose tensors are read.
    let dir = crate::train::checkpoint_dir(&checkpoint_folder(path))?;
    let state = load_checkpoint_state(&dir)?;
    let sp = dir.join("state.json");
    let config: CharRnnConfig = serde_json::from_value(state.model_config.clone())
        .map_err(|e| NablaError::format(&sp, format!("not a `nabla rnn train` checkpoint: {e}")))?;
    config
        .validate()
        .map_err(|e| NablaError::format(&sp, format!("model_config: {e}")))?;
    let file = dir.join("model.safetensors");
    let tensors = crate::io::load_safetensors::<f32>(&file)?;
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
    let st = stream_state(&tensors, &model.config)
        .map_err(|e| NablaError::format(&file, e.to_string()))?;
    let of = dir.join("optimizer.safetensors");
    let optim_state = if of.is_file() {
        crate::io::load_safetensors::<f32>(&of)?
    } else {
        BTreeMap::new()
    };
    Ok(Checkpoint {
        model,
        step: state.step,
        h: st.h,
        c: st.c,
        optim_state,
        state,
    })
}

/// Result of a training run (printed as JSON by `nabla rnn train`).
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub steps: u64,
    /// `completed`, `early_stopped`, `interrupted` (SIGINT, SIGTERM, SIGHUP) or `time_limit`.
    pub outcome: String,
    pub seconds: f64,
    /// Mean training loss (nats/char) since the previous evaluation.
    pub train_loss: f64,
    pub val_nats: Option<f64>,
    pub val_bpc: Option<f64>,
    /// Test loss of the best-validation weights (`best/`), evaluated once after training;
    /// `None` when interrupted or without a test part (`--test-frac 0`).
    pub test_nats: Option<f64>,
    pub test_bpc: Option<f64>,
    pub tokens_per_s: f64,
    /// Floats held by the window's forward state: `(k2 + 1)·batch·hidden` at most.
    pub peak_state_floats: usize,
    pub run_dir: PathBuf,
}

fn load_text(text: &Option<PathBuf>, seed: u64) -> Result<(String, Option<String>)> {
    match text {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| NablaError::io(p, e))?;
            Ok((t, Some(p.display().to_string())))
        }
        None => Ok((embedded_reber(4000, &mut Rng::new(seed ^ 0x5EB)), None)),
    }
}

/// Trains the model of `c` on the shared [`Trainer`] with `tc` (its seed initializes the
/// weights and draws the built-in corpus; its `clip_grad_norm` and `opt`'s rate are recorded in
/// the [`CharRnnConfig`]): progress bar or plain logs, metrics.jsonl, atomic checkpoints with
/// exact resume, NaN stop, stop signals, plot. Returns the summary.
pub fn train<O: Optimizer<f32>>(
    c: &CharTrainConfig,
    tc: TrainConfig,
    opt: O,
) -> Result<TrainReport> {
    TbpttSchedule::new(c.k1, c.k2)?;
    if c.batch == 0 {
        return Err(invalid!("--batch must be at least 1"));
    }
    tc.validate()?;
    let activation = Activation::parse(&c.activation)?;
    let (text, text_name) = load_text(&c.text, tc.seed)?;
    let corpus = CharCorpus::with_test(&text, c.val_frac, c.test_frac)?;
    let config = CharRnnConfig {
        vocab: corpus.vocab.as_string(),
        hidden: c.hidden,
        activation,
        k1: c.k1,
        k2: c.k2,
        batch: c.batch,
        lr: opt.lr(),
        clip: tc.clip_grad_norm.unwrap_or(0.0),
        seed: tc.seed,
        val_frac: c.val_frac,
        test_frac: c.test_frac,
        text: text_name,
        text_chars: text.chars().count(),
        cell: c.cell,
    };
    // `CharRnn::new` validates the configuration (and that the weights fit) first.
    let model = CharRnn::new(config.clone())?;
    config.train_memory(corpus.vocab.len()).check("rnn train")?;
    let mut task = CharRnnTask::new(model, corpus)?;
    let summary = Trainer::new(tc, opt).fit(&mut task)?;
    if !crate::dist::is_root() {
        // Ranks other than 0 of a data-parallel job neither evaluate nor own the run folder.
        return Ok(TrainReport {
            steps: summary.step,
            outcome: summary.outcome.as_str().into(),
            seconds: summary.wall_time_s,
            train_loss: f64::NAN,
            val_nats: None,
            val_bpc: None,
            test_nats: None,
            test_bpc: None,
            tokens_per_s: 0.0,
            peak_state_floats: task.peak_state_floats,
            run_dir: summary.run_dir,
        });
    }
    // The last evaluation is the final state unless the run was interrupted between two; then
    // the loss since that evaluation comes from the checkpoint's running interval.
    let st = load_checkpoint_state(&summary.checkpoint)?;
    let (val, train_loss) = match summary.last.as_ref() {
        Some(l) if l.step == summary.step => (l.metrics.get("val_loss").copied(), l.train_loss),
        _ => (
            task.val_nats()?,
            st.interval.loss_sum / st.interval.items.max(1) as f64,
        ),
    };
    Ok(TrainReport {
        steps: summary.step,
        outcome: summary.outcome.as_str().into(),
        seconds: summary.wall_time_s,
        train_loss,
        val_nats: val,
        val_bpc: val.map(|x| x / std::f64::consts::LN_2),
        test_nats: summary
            .test
            .as_ref()
            .and_then(|t| t.metrics.get("test_loss").copied()),
        test_bpc: summary
            .test
            .as_ref()
            .and_then(|t| t.metrics.get("test_bpc").copied()),
        tokens_per_s: st.items_total as f64 / st.wall_time_s.max(1e-9),
        peak_state_floats: task.peak_state_floats,
        run_dir: summary.run_dir,
    })
}
