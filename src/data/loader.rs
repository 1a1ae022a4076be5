//! One epoch of batches, prepared on a background thread while the network computes.
//!
//! The order and the augmentation are functions of (seed, epoch, batch index) only, so an
//! epoch is the same whether it runs straight after the previous one or after a resume.

use super::{Augment, Dataset, Normalization, derive_seed, fill_batch};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

/// Batches prepared ahead of the consumer (two keep the network busy while bounding memory).
const PREFETCH: usize = 2;

/// What one pass over a data set looks like.
#[derive(Clone, Copy, Debug)]
pub struct EpochPlan {
    /// Images per batch.
    pub batch: usize,
    /// `Some((seed, epoch))`: shuffle with a permutation drawn from this pair.
    pub shuffle: Option<(u64, u64)>,
    /// Augment every image (random streams derived from the shuffle seed and epoch).
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

/// An iterator over the batches of one epoch, filled by a background thread.
pub struct BatchStream {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl BatchStream {
    /// Starts the loader thread for one epoch over `data`. A plan with batch size 0 yields
    /// nothing.
    pub fn spawn(data: Arc<Dataset>, norm: Normalization, plan: EpochPlan) -> BatchStream {
        let (tx, rx) = sync_channel(PREFETCH);
        let worker = std::thread::spawn(move || {
            if plan.batch == 0 {
                return;
            }
            let mut order: Vec<usize> = (0..data.len()).collect();
            if let Some((seed, epoch)) = plan.shuffle {
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(derive_seed(&[seed, epoch, 0])));
            }
            let per_image = data.image_len();
            for index in 0..plan.batches(data.len()) {
                let end = ((index + 1) * plan.batch).min(order.len());
                let indices = &order[index * plan.batch..end];
                let mut images = vec![0.0; plan.batch * per_image];
                let mut labels = Vec::with_capacity(plan.batch);
                let (seed, epoch) = plan.shuffle.unwrap_or((0, 0));
                let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(&[seed, epoch, 1, index as u64]));
                let augment = plan.augment.map(|a| (a, &mut rng));
                fill_batch(&data, indices, &norm, augment, &mut images, &mut labels);
                // The consumer stopped early (an error): nothing more to do.
                if tx.send(Batch { index, images, labels }).is_err() {
                    return;
                }
            }
        });
        BatchStream { rx: Some(rx), worker: Some(worker) }
    }
}

impl Iterator for BatchStream {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
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
