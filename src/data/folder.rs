//! Image folders in torchvision's `ImageFolder` layout: `DIR/train/<class>/…/*.jpg` and
//! `DIR/val/<class>/…`, JPEG or PNG files decoded batch by batch.
//!
//! **Classes** are the sorted names of the sub-directories of `train` (hidden ones, such as
//! `.ipynb_checkpoints`, are not classes); a class must hold at least one image. `val` may
//! hold the same classes or a subset (a validation split can lack a rare class): its labels
//! are the training indices of its class names, and a class `train` lacks is an error.
//! Class names must be UTF-8, since checkpoints store them as JSON strings.
//!
//! **Images** are the files below a class directory, at any depth (as torchvision's
//! `os.walk`; linked directories followed, each visited once, so a link loop ends), whose
//! extension is `jpg`, `jpeg` or `png` in any case, in byte order of their paths (non-UTF-8
//! names are fine). Everything else is ignored. The format is read from the content, not the
//! name (a PNG named `.jpg` decodes). Anything named like an image is an image: a FIFO, a
//! dangling link or a link loop called `x.jpg` is an unreadable image, reported under
//! [`BadImages`] when its batch is prepared.
//!
//! **Decoding** refuses, before allocating pixels, files larger than [`MAX_FILE_BYTES`] and
//! images of more than [`MAX_PIXELS`] pixels (read from the header: a PNG may claim
//! 100000 × 100000). Grey, grey + alpha, RGBA, 16-bit and CMYK images become 8-bit RGB
//! (alpha is dropped, as PIL's `convert("RGB")` does).

use super::transform::RgbImage;
use crate::error::{Error, Result};
use crate::files::{InputFile, require_dir};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Largest image file read (bytes): a 100-megapixel PNG of noise is about 300 MB.
pub const MAX_FILE_BYTES: u64 = 512 << 20;
/// Largest image decoded, in pixels (PIL refuses twice its `MAX_IMAGE_PIXELS`, 179 M; this is
/// 2²⁶ = 67 M, e.g. 8192 × 8192): the 8-bit RGB result is at most 201 MB per decoding thread.
pub const MAX_PIXELS: u64 = 1 << 26;
/// Directory levels below a class directory that are searched for images.
const MAX_DEPTH: usize = 32;

/// What to do with an image that cannot be read or decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadImages {
    /// Stop with the file's path and what is wrong with it (torchvision's behaviour).
    #[default]
    Fail,
    /// Leave it out: in training its slot takes the next readable image of the epoch's order
    /// (batches stay full), in evaluation it is not counted. Counted and reported once per
    /// pass.
    Skip,
}

/// One split of an image folder: the files and their labels.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    /// What the images are (for messages), e.g. `image folder data/train`.
    pub name: String,
    pub files: Vec<PathBuf>,
    /// Class index of every file (into `class_names`).
    pub labels: Vec<u32>,
    /// Every class of the data set, by label (the training split's).
    pub class_names: Vec<String>,
    /// Side of the square network input.
    pub size: usize,
    pub bad_images: BadImages,
}

impl ImageFiles {
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Keeps `n` images spread evenly over the sorted list (all of them if there are fewer):
    /// the first `n` would be the first classes only.
    pub fn truncate(&mut self, n: usize) {
        let len = self.len();
        if n < len {
            let keep: Vec<usize> = (0..n).map(|i| i * len / n).collect();
            self.files = keep.iter().map(|&i| self.files[i].clone()).collect();
            self.labels = keep.iter().map(|&i| self.labels[i]).collect();
        }
    }
}

/// The classes of `DIR/train`: its non-hidden sub-directories, sorted.
pub fn classes(train: &Path) -> Result<Vec<String>> {
    let names = class_dirs(train)?.into_iter().map(|(name, _)| name).collect::<Vec<_>>();
    if names.is_empty() {
        return Err(Error::file(
            train,
            "has no class directories (an image folder is train/<class>/*.jpg|png and val/<class>/...)",
        ));
    }
    Ok(names)
}

/// Lists split directory `dir` (`DIR/train` or `DIR/val`) for the data set of classes
/// `class_names`; see the module documentation for the rules.
pub fn open(dir: &Path, class_names: &[String], size: usize, bad_images: BadImages) -> Result<ImageFiles> {
    let dirs = class_dirs(dir)?;
    if dirs.is_empty() {
        return Err(Error::file(dir, "has no class directories"));
    }
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (name, path) in dirs {
        let Some(label) = class_names.iter().position(|c| *c == name) else {
            return Err(Error::file(
                &path,
                format!(
                    "is a class the training split does not have (its {} classes are from train/)",
                    class_names.len()
                ),
            ));
        };
        let mut found = Vec::new();
        let mut visited = HashSet::new();
        walk(&path, 0, &mut visited, &mut found)?;
        if found.is_empty() {
            return Err(Error::file(&path, "holds no images (*.jpg, *.jpeg or *.png)"));
        }
        found.sort();
        labels.extend(std::iter::repeat_n(label as u32, found.len()));
        files.append(&mut found);
    }
    Ok(ImageFiles {
        name: format!("image folder {}", dir.display()),
        files,
        labels,
        class_names: class_names.to_vec(),
        size,
        bad_images,
    })
}

/// The non-hidden sub-directories of `dir` (links followed), sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    require_dir(dir)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))? {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") || !is_dir(&path) {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(Error::file(
                &path,
                "class directory names must be UTF-8 (checkpoints store them as text)",
            ));
        };
        out.push((name.to_string(), path));
    }
    out.sort();
    Ok(out)
}

/// Whether `path` is a directory after following links (a dangling link or a loop is not).
fn is_dir(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_dir())
}

/// Every image file below `dir` (the rules of a class directory: any depth, links followed
/// once, `*.jpg`, `*.jpeg`, `*.png` in any case), sorted by path; an error when there is none.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    require_dir(dir)?;
    let mut found = Vec::new();
    walk(dir, 0, &mut HashSet::new(), &mut found)?;
    if found.is_empty() {
        return Err(Error::file(dir, "holds no images (*.jpg, *.jpeg or *.png)"));
    }
    found.sort();
    Ok(found)
}

/// Appends the image files below `dir` to `out`, visiting every directory once.
fn walk(dir: &Path, depth: usize, visited: &mut HashSet<(u64, u64)>, out: &mut Vec<PathBuf>) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).map_err(|e| Error::file(dir, format!("cannot stat: {e}")))?;
        if !visited.insert((meta.dev(), meta.ino())) {
            return Ok(());
        }
    }
    #[cfg(not(unix))]
    let _ = visited;
    if depth > MAX_DEPTH {
        return Err(Error::file(
            dir,
            format!("is nested more than {MAX_DEPTH} levels below its class directory"),
        ));
    }
    for entry in std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot list: {e}")))? {
        let entry = entry.map_err(|e| Error::file(dir, format!("cannot list: {e}")))?;
        let path = entry.path();
        if is_image_name(&path) {
            out.push(path);
        } else if is_dir(&path) {
            walk(&path, depth + 1, visited, out)?;
        }
    }
    Ok(())
}

/// `*.jpg`, `*.jpeg`, `*.png`, any case.
fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Reads and decodes one image file into 8-bit RGB (see the module documentation for the
/// limits). Errors name the file.
pub fn decode_image(path: &Path) -> Result<RgbImage> {
    let file = InputFile::open(path)?;
    if file.len > MAX_FILE_BYTES {
        return Err(
            file.error(format!("has {} bytes, more than the {MAX_FILE_BYTES} an image may have", file.len))
        );
    }
    let bytes = file.read_all()?;
    // The decoders are fuzzed, but a panic on one hostile file must not end a run that skips
    // bad images: it becomes that file's error.
    match std::panic::catch_unwind(|| decode_bytes(&bytes)) {
        Ok(result) => result.map_err(|m| Error::file(path, m)),
        Err(_) => Err(Error::file(path, "the image decoder failed on this file")),
    }
}

fn decode_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use image::ImageDecoder;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err("is not a JPEG or PNG file".into()),
    }
    let mut limits = image::Limits::default();
    // 8 bytes per pixel: the widest output, 16-bit RGBA.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut reader = reader;
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| match e {
        // The PNG decoder checks its row buffers against the limits while reading the header.
        image::ImageError::Limits(_) => {
            format!("is too large to decode (more than {MAX_PIXELS} pixels): {e}")
        }
        e => format!("is not a valid image: {e}"),
    })?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!("is {w}x{h} pixels, more than the {MAX_PIXELS} an image may have"));
    }
    if w == 0 || h == 0 {
        return Err(format!("is {w}x{h} pixels: empty"));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| format!("cannot be decoded: {e}"))?;
    let rgb = img.into_rgb8();
    Ok(RgbImage { width: w as usize, height: h as usize, pixels: rgb.into_raw() })
}
