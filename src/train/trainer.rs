//! The training loop: epochs of shuffled, augmented batches through the training network,
//! one fused SGD step per batch, and a test pass with running statistics after every epoch.

use super::evaluate::{Evaluation, argmax, check_data, evaluate};
use super::{BatchProgress, EpochMetrics, Model, Observer, Schedule, SkippedImages};
use crate::Precision;
use crate::backend::{Backend, SgdParams};
use crate::checkpoint::Checkpoint;
use crate::data::{Augment, BatchStream, DataSource, EpochPlan, Images, Normalization};
use crate::efficient::{Network, Options};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

/// Hyper-parameters of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Length of the run (the schedule spans all of it).
    pub epochs: usize,
    /// Images per batch; the last incomplete batch of an epoch is dropped.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f32,
    pub schedule: Schedule,
    pub momentum: f32,
    /// L2 penalty added to the gradient of **every** parameter — convolution and linear
    /// weights, biases and batch-norm γ, β alike — as `torch.optim.SGD` does with a single
    /// parameter group (the DenseNet reference code trains that way).
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Seed of the shuffling and augmentation (the initial weights have their own seed, in
    /// [`Model::new`]).
    pub seed: u64,
    /// Random crops from 4-pixel padding and horizontal flips.
    pub augment: bool,
}

impl Default for TrainConfig {
    /// The DenseNet CIFAR recipe: 300 epochs of batch 64, learning rate 0.1 divided by 10
    /// at 50% and 75%, Nesterov momentum 0.9, weight decay 1e-4, standard augmentation.
    fn default() -> Self {
        TrainConfig {
            epochs: 300,
            batch: 64,
            lr: 0.1,
            schedule: Schedule::Step,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: true,
            seed: 0,
            augment: true,
        }
    }
}

impl TrainConfig {
    /// Rejects values no run can use.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.epochs == 0 {
            return bad("at least one epoch is needed".into());
        }
        if self.batch == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("learning rate must be positive and finite, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must lie in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight decay must be non-negative, got {}", self.weight_decay));
        }
        if self.nesterov && self.momentum == 0.0 {
            return bad("Nesterov momentum needs a momentum above 0".into());
        }
        Ok(())
    }

    fn sgd(&self, lr: f32) -> SgdParams {
        SgdParams { lr, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov }
    }
}

/// Where a run stands, stored in a checkpoint next to the model so that `--resume`
/// continues exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingState {
    pub config: TrainConfig,
    /// What the run computed in (its backend's precision): a resumed run must use the same.
    pub precision: Precision,
    /// Completed epochs.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// SGD momentum buffer, parameter layout (PyTorch's `momentum_buffer`).
    pub velocity: Vec<f32>,
}

/// Trains a [`Model`] on a backend. Everything is allocated up front; the test set is
/// evaluated on the same network with [`Network::forward_eval`].
pub struct Trainer<B: Backend> {
    net: Network<B>,
    config: TrainConfig,
    normalization: Normalization,
    train: Images,
    test: Images,
    source: Option<DataSource>,
    epoch: usize,
    step: u64,
    batches_tracked: u64,
    /// Set when a step's loss, updated parameters or running statistics were non-finite.
    /// That step's SGD update was enqueued before the
    /// loss was read back (a step never waits for the host), so the parameters on the device
    /// hold it: from then on the trainer refuses to train, evaluate or hand out a model or a
    /// checkpoint, and the last checkpoint written stays the last good one.
    diverged: Option<String>,
}

impl<B: Backend> Trainer<B> {
    /// A trainer starting at epoch 0 from `model`'s parameters, with zero momentum.
    pub fn new(
        backend: B,
        model: Model,
        config: TrainConfig,
        train: impl Into<Images>,
        test: impl Into<Images>,
    ) -> Result<Self> {
        let (train, test) = (train.into(), test.into());
        config.validate()?;
        check_data(&model.config, &train)?;
        check_data(&model.config, &test)?;
        let ((th, tw), (h, w)) = (test.shape(), train.shape());
        if (th, tw) != (h, w) {
            return Err(Error::Shape(format!(
                "{} has {th}x{tw} images but {} has {h}x{w}",
                test.name(),
                train.name()
            )));
        }
        if train.len() < config.batch {
            return Err(Error::Config(format!(
                "{} has {} images, fewer than one batch of {}",
                train.name(),
                train.len(),
                config.batch
            )));
        }
        let opts = Options::train().with_optimizer();
        let net = model.network(backend, config.batch, h, w, opts)?;
        Ok(Trainer {
            net,
            config,
            normalization: model.normalization.clone(),
            train,
            test,
            source: None,
            epoch: 0,
            step: 0,
            batches_tracked: model.batches_tracked,
            diverged: None,
        })
    }

    /// A trainer that continues the run saved in `checkpoint` (model, momentum, epoch and
    /// step) with `config` — the same as the saved run's for a bit-identical continuation;
    /// a larger `epochs` extends the run.
    pub fn resume(
        backend: B,
        checkpoint: Checkpoint,
        config: TrainConfig,
        train: impl Into<Images>,
        test: impl Into<Images>,
    ) -> Result<Self> {
        let Some(state) = checkpoint.training else {
            return Err(Error::Config(
                "the checkpoint holds a model only (no optimiser state), so it cannot be resumed".into(),
            ));
        };
        if state.precision != backend.precision() {
            return Err(Error::Config(format!(
                "the checkpoint's run computed in {}, this backend in {}: resume it in {0}",
                state.precision,
                backend.precision()
            )));
        }
        let mut trainer = Trainer::new(backend, checkpoint.model, config, train, test)?;
        trainer.net.set_velocity(&state.velocity)?;
        trainer.epoch = state.epoch;
        trainer.step = state.step;
        trainer.source = checkpoint.data;
        Ok(trainer)
    }

    /// Records where the data came from in the checkpoints this trainer writes.
    pub fn with_data_source(mut self, source: DataSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Completed epochs.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Optimiser steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The training network (its backend reports memory use).
    pub fn network(&self) -> &Network<B> {
        &self.net
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.train.len() / self.config.batch
    }

    /// Trains one epoch and evaluates the test set. A non-finite loss stops with
    /// [`Error::Diverged`]; that step's update has been applied, so the trainer is unusable
    /// afterwards (every later call returns the same error).
    pub fn train_epoch(&mut self, observer: &mut dyn Observer) -> Result<EpochMetrics> {
        self.check_not_diverged()?;
        let cfg = self.config.clone();
        if self.epoch >= cfg.epochs {
            return Err(Error::Config(format!("all {} epochs are done", cfg.epochs)));
        }
        self.net.backend().reset_peak();
        let plan = EpochPlan {
            batch: cfg.batch,
            shuffle: Some((cfg.seed, self.epoch as u64)),
            augment: cfg.augment.then(Augment::default),
            drop_last: true,
        };
        let batches = plan.batches(self.train.len());
        let classes = self.net.config().classes;
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut done) = (0.0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        let mut skipped = Vec::new();
        for batch in BatchStream::spawn(self.train.clone(), self.normalization.clone(), plan) {
            let mut batch = batch?;
            skipped.append(&mut batch.skipped);
            lr = cfg.schedule.lr(cfg.lr, self.step, batches as u64, cfg.epochs as u64);
            self.net.set_batch(&batch.images, &batch.labels)?;
            self.net.forward()?;
            self.batches_tracked += 1;
            self.net.backward()?;
            self.net.sgd_step(cfg.sgd(lr))?;
            // Read back only now that the whole step is enqueued, so the device never waits for
            // the host within a step. Backward and SGD leave the loss and logits buffers alone:
            // these are the forward's values. The updated parameters and running statistics are
            // checked too: a variance that overflowed normalises to finite outputs, and a NaN
            // gradient reaches the parameters without touching this step's loss.
            let bad_state = self.net.non_finite_state()?;
            let loss = self.net.loss()?;
            let what = match bad_state {
                _ if !loss.is_finite() => Some(format!("the loss is {loss}")),
                Some(state) => Some(format!("the {state} are not finite after the update")),
                None => None,
            };
            if let Some(what) = what {
                let msg = format!(
                    "{what} at epoch {}, batch {} (learning rate {lr})",
                    self.epoch + 1,
                    batch.index + 1
                );
                self.diverged = Some(msg.clone());
                return Err(Error::Diverged(msg));
            }
            let logits = self.net.logits()?;
            correct += logits
                .chunks_exact(classes)
                .zip(&batch.labels)
                .filter(|&(row, &label)| argmax(row) == label as usize)
                .count();
            self.step += 1;
            done += 1;
            loss_sum += f64::from(loss);
            let images = done * cfg.batch;
            observer.train_batch(&BatchProgress {
                epoch: self.epoch + 1,
                epochs: cfg.epochs,
                batch: done,
                batches,
                loss,
                mean_loss: loss_sum / done as f64,
                accuracy: correct as f64 / images as f64,
                images_per_second: images as f64 / start.elapsed().as_secs_f64(),
                lr,
                memory: self.net.backend().memory(),
            });
            if let Some(reason) = observer.stop_requested() {
                return Err(Error::Interrupted(reason));
            }
        }
        if done != batches {
            return Err(Error::Config(format!("the data loader stopped after {done} of {batches} batches")));
        }
        let left_out = SkippedImages::collect(format!("epoch {} training", self.epoch + 1), &skipped);
        if let Some(s) = &left_out {
            observer.images_skipped(s);
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let eval_start = Instant::now();
        let test = self.evaluate(observer)?;
        // Finite parameters and statistics can still overflow in the eval-mode forward (the
        // running statistics of a wild run do not fit its activations): no checkpoint then.
        if !test.loss.is_finite() {
            let msg = format!("the test loss is {} after epoch {}", test.loss, self.epoch + 1);
            self.diverged = Some(msg.clone());
            return Err(Error::Diverged(msg));
        }
        self.epoch += 1;
        let images = (done * cfg.batch) as f64;
        Ok(EpochMetrics {
            epoch: self.epoch,
            epochs: cfg.epochs,
            step: self.step,
            lr,
            train_loss: loss_sum / done as f64,
            train_accuracy: correct as f64 / images,
            test_loss: test.loss,
            test_accuracy: test.accuracy,
            images_per_second: images / train_seconds,
            train_seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
            peak_memory_bytes: self.net.backend().memory().peak,
            skipped_images: left_out.map_or(0, |s| s.count) + test.skipped,
        })
    }

    /// Loss and accuracy on the test set with the running statistics.
    pub fn evaluate(&mut self, observer: &mut dyn Observer) -> Result<Evaluation> {
        self.check_not_diverged()?;
        evaluate(&mut self.net, self.test.clone(), &self.normalization, observer)
    }

    /// The current model (downloaded from the backend).
    pub fn model(&self) -> Result<Model> {
        self.check_not_diverged()?;
        Ok(Model {
            config: self.net.config().clone(),
            normalization: self.normalization.clone(),
            params: self.net.params()?,
            running: self.net.running()?,
            batches_tracked: self.batches_tracked,
        })
    }

    /// The model together with the optimiser state and the position in the run.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint {
            model: self.model()?,
            data: self.source.clone(),
            training: Some(TrainingState {
                config: self.config.clone(),
                precision: self.net.backend().precision(),
                epoch: self.epoch,
                step: self.step,
                velocity: self.net.velocity()?,
            }),
        })
    }

    /// [`Error::Diverged`] once a step has diverged: the parameters hold its update.
    fn check_not_diverged(&self) -> Result<()> {
        match &self.diverged {
            Some(msg) => {
                Err(Error::Diverged(format!("{msg}; the trainer's parameters hold that step's update")))
            }
            None => Ok(()),
        }
    }

    /// Trains the remaining epochs. After each one the checkpoint is written atomically to
    /// `checkpoint` (if given), then `observer.epoch_end` is called (its error stops training).
    /// If the loss, the parameters or the running statistics stop being finite, training ends
    /// with [`Error::Diverged`] (and a stop the observer asks for with [`Error::Interrupted`]);
    /// the last
    /// checkpoint written — that of the last complete epoch — is left as it was: checkpoints
    /// are written only after a complete epoch, and a diverged trainer produces none.
    pub fn fit(
        &mut self,
        checkpoint: Option<&Path>,
        observer: &mut dyn Observer,
    ) -> Result<Vec<EpochMetrics>> {
        let kept = || match checkpoint {
            Some(p) if p.is_file() => format!("; the last good checkpoint {} is kept", p.display()),
            _ => String::new(),
        };
        let mut history = Vec::new();
        while self.epoch < self.config.epochs {
            let metrics = match self.train_epoch(observer) {
                Err(Error::Diverged(msg)) => return Err(Error::Diverged(format!("{msg}{}", kept()))),
                Err(Error::Interrupted(msg)) => return Err(Error::Interrupted(format!("{msg}{}", kept()))),
                other => other?,
            };
            match checkpoint {
                // The observer's record (the log line) is made durable between the checkpoint's
                // write and its rename, so that after a crash at any instant the log holds
                // every epoch the checkpoint does (and at most one more, which a resumed run
                // drops).
                Some(path) => {
                    let pending = self.checkpoint()?.prepare_save(path)?;
                    observer.epoch_end(&metrics)?;
                    pending.commit()?;
                }
                None => observer.epoch_end(&metrics)?,
            }
            history.push(metrics);
            if self.epoch < self.config.epochs
                && let Some(reason) = observer.stop_requested()
            {
                return Err(Error::Interrupted(format!("{reason}{}", kept())));
            }
        }
        Ok(history)
    }
}
