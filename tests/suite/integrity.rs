//! Checkpoint integrity and run-folder coordination, through the binary: every tensor's
//! checksum is verified on every load, non-finite weights and evaluations are errors, labels
//! outside the classes are errors, identical runs write identical bytes, one process at a time
//! trains into a folder, and what a killed run left behind is recovered or removed.

use nabla::models::char_rnn::load_checkpoint;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn nabla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(args)
        .output()
        .expect("running nabla")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `nabla rnn train` of a small model on the built-in corpus, quiet.
fn rnn_train(out: &Path, steps: u64, extra: &[&str]) -> Output {
    let steps = steps.to_string();
    let mut args = vec![
        "rnn",
        "train",
        "--hidden",
        "16",
        "--k1",
        "8",
        "--k2",
        "8",
        "--batch",
        "4",
        "--eval-every",
        "5",
        "--seed",
        "3",
        "--quiet",
        "--steps",
        &steps,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nabla(&args)
}

/// A ViT of a few thousand weights trained for 10 steps on the built-in synthetic shapes.
fn vit_train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "vit",
        "train",
        "--dim",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--mlp-dim",
        "32",
        "--steps",
        "10",
        "--batch",
        "32",
        "--train-limit",
        "300",
        "--eval-limit",
        "100",
        "--warmup",
        "2",
        "--plain",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    nabla(&args)
}

/// The byte range of a safetensors file's tensor data.
fn data_range(bytes: &[u8]) -> std::ops::Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    8 + n..bytes.len()
}

/// Flips bit `bit` of the data byte at `frac` (0..1) of the data region; returns the byte index.
fn flip_bit(path: &Path, frac: f64, bit: u8) -> usize {
    let mut b = std::fs::read(path).unwrap();
    let r = data_range(&b);
    let i = r.start + ((r.len() - 1) as f64 * frac) as usize;
    b[i] ^= 1 << bit;
    std::fs::write(path, b).unwrap();
    i
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The TensorBoard events file is named by its time of creation and the host.
        .map(|n| {
            if n.starts_with(nabla::train::tfevents::FILE_PREFIX) {
                "events.out.tfevents.*".into()
            } else {
                n
            }
        })
        .collect();
    v.sort();
    v
}

/// One flipped bit anywhere in the tensor data is refused by every load — `rnn sample` (16
/// positions, every bit position in a byte twice) and `--resume` — with an error naming the
/// tensor; the intact checkpoint still loads.
#[test]
fn a_flipped_bit_is_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = rnn_train(&run, 10, &[]);
    assert!(o.status.success(), "{}", err(&o));
    let model = run.join("checkpoint/model.safetensors");
    let good = std::fs::read(&model).unwrap();
    let tensors: Vec<String> = nabla::io::load_safetensors::<f32>(&model)
        .unwrap()
        .into_keys()
        .collect();
    let mut refused = 0;
    for k in 0..16u8 {
        std::fs::write(&model, &good).unwrap();
        let i = flip_bit(&model, (k as f64 + 0.5) / 16.0, k % 8);
        let o = nabla(&[
            "rnn",
            "sample",
            "--checkpoint",
            run.to_str().unwrap(),
            "--len",
            "10",
        ]);
        let e = err(&o);
        assert_eq!(o.status.code(), Some(1), "flip at byte {i}: {e}");
        assert!(
            e.contains("fails its checksum") && e.contains("model.safetensors"),
            "flip at byte {i}: {e}"
        );
        assert!(
            tensors.iter().any(|t| e.contains(&format!("tensor {t} "))),
            "{e}"
        );
        refused += 1;
    }
    assert_eq!(refused, 16);
    let o = rnn_train(&run, 20, &["--resume", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("fails its checksum"), "{}", err(&o));
    // The optimizer state is checked as well.
    std::fs::write(&model, &good).unwrap();
    let opt = run.join("checkpoint/optimizer.safetensors");
    flip_bit(&opt, 0.3, 2);
    let o = rnn_train(&run, 20, &["--resume", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("optimizer.safetensors") && err(&o).contains("fails its checksum"),
        "{}",
        err(&o)
    );
    std::fs::remove_file(&opt).unwrap();
    // Undamaged, the same checkpoint samples fine.
    let o = nabla(&[
        "rnn",
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--len",
        "10",
    ]);
    assert!(o.status.success(), "{}", err(&o));
}

/// The ViT loads (`vit eval`, `vit predict`, `--finetune-from`) verify the checksums too; a NaN
/// weight (checksum intact) is refused naming the tensor and index; weights that overflow on
/// the data make `vit eval` and `vit predict` fail instead of printing NaN; `--limit 0` is
/// refused.
#[test]
fn vit_loads_refuse_corrupt_and_non_finite_weights_and_nan_evaluations() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("vit");
    let o = vit_train(&run, &[]);
    assert!(o.status.success(), "{}", err(&o));
    let ck = run.join("checkpoint");
    let x = tmp.path().join("x.safetensors");
    let img = nabla::Tensor::<f32>::from_fn(&[2, 1, 28, 28], |i| (i % 7) as f32 / 7.0);
    nabla::io::save_safetensors(&x, &[("x".to_string(), &img)], None).unwrap();
    let eval = |dir: &Path| {
        nabla(&[
            "vit",
            "eval",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--limit",
            "40",
        ])
    };
    let predict = |dir: &Path| {
        nabla(&[
            "vit",
            "predict",
            "--checkpoint",
            dir.to_str().unwrap(),
            x.to_str().unwrap(),
        ])
    };
    let o = eval(&ck);
    assert!(o.status.success(), "{}", err(&o));
    let o = predict(&ck);
    assert!(o.status.success(), "{}", err(&o));

    let o = nabla(&[
        "vit",
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--limit",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("--limit"), "{}", err(&o));

    // One flipped bit: refused by eval, predict and fine-tuning.
    let bad = tmp.path().join("flipped");
    copy_dir(&ck, &bad);
    flip_bit(&bad.join("model.safetensors"), 0.5, 3);
    let finetune = tmp.path().join("ft");
    for o in [
        eval(&bad),
        predict(&bad),
        vit_train(&finetune, &["--finetune-from", bad.to_str().unwrap()]),
    ] {
        assert_eq!(o.status.code(), Some(1), "{}", err(&o));
        assert!(err(&o).contains("fails its checksum"), "{}", err(&o));
    }

    // Rewrite the weights (with valid checksums) after changing one tensor.
    let rewrite = |name: &str, edit: &dyn Fn(&mut [f32])| -> PathBuf {
        let dir = tmp.path().join(format!("edit-{name}"));
        copy_dir(&ck, &dir);
        let f = dir.join("model.safetensors");
        let mut m = nabla::io::load_safetensors::<f32>(&f).unwrap();
        edit(m.get_mut(name).unwrap().data_mut());
        let list: Vec<(String, &nabla::Tensor<f32>)> =
            m.iter().map(|(k, t)| (k.clone(), t)).collect();
        let meta = std::collections::HashMap::from([
            ("format".to_string(), "nabla-checkpoint-1".to_string()),
            ("step".to_string(), "10".to_string()),
        ]);
        nabla::io::save_safetensors(&f, &list, Some(meta)).unwrap();
        dir
    };
    let nan = rewrite("head.bias", &|d| d[3] = f32::NAN);
    for o in [eval(&nan), predict(&nan)] {
        assert_eq!(o.status.code(), Some(1));
        assert!(
            err(&o).contains("tensor head.bias [") && err(&o).contains("NaN at flat index 3"),
            "{}",
            err(&o)
        );
    }
    // Finite weights whose logits overflow: the loss is not finite, the evaluation fails.
    let huge = rewrite("head.weight", &|d| d.iter_mut().for_each(|v| *v = 3e38));
    for o in [eval(&huge), predict(&huge)] {
        assert_eq!(o.status.code(), Some(1), "{}", err(&o));
        assert!(err(&o).contains("not finite"), "{}", err(&o));
        assert!(
            o.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

/// A checkpoint written before checksums existed (nabla metadata, no `crc32c:` keys) still
/// loads, with a warning on stderr naming the file.
#[test]
fn checkpoints_without_checksums_load_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = rnn_train(&run, 10, &[]);
    assert!(o.status.success(), "{}", err(&o));
    let model = run.join("checkpoint/model.safetensors");
    let m = nabla::io::load_safetensors::<f32>(&model).unwrap();
    // As the safetensors crate writes it (what nabla used before): format and step only.
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = m
            .iter()
            .map(|(k, t)| {
                let b: Vec<u8> = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                (k.clone(), t.shape().to_vec(), b)
            })
            .collect();
        let bytes: &'static [(String, Vec<usize>, Vec<u8>)] = Box::leak(bytes.into_boxed_slice());
        bytes
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect()
    };
    let meta = std::collections::HashMap::from([
        ("format".to_string(), "nabla-checkpoint-1".to_string()),
        ("step".to_string(), "10".to_string()),
    ]);
    std::fs::write(&model, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let o = nabla(&[
        "rnn",
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--len",
        "10",
    ]);
    assert!(o.status.success(), "{}", err(&o));
    let e = err(&o);
    assert!(
        e.contains("warning: ") && e.contains("model.safetensors records no tensor checksums"),
        "{e}"
    );
    // No prime: 10 sampled characters and the newline.
    let text = String::from_utf8(o.stdout).unwrap();
    assert_eq!(text.chars().count(), 11, "{text:?}");
}

/// Two identical runs write byte-identical tensor files (the metadata keys in one order), and
/// `state.json` differs only in the wall times and throughputs.
#[test]
fn identical_runs_write_identical_checkpoint_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<PathBuf> = (0..3).map(|k| tmp.path().join(format!("r{k}"))).collect();
    for r in &runs {
        let o = rnn_train(r, 12, &[]);
        assert!(o.status.success(), "{}", err(&o));
    }
    for f in [
        "checkpoint/model.safetensors",
        "checkpoint/optimizer.safetensors",
        "best/model.safetensors",
    ] {
        let a = std::fs::read(runs[0].join(f)).unwrap();
        for r in &runs[1..] {
            assert!(a == std::fs::read(r.join(f)).unwrap(), "{f} differs");
        }
        // The header's metadata in key order: `crc32c:<name>` of every tensor, format, step.
        let header = String::from_utf8(a[8..data_range(&a).start].to_vec()).unwrap();
        let pos = |k: &str| header.find(&format!("\"{k}\"")).unwrap_or(usize::MAX);
        if f.ends_with("model.safetensors") {
            let keys = [
                "crc32c:rnn.U",
                "crc32c:rnn.V",
                "crc32c:rnn.W",
                "crc32c:rnn.b_h",
                "crc32c:rnn.b_y",
                "crc32c:state.h",
                "format",
                "step",
            ];
            let at: Vec<usize> = keys.iter().map(|k| pos(k)).collect();
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "{keys:?} at {at:?} in {header}"
            );
        }
    }
    let strip = |r: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.join("checkpoint/state.json")).unwrap())
                .unwrap();
        v["wall_time_s"] = 0.into();
        v["train_config"]["out_dir"] = "".into();
        v["train_config"]["command"]["out"] = "".into();
        v["interval"]["wall_s"] = 0.into();
        for m in v["metrics"].as_array_mut().unwrap() {
            m["wall_time_s"] = 0.into();
            m["items_per_s"] = 0.into();
        }
        v
    };
    assert_eq!(strip(&runs[0]), strip(&runs[1]));
}

/// IDX labels outside the ten classes are an error naming the file and the index, never a
/// wider head.
#[test]
fn idx_labels_outside_the_classes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("idx");
    std::fs::create_dir(&data).unwrap();
    let n = 60u32;
    let mut img = vec![0, 0, 8, 3];
    for d in [n, 8, 8] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    img.extend((0..n * 64).map(|i| (i * 37 % 251) as u8));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend_from_slice(&n.to_be_bytes());
    lab.extend((0..n).map(|i| if i == 17 { 255 } else { (i % 10) as u8 }));
    std::fs::write(data.join("d-images-idx3-ubyte"), &img).unwrap();
    std::fs::write(data.join("d-labels-idx1-ubyte"), &lab).unwrap();
    let o = vit_train(
        &tmp.path().join("run"),
        &["--data", data.to_str().unwrap(), "--patch", "4"],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(
        e.contains("d-labels-idx1-ubyte") && e.contains("label 255 at index 17"),
        "{e}"
    );
    assert!(!tmp.path().join("run/checkpoint").exists());
}

/// A second process training into a folder that a run is using — afresh, `--overwrite` or
/// `--resume` — is refused with the first one's PID; the first run goes on undisturbed and its
/// folder holds its own config only (the helper's seed is 3, the first run's 1).
#[test]
fn a_second_writer_is_refused_with_the_holders_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let mut first = Command::new(env!("CARGO_BIN_EXE_nabla"))
        .args(["rnn", "train", "--hidden", "16", "--k1", "8", "--k2", "8"])
        .args(["--batch", "4", "--eval-every", "50", "--seed", "1"])
        .args(["--log-every", "1", "--plain", "--checkpoint-every", "10"])
        .args(["--steps", "100000000", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().starts_with("train step=20/") {
            break;
        }
    }
    let pid = first.id();
    let out_s = out.to_str().unwrap();
    for extra in [&["--overwrite"][..], &["--resume", out_s], &[]] {
        // Resuming takes the run's own flags (seed 1), so it gives none of the helper's.
        let o = if extra.len() == 2 {
            nabla(&[
                "rnn", "train", "--steps", "50", "--quiet", "--resume", out_s,
            ])
        } else {
            rnn_train(&out, 50, extra)
        };
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {}", err(&o));
        let e = err(&o);
        assert!(
            e.contains("is in use") && e.contains(&format!("process {pid} is training into it")),
            "{extra:?}: {e}"
        );
    }
    // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{rest:?}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["seed"], 1);
    assert_eq!(load_checkpoint(&out).unwrap().model.config.seed, 1);
    assert_eq!(
        std::fs::read_to_string(out.join(".lock")).unwrap().trim(),
        pid.to_string()
    );
    // The lock went with the process: the folder can be resumed now.
    let steps = (load_checkpoint(&out).unwrap().step + 5).to_string();
    let o = nabla(&[
        "rnn", "train", "--steps", &steps, "--quiet", "--resume", out_s,
    ]);
    assert!(o.status.success(), "{}", err(&o));
}

/// What killed runs leave — `.checkpoint.old-PID/` copies at two steps, an incomplete
/// `.checkpoint.tmp-PID/`, `.best.tmp-PID/`, `.metrics.jsonl.PID.tmp`, a write probe — with no
/// `checkpoint/`: readers use the newest old copy, and the next run recovers it (said on
/// stderr), removes the rest, and resumes bit-identically to a run that never stopped.
#[test]
fn stale_temporaries_are_recovered_or_removed_on_start() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    assert!(rnn_train(&run, 10, &[]).status.success());
    let at10 = tmp.path().join("at10");
    copy_dir(&run.join("checkpoint"), &at10);
    assert!(rnn_train(&run, 20, &["--resume", run.to_str().unwrap()])
        .status
        .success());
    // The state of a crash: checkpoint/ renamed away twice, an incomplete new one in the making.
    let ck = run.join("checkpoint");
    copy_dir(&at10, &run.join(".checkpoint.old-4000001"));
    copy_dir(&ck, &run.join(".checkpoint.tmp-4000003"));
    std::fs::remove_file(run.join(".checkpoint.tmp-4000003/optimizer.safetensors")).unwrap();
    std::fs::rename(&ck, run.join(".checkpoint.old-4000002")).unwrap();
    copy_dir(&run.join("best"), &run.join(".best.tmp-4000004"));
    std::fs::write(run.join(".best.tmp-4000004/state.json"), "{\"trunc").unwrap();
    std::fs::write(run.join(".metrics.jsonl.4000005.tmp"), "{\"step\":1").unwrap();
    std::fs::write(run.join(".nabla-write-probe-4000006"), [0u8; 100]).unwrap();
    // A reader picks the newest complete copy, not the first one listed.
    assert_eq!(load_checkpoint(&run).unwrap().step, 20);

    let o = rnn_train(&run, 30, &["--resume", run.to_str().unwrap()]);
    let e = err(&o);
    assert!(o.status.success(), "{e}");
    for want in [
        "note recovered checkpoint/ (step 20)",
        "from .checkpoint.old-4000002",
        "note removed .checkpoint.old-4000001",
        "the checkpoint at step 10 it replaced",
        "note removed .checkpoint.tmp-4000003",
        "an incomplete checkpoint, left by process 4000003",
        "note removed .best.tmp-4000004",
        "note removed .metrics.jsonl.4000005.tmp",
        "note removed .nabla-write-probe-4000006",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert_eq!(
        names(&run),
        [
            ".lock",
            "best",
            "checkpoint",
            "config.json",
            // One events file per session: the run, its resume, and this resume.
            "events.out.tfevents.*",
            "events.out.tfevents.*",
            "events.out.tfevents.*",
            "metrics.jsonl",
            "metrics.svg"
        ]
    );
    let full = tmp.path().join("full");
    assert!(rnn_train(&full, 30, &[]).status.success());
    let (a, b) = (
        load_checkpoint(&run).unwrap(),
        load_checkpoint(&full).unwrap(),
    );
    assert_eq!((a.step, b.step), (30, 30));
    for (p, q) in a.model.store.iter().zip(b.model.store.iter()) {
        let bits =
            |t: &nabla::Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p.value), bits(&q.value), "{}", p.name);
    }
}
