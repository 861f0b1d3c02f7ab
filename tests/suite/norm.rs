//! Normalization layers: PyTorch fixtures (../shared/fixtures/norm, f64 to 1e-10 absolute and
//! f32 to 1e-5 relative to the largest value), f64 gradient checks (< 1e-6) with and without
//! masks, and the fused ops against the reference path unrolled into primitive ops.

use crate::common;

use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::norm::{self, RefKind};
use nabla::nn::{Ctx, Module, VarBuilder};
use nabla::{Element, ParamStore, Rng, Tape, Tensor, Var};
use std::collections::BTreeMap;

/// Training mode without dropout (the norms draw no random numbers).
fn train_ctx() -> Ctx<'static> {
    Ctx {
        train: true,
        rng: None,
    }
}

fn fixture(name: &str) -> Option<BTreeMap<String, Tensor<f64>>> {
    let p = common::shared("fixtures/norm")?.join(format!("{name}.case1.safetensors"));
    Some(nabla::io::load_safetensors::<f64>(&p).unwrap())
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    LayerF,
    LayerCf,
    Instance,
    Group(usize),
}

impl Kind {
    fn reference(self) -> RefKind {
        match self {
            Kind::LayerF => RefKind::Layer { normalized_ndim: 1 },
            Kind::LayerCf => RefKind::Layer { normalized_ndim: 2 },
            Kind::Instance => RefKind::Group { groups: 6 },
            Kind::Group(g) => RefKind::Group { groups: g },
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fused<T: Element>(
    kind: Kind,
    tape: &mut Tape<T>,
    x: Var,
    w: Option<Var>,
    b: Option<Var>,
    eps: f64,
    mask: Option<&Tensor<T>>,
) -> nabla::Result<Var> {
    match kind {
        Kind::LayerF => norm::layer_norm(tape, x, 1, w, b, eps, mask),
        Kind::LayerCf => norm::layer_norm(tape, x, 2, w, b, eps, mask),
        Kind::Instance => norm::instance_norm(tape, x, w, b, eps, mask),
        Kind::Group(g) => norm::group_norm(tape, x, g, w, b, eps, mask),
    }
}

/// Forward + backward with seed `dy`: (y, dx, dweight, dbias).
fn run<T: Element>(
    kind: Kind,
    reference: bool,
    fx: &BTreeMap<String, Tensor<f64>>,
    mask: Option<&Tensor<T>>,
) -> [Tensor<T>; 4] {
    let mut store = ParamStore::<T>::new();
    let wid = store.add("weight", fx["weight"].cast()).unwrap();
    let bid = store.add("bias", fx["bias"].cast()).unwrap();
    let mut tape = Tape::<T>::new();
    let x = tape.input(fx["x"].cast());
    let w = tape.param(&store, wid);
    let b = tape.param(&store, bid);
    let y = if reference {
        norm::norm_reference(&mut tape, x, kind.reference(), Some(w), Some(b), 1e-5, mask)
    } else {
        fused(kind, &mut tape, x, Some(w), Some(b), 1e-5, mask)
    }
    .unwrap();
    tape.backward_with(y, fx["dy"].cast()).unwrap();
    tape.accumulate_grads(&mut store).unwrap();
    [
        tape.value(y).clone(),
        tape.grad(x).unwrap().clone(),
        store.get(wid).grad.clone(),
        store.get(bid).grad.clone(),
    ]
}

fn cases() -> [(&'static str, Kind); 5] {
    [
        ("layer_norm_f", Kind::LayerF),
        ("layer_norm_cf", Kind::LayerCf),
        ("instance_norm", Kind::Instance),
        ("group_norm_g2", Kind::Group(2)),
        ("group_norm_g3", Kind::Group(3)),
    ]
}

#[test]
fn row_norms_match_pytorch_fixtures() {
    for (name, kind) in cases() {
        let Some(fx) = fixture(name) else { return };
        let want = [&fx["y"], &fx["dx"], &fx["dweight"], &fx["dbias"]];
        for reference in [false, true] {
            let got = run::<f64>(kind, reference, &fx, None);
            for (k, (g, w)) in got.iter().zip(want).enumerate() {
                let e = g.max_abs_diff(w).unwrap();
                assert!(
                    e <= 1e-10,
                    "{name} (reference {reference}) output {k}: {e:.3e}"
                );
            }
        }
        let got = run::<f32>(kind, false, &fx, None);
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            let scale = w.data().iter().fold(1.0f64, |a, v| a.max(v.abs()));
            let e = g.cast::<f64>().max_abs_diff(w).unwrap();
            assert!(e <= 1e-5 * scale, "{name} f32 output {k}: {e:.3e}");
        }
    }
}

fn padding_mask(n: usize, c: usize, f: usize, lens: &[usize]) -> Tensor<f64> {
    let _ = c;
    Tensor::from_fn(&[n, 1, f], |i| if i % f < lens[i / f] { 1.0 } else { 0.0 })
}

#[test]
fn row_norms_gradcheck_with_and_without_mask() {
    let mut rng = Rng::new(7);
    let (n, c, f) = (3, 6, 5);
    let x = randn(&[n, c, f], 1.5, &mut rng);
    // Rows of >= 3 valid entries: with 2 the normalized values sit on a sharp curve and
    // central differences, not the gradient, limit the agreement.
    let mask = padding_mask(n, c, f, &[5, 4, 3]);
    for (_, kind) in cases() {
        let wshape: Vec<usize> = match kind {
            Kind::LayerF => vec![f],
            Kind::LayerCf => vec![c, f],
            _ => vec![c],
        };
        let mut store = ParamStore::<f64>::new();
        store
            .add("weight", randn(&wshape, 0.5, &mut rng).map(|v| v + 1.0))
            .unwrap();
        store.add("bias", randn(&wshape, 0.5, &mut rng)).unwrap();
        for m in [None, Some(&mask)] {
            let r = check_gradients(
                &store,
                std::slice::from_ref(&x),
                &GradCheckOptions::default(),
                |tape, p, v| {
                    let w = tape.param(p, p.find("weight").unwrap());
                    let b = tape.param(p, p.find("bias").unwrap());
                    fused(kind, tape, v[0], Some(w), Some(b), 1e-5, m)
                },
            )
            .unwrap();
            assert!(
                r.max_rel_error < 1e-6,
                "{kind:?} mask {}: {:.3e} {:?}",
                m.is_some(),
                r.max_rel_error,
                r.per_tensor
            );
        }
    }
}

#[test]
fn masked_fused_equals_masked_reference_and_ignores_padding() {
    let Some(fx) = fixture("group_norm_g2") else {
        return;
    };
    let mask = padding_mask(4, 6, 5, &[5, 4, 2, 3]);
    for (_, kind) in cases() {
        let mut fx = fx.clone();
        if matches!(kind, Kind::LayerF) {
            fx.insert(
                "weight".into(),
                Tensor::from_fn(&[5], |i| 1.0 + 0.1 * i as f64),
            );
            fx.insert("bias".into(), Tensor::from_fn(&[5], |i| 0.2 * i as f64));
        }
        if matches!(kind, Kind::LayerCf) {
            fx.insert(
                "weight".into(),
                Tensor::from_fn(&[6, 5], |i| 1.0 + 0.01 * i as f64),
            );
            fx.insert("bias".into(), Tensor::from_fn(&[6, 5], |i| 0.02 * i as f64));
        }
        let a = run::<f64>(kind, false, &fx, Some(&mask));
        let b = run::<f64>(kind, true, &fx, Some(&mask));
        for k in 0..4 {
            let e = a[k].max_abs_diff(&b[k]).unwrap();
            assert!(e < 1e-12, "{kind:?} output {k}: fused vs reference {e:.3e}");
        }
        // Changing the padded entries changes nothing.
        let mut fx2 = fx.clone();
        let xs = fx2["x"].clone();
        let md = nabla::nn::norm::expand_mask(&mask, &[4, 6, 5], "test").unwrap();
        let x2 = Tensor::from_fn(
            &[4, 6, 5],
            |i| if md[i] == 0.0 { 1e3 } else { xs.data()[i] },
        );
        fx2.insert("x".into(), x2);
        let c = run::<f64>(kind, false, &fx2, Some(&mask));
        for k in 0..4 {
            let e = a[k].max_abs_diff(&c[k]).unwrap();
            assert!(e < 1e-12, "{kind:?} output {k} depends on padding: {e:.3e}");
        }
    }
}

#[test]
fn layer_norm_module_vit_shape_and_large_parallel_path() {
    // (B·T, D) rows, eps 1e-6 as in the ViT, big enough to take the parallel path.
    let mut rng = Rng::new(3);
    let (bt, d) = (96, 384);
    let mut store = ParamStore::<f64>::new();
    let ln = norm::LayerNorm::new(
        VarBuilder::init(&mut store, &mut Rng::new(0)).pp("norm"),
        &[d],
        1e-6,
        true,
    )
    .unwrap();
    store.get_mut(ln.weight.unwrap()).value = randn(&[d], 0.3, &mut rng).map(|v| v + 1.0);
    store.get_mut(ln.bias.unwrap()).value = randn(&[d], 0.3, &mut rng);
    let x = randn(&[2, bt / 2, d], 2.0, &mut rng);
    let dy = randn(&[2, bt / 2, d], 1.0, &mut rng);
    let mut out = Vec::new();
    for reference in [false, true] {
        let mut st = store.clone();
        let mut tape = Tape::<f64>::new();
        let xv = tape.input(x.clone());
        let y = if reference {
            let w = tape.param(&st, ln.weight.unwrap());
            let b = tape.param(&st, ln.bias.unwrap());
            norm::norm_reference(
                &mut tape,
                xv,
                RefKind::Layer { normalized_ndim: 1 },
                Some(w),
                Some(b),
                1e-6,
                None,
            )
            .unwrap()
        } else {
            ln.forward(&mut tape, &st, xv, &mut Ctx::eval()).unwrap()
        };
        tape.backward_with(y, dy.clone()).unwrap();
        tape.accumulate_grads(&mut st).unwrap();
        out.push([
            tape.value(y).clone(),
            tape.grad(xv).unwrap().clone(),
            st.by_name("norm.weight").unwrap().grad.clone(),
            st.by_name("norm.bias").unwrap().grad.clone(),
        ]);
    }
    for (k, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
        let e = a.max_abs_diff(b).unwrap();
        assert!(e < 1e-11, "output {k}: {e:.3e}");
    }
}

#[test]
fn bad_norm_inputs_are_errors() {
    let mut tape = Tape::<f32>::new();
    let x = tape.input(Tensor::zeros(&[2, 6, 5]));
    let bad_mask = Tensor::<f32>::ones(&[2, 5]);
    let e = norm::layer_norm(&mut tape, x, 1, None, None, 1e-5, Some(&bad_mask)).unwrap_err();
    assert!(e.to_string().contains("mask"), "{e}");
    let bad_mask = Tensor::<f32>::ones(&[2, 1, 4]);
    assert!(norm::instance_norm(&mut tape, x, None, None, 1e-5, Some(&bad_mask)).is_err());
    let half = Tensor::<f32>::full(&[2, 1, 5], 0.5);
    assert!(norm::group_norm(&mut tape, x, 2, None, None, 1e-5, Some(&half)).is_err());
    let e = norm::group_norm(&mut tape, x, 4, None, None, 1e-5, None).unwrap_err();
    assert!(e.to_string().contains("divide"), "{e}");
    let mut store = ParamStore::<f32>::new();
    let mut rng0 = Rng::new(0);
    let vb = VarBuilder::init(&mut store, &mut rng0);
    assert!(norm::GroupNorm::new(vb, 4, 6, 1e-5, true).is_err());
    assert!(norm::layer_norm(&mut tape, x, 4, None, None, 1e-5, None).is_err());
    assert!(norm::layer_norm(&mut tape, x, 1, None, None, -1.0, None).is_err());
    let w = tape.input(Tensor::ones(&[6]));
    assert!(norm::layer_norm(&mut tape, x, 1, Some(w), None, 1e-5, None).is_err());
    let ln = norm::LayerNorm::new(
        VarBuilder::init(&mut store, &mut Rng::new(0)).pp("ln"),
        &[4],
        1e-5,
        true,
    )
    .unwrap();
    assert!(ln.forward(&mut tape, &store, x, &mut Ctx::eval()).is_err());
}

/// BatchNorm in training mode through the module: (y, dx, dweight, dbias, running_mean, running_var).
fn run_bn<T: Element>(
    fx: &BTreeMap<String, Tensor<f64>>,
    reference: bool,
    mask: Option<&Tensor<T>>,
) -> Vec<Tensor<T>> {
    let mut store = ParamStore::<T>::new();
    let mut rng = Rng::new(0);
    let bn = norm::BatchNorm::<T>::new(
        VarBuilder::init(&mut store, &mut rng).pp("bn"),
        6,
        1e-5,
        Some(0.1),
        true,
    )
    .unwrap();
    store.get_mut(bn.weight.unwrap()).value = fx["weight"].cast();
    store.get_mut(bn.bias.unwrap()).value = fx["bias"].cast();
    let mut tape = Tape::<T>::new();
    let x = tape.input(fx["x"].cast());
    let y = if reference {
        let w = tape.param(&store, bn.weight.unwrap());
        let b = tape.param(&store, bn.bias.unwrap());
        norm::norm_reference(&mut tape, x, RefKind::Batch, Some(w), Some(b), 1e-5, mask).unwrap()
    } else {
        bn.forward_masked(&mut tape, &store, x, mask, &train_ctx())
            .unwrap()
    };
    tape.backward_with(y, fx["dy"].cast()).unwrap();
    tape.accumulate_grads(&mut store).unwrap();
    vec![
        tape.value(y).clone(),
        tape.grad(x).unwrap().clone(),
        store.by_name("bn.weight").unwrap().grad.clone(),
        store.by_name("bn.bias").unwrap().grad.clone(),
        bn.running_mean(),
        bn.running_var(),
    ]
}

#[test]
fn batch_norm_matches_pytorch_fixture() {
    let Some(fx) = fixture("batch_norm") else {
        return;
    };
    let names = ["y", "dx", "dweight", "dbias", "running_mean", "running_var"];
    let got = run_bn::<f64>(&fx, false, None);
    for (g, name) in got.iter().zip(names) {
        let e = g.max_abs_diff(&fx[name]).unwrap();
        assert!(e <= 1e-10, "batch_norm {name}: {e:.3e}");
    }
    let refp = run_bn::<f64>(&fx, true, None);
    for (k, (a, b)) in got.iter().zip(&refp).take(4).enumerate() {
        let e = a.max_abs_diff(b).unwrap();
        assert!(
            e <= 1e-12,
            "batch_norm fused vs reference output {k}: {e:.3e}"
        );
    }
    let got = run_bn::<f32>(&fx, false, None);
    for (g, name) in got.iter().zip(names) {
        let w = &fx[name];
        let scale = w.data().iter().fold(1.0f64, |a, v| a.max(v.abs()));
        let e = g.cast::<f64>().max_abs_diff(w).unwrap();
        assert!(e <= 1e-5 * scale, "batch_norm f32 {name}: {e:.3e}");
    }
}

#[test]
fn batch_norm_masked_equals_reference_and_ignores_padding() {
    let Some(fx) = fixture("batch_norm") else {
        return;
    };
    let mask = padding_mask(4, 6, 5, &[5, 4, 2, 3]);
    let a = run_bn::<f64>(&fx, false, Some(&mask));
    let b = run_bn::<f64>(&fx, true, Some(&mask));
    for k in 0..4 {
        let e = a[k].max_abs_diff(&b[k]).unwrap();
        assert!(e < 1e-12, "masked batch_norm output {k}: {e:.3e}");
    }
    let md = norm::expand_mask(&mask, &[4, 6, 5], "test").unwrap();
    let mut fx2 = fx.clone();
    let xs = fx["x"].clone();
    fx2.insert(
        "x".into(),
        Tensor::from_fn(
            &[4, 6, 5],
            |i| if md[i] == 0.0 { -50.0 } else { xs.data()[i] },
        ),
    );
    let c = run_bn::<f64>(&fx2, false, Some(&mask));
    for k in 0..6 {
        let e = a[k].max_abs_diff(&c[k]).unwrap();
        assert!(
            e < 1e-12,
            "masked batch_norm output {k} depends on padding: {e:.3e}"
        );
    }
    // Running statistics from the valid entries only (unbiased variance).
    let st = norm::norm_stats(&fx["x"], RefKind::Batch, Some(&mask)).unwrap();
    let cnt = (5 + 4 + 2 + 3) as f64;
    for ch in 0..6 {
        let rm = 0.1 * st.mean[ch];
        let rv = 0.9 + 0.1 * st.var[ch] * cnt / (cnt - 1.0);
        assert!((a[4].data()[ch] - rm).abs() < 1e-14);
        assert!((a[5].data()[ch] - rv).abs() < 1e-14);
    }
}

#[test]
fn batch_norm_gradcheck_train_eval_masked() {
    let mut rng = Rng::new(11);
    let x = randn(&[3, 4, 5], 1.5, &mut rng);
    let mask = padding_mask(3, 4, 5, &[5, 4, 3]);
    let mut store = ParamStore::<f64>::new();
    store
        .add("weight", randn(&[4], 0.5, &mut rng).map(|v| v + 1.0))
        .unwrap();
    store.add("bias", randn(&[4], 0.5, &mut rng)).unwrap();
    let rm = randn(&[4], 0.5, &mut rng);
    let rv = randn(&[4], 0.3, &mut rng).map(|v| v * v + 0.5);
    for train in [true, false] {
        for m in [None, Some(&mask)] {
            let r = check_gradients(
                &store,
                std::slice::from_ref(&x),
                &GradCheckOptions::default(),
                |tape, p, v| {
                    let w = tape.param(p, p.find("weight").unwrap());
                    let b = tape.param(p, p.find("bias").unwrap());
                    let mode = if train {
                        norm::BatchNormMode::Train {
                            running: None,
                            factor: 0.1,
                        }
                    } else {
                        norm::BatchNormMode::Eval {
                            mean: &rm,
                            var: &rv,
                        }
                    };
                    norm::batch_norm(tape, v[0], Some(w), Some(b), mode, 1e-5, m)
                },
            )
            .unwrap();
            assert!(
                r.max_rel_error < 1e-6,
                "batch_norm train {train} mask {}: {:.3e} {:?}",
                m.is_some(),
                r.max_rel_error,
                r.per_tensor
            );
        }
    }
}

#[test]
fn batch_norm_eval_uses_running_stats_and_4d_layout() {
    let mut rng = Rng::new(5);
    let mut store = ParamStore::<f64>::new();
    let bn = norm::BatchNorm::<f64>::new(
        VarBuilder::init(&mut store, &mut Rng::new(0)).pp("bn"),
        3,
        1e-5,
        None,
        false,
    )
    .unwrap();
    let x = randn(&[4, 3, 2, 5], 1.0, &mut rng).map(|v| 2.0 * v + 1.0);
    let mut tape = Tape::<f64>::new();
    let xv = tape.input(x.clone());
    bn.forward(&mut tape, &store, xv, &mut train_ctx()).unwrap();
    // Cumulative average with one batch: the batch statistics themselves.
    let st = norm::norm_stats(&x, RefKind::Batch, None).unwrap();
    let (rm, rv) = (bn.running_mean(), bn.running_var());
    for ch in 0..3 {
        assert!((rm.data()[ch] - st.mean[ch]).abs() < 1e-14);
        assert!((rv.data()[ch] - st.var[ch] * 40.0 / 39.0).abs() < 1e-13);
    }
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(x.clone());
    let y = bn.forward(&mut tape, &store, xv, &mut Ctx::eval()).unwrap();
    let yd = tape.value(y).data();
    for (i, &xi) in x.data().iter().enumerate() {
        let ch = (i / 10) % 3;
        let want = (xi - rm.data()[ch]) / (rv.data()[ch] + 1e-5).sqrt();
        assert!((yd[i] - want).abs() < 1e-12);
    }
    // Evaluation leaves the statistics alone.
    assert_eq!(bn.num_batches_tracked(), 1);
    assert_eq!(bn.running_mean(), rm);
    // A single value per channel cannot be normalized in training.
    let mut tape = Tape::<f64>::new();
    let one = tape.input(Tensor::zeros(&[1, 3]));
    assert!(bn
        .forward(&mut tape, &store, one, &mut train_ctx())
        .is_err());
    let bad = Tensor::<f64>::ones(&[4, 3, 2]);
    let xv = tape.input(x);
    assert!(bn
        .forward_masked(&mut tape, &store, xv, Some(&bad), &train_ctx())
        .is_err());
    // A failed training forward counts no batch.
    assert_eq!(bn.num_batches_tracked(), 1);
}

#[test]
fn fused_forward_backward_equals_tape_path() {
    let Some(fx) = fixture("batch_norm") else {
        return;
    };
    let kinds = [
        (RefKind::Batch, None),
        (RefKind::Group { groups: 6 }, Some(Kind::Instance)),
        (RefKind::Group { groups: 3 }, Some(Kind::Group(3))),
    ];
    for (kind, row) in kinds {
        let got = norm::fused_forward_backward(
            kind,
            &fx["x"],
            &fx["dy"],
            &fx["weight"],
            &fx["bias"],
            1e-5,
        )
        .unwrap();
        let want: Vec<Tensor<f64>> = match row {
            None => run_bn::<f64>(&fx, false, None),
            Some(k) => run::<f64>(k, false, &fx, None).to_vec(),
        };
        for k in 0..4 {
            let e = got[k].max_abs_diff(&want[k]).unwrap();
            assert!(e < 1e-13, "{kind:?} output {k}: {e:.3e}");
        }
    }
    let Some(fl) = fixture("layer_norm_f") else {
        return;
    };
    let got = norm::fused_forward_backward(
        RefKind::Layer { normalized_ndim: 1 },
        &fl["x"],
        &fl["dy"],
        &fl["weight"],
        &fl["bias"],
        1e-5,
    )
    .unwrap();
    for (k, name) in ["y", "dx", "dweight", "dbias"].iter().enumerate() {
        assert!(
            got[k].max_abs_diff(&fl[*name]).unwrap() <= 1e-10,
            "layer_norm_f {name}"
        );
    }
    let bad = Tensor::<f64>::ones(&[5]);
    assert!(
        norm::fused_forward_backward(RefKind::Batch, &fx["x"], &fx["dy"], &bad, &bad, 1e-5)
            .is_err()
    );
}

#[test]
fn four_d_layout_group_instance_layer_gradcheck_and_reference() {
    let mut rng = Rng::new(21);
    let x = randn(&[2, 4, 3, 2], 1.0, &mut rng);
    let mask = Tensor::from_fn(&[2, 1, 3, 2], |i| if i == 5 || i == 10 { 0.0 } else { 1.0 });
    let mut store = ParamStore::<f64>::new();
    store
        .add("weight", randn(&[4], 0.3, &mut rng).map(|v| v + 1.0))
        .unwrap();
    store.add("bias", randn(&[4], 0.3, &mut rng)).unwrap();
    for groups in [2, 4] {
        for m in [None, Some(&mask)] {
            let f = |tape: &mut Tape<f64>, p: &ParamStore<f64>, v: &[Var], reference: bool| {
                let w = tape.param(p, p.find("weight").unwrap());
                let b = tape.param(p, p.find("bias").unwrap());
                if reference {
                    norm::norm_reference(
                        tape,
                        v[0],
                        RefKind::Group { groups },
                        Some(w),
                        Some(b),
                        1e-5,
                        m,
                    )
                } else {
                    norm::group_norm(tape, v[0], groups, Some(w), Some(b), 1e-5, m)
                }
            };
            let r = check_gradients(
                &store,
                std::slice::from_ref(&x),
                &GradCheckOptions::default(),
                |t, p, v| f(t, p, v, false),
            )
            .unwrap();
            assert!(
                r.max_rel_error < 1e-6,
                "groups {groups}: {:?}",
                r.per_tensor
            );
            let mut t1 = Tape::<f64>::no_grad();
            let v1 = t1.constant(x.clone());
            let y1 = f(&mut t1, &store, &[v1], false).unwrap();
            let mut t2 = Tape::<f64>::no_grad();
            let v2 = t2.constant(x.clone());
            let y2 = f(&mut t2, &store, &[v2], true).unwrap();
            assert!(t1.value(y1).max_abs_diff(t2.value(y2)).unwrap() < 1e-12);
        }
    }
    // InstanceNorm on (N, C, H, W) is GroupNorm with C groups.
    let mut t = Tape::<f64>::no_grad();
    let xv = t.constant(x.clone());
    let a = norm::instance_norm(&mut t, xv, None, None, 1e-5, None).unwrap();
    let b = norm::group_norm(&mut t, xv, 4, None, None, 1e-5, None).unwrap();
    assert_eq!(t.value(a), t.value(b));
    let st = norm::norm_stats(&x, RefKind::Group { groups: 4 }, None).unwrap();
    assert_eq!(st.shape, vec![2, 4]);
    assert!(norm::fused_forward_backward(
        RefKind::Group { groups: 3 },
        &x,
        &x,
        &Tensor::ones(&[4]),
        &Tensor::ones(&[4]),
        1e-5
    )
    .is_err());
}

/// `w (x − μ_run)/√(σ²_run + ε) + b` per channel of `(N, C, F)`: BatchNorm's evaluation output.
fn bn_eval_formula(
    fx: &BTreeMap<String, Tensor<f64>>,
    rm: &Tensor<f64>,
    rv: &Tensor<f64>,
) -> Tensor<f64> {
    let x = &fx["x"];
    let (c, f) = (x.shape()[1], x.shape()[2]);
    Tensor::from_fn(x.shape(), |i| {
        let ch = (i / f) % c;
        let xh = (x.data()[i] - rm.data()[ch]) / (rv.data()[ch] + 1e-5).sqrt();
        fx["weight"].data()[ch] * xh + fx["bias"].data()[ch]
    })
}

/// A forward of `m` on the fixture's `x` in the mode of `ctx`: its output.
fn bn_forward(
    bn: &norm::BatchNorm<f64>,
    store: &ParamStore<f64>,
    fx: &BTreeMap<String, Tensor<f64>>,
    ctx: &mut Ctx<'_>,
) -> Tensor<f64> {
    let mut tape = Tape::<f64>::no_grad();
    let x = tape.constant(fx["x"].clone());
    let y = bn.forward(&mut tape, store, x, ctx).unwrap();
    tape.value(y).clone()
}

/// BatchNorm as a module: PyTorch's parameter and buffer names under its path (also through a
/// `Sequential`), a training forward that reproduces the fixture (output and running statistics,
/// 1e-10), a checkpoint of parameters + buffers loaded through `VarBuilder::load` whose
/// evaluation output is `w (x − μ_run)/√(σ²_run + ε) + b` of the fixture's running statistics
/// (1e-12) and bit-equal to the trained module's, and `Ctx::eval` vs a training `Ctx` switching
/// the statistics (batch ones update the buffers, running ones leave them alone).
#[test]
fn batch_norm_module_buffers_checkpoint_and_modes() {
    let Some(fx) = fixture("batch_norm") else {
        return;
    };
    let mut store = ParamStore::<f64>::new();
    let mut rng = Rng::new(0);
    let bn = {
        let mut vb = VarBuilder::init(&mut store, &mut rng);
        let mut feats = vb.pp("features");
        norm::BatchNorm::<f64>::new(feats.pp(1), 6, 1e-5, Some(0.1), true).unwrap()
    };
    let names: Vec<String> = bn.named_params(&store).into_iter().map(|p| p.0).collect();
    assert_eq!(names, ["features.1.weight", "features.1.bias"]);
    let bufs = bn.buffers();
    let bnames: Vec<&str> = bufs.iter().map(|b| b.0.as_str()).collect();
    assert_eq!(
        bnames,
        [
            "features.1.running_mean",
            "features.1.running_var",
            "features.1.num_batches_tracked"
        ]
    );
    assert_eq!(bufs[0].1, Tensor::zeros(&[6]));
    assert_eq!(bufs[1].1, Tensor::ones(&[6]));
    assert_eq!(bufs[2].1.shape(), &[] as &[usize]);
    assert_eq!(bufs[2].1.data(), &[0.0]);
    store.get_mut(bn.weight.unwrap()).value = fx["weight"].clone();
    store.get_mut(bn.bias.unwrap()).value = fx["bias"].clone();

    // Training mode: the fixture's output and running statistics.
    let y = bn_forward(&bn, &store, &fx, &mut train_ctx());
    assert!(y.max_abs_diff(&fx["y"]).unwrap() <= 1e-10);
    for (k, name) in ["running_mean", "running_var"].iter().enumerate() {
        let e = bn.buffers()[k].1.max_abs_diff(&fx[*name]).unwrap();
        assert!(e <= 1e-10, "{name}: {e:.3e}");
    }
    assert_eq!(bn.num_batches_tracked(), 1);
    let y_eval = bn_forward(&bn, &store, &fx, &mut Ctx::eval());

    // A checkpoint: parameters and buffers by name, as a state dict.
    let mut ckpt: BTreeMap<String, Tensor<f64>> = store
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    ckpt.extend(nabla::nn::Sequential::new().push(bn.clone()).buffers());
    assert_eq!(ckpt.len(), 5);
    let mut store2 = ParamStore::<f64>::new();
    let loaded = {
        let mut vb = VarBuilder::load(&mut store2, &ckpt);
        norm::BatchNorm::<f64>::new(vb.pp("features.1"), 6, 1e-5, Some(0.1), true).unwrap()
    };
    assert_eq!(loaded.running_stats(), bn.running_stats());
    let got = bn_forward(&loaded, &store2, &fx, &mut Ctx::eval());
    let want = bn_eval_formula(&fx, &fx["running_mean"], &fx["running_var"]);
    let e = got.max_abs_diff(&want).unwrap();
    assert!(e <= 1e-12, "eval after load: {e:.3e}");
    assert_eq!(got, y_eval, "eval output of the loaded module");
    assert_eq!(
        loaded.num_batches_tracked(),
        1,
        "evaluation updates nothing"
    );

    // The mode picks the statistics: batch ones (the fixture's training output) or running ones.
    let y_train = bn_forward(&loaded, &store2, &fx, &mut train_ctx());
    assert!(y_train.max_abs_diff(&fx["y"]).unwrap() <= 1e-10);
    assert!(
        y_train.max_abs_diff(&got).unwrap() > 1e-2,
        "train and eval outputs coincide"
    );
    assert_eq!(loaded.num_batches_tracked(), 2);
    let st = norm::norm_stats(&fx["x"], RefKind::Batch, None).unwrap();
    for ch in 0..6 {
        let rm = 0.9 * fx["running_mean"].data()[ch] + 0.1 * st.mean[ch];
        assert!((loaded.running_mean().data()[ch] - rm).abs() < 1e-14);
    }

    // A checkpoint with half the statistics, or a fractional batch count, is refused.
    let mut half = ckpt.clone();
    half.remove("features.1.running_var");
    let mut s3 = ParamStore::<f64>::new();
    let e = norm::BatchNorm::<f64>::new(
        VarBuilder::load(&mut s3, &half).pp("features.1"),
        6,
        1e-5,
        None,
        true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("features.1.running_var"), "{e}");
    let mut frac = ckpt.clone();
    frac.insert("features.1.num_batches_tracked".into(), Tensor::scalar(1.5));
    let mut s4 = ParamStore::<f64>::new();
    assert!(norm::BatchNorm::<f64>::new(
        VarBuilder::load(&mut s4, &frac).pp("features.1"),
        6,
        1e-5,
        None,
        true
    )
    .is_err());
    let mut s5 = ParamStore::<f64>::new();
    let mut wrong = ckpt.clone();
    wrong.insert("features.1.running_mean".into(), Tensor::zeros(&[5]));
    assert!(norm::BatchNorm::<f64>::new(
        VarBuilder::load(&mut s5, &wrong).pp("features.1"),
        6,
        1e-5,
        None,
        true
    )
    .is_err());
}

/// GroupNorm and InstanceNorm as modules loaded from the fixtures' weights under a path:
/// the fixture outputs through `Module::forward` (1e-10), in either mode.
#[test]
fn group_and_instance_norm_modules_match_fixtures() {
    for (name, groups) in [("group_norm_g2", Some(2)), ("instance_norm", None)] {
        let Some(fx) = fixture(name) else { return };
        let ckpt: BTreeMap<String, Tensor<f64>> = [
            ("m.weight".to_string(), fx["weight"].clone()),
            ("m.bias".to_string(), fx["bias"].clone()),
        ]
        .into();
        let mut store = ParamStore::<f64>::new();
        let m: Box<dyn Module<f64>> = {
            let vb = VarBuilder::load(&mut store, &ckpt);
            let mut vb = vb;
            match groups {
                Some(g) => Box::new(norm::GroupNorm::new(vb.pp("m"), g, 6, 1e-5, true).unwrap()),
                None => Box::new(norm::InstanceNorm::new(vb.pp("m"), 6, 1e-5, true).unwrap()),
            }
        };
        assert_eq!(m.params().len(), 2);
        assert!(m.buffers().is_empty());
        for mut ctx in [Ctx::eval(), train_ctx()] {
            let mut tape = Tape::<f64>::no_grad();
            let x = tape.constant(fx["x"].clone());
            let y = m.forward(&mut tape, &store, x, &mut ctx).unwrap();
            let e = tape.value(y).max_abs_diff(&fx["y"]).unwrap();
            assert!(e <= 1e-10, "{name}: {e:.3e}");
        }
    }
}

/// LayerNorm's dβ is the bias-gradient kernel's: in f32, over more rows than one block
/// (100 rows of 48, one parallel task), the fused backward's bias gradient equals
/// `kernels::col_sums(dy)` bit for bit.
#[test]
fn layer_norm_bias_grad_is_the_bias_grad_kernel() {
    let mut rng = Rng::new(13);
    let (rows, d) = (100, 48);
    let x: Tensor<f32> = randn(&[rows, d], 1.0, &mut rng).cast();
    let dy: Tensor<f32> = randn(&[rows, d], 1.0, &mut rng).cast();
    let mut store = ParamStore::<f32>::new();
    let ln = norm::LayerNorm::new(
        VarBuilder::init(&mut store, &mut Rng::new(0)).pp("ln"),
        &[d],
        1e-5,
        true,
    )
    .unwrap();
    let mut tape = Tape::<f32>::new();
    let xv = tape.input(x);
    let y = ln.forward(&mut tape, &store, xv, &mut Ctx::eval()).unwrap();
    tape.backward_with(y, dy.clone()).unwrap();
    tape.accumulate_grads(&mut store).unwrap();
    let db = &store.by_name("ln.bias").unwrap().grad;
    assert_eq!(db.data(), &nabla::kernels::col_sums(dy.data(), d)[..]);
}

/// The PyTorch fixtures, gradient checks and fused-vs-reference tests again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "row_norms_match_pytorch_fixtures",
            "row_norms_gradcheck_with_and_without_mask",
            "masked_fused_equals_masked_reference_and_ignores_padding",
            "layer_norm_module_vit_shape_and_large_parallel_path",
            "batch_norm_matches_pytorch_fixture",
            "batch_norm_masked_equals_reference_and_ignores_padding",
            "batch_norm_gradcheck_train_eval_masked",
            "batch_norm_eval_uses_running_stats_and_4d_layout",
            "fused_forward_backward_equals_tape_path",
            "four_d_layout_group_instance_layer_gradcheck_and_reference",
            "batch_norm_module_buffers_checkpoint_and_modes",
            "group_and_instance_norm_modules_match_fixtures",
            "layer_norm_bias_grad_is_the_bias_grad_kernel",
        ],
    );
}
