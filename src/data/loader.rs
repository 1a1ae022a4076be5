//! One epoch of batches, prepared on a background thread while the network computes.
//!
//! The order and the augmentation are functions of (seed, epoch, batch index) only — for an
//! image folder of (seed, epoch, position in the epoch) — so an epoch is the same whether it
//! runs straight after the previous one or after a resume, and whatever the thread count.
//!
//! The images of an image folder's batch are decoded and transformed in parallel on rayon's
//! global pool (the one the cpu backend computes on, so the two share the cores rather than
//! oversubscribe them). Memory is bounded: at most [`PREFETCH`] finished batches wait in the
//! channel, one is being prepared and one is held by the consumer, so `PREFETCH + 2` batches
//! of `batch · height · width · 3` f32 exist at once (616 MB at batch 256 of 224 × 224), plus
//! one file and one decoded image per thread of the pool (bounded by
//! [`super::folder::MAX_FILE_BYTES`] and [`super::folder::MAX_PIXELS`]).

use super::folder::{BadImages, ImageFiles, decode_image};
use super::transform::{Transform, transform_image};
use super::{Augment, CHANNELS, Images, Normalization, derive_seed, fill_batch};
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Batches prepared ahead of the consumer (two keep the network busy while bounding memory).
pub const PREFETCH: usize = 2;

/// Images of the epoch's order tried for one training slot whose image is unreadable under
/// [`BadImages::Skip`], before giving up (a folder of mostly broken files is an error, not
/// an epoch of substitutes).
const SUBSTITUTES: usize = 16;

/// What one pass over a data set looks like.
#[derive(Clone, Copy, Debug)]
pub struct EpochPlan {
    /// Images per batch.
    pub batch: usize,
    /// `Some((seed, epoch))`: shuffle with a permutation drawn from this pair.
    pub shuffle: Option<(u64, u64)>,
    /// Augment every image (random streams derived from the shuffle seed and epoch). An image
    /// folder is augmented with its own transform ([`Transform::Train`]) whatever the value;
    /// without augmentation it gets [`Transform::Eval`].
    pub augment: Option<Augment>,
    /// Drop the last incomplete batch (training: batch-norm statistics over a full batch);
    /// otherwise it is padded with zero images and [`Batch::len`] says how many are real.
    pub drop_last: bool,
}

impl EpochPlan {
    /// Number of batches this plan yields for `images` images.
    pub fn batches(&self, images: usize) -> usize {
        if self.drop_last { images / self.batch } else { images.div_ceil(self.batch) }
    }
}

/// A batch ready for [`crate::efficient::Network::set_batch`].
#[derive(Clone, Debug)]
pub struct Batch {
    /// Index of this batch in the epoch.
    pub index: usize,
    /// `batch` images, NHWC, normalised (zero images after the real ones in a padded batch).
    pub images: Vec<f32>,
    /// Labels of the real images (`labels.len()` of them).
    pub labels: Vec<u32>,
    /// Images of an image folder left out under [`BadImages::Skip`]: index in the split's file
    /// list and what is wrong with the file.
    pub skipped: Vec<(usize, String)>,
}

impl Batch {
    /// Number of real images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// An iterator over the batches of one epoch, filled by a background thread. An error
/// (an unreadable image under [`BadImages::Fail`], memory for a batch) is the last item.
pub struct BatchStream {
    rx: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl BatchStream {
    /// Starts the loader thread for one epoch over `data`. A plan with batch size 0 yields
    /// nothing.
    pub fn spawn(data: impl Into<Images>, norm: Normalization, plan: EpochPlan) -> BatchStream {
        let data = data.into();
        let (tx, rx) = sync_channel(PREFETCH);
        let worker = std::thread::spawn(move || {
            if plan.batch == 0 {
                return;
            }
            let mut order: Vec<usize> = (0..data.len()).collect();
            if let Some((seed, epoch)) = plan.shuffle {
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(&[seed, epoch, 0])));
            }
            let (h, w) = data.shape();
            let per_image = h * w * CHANNELS;
            for index in 0..plan.batches(data.len()) {
                let end = ((index + 1) * plan.batch).min(order.len());
                let batch = zeroed(plan.batch * per_image).and_then(|mut images| {
                    let mut labels = Vec::with_capacity(plan.batch);
                    let mut skipped = Vec::new();
                    match &data {
                        Images::Memory(d) => {
                            let (seed, epoch) = plan.shuffle.unwrap_or((0, 0));
                            let mut rng =
                                ChaCha8Rng::seed_from_u64(derive_seed(&[seed, epoch, 1, index as u64]));
                            let augment = plan.augment.map(|a| (a, &mut rng));
                            fill_batch(
                                d,
                                &order[index * plan.batch..end],
                                &norm,
                                augment,
                                &mut images,
                                &mut labels,
                            )?;
                        }
                        Images::Files(f) => {
                            let slots = index * plan.batch..end;
                            fill_files(
                                f,
                                &order,
                                slots,
                                &plan,
                                &norm,
                                &mut images,
                                &mut labels,
                                &mut skipped,
                            )?;
                        }
                    }
                    Ok(Batch { index, images, labels, skipped })
                });
                let failed = batch.is_err();
                // The consumer stopped early (an error): nothing more to do.
                if tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        BatchStream { rx: Some(rx), worker: Some(worker) }
    }
}

/// `n` zeros, or an error if the memory is not there (rather than an abort).
fn zeroed(n: usize) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| Error::Config(format!("cannot allocate {} bytes for a batch", n * 4)))?;
    v.resize(n, 0.0);
    Ok(v)
}

/// One prepared slot of an image-folder batch: its label and the images skipped for it.
type Slot = (Option<u32>, Vec<(usize, String)>);

/// Decodes and transforms the images at `positions` of the epoch's `order` into `images`
/// (one slot each, in parallel). Every slot draws from its own stream, seeded by (seed,
/// epoch, position), so the result does not depend on the threads or the batch size.
/// Unreadable images: see [`BadImages`]; in evaluation the readable ones are moved to the
/// front and the rest of the batch is zero.
#[allow(clippy::too_many_arguments)]
fn fill_files(
    files: &ImageFiles,
    order: &[usize],
    positions: std::ops::Range<usize>,
    plan: &EpochPlan,
    norm: &Normalization,
    images: &mut [f32],
    labels: &mut Vec<u32>,
    skipped: &mut Vec<(usize, String)>,
) -> Result<()> {
    let size = files.size;
    let transform = if plan.augment.is_some() { Transform::Train { size } } else { Transform::Eval { size } };
    let per_image = size * size * CHANNELS;
    let (seed, epoch) = plan.shuffle.unwrap_or((0, 0));
    // A training batch stays full (batch-norm statistics over every slot): a bad image's slot
    // takes the next readable image of the order.
    let attempts = if plan.drop_last && files.bad_images == BadImages::Skip { SUBSTITUTES } else { 1 };
    let start = positions.start;
    let slots: Vec<Result<Slot>> = images
        .par_chunks_mut(per_image)
        .take(positions.len())
        .enumerate()
        .map(|(s, dst)| {
            let p = start + s;
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[seed, epoch, 2, p as u64]));
            let mut bad = Vec::new();
            for attempt in 0..attempts {
                let i = order[(p + attempt) % order.len()];
                match decode_image(&files.files[i]) {
                    Ok(img) => {
                        transform_image(&img, transform, &mut rng, norm, dst)?;
                        return Ok((Some(files.labels[i]), bad));
                    }
                    Err(e) if files.bad_images == BadImages::Skip => bad.push((i, e.to_string())),
                    Err(e) => return Err(e),
                }
            }
            if attempts > 1 {
                let last = bad.last().map_or(String::new(), |(_, m)| m.clone());
                return Err(Error::Config(format!(
                    "{} images in a row of the epoch's order are unreadable; the last: {last}",
                    bad.len()
                )));
            }
            Ok((None, bad))
        })
        .collect();
    for (s, slot) in slots.into_iter().enumerate() {
        let (label, mut bad) = slot?;
        if let Some(label) = label {
            let to = labels.len();
            if s != to {
                images.copy_within(s * per_image..(s + 1) * per_image, to * per_image);
            }
            labels.push(label);
        }
        skipped.append(&mut bad);
    }
    let n = labels.len() * per_image;
    images[n..].fill(0.0);
    Ok(())
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Close the channel first so a worker blocked on a full channel wakes up and exits.
        self.rx = None;
        if let Some(w) = self.worker.take() {
            // A panic in the worker has already ended the stream early; the consumer sees
            // fewer batches and reports it, so there is nothing to propagate here.
            let _ = w.join();
        }
    }
}
