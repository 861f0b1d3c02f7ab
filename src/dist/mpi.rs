//! The MPI [`Transport`] (cargo feature `mpi`): rsmpi over the system's MPI (Open MPI on
//! Debian), with a watchdog that turns a wait on a dead rank into a message and an exit.

use super::Transport;
use crate::error::{NablaError, Result};
use mpi::traits::{Communicator, CommunicatorCollectives, Destination, Root, Source};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Finalizes MPI when dropped (at the end of `main`); `mpirun` treats a rank that exits without
/// finalizing as failed.
pub struct Finalize {
    _universe: mpi::environment::Universe,
}

/// The world communicator. All calls go through one mutex (MPI is initialized at
/// `MPI_THREAD_SERIALIZED`: one thread at a time calls it, but that thread may be any of
/// rayon's workers or the reduction's communication thread).
pub struct MpiWorld {
    comm: Mutex<Comm>,
    rank: usize,
    size: usize,
}

struct Comm(mpi::topology::SimpleCommunicator);

// SAFETY: the communicator is a handle to MPI_COMM_WORLD; MPI_THREAD_SERIALIZED allows calls
// from any thread as long as no two run at once, which the mutex around it guarantees.
unsafe impl Send for Comm {}

/// Milliseconds since `EPOCH` at which the current MPI call started (0: none running).
static CALL_START_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Seconds an MPI call may wait before the rank gives up: `NABLA_DIST_TIMEOUT_S`, default 300.
fn timeout_s() -> f64 {
    std::env::var("NABLA_DIST_TIMEOUT_S")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(300.0)
}

/// Seconds a call may still wait after a stop signal arrived: `mpirun` sends SIGTERM to the
/// surviving ranks when one dies, and the survivors' trainers (which catch it to checkpoint)
/// may be waiting on the dead one.
const AFTER_SIGNAL_S: f64 = 5.0;

impl MpiWorld {
    pub fn init() -> Result<(MpiWorld, Finalize)> {
        // Open MPI busy-polls while a call waits. The communication thread of an overlapped
        // reduction waits beside the rank's compute threads, and ranks on one machine share
        // its cores: a spinning wait takes a core from the backward pass. Yield it instead,
        // unless the user chose (the variable is read by MPI_Init; no other thread exists yet).
        const YIELD: &str = "OMPI_MCA_mpi_yield_when_idle";
        if std::env::var_os(YIELD).is_none() {
            std::env::set_var(YIELD, "1");
        }
        // Serialized: calls come from one thread at a time (the trainer's, or the reduction's
        // communication thread while the trainer waits for it), serialized by `comm`'s mutex.
        let (universe, provided) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| {
                NablaError::Other("MPI was already initialized in this process".into())
            })?;
        if provided < mpi::Threading::Serialized {
            return Err(NablaError::Other(format!(
                "this MPI provides thread level {provided:?}; nabla needs MPI_THREAD_SERIALIZED \
                 (its gradient reduction runs on a communication thread)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        start_watchdog(rank, size);
        Ok((
            MpiWorld {
                comm: Mutex::new(Comm(world)),
                rank,
                size,
            },
            Finalize {
                _universe: universe,
            },
        ))
    }

    /// Runs one MPI call under the lock and the watchdog.
    fn call<R>(&self, f: impl FnOnce(&mpi::topology::SimpleCommunicator) -> R) -> R {
        let c = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        CALL_START_MS.store(now_ms(), Ordering::SeqCst);
        let r = f(&c.0);
        CALL_START_MS.store(0, Ordering::SeqCst);
        r
    }
}

/// A thread that ends the rank when an MPI call waits too long (see the module docs).
fn start_watchdog(rank: usize, size: usize) {
    let limit = timeout_s();
    let _ = std::thread::Builder::new()
        .name("nabla-mpi-watchdog".into())
        .spawn(move || {
            let mut signalled_at: Option<Instant> = None;
            let mut told = false;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let start = CALL_START_MS.load(Ordering::SeqCst);
                if crate::train::stop_signal().is_some() && signalled_at.is_none() {
                    signalled_at = Some(Instant::now());
                }
                if start == 0 {
                    continue;
                }
                let waited = (now_ms().saturating_sub(start)) as f64 / 1e3;
                // mpirun sends SIGTERM to the survivors of a dead rank and SIGKILL soon after:
                // say at once what a wait under a stop signal means (in a healthy job the
                // wait ends, and rank 0 checkpoints and stops every rank at the next step).
                if signalled_at.is_some() && waited >= 0.3 && !told {
                    told = true;
                    crate::errln!(
                        "rank {rank}/{size}: {} while waiting for the other ranks: if a rank \
                         died (mpirun names it), the job ends here; the last checkpoint in the \
                         run folder stays intact (rank 0 writes it atomically) and --resume \
                         continues from it, with any number of ranks",
                        crate::train::stop_signal().map_or("a stop signal", |s| s.name())
                    );
                }
                let after_signal = signalled_at
                    .map(|t| t.elapsed().as_secs_f64())
                    .filter(|&s| s >= AFTER_SIGNAL_S && waited >= AFTER_SIGNAL_S);
                if waited >= limit || after_signal.is_some() {
                    let why = match after_signal {
                        Some(_) => format!(
                            "stopped by {} while waiting {waited:.0} s for the other ranks",
                            crate::train::stop_signal().map_or("a signal", |s| s.name())
                        ),
                        None => format!(
                            "no answer from the other ranks for {waited:.0} s \
                             (NABLA_DIST_TIMEOUT_S={limit})"
                        ),
                    };
                    crate::errln!(
                        "rank {rank}/{size}: error: {why}: another rank died, was killed or \
                         cannot be reached; ending this rank. The last checkpoint in the run \
                         folder is intact (rank 0 writes it atomically); continue with --resume"
                    );
                    // Not `exit`: its handlers would finalize MPI, which waits for the dead rank.
                    // SAFETY: `_exit` ends the process at once; nothing is left half-written
                    // that matters (checkpoints are renamed into place).
                    unsafe { libc::_exit(1) };
                }
            }
        });
}

impl Transport for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn send(&self, to: usize, buf: &[u8]) -> Result<()> {
        self.call(|c| c.process_at_rank(to as i32).send(buf));
        Ok(())
    }
    fn recv(&self, from: usize, buf: &mut [u8]) -> Result<()> {
        let st = self.call(|c| c.process_at_rank(from as i32).receive_into(buf));
        let got = st.count(<u8 as mpi::datatype::Equivalence>::equivalent_datatype()) as usize;
        if got != buf.len() {
            return Err(NablaError::Other(format!(
                "received {got} bytes from rank {from}, expected {}",
                buf.len()
            )));
        }
        Ok(())
    }
    fn broadcast(&self, root: usize, buf: &mut [u8]) -> Result<()> {
        self.call(|c| c.process_at_rank(root as i32).broadcast_into(buf));
        Ok(())
    }
    fn all_gather(&self, local: &[u8], out: &mut [u8]) -> Result<()> {
        self.call(|c| c.all_gather_into(local, out));
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        let c = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        c.0.abort(code)
    }
}
