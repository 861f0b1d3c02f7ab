//! Seeded random numbers and parameter initializers.
//!
//! The generator is xoshiro256++ seeded through SplitMix64: tiny, fast, and its whole state is
//! four `u64`s, so checkpoints can store it and a resumed run draws the same numbers.

use crate::error::Result;
use crate::invalid;
use crate::tensor::{Element, Tensor};
use serde::{Deserialize, Serialize};

/// xoshiro256++ pseudo-random generator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Rng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }
    /// An independent stream derived from this one (e.g. one per worker or per purpose).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
    pub fn state(&self) -> [u64; 4] {
        self.s
    }
    pub fn from_state(s: [u64; 4]) -> Self {
        Rng { s }
    }
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Uniform integer in [0, n).
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias is < n / 2^64.
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Standard normal by Box–Muller.
    pub fn normal(&mut self) -> f64 {
        loop {
            let u1 = self.uniform();
            if u1 > 0.0 {
                let u2 = self.uniform();
                return (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            }
        }
    }
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }
    /// Fisher–Yates shuffle.
    pub fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}

/// Fan-in and fan-out of a weight of `shape`, PyTorch's convention: `(out, in, *kernel)`.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape.len() {
        0 => (1, 1),
        1 => (shape[0], shape[0]),
        _ => {
            let rf: usize = shape[2..].iter().product();
            (shape[1] * rf, shape[0] * rf)
        }
    }
}

/// Initialization schemes, all driven by an explicit [`Rng`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Constant(f64),
    Uniform {
        low: f64,
        high: f64,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    /// Normal truncated to `[a, b]` by rejection (timm's `trunc_normal_`).
    TruncNormal {
        mean: f64,
        std: f64,
        a: f64,
        b: f64,
    },
    /// Glorot & Bengio: U(±gain·√(6/(fan_in+fan_out))).
    XavierUniform {
        gain: f64,
    },
    /// N(0, gain²·2/(fan_in+fan_out)).
    XavierNormal {
        gain: f64,
    },
    /// He et al. for ReLU, fan-in mode: U(±√(6/fan_in)).
    KaimingUniform,
    /// N(0, 2/fan_in).
    KaimingNormal,
}

impl Init {
    pub fn tensor<T: Element>(&self, shape: &[usize], rng: &mut Rng) -> Result<Tensor<T>> {
        let (fan_in, fan_out) = fans(shape);
        let t = match *self {
            Init::Zeros => Tensor::zeros(shape),
            Init::Constant(c) => Tensor::full(shape, T::c(c)),
            Init::Uniform { low, high } => {
                if low >= high || !low.is_finite() || !high.is_finite() {
                    return Err(invalid!(
                        "uniform init needs low < high, got [{low}, {high})"
                    ));
                }
                Tensor::from_fn(shape, |_| T::c(low + (high - low) * rng.uniform()))
            }
            Init::Normal { mean, std } => {
                if std < 0.0 || !std.is_finite() {
                    return Err(invalid!("normal init needs std >= 0, got {std}"));
                }
                Tensor::from_fn(shape, |_| T::c(mean + std * rng.normal()))
            }
            Init::TruncNormal { mean, std, a, b } => {
                if std <= 0.0 || a >= b || (a - mean) / std > 5.0 || (mean - b) / std > 5.0 {
                    return Err(invalid!(
                        "truncated normal needs std > 0 and a < b near the mean, got mean {mean} std {std} [{a}, {b}]"
                    ));
                }
                Tensor::from_fn(shape, |_| loop {
                    let v = mean + std * rng.normal();
                    if v >= a && v <= b {
                        break T::c(v);
                    }
                })
            }
            Init::XavierUniform { gain } => {
                let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                Tensor::from_fn(shape, |_| T::c(bound * (2.0 * rng.uniform() - 1.0)))
            }
            Init::XavierNormal { gain } => {
                let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
                Tensor::from_fn(shape, |_| T::c(std * rng.normal()))
            }
            Init::KaimingUniform => {
                let bound = (6.0 / fan_in as f64).sqrt();
                Tensor::from_fn(shape, |_| T::c(bound * (2.0 * rng.uniform() - 1.0)))
            }
            Init::KaimingNormal => {
                let std = (2.0 / fan_in as f64).sqrt();
                Tensor::from_fn(shape, |_| T::c(std * rng.normal()))
            }
        };
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(t: &Tensor<f64>) -> (f64, f64) {
        let n = t.numel() as f64;
        let m = t.data().iter().sum::<f64>() / n;
        let v = t.data().iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
        (m, v)
    }

    #[test]
    fn same_seed_same_numbers() {
        let a: Tensor<f32> = Init::Normal {
            mean: 0.0,
            std: 1.0,
        }
        .tensor(&[5, 7], &mut Rng::new(3))
        .unwrap();
        let b: Tensor<f32> = Init::Normal {
            mean: 0.0,
            std: 1.0,
        }
        .tensor(&[5, 7], &mut Rng::new(3))
        .unwrap();
        let c: Tensor<f32> = Init::Normal {
            mean: 0.0,
            std: 1.0,
        }
        .tensor(&[5, 7], &mut Rng::new(4))
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn initializer_variances() {
        let mut rng = Rng::new(0);
        let shape = [256, 512];
        // Var of U(-b, b) is b²/3.
        let x: Tensor<f64> = Init::XavierUniform { gain: 1.0 }
            .tensor(&shape, &mut rng)
            .unwrap();
        let (m, v) = moments(&x);
        assert!(m.abs() < 2e-3);
        assert!((v / (2.0 / 768.0) - 1.0).abs() < 0.02, "xavier var {v}");
        let k: Tensor<f64> = Init::KaimingNormal.tensor(&shape, &mut rng).unwrap();
        let (_, v) = moments(&k);
        assert!((v / (2.0 / 512.0) - 1.0).abs() < 0.02, "kaiming var {v}");
        let ku: Tensor<f64> = Init::KaimingUniform.tensor(&shape, &mut rng).unwrap();
        let (_, v) = moments(&ku);
        assert!(
            (v / (2.0 / 512.0) - 1.0).abs() < 0.02,
            "kaiming uniform var {v}"
        );
        let t: Tensor<f64> = Init::TruncNormal {
            mean: 0.0,
            std: 1.0,
            a: -2.0,
            b: 2.0,
        }
        .tensor(&shape, &mut rng)
        .unwrap();
        assert!(t.data().iter().all(|&x| (-2.0..=2.0).contains(&x)));
        // Variance of N(0,1) truncated to ±2 is 0.7737.
        let (_, v) = moments(&t);
        assert!((v - 0.7737).abs() < 0.01, "trunc normal var {v}");
        let u: Tensor<f64> = Init::Uniform {
            low: 1.0,
            high: 3.0,
        }
        .tensor(&shape, &mut rng)
        .unwrap();
        let (m, v) = moments(&u);
        assert!((m - 2.0).abs() < 5e-3 && (v - 1.0 / 3.0).abs() < 5e-3);
    }

    #[test]
    fn bad_init_arguments_are_errors() {
        let mut rng = Rng::new(0);
        assert!(Init::Uniform {
            low: 1.0,
            high: 1.0
        }
        .tensor::<f32>(&[2], &mut rng)
        .is_err());
        assert!(Init::Normal {
            mean: 0.0,
            std: -1.0
        }
        .tensor::<f32>(&[2], &mut rng)
        .is_err());
    }

    #[test]
    fn rng_state_roundtrip() {
        let mut a = Rng::new(9);
        a.next_u64();
        let mut b = Rng::from_state(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
