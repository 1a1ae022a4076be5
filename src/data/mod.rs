//! Image classification data: CIFAR-10/100 binary files, the embedded synthetic data set,
//! per-channel normalisation, augmentation and a background batch loader.
//!
//! Images are kept as bytes, NHWC (`n × height × width × 3`), exactly as small as the files;
//! they become normalised `f32` only one batch at a time, on the loader thread.

mod augment;
mod cifar;
mod loader;
mod synthetic;

pub use augment::{Augment, fill_batch};
pub use loader::{Batch, BatchStream, EpochPlan};
pub use synthetic::{CLASS_NAMES as SYNTHETIC_CLASSES, SyntheticSpec};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
/// by `Normalize(mean, std)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; CHANNELS],
    pub std: [f32; CHANNELS],
}

impl Normalization {
    /// ImageNet's statistics, torchvision's `Normalize(mean=[0.485, 0.456, 0.406],
    /// std=[0.229, 0.224, 0.225])`: what its published weights expect, and what a `state_dict`
    /// (which records no normalisation) is run with.
    pub const IMAGENET: Normalization =
        Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

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
        let mut norm = Normalization { mean: [0.0; CHANNELS], std: [1.0; CHANNELS] };
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
/// set again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DataSource {
    /// CIFAR-10 or CIFAR-100 binary files in a directory (detected from the file names).
    Cifar { dir: PathBuf },
    /// The embedded data set, generated from a seed.
    Synthetic(SyntheticSpec),
}

/// A training and a test set.
#[derive(Clone, Debug)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

impl DataSource {
    /// Reads or generates both splits.
    pub fn load(&self) -> Result<Splits> {
        match self {
            DataSource::Cifar { dir } => cifar::load(dir),
            DataSource::Synthetic(spec) => spec.generate(),
        }
    }

    /// Reads or generates the test split only.
    pub fn load_test(&self) -> Result<Dataset> {
        match self {
            DataSource::Cifar { dir } => cifar::load_test(dir),
            DataSource::Synthetic(spec) => spec.generate_split(synthetic::Split::Test),
        }
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            DataSource::Cifar { dir } => format!("CIFAR files in {}", dir.display()),
            DataSource::Synthetic(s) => format!("synthetic shapes {0}x{0} (seed {1})", s.size, s.seed),
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
