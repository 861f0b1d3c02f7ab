//! Optimizers against torch.optim trajectories (../shared/fixtures/optim/trajectories.json):
//! every iterate w_k, k = 0..20, to |got − want| ≤ 1e-6 · max(1, |want|); plus clipping,
//! schedules, checkpointed state and argument validation.

use crate::common;

use nabla::optim::{
    clip_grad_norm, Adam, AdamConfig, AdamW, LrSchedule, Optimizer, Sgd, SgdConfig,
};
use nabla::{ParamStore, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;

fn load() -> Option<Value> {
    let p = common::shared("fixtures/optim/trajectories.json")?;
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    Some(serde_json::from_str(&s).expect("fixture is JSON"))
}

fn vec_of(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `∇f(w) = A w − b + 0.4 w³`.
fn grad(a: &[Vec<f64>], b: &[f64], w: &[f64]) -> Vec<f64> {
    (0..w.len())
        .map(|i| (0..w.len()).map(|j| a[i][j] * w[j]).sum::<f64>() - b[i] + 0.4 * w[i].powi(3))
        .collect()
}

fn make_opt(h: &Value) -> Box<dyn Optimizer<f64>> {
    let lr = h["lr"].as_f64().unwrap();
    let wd = h["weight_decay"].as_f64().unwrap();
    match h["optimizer"].as_str().unwrap() {
        "SGD" => Box::new(
            Sgd::new(SgdConfig {
                lr,
                momentum: h["momentum"].as_f64().unwrap(),
                dampening: h["dampening"].as_f64().unwrap(),
                weight_decay: wd,
                nesterov: h["nesterov"].as_bool().unwrap(),
            })
            .unwrap(),
        ),
        name @ ("Adam" | "AdamW") => {
            let betas = vec_of(&h["betas"]);
            let cfg = AdamConfig {
                lr,
                betas: (betas[0], betas[1]),
                eps: h["eps"].as_f64().unwrap(),
                weight_decay: wd,
            };
            if name == "Adam" {
                Box::new(Adam::new(cfg).unwrap())
            } else {
                Box::new(AdamW::new(cfg).unwrap())
            }
        }
        o => panic!("unknown optimizer {o}"),
    }
}

/// Runs `steps` steps of `opt` on the fixture objective from `w`, returning the iterates.
fn run(
    opt: &mut dyn Optimizer<f64>,
    store: &mut ParamStore<f64>,
    a: &[Vec<f64>],
    b: &[f64],
    steps: usize,
) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..steps {
        let w = store.by_name("w").unwrap().value.data().to_vec();
        let g = grad(a, b, &w);
        store.zero_grad();
        let id = store.find("w").unwrap();
        store.get_mut(id).grad.data_mut().copy_from_slice(&g);
        opt.step(store).unwrap();
        out.push(store.by_name("w").unwrap().value.data().to_vec());
    }
    out
}

#[test]
fn optimizers_match_torch_trajectories() {
    let Some(fx) = load() else { return };
    let a: Vec<Vec<f64>> = fx["A"].as_array().unwrap().iter().map(vec_of).collect();
    let b = vec_of(&fx["b"]);
    let w0 = vec_of(&fx["w0"]);
    let runs = fx["runs"].as_object().unwrap();
    assert_eq!(runs.len(), 7);
    for (name, run_v) in runs {
        let traj: Vec<Vec<f64>> = run_v["trajectory"]
            .as_array()
            .unwrap()
            .iter()
            .map(vec_of)
            .collect();
        assert_eq!(traj.len(), 21);
        let mut opt = make_opt(&run_v["hyperparams"]);
        let mut store = ParamStore::new();
        store
            .add("w", Tensor::new(&[5], w0.clone()).unwrap())
            .unwrap();
        let got = run(opt.as_mut(), &mut store, &a, &b, 20);
        let mut worst = 0.0f64;
        for (k, (g, want)) in got.iter().zip(&traj[1..]).enumerate() {
            for (x, y) in g.iter().zip(want) {
                let e = (x - y).abs() / y.abs().max(1.0);
                assert!(e <= 1e-6, "{name}: step {} got {g:?} want {want:?}", k + 1);
                worst = worst.max(e);
            }
        }
        eprintln!("{name}: worst scaled error over 20 steps {worst:.2e}");
        assert_eq!(opt.step_count(), 20);
    }
}

#[test]
fn checkpointed_state_resumes_identically() {
    let Some(fx) = load() else { return };
    let a: Vec<Vec<f64>> = fx["A"].as_array().unwrap().iter().map(vec_of).collect();
    let b = vec_of(&fx["b"]);
    let w0 = vec_of(&fx["w0"]);
    for name in ["sgd_momentum", "adam", "adamw"] {
        let h = &fx["runs"][name]["hyperparams"];
        let mut store = ParamStore::new();
        store
            .add("w", Tensor::new(&[5], w0.clone()).unwrap())
            .unwrap();
        let mut full = make_opt(h);
        let straight = run(full.as_mut(), &mut store.clone(), &a, &b, 20);
        // 10 steps, checkpoint, fresh optimizer, load, 10 more.
        let mut first = make_opt(h);
        run(first.as_mut(), &mut store, &a, &b, 10);
        let state: BTreeMap<String, Tensor<f64>> = first.state_tensors().into_iter().collect();
        assert!(state.keys().all(|k| k.starts_with("w.")), "{state:?}");
        let mut second = make_opt(h);
        second
            .load_state_tensors(&state, first.step_count())
            .unwrap();
        let resumed = run(second.as_mut(), &mut store, &a, &b, 10);
        assert_eq!(resumed.last(), straight.last(), "{name}");
        assert_eq!(second.step_count(), 20);
    }
}

#[test]
fn clip_grad_norm_matches_torch_formula() {
    let mut store = ParamStore::<f64>::new();
    let a = store.add("a", Tensor::zeros(&[2])).unwrap();
    let b = store.add("b", Tensor::zeros(&[1])).unwrap();
    store.get_mut(a).grad = Tensor::new(&[2], vec![3.0, 0.0]).unwrap();
    store.get_mut(b).grad = Tensor::new(&[1], vec![4.0]).unwrap();
    let n = clip_grad_norm(&mut store, 1.0);
    assert!((n - 5.0).abs() < 1e-12);
    let c = 1.0 / (5.0 + 1e-6);
    assert!((store.get(a).grad.data()[0] - 3.0 * c).abs() < 1e-15);
    assert!((store.get(b).grad.data()[0] - 4.0 * c).abs() < 1e-15);
    // Below the threshold nothing changes.
    let n2 = clip_grad_norm(&mut store, 10.0);
    assert!((n2 - 5.0 * c).abs() < 1e-12);
    assert!((store.get(b).grad.data()[0] - 4.0 * c).abs() < 1e-15);
}

/// The one schedule ([`LrSchedule::lr`], what the trainer calls): PyTorch's `StepLR` and
/// `CosineAnnealingLR` (`T_max` = the steps after the warm-up), timm's linear warm-up, exact
/// values at the boundaries (1e-15) and in between (1e-12).
#[test]
fn lr_schedules() {
    let c = LrSchedule::Constant;
    assert_eq!(c.lr(0.1, 1000, 10, 0), 0.1);
    let s = LrSchedule::Step {
        step_size: 10,
        gamma: 0.5,
    };
    assert_eq!(
        (
            s.lr(1.0, 9, 100, 0),
            s.lr(1.0, 10, 100, 0),
            s.lr(1.0, 25, 100, 0)
        ),
        (1.0, 0.5, 0.25)
    );
    let cos = LrSchedule::Cosine { min_lr: 0.0 };
    assert!((cos.lr(1.0, 0, 100, 0) - 1.0).abs() < 1e-15);
    assert!((cos.lr(1.0, 50, 100, 0) - 0.5).abs() < 1e-12);
    assert!(cos.lr(1.0, 100, 100, 0).abs() < 1e-15 && cos.lr(1.0, 500, 100, 0) == 0.0);
    let w = LrSchedule::Cosine { min_lr: 0.1 };
    assert!((w.lr(1.0, 0, 110, 10) - 0.1).abs() < 1e-15);
    assert!((w.lr(1.0, 4, 110, 10) - 0.5).abs() < 1e-15);
    assert!((w.lr(1.0, 9, 110, 10) - 1.0).abs() < 1e-15);
    assert!((w.lr(1.0, 10, 110, 10) - 1.0).abs() < 1e-15);
    assert!((w.lr(1.0, 60, 110, 10) - 0.55).abs() < 1e-12);
    assert!((w.lr(1.0, 110, 110, 10) - 0.1).abs() < 1e-15);
    // Warm-up then constant; the step schedule counts from the end of the warm-up.
    assert!((c.lr(0.1, 1, 10, 4) - 0.05).abs() < 1e-15);
    assert_eq!(s.lr(1.0, 14, 100, 5), 1.0);
    assert_eq!(s.lr(1.0, 15, 100, 5), 0.5);
    let lin = LrSchedule::Linear { min_lr: 0.2 };
    assert!((lin.lr(1.0, 5, 10, 0) - 0.6).abs() < 1e-12);
    assert!((lin.lr(1.0, 20, 10, 0) - 0.2).abs() < 1e-15);
}

#[test]
fn bad_optimizer_arguments_are_errors() {
    assert!(Sgd::<f32>::plain(0.0).is_err());
    assert!(Sgd::<f32>::plain(-1.0).is_err());
    assert!(Sgd::<f32>::plain(f64::NAN).is_err());
    let e = Sgd::<f32>::new(SgdConfig {
        nesterov: true,
        ..SgdConfig::plain(0.1)
    })
    .unwrap_err();
    assert!(e.to_string().contains("Nesterov"), "{e}");
    let e = Adam::<f32>::new(AdamConfig {
        betas: (1.0, 0.999),
        ..AdamConfig::new(1e-3)
    })
    .unwrap_err();
    assert!(e.to_string().contains("beta1"), "{e}");
    assert!(AdamW::<f32>::new(AdamConfig {
        betas: (0.9, -0.1),
        ..AdamConfig::new(1e-3)
    })
    .is_err());
    assert!(AdamW::<f32>::new(AdamConfig::new(-1e-3)).is_err());
    assert!(LrSchedule::Step {
        step_size: 0,
        gamma: 0.5
    }
    .validate()
    .is_err());
    assert!(LrSchedule::Step {
        step_size: 3,
        gamma: f64::NAN
    }
    .validate()
    .is_err());
    assert!(LrSchedule::Cosine { min_lr: -1.0 }.validate().is_err());
    // A negative rate set later is refused at the step.
    let mut opt = Adam::<f32>::new(AdamConfig::new(1e-3)).unwrap();
    opt.set_lr(-1.0);
    let mut store = ParamStore::<f32>::new();
    store.add("w", Tensor::zeros(&[3])).unwrap();
    assert!(opt.step(&mut store).is_err());
    // State with an unknown slot or a wrong shape is refused.
    let mut bad = BTreeMap::new();
    bad.insert("w.momentum".to_string(), Tensor::<f32>::zeros(&[3]));
    assert!(opt.load_state_tensors(&bad, 1).is_err());
    let mut wrong = BTreeMap::new();
    wrong.insert("w.exp_avg".to_string(), Tensor::<f32>::zeros(&[4]));
    wrong.insert("w.exp_avg_sq".to_string(), Tensor::<f32>::zeros(&[4]));
    opt.set_lr(1e-3);
    opt.load_state_tensors(&wrong, 1).unwrap();
    assert!(opt.step(&mut store).is_err());
}

/// The PyTorch trajectories and the exact resume of optimizer state again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "optimizers_match_torch_trajectories",
            "checkpointed_state_resumes_identically",
            "clip_grad_norm_matches_torch_formula",
        ],
    );
}
