//! Parameter layout: every learnable tensor and running-statistics buffer of a DenseNet, with
//! torchvision's `state_dict` name, its PyTorch shape, and its offset in one flat `f32` buffer
//! (so the optimiser is one fused pass over all parameters).
//!
//! Internal layouts: conv weights are OHWI (`[c_out][kh][kw][c_in]`), which makes the input
//! channels of one filter tap contiguous, matching NHWC activations; PyTorch's OIHW is used
//! only at the checkpoint boundary. Linear weights are `[out][in]` as in PyTorch.

use crate::config::{DenseNetConfig, Stem};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

/// What a parameter tensor is, which decides its initialisation and layout conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// OHWI conv weight.
    ConvWeight {
        c_out: usize,
        kernel: usize,
        c_in: usize,
    },
    BnWeight,
    BnBias,
    LinearWeight {
        out: usize,
        inp: usize,
    },
    LinearBias,
}

/// One parameter tensor.
#[derive(Clone, Debug, Serialize)]
pub struct TensorSpec {
    /// torchvision `state_dict` name, e.g. `features.denseblock1.denselayer1.conv1.weight`.
    pub name: String,
    /// Shape as PyTorch reports it (OIHW for convs).
    pub shape: Vec<usize>,
    pub kind: TensorKind,
    pub offset: usize,
    pub len: usize,
    /// Group name used to report gradient errors (e.g. `denseblock1.conv1`).
    pub group: String,
}

/// Offsets of one batch-norm layer.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BnLayout {
    pub channels: usize,
    /// γ and β in the parameter buffer.
    pub gamma: usize,
    pub beta: usize,
    /// Running mean and variance in the running-statistics buffer.
    pub running_mean: usize,
    pub running_var: usize,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct DenseLayerLayout {
    /// Input channels c_l.
    pub c_in: usize,
    pub norm1: BnLayout,
    /// `[bottleneck][c_in]` 1×1 conv.
    pub conv1: usize,
    pub norm2: BnLayout,
    /// `[growth][3][3][bottleneck]` 3×3 conv.
    pub conv2: usize,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct TransitionLayout {
    pub c_in: usize,
    pub c_out: usize,
    pub norm: BnLayout,
    /// `[c_out][c_in]` 1×1 conv.
    pub conv: usize,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct StemLayout {
    /// `[init_features][k][k][in_channels]`, k = 3 (CIFAR) or 7 (ImageNet).
    pub conv: usize,
    pub kernel: usize,
    /// BN after the conv (ImageNet stem only).
    pub norm: Option<BnLayout>,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct HeadLayout {
    pub norm: BnLayout,
    /// `[classes][channels]`.
    pub fc_weight: usize,
    pub fc_bias: usize,
    pub channels: usize,
    pub classes: usize,
}

/// One batch-norm of the network, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BnSite {
    /// After the ImageNet stem's conv.
    Norm0,
    /// Before a dense layer's 1×1 conv.
    Norm1 { block: usize, layer: usize },
    /// Before a dense layer's 3×3 conv.
    Norm2 { block: usize, layer: usize },
    /// The transition after block `block`.
    Transition { block: usize },
    /// Before the head's global pool.
    Norm5,
}

/// Where every parameter and running statistic of a configuration lives.
#[derive(Clone, Debug, Serialize)]
pub struct ParamLayout {
    pub stem: StemLayout,
    /// `blocks[b][l]`.
    pub blocks: Vec<Vec<DenseLayerLayout>>,
    /// `transitions[b]` follows block b.
    pub transitions: Vec<TransitionLayout>,
    pub head: HeadLayout,
    /// Every parameter tensor, in torchvision's `state_dict` order.
    pub tensors: Vec<TensorSpec>,
    /// BN layers in `state_dict` order, with their name prefix (`features.norm0`, ...).
    pub norms: Vec<(String, BnLayout)>,
    /// Number of parameters (length of the parameter buffer).
    pub num_params: usize,
    /// Length of the running-statistics buffer.
    pub num_running: usize,
}

struct Builder {
    tensors: Vec<TensorSpec>,
    norms: Vec<(String, BnLayout)>,
    params: usize,
    running: usize,
}

impl Builder {
    fn tensor(&mut self, name: String, shape: Vec<usize>, kind: TensorKind, group: &str) -> usize {
        let len = shape.iter().product();
        let offset = self.params;
        self.tensors.push(TensorSpec { name, shape, kind, offset, len, group: group.to_string() });
        self.params += len;
        offset
    }

    fn conv(&mut self, prefix: &str, c_out: usize, c_in: usize, kernel: usize, group: &str) -> usize {
        self.tensor(
            format!("{prefix}.weight"),
            vec![c_out, c_in, kernel, kernel],
            TensorKind::ConvWeight { c_out, kernel, c_in },
            group,
        )
    }

    fn bn(&mut self, prefix: &str, channels: usize, group: &str) -> BnLayout {
        let gamma = self.tensor(format!("{prefix}.weight"), vec![channels], TensorKind::BnWeight, group);
        let beta = self.tensor(format!("{prefix}.bias"), vec![channels], TensorKind::BnBias, group);
        let running_mean = self.running;
        let running_var = self.running + channels;
        self.running += 2 * channels;
        let layout = BnLayout { channels, gamma, beta, running_mean, running_var };
        self.norms.push((prefix.to_string(), layout));
        layout
    }
}

impl ParamLayout {
    /// Lays out the parameters of a validated configuration.
    pub fn new(cfg: &DenseNetConfig) -> Self {
        let mut b = Builder { tensors: Vec::new(), norms: Vec::new(), params: 0, running: 0 };
        let kernel = match cfg.stem {
            Stem::Cifar => 3,
            Stem::Imagenet => 7,
        };
        let conv = b.conv("features.conv0", cfg.init_features, cfg.in_channels, kernel, "conv0");
        let norm = match cfg.stem {
            Stem::Cifar => None,
            Stem::Imagenet => Some(b.bn("features.norm0", cfg.init_features, "norm0")),
        };
        let stem = StemLayout { conv, kernel, norm };

        let bottleneck = cfg.bottleneck();
        let mut blocks = Vec::new();
        let mut transitions = Vec::new();
        let mut c = cfg.init_features;
        for (bi, &layers) in cfg.blocks.iter().enumerate() {
            let blk = format!("denseblock{}", bi + 1);
            let mut block = Vec::new();
            for l in 0..layers {
                let p = format!("features.{blk}.denselayer{}", l + 1);
                let c_in = c + l * cfg.growth;
                let norm1 = b.bn(&format!("{p}.norm1"), c_in, &format!("{blk}.norm1"));
                let conv1 = b.conv(&format!("{p}.conv1"), bottleneck, c_in, 1, &format!("{blk}.conv1"));
                let norm2 = b.bn(&format!("{p}.norm2"), bottleneck, &format!("{blk}.norm2"));
                let conv2 = b.conv(&format!("{p}.conv2"), cfg.growth, bottleneck, 3, &format!("{blk}.conv2"));
                block.push(DenseLayerLayout { c_in, norm1, conv1, norm2, conv2 });
            }
            blocks.push(block);
            c += layers * cfg.growth;
            if bi + 1 < cfg.blocks.len() {
                let t = format!("transition{}", bi + 1);
                let c_out = cfg.transition_out(c);
                let norm = b.bn(&format!("features.{t}.norm"), c, &format!("{t}.norm"));
                let conv = b.conv(&format!("features.{t}.conv"), c_out, c, 1, &format!("{t}.conv"));
                transitions.push(TransitionLayout { c_in: c, c_out, norm, conv });
                c = c_out;
            }
        }
        let norm = b.bn("features.norm5", c, "norm5");
        let fc_weight = b.tensor(
            "classifier.weight".into(),
            vec![cfg.classes, c],
            TensorKind::LinearWeight { out: cfg.classes, inp: c },
            "classifier",
        );
        let fc_bias =
            b.tensor("classifier.bias".into(), vec![cfg.classes], TensorKind::LinearBias, "classifier");
        let head = HeadLayout { norm, fc_weight, fc_bias, channels: c, classes: cfg.classes };
        ParamLayout {
            stem,
            blocks,
            transitions,
            head,
            tensors: b.tensors,
            norms: b.norms,
            num_params: b.params,
            num_running: b.running,
        }
    }

    /// The BN layer at `site`, if the network has it.
    pub fn bn(&self, site: BnSite) -> Option<BnLayout> {
        match site {
            BnSite::Norm0 => self.stem.norm,
            BnSite::Norm1 { block, layer } => self.blocks.get(block)?.get(layer).map(|l| l.norm1),
            BnSite::Norm2 { block, layer } => self.blocks.get(block)?.get(layer).map(|l| l.norm2),
            BnSite::Transition { block } => self.transitions.get(block).map(|t| t.norm),
            BnSite::Norm5 => Some(self.head.norm),
        }
    }

    /// Parameter-group names in order of first appearance.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.tensors {
            if !out.contains(&t.group) {
                out.push(t.group.clone());
            }
        }
        out
    }

    /// Parameters initialised as torchvision does: Kaiming-normal convs (fan-in, gain √2),
    /// BN γ = 1, β = 0, classifier weight U(−1/√fan_in, 1/√fan_in), bias 0.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = vec![0.0f32; self.num_params];
        for t in &self.tensors {
            let dst = &mut p[t.offset..t.offset + t.len];
            match t.kind {
                TensorKind::ConvWeight { kernel, c_in, .. } => {
                    let std = (2.0 / (c_in * kernel * kernel) as f64).sqrt();
                    let normal = Normal::new(0.0, std).expect("std is finite and positive");
                    dst.iter_mut().for_each(|v| *v = normal.sample(&mut rng) as f32);
                }
                TensorKind::BnWeight => dst.fill(1.0),
                TensorKind::BnBias | TensorKind::LinearBias => dst.fill(0.0),
                TensorKind::LinearWeight { inp, .. } => {
                    let bound = 1.0 / (inp as f64).sqrt();
                    dst.iter_mut().for_each(|v| *v = rng.random_range(-bound..bound) as f32);
                }
            }
        }
        p
    }

    /// Running statistics as PyTorch initialises them: mean 0, variance 1.
    pub fn init_running(&self) -> Vec<f32> {
        let mut r = vec![0.0f32; self.num_running];
        for (_, n) in &self.norms {
            r[n.running_var..n.running_var + n.channels].fill(1.0);
        }
        r
    }

    /// Random parameters and running statistics for testing: conv and linear weights as
    /// [`ParamLayout::init`], but γ, β, biases and running statistics drawn at random too
    /// (γ of either sign), so that no gradient path is hidden by γ = 1 or β = 0.
    pub fn init_random(&self, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut p = self.init(seed);
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0fb4_a7c4);
        for t in &self.tensors {
            let dst = &mut p[t.offset..t.offset + t.len];
            match t.kind {
                TensorKind::BnWeight => dst.iter_mut().for_each(|v| {
                    let mag: f32 = rng.random_range(0.5..1.5);
                    *v = if rng.random_bool(0.1) { -mag } else { mag };
                }),
                TensorKind::BnBias | TensorKind::LinearBias => {
                    dst.iter_mut().for_each(|v| *v = rng.random_range(-0.3..0.3))
                }
                _ => {}
            }
        }
        let mut r = self.init_running();
        for (_, n) in &self.norms {
            for c in 0..n.channels {
                r[n.running_mean + c] = rng.random_range(-0.5..0.5);
                r[n.running_var + c] = rng.random_range(0.5..2.0);
            }
        }
        (p, r)
    }
}

/// Converts an OHWI conv weight to PyTorch's OIHW.
pub fn ohwi_to_oihw(w: &[f32], c_out: usize, kernel: usize, c_in: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for k in 0..kernel * kernel {
                out[(o * c_in + i) * kernel * kernel + k] = w[(o * kernel * kernel + k) * c_in + i];
            }
        }
    }
    out
}

/// Converts a PyTorch OIHW conv weight to OHWI.
pub fn oihw_to_ohwi(w: &[f32], c_out: usize, kernel: usize, c_in: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for k in 0..kernel * kernel {
                out[(o * kernel * kernel + k) * c_in + i] = w[(o * c_in + i) * kernel * kernel + k];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(name: &str) -> usize {
        ParamLayout::new(&DenseNetConfig::preset(name).unwrap()).num_params
    }

    #[test]
    fn parameter_counts_match_torchvision() {
        assert_eq!(count("densenet121"), 7_978_856);
        assert_eq!(count("densenet169"), 14_149_480);
        assert_eq!(count("densenet201"), 20_013_928);
        assert_eq!(count("densenet161"), 28_681_000);
        assert_eq!(count("densenet-bc-100-k12"), 769_162);
    }

    #[test]
    fn state_dict_has_torchvision_names() {
        let l = ParamLayout::new(&DenseNetConfig::preset("densenet121").unwrap());
        // Parameters plus three buffers (running mean/var, num_batches_tracked) per BN.
        assert_eq!(l.tensors.len() + 3 * l.norms.len(), 727);
        assert_eq!(l.tensors[0].name, "features.conv0.weight");
        assert_eq!(l.tensors[0].shape, vec![64, 3, 7, 7]);
        assert!(l.tensors.iter().any(|t| t.name == "features.denseblock3.denselayer24.conv2.weight"));
        assert_eq!(l.tensors.last().unwrap().name, "classifier.bias");
    }

    #[test]
    fn layout_conversion_round_trips() {
        let w: Vec<f32> = (0..5 * 9 * 7).map(|i| i as f32 * 0.37 - 3.0).collect();
        let oihw = ohwi_to_oihw(&w, 5, 3, 7);
        assert_ne!(oihw, w);
        // OHWI [o][ky][kx][i] = OIHW [o][i][ky][kx]
        assert_eq!(w[((2 * 3 + 1) * 3 + 2) * 7 + 4], oihw[((2 * 7 + 4) * 3 + 1) * 3 + 2]);
        assert_eq!(oihw_to_ohwi(&oihw, 5, 3, 7), w);
    }
}
