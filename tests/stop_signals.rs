//! Stopping a training run from outside, through the binary: SIGTERM, SIGHUP and SIGINT each
//! leave a checkpoint at the step reached, the plot and a message, and exit with 128 + signal;
//! `--resume` then ends bit-identical to a run that never stopped. A `--time-limit` stop is its
//! own outcome and exits 0.
mod common;

use nabla::models::char_rnn::load_checkpoint;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// A small `nabla rnn train` on the built-in Reber corpus, evaluated every 10 updates, with a
/// plain log line per update (the tests read them to know the run is under way).
fn rnn_train(out: &Path, steps: u64, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nabla"));
    c.args(["rnn", "train", "--hidden", "24", "--k1", "8", "--k2", "12"])
        .args([
            "--batch",
            "8",
            "--lr",
            "0.01",
            "--seed",
            "1",
            "--eval-every",
            "10",
        ])
        .args(["--log-every", "1", "--plain", "--steps", &steps.to_string()])
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// Starts a long run, sends `signal` once the log shows update 20, and returns
/// (exit code, stderr, stdout JSON report).
fn run_and_signal(out: &Path, signal: i32) -> (Option<i32>, String, serde_json::Value) {
    let mut child = rnn_train(out, 1_000_000, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for l in lines.by_ref() {
        let l = l.unwrap();
        err.push_str(&l);
        err.push('\n');
        if l.starts_with("train step=20/") {
            // SAFETY: kill(2) on the child's pid, which has not been reaped yet.
            assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
            break;
        }
    }
    for l in lines {
        err.push_str(&l.unwrap());
        err.push('\n');
    }
    let o = child.wait_with_output().unwrap();
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON report ({e}); stderr:\n{err}"));
    (o.status.code(), err, report)
}

#[test]
fn sigterm_checkpoints_exits_143_and_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let (stopped, full) = (tmp.path().join("stopped"), tmp.path().join("full"));
    let (code, err, report) = run_and_signal(&stopped, libc::SIGTERM);
    assert_eq!(code, Some(143), "{err}");
    assert_eq!(report["outcome"], "interrupted");
    let s = report["steps"].as_u64().unwrap();
    // The signal came after update 20; the run stops before the next update it would start.
    assert!((20..1000).contains(&s), "stopped at {s}");
    assert!(
        err.contains(&format!("note stopped by SIGTERM at step {s}/1000000"))
            && err.contains("--resume"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let ck = load_checkpoint(&stopped).unwrap();
    assert_eq!(ck.step, s, "the checkpoint is at the step reached");
    for f in ["metrics.svg", "best/model.safetensors", "config.json"] {
        assert!(stopped.join(f).is_file(), "{f} missing after SIGTERM");
    }

    // Resume to s + 7 updates; an uninterrupted run of s + 7 updates ends with the same bits.
    let end = s + 7;
    let o = rnn_train(&stopped, end, &["--resume", stopped.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = rnn_train(&full, end, &[]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (x, y) = (
        load_checkpoint(&full).unwrap(),
        load_checkpoint(&stopped).unwrap(),
    );
    assert_eq!((x.step, y.step), (end, end));
    for (p, q) in x.model.store.iter().zip(y.model.store.iter()) {
        let bits =
            |t: &nabla::Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&p.value),
            bits(&q.value),
            "{} differs after resume",
            p.name
        );
    }
    assert_eq!(x.h, y.h);
    assert_eq!(x.optim_state, y.optim_state);
    assert_eq!(x.state.rng, y.state.rng);
    let strip = |d: &Path| {
        nabla::train::read_metrics_jsonl(d.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| (r.step, r.train_loss, r.metrics))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&full), strip(&stopped));
}

#[test]
fn sighup_and_sigint_stop_like_sigterm_with_their_own_codes() {
    for (signal, name, code) in [(libc::SIGHUP, "SIGHUP", 129), (libc::SIGINT, "SIGINT", 130)] {
        let tmp = tempfile::tempdir().unwrap();
        let (c, err, report) = run_and_signal(tmp.path(), signal);
        assert_eq!(c, Some(code), "{name}: {err}");
        assert_eq!(report["outcome"], "interrupted");
        assert!(err.contains(&format!("stopped by {name}")), "{err}");
        let s = report["steps"].as_u64().unwrap();
        assert_eq!(load_checkpoint(tmp.path()).unwrap().step, s);
    }
}

#[test]
fn time_limit_is_its_own_outcome_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let o = rnn_train(tmp.path(), 1_000_000, &["--time-limit", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["outcome"], "time_limit");
    let s = report["steps"].as_u64().unwrap();
    assert!(
        err.contains("note time limit of 1.0s reached at step"),
        "{err}"
    );
    assert_eq!(load_checkpoint(tmp.path()).unwrap().step, s);
    // The time left comes from the limit, not from the million steps: every ETA is at most 1 s.
    let etas: Vec<f64> = err
        .lines()
        .filter(|l| l.starts_with("train "))
        .filter_map(|l| l.split(" eta=").nth(1))
        .map(|e| e.trim_end_matches('s').parse::<f64>().unwrap())
        .collect();
    assert!(!etas.is_empty(), "{err}");
    assert!(etas.iter().all(|&e| e <= 1.0), "{etas:?}");
    // A limit that cannot be met is refused before anything runs.
    for bad in ["inf", "-1", "NaN"] {
        let o = rnn_train(
            &tmp.path().join("bad"),
            10,
            &[&format!("--time-limit={bad}")],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(1), "--time-limit {bad}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--time-limit"));
    }
}

/// The bit-identical resume after SIGTERM again on every other kernel path this CPU has
/// (`NABLA_ISA=scalar`, `avx2`, … in child processes): see `common::rerun_on_other_kernel_paths`.
#[test]
fn every_kernel_path() {
    common::rerun_on_other_kernel_paths(
        module_path!(),
        &["sigterm_checkpoints_exits_143_and_resume_is_bit_identical"],
    );
}

/// The reader of the progress lines goes away (`nabla rnn train 2>&1 | head`): SIGPIPE stops the
/// run like the other stop signals — a checkpoint at the step reached, the JSON report, status
/// 141 — instead of killing it without one.
#[test]
fn a_closed_progress_pipe_stops_the_run_with_a_checkpoint_and_141() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = rnn_train(tmp.path(), 1_000_000, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for l in lines.by_ref() {
            if l.unwrap().starts_with("train step=20/") {
                break;
            }
        }
    } // the reader is dropped here: the next progress line raises SIGPIPE
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(141));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["outcome"], "interrupted");
    let s = report["steps"].as_u64().unwrap();
    assert!((20..1000).contains(&s), "stopped at {s}");
    assert_eq!(load_checkpoint(tmp.path()).unwrap().step, s);
    assert!(tmp.path().join("metrics.svg").is_file());
}

/// A write past the file-size limit (`ulimit -f`) is an error, not a death by SIGXFSZ: one line
/// saying "File too large" and why, status 1, and the previous checkpoint intact. The limit lets
/// the start-up write probe through; `state.json`, which grows with every evaluation, then
/// outgrows it at a later checkpoint (or `metrics.jsonl` does).
#[test]
fn the_file_size_limit_is_an_error_and_the_previous_checkpoint_stays() {
    if !Path::new("/bin/sh").exists() {
        eprintln!("no /bin/sh: nothing to check");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let bin = env!("CARGO_BIN_EXE_nabla");
    let o = Command::new("/bin/sh")
        .arg("-c")
        // 64 blocks of 1 KiB (`ulimit -f` counts 1024-byte blocks in sh, bash and dash).
        .arg(format!(
            "ulimit -f 64 && exec '{bin}' rnn train --hidden 16 --k1 8 --k2 8 --batch 4 \
             --eval-every 1 --checkpoint-every 50 --steps 100000 --quiet --out '{}'",
            out.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("File too large") && err.contains("ulimit -f"),
        "{err}"
    );
    let ck = load_checkpoint(&out).unwrap();
    assert!(
        ck.step > 0 && ck.step.is_multiple_of(50),
        "step {}",
        ck.step
    );
    let left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.contains(".old-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
