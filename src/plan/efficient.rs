//! Every buffer of the memory-efficient path (see "Buffers of a training step" in
//! `docs/ARCHITECTURE.md`), with its length and category. [`Network::new`] allocates from
//! this plan, so the two cannot disagree.
//!
//! [`Network::new`]: crate::efficient::Network::new

use super::{CategoryBytes, Dtype, PlannedBuffer, product, sum};
use crate::backend::Category;
use crate::config::{DenseNetConfig, Geometry, Stem};
use crate::efficient::{Mode, Options};
use crate::error::{Error, Result};
use crate::params::ParamLayout;
use serde::Serialize;

/// A buffer's length in elements, their type and the category its bytes are counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub len: usize,
    pub category: Category,
    pub dtype: Dtype,
}

impl Planned {
    pub fn bytes(&self) -> usize {
        // Saturates only where `EfficientPlan::new` has already failed: it checks the total.
        self.len.saturating_mul(self.dtype.size())
    }
}

/// One dense block's feature storage S and its per-channel `[mean | var]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StoragePlan {
    pub data: Planned,
    /// Empty in eval mode (running statistics are used instead).
    pub stats: Planned,
}

/// Buffers that exist only in training mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrainPlan {
    pub grads: Planned,
    /// The two gradient ping-pong storages. Block b's input gradient lives in `g[b % 2]`
    /// (a transition reads one and writes the other), so each is sized for the largest block
    /// of its parity only; the ImageNet stem's conv-output gradient, written while block 0's
    /// is read from `g[0]`, lives in `g[1]`.
    pub g: [Planned; 2],
    /// Deferred-correction accumulators `[α | β]`, `corr_half` floats each.
    pub corr: Planned,
    /// The widest block (offset of β in `corr`).
    pub corr_half: usize,
    /// Per-channel reductions `[Σg | Σg·x̂]` of the widest BN.
    pub sums: Planned,
    /// Gradient of the bottleneck output.
    pub dz: Planned,
    /// `[mean | var]` of every layer's bottleneck output.
    pub zstats: Planned,
    /// `[mean | var]` of the ImageNet stem's conv output (empty for the CIFAR stem).
    pub stem_stats: Planned,
    /// SGD momentum (with `Options::optimizer`).
    pub velocity: Option<Planned>,
    pub labels: Planned,
    pub loss: Planned,
    pub dlogits: Planned,
    pub dpooled: Planned,
    /// dL/d(input) (with `Options::input_grad`).
    pub input_grad: Option<Planned>,
}

/// All buffers of an efficient [`Network`](crate::efficient::Network) for one configuration,
/// batch, image size and storage dtype: the activation-shaped buffers (input, stem output,
/// feature storages, Z, dZ, the gradient storages, the input gradient) hold `dtype`; statistics,
/// reductions, parameters and the head (pooled features, logits and their gradients) f32.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EfficientPlan {
    pub geometry: Geometry,
    pub batch: usize,
    /// Element type of the activation-shaped buffers.
    pub dtype: Dtype,
    pub mode: Mode,
    pub params: Planned,
    pub running: Planned,
    /// Input batch, NHWC.
    pub input: Planned,
    /// ImageNet stem conv output (empty for the CIFAR stem).
    pub stem_out: Planned,
    pub storages: Vec<StoragePlan>,
    /// Bottleneck output Z, shared by all layers.
    pub z: Planned,
    pub pooled: Planned,
    pub logits: Planned,
    pub train: Option<TrainPlan>,
    /// Sum of all buffers' bytes: the peak of a step.
    pub total_bytes: usize,
}

const FS: Category = Category::FeatureStorage;
const GB: Category = Category::GradientBuffers;
const WS: Category = Category::Workspace;
const PA: Category = Category::Parameters;
const SH: Category = Category::StemHead;

impl EfficientPlan {
    /// The plan for `batch` images of `height × width`, with the checks `Network::new` makes
    /// (valid configuration, image large enough, batch-norm never seeing a single value).
    pub fn new(
        cfg: &DenseNetConfig,
        batch: usize,
        height: usize,
        width: usize,
        dtype: Dtype,
        opts: Options,
    ) -> Result<Self> {
        cfg.validate()?;
        let planned = |len, category| Planned { len, category, dtype: Dtype::F32 };
        let activation = |len, category| Planned { len, category, dtype };
        // Before the geometry: an image too large to address must not reach its arithmetic.
        let input = activation(product("the input batch", &[batch, height, width, cfg.in_channels])?, SH);
        let geometry = cfg.geometry(height, width)?;
        let train = opts.mode == Mode::Train;
        if train {
            geometry.check_batch(batch, cfg.stem)?;
        } else if batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let layout = ParamLayout::new(cfg);
        let (c0, bott, last) = (cfg.init_features, cfg.bottleneck(), geometry.last().channels);

        let mut storages = Vec::with_capacity(geometry.blocks.len());
        // The largest feature storage of the even and of the odd blocks.
        let (mut max_storage, mut max_pixels) = ([0, 0], 0);
        for (i, b) in geometry.blocks.iter().enumerate() {
            let pixels = product("a feature map", &[batch, b.height, b.width])?;
            let data = product("a feature storage", &[pixels, b.channels])?;
            storages.push(StoragePlan {
                data: activation(data, FS),
                stats: planned(if train { 2 * b.channels } else { 0 }, FS),
            });
            max_storage[i % 2] = max_storage[i % 2].max(data);
            max_pixels = max_pixels.max(pixels);
        }
        let max_channels = geometry.blocks.iter().map(|b| b.channels).max().unwrap_or(0);
        let max_z = product("the bottleneck workspace", &[max_pixels, bott])?;
        let stem_out = match cfg.stem {
            Stem::Imagenet => {
                product("the stem output", &[batch, geometry.stem_conv.0, geometry.stem_conv.1, c0])?
            }
            Stem::Cifar => 0,
        };
        let pooled = product("the pooled features", &[batch, last])?;
        let logits = product("the logits", &[batch, cfg.classes])?;

        let train = if train {
            Some(TrainPlan {
                grads: planned(layout.num_params, PA),
                g: [activation(max_storage[0], GB), activation(max_storage[1].max(stem_out), GB)],
                corr: planned(2 * max_channels, GB),
                corr_half: max_channels,
                sums: planned(2 * max_channels.max(bott).max(c0), GB),
                dz: activation(max_z, WS),
                zstats: planned(product("the bottleneck statistics", &[2, bott, cfg.num_layers()])?, FS),
                stem_stats: planned(if cfg.stem == Stem::Imagenet { 2 * c0 } else { 0 }, SH),
                velocity: opts.optimizer.then_some(planned(layout.num_params, PA)),
                labels: planned(batch, SH),
                loss: planned(1, SH),
                dlogits: planned(logits, SH),
                dpooled: planned(pooled, SH),
                input_grad: opts.input_grad.then_some(input),
            })
        } else {
            None
        };
        let mut plan = EfficientPlan {
            batch,
            dtype,
            mode: opts.mode,
            params: planned(layout.num_params, PA),
            running: planned(layout.num_running, PA),
            input,
            stem_out: activation(stem_out, SH),
            storages,
            z: activation(max_z, WS),
            pooled: planned(pooled, SH),
            logits: planned(logits, SH),
            train,
            geometry,
            total_bytes: 0,
        };
        plan.total_bytes = plan.buffers().iter().try_fold(0, |t, b| sum("the network", t, b.bytes))?;
        Ok(plan)
    }

    /// Every buffer, in the order `Network::new` allocates them (empty ones included).
    pub fn buffers(&self) -> Vec<PlannedBuffer> {
        let mut out = Vec::new();
        let mut push = |name: String, p: Planned| {
            out.push(PlannedBuffer {
                name,
                category: p.category,
                dtype: p.dtype,
                len: p.len,
                bytes: p.bytes(),
            });
        };
        push("parameters".into(), self.params);
        push("running statistics".into(), self.running);
        push("input batch".into(), self.input);
        push("stem conv output".into(), self.stem_out);
        for (b, s) in self.storages.iter().enumerate() {
            push(format!("block {} feature storage S", b + 1), s.data);
            push(format!("block {} channel statistics", b + 1), s.stats);
        }
        push("bottleneck output Z".into(), self.z);
        push("pooled features".into(), self.pooled);
        push("logits".into(), self.logits);
        if let Some(t) = &self.train {
            push("parameter gradients".into(), t.grads);
            push("gradient storage G0".into(), t.g[0]);
            push("gradient storage G1".into(), t.g[1]);
            push("BN correction accumulators".into(), t.corr);
            push("BN reduction sums".into(), t.sums);
            push("bottleneck gradient dZ".into(), t.dz);
            push("bottleneck statistics".into(), t.zstats);
            push("stem statistics".into(), t.stem_stats);
            if let Some(v) = t.velocity {
                push("SGD momentum".into(), v);
            }
            push("labels".into(), t.labels);
            push("loss".into(), t.loss);
            push("logit gradients".into(), t.dlogits);
            push("pooled-feature gradients".into(), t.dpooled);
            if let Some(g) = t.input_grad {
                push("input gradient".into(), g);
            }
        }
        out
    }

    /// Bytes per category (the peak of a step, per category: nothing is freed during one).
    pub fn by_category(&self) -> CategoryBytes {
        let mut out = CategoryBytes::new();
        for b in self.buffers() {
            *out.entry(b.category).or_default() += b.bytes;
        }
        out.retain(|_, v| *v > 0);
        out
    }

    /// Bytes of activations and their gradients: everything but parameters, gradients,
    /// optimiser state and running statistics.
    pub fn activation_bytes(&self) -> usize {
        self.total_bytes - self.by_category().get(&Category::Parameters).copied().unwrap_or(0)
    }
}
