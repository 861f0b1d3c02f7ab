//! `nabla.train(task, **flags)`: `nabla TASK train` from Python.
//!
//! The keyword arguments become the command line's tokens (`lr=1e-3` → `--lr 1e-3`) and are
//! parsed by the command line's own clap parser, so the flags, their defaults and their checks
//! are the CLI's and cannot drift. The run goes on a thread of its own; the calling thread,
//! holding the GIL only between waits of 100 ms, relays the run's output to Python's
//! `sys.stdout` / `sys.stderr` (a notebook shows them; the trainer's progress lines go there)
//! and polls for signals: Ctrl-C (KeyboardInterrupt) becomes nabla's stop request, the trainer
//! writes its checkpoint and stops, and then KeyboardInterrupt is raised in Python.

use crate::{json_to_py, panic_message, pool, to_pyerr};
use clap::{CommandFactory, FromArgMatches};
use nabla::cli::{resume::Typed, Cli};
use nabla::train::{clear_stop_signal, raise_stop_signal, StopSignal};
use pyo3::exceptions::{PyException, PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyTuple};
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The tasks whose `train` subcommand runs on the shared trainer.
const TASKS: &[&str] = &["vit", "rnn", "gnn"];

/// The command line `nabla TASK train --flag value …` of the keyword arguments.
fn argv(task: &str, flags: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
    let cmd = Cli::command();
    let train = cmd
        .find_subcommand(task)
        .and_then(|c| c.find_subcommand("train"))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown task {task:?} (expected one of {})",
                TASKS.join(", ")
            ))
        })?;
    let mut out = vec!["nabla".to_string(), task.to_string(), "train".to_string()];
    let Some(flags) = flags else { return Ok(out) };
    for (k, v) in flags.iter() {
        let key: String = k.extract()?;
        let long = key.replace('_', "-");
        let flag = format!("--{long}");
        if v.is_none() {
            continue;
        }
        let takes_value = train
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .map(|a| a.get_action().takes_values());
        if let Ok(b) = v.cast::<PyBool>() {
            let b = b.is_true();
            match takes_value {
                // `--hflip false`.
                Some(true) => out.extend([flag, b.to_string()]),
                // A switch: present or absent (False = its default).
                _ => {
                    if b {
                        out.push(flag)
                    }
                }
            }
            continue;
        }
        let items: Vec<Bound<'_, PyAny>> =
            if v.cast::<PyList>().is_ok() || v.cast::<PyTuple>().is_ok() {
                v.try_iter()?.collect::<PyResult<_>>()?
            } else {
                vec![v]
            };
        for item in items {
            // Paths (os.PathLike) by their file-system name, everything else by str().
            let text: String = match item.extract::<PathBuf>() {
                Ok(p) if !item.is_instance_of::<pyo3::types::PyString>() => {
                    p.to_string_lossy().into_owned()
                }
                _ => item.str()?.to_string(),
            };
            out.extend([flag.clone(), text]);
        }
    }
    Ok(out)
}

/// Output of the run (file descriptors 1 and 2) copied to Python's `sys.stdout`/`sys.stderr`
/// through pipes, for where these are not the descriptors themselves (a notebook, pytest's
/// capture). Where they are (a terminal), nothing is redirected.
struct Relay {
    /// `(fd, saved copy of it, read end of its pipe, Python stream name)`.
    pipes: Vec<(RawFd, RawFd, RawFd, &'static str)>,
}

impl Relay {
    fn start(py: Python<'_>) -> PyResult<Relay> {
        let sys = py.import("sys")?;
        let mut pipes = Vec::new();
        for (fd, name) in [(1, "stdout"), (2, "stderr")] {
            let stream = sys.getattr(name)?;
            let own_fd = stream
                .call_method0("fileno")
                .and_then(|f| f.extract::<RawFd>())
                .ok();
            if stream.is_none() || own_fd == Some(fd) {
                continue;
            }
            let mut p = [0; 2];
            // SAFETY: plain descriptor calls on descriptors this function owns.
            unsafe {
                if libc::pipe(p.as_mut_ptr()) != 0 {
                    continue;
                }
                libc::fcntl(p[0], libc::F_SETFL, libc::O_NONBLOCK);
                let saved = libc::dup(fd);
                let _ = std::io::stdout().flush();
                libc::dup2(p[1], fd);
                libc::close(p[1]);
                pipes.push((fd, saved, p[0], name));
            }
        }
        Ok(Relay { pipes })
    }
    /// Copies what the pipes hold to Python's streams. A stream's `write` is Python code (a
    /// notebook's, pytest's capture), and a pending Ctrl-C raises its KeyboardInterrupt inside
    /// it: that exception (or any other that is not an `Exception`: SystemExit from a signal
    /// handler) is returned, never dropped — the signal's flag is spent by then, and a later
    /// `check_signals` would not see it again. An ordinary error of a stream is ignored: the
    /// output is lost, the run goes on.
    fn drain(&self, py: Python<'_>) -> Option<PyErr> {
        let mut raised = None;
        let mut keep = |r: PyResult<Bound<'_, PyAny>>| {
            if let Err(e) = r {
                if raised.is_none() && !e.is_instance_of::<PyException>(py) {
                    raised = Some(e);
                }
            }
        };
        let Ok(sys) = py.import("sys") else {
            return None;
        };
        for &(_, _, r, name) in &self.pipes {
            let mut bytes = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                // SAFETY: reading into a buffer of the given length from a descriptor we own.
                let n = unsafe { libc::read(r, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                bytes.extend_from_slice(&buf[..n as usize]);
            }
            if bytes.is_empty() {
                continue;
            }
            if let Ok(s) = sys.getattr(name) {
                keep(s.call_method1("write", (String::from_utf8_lossy(&bytes),)));
                keep(s.call_method0("flush"));
            }
        }
        raised
    }
    /// Restores the descriptors and copies what is left (an exception raised meanwhile, as
    /// [`Relay::drain`]).
    fn stop(self, py: Python<'_>) -> Option<PyErr> {
        let _ = std::io::stdout().flush();
        for &(fd, saved, _, _) in &self.pipes {
            // SAFETY: restoring our saved copy of the descriptor.
            unsafe {
                libc::dup2(saved, fd);
                libc::close(saved);
            }
        }
        let raised = self.drain(py);
        for &(_, _, r, _) in &self.pipes {
            // SAFETY: closing the read end this relay opened.
            unsafe { libc::close(r) };
        }
        raised
    }
}

/// The run folder's final state as a dict: `run_dir`, `step`, `last` (the last evaluation:
/// train_loss, lr, the validation metrics), `best`, `test` (the final test record or None).
fn final_metrics(dir: &Path) -> nabla::Result<serde_json::Value> {
    use nabla::train::{load_checkpoint_state, read_metrics_jsonl, read_test_record};
    let path = dir.join("metrics.jsonl");
    let last = read_metrics_jsonl(&path)?.pop();
    let test = read_test_record(&path)?;
    let state = load_checkpoint_state(dir)?;
    Ok(serde_json::json!({
        "run_dir": dir.display().to_string(),
        "step": state.step,
        "last": last,
        "best": state.best,
        "test": test,
    }))
}

/// train(task, **flags) -> dict
///
/// Runs `nabla TASK train` (task "vit", "rnn" or "gnn") with the keyword arguments as its
/// flags: `nabla.train("vit", data="mnist/", out="runs/v1", epochs=2, lr=1e-3, plain=True)` is
/// `nabla vit train --data mnist/ --out runs/v1 --epochs 2 --lr 1e-3 --plain`. Underscores
/// become dashes; True turns a switch on; a list repeats the flag; None leaves it out. `out`
/// (or `resume`) is required: the run folder whose final metrics are returned (run_dir, step,
/// last, best, test). Progress lines are printed to sys.stderr as the run goes. Ctrl-C
/// (KeyboardInterrupt) stops the run with a checkpoint, then raises KeyboardInterrupt; pass
/// resume=OUT to continue it. That takes Python's SIGINT handler: an interpreter started with
/// SIGINT ignored (a background job of a non-interactive shell) ignores Ctrl-C here too.
#[pyfunction]
#[pyo3(signature = (task, **flags))]
pub fn train<'py>(
    py: Python<'py>,
    task: &str,
    flags: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let argv = argv(task, flags)?;
    let cmd = Cli::command();
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(|e| PyValueError::new_err(e.render().to_string()))?;
    if let Some(msg) = nabla::cli::non_finite_flag(&cmd, &matches) {
        return Err(PyValueError::new_err(format!("invalid argument: {msg}")));
    }
    let sub = matches
        .subcommand()
        .and_then(|(_, m)| m.subcommand())
        .map(|(_, m)| m.clone())
        .ok_or_else(|| PyRuntimeError::new_err("no train subcommand"))?;
    let dir = sub
        .get_one::<PathBuf>("out")
        .or_else(|| sub.get_one::<PathBuf>("resume"))
        .cloned()
        .ok_or_else(|| {
            PyValueError::new_err(
                "give out=DIR (the run folder; its final metrics are returned), or resume=DIR",
            )
        })?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let typed = Typed::from_matches(&matches);

    clear_stop_signal();
    let relay = Relay::start(py)?;
    let (tx, rx) = mpsc::channel();
    // Waited on with the GIL released (`detach` needs a `Sync` borrow).
    let rx = std::sync::Mutex::new(rx);
    let spawned = std::thread::Builder::new()
        .name("nabla-train".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match pool() {
                Some(p) => p.install(|| nabla::cli::run(cli, &typed)),
                None => nabla::cli::run(cli, &typed),
            }));
            let _ = tx.send(r);
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            let _ = relay.stop(py);
            return Err(PyRuntimeError::new_err(format!(
                "cannot start the run: {e}"
            )));
        }
    };
    let mut interrupted: Option<PyErr> = None;
    let result = loop {
        let got = py.detach(|| match rx.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(100)),
            Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
        });
        let raised = relay.drain(py);
        match got {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(Box::new("the training thread ended without a result"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(e) = raised.or_else(|| py.check_signals().err()) {
            // The trainer checkpoints and stops before its next step; the exception waits.
            raise_stop_signal(StopSignal::Interrupt);
            interrupted.get_or_insert(e);
        }
    };
    let _ = handle.join();
    if let Some(e) = relay.stop(py) {
        // Raised as the run ended: it has nothing left to stop, the exception still counts.
        interrupted.get_or_insert(e);
    }
    clear_stop_signal();
    match result {
        Err(p) => {
            return Err(PyRuntimeError::new_err(format!(
                "internal error in nabla (a bug, please report it): {}",
                panic_message(&*p)
            )))
        }
        Ok(Err(e)) => return Err(to_pyerr(e)),
        Ok(Ok(())) => {}
    }
    if let Some(e) = interrupted {
        if e.is_instance_of::<PyKeyboardInterrupt>(py) {
            return Err(PyKeyboardInterrupt::new_err(format!(
                "training interrupted; the checkpoint is in {}: nabla.train({task:?}, resume={:?}, …) continues it",
                dir.display(),
                dir.display().to_string()
            )));
        }
        return Err(e);
    }
    let v = final_metrics(&dir).map_err(to_pyerr)?;
    json_to_py(py, &v)
}
