//! IDX files (MNIST, Fashion-MNIST, the 8x8 digits), raw or gzip-compressed (detected from the
//! gzip magic bytes `1f 8b`). Layout: `00 00 <type> <ndim>`, ndim big-endian u32 sizes, then the
//! row-major elements; only unsigned bytes (type 0x08) are image/label data here.
//! Every inconsistency (magic, type, truncated or over-long data) is an error naming the file.

use super::{ImageDataset, Splits};
use crate::error::{NablaError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let err = |m: String| NablaError::format(path, m);
    if bytes.len() < 4 {
        return Err(err(format!(
            "truncated IDX header: {} bytes, need at least 4",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "not an IDX file: magic starts with {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 {
        return Err(err("IDX file with 0 dimensions".into()));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated IDX header: {} bytes, {nd} dimensions need {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("IDX dimensions {dims:?} overflow")))?;
    let have = bytes.len() - header;
    if have != n {
        return Err(err(format!(
            "{} IDX file: dims {dims:?} need {n} data bytes, found {have}",
            if have < n { "truncated" } else { "over-long" }
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file, decompressing gzip when the file starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    parse_idx(&gunzip_if_gzip(raw, path)?, path)
}

/// The bytes of a file as read, or decompressed when they start with the gzip magic.
pub fn gunzip_if_gzip(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| NablaError::format(path, format!("corrupt or truncated gzip stream: {e}")))?;
    Ok(out)
}

/// Classes of IDX data in `dir`: as many as `classes.txt` names, else 10 (MNIST, Fashion-MNIST,
/// the 8x8 digits). An IDX label file does not say how many classes there are, and taking the
/// largest label + 1 would let one corrupt byte (255) widen the model's head to 256 classes.
pub fn class_count(dir: &Path) -> Result<usize> {
    Ok(super::classes_txt(dir)?.map_or(10, |names| names.len()))
}

/// Images `(N, rows, cols)` and labels `(N)` from two IDX files → a 1-channel data set of
/// `num_classes` classes; a label outside `0..num_classes` is an error naming the file and the
/// label's index.
pub fn load_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
) -> Result<ImageDataset> {
    let im = read_idx(images)?;
    let lb = read_idx(labels)?;
    if im.dims.len() != 3 {
        return Err(NablaError::format(
            images,
            format!(
                "image IDX must have 3 dims (N, rows, cols), has {:?}",
                im.dims
            ),
        ));
    }
    if lb.dims.len() != 1 {
        return Err(NablaError::format(
            labels,
            format!("label IDX must have 1 dim (N), has {:?}", lb.dims),
        ));
    }
    if im.dims[0] != lb.dims[0] {
        return Err(NablaError::format(
            labels,
            format!(
                "{} labels for {} images in {}",
                lb.dims[0],
                im.dims[0],
                images.display()
            ),
        ));
    }
    let labels_v: Vec<usize> = lb.data.iter().map(|&b| b as usize).collect();
    if let Some((i, l)) = labels_v.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(NablaError::format(
            labels,
            format!(
                "label {l} at index {i} is not a class of this data set (0..{}): IDX data has 10 classes unless a classes.txt next to it names more, one per line",
                num_classes.saturating_sub(1)
            ),
        ));
    }
    let ds = ImageDataset {
        pixels: im.data,
        labels: labels_v,
        channels: 1,
        height: im.dims[1],
        width: im.dims[2],
        num_classes,
        name: name.to_string(),
        flip_ok: false,
        classes: Vec::new(),
        classes_from: String::new(),
    };
    ds.validate()?;
    Ok(ds)
}

/// The first labels of the official Fashion-MNIST files (60,000 train, 10,000 test images):
/// they recognise the data set in a folder whose name does not say "fashion". The chance that
/// other data begins with the same 16 of 10 labels is 10⁻¹⁶; MNIST's begin 5 0 4 1 … / 7 2 1 0 ….
const FASHION_TRAIN_HEAD: [usize; 16] = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9, 5, 5, 7, 9];
const FASHION_TEST_HEAD: [usize; 16] = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1];

/// Whether `labels` are those of an official Fashion-MNIST file (by count and first labels).
fn is_fashion_mnist(labels: &[usize]) -> bool {
    match labels.len() {
        60_000 => labels.starts_with(&FASHION_TRAIN_HEAD),
        10_000 => labels.starts_with(&FASHION_TEST_HEAD),
        _ => false,
    }
}

/// The standard names of 10-class IDX data: Fashion-MNIST's when the folder's name says
/// "fashion" or the labels are those of the official Fashion-MNIST files, digits "0".."9"
/// otherwise (MNIST, the 8x8 digits). Other class counts get none (a `classes.txt` next to the
/// data can name them).
fn name_classes(mut s: Splits, folder: &str) -> Splits {
    let official = is_fashion_mnist(&s.train.labels)
        || s.test.as_ref().is_some_and(|t| is_fashion_mnist(&t.labels));
    let fashion_names = || {
        super::FASHION_MNIST_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect()
    };
    let (names, from) = if s.train.num_classes != 10 {
        (Vec::new(), String::new())
    } else if folder.to_ascii_lowercase().contains("fashion") {
        (
            fashion_names(),
            format!("Fashion-MNIST's names (the folder is called {folder:?})"),
        )
    } else if official {
        (
            fashion_names(),
            "Fashion-MNIST's names (its official label files)".to_string(),
        )
    } else {
        (
            super::digit_names(),
            format!("digits 0-9 (IDX data in {folder:?}, not called *fashion*)"),
        )
    };
    for ds in std::iter::once(&mut s.train).chain(s.test.as_mut()) {
        ds.classes = names.clone();
        ds.classes_from = from.clone();
    }
    s
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Recognises MNIST-style file names in `dir`; `Ok(None)` if there are none.
pub fn try_load_dir(dir: &Path) -> Result<Option<Splits>> {
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let tr_i = find(dir, "train-images-idx3-ubyte");
    let tr_l = find(dir, "train-labels-idx1-ubyte");
    let te_i = find(dir, "t10k-images-idx3-ubyte");
    let te_l = find(dir, "t10k-labels-idx1-ubyte");
    if tr_i.is_some() || te_i.is_some() || tr_l.is_some() || te_l.is_some() {
        let classes = class_count(dir)?;
        let need = |p: Option<PathBuf>, what: &str| {
            p.ok_or_else(|| {
                NablaError::io(
                    dir.join(what),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{what}[.gz] is missing from this IDX data folder"),
                    ),
                )
            })
        };
        let train = load_pair(
            &need(tr_i, "train-images-idx3-ubyte")?,
            &need(tr_l, "train-labels-idx1-ubyte")?,
            &format!("{name}/train"),
            classes,
        )?;
        let test = load_pair(
            &need(te_i, "t10k-images-idx3-ubyte")?,
            &need(te_l, "t10k-labels-idx1-ubyte")?,
            &format!("{name}/test"),
            classes,
        )?;
        return Ok(Some(name_classes(
            Splits {
                train,
                test: Some(test),
            },
            &name,
        )));
    }
    // A single `<x>-images-idx3-ubyte[.gz]` + `<x>-labels-idx1-ubyte[.gz]` pair.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let img = entries.iter().find(|p| {
        let n = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        n.ends_with("-images-idx3-ubyte") || n.ends_with("-images-idx3-ubyte.gz")
    });
    if let Some(img) = img {
        let s = img
            .to_string_lossy()
            .replace("-images-idx3-ubyte", "-labels-idx1-ubyte");
        let lab = PathBuf::from(s);
        let all = load_pair(img, &lab, &name, class_count(dir)?)?;
        // No official split: the last sixth (in file order) is the test set.
        let n = all.len();
        let n_test = n / 6;
        let cut = n - n_test;
        let test = all.slice(cut..n, format!("{name}/test"));
        let train = all.slice(0..cut, format!("{name}/train"));
        return Ok(Some(name_classes(
            Splits {
                train,
                test: Some(test),
            },
            &name,
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn raw_gz_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let img = idx_bytes(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let lab = idx_bytes(&[2], &[3, 9]);
        std::fs::write(p.join("a-images-idx3-ubyte"), &img).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &lab).unwrap();
        let gzb = gz.finish().unwrap();
        std::fs::write(p.join("a-labels-idx1-ubyte"), &gzb).unwrap();
        let ds = load_pair(
            &p.join("a-images-idx3-ubyte"),
            &p.join("a-labels-idx1-ubyte"),
            "a",
            10,
        )
        .unwrap();
        assert_eq!((ds.len(), ds.height, ds.width), (2, 2, 3));
        assert_eq!(ds.labels, vec![3, 9]);
        assert_eq!(ds.image(1), &[7, 8, 9, 10, 11, 12]);
        // Truncated raw data.
        std::fs::write(p.join("t"), &img[..img.len() - 1]).unwrap();
        let e = read_idx(&p.join("t")).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("need 12"), "{e}");
        // Truncated gzip stream.
        std::fs::write(p.join("g.gz"), &gzb[..gzb.len() / 2]).unwrap();
        let e = read_idx(&p.join("g.gz")).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        // Bad magic, bad type, short header.
        let mut bad = img.clone();
        bad[0] = 7;
        std::fs::write(p.join("m"), &bad).unwrap();
        assert!(read_idx(&p.join("m"))
            .unwrap_err()
            .to_string()
            .contains("magic"));
        bad = img.clone();
        bad[2] = 0x0d;
        std::fs::write(p.join("ty"), &bad).unwrap();
        assert!(read_idx(&p.join("ty"))
            .unwrap_err()
            .to_string()
            .contains("0x0d"));
        std::fs::write(p.join("h"), &img[..6]).unwrap();
        assert!(read_idx(&p.join("h"))
            .unwrap_err()
            .to_string()
            .contains("header"));
        // Count mismatch between images and labels.
        std::fs::write(p.join("l3"), idx_bytes(&[3], &[0, 1, 2])).unwrap();
        let e = load_pair(&p.join("a-images-idx3-ubyte"), &p.join("l3"), "x", 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 labels for 2 images"), "{e}");
    }

    #[test]
    fn fashion_mnist_is_recognised_by_its_labels_whatever_the_folder_is_called() {
        let ds = |labels: Vec<usize>, name: &str| ImageDataset {
            pixels: vec![0u8; labels.len()],
            channels: 1,
            height: 1,
            width: 1,
            num_classes: 10,
            name: name.into(),
            flip_ok: false,
            classes: Vec::new(),
            classes_from: String::new(),
            labels,
        };
        let labels = |head: &[usize], n: usize| -> Vec<usize> {
            head.iter()
                .copied()
                .chain((head.len()..n).map(|i| i % 10))
                .collect()
        };
        let fashion = Splits {
            train: ds(labels(&FASHION_TRAIN_HEAD, 60_000), "data/train"),
            test: Some(ds(labels(&FASHION_TEST_HEAD, 10_000), "data/test")),
        };
        let s = name_classes(fashion, "data");
        assert_eq!(s.train.classes[0], "T-shirt/top");
        assert_eq!(s.train.classes[9], "Ankle boot");
        assert_eq!(s.test.as_ref().unwrap().classes, s.train.classes);
        assert!(s.train.classes_from.contains("official label files"));
        // MNIST's labels (5 0 4 1 9 …) in a folder of any name: digits.
        let mnist = Splits {
            train: ds(labels(&[5, 0, 4, 1, 9, 2, 1, 3, 1, 4], 60_000), "d/train"),
            test: None,
        };
        let s = name_classes(mnist, "d");
        assert_eq!(s.train.classes, crate::data::digit_names());
        // The folder's name alone is enough.
        let named = Splits {
            train: ds(labels(&[1, 2, 3], 100), "fashion/train"),
            test: None,
        };
        assert_eq!(
            name_classes(named, "my-Fashion").train.classes[0],
            "T-shirt/top"
        );
    }

    /// A label beyond the classes (a corrupt byte, 255) is an error naming the file and the
    /// index — it never widens the head to 256 classes; `classes.txt` declares a larger count.
    #[test]
    fn labels_outside_the_classes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let img = idx_bytes(&[3, 1, 1], &[0, 1, 2]);
        std::fs::write(p.join("x-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(p.join("x-labels-idx1-ubyte"), idx_bytes(&[3], &[4, 255, 9])).unwrap();
        let e = try_load_dir(p).err().unwrap().to_string();
        assert!(
            e.contains("x-labels-idx1-ubyte")
                && e.contains("label 255 at index 1")
                && e.contains("0..9"),
            "{e}"
        );
        std::fs::write(p.join("x-labels-idx1-ubyte"), idx_bytes(&[3], &[4, 11, 9])).unwrap();
        let names: String = (0..12).map(|k| format!("c{k}\n")).collect();
        std::fs::write(p.join("classes.txt"), names).unwrap();
        let s = crate::data::load_dir(p).unwrap();
        assert_eq!(s.train.num_classes, 12);
        assert_eq!(s.train.labels, vec![4, 11, 9]);
        assert_eq!(s.train.classes[11], "c11");
    }
}
