//! ViT: f64 gradient checks of every block and of the whole model (rel. error < 1e-6), fused
//! vs reference paths, timm fixtures (logits ≤ 1e-4 in f32, ≤ 1e-9 in f64; attention ≤ 1e-9),
//! checkpoint round trip and bad-input errors.

use crate::common;

use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::models::vit::{param_shapes, ForwardOptions, Pool, Vit, VitConfig};
use nabla::nn::mlp::{mlp, mlp_reference, MlpWeights};
use nabla::nn::norm::layer_norm;
use nabla::nn::patch_embed::{patch_embed, EmbedWeights};
use nabla::nn::Module;
use nabla::{ops, ParamStore, Rng, Tape, Tensor, TensorView};

const TOL: f64 = 1e-6;

fn assert_ok(r: nabla::gradcheck::GradCheckReport, what: &str) {
    assert!(
        r.max_rel_error < TOL,
        "{what}: max relative error {:.3e} (worst {}) {:?}",
        r.max_rel_error,
        r.worst(),
        r.per_tensor
    );
}

fn tiny_cfg(pool: Pool) -> VitConfig {
    VitConfig {
        image_size: 8,
        patch: 4,
        in_chans: 2,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp_dim: 12,
        num_classes: 3,
        pool,
        eps: 1e-6,
        dropout: 0.0,
    }
}

/// A model whose every parameter is perturbed (so LayerNorm weights, biases, cls are non-trivial).
fn perturbed(cfg: VitConfig, seed: u64) -> (Vit, ParamStore<f64>) {
    let mut store = ParamStore::<f64>::new();
    Vit::init(cfg.clone(), &mut store, seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    for p in store.iter_mut() {
        let s = p.value.shape().to_vec();
        p.value.axpy(0.3, &randn(&s, 1.0, &mut rng)).unwrap();
    }
    let vit = Vit::bind(cfg, &store).unwrap();
    (vit, store)
}

#[test]
fn grad_layer_norm_f64() {
    let mut rng = Rng::new(1);
    let mut s = ParamStore::new();
    s.add("w", randn(&[6], 1.0, &mut rng).map(|v| v + 1.0))
        .unwrap();
    s.add("b", randn(&[6], 1.0, &mut rng)).unwrap();
    let x = randn(&[3, 4, 6], 2.0, &mut rng);
    let rep = check_gradients(&s, &[x], &GradCheckOptions::default(), |t, s, v| {
        let (w, b) = (
            t.param(s, s.find("w").unwrap()),
            t.param(s, s.find("b").unwrap()),
        );
        layer_norm(t, v[0], 1, Some(w), Some(b), 1e-6, None)
    })
    .unwrap();
    assert_ok(rep, "layer_norm");
    // Against the definition: zero mean, unit variance rows with unit weight.
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(Tensor::from_f64(&[1, 4], &[1.0, 2.0, 3.0, 6.0]).unwrap());
    let w = tape.constant(Tensor::ones(&[4]));
    let b = tape.constant(Tensor::zeros(&[4]));
    let y = layer_norm(&mut tape, xv, 1, Some(w), Some(b), 0.0, None).unwrap();
    let m: f64 = tape.value(y).data().iter().sum();
    let var: f64 = tape.value(y).data().iter().map(|v| v * v).sum::<f64>() / 4.0;
    assert!(
        m.abs() < 1e-12 && (var - 1.0).abs() < 1e-12,
        "mean {m} var {var}"
    );
}

#[test]
fn grad_mlp_f64_and_matches_reference() {
    let mut rng = Rng::new(2);
    let mut s = ParamStore::new();
    s.add("fc1.weight", randn(&[7, 5], 0.5, &mut rng)).unwrap();
    s.add("fc1.bias", randn(&[7], 0.5, &mut rng)).unwrap();
    s.add("fc2.weight", randn(&[5, 7], 0.5, &mut rng)).unwrap();
    s.add("fc2.bias", randn(&[5], 0.5, &mut rng)).unwrap();
    let x = randn(&[2, 3, 5], 1.0, &mut rng);
    let w = |t: &mut Tape<f64>, s: &ParamStore<f64>| MlpWeights {
        fc1_w: t.param(s, s.find("fc1.weight").unwrap()),
        fc1_b: t.param(s, s.find("fc1.bias").unwrap()),
        fc2_w: t.param(s, s.find("fc2.weight").unwrap()),
        fc2_b: t.param(s, s.find("fc2.bias").unwrap()),
    };
    let rep = check_gradients(
        &s,
        std::slice::from_ref(&x),
        &GradCheckOptions::default(),
        |t, s, v| {
            let ww = w(t, s);
            mlp(t, v[0], &ww)
        },
    )
    .unwrap();
    assert_ok(rep, "mlp");
    let mut res = Vec::new();
    for reference in [false, true] {
        let mut t = Tape::<f64>::new();
        let xv = t.input(x.clone());
        let ww = w(&mut t, &s);
        let y = if reference {
            mlp_reference(&mut t, xv, &ww).unwrap()
        } else {
            mlp(&mut t, xv, &ww).unwrap()
        };
        let seed = randn(t.shape(y), 1.0, &mut Rng::new(9));
        let val = t.value(y).clone();
        t.backward_with(y, seed).unwrap();
        let mut g = s.clone();
        g.zero_grad();
        t.accumulate_grads(&mut g).unwrap();
        res.push((val, t.grad(xv).unwrap().clone(), g));
    }
    assert!(res[0].0.max_abs_diff(&res[1].0).unwrap() < 1e-12);
    assert!(res[0].1.max_abs_diff(&res[1].1).unwrap() < 1e-12);
    for (a, b) in res[0].2.iter().zip(res[1].2.iter()) {
        assert!(a.grad.max_abs_diff(&b.grad).unwrap() < 1e-12, "{}", a.name);
    }
}

#[test]
fn grad_patch_embed_f64() {
    let mut rng = Rng::new(3);
    let mut s = ParamStore::new();
    s.add("w", randn(&[4, 2, 3, 3], 0.5, &mut rng)).unwrap();
    s.add("b", randn(&[4], 0.5, &mut rng)).unwrap();
    s.add("cls", randn(&[1, 1, 4], 0.5, &mut rng)).unwrap();
    s.add("pos", randn(&[1, 1 + 4, 4], 0.5, &mut rng)).unwrap();
    let x = randn(&[2, 2, 6, 6], 1.0, &mut rng);
    let rep = check_gradients(
        &s,
        std::slice::from_ref(&x),
        &GradCheckOptions::default(),
        |t, s, v| {
            let g = |t: &mut Tape<f64>, n: &str| t.param(s, s.find(n).unwrap());
            let w = EmbedWeights {
                proj_w: g(t, "w"),
                proj_b: g(t, "b"),
                cls: Some(g(t, "cls")),
                pos: g(t, "pos"),
            };
            patch_embed(t, v[0], &w)
        },
    )
    .unwrap();
    assert_ok(rep, "patch_embed");
    // Against a direct convolution sum for one output entry: item 1, patch (1, 0), channel 2.
    let mut t = Tape::<f64>::no_grad();
    let xv = t.constant(x.clone());
    let g = |t: &mut Tape<f64>, n: &str| t.param(&s, s.find(n).unwrap());
    let w = EmbedWeights {
        proj_w: g(&mut t, "w"),
        proj_b: g(&mut t, "b"),
        cls: Some(g(&mut t, "cls")),
        pos: g(&mut t, "pos"),
    };
    let z = patch_embed(&mut t, xv, &w).unwrap();
    let (wt, xd) = (s.by_name("w").unwrap().value.data(), x.data());
    let mut want =
        s.by_name("b").unwrap().value.data()[2] + s.by_name("pos").unwrap().value.data()[3 * 4 + 2];
    for c in 0..2 {
        for i in 0..3 {
            for j in 0..3 {
                want += wt[((2 * 2 + c) * 3 + i) * 3 + j] * xd[((2 + c) * 6 + 3 + i) * 6 + j];
            }
        }
    }
    // token 1 + r·grid + c = 1 + 1·2 + 0 = 3
    let got = t.value(z).data()[(5 + 3) * 4 + 2];
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn grad_one_block_and_whole_model_f64() {
    for pool in [Pool::Cls, Pool::Avg] {
        let cfg = tiny_cfg(pool);
        let (vit, store) = perturbed(cfg.clone(), 11);
        let x = randn(&[2, 2, 8, 8], 1.0, &mut Rng::new(4));
        let opts = GradCheckOptions {
            max_entries: 40,
            ..Default::default()
        };
        // Whole model, through the cross-entropy loss (label smoothing on).
        let rep = check_gradients(&store, std::slice::from_ref(&x), &opts, |t, s, v| {
            let out = vit.forward(t, s, v[0], ForwardOptions::default())?;
            ops::cross_entropy(
                t,
                out.logits,
                &[2, 0],
                &ops::CrossEntropyOptions {
                    label_smoothing: 0.1,
                    ..Default::default()
                },
            )
        })
        .unwrap();
        assert_ok(rep, &format!("whole model {pool:?}"));
    }
    // One block (depth 1) on its token output, every entry checked.
    let cfg = VitConfig {
        depth: 1,
        ..tiny_cfg(Pool::Cls)
    };
    let (vit, store) = perturbed(cfg, 12);
    let x = randn(&[2, 2, 8, 8], 1.0, &mut Rng::new(5));
    // The key part of attn.qkv.bias has an exactly-zero gradient (softmax shift invariance):
    // its finite difference is noise ~3e-10, so a floor of 1e-3 treats it as zero.
    let gc = GradCheckOptions {
        floor: 1e-3,
        ..Default::default()
    };
    let rep = check_gradients(&store, &[x], &gc, |t, s, v| {
        let mut o = ForwardOptions {
            need_attn: true,
            ..Default::default()
        };
        let (z, attn) = vit.forward_blocks(t, s, v[0], &mut o)?;
        // Both the block output and its attention probabilities carry gradient.
        let (zn, an) = (t.value(z).numel(), t.value(attn[0]).numel());
        let zf = ops::reshape(t, z, &[zn])?;
        let af = ops::reshape(t, attn[0], &[an])?;
        ops::concat(t, &[zf, af], 0)
    })
    .unwrap();
    // The head/norm parameters do not reach the block output: their gradient is 0 both ways.
    assert_ok(rep, "one block");
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let cfg = VitConfig {
        dropout: 0.3,
        ..tiny_cfg(Pool::Cls)
    };
    let mut store = ParamStore::<f32>::new();
    let vit = Vit::init(cfg, &mut store, 3).unwrap();
    let x = Tensor::<f32>::from_fn(&[2, 2, 8, 8], |i| (i as f32 * 0.37).sin());
    let run = |train: bool, seed: u64| {
        let mut t = Tape::<f32>::no_grad();
        let xv = t.constant(x.clone());
        let mut rng = Rng::new(seed);
        let o = vit
            .forward(
                &mut t,
                &store,
                xv,
                ForwardOptions {
                    train,
                    rng: Some(&mut rng),
                    need_attn: false,
                },
            )
            .unwrap();
        t.value(o.logits).clone()
    };
    assert_eq!(run(true, 1), run(true, 1));
    assert_ne!(run(true, 1), run(true, 2));
    assert_eq!(run(false, 1), run(false, 2));
    assert_eq!(run(false, 1), vit.predict(&store, &x).unwrap());
}

/// `predict_view` and `attention_view` (the patch embedding on the borrowed slice, only the
/// tokens on the tape) give the bits of the tape path with the images as a constant; on a
/// recording tape `forward_view` keeps a copy and gives the same parameter gradients.
#[test]
fn predict_and_attention_views_read_the_images_in_place_with_the_same_bits() {
    let bits = |t: &Tensor<f64>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<u64>>();
    for pool in [Pool::Cls, Pool::Avg] {
        let (vit, store) = perturbed(tiny_cfg(pool), 21);
        // The images in the middle of a larger buffer: memory no tensor owns.
        let shape = [3, 2, 8, 8];
        let n: usize = shape.iter().product();
        let buf = randn(&[3 * n], 1.0, &mut Rng::new(22));
        let x = TensorView::new(&shape, &buf.data()[n..2 * n]).unwrap();
        let mut tape = Tape::<f64>::no_grad();
        let xv = tape.constant(x.to_tensor());
        let opts = ForwardOptions {
            need_attn: true,
            ..Default::default()
        };
        let out = vit.forward(&mut tape, &store, xv, opts).unwrap();
        let attn = vit.attention_view(&store, x).unwrap();
        assert_eq!(attn.len(), out.attn.len());
        for (got, &want) in attn.iter().zip(&out.attn) {
            assert_eq!(bits(got), bits(tape.value(want)));
        }
        let want = tape.value(out.logits);
        assert_eq!(bits(&vit.predict_view(&store, x).unwrap()), bits(want));
        assert_eq!(
            bits(&vit.predict(&store, &x.to_tensor()).unwrap()),
            bits(want)
        );
        // The checks are predict's.
        let bad = TensorView::new(&[1, 2, 4, 4], &buf.data()[..32]).unwrap();
        let e = vit.predict_view(&store, bad).unwrap_err().to_string();
        assert!(e.contains("4x4") && e.contains("8x8"), "{e}");
        // A recording tape: the same loss and parameter gradients as with the images on it.
        let grads = |view: bool| {
            let mut tape = Tape::<f64>::new();
            let out = if view {
                vit.forward_view(&mut tape, &store, x, ForwardOptions::default())
            } else {
                let xv = tape.constant(x.to_tensor());
                vit.forward(&mut tape, &store, xv, ForwardOptions::default())
            }
            .unwrap();
            let loss =
                ops::cross_entropy(&mut tape, out.logits, &[0, 2, 1], &Default::default()).unwrap();
            tape.backward(loss).unwrap();
            let g: Vec<_> = tape.take_param_grads();
            assert_eq!(g.len(), store.iter().count());
            g.iter().map(|(_, t)| bits(t)).collect::<Vec<_>>()
        };
        assert_eq!(grads(true), grads(false));
    }
}

fn fixture_dir() -> Option<std::path::PathBuf> {
    common::shared("fixtures/vit/model1")
}

#[test]
fn timm_fixture_logits_attention_and_features() {
    let Some(dir) = fixture_dir() else { return };
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let heads = exp["config"]["num_heads"].as_u64().unwrap() as usize;
    let to_vec = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .flat_map(|r| match r.as_array() {
                Some(a) => a
                    .iter()
                    .flat_map(|x| match x.as_array() {
                        Some(b) => b.iter().map(|y| y.as_f64().unwrap()).collect::<Vec<_>>(),
                        None => vec![x.as_f64().unwrap()],
                    })
                    .collect::<Vec<_>>(),
                None => vec![r.as_f64().unwrap()],
            })
            .collect()
    };
    // f32, as nabla trains.
    let w32 = nabla::io::load_safetensors::<f32>(dir.join("model.safetensors")).unwrap();
    let cfg = Vit::infer_config(&w32, heads, Pool::Cls).unwrap();
    assert_eq!(
        (cfg.image_size, cfg.patch, cfg.dim, cfg.depth, cfg.mlp_dim),
        (28, 7, 32, 2, 64)
    );
    let (vit, store) = Vit::from_tensors(&w32, cfg.clone()).unwrap();
    let x32 =
        nabla::io::load_safetensors::<f32>(dir.join("input.safetensors")).unwrap()["x"].clone();
    let logits = vit.predict(&store, &x32).unwrap();
    let want = to_vec(&exp["logits"]);
    let e32 = logits
        .data()
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(e32 <= 1e-4, "f32 logits error {e32:e}");
    // f64 with the same stored weights.
    let w64 = nabla::io::load_safetensors::<f64>(dir.join("model.safetensors")).unwrap();
    let (vit, store) = Vit::from_tensors(&w64, cfg).unwrap();
    let x64: Tensor<f64> = x32.cast();
    let mut tape = Tape::<f64>::no_grad();
    let xv = tape.constant(x64);
    let mut o = ForwardOptions {
        need_attn: true,
        ..Default::default()
    };
    let (z, attn) = vit.forward_blocks(&mut tape, &store, xv, &mut o).unwrap();
    let pre = vit.pre_logits(&mut tape, &store, z).unwrap();
    let out = vit
        .forward(&mut tape, &store, xv, ForwardOptions::default())
        .unwrap();
    let want64 = to_vec(&exp["logits_f64"]);
    let e64 = tape
        .value(out.logits)
        .data()
        .iter()
        .zip(&want64)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(e64 <= 1e-9, "f64 logits error {e64:e}");
    let want_pre = to_vec(&exp["pre_logits"]);
    let ep = tape
        .value(pre)
        .data()
        .iter()
        .zip(&want_pre)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(ep <= 1e-9, "pre_logits error {ep:e}");
    // Block-0 attention of item 0: (heads, 17, 17).
    let want_attn = to_vec(&exp["attn_block0_item0"]);
    let a0 = &tape.value(attn[0]).data()[..heads * 17 * 17];
    assert_eq!(a0.len(), want_attn.len());
    let ea = a0
        .iter()
        .zip(&want_attn)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(ea <= 1e-9, "attention error {ea:e}");
    // forward_features (un-normalized tokens for token pooling go through norm in timm): check
    // the shape and that the final norm over all tokens has timm's mean/std.
    let ff = &exp["forward_features"];
    let zs = tape.shape(z).to_vec();
    assert_eq!(zs, vec![3, 17, 32], "{ff}");
    let (g, b) = (
        tape.param(&store, store.find("norm.weight").unwrap()),
        tape.param(&store, store.find("norm.bias").unwrap()),
    );
    let zn = layer_norm(&mut tape, z, 1, Some(g), Some(b), 1e-6, None).unwrap();
    let d = tape.value(zn).data();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let std = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
    assert!(
        (mean - ff["mean"].as_f64().unwrap()).abs() < 1e-9,
        "{mean} {ff}"
    );
    assert!(
        (std - ff["std"].as_f64().unwrap()).abs() < 1e-9,
        "{std} {ff}"
    );
}

#[test]
fn checkpoint_round_trip_and_bad_inputs() {
    let cfg = tiny_cfg(Pool::Avg);
    let mut store = ParamStore::<f32>::new();
    let vit = Vit::init(cfg.clone(), &mut store, 1).unwrap();
    // Names follow timm: avg pooling has fc_norm and no norm.
    let names: Vec<String> = param_shapes(&cfg)
        .unwrap()
        .into_iter()
        .map(|p| p.0)
        .collect();
    // The composition gives the names: the module tree's parameters, in order, are the store's.
    let named: Vec<String> = Module::named_params(&vit, &store)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let stored: Vec<String> = store.iter().map(|p| p.name.clone()).collect();
    assert_eq!(named, names);
    assert_eq!(stored, names);
    assert_eq!(
        names[..4],
        [
            "cls_token",
            "pos_embed",
            "patch_embed.proj.weight",
            "patch_embed.proj.bias"
        ]
    );
    assert!(
        names.contains(&"blocks.1.attn.qkv.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"fc_norm.weight".to_string())
            && !names.contains(&"norm.weight".to_string())
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    store.save(&p, None).unwrap();
    let t = nabla::io::load_safetensors::<f32>(&p).unwrap();
    let cfg2 = Vit::infer_config(&t, 2, Pool::Avg).unwrap();
    assert_eq!(cfg2, cfg);
    assert!(Vit::infer_config(&t, 2, Pool::Cls)
        .unwrap_err()
        .to_string()
        .contains("norm.weight"));
    assert!(Vit::infer_config(&t, 3, Pool::Avg)
        .unwrap_err()
        .to_string()
        .contains("divisible"));
    // Flags that don't fit the checkpoint's shapes.
    let wrong = VitConfig {
        mlp_dim: 16,
        ..cfg.clone()
    };
    let e = Vit::from_tensors(&t, wrong).unwrap_err().to_string();
    assert!(e.contains("mlp.fc1.weight") && e.contains("[12, 8]"), "{e}");
    // Image size not divisible by the patch size.
    let bad = VitConfig {
        image_size: 10,
        ..cfg.clone()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("not divisible by the patch size"));
    // Channel mismatch and wrong image size at forward time.
    let x = Tensor::<f32>::zeros(&[1, 3, 8, 8]);
    let e = vit.predict(&store, &x).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    let x = Tensor::<f32>::zeros(&[1, 2, 12, 12]);
    let e = vit.predict(&store, &x).unwrap_err().to_string();
    assert!(e.contains("12x12"), "{e}");
}

/// Whole-batch gradients of the mean cross-entropy on one tape (the reference for the
/// micro-batched step).
fn whole_batch_grads(
    vit: &Vit,
    store: &ParamStore<f64>,
    x: &Tensor<f64>,
    y: &[usize],
) -> (f64, Vec<Tensor<f64>>) {
    let mut s = store.clone();
    s.zero_grad();
    let mut t = Tape::<f64>::new();
    let xv = t.constant(x.clone());
    let out = vit
        .forward(&mut t, &s, xv, ForwardOptions::default())
        .unwrap();
    let ce = ops::CrossEntropyOptions {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let loss = ops::cross_entropy(&mut t, out.logits, y, &ce).unwrap();
    t.backward(loss).unwrap();
    t.accumulate_grads(&mut s).unwrap();
    let l = t.value(loss).item();
    (l, s.iter().map(|p| p.grad.clone()).collect())
}

#[test]
fn micro_batched_step_equals_the_whole_batch_and_ignores_thread_count() {
    // 70 images = micro-batches of 32, 32 and 6: unequal shares must weigh in by size.
    let cfg = tiny_cfg(Pool::Cls);
    let (vit, store) = perturbed(cfg.clone(), 21);
    let n = 70;
    assert!(n > 2 * nabla::models::vit::MICRO_BATCH);
    let x = randn(&[n, 2, 8, 8], 1.0, &mut Rng::new(6));
    let y: Vec<usize> = (0..n).map(|i| (i * 7 + 1) % 3).collect();
    let (want_loss, want) = whole_batch_grads(&vit, &store, &x, &y);
    let mut s = store.clone();
    s.zero_grad();
    let st = vit.loss_and_grads(&mut s, &x, &y, 0.1, None).unwrap();
    assert!(
        (st.loss - want_loss).abs() < 1e-12 * want_loss.abs(),
        "loss {} vs {want_loss}",
        st.loss
    );
    for (p, w) in s.iter().zip(&want) {
        let scale = w.data().iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (a, b) in p.grad.data().iter().zip(w.data()) {
            assert!((a - b).abs() < 1e-12 * scale, "{}: {a} vs {b}", p.name);
        }
    }
    // The correct count is the arg-max count of the whole batch's logits.
    let logits = vit.predict(&store, &x).unwrap();
    let correct = logits
        .data()
        .chunks(3)
        .zip(&y)
        .filter(|(r, &t)| (0..3).max_by(|&i, &j| r[i].total_cmp(&r[j])) == Some(t))
        .count();
    assert_eq!(st.correct, correct);
    // Gradients accumulate like Tape::accumulate_grads.
    vit.loss_and_grads(&mut s, &x, &y, 0.1, None).unwrap();
    for (p, w) in s.iter().zip(&want) {
        for (a, b) in p.grad.data().iter().zip(w.data()) {
            assert!((a - 2.0 * b).abs() < 1e-12 * (1.0 + b.abs()), "{}", p.name);
        }
    }
    // f32, with dropout: the same bits on 1 and 3 threads, and from the same rng seed.
    let cfg = VitConfig {
        dropout: 0.2,
        ..cfg
    };
    let mut s32 = ParamStore::<f32>::new();
    let vit = Vit::init(cfg, &mut s32, 8).unwrap();
    let x32 = x.cast::<f32>();
    let grads = |threads: usize, seed: u64| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut s = s32.clone();
        let st = pool.install(|| {
            vit.loss_and_grads(&mut s, &x32, &y, 0.0, Some(&mut Rng::new(seed)))
                .unwrap()
        });
        let g: Vec<Vec<f32>> = s.iter().map(|p| p.grad.data().to_vec()).collect();
        (st.loss.to_bits(), g)
    };
    let one = grads(1, 5);
    assert_eq!(one, grads(3, 5));
    assert_ne!(one, grads(1, 6), "dropout draws must follow the seed");
}

#[test]
fn micro_batched_step_rejects_bad_shapes() {
    let cfg = tiny_cfg(Pool::Cls);
    let mut s = ParamStore::<f32>::new();
    let vit = Vit::init(cfg, &mut s, 1).unwrap();
    let x = Tensor::<f32>::zeros(&[4, 2, 8, 8]);
    let e = vit
        .loss_and_grads(&mut s, &x, &[0, 1, 2], 0.0, None)
        .unwrap_err();
    assert!(e.to_string().contains("3 targets for a batch of 4"), "{e}");
    let flat = Tensor::<f32>::zeros(&[4, 128]);
    let e = vit
        .loss_and_grads(&mut s, &flat, &[0; 4], 0.0, None)
        .unwrap_err();
    assert!(e.to_string().contains("(B, C, H, W)"), "{e}");
    let wrong = Tensor::<f32>::zeros(&[4, 3, 8, 8]);
    assert!(vit
        .loss_and_grads(&mut s, &wrong, &[0; 4], 0.0, None)
        .is_err());
}

/// The gradient checks, timm fixtures and the micro-batch equality again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &[
            "grad_layer_norm_f64",
            "grad_mlp_f64_and_matches_reference",
            "grad_patch_embed_f64",
            "grad_one_block_and_whole_model_f64",
            "timm_fixture_logits_attention_and_features",
            "micro_batched_step_equals_the_whole_batch_and_ignores_thread_count",
        ],
    );
}

/// The parameter count the memory estimate uses is the count of the model built.
#[test]
fn num_params_counts_the_built_model() {
    for pool in [Pool::Cls, Pool::Avg] {
        let cfg = tiny_cfg(pool);
        let mut store = ParamStore::<f32>::new();
        Vit::init(cfg.clone(), &mut store, 0).unwrap();
        assert_eq!(cfg.num_params(), store.num_elements() as f64);
        let shapes: usize = param_shapes(&cfg)
            .unwrap()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(shapes, store.num_elements());
    }
}
