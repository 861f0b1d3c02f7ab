//! Fused multi-head attention: f64 gradient checks (rel. error < 1e-6), fused vs unrolled
//! reference path, and PyTorch `nn.MultiheadAttention` fixtures (|Δ| ≤ 1e-10 in f64,
//! ≤ 1e-5·max(1, |want|) in f32).

use crate::common;

use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::nn::attention::{
    multi_head_self_attention, multi_head_self_attention_reference, scaled_dot_product_attention,
    AttnMask, AttnOptions, MhaWeights,
};
use nabla::{ParamStore, Rng, Tape, Tensor, Var};
use std::collections::BTreeMap;

const TOL: f64 = 1e-6;

fn store(d: usize, rng: &mut Rng, bias: bool) -> ParamStore<f64> {
    let mut s = ParamStore::new();
    let sc = 1.0 / (d as f64).sqrt();
    s.add("qkv.weight", randn(&[3 * d, d], sc, rng)).unwrap();
    if bias {
        s.add("qkv.bias", randn(&[3 * d], 0.5, rng)).unwrap();
    }
    s.add("proj.weight", randn(&[d, d], sc, rng)).unwrap();
    if bias {
        s.add("proj.bias", randn(&[d], 0.5, rng)).unwrap();
    }
    s
}

fn weights<T: nabla::Element>(tape: &mut Tape<T>, s: &ParamStore<T>) -> MhaWeights {
    let get = |tape: &mut Tape<T>, n: &str| s.find(n).map(|id| tape.param(s, id));
    MhaWeights {
        qkv_w: get(tape, "qkv.weight").unwrap(),
        qkv_b: get(tape, "qkv.bias"),
        proj_w: get(tape, "proj.weight").unwrap(),
        proj_b: get(tape, "proj.bias"),
    }
}

fn padding(lens: &[usize], t: usize) -> AttnMask {
    AttnMask::KeyPadding(
        lens.iter()
            .flat_map(|&l| (0..t).map(move |j| j >= l))
            .collect(),
    )
}

/// y and attention weights combined into one output so one projection checks both paths.
fn fused_or_ref(
    tape: &mut Tape<f64>,
    s: &ParamStore<f64>,
    x: Var,
    opts: &AttnOptions,
    reference: bool,
) -> nabla::Result<Var> {
    let w = weights(tape, s);
    let (y, p) = if reference {
        multi_head_self_attention_reference(tape, x, &w, opts)?
    } else {
        multi_head_self_attention(tape, x, &w, opts)?
    };
    match p {
        None => Ok(y),
        Some(p) => {
            let n = tape.value(p).numel();
            let yn = tape.value(y).numel();
            let pf = nabla::ops::reshape(tape, p, &[n])?;
            let yf = nabla::ops::reshape(tape, y, &[yn])?;
            nabla::ops::concat(tape, &[yf, pf], 0)
        }
    }
}

#[test]
fn mhsa_gradcheck_f64_all_variants() {
    let mut rng = Rng::new(7);
    let (b, t, d) = (2, 5, 8);
    for (bias, mask, need) in [
        (true, None, false),
        (true, Some(padding(&[3, 5], t)), true),
        (false, None, true),
        (
            true,
            Some(AttnMask::Shared(
                (0..t * t)
                    .map(|i| (i / t + 2 * (i % t)) % 3 == 1 && i % t != i / t)
                    .collect(),
            )),
            false,
        ),
    ] {
        let s = store(d, &mut rng, bias);
        let x = randn(&[b, t, d], 1.0, &mut rng);
        let opts = AttnOptions {
            heads: 2,
            mask,
            need_weights: need,
        };
        // The key part of qkv.bias has an exactly-zero gradient (softmax is shift-invariant per
        // row), so its numeric value is pure finite-difference noise ~ ε|L|/h ≈ 3e-10: a floor
        // of 1e-3 treats that as zero; entries above the floor are still checked relatively.
        let gc = GradCheckOptions {
            floor: 1e-3,
            ..Default::default()
        };
        let rep = check_gradients(&s, &[x], &gc, |tape, s, v| {
            fused_or_ref(tape, s, v[0], &opts, false)
        })
        .unwrap();
        assert!(
            rep.max_rel_error < TOL,
            "bias={bias} need={need} mask={:?}: {:?}",
            opts.mask,
            rep.per_tensor
        );
    }
}

#[test]
fn mhsa_fused_matches_reference_path() {
    let mut rng = Rng::new(11);
    let (b, t, d) = (3, 7, 12);
    let s = store(d, &mut rng, true);
    let x = randn(&[b, t, d], 1.0, &mut rng);
    for mask in [None, Some(padding(&[7, 4, 1], t))] {
        let opts = AttnOptions {
            heads: 3,
            mask,
            need_weights: true,
        };
        let mut outs = Vec::new();
        for reference in [false, true] {
            let mut tape = Tape::<f64>::new();
            let xv = tape.input(x.clone());
            let out = fused_or_ref(&mut tape, &s, xv, &opts, reference).unwrap();
            let seed = randn(tape.shape(out), 1.0, &mut Rng::new(3));
            let val = tape.value(out).clone();
            tape.backward_with(out, seed).unwrap();
            let mut g = s.clone();
            g.zero_grad();
            tape.accumulate_grads(&mut g).unwrap();
            outs.push((val, tape.grad(xv).unwrap().clone(), g));
        }
        let (a, r) = (&outs[0], &outs[1]);
        assert!(a.0.max_abs_diff(&r.0).unwrap() < 1e-12);
        assert!(a.1.max_abs_diff(&r.1).unwrap() < 1e-12);
        for (pa, pr) in a.2.iter().zip(r.2.iter()) {
            let e = pa.grad.max_abs_diff(&pr.grad).unwrap();
            assert!(e < 1e-12, "{}: {e}", pa.name);
        }
    }
}

/// The one mask polarity (`AttnMask`: `true` = blocked, PyTorch's): on the fused op and on the
/// reference, every blocked (query, key) pair gets probability exactly 0, every row of allowed
/// keys sums to 1, and the two paths agree.
#[test]
fn mask_true_means_blocked_on_both_paths() {
    let mut rng = Rng::new(21);
    let (b, t, d, heads) = (2, 4, 6, 2);
    let s = store(d, &mut rng, true);
    let x = randn(&[b, t, d], 1.0, &mut rng);
    let dense: Vec<bool> = (0..b * t * t)
        .map(|i| (i * 7 + i / 5) % 3 == 0 && i % t != (i / t) % t)
        .collect();
    let shared: Vec<bool> = (0..t * t).map(|i| i % t > i / t).collect(); // causal
    for mask in [
        padding(&[2, 3], t),
        AttnMask::Dense(dense),
        AttnMask::Shared(shared),
    ] {
        let blocked = |bi: usize, i: usize, j: usize| match &mask {
            AttnMask::KeyPadding(m) => m[bi * t + j],
            AttnMask::Dense(m) => m[(bi * t + i) * t + j],
            AttnMask::Shared(m) => m[i * t + j],
        };
        let opts = AttnOptions {
            heads,
            mask: Some(mask.clone()),
            need_weights: true,
        };
        let mut probs = Vec::new();
        for reference in [false, true] {
            let mut tape = Tape::<f64>::no_grad();
            let w = weights(&mut tape, &s);
            let xv = tape.constant(x.clone());
            let (_, p) = if reference {
                multi_head_self_attention_reference(&mut tape, xv, &w, &opts).unwrap()
            } else {
                multi_head_self_attention(&mut tape, xv, &w, &opts).unwrap()
            };
            let p = tape.value(p.unwrap()).clone(); // (B, H, T, T)
            for bi in 0..b {
                for h in 0..heads {
                    for i in 0..t {
                        let row = &p.data()[((bi * heads + h) * t + i) * t..][..t];
                        for (j, &pij) in row.iter().enumerate() {
                            if blocked(bi, i, j) {
                                assert_eq!(pij, 0.0, "{mask:?} ({bi}, {h}, {i}, {j})");
                            } else {
                                assert!(pij > 0.0, "{mask:?} ({bi}, {h}, {i}, {j})");
                            }
                        }
                        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                    }
                }
            }
            probs.push(p);
        }
        assert!(
            probs[0].max_abs_diff(&probs[1]).unwrap() < 1e-12,
            "{mask:?}"
        );
    }
}

#[test]
fn sdpa_gradcheck_f64_cross_and_masked() {
    let mut rng = Rng::new(5);
    let (b, h, tq, tk, dh) = (2, 2, 3, 4, 5);
    let q = randn(&[b, h, tq, dh], 1.0, &mut rng);
    let k = randn(&[b, h, tk, dh], 1.0, &mut rng);
    let v = randn(&[b, h, tk, dh], 1.0, &mut rng);
    let masks = [
        None,
        Some(padding(&[2, 4], tk)),
        Some(AttnMask::Dense(
            (0..b * tq * tk).map(|i| i % 3 == 0).collect(),
        )),
    ];
    for mask in masks {
        let rep = check_gradients(
            &ParamStore::new(),
            &[q.clone(), k.clone(), v.clone()],
            &GradCheckOptions::default(),
            |tape, _, vs| {
                let (o, p) =
                    scaled_dot_product_attention(tape, vs[0], vs[1], vs[2], mask.as_ref(), true)?;
                let p = p.unwrap();
                let (on, pn) = (tape.value(o).numel(), tape.value(p).numel());
                let of = nabla::ops::reshape(tape, o, &[on])?;
                let pf = nabla::ops::reshape(tape, p, &[pn])?;
                nabla::ops::concat(tape, &[of, pf], 0)
            },
        )
        .unwrap();
        assert!(rep.max_rel_error < TOL, "{mask:?}: {:?}", rep.per_tensor);
    }
}

#[test]
fn sdpa_fully_masked_row_is_zero_and_bad_mask_is_error() {
    let q = Tensor::<f64>::ones(&[1, 1, 2, 3]);
    let mut tape = Tape::<f64>::no_grad();
    let (qv, kv, vv) = (
        tape.constant(q.clone()),
        tape.constant(q.clone()),
        tape.constant(q.clone()),
    );
    let m = AttnMask::Dense(vec![true, true, false, true]);
    let (o, p) = scaled_dot_product_attention(&mut tape, qv, kv, vv, Some(&m), true).unwrap();
    assert_eq!(tape.value(p.unwrap()).data(), &[0.0, 0.0, 1.0, 0.0]);
    assert_eq!(tape.value(o).data(), &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let bad = AttnMask::KeyPadding(vec![false; 3]);
    let e = scaled_dot_product_attention(&mut tape, qv, kv, vv, Some(&bad), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mask has 3 entries"), "{e}");
    // Heads not dividing the width.
    let x = tape.constant(Tensor::<f64>::ones(&[1, 2, 6]));
    let w = MhaWeights {
        qkv_w: tape.constant(Tensor::ones(&[18, 6])),
        qkv_b: None,
        proj_w: tape.constant(Tensor::ones(&[6, 6])),
        proj_b: None,
    };
    let opts = AttnOptions {
        heads: 4,
        ..Default::default()
    };
    let e = multi_head_self_attention(&mut tape, x, &w, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not divisible by 4 heads"), "{e}");
}

/// Loads every tensor of a fixture (the bool mask included, as 0/1).
fn load_fixture(path: &std::path::Path) -> BTreeMap<String, (Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::BOOL => d.iter().map(|&b| b as f64).collect(),
            other => panic!("unexpected dtype {other:?}"),
        };
        out.insert(name.to_string(), (view.shape().to_vec(), vals));
    }
    out
}

fn run_fixture<T: nabla::Element>(
    f: &BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    heads: usize,
) -> BTreeMap<&'static str, Tensor<T>> {
    let t = |n: &str| Tensor::<T>::from_f64(&f[n].0, &f[n].1).unwrap();
    let mut s = ParamStore::<T>::new();
    s.add("qkv.weight", t("in_proj_weight")).unwrap();
    s.add("qkv.bias", t("in_proj_bias")).unwrap();
    s.add("proj.weight", t("out_proj.weight")).unwrap();
    s.add("proj.bias", t("out_proj.bias")).unwrap();
    let mask = f
        .get("key_padding_mask")
        .map(|(_, v)| AttnMask::KeyPadding(v.iter().map(|&x| x != 0.0).collect()));
    let mut tape = Tape::<T>::new();
    let x = tape.input(t("x"));
    let w = weights(&mut tape, &s);
    let opts = AttnOptions {
        heads,
        mask,
        need_weights: true,
    };
    let (y, p) = multi_head_self_attention(&mut tape, x, &w, &opts).unwrap();
    let (yv, pv) = (tape.value(y).clone(), tape.value(p.unwrap()).clone());
    tape.backward_with(y, t("dy")).unwrap();
    let mut g = s.clone();
    g.zero_grad();
    tape.accumulate_grads(&mut g).unwrap();
    let mut out = BTreeMap::new();
    out.insert("y", yv);
    out.insert("attn_weights", pv);
    out.insert("dx", tape.grad(x).unwrap().clone());
    out.insert(
        "d_in_proj_weight",
        g.by_name("qkv.weight").unwrap().grad.clone(),
    );
    out.insert(
        "d_in_proj_bias",
        g.by_name("qkv.bias").unwrap().grad.clone(),
    );
    out.insert(
        "d_out_proj.weight",
        g.by_name("proj.weight").unwrap().grad.clone(),
    );
    out.insert(
        "d_out_proj.bias",
        g.by_name("proj.bias").unwrap().grad.clone(),
    );
    out
}

#[test]
fn mhsa_matches_pytorch_fixtures() {
    let Some(dir) = common::shared("fixtures/attention") else {
        return;
    };
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    for case in ["case1.safetensors", "case2.safetensors"] {
        let heads = index[case]["num_heads"].as_u64().unwrap() as usize;
        let f = load_fixture(&dir.join(case));
        let got64 = run_fixture::<f64>(&f, heads);
        let got32 = run_fixture::<f32>(&f, heads);
        for (name, g) in &got64 {
            let (shape, want) = &f[*name];
            assert_eq!(g.shape(), &shape[..], "{case} {name}");
            let e64 = g
                .data()
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(e64 <= 1e-10, "{case} {name}: f64 error {e64:e}");
            let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let e32 = got32[name]
                .data()
                .iter()
                .zip(want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(e32 <= 1e-5 * scale, "{case} {name}: f32 error {e32:e}");
        }
    }
}

/// f32 batches that take the lane-batched core (16 (item, head) problems and more, short
/// sequences: the ViT's shape among them) against the f64 fused op (gradient-checked above):
/// outputs, probabilities and all gradients within 2e-5·max(1, |f64|), with a key-padding
/// mask (one item fully padded: its rows 0), a gradient reaching the probabilities, and a
/// partial last group (5 items · 3 heads = 15 problems).
#[test]
fn mhsa_f32_lane_core_matches_f64() {
    let mut rng = Rng::new(23);
    for (b, t, d, heads, mask) in [
        (8, 17, 64, 4, None),
        (5, 6, 12, 3, Some(padding(&[6, 0, 3, 1, 5], 6))),
        (3, 9, 16, 8, Some(padding(&[9, 4, 2], 9))),
    ] {
        let s64 = store(d, &mut rng, true);
        let x64 = randn(&[b, t, d], 1.0, &mut rng);
        let opts = AttnOptions {
            heads,
            mask,
            need_weights: true,
        };
        let seed = randn(&[b * t * d + b * heads * t * t], 1.0, &mut Rng::new(4));
        fn run<T: nabla::Element>(
            s: &ParamStore<T>,
            x: &Tensor<T>,
            seed: &Tensor<T>,
            opts: &AttnOptions,
        ) -> Vec<Vec<f64>> {
            let mut tape = Tape::<T>::new();
            let xv = tape.input(x.clone());
            let w = weights(&mut tape, s);
            let (y, p) = multi_head_self_attention(&mut tape, xv, &w, opts).unwrap();
            let p = p.unwrap();
            let (yn, pn) = (tape.value(y).numel(), tape.value(p).numel());
            let yf = nabla::ops::reshape(&mut tape, y, &[yn]).unwrap();
            let pf = nabla::ops::reshape(&mut tape, p, &[pn]).unwrap();
            let out = nabla::ops::concat(&mut tape, &[yf, pf], 0).unwrap();
            let val = tape.value(out).clone();
            tape.backward_with(out, seed.clone()).unwrap();
            let mut g = s.clone();
            g.zero_grad();
            tape.accumulate_grads(&mut g).unwrap();
            let f = |t: &Tensor<T>| t.data().iter().map(|v| v.as_f64()).collect::<Vec<_>>();
            let mut r = vec![f(&val), f(tape.grad(xv).unwrap())];
            r.extend(g.iter().map(|p| f(&p.grad)));
            r
        }
        let want = run(&s64, &x64, &seed, &opts);
        let got = run(
            &s64.cast::<f32>(),
            &x64.cast::<f32>(),
            &seed.cast::<f32>(),
            &opts,
        );
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs()));
            let e = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(e <= 2e-5 * scale, "({b},{t},{d},{heads}) output {k}: {e:e}");
        }
        if let Some(AttnMask::KeyPadding(m)) = &opts.mask {
            // An item with every key padded: outputs = the projection bias, probabilities 0.
            if let Some(bi) = (0..b).find(|&bi| m[bi * t..(bi + 1) * t].iter().all(|&x| x)) {
                let p0 = b * t * d + bi * heads * t * t;
                assert!(got[0][p0..p0 + heads * t * t].iter().all(|&x| x == 0.0));
            }
        }
    }
}

/// The gradient checks, fused-vs-reference and PyTorch fixtures again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "mhsa_gradcheck_f64_all_variants",
            "mhsa_fused_matches_reference_path",
            "sdpa_gradcheck_f64_cross_and_masked",
            "sdpa_fully_masked_row_is_zero_and_bad_mask_is_error",
            "mhsa_matches_pytorch_fixtures",
            "mhsa_f32_lane_core_matches_f64",
        ],
    );
}
