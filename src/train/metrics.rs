//! What training reports: per batch to an [`Observer`], per epoch as [`EpochMetrics`] (one
//! JSON line each in `densenet train --log`).

use crate::backend::MemoryReport;
use crate::error::Result;
use serde::Serialize;

/// Progress after one training batch.
#[derive(Clone, Debug)]
pub struct BatchProgress {
    /// 1-based epoch and its total.
    pub epoch: usize,
    pub epochs: usize,
    /// Batches done in this epoch, of `batches`.
    pub batch: usize,
    pub batches: usize,
    /// Loss of this batch.
    pub loss: f32,
    /// Mean loss and accuracy over the epoch's batches so far.
    pub mean_loss: f64,
    pub accuracy: f64,
    pub images_per_second: f64,
    /// Learning rate used for this batch.
    pub lr: f32,
    /// The backend's allocation counter.
    pub memory: MemoryReport,
}

/// Results of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// 1-based epoch and the total planned.
    pub epoch: usize,
    pub epochs: usize,
    /// Optimiser steps taken since the start of training.
    pub step: u64,
    /// Learning rate of the epoch's last step.
    pub lr: f32,
    /// Mean of the batch losses (training mode, augmented images).
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    /// Training throughput (the test pass not included).
    pub images_per_second: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    /// Peak bytes allocated on the device during the epoch.
    pub peak_memory_bytes: usize,
    /// Unreadable images of an image folder left out of the epoch's training and test passes
    /// (under `BadImages::Skip`; each file counted once per pass).
    pub skipped_images: usize,
}

/// Unreadable images left out of one pass (under `BadImages::Skip`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedImages {
    /// Which pass, e.g. `epoch 3 training` or `test`.
    pub pass: String,
    /// Distinct files.
    pub count: usize,
    /// The first one met: its path and what is wrong with it.
    pub first: String,
}

impl SkippedImages {
    /// Collects the skipped images of a pass's batches.
    pub(crate) fn collect<'a>(
        pass: String,
        batches: impl IntoIterator<Item = &'a (usize, String)>,
    ) -> Option<Self> {
        let mut seen = std::collections::HashSet::new();
        let mut first = None;
        for (i, message) in batches {
            if seen.insert(*i) && first.is_none() {
                first = Some(message.clone());
            }
        }
        first.map(|first| SkippedImages { pass, count: seen.len(), first })
    }
}

/// Receives progress while a model trains or evaluates. Every method does nothing by
/// default; `()` is the observer that ignores everything.
pub trait Observer {
    fn train_batch(&mut self, _progress: &BatchProgress) {}
    /// `done` of `total` evaluation batches are finished.
    fn eval_batch(&mut self, _done: usize, _total: usize) {}
    /// A pass left out unreadable images (called once per pass, at its end).
    fn images_skipped(&mut self, _skipped: &SkippedImages) {}
    /// An epoch is finished. Under [`super::Trainer::fit`] its checkpoint has been written to
    /// a temporary file but not yet renamed into place: what this records (a log line) is
    /// durable before the checkpoint claims the epoch. An error here (say, a log file that
    /// cannot be written) stops training and leaves the previous checkpoint.
    fn epoch_end(&mut self, _metrics: &EpochMetrics) -> Result<()> {
        Ok(())
    }
    /// Asked between steps and after every checkpoint: `Some(reason)` stops training with
    /// [`crate::Error::Interrupted`] (a partial epoch is dropped; the last checkpoint stays).
    fn stop_requested(&mut self) -> Option<String> {
        None
    }
}

impl Observer for () {}
