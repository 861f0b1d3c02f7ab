//! Adding your own layer to nabla, from outside the crate.
//!
//! 1. An op with a hand-derived backward: SiLU, `y = x σ(x)`, `dy/dx = σ(x)(1 + x(1 − σ(x)))`.
//! 2. A module that composes it with built-in ones: a pre-norm residual MLP block
//!    `y = x + fc2(silu(fc1(norm(x))))`; its parameters are named by the builder's path.
//! 3. A model (`embed`, `blocks.{i}`, `head`), its gradient checked in f64 by central finite
//!    differences, and a few hundred steps of the shared [`Trainer`] (AdamW, checkpoints, resume,
//!    progress, metrics.jsonl) on two interleaved spirals.
//!
//! Run: `cargo run --release --example custom_layer [OUT_DIR]`; tested by `cargo test`.

use nabla::autograd::{BackwardCtx, Op};
use nabla::nn::{params_of, Ctx, LayerNorm, Linear, Module, VarBuilder};
use nabla::optim::{AdamConfig, AdamW};
use nabla::train::{
    select_rows, BatchSampler, Metrics, ProgressMode, StepOutput, TrainConfig, TrainModel, Trainer,
};
use nabla::{ops, Element, ParamId, ParamStore, Result, Rng, Tape, Tensor, Var};

/// SiLU's backward: the saved `σ(x)` and `x` give `dx = dy ⊙ σ(x)(1 + x(1 − σ(x)))`.
struct SiluOp<T> {
    sig: Vec<T>,
}

impl<T: Element> Op<T> for SiluOp<T> {
    fn name(&self) -> &'static str {
        "silu"
    }
    fn backward(&self, ctx: &BackwardCtx<'_, T>) -> Result<Vec<Option<Tensor<T>>>> {
        let (x, dy) = (ctx.inputs[0], ctx.grad());
        let dx: Vec<T> = x
            .data()
            .iter()
            .zip(&self.sig)
            .zip(dy.data())
            .map(|((&x, &s), &g)| g * s * (T::one() + x * (T::one() - s)))
            .collect();
        Ok(vec![Some(Tensor::new(x.shape(), dx)?)])
    }
}

/// `y = x σ(x)` on the tape.
fn silu<T: Element>(tape: &mut Tape<T>, x: Var) -> Result<Var> {
    let xv = tape.value(x);
    let sig: Vec<T> = xv
        .data()
        .iter()
        .map(|&v| T::one() / (T::one() + (-v).exp()))
        .collect();
    let y: Vec<T> = xv.data().iter().zip(&sig).map(|(&v, &s)| v * s).collect();
    let y = Tensor::new(xv.shape(), y)?;
    Ok(tape.record1(SiluOp { sig }, &[x], y))
}

/// A pre-norm residual MLP block: `x + fc2(silu(fc1(norm(x))))`, `x (…, D)`.
struct ResidualMlp {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl ResidualMlp {
    fn new<T: Element>(mut vb: VarBuilder<'_, T>, dim: usize, hidden: usize) -> Result<Self> {
        Ok(ResidualMlp {
            norm: LayerNorm::new(vb.pp("norm"), &[dim], 1e-5, true)?,
            fc1: Linear::new(vb.pp("fc1"), dim, hidden, true)?,
            fc2: Linear::new(vb.pp("fc2"), hidden, dim, true)?,
        })
    }
}

impl<T: Element> Module<T> for ResidualMlp {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let h = self.norm.forward(tape, store, x, ctx)?;
        let h = self.fc1.forward(tape, store, h, ctx)?;
        let h = silu(tape, h)?;
        let h = self.fc2.forward(tape, store, h, ctx)?;
        ops::add(tape, x, h)
    }
    fn params(&self) -> Vec<ParamId> {
        params_of::<T>(&[&self.norm, &self.fc1, &self.fc2])
    }
}

/// Points `(N, 2)` → class logits `(N, 2)`.
struct SpiralNet {
    embed: Linear,
    blocks: Vec<ResidualMlp>,
    head: Linear,
}

impl SpiralNet {
    fn new<T: Element>(mut vb: VarBuilder<'_, T>, dim: usize, depth: usize) -> Result<Self> {
        let embed = Linear::new(vb.pp("embed"), 2, dim, true)?;
        let mut bv = vb.pp("blocks");
        let blocks = (0..depth)
            .map(|i| ResidualMlp::new(bv.pp(i), dim, 2 * dim))
            .collect::<Result<Vec<_>>>()?;
        let head = Linear::new(vb.pp("head"), dim, 2, true)?;
        Ok(SpiralNet {
            embed,
            blocks,
            head,
        })
    }
}

impl<T: Element> Module<T> for SpiralNet {
    fn forward(
        &self,
        tape: &mut Tape<T>,
        store: &ParamStore<T>,
        x: Var,
        ctx: &mut Ctx<'_>,
    ) -> Result<Var> {
        let mut h = self.embed.forward(tape, store, x, ctx)?;
        for b in &self.blocks {
            h = b.forward(tape, store, h, ctx)?;
        }
        self.head.forward(tape, store, h, ctx)
    }
    fn params(&self) -> Vec<ParamId> {
        let mut children: Vec<&dyn Module<T>> = vec![&self.embed];
        children.extend(self.blocks.iter().map(|b| b as &dyn Module<T>));
        children.push(&self.head);
        params_of(&children)
    }
}

/// Two interleaved spirals of `n` points each (seeded), labels 0 and 1.
fn spirals(n: usize, seed: u64) -> Result<(Tensor<f32>, Vec<usize>)> {
    let mut rng = Rng::new(seed);
    let (mut x, mut y) = (Vec::with_capacity(4 * n), Vec::with_capacity(2 * n));
    for i in 0..n {
        let r = i as f64 / n as f64;
        let angle = 3.0 * std::f64::consts::PI * r;
        for class in 0..2 {
            let a = angle + class as f64 * std::f64::consts::PI;
            x.push((r * a.cos() + 0.02 * rng.normal()) as f32);
            x.push((r * a.sin() + 0.02 * rng.normal()) as f32);
            y.push(class);
        }
    }
    Ok((Tensor::new(&[2 * n, 2], x)?, y))
}

/// The training task: the model, its parameters and its data, for the shared [`Trainer`].
struct SpiralTask {
    net: SpiralNet,
    store: ParamStore<f32>,
    x: Tensor<f32>,
    y: Vec<usize>,
    val_x: Tensor<f32>,
    val_y: Vec<usize>,
    sampler: BatchSampler,
}

impl SpiralTask {
    fn new(seed: u64) -> Result<Self> {
        let mut store = ParamStore::new();
        let net = SpiralNet::new(VarBuilder::init(&mut store, &mut Rng::new(seed)), 32, 2)?;
        let (x, y) = spirals(256, seed + 1)?;
        let (val_x, val_y) = spirals(128, seed + 2)?;
        let sampler = BatchSampler::new(y.len(), 64, true, seed)?;
        Ok(SpiralTask {
            net,
            store,
            x,
            y,
            val_x,
            val_y,
            sampler,
        })
    }
    /// Mean cross-entropy and accuracy of the model on `(x, y)`, no tape kept.
    fn eval_on(&self, x: &Tensor<f32>, y: &[usize]) -> Result<(f64, f64)> {
        let mut tape = Tape::no_grad();
        let xv = tape.constant(x.clone());
        let logits = self
            .net
            .forward(&mut tape, &self.store, xv, &mut Ctx::eval())?;
        let loss = ops::cross_entropy(&mut tape, logits, y, &Default::default())?;
        let l = tape.value(loss).item() as f64;
        let correct = tape
            .value(logits)
            .data()
            .chunks(2)
            .zip(y)
            .filter(|(r, &t)| (r[1] > r[0]) as usize == t)
            .count();
        Ok((l, correct as f64 / y.len() as f64))
    }
}

impl TrainModel<f32> for SpiralTask {
    fn params(&self) -> &ParamStore<f32> {
        &self.store
    }
    fn params_mut(&mut self) -> &mut ParamStore<f32> {
        &mut self.store
    }
    fn train_step(&mut self, step: u64, rng: &mut Rng) -> Result<StepOutput> {
        let idx = self.sampler.batch(step); // a function of the step: exact resume
        let mut tape = Tape::new();
        let xb = tape.constant(select_rows(&self.x, &idx)?); // (B, 2)
        let yb: Vec<usize> = idx.iter().map(|&i| self.y[i]).collect();
        // Training mode: dropout, had the model any, draws from the trainer's checkpointed stream.
        let logits = self
            .net
            .forward(&mut tape, &self.store, xb, &mut Ctx::train(rng))?;
        let loss = ops::cross_entropy(&mut tape, logits, &yb, &Default::default())?;
        tape.backward(loss)?;
        tape.accumulate_grads(&mut self.store)?;
        Ok(StepOutput::new(tape.value(loss).item() as f64, idx.len()))
    }
    fn evaluate(&mut self) -> Result<Metrics> {
        let (loss, acc) = self.eval_on(&self.val_x, &self.val_y)?;
        let mut m = Metrics::new();
        m.insert("val_loss".into(), loss);
        m.insert("val_acc".into(), acc);
        Ok(m)
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({"model": "spiral_net", "dim": 32, "depth": 2})
    }
    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.sampler.steps_per_epoch())
    }
}

/// Trains for `steps` in `out_dir`; returns (validation accuracy before, after).
fn run(out_dir: std::path::PathBuf, steps: u64, progress: ProgressMode) -> Result<(f64, f64)> {
    let mut task = SpiralTask::new(0)?;
    let before = task.eval_on(&task.val_x, &task.val_y)?.1;
    let cfg = TrainConfig {
        out_dir,
        overwrite: true,
        max_steps: Some(steps),
        eval_every: 100,
        log_every: 50,
        progress,
        monitor: Some(("val_acc".into(), nabla::train::Mode::Max)),
        ..TrainConfig::default()
    };
    let opt = AdamW::new(AdamConfig::new(1e-2))?;
    let summary = Trainer::new(cfg, opt).fit(&mut task)?;
    if progress != ProgressMode::Quiet {
        println!("{}", summary.describe());
    }
    Ok((before, task.eval_on(&task.val_x, &task.val_y)?.1))
}

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "runs/custom_layer".into());
    let (before, after) = run(out.into(), 600, ProgressMode::Auto)?;
    println!("validation accuracy: {before:.3} before training, {after:.3} after");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};

    /// The custom op and the whole model: analytic gradients (parameters and input) within 1e-6
    /// (relative) of central differences in f64, and the parameter names follow the structure.
    #[test]
    fn custom_layer_gradients_match_finite_differences() {
        let mut store = ParamStore::<f64>::new();
        let net = SpiralNet::new(VarBuilder::init(&mut store, &mut Rng::new(3)), 4, 2).unwrap();
        let names: Vec<String> = net.named_params(&store).into_iter().map(|p| p.0).collect();
        assert_eq!(names[0], "embed.weight");
        assert!(
            names.contains(&"blocks.1.fc2.bias".to_string()),
            "{names:?}"
        );
        assert_eq!(names.len(), store.len());
        let x = randn(&[5, 2], 1.0, &mut Rng::new(4));
        let rep = check_gradients(
            &store,
            std::slice::from_ref(&x),
            &GradCheckOptions::default(),
            |tape, s, v| {
                let y = net.forward(tape, s, v[0], &mut Ctx::eval())?;
                silu(tape, y)
            },
        )
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    }

    /// A few hundred steps of the shared Trainer learn the spirals (well above chance).
    #[test]
    fn trains_with_the_shared_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let (before, after) = run(dir.path().join("run"), 300, ProgressMode::Quiet).unwrap();
        println!("validation accuracy {before:.3} -> {after:.3}");
        assert!(after >= 0.85 && after > before + 0.2, "{before} -> {after}");
        assert!(dir.path().join("run/metrics.jsonl").exists());
    }
}
