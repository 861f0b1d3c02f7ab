//! Progress output: a one-line bar on a terminal, plain `key=value` lines otherwise.
//!
//! Plain format, one line per `log_every` steps and one per evaluation:
//! ```text
//! train step=120/600 epoch=1.2 loss=0.41235 lr=0.001 grad_norm=0.8123 items/s=5123 elapsed=12.3s eta=48.2s
//! eval step=120/600 epoch=1.2 val_acc=0.9321 val_loss=0.251 best=val_acc:0.9321@120
//! ```
//! (`epoch` only when the model has an epoch length; after `eval` the model's metrics in name
//! order, then the best value of the monitored metric so far.) Free-form notes (checkpoints,
//! early stopping, interruption) start with `note `.
//!
//! The bar shows the step's loss, the latest evaluation of the monitored metric (and its step),
//! items/s and the time left; lines kept in the output are printed above it, and it is cleared
//! when training ends — however it ends — so whatever the command prints next starts on a line
//! of its own.
//!
//! The bar is drawn here rather than by `indicatif`, which pads the bar's line to the full
//! terminal width so that the cursor sits at the right edge: the terminal's echo of Ctrl-C
//! (`^C`) then wraps onto a new row, the clear reaches only that row, and the last frame of the
//! bar stays on screen above the summary. [`Bar`] keeps its line [`BAR_MARGIN`] columns short of
//! the width and clears it with `\r` + erase-line before every line printed below it.
use super::config::ProgressMode;
use crate::errln;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A number as it appears in logs: 5 significant digits, scientific outside [1e-3, 1e5).
pub fn fmt_num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{x:.4e}");
    }
    let digits = (4 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{x:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Seconds as `12.3s`, `4m05s` or `1h02m`.
pub fn fmt_duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

/// One plain log line: `kind step=S/TOTAL key=value …` (see the module docs).
pub fn format_log_line(kind: &str, step: u64, total: u64, fields: &[(String, String)]) -> String {
    let mut s = format!("{kind} step={step}/{total}");
    for (k, v) in fields {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(v);
    }
    s
}

/// Columns left free at the right of the bar's line: the `^C` the terminal echoes after it must
/// fit on the same row, or it wraps and the clear misses the row above.
pub(crate) const BAR_MARGIN: usize = 3;
/// Least time between two redraws of the bar (it is redrawn at once after a printed line).
const BAR_REDRAW: Duration = Duration::from_millis(100);
/// Width of the `[=====>    ]` part.
const BAR_CELLS: usize = 24;

/// Whether a [`Bar`] line is on the terminal now: the second-stop-signal handler
/// ([`super::signals`]) clears it before its message, as it cannot reach the bar itself.
pub(crate) static BAR_ON_SCREEN: AtomicBool = AtomicBool::new(false);

/// Columns of the terminal on stderr (`None` when it is not a terminal or does not say).
fn terminal_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the `winsize` passed by pointer and reads nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some(ws.ws_col as usize)
}

/// The one-line progress bar: `[00:01:02] [=========>      ] 120/600 msg` (see the module docs
/// for why it is drawn by hand). Every write starts with `\r` + erase-line, so the bar and
/// whatever the terminal echoed after it (`^C`) vanish before the next text.
pub(crate) struct Bar<W: Write> {
    out: W,
    /// Terminal columns, asked at every redraw (the window may be resized during a run).
    width: fn() -> Option<usize>,
    total: u64,
    pos: u64,
    msg: String,
    start: Instant,
    last_draw: Option<Instant>,
    shown: bool,
}

impl<W: Write> Bar<W> {
    pub(crate) fn new(out: W, width: fn() -> Option<usize>, total: u64, pos: u64) -> Self {
        Bar {
            out,
            width,
            total,
            pos,
            msg: String::new(),
            start: Instant::now(),
            last_draw: None,
            shown: false,
        }
    }

    /// The bar's text for a terminal of `width` columns: at most `width - BAR_MARGIN` characters
    /// (the message is cut first, then the rest).
    fn render(&self, width: usize) -> String {
        let el = self.start.elapsed().as_secs();
        let filled = match self.total {
            0 => BAR_CELLS,
            t => (self.pos.min(t) as u128 * BAR_CELLS as u128 / t as u128) as usize,
        };
        let mut cells = "=".repeat(filled);
        if filled < BAR_CELLS {
            cells.push('>');
            cells.push_str(&" ".repeat(BAR_CELLS - filled - 1));
        }
        let line = format!(
            "[{:02}:{:02}:{:02}] [{cells}] {}/{} {}",
            el / 3600,
            el / 60 % 60,
            el % 60,
            self.pos,
            self.total,
            self.msg
        );
        let room = width.saturating_sub(BAR_MARGIN).max(1);
        line.trim_end().chars().take(room).collect()
    }

    fn draw(&mut self) {
        let width = (self.width)().unwrap_or(80);
        let line = self.render(width);
        let _ = write!(self.out, "\r\x1b[2K{line}");
        let _ = self.out.flush();
        self.shown = true;
        BAR_ON_SCREEN.store(true, Ordering::SeqCst);
        self.last_draw = Some(Instant::now());
    }

    /// Erases the bar's row (and any echo after it), leaving the cursor at its start.
    fn clear(&mut self) {
        if self.shown {
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
            self.shown = false;
            BAR_ON_SCREEN.store(false, Ordering::SeqCst);
        }
    }

    /// New position and message; redrawn at most every [`BAR_REDRAW`].
    pub(crate) fn set(&mut self, pos: u64, msg: String) {
        self.pos = pos;
        self.msg = msg;
        if self.last_draw.is_none_or(|t| t.elapsed() >= BAR_REDRAW) {
            self.draw();
        }
    }

    /// A line kept in the output: the bar is cleared, the line printed, the bar drawn below.
    pub(crate) fn println(&mut self, line: &str) {
        self.clear();
        let _ = writeln!(self.out, "{line}");
        self.draw();
    }

    /// Clears the bar for good.
    pub(crate) fn finish(&mut self) {
        self.clear();
    }
}

impl<W: Write> Drop for Bar<W> {
    /// Also on an early return or a panic: the summary or the error never lands on the bar.
    fn drop(&mut self) {
        self.clear();
    }
}

pub(crate) enum Progress {
    Bar(Bar<std::io::Stderr>),
    Plain(Box<dyn Write + Send>),
    Quiet,
}

impl Progress {
    pub(crate) fn new(
        mode: ProgressMode,
        sink: Option<Box<dyn Write + Send>>,
        total: u64,
        start: u64,
    ) -> Progress {
        let mode = match (mode, &sink) {
            (ProgressMode::Quiet, _) => ProgressMode::Quiet,
            (_, Some(_)) => ProgressMode::Plain,
            (ProgressMode::Auto, None) if std::io::stderr().is_terminal() => ProgressMode::Bar,
            (ProgressMode::Auto, None) => ProgressMode::Plain,
            (m, None) => m,
        };
        match mode {
            ProgressMode::Quiet => Progress::Quiet,
            ProgressMode::Bar => {
                Progress::Bar(Bar::new(std::io::stderr(), terminal_width, total, start))
            }
            _ => Progress::Plain(sink.unwrap_or_else(|| Box::new(std::io::stderr()))),
        }
    }
    /// Per-step update (bar only: position and the short status message).
    pub(crate) fn tick(&mut self, step: u64, msg: impl FnOnce() -> String) {
        if let Progress::Bar(b) = self {
            b.set(step, msg());
        }
    }
    /// A periodic training line (plain mode only; the bar shows the same live).
    pub(crate) fn train_line(&mut self, line: &str) {
        if let Progress::Plain(w) = self {
            let _ = writeln!(w, "{line}");
            let _ = w.flush();
        }
    }
    /// A line kept in the output in both modes (evaluations, notes).
    pub(crate) fn line(&mut self, line: &str) {
        match self {
            Progress::Bar(b) => b.println(line),
            Progress::Plain(w) => {
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
            Progress::Quiet => {}
        }
    }
    /// A line that is shown even with `--quiet` (on stderr then): why a run stopped early.
    pub(crate) fn notice(&mut self, line: &str) {
        match self {
            Progress::Quiet => errln!("{line}"),
            _ => self.line(line),
        }
    }
    /// Clears the bar (later lines go to stderr as plain lines).
    pub(crate) fn finish(&mut self) {
        if let Progress::Bar(b) = self {
            b.finish();
            *self = Progress::Plain(Box::new(std::io::stderr()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_and_line_format() {
        assert_eq!(fmt_num(0.41235), "0.41235");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(0.001), "0.001");
        assert_eq!(fmt_num(1e-4), "1.0000e-4");
        assert_eq!(fmt_num(5123.0), "5123");
        assert_eq!(fmt_duration(12.34), "12.3s");
        assert_eq!(fmt_duration(245.0), "4m05s");
        let l = format_log_line(
            "train",
            3,
            10,
            &[("loss".into(), "0.5".into()), ("lr".into(), "0.1".into())],
        );
        assert_eq!(l, "train step=3/10 loss=0.5 lr=0.1");
    }

    /// What a terminal of `cols` columns shows for `bytes`: `\r`, `\n`, erase-line (`ESC[2K`,
    /// `ESC[K`) and printable characters, with the deferred wrap of a VT100 at the right edge.
    fn screen(bytes: &[u8], cols: usize) -> Vec<String> {
        let s = String::from_utf8_lossy(bytes);
        let (mut rows, mut r, mut c, mut wrap) = (vec![Vec::<char>::new()], 0, 0, false);
        let mut it = s.chars().peekable();
        while let Some(ch) = it.next() {
            match ch {
                '\r' => (c, wrap) = (0, false),
                '\n' => {
                    (r, c, wrap) = (r + 1, 0, false);
                    rows.resize(rows.len().max(r + 1), Vec::new());
                }
                '\x1b' => {
                    assert_eq!(it.next(), Some('['));
                    let mut arg = String::new();
                    let f = loop {
                        match it.next().unwrap() {
                            d @ '0'..='9' => arg.push(d),
                            f => break f,
                        }
                    };
                    assert_eq!(f, 'K', "unexpected escape sequence");
                    match arg.as_str() {
                        "2" => rows[r].clear(),
                        _ => rows[r].truncate(c),
                    }
                    wrap = false;
                }
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
                    if c == cols {
                        (c, wrap) = (cols - 1, true);
                    }
                }
            }
        }
        rows.into_iter().map(|r| r.into_iter().collect()).collect()
    }

    /// A terminal's input side: what the bar writes, and what the terminal itself echoes.
    #[derive(Clone, Default)]
    struct Tty(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);
    impl Write for Tty {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Tty {
        fn echo(&self, s: &str) {
            self.0.borrow_mut().extend_from_slice(s.as_bytes());
        }
    }

    #[test]
    fn the_bar_leaves_room_for_the_ctrl_c_echo_and_is_cleared_before_every_line() {
        fn w40() -> Option<usize> {
            Some(40)
        }
        let tty = Tty::default();
        let mut bar = Bar::new(tty.clone(), w40, 600, 0);
        let long = "loss 0.41235 val_acc 0.93 (step 100) 5123 items/s eta 48.2s";
        bar.set(120, long.into());
        bar.println("eval step=120/600 val_acc=0.9321");
        // Ctrl-C: the terminal echoes `^C` after the bar, then the run prints its stop note.
        tty.echo("^C");
        bar.println("note stopped by SIGINT at step 121/600");
        bar.finish();
        tty.echo("finished at step 121/600\n");
        // Dropping a bar that is still shown (an early return) clears it as well.
        let mut other = Bar::new(tty.clone(), w40, 10, 0);
        other.set(3, long.into());
        drop(other);
        tty.echo("error: x\n");
        let bytes = tty.0.borrow().clone();
        let rows = screen(&bytes, 40);
        assert_eq!(
            rows,
            [
                "eval step=120/600 val_acc=0.9321",
                "note stopped by SIGINT at step 121/600",
                "finished at step 121/600",
                "error: x",
                ""
            ],
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Every frame of the bar is exactly 40 - BAR_MARGIN columns here (the message is cut).
        let text = String::from_utf8_lossy(&bytes)
            .replace('\n', "\r")
            .replace("^C", "");
        let frames: Vec<&str> = text
            .split("\r\x1b[2K")
            .flat_map(|f| f.split('\r'))
            .filter(|f| f.starts_with("[00:"))
            .collect();
        assert!(frames.len() >= 3, "{frames:?}");
        for f in &frames {
            assert_eq!(f.chars().count(), 40 - BAR_MARGIN, "{f:?}");
        }
        assert!(!BAR_ON_SCREEN.load(Ordering::SeqCst));
    }

    #[test]
    fn bar_frame_format() {
        fn wide() -> Option<usize> {
            Some(200)
        }
        let mut bar = Bar::new(Vec::new(), wide, 600, 0);
        bar.pos = 150;
        bar.msg = "loss 0.5".into();
        assert_eq!(
            bar.render(200),
            "[00:00:00] [======>                 ] 150/600 loss 0.5"
        );
        bar.pos = 600;
        assert_eq!(
            bar.render(200),
            "[00:00:00] [========================] 600/600 loss 0.5"
        );
        assert_eq!(bar.render(10), "[00:00:");
    }
}
