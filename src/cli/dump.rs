//! `densenet verify --dump DIR`: the weights, the batch and the efficient path's outputs of
//! `verify`'s training step (the one it just checked), for comparing with another implementation
//! (`scripts/torch-compare.py` loads them into torchvision's DenseNet). Three files:
//!
//! * `checkpoint.safetensors`: a checkpoint (torchvision `state_dict` names, OIHW weights) of
//!   `verify`'s random parameters and running statistics for `--seed`;
//! * `gradients.safetensors`: the same format and names, holding dL/dθ in every parameter
//!   entry and the running statistics after the step (`num_batches_tracked` 1);
//! * `outputs.safetensors`: `input` (N×C×H×W, the batch), `labels` (I64, N), `logits`
//!   (N×classes), `loss` (scalar: the mean cross-entropy), `input_grad` (N×C×H×W), F32 but
//!   the labels.
//!
//! The input is NCHW, as PyTorch takes it; the network received the same values in NHWC.

use densenet::checkpoint::Checkpoint;
use densenet::config::DenseNetConfig;
use densenet::data::Normalization;
use densenet::error::Error;
use densenet::train::Model;
use densenet::verify::Step;
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// `verify`'s training step (`step`, for a batch of `height × width` images), written to
/// `dir` (created if missing).
pub fn write(
    cfg: &DenseNetConfig,
    step: &Step,
    height: usize,
    width: usize,
    dir: &Path,
) -> anyhow::Result<()> {
    let (batch, c) = (step.labels.len(), cfg.in_channels);
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    // The input is not normalised: the batch is already standard normal.
    let identity = Normalization::identity(c);
    let model = |params, running, batches_tracked| Model {
        config: cfg.clone(),
        normalization: identity.clone(),
        params,
        running,
        batches_tracked,
    };
    Checkpoint::of_model(model(step.params.clone(), step.running.clone(), 0))
        .save(&dir.join("checkpoint.safetensors"))?;
    Checkpoint::of_model(model(step.grads.clone(), step.running_after.clone(), 1))
        .save(&dir.join("gradients.safetensors"))?;

    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let input: Vec<f32> = step.images.iter().map(|&v| v as f32).collect();
    let image_shape = vec![batch, c, height, width];
    let tensors = [
        ("input", Dtype::F32, image_shape.clone(), f32_bytes(&input)),
        (
            "labels",
            Dtype::I64,
            vec![batch],
            step.labels.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect(),
        ),
        ("logits", Dtype::F32, vec![batch, cfg.classes], f32_bytes(&step.logits)),
        ("loss", Dtype::F32, vec![], f32_bytes(&[step.loss])),
        ("input_grad", Dtype::F32, image_shape, f32_bytes(&step.input_grad)),
    ];
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let path = dir.join("outputs.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None)?)
        .map_err(|e| Error::file(&path, format!("cannot write: {e}")))?;
    Ok(())
}
