//! Network summary: stages with output sizes, parameters and forward multiply-adds.
//!
//! MACs are counted for the textbook network (conv before pool in transitions), the
//! convention of torchvision's published figures, for convolutions and the classifier;
//! BN, ReLU and pooling are not counted. `executed_macs` counts what the efficient path
//! runs, where each transition pools before its 1×1 conv (4× fewer MACs there).

use crate::config::{DenseNetConfig, Stem};
use crate::error::{Error, Result};
use crate::params::ParamLayout;
use serde::Serialize;

/// One row of the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Stage {
    pub name: String,
    /// What the stage computes.
    pub op: String,
    pub height: usize,
    pub width: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub parameters: usize,
    /// Multiply-adds per image, textbook order.
    pub macs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub config: DenseNetConfig,
    pub height: usize,
    pub width: usize,
    pub stages: Vec<Stage>,
    pub parameters: usize,
    /// Forward multiply-adds per image, textbook network.
    pub macs: u64,
    /// Forward multiply-adds per image as executed (transitions pool first).
    pub executed_macs: u64,
}

/// Summarises `cfg` for an input of `height × width`.
pub fn summarize(cfg: &DenseNetConfig, height: usize, width: usize) -> Result<Summary> {
    let geo = cfg.geometry(height, width)?;
    let layout = ParamLayout::new(cfg);
    let mut stages = Vec::new();
    let mut saved = 0u64;
    let c0 = cfg.init_features;
    let cin = cfg.in_channels;
    let bn = |c: usize| 2 * c;

    let (sh, sw) = geo.stem_conv;
    match cfg.stem {
        Stem::Cifar => stages.push(Stage {
            name: "stem".into(),
            op: "conv3x3".into(),
            height: sh,
            width: sw,
            channels_in: cin,
            channels_out: c0,
            parameters: 9 * cin * c0,
            macs: macs("the stem", &[sh, sw, 9, cin, c0])?,
        }),
        Stem::Imagenet => {
            stages.push(Stage {
                name: "stem".into(),
                op: "conv7x7/2-bn-relu".into(),
                height: sh,
                width: sw,
                channels_in: cin,
                channels_out: c0,
                parameters: 49 * cin * c0 + bn(c0),
                macs: macs("the stem", &[sh, sw, 49, cin, c0])?,
            });
            let b0 = &geo.blocks[0];
            stages.push(Stage {
                name: "pool0".into(),
                op: "maxpool3x3/2".into(),
                height: b0.height,
                width: b0.width,
                channels_in: c0,
                channels_out: c0,
                parameters: 0,
                macs: 0,
            });
        }
    }
    let bott = cfg.bottleneck();
    for (i, b) in geo.blocks.iter().enumerate() {
        let hw = b.hw();
        let mut params = 0;
        let name = format!("denseblock{}", i + 1);
        let mut block_macs = 0u64;
        for l in 0..b.layers {
            let c = b.layer_in(l, cfg.growth);
            params += bn(c) + c * bott + bn(bott) + 9 * bott * cfg.growth;
            // Per-layer weights are bounded by the validation; times the plane they may not be.
            let layer = macs(&name, &[hw, c * bott + 9 * bott * cfg.growth])?;
            block_macs = add(&name, block_macs, layer)?;
        }
        stages.push(Stage {
            name,
            op: format!("{} x (bn-relu-conv1x1-bn-relu-conv3x3)", b.layers),
            height: b.height,
            width: b.width,
            channels_in: b.c0,
            channels_out: b.channels,
            parameters: params,
            macs: block_macs,
        });
        if let Some(next) = geo.blocks.get(i + 1) {
            let name = format!("transition{}", i + 1);
            let conv = macs(&name, &[hw, b.channels, next.c0])?;
            // Pooling first runs the conv on a quarter of the plane: never more than `conv`.
            saved += conv - macs(&name, &[next.hw(), b.channels, next.c0])?;
            stages.push(Stage {
                name,
                op: "bn-relu-conv1x1-avgpool2".into(),
                height: next.height,
                width: next.width,
                channels_in: b.channels,
                channels_out: next.c0,
                parameters: bn(b.channels) + b.channels * next.c0,
                macs: conv,
            });
        }
    }
    let c = geo.last().channels;
    stages.push(Stage {
        name: "head".into(),
        op: "bn-relu-avgpool-linear".into(),
        height: 1,
        width: 1,
        channels_in: c,
        channels_out: cfg.classes,
        parameters: bn(c) + c * cfg.classes + cfg.classes,
        macs: macs("the head", &[c, cfg.classes])?,
    });
    let parameters: usize = stages.iter().map(|s| s.parameters).sum();
    debug_assert_eq!(parameters, layout.num_params, "stage parameters must add up to the layout");
    let macs = stages.iter().try_fold(0, |t, s| add("the network", t, s.macs))?;
    Ok(Summary {
        config: cfg.clone(),
        height,
        width,
        stages,
        parameters: layout.num_params,
        macs,
        executed_macs: macs - saved,
    })
}

/// Multiply-adds `a · b · …` of `stage`, or an error when they exceed 64 bits (an image of
/// 65536×65536 through thousands of channels can).
fn macs(stage: &str, factors: &[usize]) -> Result<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f as u64)).ok_or_else(|| overflow(stage))
}

fn add(stage: &str, a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| overflow(stage))
}

fn overflow(stage: &str) -> Error {
    Error::Config(format!("the multiply-adds of {stage} exceed 2^64 per image"))
}

/// Formats 12345678 as "12,345,678".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Human-readable table of a summary.
pub fn render(s: &Summary) -> String {
    use std::fmt::Write;
    let c = &s.config;
    let blocks: Vec<String> = c.blocks.iter().map(|b| b.to_string()).collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "DenseNet-BC: stem {}, growth {}, blocks {}, init features {}, bn-size {}, compression {}, {} classes; input {}x{}",
        serde_json::to_value(c.stem).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        c.growth,
        blocks.join(","),
        c.init_features,
        c.bn_size,
        c.compression,
        c.classes,
        s.height,
        s.width
    );
    let _ = writeln!(
        out,
        "{:<13} {:<42} {:>9} {:>11} {:>12} {:>16}",
        "stage", "op", "output", "channels", "parameters", "MACs/image"
    );
    for st in &s.stages {
        let _ = writeln!(
            out,
            "{:<13} {:<42} {:>9} {:>11} {:>12} {:>16}",
            st.name,
            st.op,
            format!("{}x{}", st.height, st.width),
            format!("{}->{}", st.channels_in, st.channels_out),
            thousands(st.parameters as u64),
            thousands(st.macs)
        );
    }
    let _ = writeln!(out, "parameters: {}", thousands(s.parameters as u64));
    let _ = writeln!(
        out,
        "forward MACs per image: {} ({:.3} G); as executed with pool-first transitions: {} ({:.3} G)",
        thousands(s.macs),
        s.macs as f64 / 1e9,
        thousands(s.executed_macs),
        s.executed_macs as f64 / 1e9
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn densenet121_macs_match_torchvision() {
        let cfg = DenseNetConfig::preset("densenet121").unwrap();
        let s = summarize(&cfg, 224, 224).unwrap();
        assert_eq!(s.parameters, 7_978_856);
        // torchvision documents 2.834 GFLOPS (multiply-adds) for densenet121.
        let rel = (s.macs as f64 - 2.834e9).abs() / 2.834e9;
        assert!(rel < 0.01, "MACs {} differ from 2.834e9 by {rel}", s.macs);
        assert!(s.executed_macs < s.macs);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(7978856), "7,978,856");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
