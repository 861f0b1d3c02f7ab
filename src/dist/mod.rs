//! Data parallelism across processes: one rank per process, each computing the gradients of its
//! share of every global batch; the gradients are summed across ranks and every rank applies the
//! same optimizer step.
//!
//! The engine is MPI (the `mpi` crate over the system's OpenMPI, cargo feature `mpi`); without
//! the feature, or when not launched by `mpirun`, the process is the one rank of a
//! [`Local`] group, and the same code runs: the single-process path *is* the 1-rank case.
//!
//! # The same bits for any number of ranks
//!
//! A model's step cuts its batch into a fixed number of micro-batches (a function of the batch
//! flag, never of the rank count). Rank `r` of `N` computes the gradients of the contiguous
//! micro-batches [`share`]`(M, r, N)`, and [`Group::ordered_sum`] adds them in the
//! single-process order `((0 + g₀) + g₁) + … + g_{M−1}`: floating-point addition does not
//! associate, so a tree or ring sum (MPI's `MPI_SUM`, whose order MPI leaves open) would give
//! other bits for another `N`. The ordered sum is a chain: rank `r` receives the partial sum of
//! ranks `< r`, adds its own micro-batch gradients to it one after the other, and passes it on;
//! the last rank broadcasts the total. Per-micro-batch scalars (the loss) and per-row state
//! (an RNN's carried streams) are gathered in rank order and folded the same way.
//!
//! # Buckets
//!
//! The gradients of all parameters are flattened into one buffer (in the parameter store's
//! order) and communicated in buckets of at most [`bucket_bytes`] (25 MiB, PyTorch DDP's
//! default; `NABLA_BUCKET_MB` sets another cap) and at most 1/N of the gradient: one send, one
//! receive and one broadcast per bucket, never one per tensor. The chain is pipelined over buckets (rank `r + 1` adds bucket
//! `k` while rank `r` adds bucket `k + 1`).
//!
//! Overlap with the backward pass ([`Group::sum_grads_overlapped`]): a bucket of rank `r` is
//! complete when its parameters' gradients are final in *all* of `r`'s micro-batches (they are
//! added in order onto the partial sum of the ranks before it). `Tape::backward_with_hook`
//! announces each parameter the moment the reverse sweep has passed its earliest read, and a
//! communication thread runs each bucket's link of the chain as soon as it is complete —
//! buckets in reverse parameter order, so the last layers' buckets travel while the rank's
//! last micro-batch still computes the first layers' gradients. The bits are those of the
//! plain [`Group::sum_grads`] (the same additions in the same order), which runs instead when
//! the rank has no core to spare for the thread ([`overlap_enabled`]).
//!
//! # Failure
//!
//! Every call into MPI is watched ([`mpi`] module): a call that waits longer than
//! `NABLA_DIST_TIMEOUT_S` (default 300 s), or that still waits 5 s after a stop signal arrived
//! (`mpirun` sends SIGTERM to the survivors when a rank dies), ends the rank with a message
//! saying so; checkpoints are written atomically by rank 0 only, so the last one stays intact.
//! An error on one rank ends the job through `MPI_Abort` ([`abort_job`]).

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::autograd::{ParamId, ParamStore, Tape, Var};
use crate::error::{NablaError, Result};
use crate::invalid;
use crate::tensor::{Element, Tensor};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The point-to-point and collective calls the data-parallel step needs, on raw bytes.
/// [`Local`] is the one-rank group; `mpi::MpiWorld` the MPI one.
pub trait Transport: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sends `buf` to rank `to` (blocking until the buffer can be reused).
    fn send(&self, to: usize, buf: &[u8]) -> Result<()>;
    /// Receives exactly `buf.len()` bytes from rank `from`.
    fn recv(&self, from: usize, buf: &mut [u8]) -> Result<()>;
    /// `buf` of rank `root` into `buf` of every rank.
    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<()>;
    /// Every rank's `local` (of one length on all ranks) into `out`, in rank order.
    fn all_gather(&self, local: &[u8], out: &mut [u8]) -> Result<()>;
    /// Ends every rank of the job with `code` (`MPI_Abort`); a lone process just exits.
    fn abort(&self, code: i32) -> !;
}

/// The group of one process.
pub struct Local;

impl Transport for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn send(&self, to: usize, _buf: &[u8]) -> Result<()> {
        Err(NablaError::Other(format!(
            "send to rank {to} in a one-rank group"
        )))
    }
    fn recv(&self, from: usize, _buf: &mut [u8]) -> Result<()> {
        Err(NablaError::Other(format!(
            "receive from rank {from} in a one-rank group"
        )))
    }
    fn broadcast(&self, _root: usize, _buf: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn all_gather(&self, local: &[u8], out: &mut [u8]) -> Result<()> {
        out.copy_from_slice(local);
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Transport>> = OnceLock::new();

/// Communication counters of this process: bytes sent and received, seconds spent inside
/// communication calls, and the bytes of the ordered sums (the gradient bytes reduced).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_reduced: u64,
    pub seconds: f64,
    /// Seconds the step waited for the reduction after its backward pass (the communication
    /// not hidden behind compute; with overlap off, the whole reduction).
    pub exposed_seconds: f64,
    pub calls: u64,
}

static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static REDUCED: AtomicU64 = AtomicU64::new(0);
static NANOS: AtomicU64 = AtomicU64::new(0);
static EXPOSED_NANOS: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The counters since the start of the process (differences of two readings measure a span).
pub fn stats() -> CommStats {
    CommStats {
        bytes_sent: SENT.load(Ordering::Relaxed),
        bytes_received: RECEIVED.load(Ordering::Relaxed),
        bytes_reduced: REDUCED.load(Ordering::Relaxed),
        seconds: NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
        exposed_seconds: EXPOSED_NANOS.load(Ordering::Relaxed) as f64 * 1e-9,
        calls: CALLS.load(Ordering::Relaxed),
    }
}

impl std::ops::Sub for CommStats {
    type Output = CommStats;
    fn sub(self, o: CommStats) -> CommStats {
        CommStats {
            bytes_sent: self.bytes_sent - o.bytes_sent,
            bytes_received: self.bytes_received - o.bytes_received,
            bytes_reduced: self.bytes_reduced - o.bytes_reduced,
            seconds: self.seconds - o.seconds,
            exposed_seconds: self.exposed_seconds - o.exposed_seconds,
            calls: self.calls - o.calls,
        }
    }
}

/// Times one communication call into the counters.
fn timed<R>(sent: usize, received: usize, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let t = Instant::now();
    let r = f();
    NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    SENT.fetch_add(sent as u64, Ordering::Relaxed);
    RECEIVED.fetch_add(received as u64, Ordering::Relaxed);
    CALLS.fetch_add(1, Ordering::Relaxed);
    r
}

/// The rank count the launcher announced in the environment (Open MPI's
/// `OMPI_COMM_WORLD_SIZE`, MPICH/Hydra's and Slurm's `PMI_SIZE`), if any.
pub fn launcher_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// What [`init`] returns; keep it until the end of `main` (with MPI, dropping it finalizes).
pub struct InitGuard {
    #[cfg(feature = "mpi")]
    _mpi: Option<mpi::Finalize>,
}

/// Sets up the process's group: MPI's world when built with the `mpi` feature and launched by
/// `mpirun` (or another MPI launcher), the one-rank [`Local`] group otherwise. A binary built
/// without the feature launched as one of several ranks is an error (it would train alone,
/// N times over, into one run folder).
pub fn init() -> Result<InitGuard> {
    let n = launcher_size().unwrap_or(1);
    #[cfg(feature = "mpi")]
    {
        if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some()
            || std::env::var_os("PMI_SIZE").is_some()
            || std::env::var_os("PMIX_RANK").is_some()
        {
            let (world, fin) = mpi::MpiWorld::init()?;
            let _ = WORLD.set(Box::new(world));
            return Ok(InitGuard { _mpi: Some(fin) });
        }
        let _ = n;
        Ok(InitGuard { _mpi: None })
    }
    #[cfg(not(feature = "mpi"))]
    {
        if n > 1 {
            return Err(invalid!(
                "launched as one of {n} MPI ranks, but this nabla binary was built without MPI; \
                 rebuild with `cargo build --release --features mpi` (see the README, \
                 \"Data-parallel training with MPI\"), or run it without mpirun"
            ));
        }
        Ok(InitGuard {})
    }
}

/// The process's group (the [`Local`] one unless [`init`] joined an MPI job).
pub fn world() -> Group {
    Group {
        t: WORLD.get().map_or(&Local as &dyn Transport, |b| b.as_ref()),
    }
}

/// Whether this process is rank 0 (the one that owns run folders and prints).
pub fn is_root() -> bool {
    world().rank() == 0
}

/// Prints `error` (prefixed with the rank) and ends every rank of a multi-rank job; returns in
/// a one-rank group. For errors that may have happened on one rank only: the others would wait
/// for it forever.
pub fn abort_job(error: &str) {
    let w = world();
    if w.size() > 1 {
        crate::errln!("{}error: {error}; ending the job", rank_prefix());
        w.t.abort(1);
    }
}

/// `rank R/N: ` in a multi-rank job, empty otherwise (for messages of ranks other than 0).
pub fn rank_prefix() -> String {
    let w = world();
    if w.size() > 1 {
        format!("rank {}/{}: ", w.rank(), w.size())
    } else {
        String::new()
    }
}

/// Fault injection for the failure tests: with `NABLA_DIST_FAULT=R:S`, rank `R` of a
/// multi-rank job kills itself (SIGKILL, as the OOM killer or a lost machine would) when step
/// `S` begins. Without the variable, or in a one-rank group, nothing happens.
pub fn fault_point(step: u64) {
    let w = world();
    if w.size() == 1 {
        return;
    }
    static FAULT: OnceLock<Option<(usize, u64)>> = OnceLock::new();
    let f = FAULT.get_or_init(|| {
        let v = std::env::var("NABLA_DIST_FAULT").ok()?;
        let (r, s) = v.split_once(':')?;
        Some((r.trim().parse().ok()?, s.trim().parse().ok()?))
    });
    if *f == Some((w.rank(), step)) {
        // SAFETY: sends a signal to this process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// The gradient bucket cap in bytes: `NABLA_BUCKET_MB` MiB, default 25 (PyTorch DDP's).
pub fn bucket_bytes() -> usize {
    std::env::var("NABLA_BUCKET_MB")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0 && v.is_finite())
        .map_or(25 << 20, |mb| ((mb * (1 << 20) as f64) as usize).max(8))
}

/// The contiguous share of `n` items (micro-batches, streams) of rank `rank` of `size`: the
/// first `n mod size` ranks get one more.
pub fn share(n: usize, rank: usize, size: usize) -> Range<usize> {
    let (q, r) = (n / size, n % size);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

/// The bytes of a slice of floats (f32 or f64: plain data, no padding).
fn as_bytes<T: Element>(x: &[T]) -> &[u8] {
    debug_assert!(T::DTYPE == "f32" || T::DTYPE == "f64");
    // SAFETY: `Element` is implemented for f32 and f64, which have no padding and no invalid
    // bit patterns; the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

fn as_bytes_mut<T: Element>(x: &mut [T]) -> &mut [u8] {
    debug_assert!(T::DTYPE == "f32" || T::DTYPE == "f64");
    // SAFETY: as in `as_bytes`; every byte pattern is a valid f32/f64.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// `acc += x`, element by element (the one addition every sum of gradients here uses).
fn add_into<T: Element>(acc: &mut [T], x: &[T]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}

/// The buckets of an `n`-float gradient on `size` ranks, in the order every rank reduces them:
/// at most [`bucket_bytes`] and at most 1/N of the gradient each (the chain then pipelines over
/// at least N buckets: chain + broadcast ≈ (3N + log₂N − 3)·(bytes/N/bandwidth + latency)
/// instead of (N + log₂N − 1)·(bytes/bandwidth + latency) with one bucket (k buckets: N − 2 + k
/// chain hops and log₂N − 1 + k broadcast hops)), from the end of the parameter order to its
/// start: the last layers' gradients are final first in a backward pass. Buckets do not change
/// bits (the sum is element by element).
fn buckets<T>(n: usize, size: usize) -> Vec<Range<usize>> {
    buckets_of::<T>(n, size, bucket_bytes())
}

/// [`buckets`] with a cap of `cap_bytes`.
fn buckets_of<T>(n: usize, size: usize, cap_bytes: usize) -> Vec<Range<usize>> {
    let cap = (cap_bytes / std::mem::size_of::<T>())
        .min(n.div_ceil(size))
        .max(1);
    let mut b: Vec<Range<usize>> = (0..n).step_by(cap).map(|s| s..(s + cap).min(n)).collect();
    b.reverse();
    b
}

/// Whether [`Group::sum_grads_overlapped`] overlaps the reduction with the backward pass:
/// `NABLA_DIST_OVERLAP=1` yes, `=0` no (the bits are the same); by default only when the rank
/// has a core to spare for the communication thread (the machine's cores over the ranks on it,
/// `OMPI_COMM_WORLD_LOCAL_SIZE`, exceed the rank's rayon threads). Measured on a 2-core machine
/// with 2 ranks × 1 thread (README): the extra thread, waiting beside the compute thread on a
/// core it does not have, costs more than the hidden traffic saves.
pub fn overlap_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("NABLA_DIST_OVERLAP") {
        Ok(v) => v.trim() != "0",
        Err(_) => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let local: usize = std::env::var("OMPI_COMM_WORLD_LOCAL_SIZE")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1);
            cores / local.max(1) > rayon::current_num_threads()
        }
    })
}

/// This rank's micro-batch gradients, in order, as `Tape::take_param_grads` returns them.
pub type Parts<T> = Vec<Vec<(ParamId, Tensor<T>)>>;

/// Where the parameters' gradients live in the flat buffer of a reduction (the store's order).
struct Layout {
    offsets: Vec<usize>,
    lens: Vec<usize>,
    n: usize,
}

impl Layout {
    fn of<T: Element>(store: &ParamStore<T>) -> Layout {
        let lens: Vec<usize> = store.iter().map(|p| p.grad.numel()).collect();
        let mut offsets = Vec::with_capacity(lens.len());
        let mut n = 0;
        for &l in &lens {
            offsets.push(n);
            n += l;
        }
        Layout { offsets, lens, n }
    }
    /// Adds gradient `g` of parameter `id` into its place in `flat`.
    fn add_grad<T: Element>(
        &self,
        store: &ParamStore<T>,
        flat: &mut [T],
        id: ParamId,
        g: &[T],
    ) -> Result<()> {
        let len = self.lens[id.0];
        if g.len() != len {
            return Err(NablaError::Other(format!(
                "gradient of {} has {} values, the parameter {len}",
                store.get(id).name,
                g.len()
            )));
        }
        add_into(&mut flat[self.offsets[id.0]..][..len], g);
        Ok(())
    }
    /// The store's gradients from the flat `total`.
    fn set_grads<T: Element>(&self, store: &mut ParamStore<T>, total: &[T]) {
        for (p, &o) in store.iter_mut().zip(&self.offsets) {
            let len = p.grad.numel();
            p.grad.data_mut().copy_from_slice(&total[o..o + len]);
        }
    }
}

/// What a local micro-batch's backward tells [`Group::sum_grads_overlapped`]'s thread.
enum Announce<T> {
    /// Parameter `id`'s gradients (one per time it was on the tape) are final.
    Final {
        micro: usize,
        id: ParamId,
        grads: Vec<Vec<T>>,
    },
    /// The micro-batch's backward is over: every parameter not announced has no gradient.
    Done(usize),
}

/// The channel from a rank's micro-batch backward passes to the communication thread of
/// [`Group::sum_grads_overlapped`]; shared by the micro-batches of the step (any thread).
pub struct GradSink<T: Element> {
    tx: std::sync::mpsc::Sender<Announce<T>>,
}

impl<T: Element> GradSink<T> {
    /// `tape.backward_with(loss, seed)` for local micro-batch `micro` (0-based in this rank's
    /// share), handing each parameter's gradients to the communication thread the moment they
    /// are final ([`Tape::backward_with_hook`]).
    pub fn backward(
        &self,
        micro: usize,
        tape: &mut Tape<T>,
        loss: Var,
        seed: Tensor<T>,
    ) -> Result<()> {
        tape.backward_with_hook(loss, seed, &mut |id, grads| {
            let grads = grads.iter().map(|g| g.data().to_vec()).collect();
            // A closed channel: the thread stopped on an error, which the step reports.
            let _ = self.tx.send(Announce::Final { micro, id, grads });
        })?;
        let _ = self.tx.send(Announce::Done(micro));
        Ok(())
    }
}

/// A group of ranks with the operations built on its [`Transport`].
#[derive(Clone, Copy)]
pub struct Group {
    t: &'static dyn Transport,
}

impl Group {
    /// The one-rank group.
    pub fn local() -> Group {
        Group { t: &Local }
    }
    pub fn rank(&self) -> usize {
        self.t.rank()
    }
    pub fn size(&self) -> usize {
        self.t.size()
    }
    /// This rank's share of `n` items ([`share`]).
    pub fn share(&self, n: usize) -> Range<usize> {
        share(n, self.rank(), self.size())
    }

    /// `out = ((0 + p₀) + p₁) + …` over the parts of all ranks in rank order (each rank's
    /// `parts` are its consecutive ones), on every rank, bucket by bucket (see the module docs).
    pub fn ordered_sum<T: Element>(&self, parts: &[&[T]], out: &mut [T]) -> Result<()> {
        let n = out.len();
        if let Some(p) = parts.iter().find(|p| p.len() != n) {
            return Err(NablaError::Other(format!(
                "ordered sum of parts of {} and {n} floats",
                p.len()
            )));
        }
        let buckets = buckets::<T>(n, self.size());
        for b in &buckets {
            self.chain_link(parts, out, b.clone())?;
        }
        self.broadcast_buckets(out, &buckets)?;
        REDUCED.fetch_add(std::mem::size_of_val(out) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Bucket `b`'s link of the chain: `out[b]` = the partial sum of the ranks before this one
    /// (zeros on rank 0) plus this rank's `parts[b]` in order, passed on to the next rank.
    fn chain_link<T: Element, P: AsRef<[T]>>(
        &self,
        parts: &[P],
        out: &mut [T],
        b: Range<usize>,
    ) -> Result<()> {
        let (rank, size) = (self.rank(), self.size());
        let acc = &mut out[b.clone()];
        if rank == 0 {
            acc.fill(T::zero());
        } else {
            let bytes = as_bytes_mut(acc);
            let len = bytes.len();
            timed(0, len, || self.t.recv(rank - 1, bytes))?;
        }
        for p in parts {
            add_into(acc, &p.as_ref()[b.clone()]);
        }
        if rank + 1 < size {
            let bytes = as_bytes(acc);
            timed(bytes.len(), 0, || self.t.send(rank + 1, bytes))?;
        }
        Ok(())
    }

    /// The last rank's total of every bucket to all ranks, bucket by bucket.
    fn broadcast_buckets<T: Element>(&self, out: &mut [T], buckets: &[Range<usize>]) -> Result<()> {
        let size = self.size();
        if size > 1 {
            for b in buckets {
                let bytes = as_bytes_mut(&mut out[b.clone()]);
                let len = bytes.len();
                let (s, r) = if self.rank() == size - 1 {
                    (len, 0)
                } else {
                    (0, len)
                };
                timed(s, r, || self.t.broadcast(size - 1, bytes))?;
            }
        }
        Ok(())
    }

    /// Sets the gradients of `store` to the ordered sum ([`Group::ordered_sum`]) of the
    /// micro-batch gradients of all ranks (`parts`: this rank's, in order, as
    /// `Tape::take_param_grads` returns them), flattened in the store's order.
    pub fn sum_grads<T: Element>(
        &self,
        store: &mut ParamStore<T>,
        parts: Vec<Vec<(ParamId, Tensor<T>)>>,
    ) -> Result<()> {
        let layout = Layout::of(store);
        let flat: Vec<Vec<T>> = parts
            .into_iter()
            .map(|grads| -> Result<Vec<T>> {
                let mut v = vec![T::zero(); layout.n];
                for (id, g) in grads {
                    layout.add_grad(store, &mut v, id, g.data())?;
                }
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&[T]> = flat.iter().map(|v| v.as_slice()).collect();
        let mut total = vec![T::zero(); layout.n];
        self.ordered_sum(&refs, &mut total)?;
        layout.set_grads(store, &total);
        Ok(())
    }

    /// A data-parallel step's gradients with the reduction overlapping the backward pass:
    /// `compute` runs this rank's `local` micro-batches, passing each one's backward through
    /// the [`GradSink`] it is given (micro-batch `0..local`, in order), and returns its result
    /// with the micro-batch gradients. A communication thread starts a bucket's link of the
    /// chain as soon as every parameter in it is final in all of this rank's micro-batches
    /// (buckets in reverse parameter order, as PyTorch DDP: the last layers' gradients are final
    /// first), so the traffic of the last layers runs beside the first layers' backward; then
    /// it broadcasts the totals, which end up in `store`'s gradients — the bits of
    /// [`Group::sum_grads`] of the returned gradients, which is what runs instead (and `compute`
    /// gets no sink) in a one-rank group or when [`overlap_enabled`] says no.
    pub fn sum_grads_overlapped<T: Element, R>(
        &self,
        store: &mut ParamStore<T>,
        local: usize,
        compute: impl FnOnce(&ParamStore<T>, Option<&GradSink<T>>) -> Result<(R, Parts<T>)>,
    ) -> Result<R> {
        if self.size() == 1 || !overlap_enabled() {
            let (r, parts) = compute(store, None)?;
            let t = Instant::now();
            self.sum_grads(store, parts)?;
            EXPOSED_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            return Ok(r);
        }
        let shared: &ParamStore<T> = store;
        let layout = Layout::of(shared);
        let (computed, total) = std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel();
            let layout = &layout;
            let comm = std::thread::Builder::new()
                .name("nabla-dist-comm".into())
                .spawn_scoped(s, move || {
                    let buckets = buckets::<T>(layout.n, self.size());
                    self.reduce_announced(shared, layout, &buckets, local, rx)
                });
            let comm = match comm {
                Ok(c) => c,
                Err(e) => {
                    let e =
                        NablaError::Other(format!("cannot start the communication thread: {e}"));
                    return (Err(e), Err(NablaError::Other(String::new())));
                }
            };
            let sink = GradSink { tx };
            let computed = compute(shared, Some(&sink));
            // Dropping the sink tells the thread that no more gradients come (after a failed
            // backward it then stops at the next bucket instead of waiting).
            drop(sink);
            let t = Instant::now();
            let total = comm.join().unwrap_or_else(|_| {
                Err(NablaError::Other(
                    "the communication thread panicked".into(),
                ))
            });
            EXPOSED_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            (computed, total)
        });
        let (r, _parts) = computed?;
        let total = total?;
        layout.set_grads(store, &total);
        Ok(r)
    }

    /// The communication thread of [`Group::sum_grads_overlapped`]: collects the announced
    /// gradients into one flat buffer per local micro-batch and runs each bucket's link of the
    /// chain once all its parameters are final in every local micro-batch, in the bucket order
    /// of [`buckets`] (every rank's), then broadcasts the totals.
    fn reduce_announced<T: Element>(
        &self,
        store: &ParamStore<T>,
        layout: &Layout,
        buckets: &[Range<usize>],
        local: usize,
        rx: std::sync::mpsc::Receiver<Announce<T>>,
    ) -> Result<Vec<T>> {
        let n = layout.n;
        // The buckets (indices into `buckets`) that parameter p's floats fall into.
        let mut of_param: Vec<Vec<usize>> = vec![Vec::new(); layout.offsets.len()];
        let mut waiting = vec![0usize; buckets.len()];
        for (k, b) in buckets.iter().enumerate() {
            for (p, (&o, &len)) in layout.offsets.iter().zip(&layout.lens).enumerate() {
                if o < b.end && b.start < o + len {
                    of_param[p].push(k);
                    waiting[k] += local;
                }
            }
        }
        let mut flat = vec![vec![T::zero(); n]; local];
        let mut is_final = vec![vec![false; layout.offsets.len()]; local];
        let mut total = vec![T::zero(); n];
        let mut next = 0;
        let mut mark = |micro: usize, p: usize, waiting: &mut [usize]| {
            if !std::mem::replace(&mut is_final[micro][p], true) {
                for &k in &of_param[p] {
                    waiting[k] -= 1;
                }
            }
        };
        while next < buckets.len() {
            if waiting[next] == 0 {
                self.chain_link(&flat, &mut total, buckets[next].clone())?;
                next += 1;
                continue;
            }
            let msg = rx.recv().map_err(|_| {
                NablaError::Other("the backward pass ended before every gradient was final".into())
            })?;
            let (Announce::Final { micro, .. } | Announce::Done(micro)) = msg;
            if micro >= local {
                return Err(NablaError::Other(format!(
                    "gradients of local micro-batch {micro} of {local}"
                )));
            }
            match msg {
                Announce::Final { id, grads, .. } => {
                    for g in &grads {
                        layout.add_grad(store, &mut flat[micro], id, g)?;
                    }
                    mark(micro, id.0, &mut waiting);
                }
                // Parameters the micro-batch's tape never held have no gradient: final now.
                Announce::Done(_) => {
                    for p in 0..layout.offsets.len() {
                        mark(micro, p, &mut waiting);
                    }
                }
            }
        }
        self.broadcast_buckets(&mut total, buckets)?;
        REDUCED.fetch_add(
            std::mem::size_of_val(total.as_slice()) as u64,
            Ordering::Relaxed,
        );
        Ok(total)
    }

    /// Every rank's `local` (any length) concatenated in rank order, on every rank.
    pub fn gather_f64(&self, local: &[f64]) -> Result<Vec<f64>> {
        if self.size() == 1 {
            return Ok(local.to_vec());
        }
        let lens = self.all_gather_u64(local.len() as u64)?;
        let max = *lens.iter().max().unwrap_or(&0) as usize;
        let mut padded = local.to_vec();
        padded.resize(max, 0.0);
        let mut all = vec![0f64; max * self.size()];
        let out = as_bytes_mut(&mut all);
        let (sent, recv) = (max * 8, out.len());
        timed(sent, recv, || self.t.all_gather(as_bytes(&padded), out))?;
        Ok(all
            .chunks(max.max(1))
            .zip(&lens)
            .flat_map(|(c, &l)| c[..l as usize].to_vec())
            .collect())
    }

    /// One `u64` of every rank, in rank order.
    pub fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        let mut out = vec![0u8; 8 * self.size()];
        timed(8, out.len(), || {
            self.t.all_gather(&x.to_le_bytes(), &mut out)
        })?;
        Ok(out
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// Rank 0's `x` on every rank.
    pub fn broadcast_u64(&self, x: u64) -> Result<u64> {
        let mut b = x.to_le_bytes();
        timed(8, 8, || self.t.broadcast(0, &mut b))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Rank 0's `bytes` (of any length) on every rank.
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        if self.size() == 1 {
            return Ok(bytes);
        }
        let n = self.broadcast_u64(bytes.len() as u64)? as usize;
        let mut buf = if self.rank() == 0 {
            bytes
        } else {
            vec![0u8; n]
        };
        // MPI counts are C ints: pieces of at most 1 GiB.
        for piece in buf.chunks_mut(1 << 30) {
            let len = piece.len();
            timed(len, len, || self.t.broadcast(0, piece))?;
        }
        Ok(buf)
    }

    /// The result of every rank: this rank's own error if it failed, an error naming the first
    /// rank that failed if another did, `Ok` only when all succeeded. Every rank must call it
    /// at the same point, so a failure of one rank (rank 0's run folder, say) ends all of them
    /// with a message instead of leaving them waiting.
    pub fn agree<R>(&self, r: Result<R>) -> Result<R> {
        if self.size() == 1 {
            return r;
        }
        let flags = self.all_gather_u64(u64::from(r.is_err()))?;
        match r {
            Err(e) => Err(e),
            Ok(v) => match flags.iter().position(|&f| f != 0) {
                Some(bad) => Err(NablaError::Other(format!(
                    "rank {bad} failed (its message is above); rank {} stops with it",
                    self.rank()
                ))),
                None => Ok(v),
            },
        }
    }

    /// An error unless every rank has the same `bytes` (compared through their CRC-32C): the
    /// flags of a run, which every rank must have been given alike.
    pub fn check_same(&self, what: &str, bytes: &[u8]) -> Result<()> {
        if self.size() == 1 {
            return Ok(());
        }
        let h = crc32c::crc32c(bytes) as u64;
        let all = self.all_gather_u64(h)?;
        if let Some(r) = all.iter().position(|&x| x != all[0]) {
            return Err(invalid!(
                "rank {r} was started with another {what} than rank 0 (hash {:08x} vs {:08x}); \
                 every rank of a job must get the same flags, data and binary",
                all[r],
                all[0]
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_balanced_and_cover() {
        for n in 0..20 {
            for size in 1..6 {
                let mut next = 0;
                for r in 0..size {
                    let s = share(n, r, size);
                    assert_eq!(s.start, next);
                    assert!(s.len() == n / size || s.len() == n / size + 1);
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    /// The communication thread's bookkeeping: gradients announced in any order (a parameter
    /// twice on a tape, one never announced, micro-batches interleaved), many buckets — the
    /// totals of `sum_grads`, bit for bit, and a backward that ends early is an error, not a
    /// hang.
    #[test]
    fn announced_gradients_reduce_to_the_bits_of_sum_grads() {
        let mut store = ParamStore::<f32>::new();
        let shapes: [&[usize]; 4] = [&[7, 5], &[3], &[40], &[2, 9]];
        let ids: Vec<ParamId> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| store.add(format!("p{i}"), Tensor::zeros(s)).unwrap())
            .collect();
        let g = |m: usize, p: usize, k: usize| {
            Tensor::from_fn(shapes[p], |j| {
                ((m * 131 + p * 17 + k * 7 + j) as f32 * 0.61).sin()
            })
        };
        // Micro-batch m: p0 twice, p1 and p3 once, p2 never (not on its tape).
        let parts: Parts<f32> = (0..3)
            .map(|m| {
                vec![
                    (ids[0], g(m, 0, 0)),
                    (ids[1], g(m, 1, 0)),
                    (ids[3], g(m, 3, 0)),
                    (ids[0], g(m, 0, 1)),
                ]
            })
            .collect();
        let mut want = store.clone();
        Group::local().sum_grads(&mut want, parts.clone()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Announced latest micro-batch first, parameters in reverse, p0's two values together.
        for m in (0..3).rev() {
            for p in [3, 1, 0] {
                let grads = parts[m]
                    .iter()
                    .filter(|(id, _)| *id == ids[p])
                    .map(|(_, t)| t.data().to_vec())
                    .collect();
                tx.send(Announce::Final {
                    micro: m,
                    id: ids[p],
                    grads,
                })
                .unwrap();
            }
            tx.send(Announce::Done(m)).unwrap();
        }
        drop(tx);
        let layout = Layout::of(&store);
        let buckets = buckets_of::<f32>(layout.n, 1, 104); // 26 floats each
        assert_eq!(buckets.len(), 4);
        let total = Group::local()
            .reduce_announced(&store, &layout, &buckets, 3, rx)
            .unwrap();
        let mut got = store.clone();
        layout.set_grads(&mut got, &total);
        for (a, b) in got.iter().zip(want.iter()) {
            let bits = |t: &Tensor<f32>| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a.grad), bits(&b.grad), "{}", a.name);
        }
        // Micro-batch 1 never finishes: the thread reports it once the channel closes.
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(Announce::Done(0)).unwrap();
        drop(tx);
        let e = Group::local()
            .reduce_announced(&store, &layout, &buckets, 2, rx)
            .unwrap_err();
        assert!(
            e.to_string().contains("before every gradient was final"),
            "{e}"
        );
    }

    #[test]
    fn local_ordered_sum_is_the_left_fold() {
        let parts: Vec<Vec<f32>> = (0..5)
            .map(|i| {
                (0..7)
                    .map(|j| 1.0 / (1.0 + i as f32 * 3.0 + j as f32))
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![9f32; 7];
        Group::local().ordered_sum(&refs, &mut out).unwrap();
        for j in 0..7 {
            let mut acc = 0f32;
            for p in &parts {
                acc += p[j];
            }
            assert_eq!(out[j].to_bits(), acc.to_bits());
        }
        let mut bad = vec![0f32; 3];
        assert!(Group::local().ordered_sum(&refs, &mut bad).is_err());
    }
}
