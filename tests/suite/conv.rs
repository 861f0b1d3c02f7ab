//! Convolutional layers: f64 central-difference gradient checks (< 1e-6) of Conv2d (stride,
//! padding, groups, bias), MaxPool2d, global average pooling and BatchNorm2d; the fused ops
//! against the same computations unrolled into primitive ops (values and gradients to 1e-12);
//! the same bits on 1 and 2 threads; bad shapes as errors.

use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::conv::{
    conv2d, conv2d_reference, global_avg_pool, global_avg_pool_reference, max_pool2d,
    max_pool2d_reference, BatchNorm2d, ConvSpec,
};
use nabla::nn::norm::{norm_reference, RefKind};
use nabla::nn::{Ctx, Module, VarBuilder};
use nabla::{ParamStore, Rng, Tape, Tensor, Var};

const SPECS: [(usize, usize, usize, bool); 5] = [
    // (stride, padding, groups, bias)
    (1, 1, 1, true),
    (2, 1, 1, false),
    (1, 0, 2, true),
    (2, 2, 2, true),
    (3, 0, 1, false),
];

/// `x (2, 4, 7, 6)`, weight `(6, 4/G, 3, 3)` or 1×1 for the stride-3 case.
fn case(
    s: (usize, usize, usize, bool),
    rng: &mut Rng,
) -> (Tensor<f64>, Tensor<f64>, Option<Tensor<f64>>) {
    let (_, _, g, bias) = s;
    let k = if s.0 == 3 { 1 } else { 3 };
    let x = randn(&[2, 4, 7, 6], 1.0, rng);
    let w = randn(&[6, 4 / g, k, k], 0.5, rng);
    let b = bias.then(|| randn(&[6], 0.5, rng));
    (x, w, b)
}

fn spec(s: (usize, usize, usize, bool)) -> ConvSpec {
    ConvSpec {
        stride: s.0,
        padding: s.1,
        groups: s.2,
    }
}

#[test]
fn conv2d_gradients_match_finite_differences() {
    let mut rng = Rng::new(1);
    for s in SPECS {
        let (x, w, b) = case(s, &mut rng);
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let rep = check_gradients(
            &ParamStore::new(),
            &inputs,
            &GradCheckOptions::default(),
            |t, _, v: &[Var]| conv2d(t, v[0], v[1], v.get(2).copied(), spec(s)),
        )
        .unwrap();
        assert!(rep.max_rel_error < 1e-6, "{s:?}: {:?}", rep.per_tensor);
    }
}

/// Runs `f` on a fresh tape and returns its value and the input gradients for seed `r`.
fn value_and_grads(
    inputs: &[Tensor<f64>],
    seed: u64,
    f: impl Fn(&mut Tape<f64>, &[Var]) -> nabla::Result<Var>,
) -> (Tensor<f64>, Vec<Tensor<f64>>) {
    let mut tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.input(t.clone())).collect();
    let y = f(&mut tape, &vars).unwrap();
    let mut rng = Rng::new(seed);
    let r = randn(tape.shape(y), 1.0, &mut rng);
    tape.backward_with(y, r).unwrap();
    let g = vars
        .iter()
        .map(|&v| tape.grad(v).unwrap().clone())
        .collect();
    (tape.value(y).clone(), g)
}

fn assert_close(a: &Tensor<f64>, b: &Tensor<f64>, tol: f64, what: &str) {
    let d = a.max_abs_diff(b).unwrap();
    assert!(d < tol, "{what}: max |Δ| {d}");
}

#[test]
fn fused_ops_match_the_unrolled_reference() {
    let mut rng = Rng::new(2);
    for s in SPECS {
        let (x, w, b) = case(s, &mut rng);
        let mut inputs = vec![x, w];
        inputs.extend(b);
        let f = |t: &mut Tape<f64>, v: &[Var]| conv2d(t, v[0], v[1], v.get(2).copied(), spec(s));
        let r = |t: &mut Tape<f64>, v: &[Var]| {
            conv2d_reference(t, v[0], v[1], v.get(2).copied(), spec(s))
        };
        let (y1, g1) = value_and_grads(&inputs, 3, f);
        let (y2, g2) = value_and_grads(&inputs, 3, r);
        assert_close(&y1, &y2, 1e-12, &format!("conv {s:?} value"));
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert_close(a, b, 1e-12, &format!("conv {s:?} grad {i}"));
        }
    }
    // Max pooling (timm's stem: 3×3, stride 2, padding 1) and a 2×2 stride-2 pool.
    for (k, st, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let x = randn(&[2, 3, 7, 8], 1.0, &mut rng);
        let (y1, g1) = value_and_grads(std::slice::from_ref(&x), 4, |t, v| {
            max_pool2d(t, v[0], k, st, p)
        });
        let (y2, g2) = value_and_grads(&[x], 4, |t, v| max_pool2d_reference(t, v[0], k, st, p));
        assert_eq!(y1, y2, "max_pool value");
        assert_close(&g1[0], &g2[0], 1e-12, "max_pool grad");
    }
    let x = randn(&[3, 4, 5, 6], 1.0, &mut rng);
    let (y1, g1) = value_and_grads(std::slice::from_ref(&x), 5, |t, v| global_avg_pool(t, v[0]));
    let (y2, g2) = value_and_grads(&[x], 5, |t, v| global_avg_pool_reference(t, v[0]));
    assert_close(&y1, &y2, 1e-12, "avg pool value");
    assert_close(&g1[0], &g2[0], 1e-12, "avg pool grad");
}

#[test]
fn pooling_gradients_match_finite_differences() {
    let mut rng = Rng::new(6);
    // Distinct values, so no window has a tie a finite difference could break.
    let n = 2 * 3 * 7 * 8;
    let mut vals: Vec<f64> = (0..n).map(|i| i as f64 * 0.01).collect();
    for i in (1..n).rev() {
        vals.swap(i, rng.below(i + 1));
    }
    let x = Tensor::new(&[2, 3, 7, 8], vals).unwrap();
    let opts = GradCheckOptions {
        h: 1e-4,
        ..Default::default()
    };
    let rep = check_gradients(
        &ParamStore::new(),
        std::slice::from_ref(&x),
        &opts,
        |t, _, v| max_pool2d(t, v[0], 3, 2, 1),
    )
    .unwrap();
    assert!(rep.max_rel_error < 1e-6, "max_pool {:?}", rep.per_tensor);
    let rep = check_gradients(&ParamStore::new(), &[x], &opts, |t, _, v| {
        global_avg_pool(t, v[0])
    })
    .unwrap();
    assert!(rep.max_rel_error < 1e-6, "avg_pool {:?}", rep.per_tensor);
}

/// BatchNorm2d = the existing BatchNorm over (N, H, W) per channel: gradient check in training
/// mode, the unrolled reference, and the running statistics PyTorch keeps (momentum 0.1,
/// unbiased variance), then evaluation with them.
#[test]
fn batch_norm_2d_trains_and_evaluates() {
    let mut rng = Rng::new(7);
    let mut store = ParamStore::<f64>::new();
    let mut init = Rng::new(0);
    let bn = BatchNorm2d::new(
        VarBuilder::init(&mut store, &mut init),
        3,
        1e-5,
        Some(0.1),
        true,
    )
    .unwrap();
    for p in store.iter_mut() {
        p.value = randn(p.value.shape(), 1.0, &mut rng);
    }
    let x = randn(&[4, 3, 5, 5], 2.0, &mut rng);
    let rep = check_gradients(
        &store,
        std::slice::from_ref(&x),
        &GradCheckOptions::default(),
        |t, s, v| {
            let train = Ctx {
                train: true,
                rng: None,
            };
            bn.forward_masked(t, s, v[0], None, &train)
        },
    )
    .unwrap();
    assert!(rep.max_rel_error < 1e-6, "{:?}", rep.per_tensor);
    let (w, b) = (
        store.by_name("weight").unwrap().value.clone(),
        store.by_name("bias").unwrap().value.clone(),
    );
    let f = |t: &mut Tape<f64>, v: &[Var]| {
        let train = Ctx {
            train: true,
            rng: None,
        };
        bn.forward_masked(t, &store, v[0], None, &train)
    };
    let r = |t: &mut Tape<f64>, v: &[Var]| {
        let (wv, bv) = (t.constant(w.clone()), t.constant(b.clone()));
        norm_reference(t, v[0], RefKind::Batch, Some(wv), Some(bv), 1e-5, None)
    };
    let (y1, g1) = value_and_grads(std::slice::from_ref(&x), 8, f);
    let (y2, g2) = value_and_grads(std::slice::from_ref(&x), 8, r);
    assert_close(&y1, &y2, 1e-10, "bn value");
    assert_close(&g1[0], &g2[0], 1e-10, "bn grad");
    // Running statistics after the forward passes so far, from a fresh layer: one batch.
    let mut s2 = ParamStore::<f64>::new();
    let mut r2 = Rng::new(0);
    let bn2 =
        BatchNorm2d::new(VarBuilder::init(&mut s2, &mut r2), 3, 1e-5, Some(0.1), true).unwrap();
    let mut tape = Tape::<f64>::new();
    let xv = tape.constant(x.clone());
    bn2.forward(
        &mut tape,
        &s2,
        xv,
        &mut Ctx {
            train: true,
            rng: None,
        },
    )
    .unwrap();
    let (m, v) = (bn2.running_mean(), bn2.running_var());
    for c in 0..3 {
        let vals: Vec<f64> = (0..4)
            .flat_map(|n| x.data()[(n * 3 + c) * 25..(n * 3 + c + 1) * 25].to_vec())
            .collect();
        let mu = vals.iter().sum::<f64>() / 100.0;
        let var = vals.iter().map(|a| (a - mu).powi(2)).sum::<f64>() / 99.0;
        assert!((m.data()[c] - 0.1 * mu).abs() < 1e-12);
        assert!((v.data()[c] - (0.9 + 0.1 * var)).abs() < 1e-12);
    }
    assert_eq!(bn2.num_batches_tracked(), 1);
    // Evaluation normalizes with the running statistics: y = (x − m)/√(v + ε) (γ = 1, β = 0).
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(x.clone());
    let y = bn2.forward(&mut tape, &s2, xv, &mut Ctx::eval()).unwrap();
    let y = tape.value(y);
    let i = (3 + 2) * 25 + 7; // n = 1, c = 2, pixel 7
    let want = (x.data()[i] - m.data()[2]) / (v.data()[2] + 1e-5).sqrt();
    assert!((y.data()[i] - want).abs() < 1e-12);
}

/// Weight gradients are summed in a fixed order: the same bits on 1 and 2 threads (f32, a
/// batch of 20 images spread over 3 tasks).
#[test]
fn conv_bits_do_not_depend_on_threads() {
    let mut rng = Rng::new(9);
    let x: Tensor<f32> = randn(&[20, 8, 12, 12], 1.0, &mut rng).cast();
    let w: Tensor<f32> = randn(&[16, 8, 3, 3], 0.2, &mut rng).cast();
    let b: Tensor<f32> = randn(&[16], 0.2, &mut rng).cast();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut tape = Tape::<f32>::new();
            let (xv, wv, bv) = (
                tape.input(x.clone()),
                tape.input(w.clone()),
                tape.input(b.clone()),
            );
            let y = conv2d(
                &mut tape,
                xv,
                wv,
                Some(bv),
                ConvSpec {
                    stride: 1,
                    padding: 1,
                    groups: 1,
                },
            )
            .unwrap();
            let seed = Tensor::from_fn(tape.shape(y), |i| ((i % 13) as f32 - 6.0) / 7.0);
            tape.backward_with(y, seed).unwrap();
            [y, xv, wv, bv].map(|v| {
                if v == y {
                    tape.value(v).clone()
                } else {
                    tape.grad(v).unwrap().clone()
                }
            })
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_shapes_are_errors() {
    let mut tape = Tape::<f64>::new();
    let x = tape.constant(Tensor::zeros(&[1, 3, 5, 5]));
    let w = tape.constant(Tensor::zeros(&[4, 2, 3, 3]));
    let e = conv2d(&mut tape, x, w, None, ConvSpec::default()).unwrap_err();
    assert!(e.to_string().contains("3 channels"), "{e}");
    let w = tape.constant(Tensor::zeros(&[4, 3, 7, 7]));
    let e = conv2d(&mut tape, x, w, None, ConvSpec::default()).unwrap_err();
    assert!(e.to_string().contains("does not fit"), "{e}");
    let w = tape.constant(Tensor::zeros(&[5, 1, 3, 3]));
    let spec = ConvSpec {
        groups: 3,
        ..Default::default()
    };
    let e = conv2d(&mut tape, x, w, None, spec).unwrap_err();
    assert!(e.to_string().contains("divisible"), "{e}");
    let v = tape.constant(Tensor::zeros(&[3, 5, 5]));
    assert!(max_pool2d(&mut tape, v, 3, 2, 1).is_err());
    assert!(max_pool2d(&mut tape, x, 3, 2, 2).is_err());
    assert!(global_avg_pool(&mut tape, v).is_err());
}
