//! A NaN never hides: ReLU, max-pool and every fused op pass NaN on as PyTorch does, so a
//! single NaN in any parameter reaches the loss of a training step and the logits of an eval
//! pass (with ReLU as `max(x, 0)` it would have become 0 after the next batch norm, and
//! training would go on with a finite loss). Checked on the cpu backend (in f32 and with bf16
//! storage) and, with feature `cuda-emu`, on the emulated kernels, for both stems.

use densenet::backend::Backend;
use densenet::backend::cpu::CpuBackend;
use densenet::config::{DenseNetConfig, Stem};
use densenet::efficient::{Network, Options};
use densenet::params::ParamLayout;
use densenet::verify::{nchw_to_nhwc, random_batch};

fn config(stem: Stem) -> DenseNetConfig {
    let mut c = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
    c.blocks = vec![2, 2];
    c.growth = 5;
    c.stem = stem;
    c
}

/// Loss of a training step and the eval logits with element `at` of the parameters NaN.
fn with_nan<B: Backend + Clone>(backend: &B, cfg: &DenseNetConfig, at: Option<usize>) -> (f32, Vec<f32>) {
    let (n, h, w) = (3, 13, 11);
    let layout = ParamLayout::new(cfg);
    let (mut params, running) = layout.init_random(7);
    if let Some(i) = at {
        params[i] = f32::NAN;
    }
    let (images, labels) = random_batch(cfg, n, h, w, 7);
    let images = nchw_to_nhwc(&images, n, 3, h, w);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let mut net = Network::new(backend.clone(), cfg, n, h, w, Options::train()).unwrap();
    net.set_params(&params, &running).unwrap();
    net.set_batch(&images, &labels).unwrap();
    net.forward().unwrap();
    let loss = net.loss().unwrap();
    net.forward_eval().unwrap();
    (loss, net.logits().unwrap())
}

/// Every parameter tensor of both stems' networks, one NaN at a time (its middle element).
fn every_parameter_reaches_the_loss<B: Backend + Clone>(backend: &B) {
    for stem in [Stem::Cifar, Stem::Imagenet] {
        let cfg = config(stem);
        let (loss, logits) = with_nan(backend, &cfg, None);
        assert!(loss.is_finite() && logits.iter().all(|v| v.is_finite()), "{stem:?}: finite without a NaN");
        let layout = ParamLayout::new(&cfg);
        for t in &layout.tensors {
            let (loss, logits) = with_nan(backend, &cfg, Some(t.offset + t.len / 2));
            assert!(loss.is_nan(), "{stem:?}: a NaN in {} gives the loss {loss}", t.name);
            assert!(
                logits.iter().any(|v| v.is_nan()),
                "{stem:?}: a NaN in {} gives finite eval logits",
                t.name
            );
        }
        println!("{stem:?} stem: a NaN in any of {} tensors reaches the loss", layout.tensors.len());
    }
}

#[test]
fn nan_in_any_parameter_reaches_the_loss_on_the_cpu_backend() {
    every_parameter_reaches_the_loss(&CpuBackend::new());
}

/// bf16 storage rounds every stored activation: a NaN must survive that rounding too.
#[test]
fn nan_in_any_parameter_reaches_the_loss_with_bf16_storage() {
    every_parameter_reaches_the_loss(&CpuBackend::new().with_precision(densenet::Precision::Bf16));
}

#[cfg(feature = "cuda-emu")]
#[test]
fn nan_in_any_parameter_reaches_the_loss_on_the_emulated_kernels() {
    every_parameter_reaches_the_loss(&densenet::backend::cuda::EmuBackend::new().unwrap());
}

#[test]
fn relu_and_max_pool_pass_nan_on() {
    use densenet::backend::{max_pool_takes, relu};
    assert!(relu(f32::NAN).is_nan());
    assert_eq!((relu(-2.0), relu(0.0), relu(3.5)), (0.0, 0.0, 3.5));
    assert!(max_pool_takes(f32::NAN, 1.0) && max_pool_takes(2.0, 1.0) && !max_pool_takes(1.0, 1.0));
    assert!(!max_pool_takes(1.0, f32::NAN) && !max_pool_takes(f32::NAN, f32::NAN), "a NaN maximum stays");
    let x = densenet::reference::ops::Tensor::from_vec(1, 1, 1, 3, vec![-1.0, f64::NAN, 2.0]);
    let y = densenet::reference::ops::relu_forward(&x);
    assert!(y.data[0] == 0.0 && y.data[1].is_nan() && y.data[2] == 2.0, "the f64 oracle too");
}
