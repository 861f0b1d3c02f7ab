//! A built-in, procedurally drawn image set so every command runs without data: ten shape
//! classes (filled disc, ring, filled square, hollow square, horizontal bar, vertical bar,
//! `\` diagonal, `/` diagonal, plus, cross) at random position, size and stroke width, with
//! pixel noise; one channel, `size × size`, fully determined by the seed.

use super::{ImageDataset, Splits};
use crate::init::Rng;

pub const CLASS_NAMES: [&str; 10] = [
    "disc", "ring", "square", "frame", "hbar", "vbar", "diag", "antidiag", "plus", "cross",
];

fn draw(class: usize, size: usize, rng: &mut Rng) -> Vec<u8> {
    let s = size as f64;
    let r = s * (0.22 + 0.16 * rng.uniform()); // half extent
    let cx = r + (s - 2.0 * r) * rng.uniform();
    let cy = r + (s - 2.0 * r) * rng.uniform();
    let th = s * (0.06 + 0.05 * rng.uniform()); // stroke half-width
    let ink = 170.0 + 85.0 * rng.uniform();
    let mut img = vec![0u8; size * size];
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let (ax, ay) = (dx.abs(), dy.abs());
            let d = (dx * dx + dy * dy).sqrt();
            let inside = match class {
                0 => d <= r,
                1 => (d - r * 0.8).abs() <= th,
                2 => ax <= r * 0.85 && ay <= r * 0.85,
                3 => ax.max(ay) <= r * 0.85 && ax.max(ay) >= r * 0.85 - 2.0 * th,
                4 => ax <= r && ay <= th,
                5 => ay <= r && ax <= th,
                6 => (dx - dy).abs() <= th * std::f64::consts::SQRT_2 && ax <= r && ay <= r,
                7 => (dx + dy).abs() <= th * std::f64::consts::SQRT_2 && ax <= r && ay <= r,
                8 => (ax <= th && ay <= r) || (ay <= th && ax <= r),
                _ => {
                    ((dx - dy).abs() <= th * std::f64::consts::SQRT_2
                        || (dx + dy).abs() <= th * std::f64::consts::SQRT_2)
                        && ax <= r
                        && ay <= r
                }
            };
            let v = if inside { ink } else { 0.0 } + 18.0 * rng.normal();
            img[y * size + x] = v.clamp(0.0, 255.0) as u8;
        }
    }
    img
}

fn make(n: usize, size: usize, rng: &mut Rng, name: &str) -> ImageDataset {
    let mut pixels = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % CLASS_NAMES.len();
        pixels.extend(draw(c, size, rng));
        labels.push(c);
    }
    ImageDataset {
        pixels,
        labels,
        channels: 1,
        height: size,
        width: size,
        num_classes: CLASS_NAMES.len(),
        name: name.into(),
        flip_ok: false,
        classes: CLASS_NAMES.iter().map(|c| c.to_string()).collect(),
        classes_from: "the built-in synthetic shapes".into(),
    }
}

/// `n_train` + `n_test` images of side `size` (balanced classes), reproducible from `seed`.
pub fn shapes(n_train: usize, n_test: usize, size: usize, seed: u64) -> Splits {
    let mut rng = Rng::new(seed);
    let mut test_rng = rng.fork();
    Splits {
        train: make(n_train, size, &mut rng, "synthetic-shapes/train"),
        test: Some(make(n_test, size, &mut test_rng, "synthetic-shapes/test")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_drawn() {
        let a = shapes(40, 10, 16, 3);
        let b = shapes(40, 10, 16, 3);
        assert_eq!(a.train.pixels, b.train.pixels);
        assert_ne!(a.train.pixels, shapes(40, 10, 16, 4).train.pixels);
        assert_eq!(a.train.labels.iter().filter(|&&l| l == 9).count(), 4);
        a.train.validate().unwrap();
        // Every image has ink: a clearly bright pixel.
        for i in 0..a.train.len() {
            assert!(
                a.train.image(i).iter().any(|&p| p > 150),
                "image {i} is blank"
            );
        }
    }
}
