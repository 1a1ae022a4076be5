//! The embedded data set: ten classes of small colour images generated from a seed, so that
//! training runs anywhere without a download.
//!
//! Every image is one shape or texture in a random foreground colour on a random background
//! colour, at a random position and scale, with pixel noise and a soft brightness gradient.
//! Foreground and background colours are drawn from the same distribution for every class,
//! so the mean colour of an image says almost nothing about its class (a nearest-class-mean
//! classifier on mean colour is near chance): a network has to look at shape.
//! Every class is closed under horizontal flips, so flip augmentation keeps labels right.

use super::{CHANNELS, Dataset, Splits, derive_seed};
use crate::backend::memory::ensure_host_fits;
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Names of the ten classes, by label.
pub const CLASS_NAMES: [&str; 10] = [
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "cross",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "dots",
];

/// How to generate the synthetic data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Seed of the data set (independent of the training seed: the same data set can be
    /// trained on with different seeds).
    pub seed: u64,
    /// Images are `size × size`.
    pub size: usize,
    /// Number of training images.
    pub train: usize,
    /// Number of test images.
    pub test: usize,
}

impl Default for SyntheticSpec {
    /// 32×32 like CIFAR, 5 000 training and 1 000 test images: enough for a small DenseNet
    /// to pass 95% test accuracy in a few epochs.
    fn default() -> Self {
        SyntheticSpec { seed: 0, size: 32, train: 5_000, test: 1_000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Split {
    Train,
    Test,
}

impl SyntheticSpec {
    /// Both splits. Training and test images come from disjoint random streams.
    pub fn generate(&self) -> Result<Splits> {
        Ok(Splits { train: self.generate_split(Split::Train)?, test: self.generate_split(Split::Test)? })
    }

    pub(super) fn generate_split(&self, split: Split) -> Result<Dataset> {
        // Below 8 pixels the shapes are no longer distinguishable.
        if self.size < 8 {
            return Err(Error::Config(format!(
                "synthetic images must be at least 8x8, got {0}x{0}",
                self.size
            )));
        }
        let (count, tag, name) = match split {
            Split::Train => (self.train, 1, "train"),
            Split::Test => (self.test, 2, "test"),
        };
        let n = self.size.checked_mul(self.size).and_then(|p| p.checked_mul(CHANNELS));
        // Pixels and the u32 labels, checked before either is allocated.
        let bytes = n.and_then(|n| count.checked_mul(n)?.checked_add(count.checked_mul(4)?));
        let (Some(n), Some(bytes)) = (n, bytes) else {
            return Err(Error::Config(format!(
                "a synthetic {name} set of {count} images of {0}x{0} is too large to address",
                self.size
            )));
        };
        ensure_host_fits(&format!("the synthetic {name} set ({count} images)"), bytes)?;
        let mut images = vec![0u8; count * n];
        // Balanced classes; the loader shuffles. Each image has its own random stream, so
        // the result does not depend on the number of threads.
        images.par_chunks_mut(n).enumerate().for_each(|(i, img)| {
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[self.seed, tag, i as u64]));
            draw(&mut rng, i % CLASS_NAMES.len(), self.size, img);
        });
        Ok(Dataset {
            name: format!("synthetic {name}"),
            images,
            labels: (0..count).map(|i| (i % CLASS_NAMES.len()) as u32).collect(),
            classes: CLASS_NAMES.len(),
            height: self.size,
            width: self.size,
        })
    }
}

/// Draws one image of class `class` into `out` (HWC bytes).
fn draw(rng: &mut ChaCha8Rng, class: usize, size: usize, out: &mut [u8]) {
    let bg: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..1.0));
    // Resample the foreground until it differs visibly from the background.
    let fg = loop {
        let fg: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..1.0));
        let dist: f32 = fg.iter().zip(&bg).map(|(a, b)| (a - b) * (a - b)).sum();
        if dist > 0.12 {
            break fg;
        }
    };
    let s = size as f32;
    let shape = Shape {
        class,
        cx: rng.random_range(0.35 * s..0.65 * s),
        cy: rng.random_range(0.35 * s..0.65 * s),
        r: rng.random_range(0.18 * s..0.36 * s),
        period: rng.random_range(3.0f32..5.0),
    };
    let gradient = [rng.random_range(-0.15f32..0.15), rng.random_range(-0.15f32..0.15)];
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let colour = if shape.covers(px, py) { fg } else { bg };
            let shade = gradient[0] * (px / s - 0.5) + gradient[1] * (py / s - 0.5);
            for c in 0..CHANNELS {
                let noise: f32 = rng.random_range(-0.12..0.12);
                let v = (colour[c] + shade + noise).clamp(0.0, 1.0);
                out[(y * size + x) * CHANNELS + c] = (v * 255.0).round() as u8;
            }
        }
    }
}

/// One shape: centre, radius and, for textures, stripe period.
struct Shape {
    class: usize,
    cx: f32,
    cy: f32,
    r: f32,
    period: f32,
}

impl Shape {
    /// Whether pixel centre (x, y) is foreground.
    fn covers(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let r = self.r;
        let dist = (dx * dx + dy * dy).sqrt();
        let in_box = dx.abs() < r && dy.abs() < r;
        // Stripe phase along an axis, in units of the period.
        let band = |v: f32| (v / self.period).floor().rem_euclid(2.0) == 0.0;
        match self.class {
            0 => dist < r,
            1 => dx.abs() < 0.8 * r && dy.abs() < 0.8 * r,
            // Upward isosceles triangle: apex at the top, base at the bottom.
            2 => dy.abs() < r && dx.abs() < 0.5 * (dy + r),
            3 => dist < r && dist > 0.6 * r,
            4 => in_box && (dx.abs() < 0.3 * r || dy.abs() < 0.3 * r),
            5 => dist < r && ((dx - dy).abs() < 0.35 * r || (dx + dy).abs() < 0.35 * r),
            6 => in_box && band(dy),
            7 => in_box && band(dx),
            8 => in_box && band(dx) != band(dy),
            _ => {
                // Dots on a grid: a small disk in every cell.
                let p = self.period * 1.6;
                let (ux, uy) = (dx.rem_euclid(p) - p / 2.0, dy.rem_euclid(p) - p / 2.0);
                in_box && ux * ux + uy * uy < (0.3 * p) * (0.3 * p)
            }
        }
    }
}
