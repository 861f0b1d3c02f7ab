//! Files: safetensors checkpoints (PyTorch/timm tensor names) and atomic writes.
//!
//! Every file nabla writes goes to a temporary file in the same folder first and is renamed into
//! place, so a crash or a full disk never leaves a half-written checkpoint behind.
//!
//! **Integrity.** Every safetensors file nabla writes records the CRC-32C of each tensor's bytes
//! in its metadata (`"crc32c:<tensor name>": "8 hex digits"`), and every load verifies them: a
//! flipped bit anywhere in the tensor data is an error naming the tensor, never weights used
//! silently. CRC-32C (Castagnoli) detects every burst error up to 32 bits and every error of up
//! to 5 bits in a 128 MiB tensor, and runs at memory speed with SSE 4.2 / ARMv8 CRC
//! instructions — what storage corruption needs; nothing here defends against an attacker.
//! A file that nabla wrote before checksums existed (metadata `format` = `nabla-checkpoint-1`,
//! no `crc32c:` keys) still loads, with a warning on stderr: refusing it would make every
//! existing run unusable, and its structure, shapes and values are still checked. A file from
//! elsewhere (timm, PyTorch) has no checksums to verify. Every load also refuses non-finite
//! values (NaN, ±inf), naming the tensor and the index.
//!
//! **Determinism.** The header is written by [`safetensors_bytes`] itself, tensors sorted by
//! name and metadata keys sorted, so identical tensors give identical bytes (the `safetensors`
//! crate writes its metadata map in hash order, which differs from one process to the next).

use crate::autograd::ParamStore;
use crate::error::{NablaError, Result};
use crate::tensor::{Element, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// The most bytes of an input that an error message quotes: a message about a 100 MB line
/// names the line and shows its start, never the whole line.
pub const QUOTE_LIMIT: usize = 200;

/// At most [`QUOTE_LIMIT`] bytes of `input` for an error message (see [`excerpt`]): `{}` shows
/// them as text, `{:?}` quoted and escaped; a longer input is cut at a character boundary and
/// followed by its full length, `"abc…" (1048576 bytes)`. Invalid UTF-8 shows as U+FFFD.
#[derive(Clone, Copy)]
pub struct Excerpt<'a> {
    input: &'a [u8],
}

/// What of `input` an error message quotes: the one helper every parser's message goes
/// through, so no message grows with the input (see [`Excerpt`]).
pub fn excerpt<S: AsRef<[u8]> + ?Sized>(input: &S) -> Excerpt<'_> {
    Excerpt {
        input: input.as_ref(),
    }
}

impl Excerpt<'_> {
    /// The quoted head, and whether the input was cut.
    fn head(&self) -> (std::borrow::Cow<'_, str>, bool) {
        let b = self.input;
        if b.len() <= QUOTE_LIMIT {
            return (String::from_utf8_lossy(b), false);
        }
        // Back up to the first byte of a UTF-8 character (continuation bytes are 10xxxxxx),
        // so valid text is not cut inside a character.
        let mut end = QUOTE_LIMIT;
        while end > QUOTE_LIMIT - 3 && b[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        (String::from_utf8_lossy(&b[..end]), true)
    }
}

impl std::fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.head() {
            (h, false) => f.write_str(&h),
            (h, true) => write!(f, "{h}… ({} bytes)", self.input.len()),
        }
    }
}

impl std::fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.head() {
            (h, false) => write!(f, "{h:?}"),
            (h, true) => write!(f, "{h:?}… ({} bytes)", self.input.len()),
        }
    }
}

/// Writes `bytes` to `path` through a temporary file + fsync + rename.
pub fn atomic_write(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_via_temp(path.as_ref(), bytes, true)
}

fn write_via_temp(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let fname = path.file_name().ok_or_else(|| {
        NablaError::InvalidArgument(format!("not a file path: {}", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        fname.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(NablaError::io(path, e));
    }
    Ok(())
}

/// Replaces `path` by `bytes` through a temporary file and a rename, like [`atomic_write`], but
/// without waiting for the disk (no fsync): readers never see a half-written file, but after a
/// power loss it may be older or empty. For files rewritten often whose durable copy lives
/// elsewhere (a run's `metrics.jsonl`, also kept in every checkpoint's `state.json`).
pub fn replace_file(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_via_temp(path.as_ref(), bytes, false)
}

fn to_le_bytes<T: Element>(t: &Tensor<T>) -> (Dtype, Vec<u8>) {
    if T::DTYPE == "f64" {
        let mut out = Vec::with_capacity(t.numel() * 8);
        for x in t.data() {
            out.extend_from_slice(&x.as_f64().to_le_bytes());
        }
        (Dtype::F64, out)
    } else {
        let mut out = Vec::with_capacity(t.numel() * 4);
        for x in t.data() {
            out.extend_from_slice(&(x.as_f64() as f32).to_le_bytes());
        }
        (Dtype::F32, out)
    }
}

/// Metadata key prefix of a tensor's checksum: `crc32c:<name>` → the CRC-32C of its bytes as
/// stored, 8 lowercase hex digits (see the [module docs](self)).
pub const CHECKSUM_PREFIX: &str = "crc32c:";

/// The largest safetensors header read (the `safetensors` crate's own limit, 100 MB): the
/// 8-byte length at the start of a file is checked against it before anything is read.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Serializes named tensors (in their own element type) with optional string metadata, plus
/// the checksum of every tensor (`crc32c:<name>`). Tensors are laid out by name and metadata
/// keys sorted, so the bytes depend only on the names, shapes, values and metadata.
pub fn safetensors_bytes<T: Element>(
    tensors: &[(String, &Tensor<T>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut owned: Vec<(&str, Dtype, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (d, b) = to_le_bytes(t);
            (n.as_str(), d, t.shape(), b)
        })
        .collect();
    owned.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(w) = owned.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(NablaError::Other(format!(
            "safetensors serialize: tensor name {:?} given twice",
            w[0].0
        )));
    }
    let mut meta: BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    if let Some(k) = meta.keys().find(|k| k.starts_with(CHECKSUM_PREFIX)) {
        return Err(NablaError::Other(format!(
            "safetensors serialize: metadata key {k:?} is reserved for checksums"
        )));
    }
    for (name, _, _, bytes) in &owned {
        meta.insert(
            format!("{CHECKSUM_PREFIX}{name}"),
            format!("{:08x}", crc32c::crc32c(bytes)),
        );
    }
    // The header, key by key in a fixed order (`json!` maps would follow serde_json's feature
    // flags): `{"__metadata__":{…},"<name>":{"dtype":…,"shape":[…],"data_offsets":[a,b]},…}`.
    let js = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let mut header = String::from("{\"__metadata__\":{");
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!("{}:{}", js(k), js(v)));
    }
    header.push('}');
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in &owned {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{dtype:?}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            js(name),
            dims.join(","),
            offset + bytes.len()
        ));
        offset += bytes.len();
    }
    header.push('}');
    // The data starts 8-byte aligned, as the safetensors crate writes it.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, bytes) in &owned {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// Saves named tensors to `path` atomically.
pub fn save_safetensors<T: Element>(
    path: impl AsRef<Path>,
    tensors: &[(String, &Tensor<T>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors_bytes(tensors, metadata)?;
    atomic_write(path, &bytes)
}

/// Loads every floating-point tensor of a safetensors file (F16, BF16, F32 or F64 on disk)
/// converted to `T`. Corrupt or truncated files are errors naming the path.
pub fn load_safetensors<T: Element>(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor<T>>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    parse_safetensors(&bytes, path)
}

/// What a file that is not safetensors is, from its magic bytes (`None`: unknown, or it looks
/// like safetensors: an 8-byte header length followed by `{`). Keeps "header too large" — what
/// the safetensors parser says of a PNG — out of the error messages.
pub fn sniff_non_safetensors(bytes: &[u8]) -> Option<&'static str> {
    use crate::data::image_folder::{sniff_image, ImageKind};
    if bytes.len() > 8 && bytes[8] == b'{' {
        return None;
    }
    match sniff_image(bytes) {
        Some(ImageKind::Png) => return Some("a PNG image"),
        Some(ImageKind::Jpeg) => return Some("a JPEG image"),
        None => {}
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        Some("a gzip file")
    } else if bytes.len() >= 4 && bytes[..3] == [0, 0, 8] {
        Some("an IDX file")
    } else if bytes.starts_with(b"PK\x03\x04") {
        Some("a zip archive (a PyTorch .pt/.pth file?)")
    } else {
        None
    }
}

/// Parses a safetensors file's bytes into tensors converted to `T`, verifying the checksums
/// and refusing non-finite values (see the [module docs](self)); `path` names the file in
/// errors.
pub fn parse_safetensors<T: Element>(
    bytes: &[u8],
    path: &Path,
) -> Result<BTreeMap<String, Tensor<T>>> {
    if let Some(kind) = sniff_non_safetensors(bytes) {
        return Err(NablaError::format(
            path,
            format!("this is {kind}, not a safetensors file"),
        ));
    }
    let err = |msg: String| NablaError::format(path, msg);
    // The header's length is checked against the bytes present and the limit before the
    // safetensors parser reads it, so the message can say which of the two fails.
    let Some(len) = bytes.get(..8) else {
        return Err(err(format!(
            "truncated safetensors file: {} bytes, less than its 8-byte header length",
            bytes.len()
        )));
    };
    let declared = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if declared > MAX_HEADER_BYTES {
        return Err(err(format!(
            "the safetensors header declares {declared} bytes, more than the {MAX_HEADER_BYTES} a header may have"
        )));
    }
    if declared > (bytes.len() - 8) as u64 {
        return Err(err(format!(
            "truncated safetensors file: the header declares {declared} bytes, the file has {} after the length",
            bytes.len() - 8
        )));
    }
    check_offsets(
        &bytes[8..8 + declared as usize],
        bytes.len() - 8 - declared as usize,
    )
    .map_err(err)?;
    let (n, header) = SafeTensors::read_metadata(bytes).map_err(|e| {
        // The JSON parser's messages quote the offending value (a tensor name, a string of
        // any length): at most QUOTE_LIMIT bytes of them.
        err(format!(
            "not a valid safetensors file: {}",
            excerpt(&e.to_string())
        ))
    })?;
    let data = &bytes[8 + n..];
    let mut infos: Vec<(String, &safetensors::tensor::TensorInfo)> =
        header.tensors().into_iter().collect();
    // Name order: the first bad tensor reported is the same on every run.
    infos.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views: Vec<(&str, &[u8])> = Vec::with_capacity(infos.len());
    for (name, info) in &infos {
        // The parser checks that the offsets tile the data, but its sum of offsets and header
        // length can wrap around; every range is checked against the bytes present here.
        let (a, b) = info.data_offsets;
        let d = data.get(a..b).ok_or_else(|| {
            err(format!(
                "tensor {} has data offsets [{a}, {b}] outside the {} data bytes of the file",
                excerpt(name),
                data.len()
            ))
        })?;
        // A zero dimension makes the element count 0 whatever the others are; a shape whose
        // other dimensions overflow a count is refused, so nothing downstream multiplies them.
        if info
            .shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1usize, |p, &d| p.checked_mul(d))
            .is_none()
        {
            return Err(err(format!(
                "tensor {} has shape {}: its dimensions overflow an element count",
                excerpt(name),
                excerpt(&format!("{:?}", info.shape))
            )));
        }
        views.push((name.as_str(), d));
    }
    verify_checksums(header.metadata().as_ref(), &views, path)?;
    let mut out = BTreeMap::new();
    for ((name, info), (_, d)) in infos.iter().zip(&views) {
        let shown = excerpt(name);
        let vals: Vec<T> = match info.dtype {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| T::c(f32::from_le_bytes(c.try_into().unwrap()) as f64))
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| T::c(f64::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| {
                    let bits = (u16::from_le_bytes([c[0], c[1]]) as u32) << 16;
                    T::c(f32::from_bits(bits) as f64)
                })
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| T::c(f16_to_f64(u16::from_le_bytes([c[0], c[1]]))))
                .collect(),
            other => {
                return Err(NablaError::format(
                    path,
                    format!(
                        "tensor {shown} has dtype {other:?}; only F16/BF16/F32/F64 are supported"
                    ),
                ))
            }
        };
        if let Some((i, v)) = vals.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            // A finite F64 value read as f32 overflows to ±inf: name the value and the cause.
            let stored = (info.dtype == Dtype::F64)
                .then(|| f64::from_le_bytes(d[8 * i..8 * i + 8].try_into().unwrap()))
                .filter(|s| s.is_finite());
            let (value, why) = match stored {
                Some(s) => (
                    format!("{s:e}"),
                    format!("beyond the range of {}", T::DTYPE),
                ),
                None => (
                    v.as_f64().to_string(),
                    "non-finite values are refused (a diverged or corrupt model)".into(),
                ),
            };
            return Err(NablaError::format(
                path,
                format!(
                    "tensor {shown} {} holds {value} at flat index {i}: {why}",
                    excerpt(&format!("{:?}", info.shape)),
                ),
            ));
        }
        out.insert(name.clone(), Tensor::new(&info.shape, vals)?);
    }
    Ok(out)
}

/// Every tensor's data offsets in a safetensors header (JSON bytes) lie within the `data`
/// bytes that follow it. The `safetensors` parser adds the last offset to the header length
/// unchecked (an overflow panic in a debug build, a wrap-around to a valid-looking total in a
/// release build), so a hostile header is refused here first. Anything else that is wrong
/// with the header is left to the parser's messages.
fn check_offsets(header: &[u8], data: usize) -> std::result::Result<(), String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(header) else {
        return Ok(());
    };
    for (name, info) in &map {
        let Some(offsets) = info.get("data_offsets").and_then(|o| o.as_array()) else {
            continue;
        };
        for o in offsets {
            if o.as_u64().is_some_and(|o| o > data as u64) {
                return Err(format!(
                    "tensor {} has data offset {o} past the {data} data bytes of the file",
                    excerpt(name)
                ));
            }
        }
    }
    Ok(())
}

/// Checks the `crc32c:<name>` checksums of `tensors` (name, bytes as stored) against the
/// metadata: every tensor must have one and match it. A file without any checksum is accepted
/// (foreign files have none), with a warning when nabla wrote it (an older checkpoint).
fn verify_checksums(
    meta: Option<&HashMap<String, String>>,
    tensors: &[(&str, &[u8])],
    path: &Path,
) -> Result<()> {
    let sums: BTreeMap<&str, &str> = meta
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix(CHECKSUM_PREFIX)?, v.as_str())))
        .collect();
    if sums.is_empty() {
        let ours = meta
            .and_then(|m| m.get("format"))
            .is_some_and(|f| f.starts_with("nabla-checkpoint"));
        if ours && !tensors.is_empty() {
            crate::errln!(
                "warning: {} records no tensor checksums (written before nabla recorded them): loading it unverified",
                path.display()
            );
        }
        return Ok(());
    }
    let corrupt = |msg: String| {
        NablaError::format(
            path,
            format!("{msg}: the file is corrupt; refusing to load it"),
        )
    };
    for (name, bytes) in tensors {
        let shown = excerpt(*name);
        let Some(stored) = sums.get(name) else {
            return Err(corrupt(format!(
                "tensor {shown} has no checksum, though the file records them for its other tensors"
            )));
        };
        let hex = stored.len() == 8 && stored.bytes().all(|b| b.is_ascii_hexdigit());
        let Some(stored) = u32::from_str_radix(stored, 16).ok().filter(|_| hex) else {
            return Err(corrupt(format!(
                "the checksum of tensor {shown} is {:?}, not 8 hex digits",
                excerpt(*stored)
            )));
        };
        let got = crc32c::crc32c(bytes);
        if got != stored {
            return Err(corrupt(format!(
                "tensor {shown} fails its checksum (stored crc32c {stored:08x}, its bytes give {got:08x})"
            )));
        }
    }
    // `tensors` is in name order (see `parse_safetensors`): a binary search per checksum keeps
    // a header of a million names from taking a million squared comparisons.
    if let Some(name) = sums
        .keys()
        .find(|n| tensors.binary_search_by(|(t, _)| t.cmp(n)).is_err())
    {
        return Err(corrupt(format!(
            "a checksum is recorded for tensor {:?}, which the file does not hold",
            excerpt(*name)
        )));
    }
    Ok(())
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// [`take`], and the tensor must have the shape the model expects.
pub fn take_shaped<'a, T: Element>(
    map: &'a BTreeMap<String, Tensor<T>>,
    name: &str,
    shape: &[usize],
    path: impl AsRef<Path>,
) -> Result<&'a Tensor<T>> {
    let path = path.as_ref();
    let t = take(map, name, path)?;
    if t.shape() != shape {
        return Err(NablaError::format(
            path,
            format!(
                "tensor {name} has shape {:?}, the model expects {shape:?}",
                t.shape()
            ),
        ));
    }
    Ok(t)
}

/// Fetches a tensor from a loaded file with a clear error if it is missing.
pub fn take<'a, T: Element>(
    map: &'a BTreeMap<String, Tensor<T>>,
    name: &str,
    path: impl AsRef<Path>,
) -> Result<&'a Tensor<T>> {
    map.get(name).ok_or_else(|| {
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        NablaError::format(
            path,
            format!(
                "missing tensor {name:?} (file has {} tensor{}: {})",
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                excerpt(&names.join(", "))
            ),
        )
    })
}

impl<T: Element> ParamStore<T> {
    /// Saves the parameter values with their names (atomically).
    pub fn save(
        &self,
        path: impl AsRef<Path>,
        metadata: Option<HashMap<String, String>>,
    ) -> Result<()> {
        let list: Vec<(String, &Tensor<T>)> =
            self.iter().map(|p| (p.name.clone(), &p.value)).collect();
        save_safetensors(path, &list, metadata)
    }
    /// Loads values for every parameter of this store from `path`, checking names and shapes.
    pub fn load_values(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let map = load_safetensors::<T>(path)?;
        for p in self.iter_mut() {
            p.value = take_shaped(&map, &p.name, p.value.shape(), path)?.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let a = Tensor::<f32>::from_f64(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
        let b = Tensor::<f32>::from_f64(&[1], &[-1.0]).unwrap();
        save_safetensors(&p, &[("w".into(), &a), ("b".into(), &b)], None).unwrap();
        let m = load_safetensors::<f64>(&p).unwrap();
        assert_eq!(m["w"].shape(), &[2, 3]);
        assert_eq!(m["w"].data()[5], 6.5);
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // Truncated file → format error, not a panic.
        let bytes = std::fs::read(&p).unwrap();
        let q = dir.path().join("t.safetensors");
        std::fs::write(&q, &bytes[..bytes.len() - 3]).unwrap();
        let e = load_safetensors::<f32>(&q).unwrap_err().to_string();
        assert!(e.contains("t.safetensors"), "{e}");
        let e = load_safetensors::<f32>(dir.path().join("missing.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        let e = take(&m, "nope", &p).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("w"), "{e}");
    }

    /// The bytes depend on the tensors and the metadata only, not on the order of either (the
    /// metadata maps below iterate in different orders: each has its own hash keys); the
    /// safetensors crate reads the file back; every tensor carries its checksum.
    #[test]
    fn bytes_are_deterministic_and_readable() {
        let a = Tensor::<f32>::from_f64(&[2, 2], &[1.0, -2.0, 3.5, 4.0]).unwrap();
        let b = Tensor::<f32>::from_f64(&[3], &[0.5, 0.25, 8.0]).unwrap();
        let meta = || -> HashMap<String, String> {
            (0..20)
                .map(|k| (format!("key{k}"), format!("v{k}")))
                .collect()
        };
        let one = safetensors_bytes(&[("a".into(), &a), ("b".into(), &b)], Some(meta())).unwrap();
        for _ in 0..5 {
            let two =
                safetensors_bytes(&[("b".into(), &b), ("a".into(), &a)], Some(meta())).unwrap();
            assert!(one == two);
        }
        assert_eq!(
            (8 + u64::from_le_bytes(one[..8].try_into().unwrap())) % 8,
            0
        );
        let st = SafeTensors::deserialize(&one).unwrap();
        assert_eq!(st.tensor("b").unwrap().shape(), &[3]);
        let (_, header) = SafeTensors::read_metadata(&one).unwrap();
        let m = header.metadata().clone().unwrap();
        assert_eq!(m["key7"], "v7");
        assert_eq!(
            m["crc32c:b"],
            format!("{:08x}", crc32c::crc32c(st.tensor("b").unwrap().data()))
        );
        let back = parse_safetensors::<f64>(&one, Path::new("x")).unwrap();
        assert_eq!(back["a"].data(), &[1.0, -2.0, 3.5, 4.0]);
        // Names given twice and metadata keys of the checksums are refused.
        assert!(safetensors_bytes(&[("a".into(), &a), ("a".into(), &b)], None).is_err());
        let bad = HashMap::from([("crc32c:a".to_string(), "0".to_string())]);
        assert!(safetensors_bytes(&[("a".into(), &a)], Some(bad)).is_err());
    }

    /// A corrupt header is refused as well as corrupt data: a tensor without its checksum, a
    /// checksum of a tensor that is not there, a checksum that is not hex; and non-finite values.
    #[test]
    fn checksum_and_finiteness_errors_name_the_tensor() {
        let a = Tensor::<f32>::from_f64(&[2], &[1.0, 2.0]).unwrap();
        let b = Tensor::<f32>::from_f64(&[2], &[3.0, f64::INFINITY]).unwrap();
        let p = Path::new("m.safetensors");
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let crc = format!("{:08x}", crc32c::crc32c(&data));
        let with_meta = |meta: &[(&str, &str)]| {
            let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
            let meta: HashMap<String, String> = meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            safetensors::serialize([("a", view)], Some(meta)).unwrap()
        };
        let e = |bytes: &[u8]| parse_safetensors::<f32>(bytes, p).unwrap_err().to_string();
        parse_safetensors::<f32>(&with_meta(&[("crc32c:a", &crc)]), p).unwrap();
        let msg = e(&with_meta(&[("crc32c:a", "0badc0de")]));
        assert!(msg.contains("tensor a fails its checksum") && msg.contains("m.safetensors"));
        let msg = e(&with_meta(&[("crc32c:a", &crc), ("crc32c:z", &crc)]));
        assert!(
            msg.contains("for tensor \"z\", which the file does not hold"),
            "{msg}"
        );
        let msg = e(&with_meta(&[("crc32c:a", "xyz")]));
        assert!(msg.contains("not 8 hex digits"), "{msg}");
        let msg = e(&with_meta(&[("crc32c:q", &crc)]));
        assert!(msg.contains("tensor a has no checksum"), "{msg}");
        // A foreign file (no checksums at all) loads.
        parse_safetensors::<f32>(&with_meta(&[]), p).unwrap();
        let bytes = safetensors_bytes(&[("a".into(), &a), ("b".into(), &b)], None).unwrap();
        let msg = e(&bytes);
        assert!(
            msg.contains("tensor b [2] holds inf at flat index 1"),
            "{msg}"
        );
        // A finite F64 value beyond f32's range loads as f64 and is refused as f32, named.
        let big = Tensor::<f64>::from_f64(&[2], &[1.0, 1e300]).unwrap();
        let bytes = safetensors_bytes(&[("c".into(), &big)], None).unwrap();
        assert_eq!(
            parse_safetensors::<f64>(&bytes, p).unwrap()["c"].data()[1],
            1e300
        );
        let msg = e(&bytes);
        assert!(
            msg.contains("tensor c [2] holds 1e300 at flat index 1: beyond the range of f32"),
            "{msg}"
        );
    }

    /// Error messages quote at most QUOTE_LIMIT bytes of an input, cut at a character
    /// boundary, with the input's full length.
    #[test]
    fn excerpts_are_bounded() {
        assert_eq!(format!("{:?}", excerpt("a\tb")), "\"a\\tb\"");
        assert_eq!(excerpt("short").to_string(), "short");
        let long = "x".repeat(1 << 20);
        let shown = format!("{:?}", excerpt(&long));
        assert_eq!(
            shown,
            format!("\"{}\"… (1048576 bytes)", "x".repeat(QUOTE_LIMIT))
        );
        // 'é' is 2 bytes: 199 'a' then 'é' would cut the 'é' at byte 200.
        let s = format!("{}é{}", "a".repeat(199), "b".repeat(50));
        assert_eq!(
            excerpt(&s).to_string(),
            format!("{}… (251 bytes)", "a".repeat(199))
        );
        assert_eq!(excerpt(&[0xffu8, b'a'][..]).to_string(), "\u{fffd}a");
    }

    /// A hostile header: a length beyond the limit or the file, data offsets past the data
    /// (whose sum with the header length wraps around in the `safetensors` parser), a shape whose
    /// dimensions overflow a count beside a zero; each a clear error, never a panic.
    #[test]
    fn hostile_safetensors_headers_are_refused() {
        let p = Path::new("h.safetensors");
        let file = |header: &str, data: &[u8]| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.extend_from_slice(data);
            b
        };
        let e = |b: &[u8]| parse_safetensors::<f32>(b, p).unwrap_err().to_string();
        let mut huge = file("{}", &[]);
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let msg = e(&huge);
        assert!(
            msg.contains("declares 1099511627776 bytes, more than the 100000000"),
            "{msg}"
        );
        huge[..8].copy_from_slice(&5000u64.to_le_bytes());
        let msg = e(&huge);
        assert!(
            msg.contains("declares 5000 bytes, the file has 2 after the length"),
            "{msg}"
        );
        let msg = e(&[1, 2, 3]);
        assert!(msg.contains("truncated safetensors file: 3 bytes"), "{msg}");
        // Offsets whose end plus header length plus 8 wraps around to the file's length: 8
        // byte tensors (each under 2^61 bytes, so the parser's bit counts do not overflow) that
        // tile [0, 2^64 - 8 - header + 4).
        let header_len = 1024u64;
        let total = 0u64.wrapping_sub(8 + header_len).wrapping_add(4);
        let piece = (1u64 << 61) - 1;
        let mut h = String::from("{");
        let mut at = 0u64;
        for k in 0..8 {
            let len = if k < 7 { piece } else { total - at };
            h.push_str(&format!(
                "{}\"t{k}\":{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[{at},{}]}}",
                if k > 0 { "," } else { "" },
                at + len
            ));
            at += len;
        }
        h.push('}');
        while (h.len() as u64) < header_len {
            h.push(' ');
        }
        assert_eq!((h.len() as u64, at), (header_len, total));
        let msg = e(&file(&h, &[0; 4]));
        assert!(
            msg.contains(&format!(
                "tensor t0 has data offset {piece} past the 4 data bytes"
            )),
            "{msg}"
        );
        // [0, 2^63, 4]: zero elements, but 2^63·4 overflows any count made from the shape.
        let big = 1u64 << 63;
        let h =
            format!("{{\"w\":{{\"dtype\":\"F32\",\"shape\":[0,{big},4],\"data_offsets\":[0,0]}}}}");
        let msg = e(&file(&h, &[]));
        assert!(msg.contains("overflow an element count"), "{msg}");
        // A tensor name of 1 MB in a message: quoted up to QUOTE_LIMIT bytes.
        let name = "n".repeat(1 << 20);
        let h =
            format!("{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}}}");
        let msg = e(&file(&h, &f32::NAN.to_le_bytes()));
        assert!(
            msg.contains("holds NaN") && msg.len() < 600,
            "{}",
            msg.len()
        );
        let m: BTreeMap<String, Tensor<f32>> =
            BTreeMap::from([(name.clone(), Tensor::from_f64(&[1], &[1.0]).unwrap())]);
        let msg = take(&m, "w", p).unwrap_err().to_string();
        assert!(
            msg.contains("file has 1 tensor: nnn")
                && msg.contains("(1048576 bytes)")
                && msg.len() < 600,
            "{}",
            msg.len()
        );
    }

    #[test]
    fn f16_decoding() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x3555), 0.333251953125);
    }
}
