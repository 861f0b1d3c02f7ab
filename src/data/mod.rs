//! Image classification data: loaders for MNIST-style IDX files (raw or gzip), CIFAR-10/100
//! binary batches, folders of PNG images by class, and a built-in synthetic set; per-channel
//! normalization, augmentation (random crop with padding, horizontal flip) and seeded shuffling.
//!
//! Images are kept as bytes `(N, C, H, W)`; a batch is converted to normalized `f32` on demand.

pub mod cifar;
pub mod idx;
pub mod planetoid;
pub mod png_folder;
pub mod synthetic;
pub mod text;

use crate::error::{NablaError, Result};
use crate::init::Rng;
use crate::invalid;
use crate::models::resample::{resize_planes, Interp};
use crate::tensor::Tensor;
use std::path::Path;

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
        let n = n.min(self.len());
        ImageDataset {
            pixels: self.pixels[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
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

/// Train and test splits of one data set.
pub struct Splits {
    pub train: ImageDataset,
    pub test: ImageDataset,
}

/// Loads a data folder, recognising its format from the file names:
/// MNIST/Fashion-MNIST IDX (`train-images-idx3-ubyte[.gz]` …), a single IDX pair
/// (`*-images-idx3-ubyte[.gz]`, split 5/6 : 1/6 in file order), CIFAR-10 (`data_batch_*.bin`,
/// `test_batch.bin`), CIFAR-100 (`train.bin`, `test.bin`) or PNG folders (`train/<class>/*.png`,
/// `test/<class>/*.png`).
pub fn load_dir(dir: &Path) -> Result<Splits> {
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
    if let Some(s) = png_folder::try_load_dir(dir)? {
        return Ok(s);
    }
    Err(invalid!(
        "{}: no recognised data set (expected MNIST-style IDX files, CIFAR-10/100 .bin batches, or train/ and test/ folders of PNG images by class)",
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
        let resized;
        let plane: &[f32] = if s == h && s == w {
            &img
        } else {
            resized = resize_planes(&img, c, (h, w), (s, s), Interp::Bilinear, false)?;
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
    }
    Ok((Tensor::new(&[idx.len(), c, s, s], out)?, labels))
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
        }
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
