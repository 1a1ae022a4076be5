//! Image classification data: CIFAR-10/100 binary files, the embedded synthetic data set,
//! folders of JPEG and PNG images, per-channel normalisation, augmentation and a background
//! batch loader.
//!
//! CIFAR and synthetic images are kept as bytes, NHWC (`n × height × width × 3`), exactly as
//! small as the files ([`Dataset`]); an image folder is a list of files ([`ImageFiles`]),
//! decoded and transformed batch by batch. Either becomes normalised `f32` only one batch at
//! a time, on the loader thread ([`Images`] is the two behind one type).

mod augment;
mod cifar;
pub mod folder;
mod loader;
mod synthetic;
pub mod transform;

pub use augment::{Augment, fill_batch};
pub use folder::{BadImages, ImageFiles};
pub use loader::{Batch, BatchStream, EpochPlan, PREFETCH};
pub use synthetic::{CLASS_NAMES as SYNTHETIC_CLASSES, SyntheticSpec};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Colour channels of every data set here.
pub const CHANNELS: usize = 3;

/// Labelled images in memory.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// What the images are (for messages), e.g. `CIFAR-10 train`.
    pub name: String,
    /// Pixels, NHWC, `len() · height · width · 3` bytes.
    pub images: Vec<u8>,
    /// Class index of every image.
    pub labels: Vec<u32>,
    pub classes: usize,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.height * self.width * CHANNELS
    }

    /// The pixels of image `i`, HWC.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Keeps the first `n` images (all of them if there are fewer).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
    }
}

/// Per-channel normalisation `x' = (x/255 − mean) / std`, as torchvision's `ToTensor` followed
/// by `Normalize(mean, std)`: one mean and one std per input channel (3 for every data set
/// here; [`Normalization::check`] compares the count with a network's input channels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// ImageNet's per-channel mean (RGB), torchvision's `Normalize(mean=[0.485, 0.456, 0.406])`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB), torchvision's `std=[0.229, 0.224, 0.225]`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Normalization {
    /// `mean` and `std` per channel; see [`Normalization::check`] for what is valid.
    pub fn new(mean: impl Into<Vec<f32>>, std: impl Into<Vec<f32>>) -> Normalization {
        Normalization { mean: mean.into(), std: std.into() }
    }

    /// No normalisation on `channels` channels: mean 0, std 1 (inputs are `x/255`).
    pub fn identity(channels: usize) -> Normalization {
        Normalization { mean: vec![0.0; channels], std: vec![1.0; channels] }
    }

    /// ImageNet's statistics ([`IMAGENET_MEAN`], [`IMAGENET_STD`]): what torchvision's
    /// published weights expect, and what a `state_dict` (which records no normalisation) is
    /// run with.
    pub fn imagenet() -> Normalization {
        Normalization::new(IMAGENET_MEAN, IMAGENET_STD)
    }

    /// Number of channels it normalises.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// A clear [`Error::Config`] unless there is one mean and one std for each of `channels`
    /// channels, every value finite and every std > 0 (a zero std would divide by zero).
    pub fn check(&self, channels: usize) -> Result<()> {
        match self.problem(channels) {
            Some(p) => Err(Error::Config(format!("input normalisation: {p}"))),
            None => Ok(()),
        }
    }

    /// What [`Normalization::check`] objects to, if anything (for callers that word the error
    /// themselves, e.g. naming the checkpoint's metadata).
    pub(crate) fn problem(&self, channels: usize) -> Option<String> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Some(format!(
                "{} means and {} stds for {channels} input channels",
                self.mean.len(),
                self.std.len()
            ));
        }
        let mut stats = self.mean.iter().zip(&self.std).enumerate();
        stats.find(|(_, (m, s))| !(m.is_finite() && s.is_finite() && **s > 0.0)).map(|(c, (m, s))| {
            format!("channel {c} has mean {m} and std {s}, expected finite values and a std > 0")
        })
    }

    /// Per channel, the `(scale, bias)` with `x' = byte · scale − bias`, for `channels`
    /// channels (checked).
    pub(crate) fn affine(&self, channels: usize) -> Result<Vec<(f32, f32)>> {
        self.check(channels).map_err(|e| Error::Shape(format!("images of {channels} channels: {e}")))?;
        Ok(self.mean.iter().zip(&self.std).map(|(&m, &s)| (1.0 / (255.0 * s), m / s)).collect())
    }

    /// Mean and (population) standard deviation of every channel over all pixels of `data`,
    /// accumulated in f64. Computed from the training set and stored in checkpoints, so that
    /// evaluation normalises exactly as training did.
    pub fn of(data: &Dataset) -> Result<Normalization> {
        if data.is_empty() {
            return Err(Error::Config(format!("{} has no images", data.name)));
        }
        let mut sum = [0f64; CHANNELS];
        let mut sq = [0f64; CHANNELS];
        for px in data.images.chunks_exact(CHANNELS) {
            for c in 0..CHANNELS {
                let v = f64::from(px[c]) / 255.0;
                sum[c] += v;
                sq[c] += v * v;
            }
        }
        let count = (data.images.len() / CHANNELS) as f64;
        let mut norm = Normalization::identity(CHANNELS);
        for c in 0..CHANNELS {
            let mean = sum[c] / count;
            // Values lie in [0, 1], so E[x²] − E[x]² in f64 loses nothing that matters here.
            let var = (sq[c] / count - mean * mean).max(0.0);
            norm.mean[c] = mean as f32;
            // A constant channel would divide by zero; leave it unscaled instead.
            norm.std[c] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
        Ok(norm)
    }
}

/// Where the images come from; recorded in checkpoints so `densenet eval` can find the test
/// set again (and name the classes of an image folder).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// CIFAR-10 or CIFAR-100 binary files in a directory (detected from the file names).
    Cifar { dir: PathBuf },
    /// The embedded data set, generated from a seed.
    Synthetic(SyntheticSpec),
    /// An `ImageFolder` layout, `dir/train/<class>/*` and `dir/val/<class>/*` (see
    /// [`folder`]), resized to `size × size`; `classes` by label.
    Folder { dir: PathBuf, size: usize, classes: Vec<String> },
}

/// Side of the network input for an image folder when none is asked for (ImageNet's).
pub const DEFAULT_FOLDER_SIZE: usize = 224;

/// A training and a test set.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

/// A training and a test set of any source.
#[derive(Clone, Debug)]
pub struct ImageSplits {
    pub train: Images,
    pub test: Images,
}

impl DataSource {
    /// What `--data dir` holds: CIFAR files if they are there, else an image folder (`dir/train`
    /// names the classes), of `size × size` images (default [`DEFAULT_FOLDER_SIZE`]; CIFAR
    /// images are 32 × 32 and take no size). For evaluation only (`test_only`), the CIFAR test
    /// file or `dir/val` is enough; the classes are then `known` (those a checkpoint recorded),
    /// else `dir/train`'s if it exists, else `dir/val`'s own.
    pub fn detect(
        dir: &Path,
        size: Option<usize>,
        test_only: bool,
        known: Option<&[String]>,
    ) -> Result<DataSource> {
        crate::files::require_dir(dir)?;
        let not_cifar = match cifar::present(dir, test_only) {
            Ok(()) => {
                if let Some(s) = size.filter(|&s| s != 32) {
                    return Err(Error::file(
                        dir,
                        format!("holds CIFAR data, whose images are 32x32: --size {s} is for image folders"),
                    ));
                }
                return Ok(DataSource::Cifar { dir: dir.to_path_buf() });
            }
            Err(e) => e,
        };
        let split = dir.join(if test_only { "val" } else { "train" });
        if std::fs::symlink_metadata(&split).is_err() {
            return Err(match not_cifar {
                Error::File { path, message } => Error::File {
                    path,
                    message: format!(
                        "{message}; nor an image folder (train/<class>/*.jpg|png and val/<class>/*.jpg|png)"
                    ),
                },
                e => e,
            });
        }
        let size = size.unwrap_or(DEFAULT_FOLDER_SIZE);
        check_size(size)?;
        let classes = match known {
            Some(k) => k.to_vec(),
            None if test_only && !dir.join("train").is_dir() => folder::classes(&split)?,
            None => folder::classes(&dir.join("train"))?,
        };
        Ok(DataSource::Folder { dir: dir.to_path_buf(), size, classes })
    }

    /// Reads or generates both splits of a CIFAR or synthetic source (an image folder is
    /// opened with [`DataSource::open`] instead: it is decoded batch by batch).
    pub fn load(&self) -> Result<Splits> {
        match self {
            DataSource::Cifar { dir } => cifar::load(dir),
            DataSource::Synthetic(spec) => spec.generate(),
            DataSource::Folder { dir, .. } => Err(in_memory_only(dir)),
        }
    }

    /// Reads or generates the test split only of a CIFAR or synthetic source.
    pub fn load_test(&self) -> Result<Dataset> {
        match self {
            DataSource::Cifar { dir } => cifar::load_test(dir),
            DataSource::Synthetic(spec) => spec.generate_split(synthetic::Split::Test),
            DataSource::Folder { dir, .. } => Err(in_memory_only(dir)),
        }
    }

    /// Both splits of any source: [`DataSource::load`]'s, or an image folder's file lists
    /// (`bad_images` applies to image folders only).
    pub fn open(&self, bad_images: BadImages) -> Result<ImageSplits> {
        match self {
            DataSource::Folder { dir, size, classes } => {
                check_size(*size)?;
                let train = folder::open(&dir.join("train"), classes, *size, bad_images)?;
                let test = folder::open(&dir.join("val"), classes, *size, bad_images)?;
                Ok(ImageSplits { train: train.into(), test: test.into() })
            }
            _ => {
                let s = self.load()?;
                Ok(ImageSplits { train: s.train.into(), test: s.test.into() })
            }
        }
    }

    /// The test split of any source (an image folder's `val`).
    pub fn open_test(&self, bad_images: BadImages) -> Result<Images> {
        match self {
            DataSource::Folder { dir, size, classes } => {
                check_size(*size)?;
                Ok(folder::open(&dir.join("val"), classes, *size, bad_images)?.into())
            }
            _ => Ok(self.load_test()?.into()),
        }
    }

    /// Names of the classes, by label, where the source has them.
    pub fn class_names(&self) -> Option<Vec<String>> {
        match self {
            DataSource::Cifar { .. } => None,
            DataSource::Synthetic(_) => Some(SYNTHETIC_CLASSES.iter().map(|c| c.to_string()).collect()),
            DataSource::Folder { classes, .. } => Some(classes.clone()),
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Cifar { dir } => format!("CIFAR files in {}", dir.display()),
            DataSource::Synthetic(s) => format!("synthetic shapes {0}x{0} (seed {1})", s.size, s.seed),
            DataSource::Folder { dir, size, classes } => {
                format!("image folder {} ({} classes, {size}x{size})", dir.display(), classes.len())
            }
        }
    }
}

fn in_memory_only(dir: &Path) -> Error {
    Error::file(dir, "is an image folder, decoded batch by batch: open it with DataSource::open")
}

/// The network input side of an image folder: the transforms need one pixel, the network
/// bounds the rest.
fn check_size(size: usize) -> Result<()> {
    if size == 0 || size > crate::config::limits::SIDE {
        return Err(Error::Config(format!(
            "image size must lie in 1..={}, got {size}",
            crate::config::limits::SIDE
        )));
    }
    Ok(())
}

/// A split the loader reads: images in memory, or files decoded batch by batch.
#[derive(Clone, Debug)]
pub enum Images {
    Memory(Arc<Dataset>),
    Files(Arc<ImageFiles>),
}

impl From<Arc<Dataset>> for Images {
    fn from(d: Arc<Dataset>) -> Images {
        Images::Memory(d)
    }
}

impl From<Dataset> for Images {
    fn from(d: Dataset) -> Images {
        Images::Memory(Arc::new(d))
    }
}

impl From<ImageFiles> for Images {
    fn from(f: ImageFiles) -> Images {
        Images::Files(Arc::new(f))
    }
}

impl Images {
    pub fn len(&self) -> usize {
        match self {
            Images::Memory(d) => d.len(),
            Images::Files(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn name(&self) -> &str {
        match self {
            Images::Memory(d) => &d.name,
            Images::Files(f) => &f.name,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Images::Memory(d) => d.classes,
            Images::Files(f) => f.class_names.len(),
        }
    }

    /// Height and width of the network input.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Images::Memory(d) => (d.height, d.width),
            Images::Files(f) => (f.size, f.size),
        }
    }

    /// Keeps `n` images: the first ones in memory, an even spread of an image folder.
    pub fn truncate(&mut self, n: usize) {
        match self {
            Images::Memory(d) => Arc::make_mut(d).truncate(n),
            Images::Files(f) => Arc::make_mut(f).truncate(n),
        }
    }

    /// The normalisation a new model trains with: the data's own statistics in memory;
    /// ImageNet's for an image folder, as torchvision's recipe (computing them would decode
    /// every image, and fine-tuned ImageNet weights expect them).
    pub fn normalization(&self) -> Result<Normalization> {
        match self {
            Images::Memory(d) => Normalization::of(d),
            Images::Files(_) => Ok(Normalization::imagenet()),
        }
    }
}

/// A 64-bit seed derived from several numbers (SplitMix64 finaliser over the parts), so that
/// every epoch, batch and image gets an independent random stream that does not depend on
/// the order or the thread in which it is consumed.
pub(crate) fn derive_seed(parts: &[u64]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}
