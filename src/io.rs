//! Files: safetensors checkpoints (PyTorch/timm tensor names) and atomic writes.
//!
//! Every file nabla writes goes to a temporary file in the same folder first and is renamed into
//! place, so a crash or a full disk never leaves a half-written checkpoint behind.

use crate::autograd::ParamStore;
use crate::error::{NablaError, Result};
use crate::tensor::{Element, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

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

/// Serializes named tensors (in their own element type) with optional string metadata.
pub fn safetensors_bytes<T: Element>(
    tensors: &[(String, &Tensor<T>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let (d, b) = to_le_bytes(t);
            (n.clone(), d, t.shape().to_vec(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| NablaError::Other(format!("safetensors view for {n}: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata)
        .map_err(|e| NablaError::Other(format!("safetensors serialize: {e}")))
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
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| NablaError::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let vals: Vec<T> = match view.dtype() {
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
                        "tensor {name} has dtype {other:?}; only F16/BF16/F32/F64 are supported"
                    ),
                ))
            }
        };
        out.insert(name.to_string(), Tensor::new(view.shape(), vals)?);
    }
    Ok(out)
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
        NablaError::format(
            path,
            format!(
                "missing tensor {name:?} (file has: {})",
                map.keys().cloned().collect::<Vec<_>>().join(", ")
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

    #[test]
    fn f16_decoding() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x3555), 0.333251953125);
    }
}
