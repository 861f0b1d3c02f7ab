//! `nabla vit …` on bad input: a clear message on stderr, exit status ≠ 0, no panic.

use crate::common;

use std::io::Read;
use std::path::Path;
use std::process::Command;

fn nabla(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    (out.status.code().unwrap_or(-1), err)
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn mnist_dir(dir: &Path, truncate_images: bool) {
    let n = 4u32;
    let img = idx(&[n, 28, 28], &vec![7u8; (n * 784) as usize]);
    let lab = idx(&[n], &[0, 1, 2, 3]);
    let img = if truncate_images {
        img[..img.len() - 100].to_vec()
    } else {
        img
    };
    for p in ["train", "t10k"] {
        std::fs::write(dir.join(format!("{p}-images-idx3-ubyte")), &img).unwrap();
        std::fs::write(dir.join(format!("{p}-labels-idx1-ubyte")), &lab).unwrap();
    }
}

#[test]
fn bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = t.join("run");
    let out_s = out.to_str().unwrap();
    // Image size not divisible by the patch size.
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--out",
        out_s,
        "--image-size",
        "30",
        "--patch",
        "7",
        "--steps",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not divisible by the patch size"), "{err}");
    // Heads not dividing the width.
    let (code, err) = nabla(&[
        "vit", "train", "--out", out_s, "--dim", "30", "--heads", "4", "--steps", "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not divisible by 4 heads"), "{err}");
    // Truncated IDX file.
    let d = t.join("trunc");
    std::fs::create_dir_all(&d).unwrap();
    mnist_dir(&d, true);
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        out_s,
        "--steps",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("truncated") && err.contains("train-images-idx3-ubyte"),
        "{err}"
    );
    // Corrupt gzip.
    let g = t.join("gz");
    std::fs::create_dir_all(&g).unwrap();
    mnist_dir(&g, false);
    std::fs::write(
        g.join("train-images-idx3-ubyte"),
        b"\x1f\x8bnot really gzip",
    )
    .unwrap();
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--data",
        g.to_str().unwrap(),
        "--out",
        out_s,
        "--steps",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("gzip"), "{err}");
    // Truncated CIFAR batch.
    let c = t.join("cifar");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("data_batch_1.bin"), vec![1u8; 3073 * 2 - 5]).unwrap();
    std::fs::write(c.join("test_batch.bin"), vec![1u8; 3073]).unwrap();
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--data",
        c.to_str().unwrap(),
        "--out",
        out_s,
        "--steps",
        "1",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("data_batch_1.bin") && err.contains("whole number"),
        "{err}"
    );

    // A small checkpoint (1 training step on synthetic data), then mismatched uses of it.
    let ok = t.join("ok");
    let ok_s = ok.to_str().unwrap();
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--out",
        ok_s,
        "--steps",
        "1",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--train-limit",
        "64",
        "--eval-limit",
        "20",
        "--batch",
        "32",
        "--plain",
    ]);
    assert_eq!(code, 0, "{err}");
    let ckpt = ok.join("checkpoint/model.safetensors");
    assert!(ckpt.is_file());
    // Channel mismatch: 3-channel input for a 1-channel model.
    let x = t.join("x.safetensors");
    let xt = nabla::Tensor::<f32>::zeros(&[1, 3, 28, 28]);
    nabla::io::save_safetensors(&x, &[("x".to_string(), &xt)], None).unwrap();
    let (code, err) = nabla(&[
        "vit",
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("3 channels"), "{err}");
    // Flags that don't fit the checkpoint: heads, and fine-tuning with another width.
    let (code, err) = nabla(&[
        "vit",
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--heads",
        "4",
        "--input",
        x.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--heads 4"), "{err}");
    // Fine-tuning a 1-channel checkpoint on 3-channel (CIFAR) images.
    let c3 = t.join("cifar3");
    std::fs::create_dir_all(&c3).unwrap();
    std::fs::write(c3.join("data_batch_1.bin"), vec![1u8; 3073 * 4]).unwrap();
    std::fs::write(c3.join("test_batch.bin"), vec![1u8; 3073 * 2]).unwrap();
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--out",
        t.join("ft").to_str().unwrap(),
        "--steps",
        "1",
        "--finetune-from",
        ckpt.to_str().unwrap(),
        "--data",
        c3.to_str().unwrap(),
        "--batch",
        "2",
        "--image-size",
        "28",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("channels 1") && err.contains("channels 3"),
        "{err}"
    );
    // Fine-tuning at another resolution works: 28 → 35 pixels, 4x4 → 5x5 position grid.
    let ft = t.join("ft35");
    let (code, err) = nabla(&[
        "vit",
        "train",
        "--out",
        ft.to_str().unwrap(),
        "--steps",
        "1",
        "--finetune-from",
        ckpt.to_str().unwrap(),
        "--image-size",
        "35",
        "--train-limit",
        "64",
        "--eval-limit",
        "20",
        "--batch",
        "32",
        "--plain",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("4x4 → 5x5"), "{err}");
    let m = nabla::io::load_safetensors::<f32>(ft.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(m["pos_embed"].shape(), &[1, 26, 16]);
    // A file that is not a ViT state dict.
    let (code, err) = nabla(&[
        "vit",
        "predict",
        "--checkpoint",
        x.to_str().unwrap(),
        "--heads",
        "2",
        "--input",
        x.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("patch_embed.proj.weight"), "{err}");
}

fn nabla_out(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout, err)
}

/// A training-only image folder (`<class>/*.png`, no test/): the run carves its validation
/// split from it, reports no test_acc and saves the class names; `vit predict` then reads PNG,
/// JPEG (colour, another size), IDX (raw and gzip) and safetensors inputs through the run's
/// normalization, prints top-k names with probabilities, and refuses bad inputs clearly.
#[test]
fn train_only_folder_then_predict_every_input_kind() {
    use image::ColorType as C;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("shades");
    // 8x8 grey images: "bright" (200..) and "dark" (..40), 12 each.
    for (cls, base) in [("bright", 200u8), ("dark", 10u8)] {
        let d = data.join(cls);
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..12u8 {
            let px: Vec<u8> = (0..64).map(|i| base + (i as u8 + k) % 30).collect();
            image::save_buffer(d.join(format!("{k:02}.png")), &px, 8, 8, C::L8).unwrap();
        }
    }
    let run = t.join("run");
    let common = [
        "vit",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--patch",
        "4",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch",
        "8",
        "--warmup",
        "0",
        "--lr",
        "0.01",
        "--crop-pad",
        "0",
        "--plain",
    ];
    // A validation split as large as the data: a clear error before training.
    let mut a = common.to_vec();
    a.extend(["--steps", "1", "--val-size", "24"]);
    let (code, _, err) = nabla_out(&a);
    assert_ne!(code, 0);
    assert!(
        err.contains("--val-size 24") && err.contains("24 training images"),
        "{err}"
    );
    let mut a = common.to_vec();
    a.extend(["--steps", "40", "--val-size", "4"]);
    let (code, out, err) = nabla_out(&a);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("20 train / 4 validation"), "{err}");
    assert!(err.contains("class names from class folder names"), "{err}");
    assert!(out.contains("no test_acc"), "{out}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!metrics.contains("test"), "{metrics}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["model"]["classes"],
        serde_json::json!(["bright", "dark"])
    );
    assert_eq!(cfg["model"]["val_images"], 4);

    // Inputs: a grey PNG (dark), a colour JPEG of another size (bright), an IDX file of both.
    let dark: Vec<u8> = (0..64).map(|i| 10 + (i as u8) % 30).collect();
    let bright: Vec<u8> = (0..64).map(|i| 200 + (i as u8 + 3) % 30).collect();
    let png = t.join("dark.png");
    image::save_buffer(&png, &dark, 8, 8, C::L8).unwrap();
    let jpg = t.join("bright.jpg");
    let rgb: Vec<u8> = (0..12 * 16).flat_map(|_| [215u8, 215, 215]).collect();
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
        .encode(&rgb, 16, 12, C::Rgb8)
        .unwrap();
    std::fs::write(&jpg, &buf).unwrap();
    let idx_path = t.join("two-images-idx3-ubyte");
    std::fs::write(
        &idx_path,
        idx(&[2, 8, 8], &[dark.clone(), bright.clone()].concat()),
    )
    .unwrap();
    let ck = run.join("best");
    let ck_s = ck.to_str().unwrap();
    let (code, out, err) = nabla_out(&[
        "vit",
        "predict",
        "--checkpoint",
        ck_s,
        png.to_str().unwrap(),
        jpg.to_str().unwrap(),
        idx_path.to_str().unwrap(),
        "--top-k",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let first = |l: &str| {
        l.split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        lines.iter().map(|l| first(l)).collect::<Vec<_>>(),
        ["dark", "bright", "dark", "bright"],
        "{out}"
    );
    assert!(
        lines[2].starts_with(&format!("{}[0]: ", idx_path.display())),
        "{out}"
    );
    // JSON: probabilities are the softmax of the logits, top-k sorted; PNG and safetensors x
    // (the same pixels / 255) give the same numbers, and so does x normalized by hand with the
    // run's saved mean/std and --normalized.
    let json_of = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["vit", "predict", "--checkpoint", ck_s, "--json"];
        a.extend_from_slice(extra);
        let (code, out, err) = nabla_out(&a);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let v = json_of(&[png.to_str().unwrap()]);
    let logits: Vec<f64> = v[0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let probs: Vec<f64> = v[0]["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
    for (l, p) in logits.iter().zip(&probs) {
        assert!(((l - m).exp() / z - p).abs() < 1e-6, "{logits:?} {probs:?}");
    }
    assert_eq!(v[0]["top"][0]["name"], "dark");
    assert_eq!(v[0]["top"][0]["class"], 1);
    assert!(v[0]["top"][0]["prob"].as_f64() >= v[0]["top"][1]["prob"].as_f64());
    let st = t.join("x.safetensors");
    let xt = nabla::Tensor::<f32>::new(
        &[1, 1, 8, 8],
        dark.iter().map(|&p| p as f32 / 255.0).collect(),
    )
    .unwrap();
    nabla::io::save_safetensors(&st, &[("x".to_string(), &xt)], None).unwrap();
    let vs = json_of(&["--input", st.to_str().unwrap()]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("state.json")).unwrap()).unwrap();
    let mean = state["model_config"]["normalize"]["mean"][0]
        .as_f64()
        .unwrap() as f32;
    let sd = state["model_config"]["normalize"]["std"][0]
        .as_f64()
        .unwrap() as f32;
    let xn = nabla::Tensor::<f32>::new(
        &[1, 1, 8, 8],
        dark.iter()
            .map(|&p| (p as f32 / 255.0 - mean) / sd)
            .collect(),
    )
    .unwrap();
    let stn = t.join("xn.safetensors");
    nabla::io::save_safetensors(&stn, &[("x".to_string(), &xn)], None).unwrap();
    let vn = json_of(&["--normalized", stn.to_str().unwrap()]);
    for other in [&vs[0], &vn[0]] {
        for (a, b) in v[0]["probs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(other["probs"].as_array().unwrap())
        {
            assert!(
                (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6,
                "{v:?} {other}"
            );
        }
    }
    // gzip IDX.
    let gz = t.join("two-images-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &std::fs::read(&idx_path).unwrap()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(json_of(&[gz.to_str().unwrap(), "--limit", "1"]).len(), 1);

    // Bad inputs: each a clear error, never "header too large".
    let txt = t.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let broken = t.join("broken.jpg");
    std::fs::write(&broken, &buf[..buf.len() / 3]).unwrap();
    for (args, want) in [
        (
            vec![txt.to_str().unwrap()],
            "not an input `vit predict` reads",
        ),
        (vec![broken.to_str().unwrap()], "corrupt JPEG"),
        (vec![png.to_str().unwrap(), "--top-k", "0"], "--top-k"),
        (vec![], "at least one input"),
    ] {
        let mut a = vec!["vit", "predict", "--checkpoint", ck_s];
        a.extend(args);
        let (code, _, err) = nabla_out(&a);
        assert_ne!(code, 0);
        assert!(err.contains(want), "{want}: {err}");
    }
    let (code, _, err) = nabla_out(&[
        "vit",
        "predict",
        "--checkpoint",
        png.to_str().unwrap(),
        "--heads",
        "2",
        png.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("is a PNG image, not a safetensors file"),
        "{err}"
    );
    assert!(!err.contains("header too large"), "{err}");
}

/// With a test split, the test set is evaluated once, at the end, on best/: one `test_acc`
/// line in metrics.jsonl and in the summary; during training only validation metrics appear.
#[test]
fn vit_train_reports_test_acc_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mnist-like");
    std::fs::create_dir_all(&d).unwrap();
    mnist_dir(&d, false);
    let run = tmp.path().join("run");
    let (code, out, err) = nabla_out(&[
        "vit",
        "train",
        "--data",
        d.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch",
        "2",
        "--plain",
    ]);
    assert_eq!(code, 0, "{err}");
    // 4 training images: the last one (a tenth, at least 1) validates.
    assert!(
        err.contains("3 train / 1 validation (the last 1 of the training set"),
        "{err}"
    );
    assert!(err.contains("4 test images"), "{err}");
    assert!(err.contains("digits 0-9"), "{err}");
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines[..2] {
        assert!(
            l["val_acc"].is_number() && l.get("test_acc").is_none(),
            "{l}"
        );
    }
    let t = &lines[2];
    assert_eq!(t["test"], true);
    assert_eq!(t["weights"], "best");
    assert_eq!(t["test_images"], 4.0);
    let acc = t["test_acc"].as_f64().unwrap();
    // The summary prints it with 4 significant digits.
    let printed: f64 = out
        .split("test: test_acc=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no test_acc in {out}"));
    assert!((printed - acc).abs() < 1e-3, "{printed} vs {acc}");
    assert_eq!(out.matches("test_acc=").count(), 1, "{out}");
}

/// Fashion-MNIST end to end: `vit train` on the real IDX files (a few steps) names the classes
/// from the data set's standard list, saves them in the run, and `vit predict` prints them for
/// test images given as PNG files and as the IDX file itself.
#[test]
fn fashion_mnist_class_names_from_training_to_prediction() {
    const NAMES: [&str; 10] = [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ];
    let Some(fm) = common::shared("data/fashion-mnist") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (code, _, err) = nabla_out(&[
        "vit",
        "train",
        "--data",
        fm.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--train-limit",
        "256",
        "--eval-limit",
        "64",
        "--steps",
        "3",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch",
        "32",
        "--plain",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("class names from Fashion-MNIST's names"),
        "{err}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["classes"], serde_json::json!(NAMES));

    // The first two test images as grey PNG files (labels 9 "Ankle boot" and 2 "Pullover").
    let t10k = fm.join("t10k-images-idx3-ubyte.gz");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&t10k).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    let mut pngs = Vec::new();
    for i in 0..2 {
        let p = tmp.path().join(format!("test{i}.png"));
        let px = &raw[16 + i * 784..16 + (i + 1) * 784];
        let mut enc = png::Encoder::new(std::fs::File::create(&p).unwrap(), 28, 28);
        enc.set_color(png::ColorType::Grayscale);
        enc.write_header().unwrap().write_image_data(px).unwrap();
        pngs.push(p.to_str().unwrap().to_string());
    }
    let best = run.join("best");
    let (code, out, err) = nabla_out(&[
        "vit",
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        &pngs[0],
        &pngs[1],
        t10k.to_str().unwrap(),
        "--limit",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    for r in &rows {
        let top = r["top"].as_array().unwrap();
        assert_eq!(top.len(), 3, "{r}");
        for t in top {
            let c = t["class"].as_u64().unwrap() as usize;
            assert_eq!(t["name"], NAMES[c], "{r}");
        }
    }
    // A PNG of a test image and the same image read from the IDX file give the same
    // probabilities (8-bit pixels either way), to 1e-6.
    for i in 0..2 {
        let (a, b) = (&rows[i]["probs"], &rows[2 + i]["probs"]);
        for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() < 1e-6, "image {i}: {a} vs {b}");
        }
    }
    // The plain output names the classes too.
    let (code, out, err) = nabla_out(&[
        "vit",
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        &pngs[0],
    ]);
    assert_eq!(code, 0, "{err}");
    let named = NAMES.iter().filter(|n| out.contains(*n)).count();
    assert_eq!(named, 3, "top-3 names expected in: {out}");
}

/// `--resume DIR` restores the run's own configuration (issue 16): `vit train --out R --epochs 1
/// --seed 3` then `vit train --resume R --epochs 2` continues the run with seed 3 (its data
/// statistics, initialization and batch order) instead of refusing it; a flag typed again with
/// another value is refused naming both values; a run stopped early (`--time-limit`) and
/// resumed with nothing but `--resume R` ends byte-identical to one that never stopped.
#[test]
fn resume_restores_the_runs_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let tiny = [
        "--patch",
        "7",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch",
        "16",
        "--train-limit",
        "64",
        "--eval-limit",
        "32",
        "--warmup",
        "2",
        "--quiet",
    ];
    let vit = |extra: &[&str]| {
        let mut a = vec!["vit", "train"];
        a.extend_from_slice(extra);
        nabla_out(&a)
    };
    let step = |run: &Path| -> u64 {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("checkpoint/state.json")).unwrap())
                .unwrap();
        st["step"].as_u64().unwrap()
    };
    let r = tmp.path().join("r");
    let rs = r.to_str().unwrap();
    let mut first = vec!["--out", rs, "--epochs", "1", "--seed", "3"];
    first.extend_from_slice(&tiny);
    let (code, _, err) = vit(&first);
    assert_eq!(code, 0, "{err}");
    assert_eq!(step(&r), 4); // 64 images / batch 16
    let (code, _, err) = vit(&["--resume", rs, "--epochs", "2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(step(&r), 8);
    // The run's own value typed again is fine; another one is refused, naming both.
    let (code, _, err) = vit(&["--resume", rs, "--seed", "4", "--dim", "32"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("--seed: the run has 3, this command line 4")
            && err.contains("--dim: the run has 16, this command line 32"),
        "{err}"
    );
    let (code, _, err) = vit(&["--resume", rs, "--seed", "3", "--epochs", "3", "--plain"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(step(&r), 12);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["train"]["seed"], 3);
    assert_eq!(cfg["train"]["command"]["epochs"], 3);
    assert_eq!(cfg["train"]["command"]["optim"], "adamw");

    // Stopped by the time limit (after step 0 or a few), resumed with the run's flags alone.
    let full = tmp.path().join("full");
    let stopped = tmp.path().join("stopped");
    let mut a = vec![
        "--out",
        full.to_str().unwrap(),
        "--epochs",
        "3",
        "--seed",
        "5",
    ];
    a.extend_from_slice(&tiny);
    let (code, _, err) = vit(&a);
    assert_eq!(code, 0, "{err}");
    let mut a = vec![
        "--out",
        stopped.to_str().unwrap(),
        "--epochs",
        "3",
        "--seed",
        "5",
    ];
    a.extend_from_slice(&tiny);
    a.extend(["--time-limit", "0.001", "--checkpoint-every", "1"]);
    let (code, out, err) = vit(&a);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("time limit"), "{out}");
    assert!(step(&stopped) < 12);
    let (code, _, err) = vit(&["--resume", stopped.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(step(&stopped), 12);
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            std::fs::read(full.join("checkpoint").join(f)).unwrap()
                == std::fs::read(stopped.join("checkpoint").join(f)).unwrap(),
            "{f} differs after the resume"
        );
    }
}

/// `vit analyze` writes Figure 7's three panels, each an SVG with its JSON beside it.
#[test]
fn analyze_writes_the_three_figure7_panels() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let an = tmp.path().join("an");
    let (code, _, err) = nabla_out(&[
        "vit",
        "train",
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "2",
        "--dim",
        "8",
        "--depth",
        "2",
        "--heads",
        "2",
        "--mlp-dim",
        "16",
        "--quiet",
        "--plot",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, stdout, err) = nabla_out(&[
        "vit",
        "analyze",
        "--checkpoint",
        run.join("best").to_str().unwrap(),
        "--out",
        an.to_str().unwrap(),
        "--images",
        "8",
        "--rollouts",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    for f in [
        "patch_embed_pca",
        "pos_embed_similarity",
        "attention_distance",
    ] {
        let svg = std::fs::read_to_string(an.join(format!("{f}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{f}");
        assert!(an.join(format!("{f}.json")).is_file(), "{f}");
    }
    let pca: serde_json::Value =
        serde_json::from_slice(&std::fs::read(an.join("patch_embed_pca.json")).unwrap()).unwrap();
    // 8 filters of 7×7: at most 7 components of a centred rank-7 set, each of 49 values.
    let comps = pca["pca"]["components"].as_array().unwrap();
    assert_eq!(comps.len(), 7);
    assert!(comps.iter().all(|c| c.as_array().unwrap().len() == 49));
    let ratios: Vec<f64> = pca["pca"]["explained_variance_ratio"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(ratios.windows(2).all(|w| w[0] >= w[1]), "{ratios:?}");
    assert!(
        (ratios.iter().sum::<f64>() - 1.0).abs() < 1e-6,
        "{ratios:?}"
    );
    let pos: serde_json::Value =
        serde_json::from_slice(&std::fs::read(an.join("pos_embed_similarity.json")).unwrap())
            .unwrap();
    assert_eq!(pos["grid"], 4);
    let sim = pos["similarity"].as_array().unwrap();
    assert_eq!(sim.len(), 16);
    assert!((sim[5][5].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!(
        stdout.contains("patch-embedding PCA: 7 components"),
        "{stdout}"
    );
    let (code, err) = nabla(&[
        "vit",
        "analyze",
        "--checkpoint",
        run.join("best").to_str().unwrap(),
        "--out",
        an.to_str().unwrap(),
        "--components",
        "0",
    ]);
    assert!(code != 0 && err.contains("--components"), "{err}");
}

/// `study data-size` on bad input: sizes beyond the data, an empty list, a missing folder.
#[test]
fn study_bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    mnist_dir(&data, false);
    let out = tmp.path().join("study");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let base = [
        "study",
        "data-size",
        "--data",
        d,
        "--out",
        o,
        "--val-size",
        "1",
        "--steps",
        "1",
    ];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        nabla(&a)
    };
    let (code, err) = with(&["--sizes", "2,10"]);
    assert!(
        code != 0 && err.contains("--sizes 10") && err.contains("3 training images"),
        "{err}"
    );
    for empty in ["", ","] {
        let (code, err) = with(&["--sizes", empty]);
        assert!(
            code != 0 && err.contains("--sizes is empty"),
            "{empty:?}: {err}"
        );
    }
    let (code, err) = with(&["--sizes", "2,0"]);
    assert!(code != 0 && err.contains("0 images"), "{err}");
    let missing = tmp.path().join("missing");
    let (code, err) = nabla(&[
        "study",
        "data-size",
        "--data",
        missing.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(
        code != 0 && err.contains("missing") && err.contains("no such folder"),
        "{err}"
    );
    let (code, err) = with(&["--models", "vit,transformer"]);
    assert!(code != 0 && err.contains("transformer"), "{err}");
    let (code, err) = with(&["--budget-minutes", "1"]);
    assert!(code != 0 && err.contains("--budget-minutes"), "{err}");
    assert!(!out.join("study.json").exists());
}
