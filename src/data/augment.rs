//! Turning bytes into a normalised `f32` batch, with the standard CIFAR augmentation.

use super::{CHANNELS, Dataset, Normalization};
use crate::error::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Training-time augmentation: a random crop from the image zero-padded by `pad` pixels on
/// every side (torchvision `RandomCrop(size, padding=pad)`), then a horizontal flip with
/// probability ½ (`RandomHorizontalFlip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    pub pad: usize,
    pub flip: bool,
}

impl Default for Augment {
    /// The DenseNet CIFAR recipe: 4-pixel padding and flips.
    fn default() -> Self {
        Augment { pad: 4, flip: true }
    }
}

/// Writes images `indices` of `data` into `out` (NHWC, normalised) and their labels into
/// `labels`. With `augment`, every image gets a random crop offset and flip from `rng`.
/// `out` may be longer than the images need: the rest is zero-filled (a padded last batch).
/// A normalisation of another channel count than the images' is an [`crate::Error::Shape`].
pub fn fill_batch(
    data: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    augment: Option<(Augment, &mut ChaCha8Rng)>,
    out: &mut [f32],
    labels: &mut Vec<u32>,
) -> Result<()> {
    let (h, w) = (data.height, data.width);
    let n = data.image_len();
    let affine = norm.affine(CHANNELS)?;
    // Padding is black in pixel space, as torchvision pads before normalising.
    let pad_value: [f32; CHANNELS] = std::array::from_fn(|c| -affine[c].1);
    labels.clear();
    let mut augment = augment;
    for (slot, &i) in indices.iter().enumerate() {
        let src = data.image(i);
        let dst = &mut out[slot * n..(slot + 1) * n];
        labels.push(data.labels[i]);
        // Offset of the crop inside the padded image, minus the padding: a shift in [−pad, pad].
        let (dy, dx, flip) = match augment.as_mut() {
            Some((a, rng)) => {
                let p = a.pad as i64;
                let dy = rng.random_range(-p..=p) as isize;
                let dx = rng.random_range(-p..=p) as isize;
                (dy, dx, a.flip && rng.random_bool(0.5))
            }
            None => (0, 0, false),
        };
        for y in 0..h {
            for x in 0..w {
                // Flip after the crop: output column x shows crop column w−1−x.
                let cx = if flip { w - 1 - x } else { x };
                let (sy, sx) = (y as isize + dy, cx as isize + dx);
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                let o = (y * w + x) * CHANNELS;
                for c in 0..CHANNELS {
                    dst[o + c] = if inside {
                        let s = (sy as usize * w + sx as usize) * CHANNELS + c;
                        f32::from(src[s]) * affine[c].0 - affine[c].1
                    } else {
                        pad_value[c]
                    };
                }
            }
        }
    }
    out[indices.len() * n..].fill(0.0);
    Ok(())
}
