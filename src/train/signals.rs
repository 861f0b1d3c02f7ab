//! Stop signals: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, Slurm, `docker stop`) and SIGHUP
//! (the terminal closed) all ask a running [`super::Trainer`] to write a checkpoint at the
//! current step, draw its plot and return [`super::Outcome::Interrupted`]; the command then
//! exits with the shell's convention for that signal, `128 + signal number` (130, 143, 129;
//! [`StopSignal::exit_code`]). A second stop signal ends the process at once with the same code,
//! for a user who does not want to wait for the checkpoint (the previous one stays intact: every
//! checkpoint is written to a temporary folder and renamed into place).
//!
//! SIGPIPE (the reader of the progress lines or of stdout has gone away: `nabla rnn train 2>&1
//! | head -5`) stops a run the same way, with a checkpoint and status 141 — the default action
//! would kill it with no checkpoint at all. Every later write to the closed pipe raises SIGPIPE
//! again, so it never counts as the impatient second signal; the write itself fails with EPIPE,
//! which the progress output ignores and a command's stdout reports ([`crate::cli::main`]).
//!
//! The handlers are installed by the trainer when a run starts with
//! [`super::TrainConfig::handle_signals`] (every `nabla … train` command sets it), not when the
//! process starts: other commands keep the default action, so Ctrl-C stops a benchmark at once.

use super::progress::BAR_ON_SCREEN;
use crate::error::{NablaError, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The first stop signal received (its number), 0 while none has arrived. Only lock-free atomic
/// operations touch it inside the handler, which keeps the handler async-signal-safe.
static RECEIVED: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
/// Set by [`host_handles_signals`]: the embedding process (a Python interpreter) keeps its own
/// handlers and forwards a stop with [`raise_stop_signal`].
static HOSTED: AtomicBool = AtomicBool::new(false);

/// A signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP.
    Hangup,
    /// SIGPIPE: an output pipe whose reader has exited.
    BrokenPipe,
}

impl StopSignal {
    const ALL: [StopSignal; 4] = [
        StopSignal::Interrupt,
        StopSignal::Terminate,
        StopSignal::Hangup,
        StopSignal::BrokenPipe,
    ];

    /// The POSIX signal number (2, 15, 1, 13).
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Interrupt => libc::SIGINT,
            StopSignal::Terminate => libc::SIGTERM,
            StopSignal::Hangup => libc::SIGHUP,
            StopSignal::BrokenPipe => libc::SIGPIPE,
        }
    }
    /// `SIGINT`, `SIGTERM`, `SIGHUP`, `SIGPIPE`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
            StopSignal::Hangup => "SIGHUP",
            StopSignal::BrokenPipe => "SIGPIPE",
        }
    }
    /// Exit status of a command stopped by this signal: `128 + number`, what a shell reports for
    /// a process the signal killed, so scripts and schedulers see the same code either way.
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }
    fn from_number(n: usize) -> Option<StopSignal> {
        Self::ALL.into_iter().find(|s| s.number() as usize == n)
    }
}

/// Installs (once per process) the handlers of SIGINT, SIGTERM, SIGHUP and SIGPIPE described in
/// the [module docs](self).
pub fn install_stop_handlers() -> Result<()> {
    if HOSTED.load(Ordering::SeqCst) {
        return Ok(());
    }
    INSTALLED
        .get_or_init(|| {
            for sig in StopSignal::ALL {
                let n = sig.number();
                let action = move || {
                    let first = RECEIVED
                        .compare_exchange(0, n as usize, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if !first && n != libc::SIGPIPE {
                        // Second signal: only async-signal-safe calls (write, _exit) from here.
                        // A progress bar on screen is erased first (an atomic load), so the
                        // message does not land on its last frame.
                        let msg: &[u8] = if BAR_ON_SCREEN.load(Ordering::SeqCst) {
                            b"\r\x1b[2Ksecond stop signal: exiting without a new checkpoint\n"
                        } else {
                            b"\nsecond stop signal: exiting without a new checkpoint\n"
                        };
                        // SAFETY: write(2) on the stderr descriptor with a valid buffer.
                        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                        signal_hook::low_level::exit(128 + n);
                    }
                };
                // SAFETY: the action only performs atomic operations, write(2) and _exit(2),
                // all async-signal-safe; it allocates nothing and takes no lock.
                unsafe { signal_hook::low_level::register(n, action) }
                    .map_err(|e| format!("{}: {e}", sig.name()))?;
            }
            Ok(())
        })
        .clone()
        .map_err(|e| NablaError::Other(format!("cannot install the stop-signal handlers: {e}")))
}

/// The stop signal received so far in this process, if any. It stays set after the trainer has
/// stopped, so the command can exit with [`StopSignal::exit_code`] and a loop over several runs
/// (`gnn train --seeds N`) can stop starting new ones.
pub fn stop_signal() -> Option<StopSignal> {
    StopSignal::from_number(RECEIVED.load(Ordering::SeqCst))
}

/// For a process that embeds nabla and owns the signals itself (the Python module: the
/// interpreter's SIGINT handler raises `KeyboardInterrupt`): from now on the trainer installs
/// no handlers, and the host reports a stop through [`raise_stop_signal`]. Without this, the
/// handlers' "second signal exits at once" would end an interactive interpreter (a notebook
/// kernel) on the second Ctrl-C of a session.
pub fn host_handles_signals() {
    HOSTED.store(true, Ordering::SeqCst);
}

/// Records `sig` as received, exactly as its handler would (the first one wins): a running
/// trainer checkpoints and stops before its next step. For hosts ([`host_handles_signals`]).
pub fn raise_stop_signal(sig: StopSignal) {
    let _ = RECEIVED.compare_exchange(0, sig.number() as usize, Ordering::SeqCst, Ordering::SeqCst);
}

/// Forgets a received stop signal (for a program that trains again after an interruption).
pub fn clear_stop_signal() {
    RECEIVED.store(0, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let codes: Vec<(&str, i32)> = StopSignal::ALL
            .iter()
            .map(|s| (s.name(), s.exit_code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("SIGINT", 130),
                ("SIGTERM", 143),
                ("SIGHUP", 129),
                ("SIGPIPE", 141)
            ]
        );
        for s in StopSignal::ALL {
            assert_eq!(StopSignal::from_number(s.number() as usize), Some(s));
        }
        assert_eq!(StopSignal::from_number(0), None);
    }
}
