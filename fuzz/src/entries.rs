//! The entry function of every fuzz target: the bytes of one input → a parser of nabla.
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, through `nabla_fuzz`) and the
//! regression test (`tests/fuzz_regressions.rs`, through `#[path]`), so the test replays
//! exactly what the fuzzer ran. Uses nothing but `nabla` and its own dependencies.
//!
//! An entry returns the parser's `Err` for bad input; it panics only where the parser broke
//! a promise (a panic inside it, or two ways of reading the same bytes that disagree), which
//! is what the fuzzer reports as a crash.

#![allow(dead_code)] // each user calls some of the entries

use nabla::data::planetoid::{NodeDataset, TsvFiles};
use nabla::data::{cifar, idx, image_folder, text};
use nabla::Result;
use std::path::Path;

/// A parser's byte-level entry point.
pub type Entry = fn(&[u8]) -> Result<()>;

/// The fuzz targets by name (`fuzz/fuzz_targets/<name>.rs`, `tests/fuzz_corpus/<name>/`).
pub const TARGETS: [(&str, Entry); 10] = [
    ("idx_raw", idx_raw),
    ("idx_gzip", idx_gzip),
    ("cifar", cifar),
    ("image", image),
    ("planetoid_tsv", planetoid_tsv),
    ("planetoid_linqs", planetoid_linqs),
    ("text", text),
    ("safetensors", safetensors),
    ("state_json", state_json),
    ("metrics_jsonl", metrics_jsonl),
];

/// The input cut into `n` files at NUL bytes (which none of the text formats contains);
/// missing files are empty.
fn files(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    v.resize(n, &[]);
    v
}

/// An uncompressed IDX file; when it holds images `(N, rows, cols)`, also the data set with
/// labels taken from the pixels (so labels outside the 10 classes occur).
pub fn idx_raw(data: &[u8]) -> Result<()> {
    let p = Path::new("fuzz-images-idx3-ubyte");
    let a = idx::parse_idx(data, p)?;
    assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
    if a.dims.len() == 3 {
        let n = a.dims[0];
        let labels = idx::IdxArray {
            dims: vec![n],
            data: (0..n)
                .map(|i| a.data.get(i).map_or(0, |&b| b % 12))
                .collect(),
        };
        let ds = idx::dataset_from_idx(a, labels, p, Path::new("fuzz-labels"), "fuzz", 10)?;
        assert_eq!(ds.pixels.len(), ds.len() * ds.image_len());
    }
    Ok(())
}

/// An IDX file as stored (gzip when it starts with 1f 8b), and the input gzip-compressed: the
/// compressed copy must read exactly as the raw bytes do (the header-first decompression may
/// refuse nothing that the raw parser accepts, and accept nothing it refuses).
pub fn idx_gzip(data: &[u8]) -> Result<()> {
    use std::io::Write;
    let p = Path::new("fuzz.gz");
    let direct = idx::read_idx_bytes(data, p);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("writing to memory");
    let packed = gz.finish().expect("writing to memory");
    let raw = idx::parse_idx(data, p);
    let unpacked = idx::read_idx_bytes(&packed, p);
    match (&raw, &unpacked) {
        (Ok(a), Ok(b)) => assert!(a.dims == b.dims && a.data == b.data),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "raw and gzip-compressed bytes disagree: raw {:?}, gzip {:?}",
            a.as_ref().map(|a| &a.dims),
            b.as_ref().map(|b| &b.dims)
        ),
    }
    direct.map(|_| ())
}

/// A CIFAR batch: the first byte picks CIFAR-10 (even) or CIFAR-100 (odd), the rest is the
/// file.
pub fn cifar(data: &[u8]) -> Result<()> {
    let Some((&first, rest)) = data.split_first() else {
        return Ok(());
    };
    let variant = if first % 2 == 0 {
        cifar::Variant::Cifar10
    } else {
        cifar::Variant::Cifar100
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    cifar::parse_batch(
        rest,
        variant,
        Path::new("fuzz.bin"),
        &mut pixels,
        &mut labels,
    )?;
    assert_eq!(pixels.len(), labels.len() * 3072);
    Ok(())
}

/// One file of an image folder (PNG or JPEG, by its magic bytes), then converted to 1 and 3
/// channels as a folder mixing grey and colour images would.
pub fn image(data: &[u8]) -> Result<()> {
    let img = image_folder::decode_image_bytes(data, Path::new("fuzz.png"))?;
    assert_eq!(img.pixels.len(), img.channels * img.height * img.width);
    img.with_channels(1)?;
    img.with_channels(3)?;
    Ok(())
}

/// A Planetoid TSV folder: `features.tsv`, `labels.tsv`, `edges.tsv`, `split.tsv` separated
/// by NUL bytes.
pub fn planetoid_tsv(data: &[u8]) -> Result<()> {
    let f = files(data, 4);
    let ds = NodeDataset::parse_tsv(
        Path::new("fuzz"),
        TsvFiles {
            features: f[0],
            labels: f[1],
            edges: f[2],
            split: f[3],
        },
    )?;
    assert_eq!(ds.labels.len(), ds.num_nodes());
    Ok(())
}

/// LINQS `.content` and `.cites` separated by a NUL byte.
pub fn planetoid_linqs(data: &[u8]) -> Result<()> {
    let f = files(data, 2);
    let ds = NodeDataset::parse_linqs(
        (f[0], Path::new("fuzz.content")),
        (f[1], Path::new("fuzz.cites")),
        0,
    )?;
    assert_eq!(ds.labels.len(), ds.num_nodes());
    Ok(())
}

/// A text for a character model: the corpus with validation and test parts, its vocabulary
/// saved and read back as a checkpoint stores it, the text decoded again from its ids, and
/// the input read as a saved vocabulary.
pub fn text(data: &[u8]) -> Result<()> {
    let s = text::text_from_bytes(data, Path::new("fuzz.txt"))?;
    let _ = text::Vocab::from_chars(s);
    let c = text::CharCorpus::with_test(s, 0.1, 0.1)?;
    let saved = text::Vocab::from_chars(&c.vocab.as_string())?;
    assert_eq!(saved, c.vocab);
    let all: Vec<usize> = [&c.train[..], &c.val, &c.test].concat();
    assert_eq!(c.vocab.decode(&all), s);
    let streams = text::CharStreams::new(c.train.len(), 3)?;
    let (x, y) = streams.window(&c.train, 0, 2);
    assert_eq!((x.len(), y.len()), (6, 6));
    Ok(())
}

/// A safetensors checkpoint, read as `f32` and as `f64` weights.
pub fn safetensors(data: &[u8]) -> Result<()> {
    let p = Path::new("fuzz.safetensors");
    let a = nabla::io::parse_safetensors::<f32>(data, p);
    let b = nabla::io::parse_safetensors::<f64>(data, p);
    // f32 may refuse what f64 reads (an F64 value beyond f32's range), never the reverse.
    match (&a, &b) {
        (Ok(_), Err(e)) => panic!("read as f32 but not as f64: {e}"),
        (Err(e), Ok(_)) => assert!(e.to_string().contains("beyond the range of f32"), "{e}"),
        _ => {}
    }
    a.map(|_| ())
}

/// A run folder's `state.json` (the checkpoint state, then its model configuration as `vit`
/// and `rnn` read it) or `config.json` (any JSON; its `model` the same way).
pub fn state_json(data: &[u8]) -> Result<()> {
    let p = Path::new("state.json");
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        // config.json: `{"model": …, "train": …}`.
        if let Some(m) = v.get("model") {
            model_configs(m);
        }
    }
    let st = nabla::train::parse_state_bytes(data, p)?;
    model_configs(&st.model_config);
    Ok(())
}

/// A saved model configuration as the commands read it: deserialized, and a ViT's validated.
fn model_configs(m: &serde_json::Value) {
    if let Some(vit) = m.get("vit") {
        if let Ok(c) = serde_json::from_value::<nabla::models::vit::VitConfig>(vit.clone()) {
            let _ = c.validate();
        }
    }
    let _ = serde_json::from_value::<nabla::models::char_rnn::CharRnnConfig>(m.clone());
}

/// A run's `metrics.jsonl`.
pub fn metrics_jsonl(data: &[u8]) -> Result<()> {
    nabla::train::parse_metrics_jsonl(data, Path::new("metrics.jsonl")).map(|_| ())
}
