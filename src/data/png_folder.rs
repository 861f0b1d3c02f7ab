//! Folders of PNG images by class: `DIR/train/<class>/*.png` and `DIR/test/<class>/*.png`
//! (the layout of e.g. `rasbt/mnist-pngs`). Classes are the sub-folder names in sorted order
//! (numeric names sort numerically). Images are decoded to 8 bits; grey (+alpha) gives one
//! channel, RGB(A) three (alpha dropped). All images must share one size; a set mixing grey
//! and colour images is promoted to three channels.

use super::{ImageDataset, Splits};
use crate::error::{NablaError, Result};
use crate::invalid;
use std::path::{Path, PathBuf};

/// One decoded image: (channels, height, width, CHW bytes).
pub fn decode_png(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let f = std::fs::File::open(path).map_err(|e| NablaError::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec
        .read_info()
        .map_err(|e| NablaError::format(path, format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| NablaError::format(path, format!("corrupt PNG data: {e}")))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let src_c = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(NablaError::format(path, "indexed PNG was not expanded"))
        }
    };
    let c = if src_c <= 2 { 1 } else { 3 };
    let px = &buf[..info.buffer_size()];
    let mut out = vec![0u8; c * h * w];
    for i in 0..h * w {
        for ch in 0..c {
            out[ch * h * w + i] = px[i * src_c + ch];
        }
    }
    Ok((c, h, w, out))
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NablaError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort_by_key(|p| {
        let n = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        (n.parse::<u64>().unwrap_or(u64::MAX), n)
    });
    Ok(v)
}

/// Loads `split_dir/<class>/*.png` with the given class names (index = label).
pub fn load_split(split_dir: &Path, classes: &[String], name: String) -> Result<ImageDataset> {
    let mut items: Vec<(usize, usize, usize, usize, Vec<u8>, PathBuf)> = Vec::new();
    for (label, cname) in classes.iter().enumerate() {
        let cdir = split_dir.join(cname);
        if !cdir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .map_err(|e| NablaError::io(&cdir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        for f in files {
            let (c, h, w, px) = decode_png(&f)?;
            items.push((label, c, h, w, px, f));
        }
    }
    if items.is_empty() {
        return Err(invalid!("{}: no PNG images found", split_dir.display()));
    }
    let (h, w) = (items[0].2, items[0].3);
    let c = items.iter().map(|it| it.1).max().unwrap_or(1);
    let mut pixels = Vec::with_capacity(items.len() * c * h * w);
    let mut labels = Vec::with_capacity(items.len());
    for (label, ic, ih, iw, px, f) in items {
        if (ih, iw) != (h, w) {
            return Err(NablaError::format(
                &f,
                format!("image is {iw}x{ih}, the others are {w}x{h}"),
            ));
        }
        if ic == c {
            pixels.extend_from_slice(&px);
        } else {
            for _ in 0..c {
                pixels.extend_from_slice(&px);
            }
        }
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
    })
}

/// Recognises `train/` and `test/` folders of class sub-folders; `Ok(None)` otherwise.
pub fn try_load_dir(dir: &Path) -> Result<Option<Splits>> {
    let (tr, te) = (dir.join("train"), dir.join("test"));
    if !tr.is_dir() || !te.is_dir() {
        return Ok(None);
    }
    let classes: Vec<String> = sorted_dirs(&tr)?
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string()
        })
        .collect();
    if classes.is_empty() {
        return Ok(None);
    }
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let train = load_split(&tr, &classes, format!("{name}/train"))?;
    let test = load_split(&te, &classes, format!("{name}/test"))?;
    if (train.channels, train.height, train.width) != (test.channels, test.height, test.width) {
        return Err(invalid!(
            "{}: train images are {}x{}x{}, test images {}x{}x{}",
            dir.display(),
            train.channels,
            train.height,
            train.width,
            test.channels,
            test.height,
            test.width
        ));
    }
    Ok(Some(Splits { train, test }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn folders_by_class_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        for split in ["train", "test"] {
            for (ci, cls) in ["0", "1", "10"].iter().enumerate() {
                let d = dir.path().join(split).join(cls);
                std::fs::create_dir_all(&d).unwrap();
                write_png(
                    &d.join("a.png"),
                    3,
                    2,
                    png::ColorType::Grayscale,
                    &[ci as u8; 6],
                );
            }
        }
        let s = try_load_dir(dir.path()).unwrap().unwrap();
        assert_eq!(s.train.labels, vec![0, 1, 2]);
        assert_eq!((s.train.channels, s.train.height, s.train.width), (1, 2, 3));
        assert_eq!(s.train.image(2), &[2; 6]);
        // An RGB image among grey ones promotes to three channels.
        let d = dir.path().join("train/1");
        write_png(&d.join("b.png"), 3, 2, png::ColorType::Rgb, &[9; 18]);
        let s = try_load_dir(dir.path()).err();
        assert!(
            s.is_some(),
            "train 3 channels vs test 1 channel must be an error"
        );
        // Wrong size and corrupt file.
        write_png(&d.join("b.png"), 2, 2, png::ColorType::Grayscale, &[9; 4]);
        let e = try_load_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains("2x2"), "{e}");
        std::fs::write(d.join("b.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
        let e = try_load_dir(dir.path()).err().unwrap().to_string();
        assert!(e.contains("b.png"), "{e}");
    }
}
