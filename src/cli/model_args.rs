//! Flags that select and customise a network, shared by every subcommand.

use clap::Args;
use densenet::config::{DenseNetConfig, Stem};
use densenet::error::{Error, Result};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Preset: densenet121, densenet169, densenet201, densenet161 (torchvision, ImageNet) or
    /// densenet-bc-100-k12 (CIFAR-10, the default). The flags below override the preset's
    /// values.
    // No clap default: `train --init-from` must tell a preset that was given from none.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Growth rate k (channels added by each dense layer).
    #[arg(long)]
    pub growth: Option<usize>,
    /// Layers per dense block, comma-separated, e.g. 16,16,16.
    #[arg(long, value_delimiter = ',')]
    pub blocks: Option<Vec<usize>>,
    /// Channels produced by the stem.
    #[arg(long)]
    pub init_features: Option<usize>,
    /// Bottleneck width factor: the 1x1 conv outputs bn-size·k channels.
    #[arg(long)]
    pub bn_size: Option<usize>,
    /// Transition compression θ in (0, 1]: C channels become ⌊θ·C⌋.
    #[arg(long)]
    pub compression: Option<f64>,
    /// Stem: `cifar` (3x3 conv) or `imagenet` (7x7/2 conv, BN, ReLU, 3x3/2 max-pool).
    #[arg(long)]
    pub stem: Option<String>,
    /// Number of classes.
    #[arg(long)]
    pub classes: Option<usize>,
}

/// The preset of commands that do not name their own.
pub const DEFAULT_PRESET: &str = "densenet-bc-100-k12";

impl ModelArgs {
    /// The preset given, or `default`.
    pub fn preset_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(default)
    }

    /// Whether any flag that shapes the network was given (--classes aside).
    pub fn shape_given(&self) -> bool {
        self.model.is_some()
            || self.growth.is_some()
            || self.blocks.is_some()
            || self.init_features.is_some()
            || self.bn_size.is_some()
            || self.compression.is_some()
            || self.stem.is_some()
    }

    /// The preset ([`DEFAULT_PRESET`] unless given) with the overrides applied, validated.
    pub fn config(&self) -> Result<DenseNetConfig> {
        self.config_or(DEFAULT_PRESET)
    }

    /// The preset (`default` unless given) with the overrides applied, validated.
    pub fn config_or(&self, default: &str) -> Result<DenseNetConfig> {
        self.override_config(DenseNetConfig::preset(self.preset_or(default))?)
    }

    /// `c` with the flags below --model applied, validated.
    pub fn override_config(&self, mut c: DenseNetConfig) -> Result<DenseNetConfig> {
        if let Some(v) = self.growth {
            c.growth = v;
        }
        if let Some(v) = &self.blocks {
            c.blocks = v.clone();
        }
        if let Some(v) = self.init_features {
            c.init_features = v;
        }
        if let Some(v) = self.bn_size {
            c.bn_size = v;
        }
        if let Some(v) = self.compression {
            c.compression = v;
        }
        if let Some(v) = &self.stem {
            c.stem = v.parse::<Stem>()?;
        }
        if let Some(v) = self.classes {
            c.classes = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Parses "HxW" (or a single number for a square image).
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Config(format!("image size `{s}` is not of the form HxW, e.g. 32x32"));
    let (h, w) = match s.split_once(['x', 'X']) {
        Some((h, w)) => (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?),
        None => {
            let v = s.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    Ok((h, w))
}

/// The requested size, or the stem's default (32x32 CIFAR, 224x224 ImageNet).
pub fn size_or_default(size: &Option<String>, cfg: &DenseNetConfig) -> Result<(usize, usize)> {
    match size {
        Some(s) => parse_size(s),
        None => Ok(cfg.default_size()),
    }
}
