//! `NABLA_PROFILE=1`: where a command's time goes, by op — the forward and backward seconds and
//! calls of every op name, printed to stderr when the command ends (the role of PyTorch's
//! `torch.autograd.profiler` table).
//!
//! An op's backward is timed around its [`super::Op::backward`] call, gradient accumulation
//! included. Its forward is the time since the previous event on the same tape (the previous
//! record or leaf), so the work a forward function does before it records — its whole
//! computation — is charged to it; time between ops that record nothing (building a dropout
//! mask, a batch) is charged to the leaf that follows it, `(constant)`, `(input)` or
//! `(param)`. Time before a tape exists is not counted. Off, it costs a load per event.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, Default)]
struct Stat {
    fwd_s: f64,
    fwd_calls: u64,
    bwd_s: f64,
    bwd_calls: u64,
}

static TABLE: Mutex<BTreeMap<&'static str, Stat>> = Mutex::new(BTreeMap::new());

/// Whether `NABLA_PROFILE` is set to something other than `0` (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("NABLA_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
}

pub(crate) fn add(name: &'static str, backward: bool, secs: f64) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let s = t.entry(name).or_default();
    if backward {
        s.bwd_s += secs;
        s.bwd_calls += 1;
    } else {
        s.fwd_s += secs;
        s.fwd_calls += 1;
    }
}

/// The table so far, slowest op first; `None` when nothing was timed.
pub fn report() -> Option<String> {
    let t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    if t.is_empty() {
        return None;
    }
    let mut rows: Vec<_> = t.iter().map(|(k, s)| (*k, *s)).collect();
    rows.sort_by(|a, b| (b.1.fwd_s + b.1.bwd_s).total_cmp(&(a.1.fwd_s + a.1.bwd_s)));
    let total: f64 = rows.iter().map(|(_, s)| s.fwd_s + s.bwd_s).sum();
    let mut out = format!(
        "{:<34} {:>10} {:>8} {:>10} {:>8} {:>7}\n",
        "op (NABLA_PROFILE)", "forward s", "calls", "backward s", "calls", "share"
    );
    for (name, s) in rows {
        out.push_str(&format!(
            "{:<34} {:>10.4} {:>8} {:>10.4} {:>8} {:>6.1}%\n",
            name,
            s.fwd_s,
            s.fwd_calls,
            s.bwd_s,
            s.bwd_calls,
            100.0 * (s.fwd_s + s.bwd_s) / total.max(1e-12)
        ));
    }
    out.push_str(&format!("{:<34} {total:>10.4} s in all\n", "total"));
    Some(out)
}
