//! Williams & Peng's TBPTT(k1, k2) schedule: which windows a stream of length T is cut into.

use crate::error::Result;
use crate::invalid;
use serde::{Deserialize, Serialize};

/// One update of Williams & Peng's TBPTT(k1, k2): the window `[start, end)` is run forward from
/// the (detached) state at `start`, and the losses of steps `[loss_from, end)` are backpropagated
/// through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TbpttWindow {
    pub start: usize,
    pub loss_from: usize,
    pub end: usize,
}

/// The TBPTT(k1, k2) schedule, `1 ≤ k1 ≤ k2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TbpttSchedule {
    pub k1: usize,
    pub k2: usize,
}

impl TbpttSchedule {
    pub fn new(k1: usize, k2: usize) -> Result<Self> {
        if k1 == 0 {
            return Err(invalid!("TBPTT needs k1 >= 1, got k1 = {k1}"));
        }
        if k2 < k1 {
            return Err(invalid!(
                "TBPTT(k1, k2) needs k2 >= k1 (every k1 steps, backpropagate through the last k2), got k1 = {k1}, k2 = {k2}"
            ));
        }
        Ok(TbpttSchedule { k1, k2 })
    }
    /// The update ending at step `end` (steps `[end − k1, end)` contribute losses).
    pub fn window_ending(&self, end: usize, prev_end: usize) -> TbpttWindow {
        TbpttWindow {
            start: end.saturating_sub(self.k2),
            loss_from: prev_end,
            end,
        }
    }
    /// All updates over a sequence of `len` steps: ends at `k1, 2k1, …` and at `len`.
    pub fn windows(&self, len: usize) -> Vec<TbpttWindow> {
        let mut out = Vec::new();
        let mut prev = 0;
        while prev < len {
            let end = (prev + self.k1).min(len);
            out.push(self.window_ending(end, prev));
            prev = end;
        }
        out
    }
}
