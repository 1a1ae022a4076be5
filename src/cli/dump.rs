//! `densenet verify --dump DIR`: the weights, the batch and the efficient path's outputs of
//! `verify`'s training step, for comparing with another implementation
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

use densenet::backend::Backend;
use densenet::checkpoint::Checkpoint;
use densenet::config::DenseNetConfig;
use densenet::data::Normalization;
use densenet::efficient::{Network, Options};
use densenet::error::Error;
use densenet::params::ParamLayout;
use densenet::train::Model;
use densenet::verify::{nchw_to_nhwc, nhwc_to_nchw, random_batch};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// One training step of the efficient path on `verify`'s weights and batch for `seed`, written
/// to `dir` (created if missing).
#[allow(clippy::too_many_arguments)]
pub fn write<B: Backend>(
    backend: B,
    cfg: &DenseNetConfig,
    batch: usize,
    height: usize,
    width: usize,
    seed: u64,
    dir: &Path,
) -> anyhow::Result<()> {
    let layout = ParamLayout::new(cfg);
    let (params, running) = layout.init_random(seed);
    let (images, labels) = random_batch(cfg, batch, height, width, seed);
    let c = cfg.in_channels;
    let labels_u32: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    let opts = Options { input_grad: true, ..Options::train() };
    let mut net = Network::new(backend, cfg, batch, height, width, opts)?;
    net.set_params(&params, &running)?;
    net.set_batch(&nchw_to_nhwc(&images, batch, c, height, width), &labels_u32)?;
    net.forward()?;
    net.backward()?;

    std::fs::create_dir_all(dir).map_err(|e| Error::File {
        path: dir.display().to_string(),
        message: format!("cannot create: {e}"),
    })?;
    // The input is not normalised: the batch is already standard normal.
    let identity = Normalization { mean: [0.0; 3], std: [1.0; 3] };
    let model = |params, running, batches_tracked| Model {
        config: cfg.clone(),
        normalization: identity,
        params,
        running,
        batches_tracked,
    };
    Checkpoint::of_model(model(params, running, 0)).save(&dir.join("checkpoint.safetensors"))?;
    Checkpoint::of_model(model(net.grads()?, net.running()?, 1)).save(&dir.join("gradients.safetensors"))?;

    let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let input: Vec<f32> = images.iter().map(|&v| v as f32).collect();
    let input_grad = nhwc_to_nchw(&net.input_grad()?, batch, c, height, width);
    let image_shape = vec![batch, c, height, width];
    let tensors = [
        ("input", Dtype::F32, image_shape.clone(), f32_bytes(&input)),
        ("labels", Dtype::I64, vec![batch], labels.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect()),
        ("logits", Dtype::F32, vec![batch, cfg.classes], f32_bytes(&net.logits()?)),
        ("loss", Dtype::F32, vec![], f32_bytes(&[net.loss()?])),
        ("input_grad", Dtype::F32, image_shape, f32_bytes(&input_grad)),
    ];
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((*name, TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let path = dir.join("outputs.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None)?).map_err(|e| Error::File {
        path: path.display().to_string(),
        message: format!("cannot write: {e}"),
    })?;
    Ok(())
}
