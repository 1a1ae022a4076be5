//! torchvision's ImageNet transforms on decoded RGB images, straight into a normalised `f32`
//! batch slot:
//!
//! * train: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` then
//!   `RandomHorizontalFlip()`;
//! * eval: `Resize(size · 256/224)` (the shorter side; 256 for 224) then `CenterCrop(size)`.
//!
//! Resampling is PIL's bilinear filter, which torchvision applies to the PIL images its
//! `ImageFolder` loads: a triangle filter that widens with the shrink factor (antialiasing),
//! so a crop shrunk 4× averages every source pixel instead of sampling a quarter of them.
//! The crop and the resize are one resampling step (PIL's `resize(box=...)`): no intermediate
//! image exists.

use super::{CHANNELS, Normalization};
use crate::error::{Error, Result};
use rand::Rng;

/// How one image becomes a `size × size` network input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Random resized crop and horizontal flip (draws from the image's random stream).
    Train { size: usize },
    /// Shorter side to [`eval_resize`]`(size)`, then the central `size × size`.
    Eval { size: usize },
}

impl Transform {
    /// Side of the square output.
    pub fn size(self) -> usize {
        match self {
            Transform::Train { size } | Transform::Eval { size } => size,
        }
    }
}

/// A decoded image: `height × width` RGB pixels, HWC bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// A rectangle of source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crop {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Bounds of the crop's area, as a fraction of the image's.
pub const CROP_SCALE: (f64, f64) = (0.08, 1.0);
/// Bounds of the crop's aspect ratio (width / height).
pub const CROP_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// `RandomResizedCrop.get_params`: up to 10 draws of an area fraction (uniform) and an aspect
/// ratio (log-uniform) until the rectangle fits the image, placed uniformly; else the largest
/// central crop whose ratio lies within bounds. Python's `round` (ties to even) as torchvision.
pub fn random_resized_crop(height: usize, width: usize, rng: &mut impl Rng) -> Crop {
    let area = (height * width) as f64;
    let (lo, hi) = (CROP_RATIO.0.ln(), CROP_RATIO.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(CROP_SCALE.0..CROP_SCALE.1);
        let ratio = rng.random_range(lo..hi).exp();
        let w = (target * ratio).sqrt().round_ties_even() as usize;
        let h = (target / ratio).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return Crop { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < CROP_RATIO.0 {
        ((width as f64 / CROP_RATIO.0).round_ties_even() as usize, width)
    } else if in_ratio > CROP_RATIO.1 {
        (height, (height as f64 * CROP_RATIO.1).round_ties_even() as usize)
    } else {
        (height, width)
    };
    Crop { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// The shorter side before the central crop: `size · 256/224` rounded (256 for 224, as the
/// ImageNet recipe's `Resize(256)`).
pub fn eval_resize(size: usize) -> usize {
    (size * 256 + 112) / 224
}

/// Writes `image`, transformed and normalised, into `out` (`size² · 3` values, HWC).
/// `rng` is consumed by the train transform only: the crop first, then the flip. An empty
/// image, pixels that are not `height · width · 3` bytes, an `out` of another length or a
/// normalisation of another channel count than 3 are an [`Error::Shape`].
pub fn transform_image(
    image: &RgbImage,
    transform: Transform,
    rng: &mut impl Rng,
    norm: &Normalization,
    out: &mut [f32],
) -> Result<()> {
    let size = transform.size();
    let (h, w) = (image.height, image.width);
    let pixels = h.checked_mul(w).and_then(|p| p.checked_mul(CHANNELS));
    if h == 0 || w == 0 || pixels != Some(image.pixels.len()) {
        return Err(Error::Shape(format!(
            "a {w}x{h} RGB image needs {pixels:?} bytes, got {}",
            image.pixels.len()
        )));
    }
    if size == 0 || size.checked_mul(size).and_then(|p| p.checked_mul(CHANNELS)) != Some(out.len()) {
        return Err(Error::Shape(format!(
            "a {size}x{size} output needs {size}·{size}·3 values, got {}",
            out.len()
        )));
    }
    let affine = norm.affine(CHANNELS)?;
    let (rows, cols, flip) = match transform {
        Transform::Train { .. } => {
            let c = random_resized_crop(h, w, rng);
            let flip = rng.random_bool(0.5);
            let (sy, sx) = (c.height as f64 / size as f64, c.width as f64 / size as f64);
            (Axis::new(h, c.top as f64, sy, size), Axis::new(w, c.left as f64, sx, size), flip)
        }
        Transform::Eval { .. } => {
            // torchvision's `Resize(s)`: the shorter side becomes s, the longer one
            // int(s · long / short) (truncated).
            let s = eval_resize(size);
            let (rh, rw) = if h <= w { (s, s * w / h) } else { (s * h / w, s) };
            // `CenterCrop`: offsets int(round((resized − size) / 2)).
            let top = ((rh - size) as f64 / 2.0).round_ties_even() as usize;
            let left = ((rw - size) as f64 / 2.0).round_ties_even() as usize;
            let (sy, sx) = (h as f64 / rh as f64, w as f64 / rw as f64);
            (Axis::new(h, top as f64 * sy, sy, size), Axis::new(w, left as f64 * sx, sx, size), false)
        }
    };
    resample(image, &rows, &cols, flip, &affine, out);
    Ok(())
}

/// `image` as the eval-mode network input of side `size`: torchvision's eval transform
/// ([`Transform::Eval`]: shorter side to [`eval_resize`]`(size)`, central `size × size`) and
/// `norm`, as `size² · 3` values, HWC (one image of a batch, as [`crate::efficient::Network`]
/// takes them). What a caller needs to prepare inputs itself.
pub fn eval_input(image: &RgbImage, size: usize, norm: &Normalization) -> Result<Vec<f32>> {
    let len = size.checked_mul(size).and_then(|p| p.checked_mul(CHANNELS));
    let Some(len) = len.filter(|_| (1..=crate::config::limits::SIDE).contains(&size)) else {
        return Err(Error::Config(format!(
            "image size must lie in 1..={}, got {size}",
            crate::config::limits::SIDE
        )));
    };
    let mut out = vec![0.0; len];
    // The eval transform draws nothing: any generator will do.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    transform_image(image, Transform::Eval { size }, &mut rng, norm, &mut out)?;
    Ok(out)
}

/// The filter taps of one axis: output pixel `o` is `Σ_k weights[o·taps + k] ·
/// source[first[o] + k]` over `count[o]` taps (PIL's `precompute_coeffs`).
struct Axis {
    first: Vec<usize>,
    count: Vec<usize>,
    taps: usize,
    weights: Vec<f32>,
}

impl Axis {
    /// `out` outputs covering source `[start, start + out · scale)` of an axis of `len`
    /// pixels. Taps may reach past the crop into the rest of the image, never past its edges.
    fn new(len: usize, start: f64, scale: f64, out: usize) -> Axis {
        let filter_scale = scale.max(1.0);
        // The triangle's support is 1 source pixel, widened by the shrink factor.
        let support = filter_scale;
        let taps = support.ceil() as usize * 2 + 1;
        let mut axis = Axis {
            first: Vec::with_capacity(out),
            count: Vec::with_capacity(out),
            taps,
            weights: vec![0.0; out * taps],
        };
        for o in 0..out {
            let center = start + (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0) as usize).min(len - 1);
            let hi = ((center + support + 0.5).floor().max(0.0) as usize).clamp(lo + 1, len);
            let n = (hi - lo).min(taps);
            let w = &mut axis.weights[o * taps..o * taps + n];
            let mut total = 0.0;
            for (k, wk) in w.iter_mut().enumerate() {
                let d = ((lo + k) as f64 - center + 0.5) / filter_scale;
                let t = (1.0 - d.abs()).max(0.0);
                *wk = t as f32;
                total += t;
            }
            if total > 0.0 {
                w.iter_mut().for_each(|v| *v = (f64::from(*v) / total) as f32);
            } else {
                // Only for a centre on an edge of a 1-pixel axis; the nearest pixel then.
                w[0] = 1.0;
            }
            axis.first.push(lo);
            axis.count.push(n);
        }
        axis
    }

    /// Source range every output reads.
    fn span(&self) -> (usize, usize) {
        let lo = self.first.iter().copied().min().unwrap_or(0);
        let hi = self.first.iter().zip(&self.count).map(|(f, n)| f + n).max().unwrap_or(0);
        (lo, hi)
    }
}

/// Horizontal pass over the rows the vertical pass reads (f32, no intermediate rounding),
/// then the vertical pass, rounded to 8 bits as PIL's result is, normalised, and written
/// mirrored when `flip`. `affine` is [`Normalization::affine`]'s, one per channel.
fn resample(image: &RgbImage, rows: &Axis, cols: &Axis, flip: bool, affine: &[(f32, f32)], out: &mut [f32]) {
    let (out_h, out_w) = (rows.first.len(), cols.first.len());
    let (y0, y1) = rows.span();
    let row_len = out_w * CHANNELS;
    let mut tmp = vec![0f32; (y1 - y0) * row_len];
    for (y, t) in (y0..y1).zip(tmp.chunks_exact_mut(row_len)) {
        let src = &image.pixels[y * image.width * CHANNELS..(y + 1) * image.width * CHANNELS];
        for x in 0..out_w {
            let (f, n) = (cols.first[x], cols.count[x]);
            let w = &cols.weights[x * cols.taps..x * cols.taps + n];
            let mut acc = [0f32; CHANNELS];
            for (k, &wk) in w.iter().enumerate() {
                let p = &src[(f + k) * CHANNELS..(f + k + 1) * CHANNELS];
                for c in 0..CHANNELS {
                    acc[c] += wk * f32::from(p[c]);
                }
            }
            t[x * CHANNELS..(x + 1) * CHANNELS].copy_from_slice(&acc);
        }
    }
    let mut acc = vec![0f32; row_len];
    for y in 0..out_h {
        let (f, n) = (rows.first[y], rows.count[y]);
        acc.fill(0.0);
        for (k, &wk) in rows.weights[y * rows.taps..y * rows.taps + n].iter().enumerate() {
            let t = &tmp[(f + k - y0) * row_len..(f + k - y0 + 1) * row_len];
            acc.iter_mut().zip(t).for_each(|(a, &v)| *a += wk * v);
        }
        let dst = &mut out[y * row_len..(y + 1) * row_len];
        for x in 0..out_w {
            let ox = if flip { out_w - 1 - x } else { x };
            for c in 0..CHANNELS {
                let v = acc[x * CHANNELS + c].round().clamp(0.0, 255.0);
                dst[ox * CHANNELS + c] = v * affine[c].0 - affine[c].1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_are_normalised_and_stay_inside_the_axis() {
        for (len, start, scale, out) in
            [(500, 0.0, 500.0 / 224.0, 224), (37, 3.0, 0.25, 40), (1, 0.0, 1.0 / 7.0, 7)]
        {
            let a = Axis::new(len, start, scale, out);
            for o in 0..out {
                assert!(a.count[o] >= 1 && a.first[o] + a.count[o] <= len);
                let s: f32 = a.weights[o * a.taps..o * a.taps + a.count[o]].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{s}");
            }
        }
    }
}
