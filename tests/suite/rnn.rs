//! Elman RNN: fused BPTT vs the unrolled primitive-op reference vs finite differences, the
//! chunked and Williams–Peng truncations, and the PyTorch fixtures.

use crate::common;

use nabla::autograd::{ParamStore, Tape, Var};
use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::rnn::{
    elman_seq, elman_unrolled, Activation, BackwardOptions, ElmanWeights, RnnVars, TbpttSchedule,
    TbpttWindow,
};
use nabla::{ops, Result, Rng, Tensor};

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
    store: ParamStore<f64>,
    x: Tensor<f64>,
    z: Tensor<f64>,
    h0: Tensor<f64>,
    /// Projection of h_T into the loss, so the gradient arriving at h_T is tested too.
    r: Tensor<f64>,
    activation: Activation,
    bias: bool,
}

#[allow(clippy::too_many_arguments)]
fn problem(
    seed: u64,
    b: usize,
    t: usize,
    i: usize,
    h: usize,
    o: usize,
    act: Activation,
    bias: bool,
) -> Problem {
    let mut rng = Rng::new(seed);
    let mut store = ParamStore::new();
    let s = 1.0 / (h as f64).sqrt();
    store.add("W", randn(&[h, i], s, &mut rng)).unwrap();
    store.add("U", randn(&[h, h], 1.5 * s, &mut rng)).unwrap();
    store.add("V", randn(&[o, h], s, &mut rng)).unwrap();
    if bias {
        store.add("b_h", randn(&[h], 0.3, &mut rng)).unwrap();
        store.add("b_y", randn(&[o], 0.3, &mut rng)).unwrap();
    }
    let h0 = match act {
        Activation::Sigmoid => Tensor::from_fn(&[b, h], |_| rng.uniform()),
        _ => randn(&[b, h], 0.5, &mut rng),
    };
    Problem {
        store,
        x: randn(&[b, t, i], 1.0, &mut rng),
        z: randn(&[b, t, o], 1.0, &mut rng),
        h0,
        r: randn(&[b, h], 1.0, &mut rng),
        activation: act,
        bias,
    }
}

fn vars(tape: &mut Tape<f64>, p: &ParamStore<f64>, act: Activation, bias: bool) -> RnnVars {
    let id = |n: &str| p.find(n).unwrap();
    RnnVars {
        w: tape.param(p, id("W")),
        u: tape.param(p, id("U")),
        v: tape.param(p, id("V")),
        b_h: bias.then(|| tape.param(p, id("b_h"))),
        b_y: bias.then(|| tape.param(p, id("b_y"))),
        activation: act,
    }
}

/// `L = Σ‖z − y‖² + Σ r ⊙ h_T` through the fused op or the unrolled reference.
fn loss(
    tape: &mut Tape<f64>,
    p: &ParamStore<f64>,
    v: &[Var],
    pr: &Problem,
    fused: bool,
    truncate: Option<usize>,
) -> Result<Var> {
    let (x, h0, z, r) = (v[0], v[1], v[2], v[3]);
    let rv = vars(tape, p, pr.activation, pr.bias);
    let (y, hl) = if fused {
        let o = elman_seq(tape, x, Some(h0), &rv, truncate)?;
        (o.y, o.h_last)
    } else {
        elman_unrolled(tape, x, Some(h0), &rv, truncate)?
    };
    let l = ops::mse_sum(tape, y, z)?;
    let m = ops::mul(tape, hl, r)?;
    let m = ops::sum_all(tape, m)?;
    ops::add(tape, l, m)
}

/// Loss and gradients `[W, U, V, (b_h, b_y), x, h0]` of one path.
fn grads(pr: &Problem, fused: bool, truncate: Option<usize>) -> (f64, Vec<(String, Tensor<f64>)>) {
    let mut tape = Tape::<f64>::new();
    let v = vec![
        tape.input(pr.x.clone()),
        tape.input(pr.h0.clone()),
        tape.constant(pr.z.clone()),
        tape.constant(pr.r.clone()),
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
    (tape.value(l).item(), out)
}

#[test]
fn fused_equals_unrolled_f64() {
    let mut n = 0;
    for (seed, act) in [Activation::Sigmoid, Activation::Tanh, Activation::Relu]
        .into_iter()
        .enumerate()
    {
        for bias in [false, true] {
            for truncate in [None, Some(1), Some(2), Some(3), Some(7), Some(50)] {
                let pr = problem(seed as u64 + 10, 3, 7, 4, 5, 3, act, bias);
                let (lf, gf) = grads(&pr, true, truncate);
                let (lu, gu) = grads(&pr, false, truncate);
                assert!(
                    (lf - lu).abs() <= 1e-12 * lu.abs().max(1.0),
                    "loss {lf} vs {lu}"
                );
                for ((name, a), (_, b)) in gf.iter().zip(&gu) {
                    let e = rel(a, b);
                    assert!(
                        e < 1e-9,
                        "{act:?} bias={bias} k={truncate:?} {name}: rel {e:e}"
                    );
                }
                n += 1;
            }
        }
    }
    assert_eq!(n, 36);
}

#[test]
fn truncation_at_or_beyond_length_is_exact() {
    let pr = problem(3, 2, 6, 3, 4, 2, Activation::Sigmoid, false);
    let (_, full) = grads(&pr, true, None);
    let (_, t6) = grads(&pr, true, Some(6));
    let (_, t2) = grads(&pr, true, Some(2));
    for ((n, a), (_, b)) in full.iter().zip(&t6) {
        assert!(rel(a, b) < 1e-14, "{n}");
    }
    // A real truncation changes ∇_U (the recurrent weight) but not ∇_V (no recursion in it).
    assert!(rel(&t2[1].1, &full[1].1) > 1e-3);
    assert!(rel(&t2[2].1, &full[2].1) < 1e-14);
}

#[test]
fn fused_matches_finite_differences() {
    for (act, bias, truncate) in [
        (Activation::Sigmoid, false, None),
        (Activation::Tanh, true, None),
        (Activation::Sigmoid, true, Some(2)),
    ] {
        let pr = problem(7, 2, 5, 3, 4, 2, act, bias);
        let inputs = vec![pr.x.clone(), pr.h0.clone()];
        let (z, r) = (pr.z.clone(), pr.r.clone());
        let rep = check_gradients(
            &pr.store,
            &inputs,
            &GradCheckOptions::default(),
            |tape, p, v| {
                let zc = tape.constant(z.clone());
                let rc = tape.constant(r.clone());
                loss(tape, p, &[v[0], v[1], zc, rc], &pr, true, truncate)
            },
        )
        .unwrap();
        // A truncated gradient is not the derivative of the loss: only check the exact one
        // against finite differences; the truncated one is checked against the unrolled path.
        if truncate.is_none() {
            assert!(rep.max_rel_error < 1e-6, "{act:?}: {:?}", rep.per_tensor);
        }
    }
}

#[test]
fn direct_mse_bptt_equals_tape_path() {
    let pr = problem(5, 3, 6, 4, 5, 3, Activation::Sigmoid, false);
    let wts = ElmanWeights {
        w: pr.store.by_name("W").unwrap().value.clone(),
        u: pr.store.by_name("U").unwrap().value.clone(),
        v: pr.store.by_name("V").unwrap().value.clone(),
        b_h: None,
        b_y: None,
        activation: Activation::Sigmoid,
    };
    for truncate in [None, Some(2)] {
        // The tape loss adds Σ r⊙h_T; zero r so both losses are the assignment's.
        let pr0 = Problem {
            r: Tensor::zeros(pr.r.shape()),
            store: pr.store.clone(),
            x: pr.x.clone(),
            z: pr.z.clone(),
            h0: pr.h0.clone(),
            ..pr
        };
        let (l, g) = grads(&pr0, false, truncate);
        let d = wts
            .mse_bptt(
                &pr.x,
                &pr.z,
                Some(&pr.h0),
                &BackwardOptions {
                    truncate,
                    need_x: true,
                    keep_grad_h: true,
                },
            )
            .unwrap();
        assert!((d.loss - l).abs() < 1e-12 * l);
        for (name, got) in [("W", &d.w), ("U", &d.u), ("V", &d.v), ("h0", &d.h0)] {
            let want = &g.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(rel(got, want) < 1e-9, "{name}");
        }
        assert!(rel(d.x.as_ref().unwrap(), &g[3].1) < 1e-9);
        assert_eq!(d.grad_h.as_ref().unwrap().shape(), &[6, 3, 5]);
    }
}

#[test]
fn tbptt_schedule_windows() {
    let s = TbpttSchedule::new(2, 5).unwrap();
    let w = s.windows(7);
    let want = [(0, 0, 2), (0, 2, 4), (1, 4, 6), (2, 6, 7)];
    assert_eq!(w.len(), want.len());
    for (w, &(start, loss_from, end)) in w.iter().zip(&want) {
        assert_eq!(
            *w,
            TbpttWindow {
                start,
                loss_from,
                end
            }
        );
    }
    let e = TbpttSchedule::new(5, 2).unwrap_err().to_string();
    assert!(
        e.contains("k2 >= k1") && e.contains("k1 = 5") && e.contains("k2 = 2"),
        "{e}"
    );
    assert!(TbpttSchedule::new(0, 2).is_err());
}

#[test]
fn tbptt_special_cases_and_unrolled_reference() {
    let pr = problem(9, 2, 12, 3, 4, 2, Activation::Sigmoid, false);
    let wts = ElmanWeights {
        w: pr.store.by_name("W").unwrap().value.clone(),
        u: pr.store.by_name("U").unwrap().value.clone(),
        v: pr.store.by_name("V").unwrap().value.clone(),
        b_h: None,
        b_y: None,
        activation: Activation::Sigmoid,
    };
    let h0 = Some(&pr.h0);
    let full = wts
        .mse_bptt(&pr.x, &pr.z, h0, &BackwardOptions::default())
        .unwrap();
    // k2 ≥ T: every loss term is backpropagated to the start: exact BPTT.
    let t = wts.mse_tbptt(&pr.x, &pr.z, h0, 5, 12).unwrap();
    for (a, b) in [
        (&t.w, &full.w),
        (&t.u, &full.u),
        (&t.v, &full.v),
        (&t.h0, &full.h0),
    ] {
        assert!(rel(a, b) < 1e-12);
    }
    // k1 = k2 = k: chunked truncation (when k divides T; otherwise the last update of
    // TBPTT(k, k) still reaches k steps back, past the last chunk boundary).
    for k in [1, 3, 4, 6] {
        let c = wts
            .mse_bptt(
                &pr.x,
                &pr.z,
                h0,
                &BackwardOptions {
                    truncate: Some(k),
                    ..Default::default()
                },
            )
            .unwrap();
        let t = wts.mse_tbptt(&pr.x, &pr.z, h0, k, k).unwrap();
        for (a, b) in [(&t.w, &c.w), (&t.u, &c.u), (&t.v, &c.v), (&t.h0, &c.h0)] {
            assert!(rel(a, b) < 1e-12, "k = {k}");
        }
    }
    // General (k1, k2) against the unrolled primitive ops, one window at a time.
    for (k1, k2) in [(2, 5), (3, 4), (1, 3)] {
        let got = wts.mse_tbptt(&pr.x, &pr.z, h0, k1, k2).unwrap();
        let st = wts.forward(&pr.x, h0).unwrap();
        let mut store = pr.store.clone();
        store.zero_grad();
        for win in TbpttSchedule::new(k1, k2).unwrap().windows(12) {
            let mut tape = Tape::<f64>::new();
            let len = win.end - win.start;
            let x = tape.constant(pr.x.clone());
            let xw = ops::narrow(&mut tape, x, 1, win.start, len).unwrap();
            let hs = tape.constant(st.state(win.start));
            let rv = vars(&mut tape, &pr.store, Activation::Sigmoid, false);
            let (y, _) = elman_unrolled(&mut tape, xw, Some(hs), &rv, None).unwrap();
            let nl = win.end - win.loss_from;
            let yl = ops::narrow(&mut tape, y, 1, win.loss_from - win.start, nl).unwrap();
            let z = tape.constant(pr.z.clone());
            let zl = ops::narrow(&mut tape, z, 1, win.loss_from, nl).unwrap();
            let l = ops::mse_sum(&mut tape, yl, zl).unwrap();
            tape.backward(l).unwrap();
            tape.accumulate_grads(&mut store).unwrap();
        }
        for (name, a) in [("W", &got.w), ("U", &got.u), ("V", &got.v)] {
            let e = rel(a, &store.by_name(name).unwrap().grad);
            assert!(e < 1e-9, "TBPTT({k1},{k2}) {name}: {e:e}");
        }
    }
}

#[test]
fn shape_errors_name_the_tensors() {
    let mut rng = Rng::new(1);
    let w = ElmanWeights::<f64>::random(3, 4, 2, Activation::Sigmoid, 1.0, &mut rng);
    let x = Tensor::<f64>::zeros(&[2, 5, 3]);
    let z = Tensor::<f64>::zeros(&[2, 5, 2]);
    let bad_x = Tensor::<f64>::zeros(&[2, 5, 4]);
    let e = w
        .mse_bptt(&bad_x, &z, None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("x must be") && e.contains("[2, 5, 4]"), "{e}");
    let bad_z = Tensor::<f64>::zeros(&[2, 4, 2]);
    let e = w
        .mse_bptt(&x, &bad_z, None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("z must be") && e.contains("[2, 4, 2]"), "{e}");
    let bad_h0 = Tensor::<f64>::zeros(&[3, 4]);
    let e = w
        .mse_bptt(&x, &z, Some(&bad_h0), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("h0 must be"), "{e}");
    let mut w2 = w.clone();
    w2.u = Tensor::zeros(&[4, 3]);
    let e = w2
        .mse_bptt(&x, &z, None, &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("U must be") && e.contains("[4, 3]"), "{e}");
    let e = w
        .mse_bptt(
            &x,
            &z,
            None,
            &BackwardOptions {
                truncate: Some(0),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
    assert!(w.mse_tbptt(&x, &z, None, 4, 2).is_err());
}

// ---------------------------------------------------------------- fixtures and `nabla rnn grad`

fn fixture_dir() -> Option<std::path::PathBuf> {
    common::shared("fixtures/rnn")
}

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

#[test]
fn fixtures_full_and_truncated_gradients() {
    let Some(dir) = fixture_dir() else { return };
    for case in ["case1", "case2"] {
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{case}.expected.json"))).unwrap(),
        )
        .unwrap();
        let p = nabla::analysis::rnn::load_problem(
            &dir.join(format!("{case}.params.safetensors")),
            &dir.join(format!("{case}.batch.safetensors")),
        )
        .unwrap();
        let mut checks = vec![(None, want.clone())];
        for (k, v) in want["truncated"].as_object().unwrap() {
            checks.push((Some(k.parse::<usize>().unwrap()), v.clone()));
        }
        assert!(checks.len() >= 5);
        for (k, w) in checks {
            let got = nabla::analysis::rnn::grad_json(&p, k).unwrap();
            let what = format!("{case} k={k:?}");
            // Computed in f64 from the stored values, like the fixture: the f64 tolerance.
            assert_close_json(&got["loss"], &w["loss"], 1e-9, &format!("{what} loss"));
            let names: Vec<&String> = w["grad"].as_object().unwrap().keys().collect();
            assert_eq!(names.len(), if case == "case2" { 4 } else { 3 }, "{what}");
            for name in names {
                assert_close_json(
                    &got["grad"][name],
                    &w["grad"][name],
                    1e-9,
                    &format!("{what} {name}"),
                );
            }
        }
        // h_T for debugging, too.
        let st = p.weights.forward(&p.x, p.h0.as_ref()).unwrap();
        let d = p.dims().unwrap();
        assert_close_json(&st.state(d.seq_len).to_json(), &want["h_T"], 1e-9, "h_T");
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
fn cli_rnn_grad_matches_fixture_and_rejects_bad_files() {
    let Some(dir) = fixture_dir() else { return };
    let p = dir.join("case2.params.safetensors");
    let b = dir.join("case2.batch.safetensors");
    let (code, out, err) = nabla_bin(&[
        "rnn",
        "grad",
        "--params",
        p.to_str().unwrap(),
        "--batch",
        b.to_str().unwrap(),
        "--truncate",
        "3",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case2.expected.json")).unwrap())
            .unwrap();
    for name in ["W", "U", "V", "h0"] {
        assert_close_json(
            &got["grad"][name],
            &want["truncated"]["3"]["grad"][name],
            1e-9,
            name,
        );
    }

    // Bad inputs: exit status 1, a message naming the problem, no panic.
    let tmp = tempfile::tempdir().unwrap();
    let w = Tensor::<f32>::zeros(&[4, 3]);
    let u = Tensor::<f32>::zeros(&[4, 4]);
    let v = Tensor::<f32>::zeros(&[2, 4]);
    let missing = tmp.path().join("missing_u.safetensors");
    nabla::io::save_safetensors(&missing, &[("W".into(), &w), ("V".into(), &v)], None).unwrap();
    let good_b = tmp.path().join("b.safetensors");
    let x = Tensor::<f32>::zeros(&[2, 5, 3]);
    let z = Tensor::<f32>::zeros(&[2, 5, 2]);
    nabla::io::save_safetensors(&good_b, &[("x".into(), &x), ("z".into(), &z)], None).unwrap();
    let bad_u = tmp.path().join("bad_u.safetensors");
    let u3 = Tensor::<f32>::zeros(&[4, 3]);
    nabla::io::save_safetensors(
        &bad_u,
        &[("W".into(), &w), ("U".into(), &u3), ("V".into(), &v)],
        None,
    )
    .unwrap();
    let bad_z = tmp.path().join("bad_z.safetensors");
    let z3 = Tensor::<f32>::zeros(&[2, 5, 3]);
    nabla::io::save_safetensors(&bad_z, &[("x".into(), &x), ("z".into(), &z3)], None).unwrap();
    let good_p = tmp.path().join("p.safetensors");
    nabla::io::save_safetensors(
        &good_p,
        &[("W".into(), &w), ("U".into(), &u), ("V".into(), &v)],
        None,
    )
    .unwrap();
    let nan_b = tmp.path().join("nan.safetensors");
    let xn = Tensor::<f32>::full(&[2, 5, 3], f32::NAN);
    nabla::io::save_safetensors(&nan_b, &[("x".into(), &xn), ("z".into(), &z)], None).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for (params, batch, extra, needle) in [
        (s(&missing), s(&good_b), None, "missing tensor \"U\""),
        (s(&bad_u), s(&good_b), None, "U must be (hidden, hidden)"),
        (
            s(&good_p),
            s(&bad_z),
            None,
            "z must be (batch, time, output)",
        ),
        (s(&good_p), s(&nan_b), None, "non-finite"),
        (s(&good_p), s(&good_b), Some("0"), "at least 1"),
        (
            s(&good_p),
            s(&tmp.path().join("nope.safetensors")),
            None,
            "nope.safetensors",
        ),
    ] {
        let mut args = vec!["rnn", "grad", "--params", &params, "--batch", &batch];
        if let Some(k) = extra {
            args.extend(["--truncate", k]);
        }
        let (code, _, err) = nabla_bin(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(needle) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------- analysis (exercises 1.2–1.5)

#[test]
fn recursion_for_grad_h_matches_finite_differences() {
    use nabla::analysis::rnn as an;
    let p = an::random_problem(2, 6, 3, 4, 2, 1.0, 11);
    let e = an::recursion_fd_check(&p, 1e-6).unwrap();
    assert!(e < 1e-7, "recursion vs finite differences: {e:e}");
    // The last step has no future: ∇_{h_T}L = 2Vᵀ(y_T − z_T) alone.
    let n = an::grad_h_norms(&p).unwrap();
    assert_eq!(n.len(), 6);
    let st = p.weights.forward(&p.x, None).unwrap();
    let (b, o, h) = (2, 2, 4);
    let yt = &st.y[5 * b * o..];
    let mut want = 0.0;
    for bi in 0..b {
        for j in 0..h {
            let g: f64 = (0..o)
                .map(|k| {
                    2.0 * p.weights.v.data()[k * h + j]
                        * (yt[bi * o + k] - p.z.data()[(bi * 6 + 5) * o + k])
                })
                .sum();
            want += g * g;
        }
    }
    assert!((n[5] - want.sqrt()).abs() < 1e-12 * want.sqrt());
}

#[test]
fn spectral_norm_and_jacobian_bound() {
    use nabla::analysis::rnn as an;
    let m = Tensor::<f64>::from_f64(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    // σ_max of [[1,2],[3,4]] = sqrt(15 + sqrt(221)).
    let want = (15.0 + 221f64.sqrt()).sqrt();
    assert!((an::spectral_norm(&m).unwrap() - want).abs() < 1e-10);
    let p = an::random_problem(3, 20, 3, 8, 2, 3.0, 4);
    let a = an::analyze(&p, &[1, 5, 20]).unwrap();
    assert!((a.jacobian_bound - 0.25 * a.spectral_norm_u).abs() < 1e-15);
    assert_eq!(a.jacobian_norm.len(), 20);
    for &j in &a.jacobian_norm {
        assert!(
            j <= a.jacobian_bound * (1.0 + 1e-9),
            "{j} > {}",
            a.jacobian_bound
        );
    }
    // k ≥ T is exact.
    let t20 = &a.truncation[2];
    assert!((t20.cosine - 1.0).abs() < 1e-12 && t20.rel_error < 1e-12);
    let dir = tempfile::tempdir().unwrap();
    an::plot(&a, &dir.path().join("a.svg")).unwrap();
    let svg = std::fs::read_to_string(dir.path().join("a.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"));
    assert!(an::plot(&a, &dir.path().join("a.txt")).is_err());
}

#[test]
fn truncation_bias_on_a_long_dependency() {
    use nabla::analysis::rnn as an;
    // z_t = x_{t−12}: the exact gradient links each error to an input 12 steps back.
    let p = an::delay_problem(8, 64, 12, 16, 0.95, 0).unwrap();
    let ks = [1, 2, 4, 8, 16, 32, 64];
    let b = an::truncation_bias(&p, &ks).unwrap();
    for w in b.windows(2) {
        assert!(w[1].rel_error < w[0].rel_error, "{:?}", b);
        assert!(w[1].cosine > w[0].cosine, "{:?}", b);
    }
    // Short truncations are badly biased here; k = T is exact.
    assert!(b[0].rel_error > 0.5 && b[0].cosine < 0.6, "{:?}", b[0]);
    assert!(b[6].rel_error < 1e-12);
    // Gain 0.95 < 1 per step: the Jacobian norms stay at or under the bound ¼‖U‖ = 0.95.
    let a = an::analyze(&p, &[4]).unwrap();
    assert!((a.jacobian_bound - 0.95).abs() < 1e-9);
}

/// Five-point central differences `(−f(x+2h) + 8f(x+h) − 8f(x−h) + f(x−2h)) / 12h` (error
/// O(h⁴)) are accurate enough to confirm the fused BPTT to 1e-9, per tensor and normwise.
#[test]
fn fused_bptt_matches_five_point_differences_to_1e9() {
    let pr = problem(21, 2, 6, 3, 4, 2, Activation::Sigmoid, false);
    let base = ElmanWeights {
        w: pr.store.by_name("W").unwrap().value.clone(),
        u: pr.store.by_name("U").unwrap().value.clone(),
        v: pr.store.by_name("V").unwrap().value.clone(),
        b_h: None,
        b_y: None,
        activation: Activation::Sigmoid,
    };
    let g = base
        .mse_bptt(
            &pr.x,
            &pr.z,
            Some(&pr.h0),
            &BackwardOptions {
                need_x: true,
                ..Default::default()
            },
        )
        .unwrap();
    let loss = |w: &ElmanWeights<f64>, x: &Tensor<f64>, h0: &Tensor<f64>| {
        w.mse_bptt(x, &pr.z, Some(h0), &Default::default())
            .unwrap()
            .loss
    };
    let h = 1e-3;
    let stencil = |f: &dyn Fn(f64) -> f64| {
        (-f(2.0 * h) + 8.0 * f(h) - 8.0 * f(-h) + f(-2.0 * h)) / (12.0 * h)
    };
    for which in ["W", "U", "V", "x", "h0"] {
        let analytic = match which {
            "W" => &g.w,
            "U" => &g.u,
            "V" => &g.v,
            "x" => g.x.as_ref().unwrap(),
            _ => &g.h0,
        };
        let mut num = Tensor::<f64>::zeros(analytic.shape());
        for i in 0..num.numel() {
            let f = |d: f64| {
                let (mut w, mut x, mut h0) = (base.clone(), pr.x.clone(), pr.h0.clone());
                let t = match which {
                    "W" => &mut w.w,
                    "U" => &mut w.u,
                    "V" => &mut w.v,
                    "x" => &mut x,
                    _ => &mut h0,
                };
                t.data_mut()[i] += d;
                loss(&w, &x, &h0)
            };
            num.data_mut()[i] = stencil(&f);
        }
        let e = rel(analytic, &num);
        assert!(e < 1e-9, "{which}: normwise relative error {e:e}");
    }
}

/// The vectorizable f32 sigmoid of the fused forward agrees with the exact f64 formula to a few
/// ulp over the whole range, and keeps NaN.
#[test]
fn sigmoid_f32_matches_f64() {
    use nabla::kernels::{exp_f32, sigmoid_f32};
    let mut worst_sig = 0.0f64;
    let mut worst_exp = 0.0f64;
    for i in 0..=200_000 {
        let x = -100.0 + 200.0 * i as f64 / 200_000.0;
        let s = sigmoid_f32(x as f32) as f64;
        let want = 1.0 / (1.0 + (-(x as f32) as f64).exp());
        worst_sig = worst_sig.max((s - want).abs() / want.max(1e-30));
        let xe = (x * 0.85) as f32;
        let want_e = (xe as f64).exp();
        worst_exp = worst_exp.max((exp_f32(xe) as f64 - want_e).abs() / want_e);
    }
    assert!(worst_sig < 5e-7, "sigmoid_f32 max rel error {worst_sig}");
    assert!(worst_exp < 5e-7, "exp_f32 max rel error {worst_exp}");
    assert!(sigmoid_f32(f32::NAN).is_nan());
    assert_eq!(sigmoid_f32(1e30), 1.0);
    assert!(sigmoid_f32(-1e30) >= 0.0 && sigmoid_f32(-1e30) < 1e-37);
}

/// The vectorizable f32 tanh of the fused RNN against f64 `tanh` over [−20, 20] (dense near 0,
/// where the polynomial branch works, and across the 0.5493 switch): relative error ≤ 5e-7.
#[test]
fn tanh_f32_matches_f64() {
    use nabla::kernels::tanh_f32;
    let mut worst = 0.0f64;
    for i in -200_000..=200_000 {
        let x = (i as f64 * 1e-4) as f32; // step 1e-4 over [−20, 20]
        let want = (x as f64).tanh();
        let got = tanh_f32(x) as f64;
        let err = if want == 0.0 {
            got.abs()
        } else {
            (got - want).abs() / want.abs()
        };
        worst = worst.max(err);
    }
    for &x in &[1e-30f32, -3e-8, 0.549_306_1, 0.549_306_2, -0.549_306_2] {
        let want = (x as f64).tanh();
        worst = worst.max((tanh_f32(x) as f64 - want).abs() / want.abs());
    }
    assert!(worst < 5e-7, "tanh_f32 max rel error {worst}");
    assert!(tanh_f32(f32::NAN).is_nan());
    assert_eq!(tanh_f32(1e30), 1.0);
    assert_eq!(tanh_f32(-1e30), -1.0);
    assert_eq!(tanh_f32(0.0), 0.0);
}

/// The gradient checks, PyTorch fixtures and f32-vs-f64 activations again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "fused_equals_unrolled_f64",
            "fused_matches_finite_differences",
            "direct_mse_bptt_equals_tape_path",
            "fixtures_full_and_truncated_gradients",
            "cli_rnn_grad_matches_fixture_and_rejects_bad_files",
            "fused_bptt_matches_five_point_differences_to_1e9",
            "sigmoid_f32_matches_f64",
            "tanh_f32_matches_f64",
        ],
    );
}
