//! DenseNet-BC configuration: presets, overrides, validation, and the geometry that follows
//! from a configuration plus an input size (channels and spatial size of every stage).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The layers before the first dense block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// CIFAR: one 3×3 conv, stride 1, pad 1, no BN (Pleiss et al., `small_inputs`).
    Cifar,
    /// ImageNet (torchvision): 7×7/2 conv pad 3, BN, ReLU, 3×3/2 max-pool pad 1.
    Imagenet,
}

impl std::str::FromStr for Stem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            _ => Err(Error::Config(format!("unknown stem `{s}` (expected `cifar` or `imagenet`)"))),
        }
    }
}

/// Hyper-parameters of a DenseNet-BC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseNetConfig {
    /// Growth rate k: channels added by every dense layer.
    pub growth: usize,
    /// Number of dense layers in each dense block.
    pub blocks: Vec<usize>,
    /// Channels written by the stem (input channels of the first block).
    pub init_features: usize,
    /// Bottleneck width factor: the 1×1 conv of a dense layer outputs `bn_size · k` channels.
    pub bn_size: usize,
    /// Transition compression θ ∈ (0, 1]: a transition maps C channels to ⌊θ·C⌋.
    pub compression: f64,
    pub stem: Stem,
    pub classes: usize,
    /// Channels of the input image.
    pub in_channels: usize,
}

/// Upper bounds that [`DenseNetConfig::validate`] and [`DenseNetConfig::geometry`] enforce.
/// Each lies far above any published DenseNet (densenet264: 130 layers, 64 in one block; growth
/// 48; 1000 classes), and together they keep every size derived from a configuration — layout
/// offsets, channel counts, plans — well inside 64-bit arithmetic, so that an absurd value is a
/// one-line error instead of an overflow, a panic or a plan that takes gigabytes to build.
pub mod limits {
    /// Dense layers in the whole network: the layout, the plans and a checkpoint hold entries
    /// per layer, so 10⁴ keeps them at megabytes and planning instant (10⁹ layers took GBs
    /// before a single size was checked).
    pub const LAYERS: usize = 10_000;
    /// Growth rate k: the 3×3 conv of each layer has 9·bn_size·k² weights.
    pub const GROWTH: usize = 4096;
    /// Bottleneck factor: the 1×1 conv outputs bn_size·k channels.
    pub const BN_SIZE: usize = 64;
    /// Initial features and input channels (stem weights are k²·in·out).
    pub const CHANNELS_IN: usize = 65_536;
    /// Channels of any dense block (c0 + layers·k), the channel pitch of its storage.
    pub const BLOCK_CHANNELS: usize = 1 << 22;
    /// Classes (the classifier is classes × channels weights).
    pub const CLASSES: usize = 1 << 20;
    /// Parameters: 2³⁶ f32 are 275 GB, twice the memory of the largest GPU, and training
    /// holds three copies (weights, gradients, momentum), so no larger network can run.
    pub const PARAMETERS: u64 = 1 << 36;
    /// Image height and width: 65536 keeps a plane (h·w) within 2³², so per-image sizes
    /// times channels stay far inside 64 bits.
    pub const SIDE: usize = 65_536;
}

/// Names accepted by [`DenseNetConfig::preset`].
pub const PRESETS: &[&str] =
    &["densenet121", "densenet169", "densenet201", "densenet161", "densenet-bc-100-k12"];

impl DenseNetConfig {
    /// A named configuration: torchvision's ImageNet DenseNets, or DenseNet-BC-100 (k = 12)
    /// for CIFAR-10.
    pub fn preset(name: &str) -> Result<Self> {
        let imagenet = |growth, blocks: &[usize], init| DenseNetConfig {
            growth,
            blocks: blocks.to_vec(),
            init_features: init,
            bn_size: 4,
            compression: 0.5,
            stem: Stem::Imagenet,
            classes: 1000,
            in_channels: 3,
        };
        Ok(match name {
            "densenet121" => imagenet(32, &[6, 12, 24, 16], 64),
            "densenet169" => imagenet(32, &[6, 12, 32, 32], 64),
            "densenet201" => imagenet(32, &[6, 12, 48, 32], 64),
            "densenet161" => imagenet(48, &[6, 12, 36, 24], 96),
            "densenet-bc-100-k12" => Self::bc_cifar(100, 12)?,
            _ => match parse_bc_name(name) {
                // Any other CIFAR DenseNet-BC by name, e.g. `densenet-bc-22-k12`.
                Some((depth, growth)) => Self::bc_cifar(depth, growth)?,
                None => {
                    return Err(Error::Config(format!(
                        "unknown model `{name}` (known: {}, or densenet-bc-<depth>-k<growth>)",
                        PRESETS.join(", ")
                    )));
                }
            },
        })
    }

    /// DenseNet-BC for CIFAR-10 of the given depth: three blocks of (depth − 4)/6 layers,
    /// 2k initial features.
    pub fn bc_cifar(depth: usize, growth: usize) -> Result<Self> {
        if depth < 10 || !(depth - 4).is_multiple_of(6) {
            return Err(Error::Config(format!("DenseNet-BC depth must be 6·n + 4 with n ≥ 1, got {depth}")));
        }
        let n = (depth - 4) / 6;
        Ok(DenseNetConfig {
            growth,
            blocks: vec![n; 3],
            init_features: 2 * growth,
            bn_size: 4,
            compression: 0.5,
            stem: Stem::Cifar,
            classes: 10,
            in_channels: 3,
        })
    }

    /// Checks everything that does not depend on the input size, bounds included (see
    /// [`limits`]): after it, the layout's and the planner's arithmetic cannot overflow.
    pub fn validate(&self) -> Result<()> {
        if self.growth == 0 {
            return Err(Error::Config("growth rate must be at least 1".into()));
        }
        at_most("growth rate", self.growth, limits::GROWTH)?;
        at_most("bn-size", self.bn_size, limits::BN_SIZE)?;
        at_most("initial features", self.init_features, limits::CHANNELS_IN)?;
        at_most("input channels", self.in_channels, limits::CHANNELS_IN)?;
        at_most("the number of classes", self.classes, limits::CLASSES)?;
        // Each block first, so that the sum cannot overflow.
        for (i, &layers) in self.blocks.iter().enumerate() {
            at_most(&format!("the layer count of dense block {}", i + 1), layers, limits::LAYERS)?;
        }
        let layers = self.blocks.iter().try_fold(0usize, |n, &b| n.checked_add(b)).unwrap_or(usize::MAX);
        at_most("the total number of dense layers", layers, limits::LAYERS)?;
        if self.blocks.is_empty() {
            return Err(Error::Config("at least one dense block is needed".into()));
        }
        if let Some(i) = self.blocks.iter().position(|&b| b == 0) {
            return Err(Error::Config(format!("dense block {} has no layers", i + 1)));
        }
        if self.init_features == 0 {
            return Err(Error::Config("initial features must be at least 1".into()));
        }
        if self.bn_size == 0 {
            return Err(Error::Config("bn-size must be at least 1".into()));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return Err(Error::Config(format!("compression must lie in (0, 1], got {}", self.compression)));
        }
        if self.classes == 0 {
            return Err(Error::Config("at least one class is needed".into()));
        }
        if self.in_channels == 0 {
            return Err(Error::Config("input channels must be at least 1".into()));
        }
        let mut c = self.init_features;
        for (i, &layers) in self.blocks.iter().enumerate() {
            // Cannot overflow: layers ≤ LAYERS, growth ≤ GROWTH, c ≤ BLOCK_CHANNELS.
            c += layers * self.growth;
            at_most(&format!("the channel count of dense block {}", i + 1), c, limits::BLOCK_CHANNELS)?;
            if i + 1 < self.blocks.len() && self.transition_out(c) == 0 {
                return Err(Error::Config(format!(
                    "compression {} leaves transition {} with no output channels",
                    self.compression,
                    i + 1
                )));
            }
            if i + 1 < self.blocks.len() {
                c = self.transition_out(c);
            }
        }
        // The channel bounds above keep every term of the layout below 2⁴⁴ and there are at
        // most 4·10⁴ of them, so laying it out cannot overflow.
        let params = crate::params::ParamLayout::new(self).num_params as u64;
        if params > limits::PARAMETERS {
            return Err(Error::Config(format!(
                "the network would have {params} parameters, more than the {} that any device \
                 could train (growth {}, {} layers)",
                limits::PARAMETERS,
                self.growth,
                layers
            )));
        }
        Ok(())
    }

    /// The hyper-parameters in words, e.g. `imagenet stem, growth 32, blocks [6, 12, 24, 16],
    /// 64 initial features, bn-size 4, compression 0.5, 1000 classes, 3 input channels`.
    pub fn describe(&self) -> String {
        let stem = match self.stem {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        };
        format!(
            "{stem} stem, growth {}, blocks {:?}, {} initial features, bn-size {}, compression {}, \
             {} classes, {} input channels",
            self.growth,
            self.blocks,
            self.init_features,
            self.bn_size,
            self.compression,
            self.classes,
            self.in_channels
        )
    }

    /// Output channels of a transition whose input has `c` channels: ⌊θ·c⌋.
    pub fn transition_out(&self, c: usize) -> usize {
        // The small epsilon makes θ = 0.5 on odd c give ⌊c/2⌋ exactly as torchvision's `c // 2`,
        // while guarding against 0.1·30 = 2.9999999999999996.
        (self.compression * c as f64 + 1e-9).floor() as usize
    }

    /// Width of the bottleneck (output of the 1×1 conv, input of the 3×3 conv).
    pub fn bottleneck(&self) -> usize {
        self.bn_size * self.growth
    }

    /// Default input size for the stem: 32×32 for CIFAR, 224×224 for ImageNet.
    pub fn default_size(&self) -> (usize, usize) {
        match self.stem {
            Stem::Cifar => (32, 32),
            Stem::Imagenet => (224, 224),
        }
    }

    /// Total number of dense layers.
    pub fn num_layers(&self) -> usize {
        self.blocks.iter().sum()
    }

    /// Geometry for an input of `height × width`, or an error naming the stage where the
    /// image becomes too small.
    pub fn geometry(&self, height: usize, width: usize) -> Result<Geometry> {
        self.validate()?;
        if height == 0 || width == 0 {
            return Err(Error::Config(format!("image size {height}x{width} is empty")));
        }
        if height > limits::SIDE || width > limits::SIDE {
            return Err(Error::Config(format!(
                "image size {height}x{width} is too large: at most {0}x{0}",
                limits::SIDE
            )));
        }
        let (stem_conv, block_hw) = match self.stem {
            Stem::Cifar => ((height, width), (height, width)),
            Stem::Imagenet => {
                let conv = (conv_out(height, 7, 2, 3), conv_out(width, 7, 2, 3));
                let pool = (conv_out(conv.0, 3, 2, 1), conv_out(conv.1, 3, 2, 1));
                (conv, pool)
            }
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        let (mut h, mut w) = block_hw;
        let mut c0 = self.init_features;
        for (i, &layers) in self.blocks.iter().enumerate() {
            if h == 0 || w == 0 {
                return Err(Error::Config(format!(
                    "image {height}x{width} is too small: dense block {} would have an empty \
                     feature map (each transition halves the size)",
                    i + 1
                )));
            }
            let channels = c0 + layers * self.growth;
            blocks.push(BlockGeometry { height: h, width: w, c0, layers, channels });
            c0 = self.transition_out(channels);
            h /= 2;
            w /= 2;
        }
        Ok(Geometry { height, width, stem_conv, blocks })
    }
}

/// A configuration error when `value` exceeds its bound.
fn at_most(what: &str, value: usize, limit: usize) -> Result<()> {
    if value > limit {
        return Err(Error::Config(format!("{what} {value} is too large (at most {limit})")));
    }
    Ok(())
}

/// `densenet-bc-<depth>-k<growth>` → (depth, growth).
fn parse_bc_name(name: &str) -> Option<(usize, usize)> {
    let (depth, growth) = name.strip_prefix("densenet-bc-")?.split_once("-k")?;
    Some((depth.parse().ok()?, growth.parse().ok()?))
}

/// Output size of a convolution or pooling window along one axis.
pub fn conv_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    if size + 2 * pad < kernel { 0 } else { (size + 2 * pad - kernel) / stride + 1 }
}

/// Shape of one dense block's feature storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BlockGeometry {
    pub height: usize,
    pub width: usize,
    /// Input channels of the block (written by the stem or the previous transition).
    pub c0: usize,
    pub layers: usize,
    /// Final channel count C = c0 + layers·k: the storage's channel pitch.
    pub channels: usize,
}

impl BlockGeometry {
    /// Pixels per image.
    pub fn hw(&self) -> usize {
        self.height * self.width
    }
    /// Input channels of layer `l` of this block.
    pub fn layer_in(&self, l: usize, growth: usize) -> usize {
        self.c0 + l * growth
    }
}

/// Spatial sizes and channel counts of every stage for one input size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    pub height: usize,
    pub width: usize,
    /// Output size of the stem convolution (before the max-pool for the ImageNet stem).
    pub stem_conv: (usize, usize),
    pub blocks: Vec<BlockGeometry>,
}

impl Geometry {
    pub fn last(&self) -> &BlockGeometry {
        self.blocks.last().expect("validated configurations have at least one block")
    }

    /// Checks that every batch-norm in training mode sees more than one value per channel
    /// (PyTorch refuses the same case), for a batch of `batch` images.
    pub fn check_batch(&self, batch: usize, stem: Stem) -> Result<()> {
        if batch == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let smallest = match stem {
            Stem::Imagenet => self.stem_conv.0 * self.stem_conv.1,
            Stem::Cifar => usize::MAX,
        }
        .min(self.last().hw());
        if batch * smallest < 2 {
            return Err(Error::Config(format!(
                "batch {batch} with a {}x{} final feature map gives batch-norm one value per \
                 channel; use a larger batch or image",
                self.last().height,
                self.last().width
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_expected_widths() {
        let g = DenseNetConfig::preset("densenet121").unwrap().geometry(224, 224).unwrap();
        let widths: Vec<_> = g.blocks.iter().map(|b| (b.c0, b.channels, b.height)).collect();
        assert_eq!(widths, vec![(64, 256, 56), (128, 512, 28), (256, 1024, 14), (512, 1024, 7)]);
        let g = DenseNetConfig::preset("densenet-bc-100-k12").unwrap().geometry(32, 32).unwrap();
        let widths: Vec<_> = g.blocks.iter().map(|b| (b.c0, b.channels, b.height)).collect();
        assert_eq!(widths, vec![(24, 216, 32), (108, 300, 16), (150, 342, 8)]);
    }

    #[test]
    fn values_beyond_the_limits_are_rejected_and_the_limits_accepted() {
        let base = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
        let message = |c: &DenseNetConfig| c.validate().unwrap_err().to_string();
        let mut c = base.clone();
        c.growth = limits::GROWTH + 1;
        assert!(message(&c).contains("growth rate 4097 is too large (at most 4096)"), "{}", message(&c));
        // 5000 + 5001 layers: each block within its bound, the sum not.
        c = base.clone();
        c.blocks = vec![5000, 5001];
        assert!(message(&c).contains("total number of dense layers 10001"), "{}", message(&c));
        c.blocks = vec![usize::MAX, 1];
        assert!(message(&c).contains("dense block 1"), "{}", message(&c));
        c.blocks = vec![3, limits::LAYERS - 3];
        c.growth = 1;
        c.validate().unwrap();
        // Every count within its bound, the parameters not: 7·12 layers at k = 1024.
        c = base.clone();
        c.growth = 1024;
        c.bn_size = 64;
        assert!(message(&c).contains("parameters, more than the 68719476736"), "{}", message(&c));
        c = base.clone();
        c.classes = limits::CLASSES + 1;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        assert!(base.geometry(limits::SIDE + 1, 33).unwrap_err().to_string().contains("65537x33"));
        assert_eq!(base.geometry(limits::SIDE, 33).unwrap().last().height, limits::SIDE / 4);
    }

    #[test]
    fn transition_rounds_down_like_torchvision() {
        let c = DenseNetConfig::preset("densenet121").unwrap();
        assert_eq!(c.transition_out(257), 128);
        let mut c = c;
        c.compression = 0.1;
        assert_eq!(c.transition_out(30), 3);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let base = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
        let mut c = base.clone();
        c.growth = 0;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let mut c = base.clone();
        c.blocks.clear();
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let mut c = base.clone();
        c.compression = 1.5;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        let mut c = base.clone();
        c.compression = 0.0;
        assert!(matches!(c.validate(), Err(Error::Config(_))));
        assert!(matches!(base.geometry(3, 3), Err(Error::Config(_))));
        assert!(DenseNetConfig::preset("resnet50").is_err());
        let g = base.geometry(4, 4).unwrap();
        assert!(g.check_batch(0, base.stem).is_err());
        assert!(g.check_batch(1, base.stem).is_err());
        assert!(g.check_batch(2, base.stem).is_ok());
    }
}
