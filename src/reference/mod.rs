//! The reference (the f64 oracle): textbook DenseNet-BC in `f64` with **explicit
//! concatenation** and a hand-written backward, itself checked against central finite
//! differences (see the tests in `reference/tests.rs`). It is the executable specification
//! every optimised path is compared with: every dense layer builds a fresh concatenation of
//! all earlier features and the tape keeps every BN/ReLU output, so each step can be read
//! against its textbook formula.
//!
//! Network (for a [`DenseNetConfig`]), activations NCHW:
//! * stem `Cifar`: conv3×3 s1 p1; stem `Imagenet`: conv7×7 s2 p3 → BN (norm0) → ReLU →
//!   max-pool 3×3 s2 p1;
//! * dense layer: `concat(block input, earlier layers' outputs)` → BN (norm1) → ReLU →
//!   conv1×1 (→ bn_size·k) → BN (norm2) → ReLU → conv3×3 p1 (→ k);
//! * transition (after every block but the last): BN → ReLU → conv1×1 (c → ⌊θc⌋) →
//!   avg-pool 2×2 s2 (textbook order: conv, then pool);
//! * head: BN (norm5) → ReLU → global average pool → linear → mean softmax cross-entropy.
//!
//! All convs are bias-free. Parameters are a flat `&[f64]` in exactly the layout of
//! [`ParamLayout`] (OHWI conv weights, `[out][in]` linear weight); running statistics a flat
//! `&[f64]` of `layout.num_running` values. Training-mode BN normalises with the batch mean
//! and biased variance over `N·H·W` (ε = 1e-5) and updates the running statistics with
//! momentum 0.1 using the unbiased variance, as PyTorch; eval mode uses the running
//! statistics and changes nothing.

mod network;
pub mod ops;

#[cfg(test)]
mod tests;

use crate::config::{DenseNetConfig, Geometry};
use crate::error::{Error, Result};
use crate::params::{BnSite, ParamLayout};
use network::{Net, Stats};
use ops::Tensor;
use std::cell::Cell;

/// A batch of images with their labels.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// `n × in_channels × h × w` values, NCHW.
    pub images: &'a [f64],
    /// `n` class indices, each `< cfg.classes`.
    pub labels: &'a [usize],
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// Everything one training step of the oracle produces.
#[derive(Clone, Debug)]
pub struct TrainOutput {
    /// `n × classes` logits (training-mode BN).
    pub logits: Vec<f64>,
    /// Mean softmax cross-entropy over the batch.
    pub loss: f64,
    /// dLoss/dparams, in the layout of the parameter buffer.
    pub grads: Vec<f64>,
    /// dLoss/dimages, NCHW like `Batch::images`.
    pub input_grad: Vec<f64>,
    /// The running statistics after this step's update (same layout as the input).
    pub running: Vec<f64>,
}

/// Decides the non-differentiable choices that lie strictly within a margin of their kink:
/// ReLU inputs with |v| < margin and max-pool windows whose runner-up is less than margin
/// below the maximum.
///
/// Why: an f32 implementation computes every activation with a relative error of ~1e-7, so
/// in a network with millions of ReLU inputs a few land on the other side of zero than in
/// f64. The forward barely notices (relu(v) ≈ 0 either way), but the gradient jumps — each
/// such element's whole gradient is kept or dropped — and a single flip moves a group's
/// gradient by ~1e-3 relative. Both answers are exact gradients of the same function on
/// either side of the kink; comparing an f32 implementation with the oracle is only
/// meaningful on the same side, which is what a resolver that reproduces the f32 decisions
/// gives. Outside the margin the oracle decides alone, so a wrong mask in the
/// implementation still shows up as a large error.
pub trait KinkResolver {
    /// Half-width of the ambiguous band around each kink, in activation units.
    fn margin(&self) -> f64;
    /// Whether the ReLU after the BN at `site` passes element `[n, c, y, x]`, whose input the
    /// oracle computed as `v` (|v| < margin).
    fn relu_passes(&self, site: BnSite, at: [usize; 4], v: f64) -> bool;
    /// Which of `candidates` (positions `[n, c, y, x]` in the ImageNet stem's BN-ReLU output,
    /// in row-major window order: the oracle's arg-max and every value less than margin below it) the stem's
    /// max-pool picks; an index into `candidates`.
    fn maxpool_pick(&self, candidates: &[[usize; 4]]) -> usize;
}

/// Checks that `layout` is the layout of `cfg` (same tensors at the same offsets).
fn check_layout(cfg: &DenseNetConfig, layout: &ParamLayout) -> Result<()> {
    let expected = ParamLayout::new(cfg);
    let same = expected.num_params == layout.num_params
        && expected.num_running == layout.num_running
        && expected.tensors.len() == layout.tensors.len()
        && expected
            .tensors
            .iter()
            .zip(&layout.tensors)
            .all(|(a, b)| a.name == b.name && a.offset == b.offset && a.len == b.len)
        && expected.norms.len() == layout.norms.len()
        && expected.norms.iter().zip(&layout.norms).all(|((_, a), (_, b))| {
            (a.channels, a.gamma, a.beta, a.running_mean, a.running_var)
                == (b.channels, b.gamma, b.beta, b.running_mean, b.running_var)
        });
    if same {
        Ok(())
    } else {
        Err(Error::Shape("parameter layout does not belong to this configuration".into()))
    }
}

/// Validates everything the caller passed; returns the geometry. `training` additionally
/// requires every training-mode BN to see more than one value per channel.
fn check_inputs(
    cfg: &DenseNetConfig,
    layout: &ParamLayout,
    params: &[f64],
    running: &[f64],
    batch: &Batch,
    training: bool,
) -> Result<Geometry> {
    let geometry = cfg.geometry(batch.h, batch.w)?;
    if training {
        geometry.check_batch(batch.n, cfg.stem)?;
    } else if batch.n == 0 {
        return Err(Error::Config("batch size must be at least 1".into()));
    }
    check_layout(cfg, layout)?;
    if params.len() != layout.num_params {
        return Err(Error::Shape(format!(
            "{} parameters given, the layout has {}",
            params.len(),
            layout.num_params
        )));
    }
    if running.len() != layout.num_running {
        return Err(Error::Shape(format!(
            "{} running statistics given, the layout has {}",
            running.len(),
            layout.num_running
        )));
    }
    let expected = batch.n * cfg.in_channels * batch.h * batch.w;
    if batch.images.len() != expected {
        return Err(Error::Shape(format!(
            "images hold {} values, expected {}×{}×{}×{} = {expected}",
            batch.images.len(),
            batch.n,
            cfg.in_channels,
            batch.h,
            batch.w
        )));
    }
    if batch.labels.len() != batch.n {
        return Err(Error::Shape(format!("{} labels for a batch of {}", batch.labels.len(), batch.n)));
    }
    if let Some((i, &l)) = batch.labels.iter().enumerate().find(|&(_, &l)| l >= cfg.classes) {
        return Err(Error::Shape(format!("label {l} of image {i} is not below {} classes", cfg.classes)));
    }
    Ok(geometry)
}

fn images_tensor(cfg: &DenseNetConfig, batch: &Batch) -> Tensor {
    Tensor::from_vec(batch.n, cfg.in_channels, batch.h, batch.w, batch.images.to_vec())
}

/// One training step: training-mode forward (batch statistics), mean softmax
/// cross-entropy, and the full backward. Returns logits, loss, the gradient of the loss with
/// respect to every parameter and to the images, and the updated running statistics.
/// Nothing is modified in place.
///
/// Errors: [`Error::Config`] for an unusable configuration, an image too small for it, or a
/// batch for which some BN would see a single value per channel; [`Error::Shape`] for a
/// layout that is not `cfg`'s, slices of the wrong length, or a label `≥ classes`.
pub fn train_step(
    cfg: &DenseNetConfig,
    layout: &ParamLayout,
    params: &[f64],
    running: &[f64],
    batch: &Batch,
) -> Result<TrainOutput> {
    train_step_resolved(cfg, layout, params, running, batch, None).map(|(out, _)| out)
}

/// [`train_step`] with the decisions near kinks taken by `resolver` (see [`KinkResolver`]).
/// Also returns how many decisions the resolver took.
pub fn train_step_resolved(
    cfg: &DenseNetConfig,
    layout: &ParamLayout,
    params: &[f64],
    running: &[f64],
    batch: &Batch,
    resolver: Option<&dyn KinkResolver>,
) -> Result<(TrainOutput, usize)> {
    let geometry = check_inputs(cfg, layout, params, running, batch, true)?;
    let net = Net { cfg, layout, geometry, params, resolver, ambiguous: Cell::new(0) };
    let images = images_tensor(cfg, batch);
    let mut new_running = running.to_vec();
    let fwd = net.forward(&images, &mut Stats::Batch(&mut new_running));
    let loss = ops::softmax_xent_forward(&fwd.logits, batch.n, cfg.classes, batch.labels);
    let dlogits = ops::softmax_xent_backward(&fwd.logits, batch.n, cfg.classes, batch.labels);
    let (grads, dimages) = net.backward(&images, &fwd.tape, &dlogits);
    let out = TrainOutput { logits: fwd.logits, loss, grads, input_grad: dimages.data, running: new_running };
    Ok((out, net.ambiguous.get()))
}

/// Forward pass only, training-mode BN (batch statistics), returning the mean softmax
/// cross-entropy: the function whose finite differences check [`train_step`]'s gradients.
/// Same errors as [`train_step`].
pub fn train_loss(
    cfg: &DenseNetConfig,
    layout: &ParamLayout,
    params: &[f64],
    running: &[f64],
    batch: &Batch,
) -> Result<f64> {
    let geometry = check_inputs(cfg, layout, params, running, batch, true)?;
    let net = Net { cfg, layout, geometry, params, resolver: None, ambiguous: Cell::new(0) };
    let images = images_tensor(cfg, batch);
    let mut scratch = running.to_vec();
    let fwd = net.forward(&images, &mut Stats::Batch(&mut scratch));
    Ok(ops::softmax_xent_forward(&fwd.logits, batch.n, cfg.classes, batch.labels))
}

/// Eval-mode forward: every BN normalises with the running statistics, which are not
/// changed. Returns the `n × classes` logits. Labels are validated but not used.
/// Same errors as [`train_step`], except that a batch of one image is fine in eval mode.
pub fn eval_logits(
    cfg: &DenseNetConfig,
    layout: &ParamLayout,
    params: &[f64],
    running: &[f64],
    batch: &Batch,
) -> Result<Vec<f64>> {
    let geometry = check_inputs(cfg, layout, params, running, batch, false)?;
    let net = Net { cfg, layout, geometry, params, resolver: None, ambiguous: Cell::new(0) };
    let images = images_tensor(cfg, batch);
    Ok(net.forward(&images, &mut Stats::Running(running)).logits)
}
