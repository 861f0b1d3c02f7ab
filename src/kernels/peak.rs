//! The machine's ceilings that benchmarks report against: the f32 FMA peak (register-only
//! multiply-add chains on the widest vectors the CPU has) and the CPU's name.

use super::isa;
use pulp::{Simd, WithSimd};

/// Independent FMA chains per thread: enough to hide the FMA latency (4–5 cycles) on two
/// pipes, few enough to stay in registers on every path (16 vector registers on AVX2).
const FMA_CHAINS: usize = 12;
const FMA_ITERS: usize = 1 << 18;

struct FmaChains;

impl WithSimd for FmaChains {
    type Output = f64;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> f64 {
        let lanes = std::mem::size_of::<S::f32s>() / 4;
        let m = simd.splat_f32s(0.999_999);
        let a = simd.splat_f32s(1e-7);
        let mut v = [simd.splat_f32s(1.0); FMA_CHAINS];
        for _ in 0..FMA_ITERS {
            for x in v.iter_mut() {
                *x = simd.mul_add_f32s(*x, m, a);
            }
        }
        std::hint::black_box(&v);
        (2 * lanes * FMA_CHAINS * FMA_ITERS) as f64
    }
}

/// One thread's register-only FMA chains on the widest path the CPU has (whatever
/// `NABLA_ISA` selects: the peak is the machine's); returns the flops done.
pub fn fma_chains() -> f64 {
    isa::dispatch_on(isa::best(), FmaChains)
}

/// [`fma_chains`] on a given path (e.g. the AVX2 peak of an AVX-512 machine).
pub fn fma_chains_on(path: isa::Isa) -> f64 {
    isa::dispatch_on(path, FmaChains)
}

/// The CPU's model name (`/proc/cpuinfo` on Linux), or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flop count follows the lanes of the path: 2 flops × lanes × chains × iterations.
    #[test]
    fn fma_chains_count_flops_per_path() {
        for p in isa::detected() {
            let want = (2 * p.f32_lanes() * FMA_CHAINS * FMA_ITERS) as f64;
            assert_eq!(fma_chains_on(p), want, "{p}");
        }
        assert!(!cpu_model().is_empty());
    }
}
