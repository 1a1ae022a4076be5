//! Properties of the efficient path beyond numerical agreement: all memory is allocated up
//! front (a step allocates nothing), eval mode allocates no gradient buffers, and results are
//! bit-for-bit reproducible.

use densenet::backend::Category;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::prelude::*;
use densenet::config::DenseNetConfig;
use densenet::efficient::{Network, Options};
use densenet::params::ParamLayout;
use densenet::verify::{nchw_to_nhwc, random_batch};

fn small() -> DenseNetConfig {
    let mut c = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
    c.blocks = vec![3, 2, 2];
    c.growth = 5;
    c
}

fn step(cfg: &DenseNetConfig, backend: &CpuBackend, seed: u64) -> (Vec<f32>, f32) {
    let (n, h, w) = (3, 9, 7);
    let layout = ParamLayout::new(cfg);
    let (params, running) = layout.init_random(seed);
    let (images, labels) = random_batch(cfg, n, h, w, seed);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let mut net = Network::new(backend.clone(), cfg, n, h, w, Options::train()).unwrap();
    net.set_params(&params, &running).unwrap();
    net.set_batch(&nchw_to_nhwc(&images, n, 3, h, w), &labels).unwrap();
    let allocated = backend.memory().current;
    backend.reset_peak();
    net.forward().unwrap();
    net.backward().unwrap();
    assert_eq!(backend.memory().peak, allocated, "a training step must not allocate");
    (net.grads().unwrap(), net.loss().unwrap())
}

#[test]
fn training_step_allocates_nothing_and_is_deterministic() {
    let cfg = small();
    let backend = CpuBackend::new();
    let (g1, l1) = step(&cfg, &backend, 3);
    let (g2, l2) = step(&cfg, &backend, 3);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert!(g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(g1.iter().any(|&g| g != 0.0));
    // Single-threaded execution gives the same bits.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (g3, l3) = pool.install(|| step(&cfg, &backend, 3));
    assert_eq!(l1.to_bits(), l3.to_bits());
    assert!(g1.iter().zip(&g3).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn eval_mode_has_no_gradient_buffers() {
    let cfg = small();
    let backend = CpuBackend::new();
    let net = Network::new(backend.clone(), &cfg, 3, 9, 7, Options::eval()).unwrap();
    let m = backend.memory();
    assert_eq!(m.category(Category::GradientBuffers), 0);
    assert!(m.category(Category::FeatureStorage) > 0);
    assert!(net.grads().is_err());
    drop(net);
    let train = Network::new(backend.clone(), &cfg, 3, 9, 7, Options::train()).unwrap();
    assert!(backend.memory().category(Category::GradientBuffers) > 0);
    assert!(backend.memory().current > m.current);
    drop(train);
    assert_eq!(backend.memory().current, 0, "dropping a network frees everything");
}

#[test]
fn wrong_inputs_are_errors() {
    let cfg = small();
    let mut net = Network::new(CpuBackend::new(), &cfg, 3, 9, 7, Options::train()).unwrap();
    assert!(net.set_batch(&[0.0; 5], &[0, 1, 2]).is_err());
    let images = vec![0.5; 3 * 9 * 7 * 3];
    assert!(net.set_batch(&images, &[0, 1]).is_err());
    assert!(net.set_batch(&images, &[0, 1, 10]).is_err());
    assert!(net.set_params(&[1.0; 3], &[]).is_err());
    assert!(Network::new(CpuBackend::new(), &cfg, 0, 9, 7, Options::train()).is_err());
    assert!(Network::new(CpuBackend::new(), &cfg, 1, 3, 3, Options::train()).is_err());
}

#[test]
fn eval_forward_of_a_training_network_matches_an_eval_network() {
    let cfg = small();
    let (n, h, w) = (3, 9, 7);
    let layout = ParamLayout::new(&cfg);
    let (params, running) = layout.init_random(5);
    let (images, labels) = random_batch(&cfg, n, h, w, 5);
    let images = nchw_to_nhwc(&images, n, 3, h, w);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();

    let mut eval = Network::new(CpuBackend::new(), &cfg, n, h, w, Options::eval()).unwrap();
    eval.set_params(&params, &running).unwrap();
    eval.set_batch(&images, &[]).unwrap();
    eval.forward().unwrap();

    let mut train = Network::new(CpuBackend::new(), &cfg, n, h, w, Options::train()).unwrap();
    train.set_params(&params, &running).unwrap();
    train.set_batch(&images, &labels).unwrap();
    train.forward_eval().unwrap();
    assert_eq!(train.logits().unwrap(), eval.logits().unwrap());
    assert_eq!(train.running().unwrap(), running, "an eval pass leaves running statistics alone");
    assert!(train.backward().is_err(), "backward needs a training forward");
    train.forward().unwrap();
    assert_ne!(train.running().unwrap(), running);
    train.backward().unwrap();
    assert!(train.backward().is_err(), "one backward per forward");
}

#[test]
fn sgd_step_applies_nesterov_momentum_and_weight_decay() {
    let cfg = small();
    let (n, h, w) = (3, 9, 7);
    let layout = ParamLayout::new(&cfg);
    let (params, running) = layout.init_random(8);
    let (images, labels) = random_batch(&cfg, n, h, w, 8);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let mut net = Network::new(CpuBackend::new(), &cfg, n, h, w, Options::train()).unwrap();
    let hp = densenet::backend::SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
    assert!(net.sgd_step(hp).is_err(), "no optimiser state was asked for");
    let mut net = Network::new(CpuBackend::new(), &cfg, n, h, w, Options::train().with_optimizer()).unwrap();
    net.set_params(&params, &running).unwrap();
    net.set_batch(&nchw_to_nhwc(&images, n, 3, h, w), &labels).unwrap();
    net.forward().unwrap();
    net.backward().unwrap();
    let grads = net.grads().unwrap();
    net.sgd_step(hp).unwrap();
    let after = net.params().unwrap();
    let velocity = net.velocity().unwrap();
    for i in (0..params.len()).step_by(97) {
        // First step from zero momentum: v = d, p -= lr·(d + μ·v).
        let d = grads[i] + hp.weight_decay * params[i];
        assert!((velocity[i] - d).abs() <= 1e-7 * d.abs().max(1.0));
        let expected = params[i] - hp.lr * (d + hp.momentum * d);
        assert!((after[i] - expected).abs() <= 1e-6 * expected.abs().max(1.0), "param {i}");
    }
    net.set_velocity(&vec![0.5; params.len()]).unwrap();
    assert_eq!(net.velocity().unwrap()[3], 0.5);
}
