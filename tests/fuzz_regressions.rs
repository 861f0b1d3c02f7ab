//! The fuzz targets' inputs replayed in the normal test suite: every input the fuzzer found
//! to crash a parser (kept in `tests/fuzz_corpus/<target>/` after the parser was fixed) must
//! now return, Ok or a clear error; crafted hostile inputs give the errors they should; the
//! seed corpora (generated here, `NABLA_FUZZ_SEEDS=DIR` writes them to `DIR/<target>/`) are
//! accepted. The entry functions are the fuzz targets' own (`fuzz/src/entries.rs`).

#[path = "../fuzz/src/entries.rs"]
mod entries;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// The longest error message an input may produce: parsers quote at most 200 bytes of it.
const MAX_MESSAGE: usize = 1000;

fn entry(name: &str) -> fn(&[u8]) -> nabla::Result<()> {
    entries::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// The error of `target` on `input`, which must not be accepted.
fn error(target: &str, input: &[u8]) -> String {
    match entry(target)(input) {
        Ok(()) => panic!("{target} accepted {} bytes it should refuse", input.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_kept_crash_input_returns_without_panicking() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, f) in entries::TARGETS {
        let dir = root.join(name);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            replayed += 1;
            match catch_unwind(AssertUnwindSafe(|| f(&bytes))) {
                Err(_) => failures.push(format!("{}: panicked", file.display())),
                Ok(Err(e)) if e.to_string().len() > MAX_MESSAGE => failures.push(format!(
                    "{}: a message of {} bytes",
                    file.display(),
                    e.to_string().len()
                )),
                Ok(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The kept crash inputs (see the table in fuzz/README.md): the test must replay them.
    assert!(replayed >= KEPT_CRASHES, "replayed {replayed} inputs");
}

/// How many crash inputs `tests/fuzz_corpus/` holds (the fuzzing campaign's findings).
const KEPT_CRASHES: usize = 2;

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, b).unwrap();
    gz.finish().unwrap()
}

/// Crafted inputs: each gives the error its parser promises, not a panic, an allocation of
/// what the header claims, or a message that grows with the input.
#[test]
fn crafted_hostile_inputs_give_clear_errors() {
    let e = error("idx_raw", &idx(&[65536, 65536, 65536, 65536], &[]));
    assert!(
        e.contains("IDX dimensions [65536, 65536, 65536, 65536] overflow"),
        "{e}"
    );
    let mut over = idx(&[4], &[1, 2, 3, 4]);
    over.extend(vec![0u8; 1 << 20]);
    let e = error("idx_gzip", &gzip(&over));
    assert!(
        e.contains("dims [4] need 4 data bytes, the gzip stream holds more (decompression stopped after 13 bytes)"),
        "{e}"
    );
    let e = error("cifar", &[0, 1, 2]);
    assert!(
        e.contains("2 bytes is not a whole number of 3073-byte Cifar10 records"),
        "{e}"
    );
    let mut png = Vec::new();
    let enc = png::Encoder::new(&mut png, 30000, 30000);
    let w = enc.write_header().unwrap();
    std::mem::forget(w);
    let e = error("image", &png);
    assert!(e.contains("PNG header declares 30000x30000 pixels"), "{e}");
    let e = error(
        "planetoid_tsv",
        b"0\t1000000000000\n\x000\t0\n\x00\x000\ttrain\n",
    );
    assert!(
        e.contains("fuzz/features.tsv: line 1: feature index 1000000000000 is not below 16777216"),
        "{e}"
    );
    let e = error(
        "planetoid_tsv",
        b"0\t0\n\x000\t1000000000000\n\x00\x000\ttrain\n",
    );
    assert!(
        e.contains("class 1000000000000 of node 0 is not below 65536"),
        "{e}"
    );
    let e = error("planetoid_linqs", b"a 1 X\na 0 Y\n\x00");
    assert!(
        e.contains("fuzz.content: line 2: paper id \"a\" appears twice"),
        "{e}"
    );
    let e = error("text", b"abc\xff");
    assert!(
        e.contains("fuzz.txt: line 1: not UTF-8 text: byte 0xff at offset 3"),
        "{e}"
    );
    let mut st = (1u64 << 40).to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    let e = error("safetensors", &st);
    assert!(
        e.contains("declares 1099511627776 bytes, more than the 100000000"),
        "{e}"
    );
    let e = error("state_json", b"{\"format\":\"nabla-checkpoint-1\"}");
    assert!(
        e.contains("state.json") && e.contains("missing field"),
        "{e}"
    );
    let long = format!("{{\"step\":1,\"lr\":\"{}\"}}\n", "x".repeat(1 << 20));
    let e = error("metrics_jsonl", long.as_bytes());
    assert!(
        e.contains("metrics.jsonl: line 1") && e.len() < MAX_MESSAGE,
        "{}",
        e.len()
    );
}

/// Small valid inputs of every target, made with nabla's own writers and encoders: the seed
/// corpora of the fuzzer.
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use image::ImageEncoder;
    let mut v: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    let images = idx(&[3, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    v.push(("idx_raw", "images", images.clone()));
    v.push(("idx_raw", "labels", idx(&[3], &[1, 2, 9])));
    v.push(("idx_gzip", "images.gz", gzip(&images)));
    v.push(("idx_gzip", "labels.gz", gzip(&idx(&[3], &[1, 2, 9]))));
    v.push(("idx_gzip", "raw", images));
    let record = |labels: &[u8]| -> Vec<u8> {
        let mut r = labels.to_vec();
        r.extend((0..3072).map(|i| (i % 251) as u8));
        r
    };
    v.push((
        "cifar",
        "cifar10",
        [vec![0], record(&[3]), record(&[9])].concat(),
    ));
    v.push(("cifar", "cifar100", [vec![1], record(&[4, 57])].concat()));
    let encode_png = |w: u32, h: u32, c: image::ColorType, px: &[u8]| {
        let mut b = Vec::new();
        image::codecs::png::PngEncoder::new(&mut b)
            .write_image(px, w, h, c)
            .unwrap();
        b
    };
    let encode_jpeg = |w: u32, h: u32, c: image::ColorType, px: &[u8]| {
        let mut b = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut b, 90)
            .encode(px, w, h, c)
            .unwrap();
        b
    };
    let grey: Vec<u8> = (0..16).map(|i| i * 16).collect();
    let rgb: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
    use image::ColorType as C;
    v.push(("image", "grey.png", encode_png(4, 4, C::L8, &grey)));
    v.push(("image", "rgb.png", encode_png(4, 4, C::Rgb8, &rgb)));
    v.push(("image", "rgba.png", encode_png(4, 3, C::Rgba8, &rgb)));
    v.push(("image", "grey16.png", encode_png(2, 4, C::L16, &grey)));
    v.push(("image", "grey.jpg", encode_jpeg(4, 4, C::L8, &grey)));
    v.push(("image", "rgb.jpg", encode_jpeg(4, 4, C::Rgb8, &rgb)));
    v.push((
        "planetoid_tsv",
        "tiny",
        b"0\t0,2\n1\t1\n2\t\n3\t2\n\x000\t0\n1\t1\n2\t1\n3\t-1\n\x000\t1\n1\t0\n1\t2\n2\t1\n2\t3\n3\t2\n\x000\ttrain\n1\ttrain\n2\tval\n".to_vec(),
    ));
    v.push((
        "planetoid_linqs",
        "tiny",
        b"p1\t1\t0\t1\tTheory\np2\t0\t1\t0\tNeural\np3\t0\t0\t1\tTheory\n\x00p1\tp2\np2\tp3\np3\tp3\n".to_vec(),
    ));
    v.push(("text", "reber", {
        let mut rng = nabla::Rng::new(1);
        nabla::data::text::embedded_reber(20, &mut rng).into_bytes()
    }));
    v.push((
        "text",
        "utf8",
        "naïve café — 数据, ünïcödé\n".repeat(3).into_bytes(),
    ));
    let a = nabla::Tensor::<f32>::from_f64(&[2, 3], &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]).unwrap();
    let b = nabla::Tensor::<f32>::from_f64(&[3], &[0.5, 0.25, 8.0]).unwrap();
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "nabla-checkpoint-1".to_string()),
        ("step".to_string(), "7".to_string()),
    ]);
    v.push((
        "safetensors",
        "model",
        nabla::io::safetensors_bytes(&[("w".into(), &a), ("b".into(), &b)], Some(meta)).unwrap(),
    ));
    let b64 = nabla::Tensor::<f64>::from_f64(&[1, 2], &[0.1, -0.2]).unwrap();
    v.push((
        "safetensors",
        "f64",
        nabla::io::safetensors_bytes(&[("x".into(), &b64)], None).unwrap(),
    ));
    let record = serde_json::json!({
        "step": 20, "epoch": 1.5, "wall_time_s": 0.5, "train_loss": 1.25, "lr": 0.001,
        "grad_norm": 0.75, "items_per_s": 1000.0, "logged_train_loss": [[10, 1.5], [20, 1.0]],
        "val_acc": 0.5, "val_loss": 1.1
    });
    let state = serde_json::json!({
        "format": "nabla-checkpoint-1", "step": 20, "epoch": 1.5, "optimizer_step": 20,
        "base_lr": 0.001, "lr": 0.001, "rng": [1, 2, 3, 4], "wall_time_s": 0.5,
        "items_total": 640,
        "model_config": {"vit": {"image_size": 28, "patch": 7, "in_chans": 1, "dim": 16,
            "depth": 1, "heads": 2, "mlp_dim": 32, "num_classes": 10, "pool": "cls",
            "eps": 1e-6, "dropout": 0.0}},
        "train_config": {"steps": 100},
        "metrics": [record.clone()],
        "best": {"metric": "val_acc", "value": 0.5, "step": 20},
        "evals_without_improvement": 0,
        "interval": {"loss_sum": 1.0, "items": 64, "steps": 2, "grad_norm_sum": 1.5,
            "metric_sums": {}, "wall_s": 0.1}
    });
    v.push((
        "state_json",
        "state.json",
        serde_json::to_vec_pretty(&state).unwrap(),
    ));
    let line = serde_json::to_string(&record).unwrap();
    let test_line = r#"{"test":true,"step":20,"selected_step":20,"selected_by":"val_acc","weights":"best","test_acc":0.5}"#;
    v.push((
        "metrics_jsonl",
        "metrics.jsonl",
        format!("{line}\n{line}\n{test_line}\n").into_bytes(),
    ));
    v
}

/// Every seed is accepted by its target (so the fuzzer starts from inputs that reach the end
/// of each parser); `NABLA_FUZZ_SEEDS=DIR` writes them as `DIR/<target>/<name>`.
#[test]
fn seeds_are_accepted_and_written_on_request() {
    let out = std::env::var_os("NABLA_FUZZ_SEEDS");
    let seeds = seeds();
    for (target, name, bytes) in &seeds {
        if let Err(e) = entry(target)(bytes) {
            panic!("seed {target}/{name} refused: {e}");
        }
        if let Some(dir) = &out {
            let d = Path::new(dir).join(target);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
    for (t, _) in entries::TARGETS {
        assert!(seeds.iter().any(|s| s.0 == t), "no seed for {t}");
    }
}
