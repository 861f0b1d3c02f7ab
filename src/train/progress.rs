//! Progress output: an `indicatif` bar on a terminal, plain `key=value` lines otherwise.
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
//! when training ends, so whatever the command prints next starts on a line of its own.

use super::config::ProgressMode;
use crate::errln;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};

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

pub(crate) enum Progress {
    Bar(ProgressBar),
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
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    // A fixed-width bar, not `wide_bar`: the line then stays shorter than the
                    // terminal, and the echo of Ctrl-C (`^C`) does not wrap it.
                    "[{elapsed_precise}] {bar:24.cyan/blue} {pos}/{len} {msg}",
                )
                .expect("constant template is valid")
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_position(start);
                bar.reset_eta();
                Progress::Bar(bar)
            }
            _ => Progress::Plain(sink.unwrap_or_else(|| Box::new(std::io::stderr()))),
        }
    }
    /// Per-step update (bar only: position and the short status message).
    pub(crate) fn tick(&mut self, step: u64, msg: impl FnOnce() -> String) {
        if let Progress::Bar(b) = self {
            b.set_position(step);
            b.set_message(msg());
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
            b.finish_and_clear();
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
}
