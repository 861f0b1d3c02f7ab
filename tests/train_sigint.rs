//! A real SIGINT (Ctrl-C) during training: the run saves a checkpoint and returns cleanly.
//! Its own test binary, because the signal goes to the whole process.

use nabla::optim::Sgd;
use nabla::train::{
    load_checkpoint_state, Metrics, Outcome, PlotFormat, ProgressMode, StepOutput, TrainConfig,
    TrainModel, Trainer,
};
use nabla::{ops, ParamId, ParamStore, Result, Rng, Tape, Tensor};

/// Least squares `min_w ‖x w − y‖²` on fixed data; sends SIGINT to its own process at `kill_at`.
struct Lsq {
    store: ParamStore<f32>,
    w: ParamId,
    kill_at: u64,
}

impl TrainModel<f32> for Lsq {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    fn train_step(&mut self, step: u64, _rng: &mut Rng) -> Result<StepOutput> {
        if step == self.kill_at {
            let pid = std::process::id().to_string();
            let st = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
            assert!(
                st.map(|s| s.success()).unwrap_or(false),
                "could not run kill"
            );
        }
        // Slow enough that the signal arrives well before the run would end.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let mut tape = Tape::new();
        let x = tape.constant(Tensor::from_fn(&[8, 4], |i| ((i * 7) % 5) as f32 - 2.0));
        let y = tape.constant(Tensor::from_fn(&[8, 1], |i| i as f32 / 8.0));
        let w = tape.param(&self.store, self.w);
        let p = ops::matmul(&mut tape, x, w)?; // (8, 1)
        let loss = ops::mse_mean(&mut tape, p, y)?;
        tape.backward(loss)?;
        tape.accumulate_grads(&mut self.store)?;
        Ok(StepOutput::new(tape.value(loss).item() as f64, 8))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        Ok(Metrics::from([(
            "w_norm".to_string(),
            self.store.get(self.w).value.norm(),
        )]))
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({"model": "lsq"})
    }
}

#[test]
fn sigint_saves_a_checkpoint_and_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = ParamStore::new();
    let w = store.add("w", Tensor::zeros(&[4, 1])).unwrap();
    let mut m = Lsq {
        store,
        w,
        kill_at: 10,
    };
    let cfg = TrainConfig {
        out_dir: tmp.path().to_path_buf(),
        max_steps: Some(2000),
        eval_every: 1000,
        progress: ProgressMode::Quiet,
        plot: PlotFormat::None,
        handle_signals: true,
        ..TrainConfig::default()
    };
    let s = Trainer::new(cfg, Sgd::plain(0.01).unwrap())
        .fit(&mut m)
        .unwrap();
    assert_eq!(s.outcome, Outcome::Interrupted);
    assert!(s.step > 10 && s.step < 2000, "stopped at {}", s.step);
    let st = load_checkpoint_state(tmp.path()).unwrap();
    assert_eq!(st.step, s.step);
    assert!(s.describe().contains("--resume"));
}
