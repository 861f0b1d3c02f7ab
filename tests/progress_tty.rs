//! The progress bar on a real terminal: every `train` command (vit, rnn, gnn), however it ends —
//! Ctrl-C typed at the terminal (which echoes `^C` after the bar), SIGTERM, `--time-limit`, an
//! error, or the last step — leaves no frame of the bar on the screen, and every line printed
//! after it starts at column 0.
//!
//! Each run is a child process on a pseudo-terminal (100 columns) whose output is replayed
//! through a small VT100 model (carriage return, line feed, erase-line and the deferred wrap at
//! the right edge, which is what made the `^C` echo push the old bar's last frame out of reach).
//! The runs use built-in data, so the test needs no `../shared`.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const COLS: usize = 100;

/// How the run is ended from outside once its bar is on screen.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Nothing: the run ends by itself (last step, time limit, error).
    None,
    /// Ctrl-C typed at the terminal: the line discipline echoes `^C` and sends SIGINT.
    CtrlC,
    /// SIGTERM sent to the process.
    Term,
}

/// Runs `nabla args` with stdin/stdout/stderr on a new pseudo-terminal; returns the exit
/// status and every byte the terminal received.
fn run_on_pty(args: &[&str], stop: Stop) -> (Option<i32>, Vec<u8>) {
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: COLS as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; the name and termios pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // Echo with control characters shown as ^C, and signals from the keyboard: a user's terminal.
    // SAFETY: tcgetattr/tcsetattr on the open slave descriptor with a valid termios.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut t), 0);
        t.c_lflag |= libc::ECHO | libc::ECHOCTL | libc::ISIG | libc::ICANON;
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nabla"));
    cmd.args(args)
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave));
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the pty (its stdin) its
    // controlling terminal, so a typed ^C reaches it as SIGINT.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting nabla");
    // Close every slave descriptor here (the Command holds copies): the reader sees EIO once
    // the child, the last holder, exits.
    drop(cmd);
    drop(slave);
    let out = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let out = out.clone();
        let mut m = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child (the last holder of the slave side) has exited.
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let bar_shown = |out: &Arc<Mutex<Vec<u8>>>| {
        let o = out.lock().unwrap();
        o.windows(7).any(|w| w == b"items/s")
    };
    if !matches!(stop, Stop::None) {
        while !bar_shown(&out) {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "the run ended or hung before drawing its bar: {:?}",
                String::from_utf8_lossy(&out.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Two more frames, so the stop lands in the middle of training.
        std::thread::sleep(Duration::from_millis(250));
        match stop {
            Stop::CtrlC => std::fs::File::from(master.try_clone().unwrap())
                .write_all(b"\x03")
                .unwrap(),
            // SAFETY: kill(2) on the child's pid, not yet reaped.
            Stop::Term => assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0),
            Stop::None => {}
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end within 180 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(master);
    reader.join().unwrap();
    let bytes = out.lock().unwrap().clone();
    (status.code(), bytes)
}

/// The rows a VT100 of [`COLS`] columns shows after `bytes`: printable characters, `\r`, `\n`
/// (the pty turns it into `\r\n`), erase-line `ESC[2K` / `ESC[K`, cursor moves `ESC[nA/B/C/D/G`
/// and the deferred wrap at the right edge; other escape sequences (colours) are skipped.
fn screen(bytes: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(bytes);
    let (mut rows, mut r, mut c, mut wrap) = (vec![Vec::<char>::new()], 0, 0, false);
    let mut it = s.chars().peekable();
    while let Some(ch) = it.next() {
        match ch {
            '\r' => (c, wrap) = (0, false),
            '\n' => {
                (r, wrap) = (r + 1, false);
                rows.resize(rows.len().max(r + 1), Vec::new());
            }
            '\x1b' => {
                if it.peek() != Some(&'[') {
                    continue;
                }
                it.next();
                let mut arg = String::new();
                let f = loop {
                    match it.next() {
                        Some(d @ ('0'..='9' | ';' | '?')) => arg.push(d),
                        Some(f) => break f,
                        None => break ' ',
                    }
                };
                let n = arg.parse::<usize>().unwrap_or(1).max(1);
                match f {
                    'K' if arg == "2" => rows[r].clear(),
                    'K' => rows[r].truncate(c),
                    'A' => r = r.saturating_sub(n),
                    'B' => {
                        r += n;
                        rows.resize(rows.len().max(r + 1), Vec::new());
                    }
                    'C' => c = (c + n).min(COLS - 1),
                    'D' => c = c.saturating_sub(n),
                    'G' => c = (n - 1).min(COLS - 1),
                    _ => continue, // colours, cursor visibility
                }
                wrap = false;
            }
            ch if ch.is_control() => {}
            _ => {
                if wrap {
                    (r, c, wrap) = (r + 1, 0, false);
                    rows.resize(rows.len().max(r + 1), Vec::new());
                }
                let row = &mut rows[r];
                row.resize(row.len().max(c), ' ');
                if c < row.len() {
                    row[c] = ch;
                } else {
                    row.push(ch);
                }
                c += 1;
                if c == COLS {
                    (c, wrap) = (COLS - 1, true);
                }
            }
        }
    }
    rows.into_iter()
        .map(|r| r.into_iter().collect::<String>().trim_end().to_string())
        .collect()
}

/// A frame of the bar: `[00:00:03] [=====>   ] 120/600 loss …` (the elapsed time first).
fn is_bar_frame(row: &str) -> bool {
    let b = row.as_bytes();
    b.len() > 11 && b[0] == b'[' && b[3] == b':' && b[6] == b':' && &b[9..11] == b"] "
}

/// `bytes` as text without SGR (colour) sequences.
fn plain_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\x1b' && it.peek() == Some(&'[') {
            let rest: String = it
                .clone()
                .take_while(|c| c.is_ascii_digit() || *c == ';' || *c == '[')
                .collect();
            if it.clone().nth(rest.len()) == Some('m') {
                for _ in 0..=rest.len() {
                    it.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Runs one case and checks the screen; `expect_rows` must each begin some row (column 0).
fn check(label: &str, args: &[&str], stop: Stop, code: i32, expect_rows: &[&str]) {
    let (got, bytes) = run_on_pty(args, stop);
    let text = plain_text(&bytes);
    let rows = screen(&bytes);
    let shown = rows.join("\n");
    assert_eq!(got, Some(code), "{label}: exit status\n{shown}");
    // The bar was on screen during the run (else the check below proves nothing) …
    assert!(
        text.contains("items/s"),
        "{label}: no bar frame was drawn: {text:?}"
    );
    // … and no frame of it is left, nor glued before any line.
    let left: Vec<&String> = rows
        .iter()
        .filter(|r| is_bar_frame(r) || r.contains("items/s"))
        .collect();
    assert!(
        left.is_empty(),
        "{label}: bar left on screen: {left:?}\n{shown}"
    );
    for want in expect_rows {
        assert!(
            rows.iter().any(|r| r.starts_with(want)),
            "{label}: no row starts with {want:?}\n{shown}"
        );
    }
    // Every frame kept clear of the last columns (room for the ^C echo on the same row).
    let widest = text
        .replace("^C", "")
        .split(['\r', '\n'])
        .map(|f| f.trim_start_matches("\x1b[2K"))
        .filter(|f| is_bar_frame(f))
        .map(|f| f.chars().count())
        .max()
        .unwrap_or(0);
    assert!(
        widest <= COLS - 3,
        "{label}: a bar frame of {widest} columns"
    );
}

fn rnn(out: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["rnn", "train", "--hidden", "32", "--eval-every", "20"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--out".to_string(), out.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn rnn_train_clears_its_bar_on_every_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    let long = ["--steps", "100000000"];
    check(
        "rnn Ctrl-C",
        &strs(&rnn(&d("c"), &long)),
        Stop::CtrlC,
        130,
        &["note stopped by SIGINT at step ", "{\"steps\":"],
    );
    check(
        "rnn SIGTERM",
        &strs(&rnn(&d("t"), &long)),
        Stop::Term,
        143,
        &["note stopped by SIGTERM at step ", "{\"steps\":"],
    );
    check(
        "rnn --time-limit",
        &strs(&rnn(
            &d("l"),
            &["--steps", "100000000", "--time-limit", "1.5"],
        )),
        Stop::None,
        0,
        &["note time limit of 1.5s reached at step ", "{\"steps\":"],
    );
    check(
        "rnn completed",
        &strs(&rnn(&d("f"), &["--steps", "200"])),
        Stop::None,
        0,
        &["{\"steps\":200,\"outcome\":\"completed\""],
    );
}

#[test]
fn vit_train_clears_its_bar_on_every_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    // The built-in synthetic shapes, a small model.
    let vit = |out: String, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "vit",
            "train",
            "--dim",
            "16",
            "--depth",
            "1",
            "--heads",
            "2",
            "--mlp-dim",
            "16",
            "--batch",
            "16",
            "--eval-every",
            "40",
            "--eval-limit",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(["--out".to_string(), out]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let long = ["--epochs", "100000"];
    check(
        "vit Ctrl-C",
        &strs(&vit(d("c"), &long)),
        Stop::CtrlC,
        130,
        &[
            "note stopped by SIGINT at step ",
            "interrupted by SIGINT at step ",
        ],
    );
    check(
        "vit --time-limit",
        &strs(&vit(d("l"), &["--epochs", "100000", "--time-limit", "1.5"])),
        Stop::None,
        0,
        &[
            "note time limit of 1.5s reached at step ",
            "stopped by the time limit at step ",
        ],
    );
    // A non-finite loss: AdamW at a learning rate of 1e30 overflows the weights at once.
    check(
        "vit error",
        &strs(&vit(
            d("e"),
            &["--steps", "50", "--lr", "1e30", "--warmup", "0"],
        )),
        Stop::None,
        1,
        &["error: non-finite value"],
    );
}

#[test]
fn gnn_train_clears_its_bar_on_every_way_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = |n: &str| tmp.path().join(n).to_str().unwrap().to_string();
    // The built-in contextual SBM graph; many epochs, no early stop.
    let long = ["--epochs", "100000000", "--patience", "100000000"];
    let gnn = |o: String, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["gnn", "train", "--out"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(o);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    check(
        "gnn SIGTERM",
        &strs(&gnn(out("t"), &long)),
        Stop::Term,
        143,
        &[
            "note stopped by SIGTERM at step ",
            "seed 0: interrupted after ",
        ],
    );
    check(
        "gnn Ctrl-C",
        &strs(&gnn(out("c"), &long)),
        Stop::CtrlC,
        130,
        &[
            "note stopped by SIGINT at step ",
            "seed 0: interrupted after ",
        ],
    );
    check(
        "gnn completed",
        &strs(&gnn(out("f"), &["--epochs", "30"])),
        Stop::None,
        0,
        &["seed 0: test acc ", "mean test accuracy over 1 seeds"],
    );
}
