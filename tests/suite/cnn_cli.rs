//! `nabla cnn …` through the binary: predict equals timm's logits on ../shared/fixtures/resnet;
//! a tiny train → eval → resume → predict round trip on the built-in data; bad checkpoints and
//! inputs fail with a clear message and exit status ≠ 0.

use crate::common;

use nabla::Tensor;
use std::process::Command;

fn nabla(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        err,
    )
}

fn logits_of(stdout: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect()
}

#[test]
fn predict_matches_timm() {
    let Some(dir) = common::shared("fixtures/resnet/model1") else {
        return;
    };
    let (ck, inp) = (dir.join("model.safetensors"), dir.join("input.safetensors"));
    let (code, out, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        inp.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let got = logits_of(&out);
    let exp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let want: Vec<f64> = exp["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4 * scale, "max |Δ| {err}");
}

const TINY: [&str; 14] = [
    "--layers",
    "1,1",
    "--channels",
    "4,8",
    "--stem-width",
    "4",
    "--batch",
    "16",
    "--train-limit",
    "64",
    "--eval-limit",
    "32",
    "--log-every",
    "1",
];

#[test]
fn train_eval_resume_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let run_s = run.to_str().unwrap();
    let mut args = vec!["cnn", "train", "--out", run_s, "--steps", "3", "--quiet"];
    args.extend(TINY);
    let (code, out, err) = nabla(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test_acc"), "{out}");
    // The checkpoint is a complete timm state dict: parameters and running statistics.
    let sd = nabla::io::load_safetensors::<f32>(run.join("checkpoint/model.safetensors")).unwrap();
    assert!(sd.contains_key("layer2.0.downsample.1.running_var"));
    assert_eq!(sd["bn1.num_batches_tracked"].data()[0], 3.0);
    let (code, out, err) = nabla(&[
        "cnn",
        "eval",
        "--checkpoint",
        run_s,
        "--limit",
        "40",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["images"], 40);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    // Resume to 5 steps with the run's own flags.
    let (code, _, err) = nabla(&["cnn", "train", "--resume", run_s, "--steps", "5", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let sd = nabla::io::load_safetensors::<f32>(run.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(sd["bn1.num_batches_tracked"].data()[0], 5.0);
    // A flag typed again that disagrees with the run is refused.
    let (code, _, err) = nabla(&[
        "cnn",
        "train",
        "--resume",
        run_s,
        "--steps",
        "6",
        "--channels",
        "4,16",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("channels"), "{err}");
    // predict on our own checkpoint.
    let x = Tensor::<f32>::from_fn(&[2, 1, 28, 28], |i| (i % 17) as f32 / 17.0);
    let xp = tmp.path().join("x.safetensors");
    nabla::io::save_safetensors(&xp, &[("x".to_string(), &x)], None).unwrap();
    let ck = run.join("checkpoint/model.safetensors");
    let (code, out, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        xp.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(logits_of(&out).len(), 2 * 10, "10 synthetic classes");
}

#[test]
fn bad_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let p = |n: &str| t.join(n).to_str().unwrap().to_string();
    // A checkpoint that is not a ResNet.
    let w = Tensor::<f32>::zeros(&[8, 1, 7, 7]);
    nabla::io::save_safetensors(
        p("vit.safetensors"),
        &[("patch_embed.proj.weight".into(), &w)],
        None,
    )
    .unwrap();
    let x = Tensor::<f32>::zeros(&[1, 1, 8, 8]);
    nabla::io::save_safetensors(p("x.safetensors"), &[("x".into(), &x)], None).unwrap();
    let (code, _, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        &p("vit.safetensors"),
        "--input",
        &p("x.safetensors"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not a timm ResNet"), "{err}");
    // A tiny ResNet checkpoint, then one whose shapes do not chain.
    let run = p("run");
    let mut args = vec!["cnn", "train", "--out", &run, "--steps", "1", "--quiet"];
    args.extend(TINY);
    let (code, _, err) = nabla(&args);
    assert_eq!(code, 0, "{err}");
    let ck = t.join("run/checkpoint/model.safetensors");
    let mut sd = nabla::io::load_safetensors::<f32>(&ck).unwrap();
    sd.insert("layer2.0.conv2.weight".into(), Tensor::zeros(&[8, 7, 3, 3]));
    let list: Vec<(String, &Tensor<f32>)> = sd.iter().map(|(k, v)| (k.clone(), v)).collect();
    nabla::io::save_safetensors(p("bad.safetensors"), &list, None).unwrap();
    let (code, _, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        &p("bad.safetensors"),
        "--input",
        &p("x.safetensors"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("layer2.0.conv2.weight"), "{err}");
    // An input with the wrong channel count.
    let x3 = Tensor::<f32>::zeros(&[1, 3, 28, 28]);
    nabla::io::save_safetensors(p("x3.safetensors"), &[("x".into(), &x3)], None).unwrap();
    let (code, _, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        &p("x3.safetensors"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("3 channels"), "{err}");
    // An input file without `x`.
    let (code, _, err) = nabla(&[
        "cnn",
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--input",
        &p("vit.safetensors"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("\"x\"") || err.contains(" x"), "{err}");
}
