//! IDX files (MNIST, Fashion-MNIST, the 8x8 digits), raw or gzip-compressed (detected from the
//! gzip magic bytes `1f 8b`). Layout: `00 00 <type> <ndim>`, ndim big-endian u32 sizes, then the
//! row-major elements; only unsigned bytes (type 0x08) are image/label data here.
//! Every inconsistency (magic, type, truncated or over-long data) is an error naming the file.

use super::{ImageDataset, Splits, MAX_IMAGE_SIDE};
use crate::error::{NablaError, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// The IDX header at the start of `bytes`: `(dims, header length, data bytes the dims
/// declare)`, every size checked (magic, element type, at least one dimension, the product of
/// the dimensions with checked arithmetic) before anything is allocated for the data.
fn parse_header(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, usize, usize)> {
    let err = |m: String| NablaError::format(path, m);
    if bytes.len() < 4 {
        return Err(err(format!(
            "truncated IDX header: {} bytes, need at least 4",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(format!(
            "not an IDX file: magic starts with {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        )));
    }
    if bytes[2] != 0x08 {
        return Err(err(format!(
            "IDX element type 0x{:02x} is not supported (only 0x08, unsigned byte)",
            bytes[2]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 {
        return Err(err("IDX file with 0 dimensions".into()));
    }
    let header = 4 + 4 * nd;
    if bytes.len() < header {
        return Err(err(format!(
            "truncated IDX header: {} bytes, {nd} dimensions need {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    // An item of size 0 (an image of 0 rows) would let the first dimension claim any count of
    // items at no cost in bytes (found by the idx_raw fuzz target: 4·10⁹ empty images).
    if dims[1..].contains(&0) {
        return Err(err(format!(
            "IDX dimensions {dims:?}: an item dimension of 0 holds no data"
        )));
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("IDX dimensions {dims:?} overflow")))?;
    Ok((dims, header, n))
}

/// Parses IDX bytes (already decompressed): the header, then exactly the data it declares.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    let (dims, header, n) = parse_header(bytes, path)?;
    let have = bytes.len() - header;
    if have != n {
        return Err(NablaError::format(
            path,
            format!(
                "{} IDX file: dims {dims:?} need {n} data bytes, found {have}",
                if have < n { "truncated" } else { "over-long" }
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file, decompressing gzip when the file starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    read_idx_bytes(&raw, path)
}

/// The bytes of an IDX file as stored (raw, or gzip when they start with the gzip magic) →
/// the array; `path` names the file in errors. A gzip stream is decompressed only as far as
/// its IDX header declares (see [`gunzip_if_gzip`]).
pub fn read_idx_bytes(raw: &[u8], path: &Path) -> Result<IdxArray> {
    if is_gzip(raw) {
        parse_idx(&gunzip(raw, path)?, path)
    } else {
        parse_idx(raw, path)
    }
}

fn is_gzip(raw: &[u8]) -> bool {
    raw.starts_with(&[0x1f, 0x8b])
}

/// The most bytes deflate can expand one compressed byte to (a run of 258-byte copies coded in
/// about 2 bits each: 1032:1), used to refuse an IDX header that declares more data than its
/// gzip stream could possibly hold, before decompressing any of it.
pub const DEFLATE_MAX_RATIO: usize = 1032;

/// The bytes of a file as read, or decompressed when they start with the gzip magic. When the
/// decompressed bytes start with an IDX header, decompression reads the header first and stops
/// as soon as the output exceeds what it declares: a valid header followed by 4 GiB of zeros
/// is refused after reading one byte more than the header promises, not 4 GiB.
pub fn gunzip_if_gzip(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if is_gzip(&raw) {
        gunzip(&raw, path)
    } else {
        Ok(raw)
    }
}

/// Reads from `r` into `out` until `out` holds `len` bytes or the stream ends.
fn read_up_to(r: &mut impl Read, out: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let want = len.saturating_sub(out.len()) as u64;
    r.take(want).read_to_end(out).map(|_| ())
}

/// Decompresses a gzip stream (see [`gunzip_if_gzip`]).
fn gunzip(raw: &[u8], path: &Path) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| {
        NablaError::format(path, format!("corrupt or truncated gzip stream: {e}"))
    };
    let mut gz = flate2::read::GzDecoder::new(raw);
    let mut out = Vec::new();
    // The magic and the number of dimensions, then the sizes: only as many bytes as the header
    // has, whatever the stream holds after them.
    read_up_to(&mut gz, &mut out, 4).map_err(corrupt)?;
    if out.len() < 4 || out[..3] != [0, 0, 8] {
        // Not IDX (another format inside gzip): decompressed whole, at most
        // DEFLATE_MAX_RATIO times the stream.
        gz.read_to_end(&mut out).map_err(corrupt)?;
        return Ok(out);
    }
    let header_len = 4 + 4 * out[3] as usize;
    read_up_to(&mut gz, &mut out, header_len).map_err(corrupt)?;
    let (dims, header, n) = parse_header(&out, path)?;
    let most = raw.len().saturating_mul(DEFLATE_MAX_RATIO);
    if n > most {
        return Err(NablaError::format(
            path,
            format!(
                "IDX dims {dims:?} declare {n} data bytes, more than the {most} a gzip stream of {} bytes can decompress to (truncated or corrupt)",
                raw.len()
            ),
        ));
    }
    // One byte past the declared end tells an over-long stream from an exact one.
    let stop = header + n + 1;
    read_up_to(&mut gz, &mut out, stop).map_err(corrupt)?;
    if out.len() == stop {
        return Err(NablaError::format(
            path,
            format!(
                "over-long IDX file: dims {dims:?} need {n} data bytes, the gzip stream holds more (decompression stopped after {stop} bytes)"
            ),
        ));
    }
    Ok(out)
}

/// Classes of IDX data in `dir`: as many as `classes.txt` names, else 10 (MNIST, Fashion-MNIST,
/// the 8x8 digits). An IDX label file does not say how many classes there are, and taking the
/// largest label + 1 would let one corrupt byte (255) widen the model's head to 256 classes.
pub fn class_count(dir: &Path) -> Result<usize> {
    Ok(super::classes_txt(dir)?.map_or(10, |names| names.len()))
}

/// Images `(N, rows, cols)` and labels `(N)` from two IDX files → a 1-channel data set of
/// `num_classes` classes; a label outside `0..num_classes` is an error naming the file and the
/// label's index.
pub fn load_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
) -> Result<ImageDataset> {
    dataset_from_idx(
        read_idx(images)?,
        read_idx(labels)?,
        images,
        labels,
        name,
        num_classes,
    )
}

/// The data set of a parsed image array `(N, rows, cols)` and label array `(N)` (see
/// [`load_pair`]; `images` and `labels` name the files in errors): shapes, sides and labels
/// checked.
pub fn dataset_from_idx(
    im: IdxArray,
    lb: IdxArray,
    images: &Path,
    labels: &Path,
    name: &str,
    num_classes: usize,
) -> Result<ImageDataset> {
    if im.dims.len() != 3 {
        return Err(NablaError::format(
            images,
            format!(
                "image IDX must have 3 dims (N, rows, cols), has {:?}",
                im.dims
            ),
        ));
    }
    if lb.dims.len() != 1 {
        return Err(NablaError::format(
            labels,
            format!("label IDX must have 1 dim (N), has {:?}", lb.dims),
        ));
    }
    if im.dims[0] != lb.dims[0] {
        return Err(NablaError::format(
            labels,
            format!(
                "{} labels for {} images in {}",
                lb.dims[0],
                im.dims[0],
                images.display()
            ),
        ));
    }
    let (rows, cols) = (im.dims[1], im.dims[2]);
    if !(1..=MAX_IMAGE_SIDE).contains(&rows) || !(1..=MAX_IMAGE_SIDE).contains(&cols) {
        return Err(NablaError::format(
            images,
            format!("images of {rows}x{cols} pixels: a side must be 1 to {MAX_IMAGE_SIDE} pixels"),
        ));
    }
    if im.dims[0] == 0 {
        return Err(NablaError::format(images, "the IDX file holds 0 images"));
    }
    let labels_v: Vec<usize> = lb.data.iter().map(|&b| b as usize).collect();
    if let Some((i, l)) = labels_v.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(NablaError::format(
            labels,
            format!(
                "label {l} at index {i} is not a class of this data set (0..{}): IDX data has 10 classes unless a classes.txt next to it names more, one per line",
                num_classes.saturating_sub(1)
            ),
        ));
    }
    let ds = ImageDataset {
        pixels: im.data,
        labels: labels_v,
        channels: 1,
        height: im.dims[1],
        width: im.dims[2],
        num_classes,
        name: name.to_string(),
        flip_ok: false,
        classes: Vec::new(),
        classes_from: String::new(),
    };
    ds.validate()?;
    Ok(ds)
}

/// The first labels of the official Fashion-MNIST files (60,000 train, 10,000 test images):
/// they recognise the data set in a folder whose name does not say "fashion". The chance that
/// other data begins with the same 16 of 10 labels is 10⁻¹⁶; MNIST's begin 5 0 4 1 … / 7 2 1 0 ….
const FASHION_TRAIN_HEAD: [usize; 16] = [9, 0, 0, 3, 0, 2, 7, 2, 5, 5, 0, 9, 5, 5, 7, 9];
const FASHION_TEST_HEAD: [usize; 16] = [9, 2, 1, 1, 6, 1, 4, 6, 5, 7, 4, 5, 7, 3, 4, 1];

/// Whether `labels` are those of an official Fashion-MNIST file (by count and first labels).
fn is_fashion_mnist(labels: &[usize]) -> bool {
    match labels.len() {
        60_000 => labels.starts_with(&FASHION_TRAIN_HEAD),
        10_000 => labels.starts_with(&FASHION_TEST_HEAD),
        _ => false,
    }
}

/// The standard names of 10-class IDX data: Fashion-MNIST's when the folder's name says
/// "fashion" or the labels are those of the official Fashion-MNIST files, digits "0".."9"
/// otherwise (MNIST, the 8x8 digits). Other class counts get none (a `classes.txt` next to the
/// data can name them).
fn name_classes(mut s: Splits, folder: &str) -> Splits {
    let official = is_fashion_mnist(&s.train.labels)
        || s.test.as_ref().is_some_and(|t| is_fashion_mnist(&t.labels));
    let fashion_names = || {
        super::FASHION_MNIST_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect()
    };
    let (names, from) = if s.train.num_classes != 10 {
        (Vec::new(), String::new())
    } else if folder.to_ascii_lowercase().contains("fashion") {
        (
            fashion_names(),
            format!("Fashion-MNIST's names (the folder is called {folder:?})"),
        )
    } else if official {
        (
            fashion_names(),
            "Fashion-MNIST's names (its official label files)".to_string(),
        )
    } else {
        (
            super::digit_names(),
            format!("digits 0-9 (IDX data in {folder:?}, not called *fashion*)"),
        )
    };
    for ds in std::iter::once(&mut s.train).chain(s.test.as_mut()) {
        ds.classes = names.clone();
        ds.classes_from = from.clone();
    }
    s
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Recognises MNIST-style file names in `dir`; `Ok(None)` if there are none.
pub fn try_load_dir(dir: &Path) -> Result<Option<Splits>> {
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let tr_i = find(dir, "train-images-idx3-ubyte");
    let tr_l = find(dir, "train-labels-idx1-ubyte");
    let te_i = find(dir, "t10k-images-idx3-ubyte");
    let te_l = find(dir, "t10k-labels-idx1-ubyte");
    if tr_i.is_some() || te_i.is_some() || tr_l.is_some() || te_l.is_some() {
        let classes = class_count(dir)?;
        let need = |p: Option<PathBuf>, what: &str| {
            p.ok_or_else(|| {
                NablaError::io(
                    dir.join(what),
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{what}[.gz] is missing from this IDX data folder"),
                    ),
                )
            })
        };
        let train = load_pair(
            &need(tr_i, "train-images-idx3-ubyte")?,
            &need(tr_l, "train-labels-idx1-ubyte")?,
            &format!("{name}/train"),
            classes,
        )?;
        let test = load_pair(
            &need(te_i, "t10k-images-idx3-ubyte")?,
            &need(te_l, "t10k-labels-idx1-ubyte")?,
            &format!("{name}/test"),
            classes,
        )?;
        return Ok(Some(name_classes(
            Splits {
                train,
                test: Some(test),
            },
            &name,
        )));
    }
    // A single `<x>-images-idx3-ubyte[.gz]` + `<x>-labels-idx1-ubyte[.gz]` pair.
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let img = entries.iter().find(|p| {
        let n = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        n.ends_with("-images-idx3-ubyte") || n.ends_with("-images-idx3-ubyte.gz")
    });
    if let Some(img) = img {
        let s = img
            .to_string_lossy()
            .replace("-images-idx3-ubyte", "-labels-idx1-ubyte");
        let lab = PathBuf::from(s);
        let all = load_pair(img, &lab, &name, class_count(dir)?)?;
        // No official split: the last sixth (in file order) is the test set.
        let n = all.len();
        let n_test = n / 6;
        let cut = n - n_test;
        let test = all.slice(cut..n, format!("{name}/test"));
        let train = all.slice(0..cut, format!("{name}/train"));
        return Ok(Some(name_classes(
            Splits {
                train,
                test: Some(test),
            },
            &name,
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    /// The idx_raw fuzz target's find: 4,211,081,216 images of 1×0 pixels in 16 bytes.
    #[test]
    fn an_item_dimension_of_zero_is_refused() {
        let b = idx_bytes(&[0xfb00_0000, 1, 0], &[]);
        let e = parse_idx(&b, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("an item dimension of 0"), "{e}");
        // No items at all is still an (empty) file.
        assert_eq!(
            parse_idx(&idx_bytes(&[0, 2, 2], &[]), Path::new("x"))
                .unwrap()
                .dims,
            [0, 2, 2]
        );
    }

    #[test]
    fn raw_gz_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let img = idx_bytes(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let lab = idx_bytes(&[2], &[3, 9]);
        std::fs::write(p.join("a-images-idx3-ubyte"), &img).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &lab).unwrap();
        let gzb = gz.finish().unwrap();
        std::fs::write(p.join("a-labels-idx1-ubyte"), &gzb).unwrap();
        let ds = load_pair(
            &p.join("a-images-idx3-ubyte"),
            &p.join("a-labels-idx1-ubyte"),
            "a",
            10,
        )
        .unwrap();
        assert_eq!((ds.len(), ds.height, ds.width), (2, 2, 3));
        assert_eq!(ds.labels, vec![3, 9]);
        assert_eq!(ds.image(1), &[7, 8, 9, 10, 11, 12]);
        // Truncated raw data.
        std::fs::write(p.join("t"), &img[..img.len() - 1]).unwrap();
        let e = read_idx(&p.join("t")).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("need 12"), "{e}");
        // Truncated gzip stream.
        std::fs::write(p.join("g.gz"), &gzb[..gzb.len() / 2]).unwrap();
        let e = read_idx(&p.join("g.gz")).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        // Bad magic, bad type, short header.
        let mut bad = img.clone();
        bad[0] = 7;
        std::fs::write(p.join("m"), &bad).unwrap();
        assert!(read_idx(&p.join("m"))
            .unwrap_err()
            .to_string()
            .contains("magic"));
        bad = img.clone();
        bad[2] = 0x0d;
        std::fs::write(p.join("ty"), &bad).unwrap();
        assert!(read_idx(&p.join("ty"))
            .unwrap_err()
            .to_string()
            .contains("0x0d"));
        std::fs::write(p.join("h"), &img[..6]).unwrap();
        assert!(read_idx(&p.join("h"))
            .unwrap_err()
            .to_string()
            .contains("header"));
        // Count mismatch between images and labels.
        std::fs::write(p.join("l3"), idx_bytes(&[3], &[0, 1, 2])).unwrap();
        let e = load_pair(&p.join("a-images-idx3-ubyte"), &p.join("l3"), "x", 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 labels for 2 images"), "{e}");
    }

    /// Deflate bits, least significant first (RFC 1951 §3.1.1).
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl Bits {
        fn put(&mut self, value: u64, bits: u32) {
            self.acc |= value << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code: its bits most significant first.
        fn code(&mut self, code: u64, bits: u32) {
            let rev = (0..bits).fold(0, |r, i| r | ((code >> i) & 1) << (bits - 1 - i));
            self.put(rev, bits);
        }
        /// A literal byte in the fixed Huffman code (0..143: 8 bits from 0x30; 144..255: 9
        /// bits from 0x190).
        fn literal(&mut self, b: u8) {
            if b < 144 {
                self.code(0x30 + b as u64, 8)
            } else {
                self.code(0x190 + (b - 144) as u64, 9)
            }
        }
    }

    /// A gzip bomb built without compressing anything: `prefix` as literals, then `zeros`
    /// zero bytes as 258-byte copies at distance 1 (13 bits each, ~1030:1), in one fixed-Huffman
    /// block. The trailer's CRC is wrong: a reader that stops early never gets there.
    fn gzip_bomb(prefix: &[u8], zeros: u64) -> Vec<u8> {
        let mut b = Bits {
            out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            acc: 0,
            n: 0,
        };
        b.put(1, 1); // final block
        b.put(1, 2); // fixed Huffman codes
        for &p in prefix {
            b.literal(p);
        }
        b.literal(0);
        let mut left = zeros - 1;
        while left >= 258 {
            b.code(0b1100_0101, 8); // length code 285: 258 bytes
            b.code(0, 5); // distance code 0: distance 1
            left -= 258;
        }
        for _ in 0..left {
            b.literal(0);
        }
        b.code(0, 7); // end of block
        b.put(0, 7);
        b.out.extend_from_slice(&[0; 4]);
        b.out.extend_from_slice(&(zeros as u32).to_le_bytes());
        b.out
    }

    /// A valid IDX header followed by 4 GiB of zeros in 27 MB of gzip: refused after reading
    /// one byte more than the header declares (it used to read all 4 GiB first); a header that
    /// declares more than its stream could hold is refused before decompressing any data.
    #[test]
    fn gzip_bombs_stop_at_what_the_header_declares() {
        let header = idx_bytes(&[10, 28, 28], &[]);
        let bomb = gzip_bomb(&header, 4 << 30);
        assert!(bomb.len() < 30 << 20, "{}", bomb.len());
        let t = std::time::Instant::now();
        let e = read_idx_bytes(&bomb, Path::new("bomb.gz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bomb.gz")
                && e.contains("over-long IDX file: dims [10, 28, 28] need 7840 data bytes")
                && e.contains("stopped after 7857 bytes"),
            "{e}"
        );
        assert!(t.elapsed().as_secs_f64() < 1.0, "{:?}", t.elapsed());
        // The bomb's construction is sound: a short one decompresses to what it says.
        let small = gzip_bomb(&header, 7840);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&small[..])
            .read_to_end(&mut out)
            .unwrap_err(); // the CRC is left at 0
        let mut raw = Vec::new();
        flate2::read::DeflateDecoder::new(&small[10..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 16 + 7840);
        assert_eq!(&raw[..16], &header[..]);
        // 60000 x 2^16 x 2^16 bytes from a 40-byte stream.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &idx_bytes(&[60000, 65536, 65536], &[1, 2])).unwrap();
        let gzb = gz.finish().unwrap();
        let e = read_idx_bytes(&gzb, Path::new("x.gz"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("declare 257698037760000 data bytes, more than the")
                && e.contains(&format!(
                    "a gzip stream of {} bytes can decompress to",
                    gzb.len()
                )),
            "{e}"
        );
    }

    /// Image sides of 0 or above the limit, and files of 0 images, are refused on load.
    #[test]
    fn idx_image_sides_are_checked() {
        let lab =
            |n: u32| parse_idx(&idx_bytes(&[n], &vec![0; n as usize]), Path::new("l")).unwrap();
        let img = |dims: &[u32]| IdxArray {
            dims: dims.iter().map(|&d| d as usize).collect(),
            data: Vec::new(),
        };
        let p = Path::new("i");
        let e = |im: IdxArray, n: u32| {
            dataset_from_idx(im, lab(n), p, Path::new("l"), "x", 10)
                .unwrap_err()
                .to_string()
        };
        assert!(e(img(&[2, 0, 5]), 2).contains("images of 0x5 pixels: a side must be 1 to 16384"));
        assert!(e(img(&[1, 20000, 1]), 1).contains("images of 20000x1 pixels"));
        assert!(e(img(&[0, 28, 28]), 0).contains("holds 0 images"));
    }

    #[test]
    fn fashion_mnist_is_recognised_by_its_labels_whatever_the_folder_is_called() {
        let ds = |labels: Vec<usize>, name: &str| ImageDataset {
            pixels: vec![0u8; labels.len()],
            channels: 1,
            height: 1,
            width: 1,
            num_classes: 10,
            name: name.into(),
            flip_ok: false,
            classes: Vec::new(),
            classes_from: String::new(),
            labels,
        };
        let labels = |head: &[usize], n: usize| -> Vec<usize> {
            head.iter()
                .copied()
                .chain((head.len()..n).map(|i| i % 10))
                .collect()
        };
        let fashion = Splits {
            train: ds(labels(&FASHION_TRAIN_HEAD, 60_000), "data/train"),
            test: Some(ds(labels(&FASHION_TEST_HEAD, 10_000), "data/test")),
        };
        let s = name_classes(fashion, "data");
        assert_eq!(s.train.classes[0], "T-shirt/top");
        assert_eq!(s.train.classes[9], "Ankle boot");
        assert_eq!(s.test.as_ref().unwrap().classes, s.train.classes);
        assert!(s.train.classes_from.contains("official label files"));
        // MNIST's labels (5 0 4 1 9 …) in a folder of any name: digits.
        let mnist = Splits {
            train: ds(labels(&[5, 0, 4, 1, 9, 2, 1, 3, 1, 4], 60_000), "d/train"),
            test: None,
        };
        let s = name_classes(mnist, "d");
        assert_eq!(s.train.classes, crate::data::digit_names());
        // The folder's name alone is enough.
        let named = Splits {
            train: ds(labels(&[1, 2, 3], 100), "fashion/train"),
            test: None,
        };
        assert_eq!(
            name_classes(named, "my-Fashion").train.classes[0],
            "T-shirt/top"
        );
    }

    /// A label beyond the classes (a corrupt byte, 255) is an error naming the file and the
    /// index — it never widens the head to 256 classes; `classes.txt` declares a larger count.
    #[test]
    fn labels_outside_the_classes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let img = idx_bytes(&[3, 1, 1], &[0, 1, 2]);
        std::fs::write(p.join("x-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(p.join("x-labels-idx1-ubyte"), idx_bytes(&[3], &[4, 255, 9])).unwrap();
        let e = try_load_dir(p).err().unwrap().to_string();
        assert!(
            e.contains("x-labels-idx1-ubyte")
                && e.contains("label 255 at index 1")
                && e.contains("0..9"),
            "{e}"
        );
        std::fs::write(p.join("x-labels-idx1-ubyte"), idx_bytes(&[3], &[4, 11, 9])).unwrap();
        let names: String = (0..12).map(|k| format!("c{k}\n")).collect();
        std::fs::write(p.join("classes.txt"), names).unwrap();
        let s = crate::data::load_dir(p).unwrap();
        assert_eq!(s.train.num_classes, 12);
        assert_eq!(s.train.labels, vec![4, 11, 9]);
        assert_eq!(s.train.classes[11], "c11");
    }
}
