//! CIFAR-10 / CIFAR-100 binary batches. A CIFAR-10 record is 1 label byte + 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each 32x32 row-major); a CIFAR-100 record has 2 label bytes
//! (coarse, fine) first — the fine label (100 classes) is used. A file whose length is not a
//! whole number of records, or a label out of range, is an error naming the file.

use super::{ImageDataset, Splits};
use crate::error::{NablaError, Result};
use std::path::{Path, PathBuf};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR variant a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
}

/// A batch file of `len` bytes must hold a whole, non-zero number of records.
fn check_length(len: u64, variant: Variant, path: &Path) -> Result<()> {
    let rec = (variant.label_bytes() + PIXELS) as u64;
    if len == 0 || !len.is_multiple_of(rec) {
        return Err(NablaError::format(
            path,
            format!(
                "{len} bytes is not a whole number of {rec}-byte {variant:?} records (truncated or not a CIFAR batch)"
            ),
        ));
    }
    Ok(())
}

/// Parses the bytes of one batch file, appending to `pixels`/`labels`.
pub fn parse_batch(
    bytes: &[u8],
    variant: Variant,
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<usize>,
) -> Result<()> {
    let rec = variant.label_bytes() + PIXELS;
    check_length(bytes.len() as u64, variant, path)?;
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        // CIFAR-100's coarse label (one of 20 superclasses) is not used, but a value outside
        // them shows that the record is not what it claims to be.
        if variant == Variant::Cifar100 && r[0] >= 20 {
            return Err(NablaError::format(
                path,
                format!(
                    "record {i} has coarse label {}, not a CIFAR-100 superclass (0..19)",
                    r[0]
                ),
            ));
        }
        let l = r[variant.label_bytes() - 1] as usize;
        if l >= variant.classes() {
            return Err(NablaError::format(
                path,
                format!(
                    "record {i} has label {l}, not a {variant:?} class (0..{})",
                    variant.classes()
                ),
            ));
        }
        labels.push(l);
        pixels.extend_from_slice(&r[variant.label_bytes()..]);
    }
    Ok(())
}

/// CIFAR-10's labels 0..9.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

fn load_files(files: &[PathBuf], variant: Variant, name: String) -> Result<ImageDataset> {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        // The length is checked before the file is read: a file that is not whole records is
        // refused without reading (and holding) all of it.
        let len = std::fs::metadata(f)
            .map_err(|e| NablaError::io(f, e))?
            .len();
        check_length(len, variant, f)?;
        let b = std::fs::read(f).map_err(|e| NablaError::io(f, e))?;
        parse_batch(&b, variant, f, &mut pixels, &mut labels)?;
    }
    Ok(ImageDataset {
        pixels,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        num_classes: variant.classes(),
        name,
        flip_ok: true,
        // CIFAR-100's fine names come from a `classes.txt` next to the data, if given.
        classes: match variant {
            Variant::Cifar10 => CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
            Variant::Cifar100 => Vec::new(),
        },
        classes_from: match variant {
            Variant::Cifar10 => "CIFAR-10's standard names".into(),
            Variant::Cifar100 => String::new(),
        },
    })
}

/// Recognises `data_batch_{1..5}.bin` + `test_batch.bin` (CIFAR-10) or `train.bin` + `test.bin`
/// (CIFAR-100) in `dir`; `Ok(None)` if neither is there.
pub fn try_load_dir(dir: &Path) -> Result<Option<Splits>> {
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let batches: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .filter(|p| p.is_file())
        .collect();
    if !batches.is_empty() {
        let test = dir.join("test_batch.bin");
        return Ok(Some(Splits {
            train: load_files(&batches, Variant::Cifar10, format!("{name}/train"))?,
            test: Some(load_files(
                &[test],
                Variant::Cifar10,
                format!("{name}/test"),
            )?),
        }));
    }
    if dir.join("train.bin").is_file() {
        return Ok(Some(Splits {
            train: load_files(
                &[dir.join("train.bin")],
                Variant::Cifar100,
                format!("{name}/train"),
            )?,
            test: Some(load_files(
                &[dir.join("test.bin")],
                Variant::Cifar100,
                format!("{name}/test"),
            )?),
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar10_and_100_records_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Vec::new();
        for l in [3u8, 7] {
            b.push(l);
            b.extend((0..PIXELS).map(|i| (i % 251) as u8 ^ l));
        }
        std::fs::write(dir.path().join("data_batch_1.bin"), &b).unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), &b[..PIXELS + 1]).unwrap();
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(s.train.labels, vec![3, 7]);
        assert_eq!(s.test.as_ref().unwrap().len(), 1);
        assert_eq!(s.train.classes[3], "cat");
        assert_eq!(s.train.image(1)[5], 5 ^ 7);
        // Truncated file.
        std::fs::write(dir.path().join("test_batch.bin"), &b[..PIXELS]).unwrap();
        let e = try_load_dir(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("whole number"),
            "{e}"
        );
        // CIFAR-100: fine label is the second byte; out-of-range label is an error.
        let mut c = vec![1u8, 42];
        c.extend(vec![0u8; PIXELS]);
        let (mut px, mut lb) = (Vec::new(), Vec::new());
        parse_batch(&c, Variant::Cifar100, Path::new("x"), &mut px, &mut lb).unwrap();
        assert_eq!(lb, vec![42]);
        c[1] = 100;
        let e = parse_batch(&c, Variant::Cifar100, Path::new("x"), &mut px, &mut lb).unwrap_err();
        assert!(e.to_string().contains("label 100"), "{e}");
        // The coarse label must be one of the 20 superclasses.
        c[1] = 42;
        c[0] = 20;
        let e = parse_batch(&c, Variant::Cifar100, Path::new("x"), &mut px, &mut lb).unwrap_err();
        assert!(
            e.to_string()
                .contains("record 0 has coarse label 20, not a CIFAR-100 superclass (0..19)"),
            "{e}"
        );
    }
}
