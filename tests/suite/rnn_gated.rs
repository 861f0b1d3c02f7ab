//! LSTM and GRU: the fused sequence ops' hand-derived BPTT against the unrolled primitive-op
//! reference and central finite differences (f64), chunked truncation and TBPTT(k1, k2), the
//! PyTorch fixtures (`lstm/`, `gru/`: every case, exact and every K) through the library and
//! through `nabla rnn grad --cell`, and the modules' PyTorch names.

use crate::common;

use nabla::analysis::gated::{self, GatedWeights};
use nabla::autograd::{ParamStore, Tape, Var};
use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::rnn::{
    gru_seq, gru_unrolled, lstm_seq, lstm_unrolled, BackwardOptions, CellKind, CellVars, Gru, Lstm,
};
use nabla::nn::{Ctx, Module, VarBuilder};
use nabla::{ops, Result, Rng, Tensor};
use std::collections::BTreeMap;

/// Normwise relative difference `max|a − b| / max|b|`.
fn rel(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
    let scale = b
        .data()
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    a.max_abs_diff(b).unwrap() / scale
}

struct Problem {
    cell: CellKind,
    store: ParamStore<f64>,
    x: Tensor<f64>,
    z: Tensor<f64>,
    h0: Tensor<f64>,
    c0: Tensor<f64>,
    /// Projections of h_T and c_T into the loss, so gradients arriving there are tested too.
    rh: Tensor<f64>,
    rc: Tensor<f64>,
}

fn problem(
    cell: CellKind,
    seed: u64,
    b: usize,
    t: usize,
    i: usize,
    h: usize,
    bias: bool,
) -> Problem {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    let g = cell.gates();
    let s = 1.0 / (h as f64).sqrt();
    store
        .add("weight_ih", randn(&[g * h, i], s, &mut rng))
        .unwrap();
    store
        .add("weight_hh", randn(&[g * h, h], 1.5 * s, &mut rng))
        .unwrap();
    if bias {
        store
            .add("bias_ih", randn(&[g * h], 0.5, &mut rng))
            .unwrap();
        store
            .add("bias_hh", randn(&[g * h], 0.5, &mut rng))
            .unwrap();
    }
    store.add("V", randn(&[2, h], s, &mut rng)).unwrap();
    Problem {
        cell,
        store,
        x: randn(&[b, t, i], 1.0, &mut rng),
        z: randn(&[b, t, 2], 1.0, &mut rng),
        h0: randn(&[b, h], 0.5, &mut rng),
        c0: randn(&[b, h], 0.5, &mut rng),
        rh: randn(&[b, h], 1.0, &mut rng),
        rc: randn(&[b, h], 1.0, &mut rng),
    }
}

fn cell_vars(tape: &mut Tape<f64>, p: &ParamStore<f64>) -> CellVars {
    let mut get = |n: &str| p.find(n).map(|id| tape.param(p, id));
    CellVars {
        w_ih: get("weight_ih").unwrap(),
        w_hh: get("weight_hh").unwrap(),
        b_ih: get("bias_ih"),
        b_hh: get("bias_hh"),
    }
}

/// `Σ‖z − y V ᵀ‖² + Σ h_T ⊙ rh (+ Σ c_T ⊙ rc)` on either path.
fn loss(
    tape: &mut Tape<f64>,
    p: &ParamStore<f64>,
    v: &[Var],
    pr: &Problem,
    fused: bool,
    truncate: Option<usize>,
) -> Result<Var> {
    let (x, h0, c0, z, rh, rc) = (v[0], v[1], v[2], v[3], v[4], v[5]);
    let cv = cell_vars(tape, p);
    let (y, hl, cl) = match (pr.cell, fused) {
        (CellKind::Lstm, true) => {
            let o = lstm_seq(tape, x, Some(h0), Some(c0), &cv, truncate)?;
            (o.y, o.h_last, Some(o.c_last))
        }
        (CellKind::Lstm, false) => {
            let (y, h, c) = lstm_unrolled(tape, x, Some(h0), Some(c0), &cv, truncate)?;
            (y, h, Some(c))
        }
        (_, true) => {
            let o = gru_seq(tape, x, Some(h0), &cv, truncate)?;
            (o.y, o.h_last, None)
        }
        (_, false) => {
            let (y, h) = gru_unrolled(tape, x, Some(h0), &cv, truncate)?;
            (y, h, None)
        }
    };
    let vv = tape.param(p, p.find("V").unwrap());
    let yo = ops::linear(tape, y, vv, None)?;
    let mut l = ops::mse_sum(tape, yo, z)?;
    let m = ops::mul(tape, hl, rh)?;
    let m = ops::sum_all(tape, m)?;
    l = ops::add(tape, l, m)?;
    if let Some(c) = cl {
        let m = ops::mul(tape, c, rc)?;
        let m = ops::sum_all(tape, m)?;
        l = ops::add(tape, l, m)?;
    }
    Ok(l)
}

fn inputs(pr: &Problem) -> Vec<Tensor<f64>> {
    vec![pr.x.clone(), pr.h0.clone(), pr.c0.clone()]
}

fn grads(pr: &Problem, fused: bool, truncate: Option<usize>) -> (f64, Vec<(String, Tensor<f64>)>) {
    let mut tape = Tape::<f64>::new();
    let v = vec![
        tape.input(pr.x.clone()),
        tape.input(pr.h0.clone()),
        tape.input(pr.c0.clone()),
        tape.constant(pr.z.clone()),
        tape.constant(pr.rh.clone()),
        tape.constant(pr.rc.clone()),
    ];
    let l = loss(&mut tape, &pr.store, &v, pr, fused, truncate).unwrap();
    tape.backward(l).unwrap();
    let mut store = pr.store.clone();
    store.zero_grad();
    tape.accumulate_grads(&mut store).unwrap();
    let mut out: Vec<(String, Tensor<f64>)> = store
        .iter()
        .map(|p| (p.name.clone(), p.grad.clone()))
        .collect();
    out.push(("x".into(), tape.grad(v[0]).unwrap().clone()));
    out.push(("h0".into(), tape.grad(v[1]).unwrap().clone()));
    if pr.cell == CellKind::Lstm {
        out.push(("c0".into(), tape.grad(v[2]).unwrap().clone()));
    }
    (tape.value(l).item(), out)
}

#[test]
fn fused_equals_unrolled_f64() {
    let mut n = 0;
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for bias in [false, true] {
            for truncate in [None, Some(1), Some(2), Some(3), Some(7), Some(50)] {
                let pr = problem(cell, 11 + n, 3, 7, 4, 5, bias);
                let (lf, gf) = grads(&pr, true, truncate);
                let (lu, gu) = grads(&pr, false, truncate);
                assert!(
                    (lf - lu).abs() <= 1e-12 * lu.abs().max(1.0),
                    "{cell} loss {lf} vs {lu}"
                );
                assert_eq!(gf.len(), gu.len());
                for ((name, a), (_, b)) in gf.iter().zip(&gu) {
                    let e = rel(a, b);
                    assert!(
                        e < 1e-10,
                        "{cell} bias={bias} k={truncate:?} {name}: rel {e:e}"
                    );
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 24);
}

#[test]
fn truncation_changes_recurrent_gradients_only_below_length() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let pr = problem(cell, 3, 2, 6, 3, 4, true);
        let (_, full) = grads(&pr, true, None);
        let (_, t6) = grads(&pr, true, Some(6));
        let (_, t2) = grads(&pr, true, Some(2));
        for ((n, a), (_, b)) in full.iter().zip(&t6) {
            assert!(rel(a, b) < 1e-14, "{cell} {n}");
        }
        // weight_hh is recurrent: a real truncation changes its gradient.
        assert!(rel(&t2[1].1, &full[1].1) > 1e-3, "{cell}");
    }
}

#[test]
fn fused_matches_finite_differences() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for bias in [false, true] {
            let pr = problem(cell, 7, 2, 5, 3, 4, bias);
            let (z, rh, rc) = (pr.z.clone(), pr.rh.clone(), pr.rc.clone());
            let rep = check_gradients(
                &pr.store,
                &inputs(&pr),
                &GradCheckOptions::default(),
                |tape, p, v| {
                    let zc = tape.constant(z.clone());
                    let a = tape.constant(rh.clone());
                    let b = tape.constant(rc.clone());
                    loss(tape, p, &[v[0], v[1], v[2], zc, a, b], &pr, true, None)
                },
            )
            .unwrap();
            // Central differences of the exact loss (the fused-vs-unrolled test is the tight
            // check, 1e-10); the GRU's small weight_hh entries reach a few 1e-6 here.
            assert!(
                rep.max_rel_error < 2e-5,
                "{cell} bias={bias}: {:?}",
                rep.per_tensor
            );
        }
    }
}

fn weights_of(pr: &Problem) -> GatedWeights<f64> {
    let get = |n: &str| pr.store.by_name(n).map(|p| p.value.clone());
    GatedWeights {
        cell: pr.cell,
        w_ih: get("weight_ih").unwrap(),
        w_hh: get("weight_hh").unwrap(),
        b_ih: get("bias_ih").ok(),
        b_hh: get("bias_hh").ok(),
        v: get("V").unwrap(),
    }
}

/// The tape-free API (the CLI's) equals the tape path, exact and truncated.
#[test]
fn tape_free_equals_tape_path() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        for k in [None, Some(2)] {
            let mut pr = problem(cell, 21, 3, 6, 2, 4, true);
            pr.rh = Tensor::zeros(pr.rh.shape());
            pr.rc = Tensor::zeros(pr.rc.shape());
            let (l, g) = grads(&pr, true, k);
            let w = weights_of(&pr);
            let c0 = (cell == CellKind::Lstm).then_some(&pr.c0);
            let d = w
                .mse_bptt(
                    &pr.x,
                    &pr.z,
                    Some(&pr.h0),
                    c0,
                    &BackwardOptions {
                        truncate: k,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert!((d.loss - l).abs() < 1e-12 * l);
            let by: BTreeMap<_, _> = g.into_iter().collect();
            for (name, t) in d.named() {
                assert!(rel(t, &by[name]) < 1e-12, "{cell} {k:?} {name}");
            }
            assert!(rel(&d.h0, &by["h0"]) < 1e-12);
            if let Some(c) = &d.c0 {
                assert!(rel(c, &by["c0"]) < 1e-12);
            }
        }
    }
}

/// TBPTT(k, k) is chunked truncation with k; TBPTT(k1, k2 ≥ T) is exact BPTT; and a general
/// TBPTT(k1, k2) is the sum over its windows of exact BPTT from the carried state.
#[test]
fn tbptt_special_cases_and_window_sum() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        // T = 8: a multiple of every k below (TBPTT's last window reaches k2 steps back, a
        // chunk stops at its boundary, so they agree only when k divides T).
        let pr = problem(cell, 5, 2, 8, 3, 4, true);
        let w = weights_of(&pr);
        let c0 = (cell == CellKind::Lstm).then_some(&pr.c0);
        let run = |k: Option<usize>| {
            w.mse_bptt(
                &pr.x,
                &pr.z,
                Some(&pr.h0),
                c0,
                &BackwardOptions {
                    truncate: k,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        for k in [1, 2, 4] {
            let a = w.mse_tbptt(&pr.x, &pr.z, Some(&pr.h0), c0, k, k).unwrap();
            let b = run(Some(k));
            for ((n, x), (_, y)) in a.named().into_iter().zip(b.named()) {
                assert!(rel(x, y) < 1e-12, "{cell} k={k} {n} {}", rel(x, y));
            }
            assert!(rel(&a.h0, &b.h0) < 1e-12);
        }
        let a = w.mse_tbptt(&pr.x, &pr.z, Some(&pr.h0), c0, 3, 9).unwrap();
        let b = run(None);
        for ((n, x), (_, y)) in a.named().into_iter().zip(b.named()) {
            assert!(rel(x, y) < 1e-12, "{cell} exact {n}");
        }
        // General (k1, k2) = (2, 3): windows end at 2, 4, 6, 8; each starts k2 steps back.
        let g = w.mse_tbptt(&pr.x, &pr.z, Some(&pr.h0), c0, 2, 3).unwrap();
        let full = w
            .mse_bptt(&pr.x, &pr.z, Some(&pr.h0), c0, &BackwardOptions::default())
            .unwrap();
        assert!((g.loss - full.loss).abs() < 1e-12 * full.loss);
        // It differs from both the exact and the chunked gradient.
        assert!(rel(&g.w_hh, &full.w_hh) > 1e-4, "{cell}");
        assert!(rel(&g.w_hh, &run(Some(2)).w_hh) > 1e-4, "{cell}");
        assert!(w.mse_tbptt(&pr.x, &pr.z, None, None, 3, 2).is_err());
    }
}

#[test]
fn modules_use_pytorch_names_and_load_by_them() {
    let mut store = ParamStore::<f64>::new();
    let mut rng = Rng::new(1);
    let mut vb = VarBuilder::init(&mut store, &mut rng);
    let lstm = Lstm::new(vb.pp("lstm"), 3, 4, true).unwrap();
    let gru = Gru::new(vb.pp("gru"), 3, 4, true).unwrap();
    let names: Vec<_> = store
        .iter()
        .map(|p| (p.name.clone(), p.value.shape().to_vec()))
        .collect();
    assert_eq!(
        names,
        [
            ("lstm.weight_ih".to_string(), vec![16, 3]),
            ("lstm.weight_hh".into(), vec![16, 4]),
            ("lstm.bias_ih".into(), vec![16]),
            ("lstm.bias_hh".into(), vec![16]),
            ("gru.weight_ih".into(), vec![12, 3]),
            ("gru.weight_hh".into(), vec![12, 4]),
            ("gru.bias_ih".into(), vec![12]),
            ("gru.bias_hh".into(), vec![12]),
        ]
    );
    // PyTorch's init range U(±1/√hidden).
    assert!(store
        .iter()
        .all(|p| p.value.data().iter().all(|v| v.abs() <= 0.5)));
    assert_eq!(Module::<f64>::params(&lstm).len(), 4);
    assert_eq!(
        Module::<f64>::num_params(&gru, &store),
        12 * 3 + 12 * 4 + 24
    );
    // Module::forward: the hidden sequence (B, T, H).
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[2, 5, 3], 1.0, &mut rng));
    let y = lstm
        .forward(&mut tape, &store, x, &mut Ctx::eval())
        .unwrap();
    assert_eq!(tape.shape(y), [2, 5, 4]);
    let y = gru.forward(&mut tape, &store, x, &mut Ctx::eval()).unwrap();
    assert_eq!(tape.shape(y), [2, 5, 4]);
    // Bad sizes are errors that name the tensor.
    let xb = tape.constant(randn(&[2, 5, 2], 1.0, &mut rng));
    let e = lstm
        .forward(&mut tape, &store, xb, &mut Ctx::eval())
        .unwrap_err();
    assert!(e.to_string().contains("input = 3"), "{e}");
    let mut vb = VarBuilder::init(&mut store, &mut rng);
    assert!(Lstm::new(vb.pp("bad"), 0, 4, true).is_err());
    // The Elman RNN on the same machinery: dotted names, a Module whose output is y (B, T, O).
    let mut es = ParamStore::<f64>::new();
    let cfg = nabla::nn::rnn::ElmanRnnConfig {
        input: 3,
        hidden: 4,
        output: 2,
        activation: nabla::nn::Activation::Tanh,
        bias: true,
    };
    let mut vb = VarBuilder::init(&mut es, &mut rng);
    let e = nabla::nn::rnn::ElmanRnn::new(vb.pp("enc").pp("rnn"), cfg).unwrap();
    let names: Vec<_> = es.iter().map(|p| p.name.clone()).collect();
    assert_eq!(
        names,
        [
            "enc.rnn.W",
            "enc.rnn.U",
            "enc.rnn.V",
            "enc.rnn.b_h",
            "enc.rnn.b_y"
        ]
    );
    assert_eq!(Module::<f64>::params(&e).len(), 5);
    let mut tape = Tape::new();
    let x = tape.constant(randn(&[2, 5, 3], 1.0, &mut rng));
    let y = e.forward(&mut tape, &es, x, &mut Ctx::eval()).unwrap();
    assert_eq!(tape.shape(y), [2, 5, 2]);
}

// ---------------------------------------------------------------- fixtures and `nabla rnn grad`

/// `|got − want| ≤ tol·max(1, max|want|)` per tensor, on nested JSON lists.
fn assert_close_json(got: &serde_json::Value, want: &serde_json::Value, tol: f64, what: &str) {
    fn flat(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let (mut g, mut w) = (Vec::new(), Vec::new());
    flat(got, &mut g);
    flat(want, &mut w);
    assert_eq!(g.len(), w.len(), "{what}: sizes");
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= tol * scale,
        "{what}: max abs error {err:e} > {tol:e}·{scale}"
    );
}

/// Every (cell, case, K) of the fixtures: `(cell, dir, case, K, expected)`.
fn fixture_checks() -> Vec<(
    CellKind,
    std::path::PathBuf,
    String,
    Option<usize>,
    serde_json::Value,
)> {
    let mut out = Vec::new();
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let Some(dir) = common::shared(&format!("fixtures/{cell}")) else {
            continue;
        };
        for case in ["case1", "case2"] {
            let want: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join(format!("{case}.expected.json"))).unwrap(),
            )
            .unwrap();
            out.push((cell, dir.clone(), case.to_string(), None, want.clone()));
            let ks = want["meta"]["K_values"].as_array().unwrap().clone();
            assert!(!ks.is_empty());
            for k in ks {
                let k = k.as_u64().unwrap() as usize;
                let w = want["truncated"][k.to_string()].clone();
                assert!(w.is_object(), "{cell} {case} K={k}");
                out.push((cell, dir.clone(), case.to_string(), Some(k), w));
            }
        }
    }
    out
}

fn check_against(got: &serde_json::Value, w: &serde_json::Value, tol: f64, what: &str) {
    assert_close_json(&got["loss"], &w["loss"], tol, &format!("{what} loss"));
    let names = w["grad"].as_object().unwrap();
    assert_eq!(
        names.len(),
        got["grad"].as_object().unwrap().len(),
        "{what}: gradient names {:?} vs {:?}",
        names.keys().collect::<Vec<_>>(),
        got["grad"].as_object().unwrap().keys().collect::<Vec<_>>()
    );
    for name in names.keys() {
        assert_close_json(
            &got["grad"][name],
            &w["grad"][name],
            tol,
            &format!("{what} {name}"),
        );
    }
}

#[test]
fn fixtures_full_and_truncated_gradients() {
    let checks = fixture_checks();
    if checks.is_empty() {
        return;
    }
    assert_eq!(checks.len(), 2 * (1 + 3) + 2 * (1 + 2));
    for (cell, dir, case, k, w) in checks {
        let p = gated::load_problem(
            cell,
            &dir.join(format!("{case}.params.safetensors")),
            &dir.join(format!("{case}.batch.safetensors")),
        )
        .unwrap();
        let got = gated::grad_json(&p, k).unwrap();
        // Computed in f64 from the stored values, like the fixture: the f64 tolerance (the
        // README's 1e-4 for float32 cases is met with room; the f32 path is checked below).
        check_against(&got, &w, 1e-9, &format!("{cell} {case} K={k:?}"));
    }
}

/// The float32 cases through the f32 modules on the tape (weights loaded by their PyTorch
/// names through a VarBuilder), at the README's float32 tolerance 1e-4.
#[test]
fn fixtures_float32_through_the_modules() {
    for (cell, dir, case, k, w) in fixture_checks() {
        if case != "case2" {
            continue;
        }
        let params =
            nabla::io::load_safetensors::<f32>(&dir.join("case2.params.safetensors")).unwrap();
        let batch =
            nabla::io::load_safetensors::<f32>(&dir.join("case2.batch.safetensors")).unwrap();
        let tensors: BTreeMap<String, Tensor<f32>> =
            params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (i, h) = (batch["x"].dim(2), params["weight_hh"].dim(1));
        let mut store = ParamStore::<f32>::new();
        let mut vb = VarBuilder::load(&mut store, &tensors);
        let lstm = (cell == CellKind::Lstm).then(|| Lstm::new(vb.pp(""), i, h, true).unwrap());
        let gru = (cell == CellKind::Gru).then(|| Gru::new(vb.pp(""), i, h, true).unwrap());
        let mut tape = Tape::<f32>::new();
        let x = tape.constant(batch["x"].clone());
        let z = tape.constant(batch["z"].clone());
        let h0 = tape.input(params["h0"].clone());
        let (y, c0) = if let Some(m) = lstm {
            let c0 = tape.input(params["c0"].clone());
            (
                m.forward_seq(&mut tape, &store, x, Some(h0), Some(c0), k)
                    .unwrap()
                    .y,
                Some(c0),
            )
        } else {
            (
                gru.unwrap()
                    .forward_seq(&mut tape, &store, x, Some(h0), k)
                    .unwrap()
                    .y,
                None,
            )
        };
        let v = tape.input(params["V"].clone());
        let yo = ops::linear(&mut tape, y, v, None).unwrap();
        let l = ops::mse_sum(&mut tape, yo, z).unwrap();
        tape.backward(l).unwrap();
        store.zero_grad();
        tape.accumulate_grads(&mut store).unwrap();
        let mut grad = serde_json::Map::new();
        for p in store.iter() {
            grad.insert(p.name.clone(), p.grad.cast::<f64>().to_json());
        }
        grad.insert("V".into(), tape.grad(v).unwrap().cast::<f64>().to_json());
        grad.insert("h0".into(), tape.grad(h0).unwrap().cast::<f64>().to_json());
        if let Some(c0) = c0 {
            grad.insert("c0".into(), tape.grad(c0).unwrap().cast::<f64>().to_json());
        }
        let got = serde_json::json!({"loss": tape.value(l).item() as f64, "grad": grad});
        check_against(&got, &w, 1e-4, &format!("f32 {cell} {case} K={k:?}"));
    }
}

fn nabla_bin(args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn cli_rnn_grad_cell_matches_every_fixture_case() {
    let checks = fixture_checks();
    for (cell, dir, case, k, w) in &checks {
        let p = dir.join(format!("{case}.params.safetensors"));
        let b = dir.join(format!("{case}.batch.safetensors"));
        let mut args = vec![
            "rnn".to_string(),
            "grad".into(),
            "--cell".into(),
            cell.to_string(),
            "--params".into(),
            p.display().to_string(),
            "--batch".into(),
            b.display().to_string(),
            "--json".into(),
        ];
        if let Some(k) = k {
            args.extend(["--truncate".into(), k.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let (code, out, err) = nabla_bin(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        check_against(&got, w, 1e-9, &format!("cli {cell} {case} K={k:?}"));
    }
    if let Some((_, dir, ..)) = checks.first() {
        // An LSTM file read as a GRU: the shapes do not fit, and the error says why.
        let p = dir.join("case1.params.safetensors");
        let b = dir.join("case1.batch.safetensors");
        let (code, _, err) = nabla_bin(&[
            "rnn",
            "grad",
            "--cell",
            "gru",
            "--params",
            p.to_str().unwrap(),
            "--batch",
            b.to_str().unwrap(),
        ]);
        assert_ne!(code, 0);
        assert!(err.contains("weight_ih"), "{err}");
        let (code, _, err) = nabla_bin(&[
            "rnn", "grad", "--cell", "tree", "--params", "a", "--batch", "b",
        ]);
        assert_ne!(code, 0);
        assert!(err.contains("elman, lstm or gru"), "{err}");
    }
}

/// The f32 fused ops (vectorized sigmoid/tanh, f32 products) against the f64 ones on the same
/// values: relative 1e-4 on the loss and every gradient.
#[test]
fn f32_fused_matches_f64() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let pr = problem(cell, 31, 4, 12, 5, 16, true);
        let w = weights_of(&pr);
        let c0 = (cell == CellKind::Lstm).then_some(&pr.c0);
        let g64 = w
            .mse_bptt(&pr.x, &pr.z, Some(&pr.h0), c0, &BackwardOptions::default())
            .unwrap();
        let c = |t: &Tensor<f64>| t.cast::<f32>();
        let w32 = GatedWeights {
            cell,
            w_ih: c(&w.w_ih),
            w_hh: c(&w.w_hh),
            b_ih: w.b_ih.as_ref().map(c),
            b_hh: w.b_hh.as_ref().map(c),
            v: c(&w.v),
        };
        let c0_32 = c0.map(c);
        let g32 = w32
            .mse_bptt(
                &c(&pr.x),
                &c(&pr.z),
                Some(&c(&pr.h0)),
                c0_32.as_ref(),
                &BackwardOptions::default(),
            )
            .unwrap();
        assert!((g32.loss - g64.loss).abs() < 1e-4 * g64.loss, "{cell} loss");
        for ((n, a), (_, b)) in g32.named().into_iter().zip(g64.named()) {
            let e = rel(&a.cast::<f64>(), b);
            assert!(e < 1e-4, "{cell} {n}: {e:e}");
        }
    }
}

/// The tests above again on every other kernel path this CPU has.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "fused_equals_unrolled_f64",
            "fixtures_full_and_truncated_gradients",
            "fixtures_float32_through_the_modules",
            "f32_fused_matches_f64",
        ],
    );
}

/// `rnn analyze --cell`: the three series on a small delay task, and their sanity: at t = T
/// the total gradient is the last step's own term (equal series there), the Elman series is
/// the single-cell analysis', everything finite, and a late error shrinks going back in time.
#[test]
fn cell_comparison_has_three_sensible_series() {
    use nabla::analysis::rnn as an;
    let (b, t, lag, h) = (3, 20, 4, 6);
    let c = an::compare_cells(&CellKind::ALL, b, t, lag, h, 0.9, 2).unwrap();
    assert_eq!(
        c.cells.iter().map(|f| f.cell).collect::<Vec<_>>(),
        ["elman", "lstm", "gru"]
    );
    let p = an::delay_problem(b, t, lag, h, 0.9, 2).unwrap();
    let elman = an::grad_h_norms(&p).unwrap();
    for f in &c.cells {
        assert_eq!(f.grad_h_norm.len(), t, "{}", f.cell);
        assert_eq!(f.last_loss_grad_h_norm.len(), t);
        assert!(f.loss.is_finite() && f.loss > 0.0);
        let (tot, last) = (&f.grad_h_norm, &f.last_loss_grad_h_norm);
        assert!(tot.iter().chain(last).all(|v| v.is_finite() && *v >= 0.0));
        assert!(
            (tot[t - 1] - last[t - 1]).abs() <= 1e-12 * tot[t - 1],
            "{}: {} vs {}",
            f.cell,
            tot[t - 1],
            last[t - 1]
        );
        assert!(last[0] < last[t - 1], "{}: {last:?}", f.cell);
        let want = last[t - 1 - lag] / last[t - 1];
        assert!((f.ratio_over_lag - want).abs() <= 1e-12 * want);
    }
    for (a, e) in c.cells[0].grad_h_norm.iter().zip(&elman) {
        assert!((a - e).abs() <= 1e-12 * e);
    }
    assert!(an::compare_cells(&[], b, t, lag, h, 0.9, 2).is_err());
    // The CLI writes the same comparison.
    let out = std::env::temp_dir().join(format!("rnn-gated-analyze-{}", std::process::id()));
    let (code, _, err) = nabla_bin(&[
        "rnn",
        "analyze",
        "--cell",
        "lstm,gru",
        "--batch-size",
        "3",
        "--seq-len",
        "20",
        "--lag",
        "4",
        "--hidden",
        "6",
        "--seed",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("cells.json")).unwrap()).unwrap();
    let cells = j["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["cell"], "lstm");
    assert_eq!(
        cells[0]["grad_h_norm"].as_array().unwrap().len(),
        20,
        "{cells:?}"
    );
    let got = cells[1]["last_loss_grad_h_norm"][0].as_f64().unwrap();
    let want = c.cells[2].last_loss_grad_h_norm[0];
    assert!((got - want).abs() <= 1e-12 * want);
    assert!(out.join("cells.svg").exists());
    assert!(
        !out.join("analysis.json").exists(),
        "no elman, no Elman analysis"
    );
    let (code, _, err) = nabla_bin(&[
        "rnn",
        "analyze",
        "--cell",
        "lstm",
        "--params",
        "p",
        "--batch",
        "b",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("delay-line"), "{err}");
    std::fs::remove_dir_all(&out).ok();
}
