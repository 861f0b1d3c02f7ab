//! Tier 1: every primitive op's hand-derived backward against central finite differences in f64,
//! through the same generic op code that trains in f32. Tolerance: max relative error < 1e-6.
use crate::common;

use nabla::gradcheck::{check_gradients, check_inputs, randn, GradCheckOptions};
use nabla::ops;
use nabla::{Init, ParamStore, Rng, Tensor};

const TOL: f64 = 1e-6;

fn assert_ok(r: nabla::gradcheck::GradCheckReport, what: &str) {
    assert!(
        r.max_rel_error < TOL,
        "{what}: max relative error {:.3e} (worst: {}) {:?}",
        r.max_rel_error,
        r.worst(),
        r.per_tensor
    );
}

fn rng() -> Rng {
    Rng::new(42)
}

#[test]
fn grad_add_sub_mul_div_broadcast() {
    let mut r = rng();
    let a = randn(&[3, 4, 5], 1.0, &mut r);
    let b = randn(&[4, 1], 1.0, &mut r);
    let c = randn(&[5], 1.0, &mut r).map(|x| x.abs() + 0.5);
    for (name, f) in [
        ("add", ops::add::<f64> as fn(&mut _, _, _) -> _),
        ("sub", ops::sub::<f64>),
        ("mul", ops::mul::<f64>),
    ] {
        let rep = check_inputs(&[a.clone(), b.clone()], |t, v| f(t, v[0], v[1])).unwrap();
        assert_ok(rep, name);
    }
    let rep = check_inputs(&[a.clone(), c.clone()], |t, v| ops::div(t, v[0], v[1])).unwrap();
    assert_ok(rep, "div");
    // Same-shape fast path and scalar ops.
    let rep = check_inputs(&[a.clone(), a.map(|x| x * 0.3 + 1.0)], |t, v| {
        let s = ops::mul(t, v[0], v[1])?;
        let s = ops::scale(t, s, -1.7)?;
        let s = ops::add_scalar(t, s, 0.3)?;
        ops::square(t, s)
    })
    .unwrap();
    assert_ok(rep, "mul/scale/add_scalar/square");
}

#[test]
fn grad_activations() {
    let mut r = rng();
    // Keep ReLU/ELU kinks away from 0 where the derivative is undefined.
    let x = randn(&[4, 6], 1.5, &mut r).map(|v| if v.abs() < 0.05 { v + 0.2 } else { v });
    let pos = x.map(|v| v.abs() + 0.3);
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::sigmoid(t, v[0])).unwrap(),
        "sigmoid",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::tanh(t, v[0])).unwrap(),
        "tanh",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::relu(t, v[0])).unwrap(),
        "relu",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| {
            ops::leaky_relu(t, v[0], 0.1)
        })
        .unwrap(),
        "leaky_relu",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::elu(t, v[0], 1.0)).unwrap(),
        "elu",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::gelu(t, v[0])).unwrap(),
        "gelu",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::exp(t, v[0])).unwrap(),
        "exp",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&pos), |t, v| ops::log(t, v[0])).unwrap(),
        "log",
    );
    assert_ok(
        check_inputs(&[pos], |t, v| ops::sqrt(t, v[0])).unwrap(),
        "sqrt",
    );
}

#[test]
fn activation_values() {
    let mut tape = nabla::Tape::<f64>::new();
    let x = tape.input(Tensor::from_f64(&[4], &[-1.0, 0.0, 0.5, 2.0]).unwrap());
    let g = ops::gelu(&mut tape, x).unwrap();
    // torch.nn.functional.gelu (exact) reference values.
    let want = [
        -0.15865525393145707,
        0.0,
        0.34573123063700656,
        1.9544997361036416,
    ];
    for (a, b) in tape.value(g).data().iter().zip(want) {
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
    let e = ops::elu(&mut tape, x, 1.0).unwrap();
    assert!((tape.value(e).data()[0] - (-0.6321205588285577)).abs() < 1e-15);
    let s = ops::sigmoid(&mut tape, x).unwrap();
    assert!((tape.value(s).data()[3] - 0.8807970779778823).abs() < 1e-15);
}

#[test]
fn grad_matmul_variants() {
    let mut r = rng();
    let a = randn(&[5, 7], 1.0, &mut r);
    let b = randn(&[7, 3], 1.0, &mut r);
    let bt = randn(&[3, 7], 1.0, &mut r);
    assert_ok(
        check_inputs(&[a.clone(), b], |t, v| ops::matmul(t, v[0], v[1])).unwrap(),
        "matmul",
    );
    assert_ok(
        check_inputs(&[a.clone(), bt.clone()], |t, v| {
            ops::matmul_t(t, v[0], v[1])
        })
        .unwrap(),
        "matmul_t",
    );
    let x = randn(&[2, 4, 7], 1.0, &mut r);
    let bias = randn(&[3], 1.0, &mut r);
    assert_ok(
        check_inputs(&[x, bt, bias], |t, v| {
            ops::linear(t, v[0], v[1], Some(v[2]))
        })
        .unwrap(),
        "linear",
    );
    for ta in [false, true] {
        for tb in [false, true] {
            let sa = if ta { [3, 6, 4] } else { [3, 4, 6] };
            let sb = if tb { [3, 5, 6] } else { [3, 6, 5] };
            let a = randn(&sa, 1.0, &mut r);
            let b = randn(&sb, 1.0, &mut r);
            let rep = check_inputs(&[a, b], |t, v| ops::bmm(t, v[0], v[1], ta, tb)).unwrap();
            assert_ok(rep, &format!("bmm ta={ta} tb={tb}"));
        }
    }
}

#[test]
fn grad_reductions_softmax() {
    let mut r = rng();
    let x = randn(&[3, 4, 5], 1.0, &mut r);
    for axis in [0isize, 1, -1] {
        for keep in [false, true] {
            assert_ok(
                check_inputs(std::slice::from_ref(&x), |t, v| {
                    ops::sum(t, v[0], axis, keep)
                })
                .unwrap(),
                "sum",
            );
            assert_ok(
                check_inputs(std::slice::from_ref(&x), |t, v| {
                    ops::mean(t, v[0], axis, keep)
                })
                .unwrap(),
                "mean",
            );
        }
    }
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::sum_all(t, v[0])).unwrap(),
        "sum_all",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::mean_all(t, v[0])).unwrap(),
        "mean_all",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| ops::softmax(t, v[0])).unwrap(),
        "softmax",
    );
    assert_ok(
        check_inputs(&[x], |t, v| ops::log_softmax(t, v[0])).unwrap(),
        "log_softmax",
    );
}

#[test]
fn grad_shape_ops() {
    let mut r = rng();
    let x = randn(&[2, 3, 4], 1.0, &mut r);
    let y = randn(&[2, 5, 4], 1.0, &mut r);
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| {
            ops::reshape(t, v[0], &[6, 4])
        })
        .unwrap(),
        "reshape",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| {
            ops::permute(t, v[0], &[2, 0, 1])
        })
        .unwrap(),
        "permute",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| {
            ops::transpose(t, v[0], 0, 2)
        })
        .unwrap(),
        "transpose",
    );
    assert_ok(
        check_inputs(std::slice::from_ref(&x), |t, v| {
            ops::narrow(t, v[0], 1, 1, 2)
        })
        .unwrap(),
        "narrow",
    );
    assert_ok(
        check_inputs(&[x, y], |t, v| ops::concat(t, &[v[0], v[1], v[0]], 1)).unwrap(),
        "concat",
    );
}

#[test]
fn permute_values() {
    let x = Tensor::<f64>::from_fn(&[2, 3, 4], |i| i as f64);
    let p = nabla::ops::shape::permute_tensor(&x, &[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    // p[k][i][j] = x[i][j][k]
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..4 {
                assert_eq!(p.data()[k * 6 + i * 3 + j], x.data()[i * 12 + j * 4 + k]);
            }
        }
    }
}

#[test]
fn grad_gather_scatter() {
    let mut r = rng();
    let x = randn(&[5, 3], 1.0, &mut r);
    let idx = [4, 0, 0, 2, 4, 1];
    assert_ok(
        check_inputs(&[x], |t, v| ops::gather_rows(t, v[0], &idx)).unwrap(),
        "gather_rows",
    );
    let e = randn(&[6, 3], 1.0, &mut r);
    assert_ok(
        check_inputs(&[e], |t, v| ops::scatter_add_rows(t, v[0], &idx, 5)).unwrap(),
        "scatter_add_rows",
    );
}

#[test]
fn grad_losses() {
    let mut r = rng();
    let y = randn(&[4, 3], 1.0, &mut r);
    let z = randn(&[4, 3], 1.0, &mut r);
    assert_ok(
        check_inputs(&[y.clone(), z.clone()], |t, v| ops::mse_sum(t, v[0], v[1])).unwrap(),
        "mse_sum",
    );
    assert_ok(
        check_inputs(&[y.clone(), z], |t, v| ops::mse_mean(t, v[0], v[1])).unwrap(),
        "mse_mean",
    );
    let logits = randn(&[5, 4], 2.0, &mut r);
    let targets = [1, 3, 0, 2, 3];
    let opts = ops::CrossEntropyOptions {
        ignore_index: Some(2),
        label_smoothing: 0.1,
        mask: Some(vec![true, true, false, true, true]),
    };
    assert_ok(
        check_inputs(&[logits], |t, v| {
            ops::cross_entropy(t, v[0], &targets, &opts)
        })
        .unwrap(),
        "cross_entropy",
    );
}

#[test]
fn cross_entropy_matches_pytorch_values() {
    // torch.nn.functional.cross_entropy(z, t, ignore_index=2, label_smoothing=0.1)
    let z =
        Tensor::<f64>::from_f64(&[3, 3], &[1.0, 2.0, 0.5, -1.0, 0.0, 3.0, 0.2, 0.1, -0.3]).unwrap();
    let mut tape = nabla::Tape::<f64>::new();
    let v = tape.input(z);
    let opts = ops::CrossEntropyOptions {
        ignore_index: Some(2),
        label_smoothing: 0.1,
        mask: None,
    };
    let l = ops::cross_entropy(&mut tape, v, &[0, 2, 1], &opts).unwrap();
    // Rows 0 and 2 counted. Row 0: lse = 2.4640; row 2 likewise; value computed by hand in f64:
    let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
    let r0 = [1.0, 2.0, 0.5];
    let r2 = [0.2, 0.1, -0.3];
    let row = |r: [f64; 3], t: usize| {
        let l = lse(r);
        0.9 * (l - r[t]) + 0.1 * (l - r.iter().sum::<f64>() / 3.0)
    };
    let want = (row(r0, 0) + row(r2, 1)) / 2.0;
    assert!((tape.value(l).item() - want).abs() < 1e-14);
}

#[test]
fn params_flow_into_store() {
    let mut rng = rng();
    let mut store = ParamStore::<f64>::new();
    let w = store
        .add(
            "weight",
            Init::XavierUniform { gain: 1.0 }
                .tensor(&[3, 4], &mut rng)
                .unwrap(),
        )
        .unwrap();
    let b = store
        .add("bias", Init::Zeros.tensor(&[3], &mut rng).unwrap())
        .unwrap();
    let x = randn(&[5, 4], 1.0, &mut rng);
    let f = |t: &mut nabla::Tape<f64>, s: &ParamStore<f64>, v: &[nabla::Var]| {
        let wv = t.param(s, w);
        let bv = t.param(s, b);
        let y = ops::linear(t, v[0], wv, Some(bv))?;
        let y = ops::tanh(t, y)?;
        ops::sum_all(t, y)
    };
    let rep = check_gradients(
        &store,
        std::slice::from_ref(&x),
        &GradCheckOptions::default(),
        f,
    )
    .unwrap();
    assert_ok(rep, "linear params");
    // Gradients accumulate until zeroed.
    let mut t = nabla::Tape::new();
    let xv = t.constant(x.clone());
    let l = f(&mut t, &store, &[xv]).unwrap();
    t.backward(l).unwrap();
    t.accumulate_grads(&mut store).unwrap();
    let g1 = store.get(w).grad.clone();
    t.accumulate_grads(&mut store).unwrap();
    let g2 = store.get(w).grad.clone();
    assert!(g2.max_abs_diff(&g1.map(|v| 2.0 * v)).unwrap() < 1e-15);
    store.zero_grad();
    assert_eq!(store.grad_norm(), 0.0);
}

#[test]
fn f32_and_f64_run_the_same_code() {
    let mut r = rng();
    let a = randn(&[8, 16], 1.0, &mut r);
    let b = randn(&[16, 4], 1.0, &mut r);
    let run = |a: Tensor<f64>, b: Tensor<f64>| -> (f64, Vec<f64>) {
        let mut t = nabla::Tape::<f32>::new();
        let av = t.input(a.cast());
        let bv = t.constant(b.cast());
        let y = ops::matmul(&mut t, av, bv).unwrap();
        let y = ops::gelu(&mut t, y).unwrap();
        let l = ops::sum_all(&mut t, y).unwrap();
        t.backward(l).unwrap();
        (
            t.value(l).item() as f64,
            t.grad(av).unwrap().cast::<f64>().into_data(),
        )
    };
    let (l32, g32) = run(a.clone(), b.clone());
    let mut t = nabla::Tape::<f64>::new();
    let av = t.input(a);
    let bv = t.constant(b);
    let y = ops::matmul(&mut t, av, bv).unwrap();
    let y = ops::gelu(&mut t, y).unwrap();
    let l = ops::sum_all(&mut t, y).unwrap();
    t.backward(l).unwrap();
    assert!((l32 - t.value(l).item()).abs() < 1e-4 * t.value(l).item().abs().max(1.0));
    let g64 = t.grad(av).unwrap().data();
    for (x, y) in g32.iter().zip(g64) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn shape_errors_are_results_naming_shapes() {
    let mut t = nabla::Tape::<f32>::new();
    let a = t.input(Tensor::zeros(&[2, 3]));
    let b = t.input(Tensor::zeros(&[4, 5]));
    let e = ops::matmul(&mut t, a, b).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = ops::add(&mut t, a, b).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = ops::reshape(&mut t, a, &[7]).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[7]"), "{e}");
    let e = ops::gather_rows(&mut t, a, &[0, 9])
        .unwrap_err()
        .to_string();
    assert!(e.contains('9'), "{e}");
    let e = ops::cross_entropy(&mut t, a, &[0, 5], &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains('5'), "{e}");
    let e = ops::concat(&mut t, &[a, b], 0).unwrap_err().to_string();
    assert!(e.contains("[4, 5]"), "{e}");
    assert!(
        t.backward(a).is_err(),
        "backward from a non-scalar needs a seed"
    );
    assert!(Tensor::<f32>::new(&[2, 2], vec![0.0; 3]).is_err());
}

#[test]
fn no_grad_tape_records_nothing() {
    let mut t = nabla::Tape::<f32>::no_grad();
    let a = t.input(Tensor::ones(&[2, 2]));
    let b = ops::tanh(&mut t, a).unwrap();
    let _ = ops::sum_all(&mut t, b).unwrap();
    assert_eq!(t.num_records(), 0);
}

/// The gradient checks and the PyTorch cross-entropy values again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "grad_add_sub_mul_div_broadcast",
            "grad_activations",
            "activation_values",
            "grad_matmul_variants",
            "grad_reductions_softmax",
            "grad_shape_ops",
            "grad_gather_scatter",
            "grad_losses",
            "cross_entropy_matches_pytorch_values",
            "f32_and_f64_run_the_same_code",
        ],
    );
}
