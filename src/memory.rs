//! Memory estimates checked before a run allocates.
//!
//! A flag or a saved configuration that would need more memory than the machine has
//! (`--hidden 1048576`, `depth = 2^32` in a state.json) is refused at start with the number it
//! would need, instead of an allocation failure (an abort) minutes later or a machine driven
//! into swap. Each command adds up what it will hold — parameters and their optimizer state,
//! the activations of one step, buffers — as an [`Estimate`] and calls [`Estimate::check`].
//!
//! Counts are `f64`: a product of hostile sizes (2^63 · 2^63) must not overflow before it is
//! compared, and the estimate only needs a few digits.
//!
//! The memory available is the smaller of `MemAvailable` (`/proc/meminfo`) and what the
//! process's cgroup still allows (`memory.max − memory.current`, cgroup v2). The environment
//! variable `NABLA_MEMORY_LIMIT` (bytes, or with a `K`/`M`/`G`/`T` suffix) lowers it, e.g. to
//! keep one run to a share of a shared machine.

use crate::error::Result;

/// What one command will hold in memory, by part.
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    parts: Vec<(String, f64)>,
}

impl Estimate {
    pub fn new() -> Estimate {
        Estimate::default()
    }

    /// Adds `count` elements of `elem_bytes` bytes each (4 for f32, 8 for f64).
    pub fn elements(mut self, what: impl Into<String>, count: f64, elem_bytes: usize) -> Estimate {
        self.parts.push((what.into(), count * elem_bytes as f64));
        self
    }

    /// Adds `count` f32 values.
    pub fn f32s(self, what: impl Into<String>, count: f64) -> Estimate {
        self.elements(what, count, 4)
    }

    /// Total bytes.
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|(_, b)| b).sum()
    }

    /// Refuses, naming the parts, when the total exceeds the memory available.
    pub fn check(&self, what: &str) -> Result<()> {
        let (avail, source) = available();
        self.check_against(what, avail, &source)
    }

    fn check_against(&self, what: &str, avail: f64, source: &str) -> Result<()> {
        let total = self.total();
        // A NaN total (a size that is itself NaN) is refused too.
        if total.partial_cmp(&avail) != Some(std::cmp::Ordering::Greater) && total.is_finite() {
            return Ok(());
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, b)| *b > 0.0)
            .map(|(n, b)| format!("{n} {}", fmt_bytes(*b)))
            .collect();
        Err(crate::invalid!(
            "{what} would need about {} of memory ({}), more than the {} available ({source})",
            fmt_bytes(total),
            parts.join(", "),
            fmt_bytes(avail)
        ))
    }
}

/// `1.5 GiB`, `320 MiB`, `2.1e+12 TiB` for absurd sizes.
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if v >= 1e6 {
        format!("{v:.1e} {}", UNITS[u])
    } else if u == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses `123`, `64K`, `512M`, `2G`, `1.5T` (powers of 1024).
fn parse_size(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1024f64),
        (i, 'm' | 'M') => (&s[..i], 1024f64.powi(2)),
        (i, 'g' | 'G') => (&s[..i], 1024f64.powi(3)),
        (i, 't' | 'T') => (&s[..i], 1024f64.powi(4)),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mul)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Bytes this process may still allocate and where the figure comes from. Unknown (no
/// `/proc`, another OS) is unlimited: the estimate is a guard, not a requirement.
pub fn available() -> (f64, String) {
    let mut best = (f64::INFINITY, "no limit known".to_string());
    let mut consider = |v: f64, src: String| {
        if v < best.0 {
            best = (v, src);
        }
    };
    if let Some(v) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(mem_available)
    {
        consider(v, "MemAvailable in /proc/meminfo".into());
    }
    // cgroup v2: the limit of the process's own group, less what the group already uses.
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok();
    if let Some(rel) = cg
        .as_deref()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")))
    {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        if let (Some(max), Some(cur)) = (
            read("memory.max").and_then(|s| s.trim().parse::<f64>().ok()),
            read("memory.current").and_then(|s| s.trim().parse::<f64>().ok()),
        ) {
            consider(
                (max - cur).max(0.0),
                format!("the cgroup limit {}", fmt_bytes(max)),
            );
        }
    }
    if let Some(v) = std::env::var("NABLA_MEMORY_LIMIT")
        .ok()
        .as_deref()
        .and_then(parse_size)
    {
        consider(v, "NABLA_MEMORY_LIMIT".into());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_with_the_numbers_and_accepts_what_fits() {
        let e = Estimate::new()
            .f32s("parameters", 3.0 * 1024.0 * 1024.0 * 1024.0)
            .f32s("activations", 1024.0 * 1024.0 * 1024.0);
        assert_eq!(e.total(), 16.0 * 1024f64.powi(3));
        let msg = e
            .check_against("vit train", 8.0 * 1024f64.powi(3), "test")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("about 16.0 GiB"), "{msg}");
        assert!(
            msg.contains("parameters 12.0 GiB, activations 4.0 GiB"),
            "{msg}"
        );
        assert!(
            msg.contains("more than the 8.0 GiB available (test)"),
            "{msg}"
        );
        assert!(e.check_against("x", 17.0 * 1024f64.powi(3), "t").is_ok());
        // Overflowing and NaN sizes are refused, not wrapped around.
        let huge = Estimate::new().f32s("w", (2f64.powi(63)) * 2f64.powi(63));
        assert!(huge.check_against("x", 1e15, "t").is_err());
        let inf = Estimate::new().f32s("w", f64::INFINITY);
        assert!(inf.check_against("x", f64::INFINITY, "t").is_err());
        let nan = Estimate::new().f32s("w", f64::NAN);
        assert!(nan.check_against("x", 1e12, "t").is_err());
    }

    #[test]
    fn sizes_and_meminfo_parse() {
        assert_eq!(parse_size("512M"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_size("2g"), Some(2.0 * 1024f64.powi(3)));
        assert_eq!(parse_size("1000"), Some(1000.0));
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size("lots"), None);
        let m = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   2000000 kB\n";
        assert_eq!(mem_available(m), Some(2_048_000_000.0));
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(300.0 * 1024f64.powi(2)), "300 MiB");
    }
}
