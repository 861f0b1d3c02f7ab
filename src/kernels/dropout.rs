//! Dropout kernels: the Bernoulli mask and its application (`nn::dropout` holds the layer).
//!
//! The mask draws one uniform per entry from the caller's seeded generator, in entry order:
//! the stream, hence the mask, is the same on every path and thread count. Applying a mask is
//! a map (bit-identical on every path).

use super::isa::{self, Isa};
use crate::init::Rng;
use crate::tensor::Element;

/// A dropout mask of `n` entries: 0 where `rng.bernoulli(drop)` holds (one draw per entry, in
/// order: PyTorch's `p` is the drop probability), `kept` elsewhere.
pub fn dropout_mask<T: Element>(rng: &mut Rng, n: usize, drop: f64, kept: T) -> Vec<T> {
    bernoulli_select(rng, n, drop, T::zero(), kept)
}

/// `n` entries, `if_true` where `rng.bernoulli(p)` holds (one draw per entry, in order) and
/// `if_false` elsewhere: the same stream and the same decisions as calling `bernoulli`, with the
/// comparison done on the integer the uniform is made of. `uniform() = k·2⁻⁵³ < p` exactly
/// when `k < ⌈p·2⁵³⌉` (the scaling by 2⁵³ is exact), so the threshold is computed once.
pub fn bernoulli_select<T: Element>(
    rng: &mut Rng,
    n: usize,
    p: f64,
    if_true: T,
    if_false: T,
) -> Vec<T> {
    const TWO53: f64 = (1u64 << 53) as f64;
    // NaN and p ≤ 0: never; p ≥ 1: always (k < 2⁵³ for every draw).
    let t = if p > 0.0 {
        (p.min(1.0) * TWO53).ceil() as u64
    } else {
        0
    };
    if let Some(&[a, b]) = T::as_f32(&[if_true, if_false]) {
        // The bits chosen by a conditional move and stored as integers, then reinterpreted in
        // a second pass: a float chosen by a comparison in this loop compiles to a branch (x86
        // has no conditional move for vector registers, and LLVM turns a select of the bits
        // that are then stored as a float back into one), which random decisions mispredict —
        // 4.5 ns an entry against 0.8 ns for the draw itself.
        let (a, b) = (a.to_bits(), b.to_bits());
        // A local copy of the state stays in registers across the loop.
        let mut r = rng.clone();
        let bits: Vec<u32> = (0..n)
            .map(|_| std::hint::select_unpredictable((r.next_u64() >> 11) < t, a, b))
            .collect();
        *rng = r;
        let out: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        return T::from_f32_vec(out).expect("T is f32 here");
    }
    let mut out = vec![if_false; n];
    for o in out.iter_mut() {
        if (rng.next_u64() >> 11) < t {
            *o = if_true;
        }
    }
    out
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

    /// The integer threshold makes the decisions of `rng.bernoulli(p)`, draw for draw, for
    /// every `p` (including 0, 1, NaN, values beyond [0, 1] and ones not a multiple of 2⁻⁵³).
    #[test]
    fn select_makes_the_decisions_of_bernoulli() {
        for p in [
            0.0,
            1.0,
            0.5,
            0.6,
            0.3,
            1e-17,
            1.0 - 1e-16,
            2.0,
            -0.5,
            f64::NAN,
        ] {
            let got = bernoulli_select(&mut Rng::new(9), 5000, p, 1.0f32, 0.0);
            let mut r = Rng::new(9);
            let want: Vec<f32> = (0..5000).map(|_| r.bernoulli(p) as u8 as f32).collect();
            assert_eq!(got, want, "p = {p}");
        }
    }

    /// The mask is the seeded Bernoulli stream (same seed, same mask; the kept fraction within
    /// 4σ of p), and applying it is bit-identical on every path.
    #[test]
    fn masks_are_seeded_and_application_is_exact_on_every_path() {
        let n = 10_007;
        let p = 0.7;
        let a = dropout_mask(&mut Rng::new(3), n, 1.0 - p, 1.0f32 / 0.7);
        let b = dropout_mask(&mut Rng::new(3), n, 1.0 - p, 1.0f32 / 0.7);
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
