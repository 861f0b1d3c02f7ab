//! TensorBoard event files: every scalar of `metrics.jsonl`, live, in the format that
//! `tensorboard --logdir runs/` reads.
//!
//! # Format
//!
//! `RUN/events.out.tfevents.<unix seconds>.<hostname>` (TensorBoard's own naming; the seconds
//! are one more than those of the folder's previous file when a resume follows it within the
//! same second, since TensorBoard moves on only to a file whose name sorts later) is a sequence
//! of TFRecords, each
//!
//! ```text
//! u64 LE  length n of the data
//! u32 LE  masked CRC-32C of those 8 length bytes
//! n bytes data: one `tensorflow.Event` protobuf
//! u32 LE  masked CRC-32C of the data
//! ```
//!
//! where `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8` (wrapping), so that a CRC of bytes
//! that themselves hold CRCs is not degenerate. The first record is the file version
//! (`file_version: "brain.Event:2"`), the second a `SessionLog` START (see *Resume*),
//! every other one an `Event { wall_time, step, summary }` whose `Summary` holds one
//! `Value { tag, simple_value }` per scalar. The messages are declared below with `prost`
//! derives, field numbers as in TensorFlow's `event.proto` and `summary.proto`; `simple_value`
//! is a oneof member there, so it is encoded even when it is 0 (a plain proto3 `float` would
//! drop 0.0 and TensorBoard would then see no value at all).
//!
//! # What is written
//!
//! Tags are the field names of `metrics.jsonl`, values its numbers as `f32`, the global step
//! its `step`:
//! - at every evaluation, at its step: `epoch`, `wall_time_s`, `train_loss`, `lr`, `grad_norm`,
//!   `items_per_s` and every metric of the model (`val_loss`, `val_acc`, `train_acc`, …);
//! - `logged_train_loss` at every `--log-every` step, as it is logged (between evaluations
//!   too): the record's `logged_train_loss`, or `(step, train_loss)` for a record without one
//!   (its interval was one log interval, or none, so the mean since the previous log line is
//!   `train_loss` itself);
//! - the metrics of the final test record (`test_acc`, `test_loss`, …) at the run's last step.
//!
//! Each event is one `write` to the file (no buffering), so a running TensorBoard picks it up at
//! once. Not fsynced, like `metrics.jsonl`: the durable copy of the history is the checkpoint's
//! `state.json`.
//!
//! # Resume
//!
//! Each session writes a new events file, which TensorBoard reads after the folder's older ones
//! (by name), so that it merges them into one run. Its second record, a `SessionLog` START, is
//! TensorBoard's restart marker: on it TensorBoard drops what it holds of the run at that
//! step and later (its event accumulator does so for files of version 2; checked by
//! `python/tests/test_tensorboard.py`), so the steps of a session never appear twice.
//! - `--resume` with the folder's events files present keeps them, and the START is at the
//!   checkpoint's step: what a crashed session wrote after its last checkpoint, and a
//!   finished run's test record — both gone from `metrics.jsonl` too, which `--resume`
//!   rewrites from the checkpoint — are dropped; the new file writes again what the
//!   checkpoint holds at that step, and the resumed session's steps follow.
//! - A fresh run, `--overwrite`, and `--resume` of a folder without events files remove the
//!   folder's events files; the new file starts at step 0 and replays the history kept in the
//!   checkpoint (its evaluations, and the log lines since the last one), with wall times
//!   reconstructed from the training time (`wall_time_s`), counted back from the start of the
//!   session. (A TensorBoard already reading a removed file keeps showing it: restart it.)
//!
//! Read in name order with that rule (a START drops the scalars collected so far at its step
//! and later), the folder's events files hold exactly the scalars of `metrics.jsonl`.

use super::final_test::TestRecord;
use super::metrics::MetricsRecord;
use crate::error::{NablaError, Result};
use crate::invalid;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` of the first record (the version TensorBoard's own writers use).
pub const FILE_VERSION: &str = "brain.Event:2";

/// The start of every events file name (`events.out.tfevents.<unix seconds>.<hostname>`).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// The tag of the training loss at log resolution (see the [module docs](self)).
pub const LOGGED_TRAIN_LOSS: &str = "logged_train_loss";

/// `tensorflow.Event` (event.proto), the members nabla writes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The `what` oneof.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// The `what` oneof of [`Event`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first record of a file: [`FILE_VERSION`].
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// The second record of a file: [`SessionLog::START`] (see *Resume* in the module docs).
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.SessionLog` (event.proto): its `status` only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// `SessionLog.SessionStatus`, an enum on the wire as its int32.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

impl SessionLog {
    /// `SessionStatus.START`: a (re)started session; TensorBoard drops what it holds of the
    /// run at this event's step and later.
    pub const START: i32 = 1;
}

/// `tensorflow.Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: a tag and its scalar (the `simple_value` member of the `value`
/// oneof; `Some` even for 0.0, which is then encoded).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

impl Event {
    /// The scalars of a summary event as `(tag, value)`; empty for other events.
    pub fn scalars(&self) -> Vec<(&str, f32)> {
        match &self.what {
            Some(What::Summary(s)) => s
                .value
                .iter()
                .filter_map(|v| v.simple_value.map(|x| (v.tag.as_str(), x)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The TFRecord mask of a CRC-32C: rotated right by 15 bits, plus a constant.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// Appends `data` as one TFRecord (length, its masked CRC, data, its masked CRC) to `out`.
pub fn write_record(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// The data of every TFRecord in `bytes`, both CRCs checked; `path` names the file in errors.
/// A record cut short (a writer interrupted mid-write) is an error, like any corruption.
pub fn read_records<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<&'a [u8]>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let bad = |msg: String| NablaError::format(path, format!("record at byte {at}: {msg}"));
        if rest.len() < 12 {
            return Err(bad(format!("{} bytes, shorter than a header", rest.len())));
        }
        let (len, crc) = (
            &rest[..8],
            u32::from_le_bytes(rest[8..12].try_into().unwrap()),
        );
        if masked_crc32c(len) != crc {
            return Err(bad("the length fails its CRC".into()));
        }
        let n = u64::from_le_bytes(len.try_into().unwrap());
        let body = usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest.len() - 12 && rest.len() - 12 - n >= 4)
            .ok_or_else(|| bad(format!("length {n} runs past the end of the file")))?;
        let data = &rest[12..12 + body];
        let crc = u32::from_le_bytes(rest[12 + body..16 + body].try_into().unwrap());
        if masked_crc32c(data) != crc {
            return Err(bad("the data fails its CRC".into()));
        }
        out.push(data);
        at += 16 + body;
    }
    Ok(out)
}

/// Reads an events file: its events in order, every CRC checked and every record decoded.
pub fn read_event_file(path: impl AsRef<Path>) -> Result<Vec<Event>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    read_records(&bytes, path)?
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            Event::decode(data).map_err(|e| {
                NablaError::format(path, format!("record {i}: not a tensorflow.Event: {e}"))
            })
        })
        .collect()
}

/// The events files of a run folder (`events.out.tfevents.*`), by name.
pub fn event_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| NablaError::io(dir, e))? {
        let entry = entry.map_err(|e| NablaError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(FILE_PREFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The scalars of an evaluation record at its step, except `logged_train_loss`.
pub fn record_scalars(rec: &MetricsRecord) -> Vec<(&str, f64)> {
    let mut v: Vec<(&str, f64)> = rec.epoch.map(|e| ("epoch", e)).into_iter().collect();
    v.extend([
        ("wall_time_s", rec.wall_time_s),
        ("train_loss", rec.train_loss),
        ("lr", rec.lr),
        ("grad_norm", rec.grad_norm),
        ("items_per_s", rec.items_per_s),
    ]);
    v.extend(rec.metrics.iter().map(|(k, x)| (k.as_str(), *x)));
    v
}

/// The record's training loss at log resolution: its `logged_train_loss`, or
/// `(step, train_loss)` where that is absent (see the [module docs](self)).
pub fn logged_points(rec: &MetricsRecord) -> Vec<(u64, f64)> {
    if rec.logged_train_loss.is_empty() {
        vec![(rec.step, rec.train_loss)]
    } else {
        rec.logged_train_loss.clone()
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name, for the file name; characters that do not belong in one become `_`.
fn hostname() -> String {
    #[cfg(unix)]
    let name = {
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is writable for its whole length; the result is read up to its first
        // NUL only, and not at all on failure.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if rc == 0 {
            String::from_utf8_lossy(&buf[..end]).into_owned()
        } else {
            String::new()
        }
    };
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME").unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

fn summary_event(wall_time: f64, step: u64, scalars: &[(&str, f64)]) -> Result<Event> {
    let step = i64::try_from(step)
        .map_err(|_| invalid!("step {step} does not fit an event file's int64 step"))?;
    Ok(Event {
        wall_time,
        step,
        what: Some(What::Summary(Summary {
            value: scalars
                .iter()
                .map(|&(tag, x)| Value {
                    tag: tag.to_string(),
                    simple_value: Some(x as f32),
                })
                .collect(),
        })),
    })
}

/// The events file of a run, open for appending (see the [module docs](self)).
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// Starts the events file of the session training into `dir` (see *Resume* in the
    /// [module docs](self)). `resumed_at`: the checkpoint's step when the session resumes a run.
    /// A resumed run whose folder holds its events files keeps them, and the new file starts
    /// with a session start at the checkpoint's step; otherwise the folder's events files are
    /// removed and the new one starts at step 0. From there the file replays `history` (the
    /// run's evaluations so far) and `pending_logged` (its log lines since the last one), over
    /// `wall_time_s`, the training time so far.
    pub fn start(
        dir: &Path,
        resumed_at: Option<u64>,
        history: &[MetricsRecord],
        pending_logged: &[(u64, f64)],
        wall_time_s: f64,
    ) -> Result<Self> {
        let now = unix_now();
        // TensorBoard reads a folder's events files in name order and moves on only to a name
        // after the one it is reading: the new file must sort after the old ones, also when a
        // resume follows its session within the same second.
        let old = event_files(dir)?;
        let stamp = old
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                name[FILE_PREFIX.len()..]
                    .split('.')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .map(|s| s + 1)
            .fold(now as u64, u64::max);
        let path = dir.join(format!("{FILE_PREFIX}{stamp}.{}", hostname()));
        let continues = resumed_at.filter(|_| !old.is_empty());
        // The session starts at the checkpoint's step when it continues the files, since a
        // finished run's test record at that step is gone from `metrics.jsonl` on resume; what
        // else the history holds at that step is written again below.
        let from = continues.unwrap_or(0);
        // Replayed events count training time back from now: that keeps the spacing of the
        // curves; the file's first records are stamped at the (reconstructed) start of the run.
        let then = |t: f64| now - (wall_time_s - t).max(0.0);
        let session = |what| Event {
            wall_time: then(0.0),
            step: 0,
            what: Some(what),
        };
        let mut bytes = Vec::new();
        write_record(
            &session(What::FileVersion(FILE_VERSION.into())).encode_to_vec(),
            &mut bytes,
        );
        let mut start = session(What::SessionLog(SessionLog {
            status: SessionLog::START,
        }));
        start.step = i64::try_from(from)
            .map_err(|_| invalid!("step {from} does not fit an event file's int64 step"))?;
        write_record(&start.encode_to_vec(), &mut bytes);
        for rec in history.iter().filter(|r| r.step >= from) {
            let wall = then(rec.wall_time_s);
            for (s, loss) in logged_points(rec).into_iter().filter(|p| p.0 >= from) {
                let ev = summary_event(wall, s, &[(LOGGED_TRAIN_LOSS, loss)])?;
                write_record(&ev.encode_to_vec(), &mut bytes);
            }
            let ev = summary_event(wall, rec.step, &record_scalars(rec))?;
            write_record(&ev.encode_to_vec(), &mut bytes);
        }
        for &(s, loss) in pending_logged.iter().filter(|p| p.0 >= from) {
            let ev = summary_event(now, s, &[(LOGGED_TRAIN_LOSS, loss)])?;
            write_record(&ev.encode_to_vec(), &mut bytes);
        }
        crate::io::replace_file(&path, &bytes)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| NablaError::io(&path, e))?;
        if continues.is_none() {
            for old in &old {
                std::fs::remove_file(old).map_err(|e| NablaError::io(old, e))?;
            }
        }
        Ok(EventWriter { path, file })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event of `scalars` at `step`, stamped now, in one write.
    pub fn scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        let mut bytes = Vec::new();
        write_record(
            &summary_event(unix_now(), step, scalars)?.encode_to_vec(),
            &mut bytes,
        );
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.flush())
            .map_err(|e| NablaError::io(&self.path, e))
    }

    /// Appends an evaluation record. `logged_live`: its log lines were written as they were
    /// logged ([`EventWriter::scalars`] with [`LOGGED_TRAIN_LOSS`]); when there were none, the
    /// record's `(step, train_loss)` stands for them.
    pub fn record(&mut self, rec: &MetricsRecord, logged_live: bool) -> Result<()> {
        if !logged_live {
            self.scalars(rec.step, &[(LOGGED_TRAIN_LOSS, rec.train_loss)])?;
        }
        self.scalars(rec.step, &record_scalars(rec))
    }

    /// Appends the final test record's metrics at its step.
    pub fn test(&mut self, rec: &TestRecord) -> Result<()> {
        let v: Vec<(&str, f64)> = rec.metrics.iter().map(|(k, x)| (k.as_str(), *x)).collect();
        self.scalars(rec.step, &v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C("123456789") = 0xE3069283 (the published check value of the Castagnoli CRC);
    /// its masked form and the record bytes below were computed independently, with
    /// TensorBoard's own `masked_crc32c` and `RecordWriter` (tensorboard 2.x, Python).
    #[test]
    fn masked_crc_known_answers() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        let version = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        };
        let mut rec = Vec::new();
        write_record(&version.encode_to_vec(), &mut rec);
        assert_eq!(hex(&rec), KNOWN_VERSION_RECORD);
        let ev = summary_event(2.25, 7, &[("lr", 0.0), ("val_acc", 0.5)]).unwrap();
        let mut rec = Vec::new();
        write_record(&ev.encode_to_vec(), &mut rec);
        assert_eq!(hex(&rec), KNOWN_SCALAR_RECORD);
        let start = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(What::SessionLog(SessionLog {
                status: SessionLog::START,
            })),
        };
        assert_eq!(
            hex(&start.encode_to_vec()),
            "09000000000000f83f3a020801" /* TensorBoard's event_pb2 */
        );
    }

    const KNOWN_VERSION_RECORD: &str =
        "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e743a322a28646c";
    const KNOWN_SCALAR_RECORD: &str =
        "2800000000000000ff70164a09000000000000024010072a1b0a090a026c7215\
        000000000a0e0a0776616c5f616363150000003fc628bf8f";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Write → read: every record's CRCs verify against the crc32c crate, the events decode
    /// with prost to what was written (0.0 included), and damage is a clear error.
    #[test]
    fn record_round_trip_and_corruption() {
        let events = vec![
            Event {
                wall_time: 1e9,
                step: 0,
                what: Some(What::FileVersion(FILE_VERSION.into())),
            },
            summary_event(1e9 + 1.0, 3, &[("train_loss", 2.5), ("lr", 0.0)]).unwrap(),
            summary_event(1e9 + 2.0, 1 << 40, &[("val_acc", 1.0 / 3.0)]).unwrap(),
        ];
        let mut bytes = Vec::new();
        for e in &events {
            write_record(&e.encode_to_vec(), &mut bytes);
        }
        let p = Path::new("x.tfevents");
        let recs = read_records(&bytes, p).unwrap();
        assert_eq!(recs.len(), 3);
        let mut at = 0;
        for (r, e) in recs.iter().zip(&events) {
            let n = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(n, r.len());
            let crc = |b: &[u8]| crc32c::crc32c(b).rotate_right(15).wrapping_add(0xa282_ead8);
            assert_eq!(
                &bytes[at + 8..at + 12],
                crc(&bytes[at..at + 8]).to_le_bytes()
            );
            assert_eq!(&bytes[at + 12 + n..at + 16 + n], crc(r).to_le_bytes());
            assert_eq!(&Event::decode(*r).unwrap(), e);
            at += 16 + n;
        }
        let back = Event::decode(recs[1]).unwrap();
        assert_eq!(back.step, 3);
        assert_eq!(back.scalars(), vec![("train_loss", 2.5f32), ("lr", 0.0)]);
        assert_eq!(
            Event::decode(recs[2]).unwrap().scalars(),
            vec![("val_acc", (1.0f64 / 3.0) as f32)]
        );

        let mut bad = bytes.clone();
        bad[20] ^= 1;
        let e = read_records(&bad, p).unwrap_err().to_string();
        assert!(
            e.contains("x.tfevents") && e.contains("data fails its CRC"),
            "{e}"
        );
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        let e = read_records(&bad, p).unwrap_err().to_string();
        assert!(
            e.contains("record at byte 0: the length fails its CRC"),
            "{e}"
        );
        let e = read_records(&bytes[..bytes.len() - 1], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs past the end"), "{e}");
    }

    #[test]
    fn hostname_is_a_file_name_part() {
        let h = hostname();
        assert!(!h.is_empty() && !h.contains('/'), "{h:?}");
    }
}
