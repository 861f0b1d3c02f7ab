//! Dropout kernels: the Bernoulli mask and its application (`nn::dropout` holds the layer).
//!
//! The mask draws one uniform per entry from the caller's seeded generator, in entry order:
//! the stream, hence the mask, is the same on every path and thread count. Applying a mask is
//! a map (bit-identical on every path).

use super::isa::{self, Isa};
use crate::init::Rng;
use crate::tensor::Element;

/// `n` entries, each `kept` with probability `p` (`rng.bernoulli(p)`, in order) and 0 otherwise.
pub fn bernoulli_mask<T: Element>(rng: &mut Rng, n: usize, p: f64, kept: T) -> Vec<T> {
    (0..n)
        .map(|_| if rng.bernoulli(p) { kept } else { T::zero() })
        .collect()
}

/// `out = x ⊙ mask` on `isa` (the forward of dropout and, with `x = g`, its backward).
pub fn apply_mask_on<T: Element>(isa: Isa, x: &[T], mask: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len().min(mask.len())];
    isa::dispatch_on(isa, || {
        for ((o, &a), &m) in out.iter_mut().zip(x).zip(mask) {
            *o = a * m;
        }
    });
    out
}

/// [`apply_mask_on`] on the selected path.
pub fn apply_mask<T: Element>(x: &[T], mask: &[T]) -> Vec<T> {
    apply_mask_on(isa::selected(), x, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask is the seeded Bernoulli stream (same seed, same mask; the kept fraction within
    /// 4σ of p), and applying it is bit-identical on every path.
    #[test]
    fn masks_are_seeded_and_application_is_exact_on_every_path() {
        let n = 10_007;
        let p = 0.7;
        let a = bernoulli_mask(&mut Rng::new(3), n, p, 1.0f32 / 0.7);
        let b = bernoulli_mask(&mut Rng::new(3), n, p, 1.0f32 / 0.7);
        assert_eq!(a, b);
        let kept = a.iter().filter(|&&m| m != 0.0).count() as f64 / n as f64;
        assert!(
            (kept - p).abs() < 4.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{kept}"
        );
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
        let want: Vec<f32> = x.iter().zip(&a).map(|(x, m)| x * m).collect();
        for isa in isa::detected() {
            assert_eq!(apply_mask_on(isa, &x, &a), want, "{isa}");
        }
    }
}
