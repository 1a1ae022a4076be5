//! Whole networks on the CUDA kernels, executed by the CPU emulator, against the f64 oracle:
//! both stems, batch 3, odd image sizes, growth 5 and 12. Every comparison (logits, loss,
//! each parameter group's gradient, the input gradient, running statistics, eval logits)
//! must stay below the fp32 tolerance of 1e-4 (the tf32 and bf16 cases: their precision's tolerance), with no
//! emulator diagnostics.
#![cfg(feature = "cuda-emu")]

use densenet::Precision;
use densenet::backend::cuda::EmuBackend;
use densenet::config::{DenseNetConfig, Stem};
use densenet::verify::{tolerance, verify};

fn custom(stem: Stem, growth: usize, blocks: &[usize], init: usize) -> DenseNetConfig {
    DenseNetConfig {
        growth,
        blocks: blocks.to_vec(),
        init_features: init,
        bn_size: 4,
        compression: 0.5,
        stem,
        classes: 7,
        in_channels: 3,
    }
}

fn check(cfg: &DenseNetConfig, batch: usize, h: usize, w: usize, seed: u64) {
    check_at(Precision::Fp32, cfg, batch, h, w, seed);
}

/// Every comparison within the precision's tolerance (`densenet::verify::tolerance`).
fn check_at(precision: Precision, cfg: &DenseNetConfig, batch: usize, h: usize, w: usize, seed: u64) {
    densenet::emu::take_diagnostics();
    let backend = EmuBackend::new().unwrap().with_precision(precision).unwrap();
    let r = verify(&backend, cfg, batch, h, w, seed).expect("verify runs");
    let diagnostics = densenet::emu::take_diagnostics();
    assert_eq!(diagnostics.count, 0, "{:?}", diagnostics.messages);
    assert_eq!(r.tolerance, tolerance(precision));
    for c in &r.comparisons {
        println!("{:<28} {:.3e}", c.name, c.rel_error);
        assert!(c.rel_error < r.tolerance, "{} relative error {:.3e} ({cfg:?})", c.name, c.rel_error);
    }
    println!("max relative error {:.3e}, {} kink decisions", r.max_rel_error, r.kink_decisions);
}

#[test]
fn cifar_stem_growth5_batch3_odd_size() {
    check(&custom(Stem::Cifar, 5, &[3, 2, 2], 7), 3, 9, 7, 21);
}

#[test]
fn cifar_stem_growth12_batch3() {
    check(&custom(Stem::Cifar, 12, &[2, 2], 24), 3, 11, 13, 22);
}

#[test]
fn imagenet_stem_growth12_batch3_odd_size() {
    check(&custom(Stem::Imagenet, 12, &[2, 2, 2], 16), 3, 37, 29, 23);
}

#[test]
fn imagenet_stem_growth5_batch3() {
    check(&custom(Stem::Imagenet, 5, &[3, 2], 10), 3, 33, 27, 24);
}

#[test]
fn cifar_stem_growth12_batch3_tf32() {
    check_at(Precision::Tf32, &custom(Stem::Cifar, 12, &[2, 2], 24), 3, 11, 13, 25);
}

#[test]
fn imagenet_stem_growth5_batch3_tf32() {
    check_at(Precision::Tf32, &custom(Stem::Imagenet, 5, &[3, 2], 10), 3, 33, 27, 26);
}

#[test]
fn cifar_stem_growth12_batch3_bf16() {
    check_at(Precision::Bf16, &custom(Stem::Cifar, 12, &[2, 2], 24), 3, 11, 13, 27);
}

#[test]
fn imagenet_stem_growth5_batch3_bf16() {
    check_at(Precision::Bf16, &custom(Stem::Imagenet, 5, &[3, 2], 10), 3, 33, 27, 28);
}
