//! Image classification data: loaders for MNIST-style IDX files (raw or gzip), CIFAR-10/100
//! binary batches, folders of PNG/JPEG images by class, and a built-in synthetic set; class
//! names, the validation split carved from the training images, per-channel normalization,
//! augmentation (random crop with padding, horizontal flip) and seeded shuffling.
//!
//! Images are kept as bytes `(N, C, H, W)`; a batch is converted to normalized `f32` on demand.

pub mod cifar;
pub mod idx;
pub mod image_folder;
pub mod planetoid;
pub mod synthetic;
pub mod text;

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::models::resample::{resize_planes, Interp};
use crate::tensor::Tensor;
use std::path::Path;

/// The longest image side any loader accepts, in pixels (PNG/JPEG headers, IDX dimensions):
/// checked before the pixels are decoded or allocated.
pub const MAX_IMAGE_SIDE: usize = 16384;

/// The most classes a data set may have (2^16), images or nodes: a class id or a class count
/// from a file (a label, `classes.txt`) is checked against it before it sizes anything (the
/// model's head, per-class counts).
pub const MAX_CLASSES: usize = 1 << 16;

/// A labelled set of same-sized images, pixels as bytes.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    /// `(N, C, H, W)` row-major.
    pub pixels: Vec<u8>,
    pub labels: Vec<usize>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// Where it came from (for messages and metrics).
    pub name: String,
    /// Whether a horizontal flip keeps the class (natural images yes, digits no).
    pub flip_ok: bool,
    /// Class names by label (`classes[label]`); empty when the data has none.
    pub classes: Vec<String>,
    /// Where the names came from (e.g. "class folder names"), for messages.
    pub classes_from: String,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
    /// Checks internal consistency (label range, pixel count).
    pub fn validate(&self) -> Result<()> {
        if self.pixels.len() != self.len() * self.image_len() {
            return Err(invalid!(
                "{}: {} pixel bytes for {} images of {}x{}x{}",
                self.name,
                self.pixels.len(),
                self.len(),
                self.channels,
                self.height,
                self.width
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= self.num_classes)
        {
            return Err(invalid!(
                "{}: label {l} of image {i} is not in 0..{}",
                self.name,
                self.num_classes
            ));
        }
        Ok(())
    }
    /// The first `n` images (or all).
    pub fn take(&self, n: usize) -> ImageDataset {
        self.slice(0..n.min(self.len()), self.name.clone())
    }
    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f64>, Vec<f64>) {
        let hw = self.height * self.width;
        let mut s = vec![0.0f64; self.channels];
        let mut s2 = vec![0.0f64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len().max(1)) {
            for c in 0..self.channels {
                for &p in &img[c * hw..(c + 1) * hw] {
                    let v = p as f64 / 255.0;
                    s[c] += v;
                    s2[c] += v * v;
                }
            }
        }
        let n = (self.len() * hw).max(1) as f64;
        let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
        let std = s2
            .iter()
            .zip(&mean)
            .map(|(v, m)| (v / n - m * m).max(1e-12).sqrt())
            .collect();
        (mean, std)
    }
}

/// Train and test splits of one data set; `test` is `None` for a folder of training images only.
pub struct Splits {
    pub train: ImageDataset,
    pub test: Option<ImageDataset>,
}

/// Ten digit names "0".."9" (MNIST, the 8x8 digits).
pub fn digit_names() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// Fashion-MNIST's labels 0..9, in the data set's order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
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

impl ImageDataset {
    /// The images `range` as a data set of their own (same classes), named `name`.
    pub fn slice(&self, range: std::ops::Range<usize>, name: String) -> ImageDataset {
        let k = self.image_len();
        ImageDataset {
            pixels: self.pixels[range.start * k..range.end * k].to_vec(),
            labels: self.labels[range.clone()].to_vec(),
            name,
            ..self.clone_meta()
        }
    }
    /// Everything but the pixels and labels.
    fn clone_meta(&self) -> ImageDataset {
        ImageDataset {
            pixels: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: self.num_classes,
            name: self.name.clone(),
            flip_ok: self.flip_ok,
            classes: self.classes.clone(),
            classes_from: self.classes_from.clone(),
        }
    }
    /// Splits off the last `n` images as the validation set: `(train, val)`, disjoint, in file
    /// order (no shuffle, so the split is the same for every seed). Errors unless
    /// `1 <= n < len`.
    pub fn split_off_val(&self, n: usize) -> Result<(ImageDataset, ImageDataset)> {
        let len = self.len();
        if n == 0 || n >= len {
            return Err(invalid!(
                "--val-size {n}: {} has {len} training images; the validation split must hold at least 1 and leave at least 1 for training",
                self.name
            ));
        }
        let cut = len - n;
        let base = self.name.trim_end_matches("/train");
        Ok((
            self.slice(0..cut, format!("{base}/train[..{cut}]")),
            self.slice(cut..len, format!("{base}/train[{cut}..] (validation)")),
        ))
    }
}

/// The default validation size for `n` training images: a tenth, at most 5,000 (MNIST and
/// CIFAR: the last 5,000 of the training set), at least 1 when there are 2 or more images.
pub fn default_val_size(n: usize) -> usize {
    (n / 10).clamp(1.min(n / 2), 5000)
}

/// `bytes` as UTF-8 text, or an error naming the file, the line and the byte offset of the
/// first invalid byte (the standard library's "stream did not contain valid UTF-8" says
/// neither).
pub fn utf8_text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        NablaError::format(
            path,
            format!(
                "line {line}: not UTF-8 text: byte 0x{:02x} at offset {at} is not valid UTF-8 there",
                bytes[at]
            ),
        )
    })
}

/// Reads `dir/classes.txt` (one class name per line, label order) if present.
pub(crate) fn classes_txt(dir: &Path) -> Result<Option<Vec<String>>> {
    let p = dir.join("classes.txt");
    if !p.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).map_err(|e| NablaError::io(&p, e))?;
    let names: Vec<String> = utf8_text(&bytes, &p)?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() > MAX_CLASSES {
        return Err(NablaError::format(
            &p,
            format!(
                "{} class names, more than {MAX_CLASSES} (2^16, the most classes a data set may have)",
                names.len()
            ),
        ));
    }
    Ok(Some(names))
}

/// Applies `classes.txt` next to the data (it wins over built-in names) and checks the count.
fn apply_classes_txt(dir: &Path, s: &mut Splits) -> Result<()> {
    if let Some(names) = classes_txt(dir)? {
        if names.len() != s.train.num_classes {
            return Err(NablaError::format(
                dir.join("classes.txt"),
                format!(
                    "{} class names for a data set of {} classes",
                    names.len(),
                    s.train.num_classes
                ),
            ));
        }
        let from = format!("{}", dir.join("classes.txt").display());
        for ds in std::iter::once(&mut s.train).chain(s.test.as_mut()) {
            ds.classes = names.clone();
            ds.classes_from = from.clone();
        }
    }
    Ok(())
}

/// Loads a data folder, recognising its format from the file names:
/// MNIST/Fashion-MNIST IDX (`train-images-idx3-ubyte[.gz]` …), a single IDX pair
/// (`*-images-idx3-ubyte[.gz]`, split 5/6 : 1/6 in file order), CIFAR-10 (`data_batch_*.bin`,
/// `test_batch.bin`), CIFAR-100 (`train.bin`, `test.bin`) or image folders by class (PNG or
/// JPEG: `train/<class>/*` with an optional `test/<class>/*`, or just `<class>/*`; see
/// [`image_folder`]). A `classes.txt` in the folder (one name per line) names the classes.
pub fn load_dir(dir: &Path) -> Result<Splits> {
    let mut s = load_dir_format(dir)?;
    apply_classes_txt(dir, &mut s)?;
    Ok(s)
}

fn load_dir_format(dir: &Path) -> Result<Splits> {
    if !dir.is_dir() {
        return Err(NablaError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    if let Some(s) = idx::try_load_dir(dir)? {
        return Ok(s);
    }
    if let Some(s) = cifar::try_load_dir(dir)? {
        return Ok(s);
    }
    if let Some(s) = image_folder::try_load_dir(dir)? {
        return Ok(s);
    }
    Err(invalid!(
        "{}: no recognised data set (expected MNIST-style IDX files, CIFAR-10/100 .bin batches, or folders of PNG/JPEG images by class: train/<class>/ [+ test/<class>/] or <class>/)",
        dir.display()
    ))
}

/// `None` → the built-in synthetic set; otherwise [`load_dir`].
pub fn load(dir: Option<&Path>, seed: u64) -> Result<Splits> {
    match dir {
        Some(d) => load_dir(d),
        None => Ok(synthetic::shapes(6000, 1000, 28, seed)),
    }
}

impl Splits {
    /// The test split, or an error saying that `what` needs one.
    pub fn test_or_err(&self, what: &str) -> Result<&ImageDataset> {
        self.test.as_ref().ok_or_else(|| {
            invalid!(
                "{}: this data has no test split (a folder of training images only); {what} needs one (a test/<class>/ folder)",
                self.train.name
            )
        })
    }
}

/// How a batch is turned into model input.
#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Output side length (images are resized bilinearly when it differs from the data).
    pub image_size: usize,
    /// Random-crop padding in pixels (0 = off); training only.
    pub crop_pad: usize,
    /// Random horizontal flips; training only.
    pub hflip: bool,
}

/// Builds a normalized `(B, C, S, S)` batch of the images `idx`, with augmentation when `rng`
/// is given. Crops are taken from the zero-padded (pixel value 0) image before normalization.
pub fn make_batch(
    ds: &ImageDataset,
    idx: &[usize],
    opts: &BatchOptions,
    mut rng: Option<&mut Rng>,
) -> Result<(Tensor<f32>, Vec<usize>)> {
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    if opts.mean.len() != c || opts.std.len() != c {
        return Err(invalid!(
            "normalization has {} means / {} stds for {c}-channel images",
            opts.mean.len(),
            opts.std.len()
        ));
    }
    let s = opts.image_size;
    let mut out = Vec::with_capacity(idx.len() * c * s * s);
    let mut labels = Vec::with_capacity(idx.len());
    let hw = h * w;
    let mut img = vec![0.0f32; c * hw];
    for &i in idx {
        if i >= ds.len() {
            return Err(invalid!("image index {i} out of range 0..{}", ds.len()));
        }
        labels.push(ds.labels[i]);
        let src = ds.image(i);
        let (dy, dx, flip) = match rng.as_deref_mut() {
            Some(r) => {
                let p = opts.crop_pad as isize;
                let dy = if p > 0 {
                    r.below(2 * p as usize + 1) as isize - p
                } else {
                    0
                };
                let dx = if p > 0 {
                    r.below(2 * p as usize + 1) as isize - p
                } else {
                    0
                };
                (dy, dx, opts.hflip && r.bernoulli(0.5))
            }
            None => (0, 0, false),
        };
        // Shifted (crop of the padded image) and possibly mirrored copy, in [0, 1].
        for ch in 0..c {
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let v = if sy >= 0 && sy < h as isize && sx >= 0 && sx < w as isize {
                        src[ch * hw + sy as usize * w + sx as usize] as f32 / 255.0
                    } else {
                        0.0
                    };
                    img[ch * hw + y * w + x] = v;
                }
            }
        }
        resize_and_normalize(&img, c, (h, w), opts, &mut out)?;
    }
    Ok((Tensor::new(&[idx.len(), c, s, s], out)?, labels))
}

/// Appends the model input of one image `img (C, H, W)` with values in [0, 1]: resized
/// bilinearly to `opts.image_size` squared when its size differs, then `(v − mean_c) / std_c`.
pub fn resize_and_normalize(
    img: &[f32],
    c: usize,
    (h, w): (usize, usize),
    opts: &BatchOptions,
    out: &mut Vec<f32>,
) -> Result<()> {
    let s = opts.image_size;
    if opts.mean.len() != c || opts.std.len() != c {
        return Err(invalid!(
            "normalization has {} means / {} stds for {c}-channel images",
            opts.mean.len(),
            opts.std.len()
        ));
    }
    let resized;
    let plane: &[f32] = if s == h && s == w {
        img
    } else {
        resized = resize_planes(img, c, (h, w), (s, s), Interp::Bilinear, false)?;
        &resized
    };
    for ch in 0..c {
        let (m, sd) = (opts.mean[ch] as f32, opts.std[ch] as f32);
        out.extend(
            plane[ch * s * s..(ch + 1) * s * s]
                .iter()
                .map(|&v| (v - m) / sd),
        );
    }
    Ok(())
}

/// A seeded permutation of `0..n` for epoch `epoch` (same seed and epoch → same order).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(epoch as u64 + 1)));
    rng.permutation(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageDataset {
        ImageDataset {
            pixels: (0..2 * 2 * 3 * 3).map(|v| (v * 7) as u8).collect(),
            labels: vec![0, 1],
            channels: 2,
            height: 3,
            width: 3,
            num_classes: 2,
            name: "tiny".into(),
            flip_ok: true,
            classes: vec!["a".into(), "b".into()],
            classes_from: "test".into(),
        }
    }

    /// The validation split is the last `n` images, disjoint from the training part; sizes
    /// outside 1..len are errors.
    #[test]
    fn validation_split_is_the_disjoint_tail() {
        let ds = ImageDataset {
            pixels: (0..10u8).collect(),
            labels: (0..10).map(|i| i % 3).collect(),
            channels: 1,
            height: 1,
            width: 1,
            num_classes: 3,
            name: "d/train".into(),
            flip_ok: false,
            classes: vec!["x".into(), "y".into(), "z".into()],
            classes_from: "test".into(),
        };
        let (tr, va) = ds.split_off_val(3).unwrap();
        assert_eq!(tr.pixels, (0..7u8).collect::<Vec<_>>());
        assert_eq!(va.pixels, vec![7, 8, 9]);
        assert_eq!(va.labels, vec![1, 2, 0]);
        assert_eq!(va.classes, ds.classes);
        assert!(va.name.contains("validation"), "{}", va.name);
        for bad in [0, 10, 11] {
            let e = ds.split_off_val(bad).unwrap_err().to_string();
            assert!(
                e.contains("--val-size") && e.contains("10 training images"),
                "{e}"
            );
        }
        assert_eq!(default_val_size(60000), 5000);
        assert_eq!(default_val_size(50000), 5000);
        assert_eq!(default_val_size(1000), 100);
        assert_eq!(default_val_size(5), 1);
        assert_eq!(default_val_size(1), 0);
    }

    #[test]
    fn normalization_crop_flip_and_shuffle() {
        let ds = tiny();
        ds.validate().unwrap();
        let opts = BatchOptions {
            mean: vec![0.5, 0.0],
            std: vec![0.25, 1.0],
            image_size: 3,
            crop_pad: 0,
            hflip: false,
        };
        let (x, y) = make_batch(&ds, &[1, 0], &opts, None).unwrap();
        assert_eq!(x.shape(), &[2, 2, 3, 3]);
        assert_eq!(y, vec![1, 0]);
        let want = ((18.0 * 7.0) / 255.0 - 0.5) / 0.25;
        assert!((x.data()[0] as f64 - want).abs() < 1e-6);
        // Flip only: mirrored rows.
        let f = BatchOptions {
            hflip: true,
            ..opts.clone()
        };
        let mut flipped = false;
        let mut rng = Rng::new(1);
        for _ in 0..8 {
            let (xa, _) = make_batch(&ds, &[0], &f, Some(&mut rng)).unwrap();
            let d = xa.data();
            if d[0] != x.data()[18] {
                assert_eq!(d[0], x.data()[18 + 2]);
                flipped = true;
            }
        }
        assert!(flipped);
        // Crop with padding: shifted copies with zero (normalized) borders stay the same size.
        let c = BatchOptions {
            crop_pad: 1,
            ..opts.clone()
        };
        let (xc, _) = make_batch(&ds, &[0, 1], &c, Some(&mut Rng::new(3))).unwrap();
        assert_eq!(xc.shape(), &[2, 2, 3, 3]);
        // Seeded shuffles are reproducible permutations.
        let a = epoch_order(100, 5, 2);
        assert_eq!(a, epoch_order(100, 5, 2));
        assert_ne!(a, epoch_order(100, 5, 3));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        // Bad normalization is an error.
        let bad = BatchOptions {
            mean: vec![0.5],
            ..opts
        };
        assert!(make_batch(&ds, &[0], &bad, None).is_err());
    }
}
