//! The timm-compatible ResNet: logits equal to timm's on ../shared/fixtures/resnet (f32 to
//! 1e-4 × max |logit|, f64 to 1e-9), parameter names and counts as timm's (ResNet-18/50),
//! the architecture inferred back from a state dict, an f64 gradient check of a whole small
//! network in training mode, FLOPs by hand, and bad checkpoints / inputs as errors.

use crate::common;

use nabla::gradcheck::{check_gradients, randn, GradCheckOptions};
use nabla::models::resnet::{BlockKind, Resnet, ResnetConfig, Stem};
use nabla::nn::{Ctx, Module};
use nabla::{ops, ParamStore, Rng, Tape, Tensor, TensorView};
use std::collections::BTreeMap;

fn cfg(block: BlockKind, layers: &[usize], channels: &[usize], stem: Stem) -> ResnetConfig {
    ResnetConfig {
        block,
        layers: layers.to_vec(),
        channels: channels.to_vec(),
        stem_width: 4,
        stem,
        in_chans: 2,
        num_classes: 3,
    }
}

/// Parameters and buffers of a network, as a state dict.
fn state_dict<T: nabla::Element>(
    net: &Resnet<T>,
    store: &ParamStore<T>,
) -> BTreeMap<String, Tensor<T>> {
    let mut m: BTreeMap<String, Tensor<T>> = store
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect();
    m.extend(net.buffers());
    m
}

#[test]
fn logits_match_timm_fixtures() {
    let Some(dir) = common::shared("fixtures/resnet") else {
        return;
    };
    let mut checked = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let d = e.path();
        if !d.join("expected.json").is_file() {
            continue;
        }
        let exp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("expected.json")).unwrap()).unwrap();
        let rows = |k: &str| -> Vec<f64> {
            exp[k]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
                .collect()
        };
        let tensors = nabla::io::load_safetensors::<f32>(d.join("model.safetensors")).unwrap();
        let cfg = Resnet::infer_config(&tensors).unwrap();
        let c = &exp["config"];
        assert_eq!(serde_json::json!(cfg.layers), c["layers"], "{d:?}");
        assert_eq!(
            cfg.num_params().unwrap() as u64,
            exp["num_params"].as_u64().unwrap()
        );
        let x =
            nabla::io::load_safetensors::<f32>(d.join("input.safetensors")).unwrap()["x"].clone();
        // f32, the tolerance the fixture states.
        let (net, store) = Resnet::from_tensors(&tensors, cfg.clone()).unwrap();
        let got = net.predict(&store, &x).unwrap();
        let want = rows("logits");
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let err = got
            .data()
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{d:?}: f32 max |Δ| {err} (scale {scale})"
        );
        // f64: the same weights against timm in float64.
        let t64 = nabla::io::load_safetensors::<f64>(d.join("model.safetensors")).unwrap();
        let (net, store) = Resnet::from_tensors(&t64, cfg).unwrap();
        let got = net.predict(&store, &x.cast::<f64>()).unwrap();
        let want = rows("logits_float64");
        let err = got
            .data()
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-9 * scale.max(1.0), "{d:?}: f64 max |Δ| {err}");
        checked += 1;
    }
    assert!(checked > 0, "no fixture in {dir:?}");
}

/// timm's state-dict names, and the parameter counts of timm's resnet18 and resnet50.
#[test]
fn names_and_counts_are_timms() {
    let r18 = ResnetConfig {
        block: BlockKind::Basic,
        layers: vec![2, 2, 2, 2],
        channels: vec![64, 128, 256, 512],
        stem_width: 64,
        stem: Stem::Default,
        in_chans: 3,
        num_classes: 1000,
    };
    assert_eq!(r18.num_params().unwrap(), 11_689_512);
    let r50 = ResnetConfig {
        block: BlockKind::Bottleneck,
        layers: vec![3, 4, 6, 3],
        ..r18
    };
    assert_eq!(r50.num_params().unwrap(), 25_557_032);
    let mut store = ParamStore::<f32>::new();
    let net = Resnet::init(
        cfg(BlockKind::Basic, &[1, 1], &[4, 8], Stem::Small),
        &mut store,
        0,
    )
    .unwrap();
    let names: Vec<String> = state_dict(&net, &store).into_keys().collect();
    for want in [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv1.weight",
        "layer1.0.bn2.running_var",
        "layer2.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight",
        "layer2.0.downsample.1.running_mean",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
    // zero_init_last: each block's last BatchNorm starts at 0.
    let w = &store.by_name("layer2.0.bn2.weight").unwrap().value;
    assert!(w.data().iter().all(|&v| v == 0.0));
}

#[test]
fn architecture_is_inferred_from_a_state_dict() {
    for c in [
        cfg(BlockKind::Basic, &[2, 1, 3], &[4, 6, 8], Stem::Small),
        cfg(BlockKind::Bottleneck, &[1, 2], &[3, 5], Stem::Default),
    ] {
        let mut store = ParamStore::<f32>::new();
        let net = Resnet::init(c.clone(), &mut store, 1).unwrap();
        let sd = state_dict(&net, &store);
        assert_eq!(Resnet::infer_config(&sd).unwrap(), c);
        // Loaded back: the same logits, running statistics included.
        let x = randn(&[2, 2, 16, 16], 1.0, &mut Rng::new(2)).cast::<f32>();
        let mut tape = nabla::Tape::<f32>::new();
        let xv = tape.constant(x.clone());
        // One training-mode forward moves the running statistics away from 0 / 1.
        net.forward(
            &mut tape,
            &store,
            xv,
            &mut Ctx {
                train: true,
                rng: None,
            },
        )
        .unwrap();
        let sd = state_dict(&net, &store);
        let (net2, store2) = Resnet::from_tensors(&sd, c).unwrap();
        assert_eq!(
            net.predict(&store, &x).unwrap(),
            net2.predict(&store2, &x).unwrap()
        );
    }
}

/// The bits of a tensor (`==` on floats would take -0 for 0).
fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

/// `predict_view` (conv1 on the borrowed slice, only its output on the tape) gives the bits of
/// the tape path with the images as a constant, for both stems; on a recording tape
/// `Conv2d::forward_view` keeps a copy of the images and gives the same parameter gradients.
#[test]
fn predict_view_reads_the_images_in_place_with_the_same_bits() {
    for c in [
        cfg(BlockKind::Basic, &[1, 1], &[3, 4], Stem::Small),
        cfg(BlockKind::Bottleneck, &[1], &[2], Stem::Default),
    ] {
        let mut store = ParamStore::<f32>::new();
        let net = Resnet::init(c, &mut store, 5).unwrap();
        // The images in the middle of a larger buffer: memory no tensor owns.
        let shape = [2, 2, 12, 12];
        let n: usize = shape.iter().product();
        let buf = randn(&[3 * n], 1.0, &mut Rng::new(6)).cast::<f32>();
        let x = TensorView::new(&shape, &buf.data()[n..2 * n]).unwrap();
        let mut tape = Tape::<f32>::no_grad();
        let xv = tape.constant(x.to_tensor());
        let out = net.logits(&mut tape, &store, xv, &mut Ctx::eval()).unwrap();
        let want = tape.value(out).clone();
        assert!(want.data().iter().any(|&v| v != 0.0));
        assert_eq!(bits(&net.predict_view(&store, x).unwrap()), bits(&want));
        assert_eq!(
            bits(&net.predict(&store, &x.to_tensor()).unwrap()),
            bits(&want)
        );
        // The checks are predict's.
        let bad = TensorView::new(&[1, 4, 12, 12], &buf.data()[..576]).unwrap();
        let e = net.predict_view(&store, bad).unwrap_err().to_string();
        assert!(e.contains("4 channels") && e.contains("expects 2"), "{e}");
        // A recording tape: conv1's weight gradient reads the images, so they are copied.
        let grads = |view: bool| {
            let mut tape = Tape::<f32>::new();
            let y = if view {
                net.conv1.forward_view(&mut tape, &store, x)
            } else {
                let xv = tape.constant(x.to_tensor());
                net.conv1.forward(&mut tape, &store, xv, &mut Ctx::eval())
            }
            .unwrap();
            let loss = ops::sum_all(&mut tape, y).unwrap();
            tape.backward(loss).unwrap();
            let g = tape.take_param_grads();
            assert_eq!(g.len(), 1, "conv1 has one weight and no bias");
            bits(&g[0].1)
        };
        assert_eq!(grads(true), grads(false));
    }
}

/// The whole network in training mode (BatchNorm on batch statistics) against central
/// differences in f64, for both block types and both stems.
#[test]
fn whole_network_gradients_match_finite_differences() {
    for (c, side) in [
        (cfg(BlockKind::Basic, &[1, 1], &[3, 4], Stem::Small), 6),
        (
            cfg(BlockKind::Bottleneck, &[1, 1], &[2, 2], Stem::Default),
            12,
        ),
    ] {
        let mut store = ParamStore::<f64>::new();
        let net = Resnet::init(c, &mut store, 3).unwrap();
        let mut rng = Rng::new(4);
        for p in store.iter_mut() {
            let v = randn(p.value.shape(), 0.5, &mut rng);
            p.value = if p.name.ends_with("bn1.weight") || p.name.contains(".bn") {
                v.map(|a| 1.0 + 0.3 * a)
            } else {
                v
            };
        }
        let x = randn(&[3, 2, side, side], 1.0, &mut rng);
        let y = [0usize, 2, 1];
        let opts = GradCheckOptions {
            max_entries: 12,
            ..Default::default()
        };
        let rep = check_gradients(&store, &[x], &opts, |t, s, v| {
            let logits = net.forward(
                t,
                s,
                v[0],
                &mut Ctx {
                    train: true,
                    rng: None,
                },
            )?;
            ops::cross_entropy(t, logits, &y, &Default::default())
        })
        .unwrap();
        assert!(
            rep.max_rel_error < 1e-6,
            "{}: {:?}",
            rep.worst(),
            rep.per_tensor
        );
    }
}

/// FLOPs = 2 × multiply-adds of the convolutions and fc, counted by hand for a small net.
#[test]
fn flops_by_hand() {
    let c = ResnetConfig {
        block: BlockKind::Basic,
        layers: vec![1, 1],
        channels: vec![4, 8],
        stem_width: 4,
        stem: Stem::Small,
        in_chans: 1,
        num_classes: 10,
    };
    let mut store = ParamStore::<f32>::new();
    let net = Resnet::init(c, &mut store, 0).unwrap();
    // 8×8: conv1 1→4 3×3; layer1 two 4→4 3×3; layer2 at 4×4: 4→8 3×3 /2, 8→8 3×3, 1×1 4→8 /2.
    let macs = 64 * 4 * 9 + 2 * (64 * 4 * 36) + 16 * 8 * 36 + 16 * 8 * 72 + 16 * 8 * 4 + 8 * 10;
    assert_eq!(net.flops_per_image(8, 8), 2.0 * macs as f64);
    assert_eq!(net.param_count(&store), store.num_elements());
}

#[test]
fn bad_checkpoints_and_inputs_are_errors() {
    let mut store = ParamStore::<f32>::new();
    let c = cfg(BlockKind::Basic, &[1, 1], &[4, 8], Stem::Small);
    let net = Resnet::init(c.clone(), &mut store, 0).unwrap();
    let sd = state_dict(&net, &store);
    // Not a ResNet: a ViT-like state dict.
    let mut vit = BTreeMap::new();
    vit.insert(
        "patch_embed.proj.weight".to_string(),
        Tensor::<f32>::zeros(&[8, 3, 4, 4]),
    );
    let e = Resnet::infer_config(&vit).unwrap_err().to_string();
    assert!(
        e.contains("not a timm ResNet") && e.contains("conv1.weight"),
        "{e}"
    );
    // Shapes that do not chain: layer1.0.conv2 expects 4 input channels.
    let mut bad = sd.clone();
    bad.insert("layer1.0.conv2.weight".into(), Tensor::zeros(&[4, 5, 3, 3]));
    let e = Resnet::from_tensors(&bad, Resnet::infer_config(&bad).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer1.0.conv2.weight"), "{e}");
    let mut bad = sd.clone();
    bad.remove("layer2.0.downsample.0.weight");
    assert!(Resnet::from_tensors(&bad, c.clone())
        .unwrap_err()
        .to_string()
        .contains("layer2.0.downsample.0.weight"));
    let mut bad = sd;
    bad.insert("conv1.weight".into(), Tensor::zeros(&[4, 2, 5, 5]));
    assert!(Resnet::infer_config(&bad)
        .unwrap_err()
        .to_string()
        .contains("5x5"));
    // An input with the wrong channel count.
    let x = Tensor::<f32>::zeros(&[1, 3, 8, 8]);
    let e = net.predict(&store, &x).unwrap_err().to_string();
    assert!(e.contains("3 channels") && e.contains("expects 2"), "{e}");
    assert!(net.predict(&store, &Tensor::zeros(&[2, 8, 8])).is_err());
}
