//! Folders of PNG and JPEG images by class, decoded by the `image` crate (PNG and JPEG only).
//!
//! Layouts, tried in this order:
//! - `DIR/train/<class>/*` with an optional `DIR/test/<class>/*` (the layout of e.g.
//!   `rasbt/mnist-pngs`); without `test/` the data has no test split;
//! - `DIR/<class>/*` (training images only, no test split).
//!
//! Classes are the class-folder names in sorted order (numeric names sort numerically), and
//! label `k` is the `k`-th name; the names travel with the data set (and into the run folder).
//! Files are recognised by their extension (`.png`, `.jpg`, `.jpeg`, any case) and decoded by
//! their magic bytes, so a JPEG named `.png` still loads and a text file named `.jpg` is an
//! error naming it. Other files (`.DS_Store`, `README`) are skipped. Images are decoded to 8
//! bits; grey (+alpha) gives one channel, colour (+alpha) three, alpha dropped. A set mixing
//! grey and colour images is promoted to three channels (grey replicated). All images must share
//! one size: a different size is an error naming the file (they are not resized, since a silent
//! resize would distort some images and not others; resize the folder first, or let the model
//! resize every image with `--image-size`). An empty class folder is an error naming it.

use super::{ImageDataset, Splits, MAX_IMAGE_SIDE};
use crate::error::{NablaError, Result};
use crate::invalid;
use std::path::{Path, PathBuf};

/// Image formats recognised from their first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Png,
    Jpeg,
}

/// PNG (`89 50 4E 47 0D 0A 1A 0A`) or JPEG (`FF D8 FF`), from the first bytes.
pub fn sniff_image(bytes: &[u8]) -> Option<ImageKind> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else {
        None
    }
}

/// A decoded image: `channels` (1 or 3) planes of `height × width` bytes, `(C, H, W)`.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedImage {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
}

impl DecodedImage {
    /// The same image with `c` channels: grey replicated to RGB, or RGB to grey by the ITU-R
    /// BT.601 luma `0.299 R + 0.587 G + 0.114 B` (what PIL's `convert("L")` computes).
    pub fn with_channels(&self, c: usize) -> Result<DecodedImage> {
        let hw = self.height * self.width;
        let pixels = match (self.channels, c) {
            (a, b) if a == b => self.pixels.clone(),
            (1, 3) => self.pixels.repeat(3),
            (3, 1) => {
                let (r, g, b) = (
                    &self.pixels[..hw],
                    &self.pixels[hw..2 * hw],
                    &self.pixels[2 * hw..],
                );
                (0..hw)
                    .map(|i| {
                        (0.299 * r[i] as f64 + 0.587 * g[i] as f64 + 0.114 * b[i] as f64)
                            .round()
                            .clamp(0.0, 255.0) as u8
                    })
                    .collect()
            }
            (a, b) => {
                return Err(invalid!(
                    "cannot convert {a}-channel images to {b} channels"
                ))
            }
        };
        Ok(DecodedImage {
            channels: c,
            pixels,
            ..*self
        })
    }
}

/// The most bytes the decoder's buffer of one image may take: an 8-bit RGB image of
/// [`MAX_IMAGE_SIDE`] pixels on each side (768 MiB). Checked, with the side, from the header
/// before anything is decoded; 16-bit and alpha images of that size need more and are refused.
pub const MAX_IMAGE_BYTES: u64 = (MAX_IMAGE_SIDE * MAX_IMAGE_SIDE * 3) as u64;

/// The width and height in a PNG's IHDR chunk (which the format puts first, at byte 16), read
/// before any decoder is set up.
fn png_header_size(bytes: &[u8]) -> Option<(u64, u64)> {
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
    if bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    Some((be(bytes.get(16..20)?), be(bytes.get(20..24)?)))
}

/// Refuses an image whose header declares a side of 0 or above [`MAX_IMAGE_SIDE`], or whose
/// decoded pixels (`bytes_per_pixel` each, when known) would exceed [`MAX_IMAGE_BYTES`]; the
/// arithmetic is checked, so no size read from a file wraps around.
fn check_declared_size(
    kind: &str,
    (w, h): (u64, u64),
    bytes_per_pixel: Option<u64>,
    path: &Path,
) -> Result<()> {
    let max = MAX_IMAGE_SIDE as u64;
    if w == 0 || h == 0 || w > max || h > max {
        return Err(NablaError::format(
            path,
            format!(
                "{kind} header declares {w}x{h} pixels (width x height): a side must be 1 to {max} pixels; refused before decoding"
            ),
        ));
    }
    if let Some(bpp) = bytes_per_pixel {
        let need = w.checked_mul(h).and_then(|p| p.checked_mul(bpp));
        if need.is_none_or(|n| n > MAX_IMAGE_BYTES) {
            return Err(NablaError::format(
                path,
                format!(
                    "{kind} image of {w}x{h} pixels at {bpp} bytes per pixel needs {} bytes decoded, more than the {MAX_IMAGE_BYTES} allowed; refused before decoding",
                    need.map_or("over 2^64".to_string(), |n| n.to_string())
                ),
            ));
        }
    }
    Ok(())
}

/// The decoder's limits: the checks above, applied again inside the decoder to what it
/// allocates for itself.
fn decoder_limits() -> image::io::Limits {
    let mut l = image::io::Limits::default();
    l.max_image_width = Some(MAX_IMAGE_SIDE as u32);
    l.max_image_height = Some(MAX_IMAGE_SIDE as u32);
    l.max_alloc = Some(MAX_IMAGE_BYTES);
    l
}

/// The most pixels one byte of a JPEG file can encode: 64 (an 8×8 block) per bit.
const JPEG_PIXELS_PER_BYTE: u64 = 512;

/// Decodes PNG or JPEG bytes (format from the magic bytes); `path` names the file in errors.
/// The size in the header is checked (see [`check_declared_size`]) before any pixel is decoded.
pub fn decode_image_bytes(bytes: &[u8], path: &Path) -> Result<DecodedImage> {
    use image::ImageDecoder;
    let Some(format) = sniff_image(bytes) else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(NablaError::format(
            path,
            format!(
                "not a PNG or JPEG image (starts with {}; PNG starts with 89 50 4e 47, JPEG with ff d8 ff)",
                head.join(" ")
            ),
        ));
    };
    let kind = match format {
        ImageKind::Png => "PNG",
        ImageKind::Jpeg => "JPEG",
    };
    let corrupt =
        |e: image::ImageError| NablaError::format(path, format!("corrupt {kind} data: {e}"));
    let cursor = std::io::Cursor::new(bytes);
    let img = match format {
        ImageKind::Png => {
            if let Some(size) = png_header_size(bytes) {
                check_declared_size(kind, size, None, path)?;
            }
            let d = image::codecs::png::PngDecoder::with_limits(cursor, decoder_limits())
                .map_err(corrupt)?;
            let (w, h) = d.dimensions();
            let bpp = d.color_type().bytes_per_pixel() as u64;
            check_declared_size(kind, (w as u64, h as u64), Some(bpp), path)?;
            image::DynamicImage::from_decoder(d).map_err(corrupt)?
        }
        ImageKind::Jpeg => {
            // Reads the markers up to the first scan: the frame header's size, no pixels.
            let mut d = image::codecs::jpeg::JpegDecoder::new(cursor).map_err(corrupt)?;
            let (w, h) = d.dimensions();
            let bpp = d.color_type().bytes_per_pixel() as u64;
            check_declared_size(kind, (w as u64, h as u64), Some(bpp), path)?;
            // Each 8×8 block of a full-resolution component costs at least one bit (the
            // Huffman code of its DC coefficient, baseline or progressive), so n bytes hold at
            // most 8n blocks, 512n pixels. A header declaring more is a truncated or corrupt
            // file — the decoder would fill the missing blocks with grey, taking 0.4 s for a
            // 652-byte "16132x260" JPEG the fuzzer made — refused before decoding.
            let most = JPEG_PIXELS_PER_BYTE * bytes.len() as u64;
            if w as u64 * h as u64 > most {
                return Err(NablaError::format(
                    path,
                    format!(
                        "JPEG header declares {w}x{h} pixels, more than its {} bytes can encode (at most {most}: one bit per 8x8 block); a truncated or corrupt file",
                        bytes.len()
                    ),
                ));
            }
            d.set_limits(decoder_limits()).map_err(corrupt)?;
            image::DynamicImage::from_decoder(d).map_err(corrupt)?
        }
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    use image::ColorType as C;
    let grey = matches!(img.color(), C::L8 | C::La8 | C::L16 | C::La16);
    // The decoder's interleaved HWC bytes → planar CHW (`into_*` reuses the decoded buffer
    // when it already has that layout, so an image is held at most twice).
    let (c, hwc) = if grey {
        (1, img.into_luma8().into_raw())
    } else {
        (3, img.into_rgb8().into_raw())
    };
    let mut pixels = vec![0u8; c * h * w];
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            pixels[ch * h * w + i] = v;
        }
    }
    Ok(DecodedImage {
        channels: c,
        height: h,
        width: w,
        pixels,
    })
}

/// Reads and decodes one PNG or JPEG file.
pub fn decode_image(path: &Path) -> Result<DecodedImage> {
    let bytes = std::fs::read(path).map_err(|e| NablaError::io(path, e))?;
    decode_image_bytes(&bytes, path)
}

/// Whether the file name has an image extension this loader reads.
pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string()
}

/// Sub-folders of `dir` (hidden ones skipped), numeric names in numeric order, then by name.
fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !file_name(p).starts_with('.'))
        .collect();
    v.sort_by_key(|p| {
        let n = file_name(p);
        (n.parse::<u64>().unwrap_or(u64::MAX), n)
    });
    Ok(v)
}

/// The image files of one folder, sorted by name.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && has_image_extension(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Decoded images of `split_dir/<class>/*` with labels by `classes`, before size checks.
fn decode_split(
    split_dir: &Path,
    classes: &[String],
) -> Result<Vec<(usize, DecodedImage, PathBuf)>> {
    let known: Vec<String> = sorted_dirs(split_dir)?
        .iter()
        .map(|p| file_name(p))
        .collect();
    if let Some(extra) = known.iter().find(|k| !classes.contains(k)) {
        return Err(invalid!(
            "{}: class folder {extra:?} is not among the training classes ({})",
            split_dir.display(),
            classes.join(", ")
        ));
    }
    let mut items = Vec::new();
    for (label, cname) in classes.iter().enumerate() {
        let cdir = split_dir.join(cname);
        if !cdir.is_dir() {
            continue;
        }
        let files = image_files(&cdir)?;
        if files.is_empty() {
            return Err(invalid!(
                "class folder {} holds no PNG or JPEG images (*.png, *.jpg, *.jpeg); remove it or add images",
                cdir.display()
            ));
        }
        for f in files {
            let img = decode_image(&f)?;
            items.push((label, img, f));
        }
    }
    if items.is_empty() {
        return Err(invalid!(
            "{}: no PNG or JPEG images found",
            split_dir.display()
        ));
    }
    Ok(items)
}

/// Stacks decoded images into a data set with `c` channels; every image must be `h × w`.
fn stack(
    items: Vec<(usize, DecodedImage, PathBuf)>,
    c: usize,
    (h, w): (usize, usize),
    classes: &[String],
    name: String,
) -> Result<ImageDataset> {
    let mut pixels = Vec::with_capacity(items.len() * c * h * w);
    let mut labels = Vec::with_capacity(items.len());
    for (label, img, f) in items {
        if (img.height, img.width) != (h, w) {
            return Err(NablaError::format(
                &f,
                format!(
                    "image is {}x{} (width x height), the others are {w}x{h}; all images of a folder must have one size (they are not resized)",
                    img.width, img.height
                ),
            ));
        }
        pixels.extend_from_slice(&img.with_channels(c)?.pixels);
        labels.push(label);
    }
    Ok(ImageDataset {
        pixels,
        labels,
        channels: c,
        height: h,
        width: w,
        num_classes: classes.len(),
        name,
        flip_ok: c == 3,
        classes: classes.to_vec(),
        classes_from: "class folder names".into(),
    })
}

/// Whether `dir` directly holds at least one image file.
fn holds_images(dir: &Path) -> bool {
    image_files(dir).is_ok_and(|f| !f.is_empty())
}

/// Recognises the layouts in the module docs; `Ok(None)` when `dir` is none of them.
pub fn try_load_dir(dir: &Path) -> Result<Option<Splits>> {
    let name = file_name(dir);
    let (train_dir, test_dir) = if dir.join("train").is_dir() {
        let te = dir.join("test");
        (dir.join("train"), te.is_dir().then_some(te))
    } else {
        let subs = sorted_dirs(dir)?;
        if subs.is_empty() || !subs.iter().any(|s| holds_images(s)) {
            return Ok(None);
        }
        (dir.to_path_buf(), None)
    };
    let classes: Vec<String> = sorted_dirs(&train_dir)?
        .iter()
        .map(|p| file_name(p))
        .collect();
    if classes.is_empty() {
        return Err(invalid!(
            "{}: no class folders (expected {}/<class>/*.png|jpg)",
            train_dir.display(),
            train_dir.display()
        ));
    }
    let train = decode_split(&train_dir, &classes)?;
    let test = test_dir
        .as_deref()
        .map(|t| decode_split(t, &classes))
        .transpose()?;
    let first = &train[0].1;
    let size = (first.height, first.width);
    let c = train
        .iter()
        .chain(test.iter().flatten())
        .map(|it| it.1.channels)
        .max()
        .unwrap_or(1);
    let train = stack(train, c, size, &classes, format!("{name}/train"))?;
    let test = test
        .map(|t| stack(t, c, size, &classes, format!("{name}/test")))
        .transpose()?;
    Ok(Some(Splits { train, test }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: image::ColorType, data: &[u8]) {
        image::save_buffer_with_format(path, data, w, h, color, image::ImageFormat::Png).unwrap();
    }

    fn write_jpeg(path: &Path, w: u32, h: u32, color: image::ColorType, data: &[u8]) {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 100)
            .encode(data, w, h, color)
            .unwrap();
        std::fs::write(path, buf).unwrap();
    }

    /// train/ + test/ with PNG and JPEG, grey and colour: labels by sorted (numeric) folder
    /// names, the names kept, grey promoted to RGB when colour is present.
    #[test]
    fn png_and_jpeg_folders_by_class() {
        use image::ColorType as C;
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            for (ci, cls) in ["2", "10", "cat"].iter().enumerate() {
                let d = dir.path().join(split).join(cls);
                std::fs::create_dir_all(&d).unwrap();
                write_png(&d.join("a.png"), 3, 2, C::L8, &[40 * ci as u8; 6]);
            }
        }
        std::fs::write(dir.path().join("train/cat/notes.txt"), "skipped").unwrap();
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(s.train.classes, vec!["2", "10", "cat"]);
        assert_eq!(s.train.classes_from, "class folder names");
        assert_eq!(s.train.labels, vec![0, 1, 2]);
        assert_eq!((s.train.channels, s.train.height, s.train.width), (1, 2, 3));
        assert_eq!(s.train.image(2), &[80; 6]);
        assert_eq!(s.test.as_ref().unwrap().len(), 3);
        // A grey JPEG: q100 keeps a flat image within 2 levels.
        write_jpeg(&dir.path().join("train/10/b.jpg"), 3, 2, C::L8, &[200; 6]);
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(s.train.labels, vec![0, 1, 1, 2]);
        assert!(
            s.train.image(2).iter().all(|&p| p.abs_diff(200) <= 2),
            "{:?}",
            s.train.image(2)
        );
        // An RGB JPEG among grey images: everything (test too) becomes 3 channels.
        let rgb: Vec<u8> = (0..6).flat_map(|_| [250u8, 10, 10]).collect();
        write_jpeg(&dir.path().join("train/10/c.jpeg"), 3, 2, C::Rgb8, &rgb);
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(s.train.channels, 3);
        assert_eq!(s.test.as_ref().unwrap().channels, 3);
        let red = s.train.image(3);
        assert!(red[0] > 230 && red[6] < 30 && red[12] < 30, "{red:?}");
        // Replicated grey.
        assert_eq!(s.train.image(0), &[0; 18]);
        assert_eq!(s.test.as_ref().unwrap().image(1), &[40; 18]);
    }

    /// Training images only (`DIR/<class>/*`, or `train/` without `test/`): no test split.
    #[test]
    fn train_only_folders() {
        let dir = tempfile::tempdir().unwrap();
        for cls in ["ant", "bee"] {
            let d = dir.path().join(cls);
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..3u8 {
                write_png(
                    &d.join(format!("{k}.png")),
                    4,
                    4,
                    image::ColorType::L8,
                    &[k; 16],
                );
            }
        }
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert!(s.test.is_none());
        assert_eq!(s.train.len(), 6);
        assert_eq!(s.train.classes, vec!["ant", "bee"]);
        assert_eq!(s.train.labels, vec![0, 0, 0, 1, 1, 1]);
        let e = s.test_or_err("vit eval").unwrap_err().to_string();
        assert!(e.contains("no test split") && e.contains("vit eval"), "{e}");
        let t = tempfile::tempdir().unwrap();
        std::fs::rename(dir.path(), t.path().join("train")).unwrap();
        let s = try_load_dir(t.path()).unwrap().unwrap();
        assert!(s.test.is_none());
        assert_eq!(s.train.len(), 6);
        // A folder with no images anywhere is not an image folder.
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(empty.path().join("sub")).unwrap();
        assert!(try_load_dir(empty.path()).unwrap().is_none());
    }

    /// Corrupt JPEG, a text file named .jpg, an empty class folder, mixed sizes, a test class
    /// the training set lacks: each a clear error naming the file or folder.
    #[test]
    fn bad_inputs_are_clear_errors() {
        use image::ColorType as C;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("train/a"), dir.path().join("train/b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        write_png(&a.join("1.png"), 2, 2, C::L8, &[1; 4]);
        write_jpeg(&b.join("1.jpg"), 2, 2, C::L8, &[9; 4]);
        try_load_dir(dir.path()).unwrap().unwrap();
        let err = || try_load_dir(dir.path()).err().unwrap().to_string();
        // Corrupt JPEG: valid magic, truncated body.
        let good = std::fs::read(b.join("1.jpg")).unwrap();
        std::fs::write(b.join("2.jpg"), &good[..good.len() / 2]).unwrap();
        let e = err();
        assert!(e.contains("2.jpg") && e.contains("corrupt JPEG"), "{e}");
        std::fs::write(b.join("2.jpg"), b"hello, not an image").unwrap();
        let e = err();
        assert!(
            e.contains("2.jpg") && e.contains("not a PNG or JPEG"),
            "{e}"
        );
        std::fs::remove_file(b.join("2.jpg")).unwrap();
        // Mixed sizes.
        write_png(&b.join("3.png"), 3, 2, C::L8, &[9; 6]);
        let e = err();
        assert!(
            e.contains("3.png") && e.contains("3x2") && e.contains("2x2"),
            "{e}"
        );
        std::fs::remove_file(b.join("3.png")).unwrap();
        // Empty class folder.
        std::fs::create_dir_all(dir.path().join("train/c")).unwrap();
        let e = err();
        assert!(e.contains("train/c") && e.contains("no PNG or JPEG"), "{e}");
        std::fs::remove_dir(dir.path().join("train/c")).unwrap();
        // A test class that training does not have.
        let z = dir.path().join("test/z");
        std::fs::create_dir_all(&z).unwrap();
        write_png(&z.join("1.png"), 2, 2, C::L8, &[1; 4]);
        let e = err();
        assert!(
            e.contains("\"z\"") && e.contains("not among the training classes"),
            "{e}"
        );
    }

    /// A PNG header of (w, h, colour, depth) followed by one IDAT chunk of `idat`.
    fn png_header(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        idat: &[u8],
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut enc = png::Encoder::new(&mut buf, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        let mut wr = enc.write_header().unwrap();
        wr.write_chunk(png::chunk::IDAT, idat).unwrap();
        std::mem::forget(wr); // no IEND, no image data: only the header matters
        buf
    }

    /// Sizes come from the header and are refused before any pixel is decoded: a 30000x30000
    /// PNG or JPEG (55 GB of f32 pixels downstream), a side of 0, and a 16384x16384 16-bit RGBA
    /// PNG (2 GiB decoded, within the side limit but over the byte limit).
    #[test]
    fn oversized_headers_are_refused_before_decoding() {
        let p = Path::new("big.png");
        let e = |b: &[u8]| decode_image_bytes(b, p).unwrap_err().to_string();
        let big = png_header(30000, 30000, png::ColorType::Rgb, png::BitDepth::Eight, &[]);
        let msg = e(&big);
        assert!(
            msg.contains("big.png")
                && msg.contains("PNG header declares 30000x30000 pixels")
                && msg.contains("1 to 16384"),
            "{msg}"
        );
        let wide = png_header(
            20000,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[0; 8],
        );
        assert!(e(&wide).contains("20000x1 pixels"), "{}", e(&wide));
        let rgba16 = png_header(
            16384,
            16384,
            png::ColorType::Rgba,
            png::BitDepth::Sixteen,
            &[0; 8],
        );
        let msg = e(&rgba16);
        assert!(
            msg.contains("16384x16384 pixels at 8 bytes per pixel needs 2147483648 bytes decoded, more than the 805306368 allowed"),
            "{msg}"
        );
        // A JPEG whose frame header (SOF0: FF C0, length, precision, height, width) says 30000².
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode(&[9u8; 4], 2, 2, image::ColorType::L8)
            .unwrap();
        let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
        let msg = decode_image_bytes(&jpeg, Path::new("big.jpg"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("big.jpg") && msg.contains("JPEG header declares 30000x30000 pixels"),
            "{msg}"
        );
        // Within the side limits but more pixels than the file's bytes can encode: 16000x256
        // (4.1 M pixels) in a JPEG of a few hundred bytes. A real JPEG of one colour at that
        // size, most compressible of all, stays under the bound and decodes.
        jpeg[sof + 5..sof + 9].copy_from_slice(&[0x01, 0x00, 0x3E, 0x80]);
        let msg = decode_image_bytes(&jpeg, Path::new("bomb.jpg"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bomb.jpg")
                && msg.contains("JPEG header declares 16000x256 pixels, more than its")
                && msg.contains("a truncated or corrupt file"),
            "{msg}"
        );
        let mut flat = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut flat)
            .encode(&vec![77u8; 1024 * 512], 1024, 512, image::ColorType::L8)
            .unwrap();
        assert!(flat.len() as u64 * JPEG_PIXELS_PER_BYTE >= 1024 * 512);
        let img = decode_image_bytes(&flat, Path::new("flat.jpg")).unwrap();
        assert_eq!((img.width, img.height), (1024, 512));
        // In a folder, the error names the file.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::create_dir_all(&a).unwrap();
        write_png(&a.join("1.png"), 2, 2, image::ColorType::L8, &[1; 4]);
        std::fs::write(a.join("2.png"), &big).unwrap();
        let msg = try_load_dir(dir.path()).err().unwrap().to_string();
        assert!(
            msg.contains("2.png") && msg.contains("30000x30000"),
            "{msg}"
        );
    }

    #[test]
    fn channel_conversion() {
        let rgb = DecodedImage {
            channels: 3,
            height: 1,
            width: 2,
            pixels: vec![255, 0, 0, 255, 0, 0],
        };
        // 0.299·255 = 76.2, 0.587·255 = 149.7.
        assert_eq!(rgb.with_channels(1).unwrap().pixels, vec![76, 150]);
        let g = rgb.with_channels(1).unwrap().with_channels(3).unwrap();
        assert_eq!(g.pixels, vec![76, 150, 76, 150, 76, 150]);
        assert!(rgb.with_channels(2).is_err());
    }
}
