//! Which SIMD path the hand-written kernels take, chosen once at run time.
//!
//! The binary is built for the x86-64 (or aarch64) baseline; every kernel in `kernels/` is
//! compiled once per instruction set through `pulp` and the widest one the CPU has is taken at
//! run time — AVX-512F (pulp's `V4`), AVX2+FMA (`V3`), NEON on aarch64, or the scalar fallback.
//! `NABLA_ISA=scalar|avx2|avx512|neon` forces a path (for comparing them, or for measuring how
//! an older CPU would fare); a path the CPU lacks is an error at start ([`init`]), never a SIGILL.
//!
//! `gemm` picks its own micro-kernels by the same kind of detection and does not read
//! `NABLA_ISA`: the variable governs nabla's own kernels.

use crate::errln;
use crate::error::{NablaError, Result};
use pulp::WithSimd;
use std::sync::OnceLock;

/// An instruction-set path of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, one lane: the reference every other path is tested against.
    Scalar,
    /// x86-64-v3: AVX2 + FMA, 8 f32 lanes.
    Avx2,
    /// x86-64-v4: AVX-512F/BW/CD/DQ/VL, 16 f32 lanes.
    Avx512,
    /// aarch64 NEON, 4 f32 lanes.
    Neon,
}

/// Every path, widest first (the order [`best`] prefers).
pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar];

impl Isa {
    /// The name `NABLA_ISA` takes and `nabla info` prints.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// f32 lanes of one vector register on this path.
    pub fn f32_lanes(self) -> usize {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
            Isa::Neon => 4,
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        ALL.into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU can run the path (run-time detection, as pulp's own).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => pulp::x86::V3::try_new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => pulp::x86::V4::try_new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pulp::aarch64::Neon::try_new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The paths this CPU supports, widest first (always ends with `Scalar`).
pub fn detected() -> Vec<Isa> {
    ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The widest path this CPU supports.
pub fn best() -> Isa {
    detected()[0]
}

/// The path named by `NABLA_ISA`, or [`best`] when it is unset or empty.
pub fn from_env() -> Result<Isa> {
    match std::env::var("NABLA_ISA") {
        Ok(s) if !s.trim().is_empty() => from_name(&s),
        _ => Ok(best()),
    }
}

/// Parses and checks a path name against this CPU.
pub fn from_name(s: &str) -> Result<Isa> {
    let shown: String = s.chars().take(40).collect();
    let names: Vec<&str> = ALL.iter().map(|i| i.name()).collect();
    let isa = Isa::parse(s).ok_or_else(|| {
        NablaError::InvalidArgument(format!(
            "NABLA_ISA={shown:?} is not a kernel path (one of: {})",
            names.join(", ")
        ))
    })?;
    if !isa.is_supported() {
        let have: Vec<&str> = detected().iter().map(|i| i.name()).collect();
        return Err(NablaError::InvalidArgument(format!(
            "NABLA_ISA={} names a path this CPU lacks (it supports: {})",
            isa.name(),
            have.join(", ")
        )));
    }
    Ok(isa)
}

static SELECTED: OnceLock<Isa> = OnceLock::new();

/// Reads and checks `NABLA_ISA` once; the `nabla` binary calls it first, so a bad value ends
/// the run with a clear error before any kernel runs.
pub fn init() -> Result<Isa> {
    let isa = from_env()?;
    Ok(*SELECTED.get_or_init(|| isa))
}

/// The path the kernels take. Without a prior [`init`], a bad `NABLA_ISA` is reported on stderr
/// once and the widest supported path is used (a library caller never gets a SIGILL or a panic).
pub fn selected() -> Isa {
    *SELECTED.get_or_init(|| {
        from_env().unwrap_or_else(|e| {
            errln!("nabla: {e}; using {}", best());
            best()
        })
    })
}

/// Runs `op` on the selected path.
#[inline(always)]
pub fn dispatch<Op: WithSimd>(op: Op) -> Op::Output {
    dispatch_on(selected(), op)
}

/// Runs `op` compiled for `isa` (tests run every kernel on every supported path this way).
/// A path the CPU lacks runs the scalar code instead: never an illegal instruction.
#[inline(always)]
pub fn dispatch_on<Op: WithSimd>(isa: Isa, op: Op) -> Op::Output {
    use pulp::Simd;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => match pulp::x86::V4::try_new() {
            Some(s) => Simd::vectorize(s, op),
            None => Simd::vectorize(pulp::Scalar::new(), op),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => match pulp::x86::V3::try_new() {
            Some(s) => Simd::vectorize(s, op),
            None => Simd::vectorize(pulp::Scalar::new(), op),
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => match pulp::aarch64::Neon::try_new() {
            Some(s) => Simd::vectorize(s, op),
            None => Simd::vectorize(pulp::Scalar::new(), op),
        },
        _ => Simd::vectorize(pulp::Scalar::new(), op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for i in ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
        }
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        let e = from_name("sse9").unwrap_err().to_string();
        assert!(e.contains("sse9") && e.contains("avx512"), "{e}");
        // A path of the other architecture is never supported.
        #[cfg(target_arch = "x86_64")]
        assert!(from_name("neon").unwrap_err().to_string().contains("lacks"));
        assert_eq!(from_name("scalar").unwrap(), Isa::Scalar);
    }

    #[test]
    fn detected_ends_with_scalar_and_best_is_first() {
        let d = detected();
        assert_eq!(*d.last().unwrap(), Isa::Scalar);
        assert_eq!(best(), d[0]);
        // AVX-512 implies AVX2 in pulp's levels.
        if d.contains(&Isa::Avx512) {
            assert!(d.contains(&Isa::Avx2));
        }
    }

    /// The same closure runs on every path and gives the same result (integer work).
    #[test]
    fn dispatch_on_runs_every_path() {
        for isa in detected() {
            let s = dispatch_on(isa, || (1..=100u64).sum::<u64>());
            assert_eq!(s, 5050, "{isa}");
        }
    }
}
