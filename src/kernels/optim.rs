//! Parameter-update kernels of the optimizers (`crate::optim` holds the algorithms, their
//! state and checks). Each update is a map over (parameter, state, gradient) entries with no
//! reduction, so every SIMD path gives the same bits as the scalar loop (the tests assert it);
//! `sqrt` and division are correctly rounded in every lane.

use super::isa::{self, Isa};
use crate::tensor::Element;

/// Plain SGD with L2 weight decay: `w ← w − η (g + λ w)`.
pub fn sgd_on<T: Element>(isa: Isa, w: &mut [T], g: &[T], lr: T, wd: T) {
    isa::dispatch_on(isa, || {
        for (w, &g) in w.iter_mut().zip(g) {
            *w -= lr * (g + wd * *w);
        }
    })
}

/// [`sgd_on`] on the selected path.
pub fn sgd<T: Element>(w: &mut [T], g: &[T], lr: T, wd: T) {
    sgd_on(isa::selected(), w, g, lr, wd)
}

/// The constants of one SGD-with-momentum step (PyTorch's formulation).
#[derive(Clone, Copy, Debug)]
pub struct Momentum<T> {
    /// η.
    pub lr: T,
    /// λ (L2 weight decay added to the gradient).
    pub wd: T,
    /// μ.
    pub mu: T,
    /// `1 − dampening`.
    pub damp: T,
    pub nesterov: bool,
    /// The first step sets `b ← g` (no dampening), as PyTorch does.
    pub first: bool,
}

/// SGD with momentum: `g' = g + λ w`, `b ← g'` (first step) or `μ b + (1 − τ) g'`, then
/// `w ← w − η (g' + μ b)` (Nesterov) or `w ← w − η b`.
pub fn sgd_momentum_on<T: Element>(isa: Isa, w: &mut [T], b: &mut [T], g: &[T], h: Momentum<T>) {
    let Momentum {
        lr,
        wd,
        mu,
        damp,
        nesterov,
        first,
    } = h;
    isa::dispatch_on(isa, || {
        for ((w, b), &g) in w.iter_mut().zip(b.iter_mut()).zip(g) {
            let g = g + wd * *w;
            *b = if first { g } else { mu * *b + damp * g };
            let d = if nesterov { g + mu * *b } else { *b };
            *w -= lr * d;
        }
    })
}

/// [`sgd_momentum_on`] on the selected path.
pub fn sgd_momentum<T: Element>(w: &mut [T], b: &mut [T], g: &[T], h: Momentum<T>) {
    sgd_momentum_on(isa::selected(), w, b, g, h)
}

/// The constants of one Adam / AdamW step at step `t`.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep<T> {
    /// `1 − ηλ` (AdamW's decoupled decay; 1 for Adam).
    pub decay: T,
    /// λ added to the gradient (Adam's L2 term; 0 for AdamW).
    pub l2: T,
    /// `1 − β₁`.
    pub one_m_b1: T,
    /// β₂.
    pub b2: T,
    /// `1 − β₂`.
    pub one_m_b2: T,
    /// `√(1 − β₂ᵗ)`.
    pub bc2_sqrt: T,
    pub eps: T,
    /// `η / (1 − β₁ᵗ)`.
    pub step_size: T,
}

/// Adam/AdamW: `w ← decay·w`, `g' = g + λ w`, `m ← m + (g' − m)(1 − β₁)`,
/// `v ← β₂ v + (1 − β₂) g'²`, `w ← w − step·m / (√v / √(1 − β₂ᵗ) + ε)`.
pub fn adam_on<T: Element>(
    isa: Isa,
    w: &mut [T],
    m: &mut [T],
    v: &mut [T],
    g: &[T],
    h: AdamStep<T>,
) {
    isa::dispatch_on(isa, || {
        for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
            *w *= h.decay;
            let g = g + h.l2 * *w;
            *m += (g - *m) * h.one_m_b1;
            *v = h.b2 * *v + h.one_m_b2 * g * g;
            let denom = v.sqrt() / h.bc2_sqrt + h.eps;
            *w -= h.step_size * *m / denom;
        }
    })
}

/// [`adam_on`] on the selected path.
pub fn adam<T: Element>(w: &mut [T], m: &mut [T], v: &mut [T], g: &[T], h: AdamStep<T>) {
    adam_on(isa::selected(), w, m, v, g, h)
}

/// `g ← c g` (gradient clipping's rescale).
pub fn scale<T: Element>(g: &mut [T], c: T) {
    isa::dispatch(|| g.iter_mut().for_each(|g| *g *= c))
}

/// `Σ gᵢ²` in f64 (the clipping norm; f64 accumulation, left to right, on every path).
pub fn sum_squares_f64<T: Element>(g: &[T]) -> f64 {
    g.iter().map(|&v| v.as_f64() * v.as_f64()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn vecs(rng: &mut Rng, n: usize) -> [Vec<f32>; 4] {
        let mut v = || (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let w = v();
        let m = v();
        let s: Vec<f32> = v().iter().map(|x| x * x).collect();
        [w, m, s, v()]
    }

    /// Every update on every path equals the scalar path bit for bit, and the scalar path
    /// equals the formula written out per entry.
    #[test]
    fn updates_are_bit_exact_on_every_path() {
        let mut rng = Rng::new(17);
        for n in [1usize, 15, 17, 100, 1031] {
            let [w0, m0, v0, g] = vecs(&mut rng, n);
            let h = AdamStep {
                decay: 0.999f32,
                l2: 0.01,
                one_m_b1: 0.1,
                b2: 0.999,
                one_m_b2: 0.001,
                bc2_sqrt: 0.3,
                eps: 1e-8,
                step_size: 0.002,
            };
            let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
            adam_on(Isa::Scalar, &mut w, &mut m, &mut v, &g, h);
            let i = n / 2;
            let wd = w0[i] * h.decay;
            let gi = g[i] + h.l2 * wd;
            let mi = m0[i] + (gi - m0[i]) * h.one_m_b1;
            let vi = h.b2 * v0[i] + h.one_m_b2 * gi * gi;
            let want = wd - h.step_size * mi / (vi.sqrt() / h.bc2_sqrt + h.eps);
            assert_eq!((w[i], m[i], v[i]), (want, mi, vi));
            for nesterov in [false, true] {
                for first in [false, true] {
                    let hm = Momentum {
                        lr: 0.1f32,
                        wd: 0.01,
                        mu: 0.9,
                        damp: 0.8,
                        nesterov,
                        first,
                    };
                    let (mut ws, mut bs) = (w0.clone(), m0.clone());
                    sgd_momentum_on(Isa::Scalar, &mut ws, &mut bs, &g, hm);
                    for isa in isa::detected() {
                        let (mut wi, mut bi) = (w0.clone(), m0.clone());
                        sgd_momentum_on(isa, &mut wi, &mut bi, &g, hm);
                        assert_eq!((&wi, &bi), (&ws, &bs), "momentum on {isa}");
                    }
                }
            }
            let mut ws = w0.clone();
            sgd_on(Isa::Scalar, &mut ws, &g, 0.1, 0.01);
            assert_eq!(ws[i], w0[i] - 0.1 * (g[i] + 0.01 * w0[i]));
            for isa in isa::detected() {
                let (mut wi, mut mi, mut vi) = (w0.clone(), m0.clone(), v0.clone());
                adam_on(isa, &mut wi, &mut mi, &mut vi, &g, h);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&wi), bits(&w), "Adam w on {isa}");
                assert_eq!(bits(&mi), bits(&m), "Adam m on {isa}");
                assert_eq!(bits(&vi), bits(&v), "Adam v on {isa}");
                let mut wsi = w0.clone();
                sgd_on(isa, &mut wsi, &g, 0.1, 0.01);
                assert_eq!(bits(&wsi), bits(&ws), "SGD on {isa}");
            }
        }
    }
}
