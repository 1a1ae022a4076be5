//! The efficient path on the cpu backend against the f64 oracle, over configurations chosen
//! to break shape assumptions: batch 1 and 3, odd image sizes, growth not a multiple of 4,
//! bn-size 2, compression 1.0, both stems. Every comparison (logits, loss, each parameter
//! group's gradient, the input gradient, updated running statistics, eval-mode logits) must
//! stay below the f32 tolerance of 1e-4.

use densenet::Precision;
use densenet::backend::cpu::CpuBackend;
use densenet::config::{DenseNetConfig, Stem};
use densenet::verify::{F32_TOLERANCE, verify};

fn custom(
    stem: Stem,
    growth: usize,
    blocks: &[usize],
    init: usize,
    bn_size: usize,
    compression: f64,
) -> DenseNetConfig {
    DenseNetConfig {
        growth,
        blocks: blocks.to_vec(),
        init_features: init,
        bn_size,
        compression,
        stem,
        classes: 7,
        in_channels: 3,
    }
}

fn check(cfg: &DenseNetConfig, batch: usize, h: usize, w: usize, seed: u64) {
    let r = verify(&CpuBackend::new(), cfg, batch, h, w, seed).expect("verify runs");
    for c in &r.comparisons {
        assert!(
            c.rel_error < F32_TOLERANCE,
            "{} relative error {:.3e} (batch {batch}, {h}x{w}, {cfg:?})",
            c.name,
            c.rel_error
        );
    }
    let groups = densenet::params::ParamLayout::new(cfg).groups().len();
    // logits, loss, every group, input gradient, running statistics, eval logits
    assert_eq!(r.comparisons.len(), groups + 5);
}

#[test]
fn cifar_stem_batch3_odd_size_growth5() {
    check(&custom(Stem::Cifar, 5, &[3, 2, 2], 7, 4, 0.5), 3, 7, 5, 11);
}

#[test]
fn cifar_stem_batch1_bn_size2() {
    check(&custom(Stem::Cifar, 6, &[2, 3], 9, 2, 0.5), 1, 9, 7, 12);
}

#[test]
fn cifar_stem_compression_one() {
    check(&custom(Stem::Cifar, 4, &[2, 2, 2], 5, 3, 1.0), 2, 11, 13, 13);
}

#[test]
fn imagenet_stem_batch3_odd_size() {
    check(&custom(Stem::Imagenet, 5, &[2, 3, 2], 8, 4, 0.5), 3, 37, 29, 14);
}

#[test]
fn imagenet_stem_batch1() {
    check(&custom(Stem::Imagenet, 12, &[2, 2], 16, 2, 0.7), 1, 33, 41, 15);
}

#[test]
fn densenet_bc_100_k12() {
    check(&DenseNetConfig::preset("densenet-bc-100-k12").unwrap(), 2, 32, 32, 0);
}

/// tf32 or bf16 on the cpu backend (every GEMM operand rounded as the tensor-core kernels round
/// it; for bf16 the activations stored in bf16 too): within the precision's tolerance (see
/// `densenet::verify::TF32_TOLERANCE` and `BF16_TOLERANCE`), and visibly not the fp32 result.
fn check_reduced(precision: Precision, cfg: &DenseNetConfig, batch: usize, h: usize, w: usize, seed: u64) {
    let backend = CpuBackend::new().with_precision(precision);
    let r = verify(&backend, cfg, batch, h, w, seed).expect("verify runs");
    assert_eq!((r.precision, r.tolerance), (precision, densenet::verify::tolerance(precision)));
    for c in &r.comparisons {
        println!("{:<28} {:.3e}", c.name, c.rel_error);
        assert!(c.rel_error < r.tolerance, "{} relative error {:.3e} ({cfg:?})", c.name, c.rel_error);
    }
    assert!(r.passed());
    let logits = r.comparisons.iter().find(|c| c.name == "logits").unwrap().rel_error;
    assert!(
        logits > 1e-6,
        "{precision} logits agree with the oracle to {logits:e}: were the operands rounded?"
    );
}

#[test]
fn cifar_stem_tf32() {
    check_reduced(Precision::Tf32, &custom(Stem::Cifar, 5, &[3, 2, 2], 7, 4, 0.5), 3, 7, 5, 14);
}

#[test]
fn imagenet_stem_tf32() {
    check_reduced(Precision::Tf32, &custom(Stem::Imagenet, 6, &[2, 2], 8, 4, 0.5), 2, 35, 29, 15);
}

#[test]
fn cifar_stem_bf16() {
    check_reduced(Precision::Bf16, &custom(Stem::Cifar, 5, &[3, 2, 2], 7, 4, 0.5), 3, 7, 5, 16);
}

#[test]
fn imagenet_stem_bf16() {
    check_reduced(Precision::Bf16, &custom(Stem::Imagenet, 6, &[2, 2], 8, 4, 0.5), 2, 35, 29, 17);
}
