//! The baseline against the efficient path: same loss, logits, gradients, running
//! statistics and SGD update from the same weights and batch; and its measured peak against
//! its plan.
//!
//! Tolerances, relative ‖baseline − efficient‖/‖efficient‖: 1e-6 for the loss, logits, running
//! statistics and parameters after an SGD step; 1e-4 for each parameter group's gradient.
//! Both paths run in f32 on the same backend, and block 1's forward is bit-identical (the
//! unfused ops compute exactly the fused ops' values; a one-block network gives identical
//! loss and logits). Later blocks differ by a few roundings because the transition's order
//! differs (the baseline convolves then pools, the efficient path pools then convolves), and
//! the backward sums gradients in another order: gradients agree to ~1e-7–1e-6, up to a few
//! 1e-5 over seeds where a group's gradient is a sum with cancellation (BN0's dβ). 1e-4 is
//! also `verify`'s tolerance. A ReLU input within a rounding of zero taking the other side
//! (see "Verification and kinks" in `docs/ARCHITECTURE.md`) would move a group by ~1e-3 and
//! fail the test; with these small networks and this seed none does, so the comparison is
//! exact-mask and meaningful.

use densenet::backend::cpu::CpuBackend;
use densenet::backend::prelude::*;
use densenet::backend::{Category, SgdParams};
use densenet::baseline::BaselineNetwork;
use densenet::config::DenseNetConfig;
use densenet::efficient::{Network, Options};
use densenet::params::ParamLayout;
use densenet::plan::{BaselinePlan, Dtype};
use densenet::verify::{nchw_to_nhwc, random_batch};

/// Loss, logits, running statistics.
const FORWARD_TOL: f64 = 1e-6;
/// Each parameter group's gradient.
const GRAD_TOL: f64 = 1e-4;

fn small_cifar() -> DenseNetConfig {
    let mut c = DenseNetConfig::bc_cifar(40, 5).unwrap();
    c.blocks = vec![3, 2, 2];
    c
}

fn small_imagenet() -> DenseNetConfig {
    let mut c = DenseNetConfig::preset("densenet121").unwrap();
    c.growth = 6;
    c.blocks = vec![2, 3];
    c.init_features = 10;
    c.classes = 5;
    c
}

fn odd_cifar() -> DenseNetConfig {
    let mut c = small_cifar();
    c.blocks = vec![4];
    c.bn_size = 3;
    c.growth = 7;
    c.init_features = 11;
    c
}

fn uncompressed() -> DenseNetConfig {
    let mut c = small_cifar();
    c.compression = 1.0;
    c.blocks = vec![2, 3];
    c
}

/// (config, batch, height, width)
fn cases() -> Vec<(&'static str, DenseNetConfig, usize, usize, usize)> {
    vec![
        ("cifar 3,2,2 k5", small_cifar(), 3, 9, 7),
        ("imagenet stem", small_imagenet(), 3, 37, 29),
        ("one block, bn-size 3", odd_cifar(), 2, 7, 5),
        ("compression 1", uncompressed(), 3, 8, 10),
        ("densenet-bc-40 k12", DenseNetConfig::bc_cifar(40, 12).unwrap(), 2, 16, 16),
    ]
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (f64::from(x) - f64::from(y)).powi(2);
        n += f64::from(y).powi(2);
    }
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

#[test]
fn baseline_matches_the_efficient_path() {
    for (name, cfg, n, h, w) in cases() {
        let layout = ParamLayout::new(&cfg);
        let (params, running) = layout.init_random(7);
        let (images, labels) = random_batch(&cfg, n, h, w, 7);
        let images = nchw_to_nhwc(&images, n, cfg.in_channels, h, w);
        let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

        let sgd = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
        let mut eff =
            Network::new(CpuBackend::new(), &cfg, n, h, w, Options::train().with_optimizer()).unwrap();
        eff.set_params(&params, &running).unwrap();
        eff.set_batch(&images, &labels).unwrap();
        eff.forward().unwrap();
        eff.backward().unwrap();

        let mut baseline = BaselineNetwork::new(CpuBackend::new(), &cfg, n, h, w, true).unwrap();
        baseline.set_params(&params, &running).unwrap();
        baseline.set_batch(&images, &labels).unwrap();
        baseline.forward().unwrap();
        baseline.backward().unwrap();

        let mut errors = vec![
            ("loss".to_string(), rel(&[baseline.loss().unwrap()], &[eff.loss().unwrap()])),
            ("logits".to_string(), rel(&baseline.logits().unwrap(), &eff.logits().unwrap())),
            ("running".to_string(), rel(&baseline.running().unwrap(), &eff.running().unwrap())),
        ];
        let (ga, gb) = (baseline.grads().unwrap(), eff.grads().unwrap());
        for group in layout.groups() {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for t in layout.tensors.iter().filter(|t| t.group == group) {
                a.extend_from_slice(&ga[t.offset..t.offset + t.len]);
                b.extend_from_slice(&gb[t.offset..t.offset + t.len]);
            }
            errors.push((format!("grad {group}"), rel(&a, &b)));
        }
        // The SGD step (Nesterov, weight decay) from the same gradients.
        eff.sgd_step(sgd).unwrap();
        baseline.sgd_step(sgd).unwrap();
        errors
            .push(("parameters after SGD".into(), rel(&baseline.params().unwrap(), &eff.params().unwrap())));
        for (what, e) in &errors {
            println!("{name}: {what} {e:.2e}");
            let tol = if what.starts_with("grad") { GRAD_TOL } else { FORWARD_TOL };
            assert!(*e <= tol, "{name}: {what} differs by {e:.2e} (tolerance {tol:e})");
        }
    }
}

/// Measured peak (total and per category at the peak) of one baseline step from construction.
fn measured_baseline_step(
    cfg: &DenseNetConfig,
    n: usize,
    h: usize,
    w: usize,
    optimizer: bool,
) -> (usize, Vec<(Category, usize)>, usize) {
    let backend = CpuBackend::new();
    let layout = ParamLayout::new(cfg);
    let mut net = BaselineNetwork::new(backend.clone(), cfg, n, h, w, optimizer).unwrap();
    let persistent = backend.memory().current;
    assert_eq!(net.plan().persistent_bytes, persistent);
    net.set_params(&layout.init(1), &layout.init_running()).unwrap();
    let (images, labels) = random_batch(cfg, n, h, w, 1);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    net.set_batch(&nchw_to_nhwc(&images, n, cfg.in_channels, h, w), &labels).unwrap();
    net.forward().unwrap();
    net.backward().unwrap();
    if optimizer {
        let hp = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
        net.sgd_step(hp).unwrap();
    }
    assert_eq!(backend.memory().current, persistent, "backward frees everything the forward stored");
    let m = backend.memory();
    let by = Category::ALL.iter().map(|&c| (c, m.peak_category(c))).filter(|(_, b)| *b > 0).collect();
    (m.peak, by, persistent)
}

#[test]
fn baseline_peak_equals_its_plan() {
    for (name, cfg, n, h, w) in cases() {
        for optimizer in [false, true] {
            let plan = BaselinePlan::new(&cfg, n, h, w, Dtype::F32, optimizer).unwrap();
            let (peak, by, persistent) = measured_baseline_step(&cfg, n, h, w, optimizer);
            println!("{name} (optimizer {optimizer}): planned {} measured {peak}", plan.peak_bytes);
            assert_eq!(plan.peak_bytes, peak, "{name}");
            assert_eq!(plan.persistent_bytes, persistent, "{name}");
            let planned: Vec<(Category, usize)> = plan.peak_by_category.clone().into_iter().collect();
            assert_eq!(planned, by, "{name}");
        }
    }
}

#[test]
fn backward_needs_a_forward_and_inputs_are_checked() {
    let cfg = small_cifar();
    let mut net = BaselineNetwork::new(CpuBackend::new(), &cfg, 3, 9, 7, false).unwrap();
    assert!(net.backward().is_err());
    assert!(net.set_batch(&[0.0; 4], &[0, 1, 2]).is_err());
    assert!(net.set_batch(&vec![0.0; 3 * 9 * 7 * 3], &[0, 1, 10]).is_err());
    assert!(net.set_params(&[0.0; 2], &[]).is_err());
    let hp = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 0.0, nesterov: false };
    assert!(net.sgd_step(hp).is_err(), "built without optimiser state");
    assert!(BaselineNetwork::new(CpuBackend::new(), &cfg, 0, 9, 7, false).is_err());
    assert!(BaselineNetwork::new(CpuBackend::new(), &cfg, 1, 3, 3, false).is_err());
}
