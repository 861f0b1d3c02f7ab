//! The training loop on a real model: a 2-layer MLP classifier built from `ops` on the 8×8
//! digits (../shared/data/digits8x8, 1797 images; 1300 points of 10 Gaussian blobs when the
//! shared folder is absent, so a fresh clone runs every test here too).
//! Covers exact resume, determinism, the NaN stop, the plain log format, the unwritable-folder
//! check, early stopping, best checkpoints, metrics JSONL and the plot.

use crate::common;

use nabla::ops::{self, CrossEntropyOptions};
use nabla::optim::{AdamConfig, AdamW, Optimizer, Sgd, SgdConfig};
use nabla::train::{
    load_checkpoint_state, read_metrics_jsonl, select_rows, BatchSampler, EarlyStopping, Metrics,
    Mode, Outcome, PlotFormat, ProgressMode, StepOutput, TrainConfig, TrainModel, Trainer,
};
use nabla::{Init, ParamId, ParamStore, Result, Rng, Tape, Tensor};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

fn read_idx_gz(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let f = std::fs::File::open(path).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut bytes)
        .unwrap();
    let nd = bytes[3] as usize;
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    (dims, bytes[4 + 4 * nd..].to_vec())
}

/// Rows of [`dataset`] that [`Mlp`] uses: the first `N_TRAIN` train, the next `N_VAL` validate.
const N_TRAIN: usize = 1000;
const N_VAL: usize = 300;

/// (x (N, 64) in [0, 1], labels), N ≥ `N_TRAIN + N_VAL`: the digits, or 10 Gaussian blobs in
/// 64-D without ../shared.
fn dataset() -> (Tensor<f32>, Vec<usize>) {
    let found = common::shared_or_fallback(
        "data/digits8x8",
        "the training tests use 1300 points of 10 Gaussian blobs instead",
    );
    if let Some(dir) = found {
        let (dims, px) = read_idx_gz(&dir.join("digits8x8-images-idx3-ubyte.gz"));
        let (_, labels) = read_idx_gz(&dir.join("digits8x8-labels-idx1-ubyte.gz"));
        let n = dims[0];
        let x = Tensor::from_fn(&[n, 64], |i| px[i] as f32 / 255.0);
        (x, labels.iter().map(|&l| l as usize).collect())
    } else {
        let n = N_TRAIN + N_VAL;
        let mut rng = Rng::new(99);
        let centers: Vec<f64> = (0..640).map(|_| rng.uniform()).collect();
        let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
        let x = Tensor::from_fn(&[n, 64], |i| {
            (centers[y[i / 64] * 64 + i % 64] + 0.3 * rng.normal()) as f32
        });
        (x, y)
    }
}

fn sgd() -> Sgd<f32> {
    Sgd::new(SgdConfig {
        momentum: 0.9,
        ..SgdConfig::plain(0.1)
    })
    .unwrap()
}

fn adamw() -> AdamW<f32> {
    AdamW::new(AdamConfig::new(0.01).weight_decay(0.01)).unwrap()
}

struct Mlp {
    store: ParamStore<f32>,
    ids: [ParamId; 4],
    hidden: usize,
    x: Tensor<f32>,
    y: Vec<usize>,
    x_val: Tensor<f32>,
    y_val: Vec<usize>,
    sampler: BatchSampler,
    /// Inject a NaN into the batch of this step.
    nan_at: Option<u64>,
    /// Make a gradient infinite after the backward pass of this step.
    inf_grad_at: Option<u64>,
    /// Raise the interrupt flag during this step (as Ctrl-C would).
    interrupt_at: Option<(u64, Arc<AtomicBool>)>,
    steps_run: Arc<AtomicU64>,
}

impl Mlp {
    fn new(seed: u64, hidden: usize) -> Mlp {
        let (x, y) = dataset();
        let (n_train, n_val) = (N_TRAIN, N_VAL);
        let x_val = x.slice_rows(n_train, n_train + n_val).unwrap();
        let y_val = y[n_train..n_train + n_val].to_vec();
        let x = x.slice_rows(0, n_train).unwrap();
        let y = y[..n_train].to_vec();
        let mut rng = Rng::new(seed);
        let mut store = ParamStore::new();
        let w1 = Init::KaimingUniform
            .tensor(&[hidden, 64], &mut rng)
            .unwrap();
        let w2 = Init::XavierUniform { gain: 1.0 }
            .tensor(&[10, hidden], &mut rng)
            .unwrap();
        let ids = [
            store.add("fc1.weight", w1).unwrap(),
            store.add("fc1.bias", Tensor::zeros(&[hidden])).unwrap(),
            store.add("fc2.weight", w2).unwrap(),
            store.add("fc2.bias", Tensor::zeros(&[10])).unwrap(),
        ];
        Mlp {
            store,
            ids,
            hidden,
            x,
            y,
            x_val,
            y_val,
            sampler: BatchSampler::new(n_train, 50, true, seed).unwrap(),
            nan_at: None,
            inf_grad_at: None,
            interrupt_at: None,
            steps_run: Arc::new(AtomicU64::new(0)),
        }
    }

    /// (loss, logits) of a batch on `tape`.
    fn forward(
        &self,
        tape: &mut Tape<f32>,
        x: Tensor<f32>,
        y: &[usize],
    ) -> Result<(nabla::Var, nabla::Var)> {
        let xv = tape.constant(x); // (B, 64)
        let [w1, b1, w2, b2] = self.ids.map(|id| tape.param(&self.store, id));
        let h = ops::linear(tape, xv, w1, Some(b1))?; // (B, H)
        let h = ops::relu(tape, h)?;
        let logits = ops::linear(tape, h, w2, Some(b2))?; // (B, 10)
        let loss = ops::cross_entropy(tape, logits, y, &CrossEntropyOptions::default())?;
        Ok((loss, logits))
    }
}

fn accuracy(logits: &Tensor<f32>, y: &[usize]) -> f64 {
    let c = logits.dim(-1);
    let hits = logits
        .data()
        .chunks(c)
        .zip(y)
        .filter(|(row, &t)| {
            let arg = (0..c).fold(0, |a, j| if row[j] > row[a] { j } else { a });
            arg == t
        })
        .count();
    hits as f64 / y.len() as f64
}

impl TrainModel<f32> for Mlp {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput> {
        self.steps_run.fetch_add(1, Ordering::SeqCst);
        let idx = self.sampler.batch(step);
        let mut xb = select_rows(&self.x, &idx)?;
        // Input noise exercises the trainer RNG, which checkpoints must restore.
        xb.data_mut()
            .iter_mut()
            .for_each(|v| *v += 0.05 * rng.normal() as f32);
        if self.nan_at == Some(step) {
            xb.data_mut()[0] = f32::NAN;
        }
        if let Some((s, flag)) = &self.interrupt_at {
            if *s == step {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let yb: Vec<usize> = idx.iter().map(|&i| self.y[i]).collect();
        let mut tape = Tape::new();
        let (loss, logits) = self.forward(&mut tape, xb, &yb)?;
        tape.backward(loss)?;
        tape.accumulate_grads(&mut self.store)?;
        if self.inf_grad_at == Some(step) {
            self.store.get_mut(self.ids[3]).grad.data_mut()[1] = f32::INFINITY;
        }
        let acc = accuracy(tape.value(logits), &yb);
        Ok(StepOutput::new(tape.value(loss).item() as f64, idx.len()).with("train_acc", acc))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let mut tape = Tape::no_grad();
        let (loss, logits) = self.forward(&mut tape, self.x_val.clone(), &self.y_val.clone())?;
        let mut m = Metrics::new();
        m.insert("val_loss".into(), tape.value(loss).item() as f64);
        m.insert("val_acc".into(), accuracy(tape.value(logits), &self.y_val));
        Ok(m)
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({"model": "mlp", "in": 64, "hidden": self.hidden, "classes": 10})
    }
    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.sampler.steps_per_epoch())
    }
}

fn config(dir: &Path, steps: u64) -> TrainConfig {
    TrainConfig {
        out_dir: dir.to_path_buf(),
        seed: 3,
        max_steps: Some(steps),
        eval_every: 20,
        log_every: 10,
        progress: ProgressMode::Quiet,
        monitor: Some(("val_acc".into(), Mode::Max)),
        schedule: nabla::train::LrSchedule::Cosine { min_lr: 0.01 },
        warmup_steps: 5,
        clip_grad_norm: Some(2.0),
        ..TrainConfig::default()
    }
}

/// A shared buffer to capture plain log lines.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn strip_timing(mut r: Vec<nabla::train::MetricsRecord>) -> Vec<nabla::train::MetricsRecord> {
    for x in &mut r {
        x.wall_time_s = 0.0;
        x.items_per_s = 0.0;
    }
    r
}

#[test]
fn resume_after_interrupt_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));

    // Uninterrupted: 60 steps.
    let mut a = Mlp::new(3, 32);
    let mut ta = Trainer::new(config(&a_dir, 60), adamw());
    let sa = ta.fit(&mut a).unwrap();
    assert_eq!(sa.outcome, Outcome::Completed);
    assert_eq!(sa.step, 60);

    // Interrupted during step 24 (between evaluations) → checkpoint at step 25, then resumed.
    let mut b = Mlp::new(3, 32);
    let mut tb = Trainer::new(config(&b_dir, 60), adamw());
    b.interrupt_at = Some((24, tb.interrupt_handle()));
    let sb = tb.fit(&mut b).unwrap();
    assert_eq!(sb.outcome, Outcome::Interrupted);
    assert_eq!(sb.step, 25);
    assert_eq!(load_checkpoint_state(&b_dir).unwrap().step, 25);

    // A fresh process would rebuild model and optimizer from scratch.
    let mut b2 = Mlp::new(3, 32);
    let mut cfg = config(&b_dir, 60);
    cfg.resume = Some(b_dir.clone());
    let mut tb2 = Trainer::new(cfg, adamw());
    let sb2 = tb2.fit(&mut b2).unwrap();
    assert_eq!(sb2.outcome, Outcome::Completed);
    assert_eq!(b2.steps_run.load(Ordering::SeqCst), 35);

    for (pa, pb) in a.store.iter().zip(b2.store.iter()) {
        assert_eq!(pa.name, pb.name);
        let (va, vb): (Vec<u32>, Vec<u32>) = (
            pa.value.data().iter().map(|x| x.to_bits()).collect(),
            pb.value.data().iter().map(|x| x.to_bits()).collect(),
        );
        assert_eq!(va, vb, "{} differs after resume", pa.name);
    }
    let (oa, ob) = (
        ta.optimizer().state_tensors(),
        tb2.optimizer().state_tensors(),
    );
    assert_eq!(oa.len(), 8); // exp_avg and exp_avg_sq of 4 parameters
    assert_eq!(tb2.optimizer().step_count(), 60);
    for ((na, ta), (nb, tb)) in oa.iter().zip(&ob) {
        assert_eq!(na, nb);
        assert_eq!(ta.data(), tb.data(), "{na}");
    }
    // Same seed → bit-identical metrics (timings aside), across the interruption too.
    let ma = strip_timing(read_metrics_jsonl(a_dir.join("metrics.jsonl")).unwrap());
    let mb = strip_timing(read_metrics_jsonl(b_dir.join("metrics.jsonl")).unwrap());
    assert_eq!(ma.len(), 3);
    assert_eq!(ma, mb);
    // It learned: the digits are easy for an MLP.
    let last = ma.last().unwrap();
    eprintln!(
        "MLP 64-32-10, AdamW, 60 steps of 50: train_loss {:.4} -> {:.4}, val_acc {:.4}, val_loss {:.4}",
        ma[0].train_loss, last.train_loss, last.metrics["val_acc"], last.metrics["val_loss"]
    );
    assert!(last.metrics["val_acc"] > 0.8, "{last:?}");
    assert!(last.train_loss < ma[0].train_loss);

    // The run folder holds what the README promises.
    for f in [
        "config.json",
        "metrics.jsonl",
        "metrics.svg",
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
        "checkpoint/state.json",
        "best/model.safetensors",
    ] {
        assert!(a_dir.join(f).is_file(), "missing {f}");
    }
    let st = load_checkpoint_state(&a_dir).unwrap();
    assert_eq!((st.step, st.optimizer_step, st.metrics.len()), (60, 60, 3));
    let best = load_checkpoint_state(a_dir.join("best")).unwrap();
    assert_eq!(best.step, sa.best.as_ref().unwrap().step);
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["model"]["hidden"], 32);
    assert_eq!(cfg_json["total_steps"], 60);

    // A different seed gives a different run.
    let mut c = Mlp::new(4, 32);
    let mut cc = config(&tmp.path().join("c"), 20);
    cc.seed = 4;
    Trainer::new(cc, adamw()).fit(&mut c).unwrap();
    let mc = read_metrics_jsonl(tmp.path().join("c/metrics.jsonl")).unwrap();
    assert_ne!(mc[0].train_loss, ma[0].train_loss);
}

#[test]
fn nan_loss_stops_naming_step_and_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = Mlp::new(3, 16);
    m.nan_at = Some(33);
    // A checkpoint every 20 steps (the automatic default would write one only at the end).
    let mut cfg = config(tmp.path(), 60);
    cfg.checkpoint_every = 20;
    let err = Trainer::new(cfg, sgd())
        .fit(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("non-finite") && err.contains("at step 33"),
        "{err}"
    );
    assert!(
        err.contains("checkpoint") && err.contains("(step 20)"),
        "{err}"
    );
    assert_eq!(m.steps_run.load(Ordering::SeqCst), 34);
    // Nothing after the failing step was recorded.
    assert_eq!(load_checkpoint_state(tmp.path()).unwrap().step, 20);

    // Before any checkpoint: the message says so.
    let tmp2 = tempfile::tempdir().unwrap();
    let mut m = Mlp::new(3, 16);
    m.nan_at = Some(2);
    let err = Trainer::new(config(tmp2.path(), 60), sgd())
        .fit(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("at step 2") && err.contains("no checkpoint"),
        "{err}"
    );
}

#[test]
fn plain_log_lines_have_the_documented_format() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::default();
    let mut cfg = config(tmp.path(), 40);
    cfg.progress = ProgressMode::Plain;
    cfg.plot = PlotFormat::None;
    let mut m = Mlp::new(3, 16);
    Trainer::new(cfg, sgd())
        .with_log_sink(Box::new(sink.clone()))
        .fit(&mut m)
        .unwrap();
    let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let train: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("train "))
        .collect();
    let eval: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("eval "))
        .collect();
    assert_eq!(train.len(), 4, "{text}");
    assert_eq!(eval.len(), 2, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("train ") || l.starts_with("eval ") || l.starts_with("note ")),
        "{text}"
    );
    // `kind step=S/TOTAL key=value…`, keys in a fixed order.
    let keys = |l: &str| -> Vec<String> {
        l.split(' ')
            .skip(1)
            .map(|kv| {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("not key=value: {kv} in {l}"));
                assert!(!v.is_empty(), "{l}");
                k.to_string()
            })
            .collect()
    };
    assert!(
        train[0].starts_with("train step=10/40 epoch=0.5 loss="),
        "{}",
        train[0]
    );
    assert_eq!(
        keys(train[0]),
        [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "items/s",
            "elapsed",
            "eta"
        ]
    );
    assert!(
        eval[1].starts_with("eval step=40/40 epoch=2 train_loss="),
        "{}",
        eval[1]
    );
    assert_eq!(
        keys(eval[1]),
        ["step", "epoch", "train_loss", "val_acc", "val_loss", "best"]
    );
    let loss: f64 = train[0]
        .split("loss=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(loss.is_finite() && loss > 0.0);
    // Quiet writes nothing.
    let sink = Sink::default();
    let mut cfg = config(&tmp.path().join("q"), 10);
    cfg.progress = ProgressMode::Quiet;
    Trainer::new(cfg, sgd())
        .with_log_sink(Box::new(sink.clone()))
        .fit(&mut Mlp::new(3, 16))
        .unwrap();
    assert!(sink.0.lock().unwrap().is_empty());
}

#[test]
fn unwritable_output_folder_fails_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    // A regular file where a folder should be: unwritable even for root.
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let mut m = Mlp::new(3, 16);
    let err = Trainer::new(config(&file.join("run"), 10), sgd())
        .fit(&mut m)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run folder") && err.contains("file/run"),
        "{err}"
    );
    assert_eq!(m.steps_run.load(Ordering::SeqCst), 0);
}

#[test]
fn early_stopping_best_checkpoint_and_guards() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), 200);
    cfg.eval_every = 10;
    // An impossible min_delta: only the first evaluation counts as an improvement.
    cfg.early_stopping = Some(EarlyStopping {
        patience: 2,
        min_delta: 1e9,
    });
    let mut m = Mlp::new(3, 16);
    let s = Trainer::new(cfg.clone(), sgd()).fit(&mut m).unwrap();
    assert_eq!(s.outcome, Outcome::EarlyStopped);
    assert_eq!(s.step, 30);
    assert_eq!(s.best.as_ref().unwrap().step, 10);
    assert_eq!(
        load_checkpoint_state(tmp.path().join("best")).unwrap().step,
        10
    );
    assert!(s.describe().contains("stopped early"));

    // A second fresh run into the same folder is refused (no silent overwrite)…
    let err = Trainer::new(cfg.clone(), sgd())
        .fit(&mut Mlp::new(3, 16))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
    // …and resuming with another model configuration is an error naming both.
    cfg.resume = Some(tmp.path().to_path_buf());
    let err = Trainer::new(cfg, sgd())
        .fit(&mut Mlp::new(3, 8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"hidden\":16") && err.contains("\"hidden\":8"),
        "{err}"
    );

    // Training by epochs with per-epoch evaluation.
    let mut cfg = config(&tmp.path().join("ep"), 1000);
    cfg.epochs = Some(2);
    cfg.eval_every = 0;
    let s = Trainer::new(cfg, sgd()).fit(&mut Mlp::new(3, 16)).unwrap();
    assert_eq!(s.step, 40);
    let recs = read_metrics_jsonl(tmp.path().join("ep/metrics.jsonl")).unwrap();
    assert_eq!(recs.iter().map(|r| r.step).collect::<Vec<_>>(), [20, 40]);
    assert_eq!(recs[1].epoch, Some(2.0));

    // `nabla plot` redraws the curves from the JSONL.
    let out = tmp.path().join("redrawn.svg");
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["plot", "--metrics"])
        .arg(tmp.path().join("ep/metrics.jsonl"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read_to_string(&out).unwrap().contains("val_acc"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args([
            "plot",
            "--metrics",
            "/nonexistent/metrics.jsonl",
            "--out",
            "x.svg",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/metrics.jsonl"));
}

#[test]
fn bar_mode_trains_like_the_other_modes() {
    // The bar draws only on a terminal (hidden under `cargo test`); the run must be the same.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("bar"), 40);
    cfg.progress = ProgressMode::Bar;
    let s = Trainer::new(cfg, sgd()).fit(&mut Mlp::new(3, 16)).unwrap();
    let mut cfg = config(&tmp.path().join("quiet"), 40);
    cfg.progress = ProgressMode::Quiet;
    let q = Trainer::new(cfg, sgd()).fit(&mut Mlp::new(3, 16)).unwrap();
    assert_eq!(s.step, 40);
    assert_eq!(
        strip_timing(vec![s.last.unwrap()]),
        strip_timing(vec![q.last.unwrap()])
    );
}

/// The bit-identical resume again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &["resume_after_interrupt_is_bit_identical"],
    );
}

/// `(tag, step, value)` of every scalar a run folder's `metrics.jsonl` holds, in the order
/// the events file writes them (see `nabla::train::tfevents`): per evaluation its training loss
/// at log resolution, then its other scalars; the final test record last.
fn jsonl_scalars(dir: &Path) -> Vec<(String, u64, f32)> {
    use nabla::train::tfevents::{logged_points, record_scalars, LOGGED_TRAIN_LOSS};
    let mut out = Vec::new();
    for rec in read_metrics_jsonl(dir.join("metrics.jsonl")).unwrap() {
        for (s, v) in logged_points(&rec) {
            out.push((LOGGED_TRAIN_LOSS.to_string(), s, v as f32));
        }
        for (tag, v) in record_scalars(&rec) {
            out.push((tag.to_string(), rec.step, v as f32));
        }
    }
    if let Some(t) = nabla::train::read_test_record(dir.join("metrics.jsonl")).unwrap() {
        out.extend(
            t.metrics
                .iter()
                .map(|(k, v)| (k.clone(), t.step, *v as f32)),
        );
    }
    out
}

/// The scalars of a run folder's events files as `(tag, step, value)`, read as TensorBoard
/// reads them: the files in name order, each opening with the file version and a session
/// start, which drops the scalars read so far at its step and later. Checks that there are
/// `files` files and that wall times are Unix times.
fn event_scalars(dir: &Path, files: usize) -> Vec<(String, u64, f32)> {
    use nabla::train::tfevents::{event_files, read_event_file, What, FILE_PREFIX, FILE_VERSION};
    let paths = event_files(dir).unwrap();
    assert_eq!(paths.len(), files, "{paths:?}");
    let mut out: Vec<(String, u64, f32)> = Vec::new();
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let stamp: u64 = name[FILE_PREFIX.len()..]
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(stamp > 1_600_000_000, "{name}");
        let events = read_event_file(p).unwrap();
        assert_eq!(events[0].what, Some(What::FileVersion(FILE_VERSION.into())));
        let Some(What::SessionLog(s)) = &events[1].what else {
            panic!("{name}: no session start: {:?}", events[1]);
        };
        assert_eq!(s.status, 1);
        out.retain(|x| x.1 < events[1].step as u64);
        for w in events.windows(2) {
            assert!(w[1].wall_time >= w[0].wall_time, "{w:?}");
        }
        for e in &events[2..] {
            assert!(e.wall_time > 1.6e9, "{e:?}");
            let sc = e.scalars();
            assert!(!sc.is_empty(), "{e:?}");
            out.extend(sc.iter().map(|&(t, v)| (t.to_string(), e.step as u64, v)));
        }
    }
    out
}

/// Every scalar of `metrics.jsonl` is in the TensorBoard events file, tag, step and value as
/// f32 bits, in order — with evaluations at log steps, between them and without any log line
/// in their interval (eval every 10, log every 15). A run interrupted between two log lines and
/// resumed adds a second file, and the two read as that of the uninterrupted run (timings
/// aside); what a crashed session wrote after its checkpoint is dropped by the next session's
/// start; `--overwrite` leaves one file again.
#[test]
fn tensorboard_events_hold_every_scalar_and_survive_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = |dir: &Path| TrainConfig {
        eval_every: 10,
        log_every: 15,
        plot: PlotFormat::None,
        ..config(dir, 30)
    };
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    Trainer::new(cfg(&a_dir), adamw())
        .fit(&mut Mlp::new(3, 8))
        .unwrap();
    let (ev_a, js_a) = (event_scalars(&a_dir, 1), jsonl_scalars(&a_dir));
    // 3 evaluations of 9 scalars (6 of the trainer's, train_acc, val_acc, val_loss), and the
    // logged losses at 10 (no log line there: its train_loss), 15 and 30.
    assert_eq!(ev_a.len(), 3 * 9 + 3, "{ev_a:?}");
    assert_eq!(ev_a, js_a);
    let logged: Vec<u64> = ev_a
        .iter()
        .filter(|s| s.0 == "logged_train_loss")
        .map(|s| s.1)
        .collect();
    assert_eq!(logged, [10, 15, 30]);

    // Interrupted during step 16 (after the log line of 15): resumed from the checkpoint at 17.
    let mut b = Mlp::new(3, 8);
    let mut tb = Trainer::new(cfg(&b_dir), adamw());
    b.interrupt_at = Some((16, tb.interrupt_handle()));
    assert_eq!(tb.fit(&mut b).unwrap().outcome, Outcome::Interrupted);
    let untimed = |v: &[(String, u64, f32)]| -> Vec<(String, u64, f32)> {
        v.iter()
            .filter(|s| s.0 != "wall_time_s" && s.0 != "items_per_s")
            .cloned()
            .collect()
    };
    let partial = untimed(&event_scalars(&b_dir, 1));
    assert_eq!(partial[..], untimed(&ev_a)[..partial.len()]);
    assert_eq!(partial.last().unwrap().1, 15);
    // As if the session had crashed after evaluating at step 20, past its checkpoint at 17.
    let first = nabla::train::tfevents::event_files(&b_dir)
        .unwrap()
        .remove(0);
    let mut orphan = Vec::new();
    let ev = nabla::train::tfevents::Event {
        wall_time: 2e9,
        step: 20,
        what: Some(nabla::train::tfevents::What::Summary(
            nabla::train::tfevents::Summary {
                value: vec![nabla::train::tfevents::Value {
                    tag: "val_acc".into(),
                    simple_value: Some(-1.0),
                }],
            },
        )),
    };
    nabla::train::tfevents::write_record(&prost::Message::encode_to_vec(&ev), &mut orphan);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend_from_slice(&orphan);
    std::fs::write(&first, bytes).unwrap();
    let mut resume = cfg(&b_dir);
    resume.resume = Some(b_dir.clone());
    Trainer::new(resume, adamw())
        .fit(&mut Mlp::new(3, 8))
        .unwrap();
    let ev_b = event_scalars(&b_dir, 2);
    assert_eq!(ev_b, jsonl_scalars(&b_dir));
    assert_eq!(untimed(&ev_b), untimed(&ev_a));

    // --overwrite starts afresh: one file, the new run's.
    let mut over = cfg(&b_dir);
    over.overwrite = true;
    over.max_steps = Some(10);
    Trainer::new(over, adamw())
        .fit(&mut Mlp::new(3, 8))
        .unwrap();
    let ev_c = event_scalars(&b_dir, 1);
    assert_eq!(ev_c, jsonl_scalars(&b_dir));
    assert_eq!(ev_c.last().unwrap().1, 10);
}
