//! `nabla vit …` on bad input: a clear message on stderr, exit status ≠ 0, no panic.

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
        "--no-bar",
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
        "--no-bar",
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
