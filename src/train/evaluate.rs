//! Test-set evaluation with running statistics.

use super::{Observer, SkippedImages};
use crate::backend::Backend;
use crate::config::DenseNetConfig;
use crate::data::{BatchStream, EpochPlan, Images, Normalization};
use crate::efficient::Network;
use crate::error::{Error, Result};
use serde::Serialize;

/// Mean cross-entropy and accuracy over a data set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Evaluation {
    /// Images evaluated (unreadable ones skipped are not).
    pub images: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// Unreadable images left out (image folders under `BadImages::Skip`).
    pub skipped: usize,
}

/// Runs every image of `data` through `net` in eval mode ([`Network::forward_eval`]: running
/// statistics, so the zero images padding the last batch do not change the real ones).
/// Works on a network built for training as well as on one built for eval.
pub fn evaluate<B: Backend>(
    net: &mut Network<B>,
    data: impl Into<Images>,
    norm: &Normalization,
    observer: &mut dyn Observer,
) -> Result<Evaluation> {
    let data = data.into();
    check_data(net.config(), &data)?;
    let classes = net.config().classes;
    let plan = EpochPlan { batch: net.batch(), shuffle: None, augment: None, drop_last: false };
    let batches = plan.batches(data.len());
    let (mut loss, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
    let mut skipped = Vec::new();
    for batch in BatchStream::spawn(data.clone(), norm.clone(), plan) {
        let mut batch = batch?;
        skipped.append(&mut batch.skipped);
        // A training network wants a label for every slot, padding included; they only
        // feed the training loss, which an eval forward does not compute.
        let mut labels = batch.labels.clone();
        labels.resize(net.batch(), 0);
        net.set_batch(&batch.images, &labels)?;
        net.forward_eval()?;
        let logits = net.logits()?;
        for (row, &label) in logits.chunks_exact(classes).zip(&batch.labels) {
            let (l, hit) = cross_entropy(row, label as usize);
            loss += l;
            correct += usize::from(hit);
        }
        seen += batch.len();
        observer.eval_batch(batch.index + 1, batches);
    }
    let left_out = SkippedImages::collect("test".into(), &skipped);
    let skipped = left_out.as_ref().map_or(0, |s| s.count);
    if seen + skipped != data.len() {
        return Err(Error::Config(format!("the data loader stopped after {seen} of {} images", data.len())));
    }
    if let Some(s) = &left_out {
        observer.images_skipped(s);
    }
    if seen == 0 {
        return Err(Error::Config(format!(
            "none of the {} images of {} is readable",
            data.len(),
            data.name()
        )));
    }
    Ok(Evaluation { images: seen, loss: loss / seen as f64, accuracy: correct as f64 / seen as f64, skipped })
}

/// Cross-entropy of one row of logits (log-sum-exp in f64) and whether the arg-max (first
/// maximum) is the label.
pub(super) fn cross_entropy(logits: &[f32], label: usize) -> (f64, bool) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = f64::from(max) + logits.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln();
    (lse - f64::from(logits[label]), argmax(logits) == label)
}

/// Index of the first maximum.
pub(super) fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// Checks that `data` has as many classes as the model has outputs.
pub(super) fn check_data(config: &DenseNetConfig, data: &Images) -> Result<()> {
    if data.classes() != config.classes {
        return Err(Error::Config(format!(
            "{} has {} classes but the model has {} outputs",
            data.name(),
            data.classes(),
            config.classes
        )));
    }
    if data.is_empty() {
        return Err(Error::Config(format!("{} has no images", data.name())));
    }
    Ok(())
}
