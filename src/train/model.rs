//! A network's learned state, independent of any backend or batch size.

use super::Observer;
use super::evaluate::{Evaluation, evaluate};
use crate::backend::Backend;
use crate::backend::memory::ensure_host_fits;
use crate::config::DenseNetConfig;
use crate::data::{Images, Normalization};
use crate::efficient::{Network, Options};
use crate::error::Result;
use crate::params::ParamLayout;

/// A DenseNet-BC with its parameters, batch-norm running statistics and the input
/// normalisation it was trained with: everything needed to run it, and what a checkpoint
/// stores (see [`crate::checkpoint`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub config: DenseNetConfig,
    /// How input bytes are normalised before the first convolution.
    pub normalization: Normalization,
    /// Every parameter in [`ParamLayout`] order (conv weights OHWI).
    pub params: Vec<f32>,
    /// Running means and variances in [`ParamLayout`] order.
    pub running: Vec<f32>,
    /// Training forward passes the batch-norm layers have seen (PyTorch's
    /// `num_batches_tracked`, the same for every layer).
    pub batches_tracked: u64,
}

impl Model {
    /// A freshly initialised model (torchvision's initialisation, drawn from `seed`).
    pub fn new(config: &DenseNetConfig, normalization: Normalization, seed: u64) -> Result<Model> {
        config.validate()?;
        normalization.check(config.in_channels)?;
        let layout = ParamLayout::new(config);
        // The parameters and running statistics live on the host first: refuse a model whose
        // copies do not fit rather than abort on the allocation.
        let floats = layout.num_params.saturating_add(layout.num_running);
        ensure_host_fits("the model's parameters", floats.saturating_mul(size_of::<f32>()))?;
        Ok(Model {
            config: config.clone(),
            normalization,
            params: layout.init(seed),
            running: layout.init_running(),
            batches_tracked: 0,
        })
    }

    /// This model with a classifier for `classes` classes (fine-tuning): the classifier's
    /// weight and bias are initialised exactly as [`Model::new`] with `seed` initialises
    /// them; every other parameter and running statistic is kept. The same model when it
    /// already has `classes` outputs.
    pub fn with_classes(self, classes: usize, seed: u64) -> Result<Model> {
        if classes == self.config.classes {
            return Ok(self);
        }
        let config = DenseNetConfig { classes, ..self.config.clone() };
        let fresh = Model::new(&config, self.normalization.clone(), seed)?;
        // The classifier comes last in the layout, so everything before it keeps its offsets.
        let head = fresh.layout().head.fc_weight;
        let mut params = self.params;
        params.truncate(head);
        params.extend_from_slice(&fresh.params[head..]);
        Ok(Model { config, params, ..self })
    }

    /// Where every tensor of this model lives in [`Model::params`] and [`Model::running`].
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::new(&self.config)
    }

    /// A network on `backend` for batches of `batch` images of `height × width`, loaded with
    /// this model's parameters and running statistics.
    pub fn network<B: Backend>(
        &self,
        backend: B,
        batch: usize,
        height: usize,
        width: usize,
        opts: Options,
    ) -> Result<Network<B>> {
        let mut net = Network::new(backend, &self.config, batch, height, width, opts)?;
        net.set_params(&self.params, &self.running)?;
        Ok(net)
    }

    /// Loss and accuracy on `data`, with an eval-mode network (running statistics, no
    /// gradient buffers) of `batch` images.
    pub fn evaluate<B: Backend>(
        &self,
        backend: B,
        data: impl Into<Images>,
        batch: usize,
        observer: &mut dyn Observer,
    ) -> Result<Evaluation> {
        let data = data.into();
        let (height, width) = data.shape();
        let mut net = self.network(backend, batch, height, width, Options::eval())?;
        evaluate(&mut net, data, &self.normalization, observer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_class_count_reinitialises_only_the_classifier() {
        let config = DenseNetConfig::bc_cifar(10, 4).unwrap();
        let norm = Normalization::new([0.5; 3], [0.25; 3]);
        let layout = ParamLayout::new(&config);
        let (params, running) = layout.init_random(3);
        let trained = Model {
            config: config.clone(),
            normalization: norm.clone(),
            params,
            running,
            batches_tracked: 9,
        };
        let tuned = trained.clone().with_classes(7, 11).unwrap();
        let fresh = Model::new(&DenseNetConfig { classes: 7, ..config }, norm.clone(), 11).unwrap();
        let head = layout.head.fc_weight;
        assert_eq!(tuned.config, fresh.config);
        assert_eq!(tuned.params[..head], trained.params[..head]);
        assert_eq!(tuned.params[head..], fresh.params[head..]);
        assert_eq!(tuned.params.len(), fresh.params.len());
        assert_eq!(
            (tuned.running, tuned.batches_tracked, tuned.normalization),
            (trained.running.clone(), 9, norm)
        );
        assert_eq!(trained.clone().with_classes(10, 11).unwrap(), trained);
    }
}
