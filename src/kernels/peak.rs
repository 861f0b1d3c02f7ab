//! The machine's ceilings that benchmarks report against: the f32 FMA peak (register-only
//! multiply-add chains on the widest vectors the CPU has), the copy bandwidth (a streaming copy
//! between buffers far larger than the last-level cache), and the CPU's name.
//!
//! **All-threads probes.** A probe on N threads must measure N threads working at once, not
//! the pool waking up. [`on_every_thread`] runs one part on every thread of the rayon pool
//! (`rayon::broadcast`, one job per thread by construction), holds all of them at a barrier
//! until the last has woken, and each thread times its own part; the run's wall time is from
//! the first start to the last end, so a thread that starts late or runs its part after
//! another's shows as a longer wall time, never as a higher rate. Each part is long (≈ 10 ms
//! of FMAs, ≥ 128 MiB of copy) so that timer resolution, the barrier's release and a CPU's
//! frequency ramp for wide vectors (Intel's AVX-512 licence) are small against it. An earlier
//! version timed 0.5 ms of FMAs per thread around the broadcast itself: the wake-up of the
//! second worker and the AVX-512 ramp were of the same size as the work, and a 2-core Xeon
//! reported less on 2 threads (145 GFLOP/s) than on 1 (172).

use super::isa;
use pulp::{Simd, WithSimd};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

/// Independent FMA chains per thread: enough to hide the FMA latency (4–5 cycles) on two
/// pipes, few enough to stay in registers on every path (16 vector registers on AVX2).
const FMA_CHAINS: usize = 12;
/// Iterations of the chains per part: 12·2²² FMAs per lane, ≈ 8 ms at two FMAs per cycle and
/// 3 GHz on any vector width.
const FMA_ITERS: usize = 1 << 22;

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

/// What one thread did in a run of an all-threads probe.
#[derive(Clone, Copy, Debug)]
pub struct ThreadPart {
    /// The rayon pool index of the thread that ran the part.
    pub thread: usize,
    /// Work done: flops or bytes moved.
    pub work: f64,
    /// When the thread reached the start barrier (before any part starts).
    pub arrived: Instant,
    pub start: Instant,
    pub end: Instant,
}

/// One run of a probe on every thread of the pool.
#[derive(Clone, Debug)]
pub struct ProbeRun {
    pub parts: Vec<ThreadPart>,
}

impl ProbeRun {
    /// Total work of all parts.
    pub fn work(&self) -> f64 {
        self.parts.iter().map(|p| p.work).sum()
    }
    /// Seconds from the first part's start to the last part's end.
    pub fn wall_s(&self) -> f64 {
        let (Some(t0), Some(t1)) = (
            self.parts.iter().map(|p| p.start).min(),
            self.parts.iter().map(|p| p.end).max(),
        ) else {
            return 0.0;
        };
        (t1 - t0).as_secs_f64()
    }
    /// Work per second over [`ProbeRun::wall_s`].
    pub fn rate(&self) -> f64 {
        self.work() / self.wall_s().max(1e-12)
    }
}

/// Runs `part(thread, threads)` once on every thread of the current rayon pool, all started
/// together after a barrier, each timed by its own thread; `part` returns the work it did.
pub fn on_every_thread(part: impl Fn(usize, usize) -> f64 + Sync) -> ProbeRun {
    let n = rayon::current_num_threads();
    let barrier = Barrier::new(n);
    let parts = rayon::broadcast(|ctx| {
        let arrived = Instant::now();
        barrier.wait();
        let start = Instant::now();
        let work = part(ctx.index(), ctx.num_threads());
        ThreadPart {
            thread: ctx.index(),
            work,
            arrived,
            start,
            end: Instant::now(),
        }
    });
    ProbeRun { parts }
}

/// [`fma_chains`] on every thread of the pool at once.
pub fn fma_all_threads() -> ProbeRun {
    on_every_thread(|_, _| fma_chains())
}

/// The last-level cache of this CPU in bytes (Linux sysfs), if known.
pub fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best: Option<(u32, usize)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let (Some(level), Some(size)) = (read("level"), read("size")) else {
            continue;
        };
        let Ok(level) = level.trim().parse::<u32>() else {
            continue;
        };
        let size = size.trim();
        let bytes = match size.strip_suffix('K') {
            Some(k) => k.parse::<usize>().ok().map(|k| k << 10),
            None => match size.strip_suffix('M') {
                Some(m) => m.parse::<usize>().ok().map(|m| m << 20),
                None => size.parse::<usize>().ok(),
            },
        };
        if let Some(b) = bytes {
            if best.is_none_or(|(l, _)| level > l) {
                best = Some((level, b));
            }
        }
    }
    best.map(|(_, b)| b)
}

/// Bytes of each of the two copy buffers: 4× the last-level cache, at least 128 MiB (and that
/// when the cache is unknown), at most 1 GiB — far beyond any cache, so the copy streams from
/// memory.
pub fn copy_buffer_bytes() -> usize {
    let llc = last_level_cache_bytes().unwrap_or(0);
    (4 * llc).clamp(128 << 20, 1 << 30)
}

/// Two buffers for the copy-bandwidth probe, first touched by the threads that will copy them
/// (so their pages sit on those threads' memory nodes).
pub struct CopyBuffers {
    src: Vec<f32>,
    dst: Vec<f32>,
}

/// The `k`-th of `parts` near-equal ranges of `0..n`.
fn part_range(n: usize, k: usize, parts: usize) -> std::ops::Range<usize> {
    (n * k / parts)..(n * (k + 1) / parts)
}

impl CopyBuffers {
    /// Two buffers of `bytes` each (rounded down to whole f32s, at least one).
    pub fn new(bytes: usize) -> Self {
        let n = (bytes / 4).max(1);
        // Large zeroed vectors are fresh zero pages, touched first by the fill below.
        let (src, dst) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut b = CopyBuffers { src, dst };
        b.for_parts(|s, d| {
            s.fill(1.0);
            d.fill(0.0);
        });
        b
    }

    /// Runs `f(src part, dst part)` on every thread of the pool, thread k on the k-th part.
    fn for_parts(&mut self, f: impl Fn(&mut [f32], &mut [f32]) + Sync) -> ProbeRun {
        let n = self.src.len();
        let threads = rayon::current_num_threads();
        let mut parts = Vec::with_capacity(threads);
        let (mut s, mut d) = (&mut self.src[..], &mut self.dst[..]);
        for k in 0..threads {
            let len = part_range(n, k, threads).len();
            let (s0, s1) = std::mem::take(&mut s).split_at_mut(len);
            let (d0, d1) = std::mem::take(&mut d).split_at_mut(len);
            parts.push(Mutex::new((s0, d0)));
            (s, d) = (s1, d1);
        }
        on_every_thread(|k, _| {
            // Each thread locks only its own part: no contention.
            let mut p = parts[k].lock().unwrap_or_else(|e| e.into_inner());
            let (s, d) = &mut *p;
            f(s, d);
            (2 * 4 * s.len()) as f64
        })
    }

    /// One streaming copy `dst ← src` on every thread of the pool at once; the work of each
    /// part is its bytes read plus bytes written (2 × 4 bytes per element, STREAM's count; a
    /// CPU that reads a destination line before writing it moves more than is counted).
    pub fn copy_all_threads(&mut self) -> ProbeRun {
        let run = self.for_parts(|s, d| d.copy_from_slice(s));
        std::hint::black_box(&self.dst);
        run
    }
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

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    /// The all-threads FMA probe does its work on every thread: one part per pool thread, each
    /// on a distinct thread with the full count of flops, and the parts are in flight together:
    /// every thread had arrived at the start barrier before any part started (whether the OS
    /// then runs them on separate cores at once depends on the machine's load, so that is not
    /// asserted). Fails if the parts land on one thread or start one after the other.
    #[test]
    fn fma_probe_runs_one_concurrent_part_per_thread() {
        let one = fma_chains();
        for threads in [1usize, 2, 3] {
            let run = pool(threads).install(fma_all_threads);
            assert_eq!(run.parts.len(), threads);
            let mut ids: Vec<usize> = run.parts.iter().map(|p| p.thread).collect();
            ids.sort();
            assert_eq!(ids, (0..threads).collect::<Vec<_>>(), "one part per thread");
            for p in &run.parts {
                assert_eq!(p.work, one, "thread {} did a full part", p.thread);
                for q in &run.parts {
                    assert!(
                        q.arrived <= p.start && p.start <= p.end,
                        "thread {} arrived before thread {} started",
                        q.thread,
                        p.thread
                    );
                }
            }
            assert_eq!(run.work(), threads as f64 * one);
            assert!(run.wall_s() > 0.0 && run.rate() > 0.0);
        }
    }

    /// The rate of a run is the total work over first start to last end: two threads working at
    /// once count twice one thread's rate, two working one after the other count once.
    #[test]
    fn probe_rate_counts_overlap_only() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let part = |thread, s, e| ThreadPart {
            thread,
            work: 100.0,
            arrived: at(s),
            start: at(s),
            end: at(e),
        };
        let together = ProbeRun {
            parts: vec![part(0, 0, 10), part(1, 0, 10)],
        };
        let serial = ProbeRun {
            parts: vec![part(0, 0, 10), part(1, 10, 20)],
        };
        let alone = ProbeRun {
            parts: vec![part(0, 0, 10)],
        };
        assert!((together.rate() / alone.rate() - 2.0).abs() < 1e-9);
        assert!((serial.rate() / alone.rate() - 1.0).abs() < 1e-9);
    }

    /// The copy probe copies every element once, split over the threads, and counts 8 bytes
    /// per element; the buffer size rule holds.
    #[test]
    fn copy_probe_copies_everything_once_per_thread_part() {
        let mut b = CopyBuffers::new(3 << 20);
        b.src
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = i as f32);
        for threads in [1usize, 2, 3] {
            b.dst.fill(-1.0);
            let run = pool(threads).install(|| b.copy_all_threads());
            assert_eq!(run.parts.len(), threads);
            assert_eq!(run.work(), (8 * b.src.len()) as f64);
            assert_eq!(b.dst, b.src);
        }
        let bytes = copy_buffer_bytes();
        assert!((128 << 20..=1 << 30).contains(&bytes));
        if let Some(llc) = last_level_cache_bytes() {
            assert!(bytes >= (4 * llc).min(1 << 30), "{bytes} vs LLC {llc}");
        }
    }

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
