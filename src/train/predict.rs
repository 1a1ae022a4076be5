//! Inference on new images: logits and softmax probabilities of an eval-mode network (running
//! statistics), batch by batch.

use super::Model;
use crate::backend::Backend;
use crate::config::{DenseNetConfig, Stem};
use crate::data::transform::{RgbImage, eval_input};
use crate::data::{DEFAULT_FOLDER_SIZE, DataSource};
use crate::efficient::{Network, Options};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The network's output for one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// One logit per class.
    pub logits: Vec<f32>,
    /// Softmax of the logits (computed in f64): they sum to 1.
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// From one row of logits; an error when one is not finite (weights or statistics that
    /// overflow), since no probability can be given then.
    pub fn from_logits(logits: Vec<f32>) -> Result<Prediction> {
        if let Some(c) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Config(format!(
                "the logit of class {c} is {}: the model's parameters or running statistics make \
                 its outputs overflow",
                logits[c]
            )));
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f64> = logits.iter().map(|&v| f64::from(v - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        let probabilities = exp.iter().map(|e| (e / total) as f32).collect();
        Ok(Prediction { logits, probabilities })
    }

    /// The `k` most probable classes (all of them when there are fewer) with their
    /// probabilities, most probable first; equal logits keep the lower class first.
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut order: Vec<usize> = (0..self.logits.len()).collect();
        // A stable sort on the logits (finite: checked on construction).
        order.sort_by(|&a, &b| self.logits[b].total_cmp(&self.logits[a]));
        order.into_iter().take(k).map(|c| (c, self.probabilities[c])).collect()
    }
}

/// An eval-mode network for `size × size` inputs, fed in batches of at most `batch` images.
/// Built once, then used for any number of images.
pub struct Predictor<'m, B: Backend> {
    model: &'m Model,
    net: Network<B>,
    size: usize,
}

impl<'m, B: Backend> Predictor<'m, B> {
    /// Side of the square inputs.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Images per network batch.
    pub fn batch(&self) -> usize {
        self.net.batch()
    }

    /// The network's backend (its memory report, say).
    pub fn backend(&self) -> &B {
        self.net.backend()
    }

    /// Predictions for decoded RGB images: each goes through torchvision's eval transform at
    /// this predictor's size and the model's normalisation ([`eval_input`], in parallel), then
    /// through the network, a batch at a time.
    pub fn predict(&mut self, images: &[RgbImage]) -> Result<Vec<Prediction>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch()) {
            let (size, norm) = (self.size, &self.model.normalization);
            let inputs: Vec<Vec<f32>> =
                chunk.par_iter().map(|img| eval_input(img, size, norm)).collect::<Result<_>>()?;
            out.extend(self.predict_inputs(&inputs.concat())?);
        }
        Ok(out)
    }

    /// Predictions for inputs prepared by the caller: `n` images of `size × size ×
    /// in_channels` normalised values each, HWC (e.g. from [`eval_input`]).
    pub fn predict_inputs(&mut self, inputs: &[f32]) -> Result<Vec<Prediction>> {
        let per_image = self.size * self.size * self.model.config.in_channels;
        if !inputs.len().is_multiple_of(per_image) {
            return Err(Error::Shape(format!(
                "{} input values are not a whole number of {0}x{0}x{} images",
                inputs.len(),
                self.model.config.in_channels,
            )));
        }
        let (batch, classes) = (self.batch(), self.model.config.classes);
        let mut out = Vec::with_capacity(inputs.len() / per_image);
        let mut padded = vec![0.0; batch * per_image];
        let labels = vec![0; batch];
        for chunk in inputs.chunks(batch * per_image) {
            // The last batch is padded with zero images: in eval mode (running statistics)
            // they do not change the real ones.
            padded[..chunk.len()].copy_from_slice(chunk);
            padded[chunk.len()..].fill(0.0);
            self.net.set_batch(&padded, &labels)?;
            self.net.forward_eval()?;
            let logits = self.net.logits()?;
            for row in logits.chunks_exact(classes).take(chunk.len() / per_image) {
                out.push(Prediction::from_logits(row.to_vec())?);
            }
        }
        Ok(out)
    }
}

impl Model {
    /// A [`Predictor`] on `backend`: an eval-mode network (running statistics, no gradient
    /// buffers) for batches of `batch` images of `size × size`.
    pub fn predictor<B: Backend>(&self, backend: B, batch: usize, size: usize) -> Result<Predictor<'_, B>> {
        let net = self.network(backend, batch, size, size, Options::eval())?;
        Ok(Predictor { model: self, net, size })
    }

    /// Predictions for decoded RGB images at input size `size` (see
    /// [`Predictor::predict`]), in batches of at most `batch` (a network for more images than
    /// there are would be padding). [`input_size`] is the size a model was trained at.
    pub fn predict<B: Backend>(
        &self,
        backend: B,
        images: &[RgbImage],
        size: usize,
        batch: usize,
    ) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        self.predictor(backend, batch.min(images.len()), size)?.predict(images)
    }
}

/// The input side a model was trained at: its data set's (CIFAR 32, synthetic its size, an
/// image folder its `--size`), else its stem's usual one (CIFAR 32, ImageNet 224), e.g. for
/// a torchvision `state_dict`, which records no data set.
pub fn input_size(config: &DenseNetConfig, data: Option<&DataSource>) -> usize {
    match data {
        Some(DataSource::Cifar { .. }) => 32,
        Some(DataSource::Synthetic(spec)) => spec.size,
        Some(DataSource::Folder { size, .. }) => *size,
        None => match config.stem {
            Stem::Cifar => 32,
            Stem::Imagenet => DEFAULT_FOLDER_SIZE,
        },
    }
}
