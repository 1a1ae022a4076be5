//! Tests of the reference (the f64 oracle): forward definitions of the ops against direct formulas,
//! every op's backward against finite differences, the whole network's gradients (every
//! parameter and input element) against finite differences, running statistics and eval
//! mode against hand computations, and error cases.
//!
//! # Finite differences
//!
//! All checks use the fourth-order central stencil
//! `f'(x) ≈ (f(x−2h) − 8 f(x−h) + 8 f(x+h) − f(x+2h)) / (12 h)` with `h = 3e-5`.
//! Its truncation error is `h⁴ f⁽⁵⁾/30 ≈ 3e-20·f⁽⁵⁾` and its rounding error about
//! `1.5·δ/h ≈ 1.5e-11` for a loss evaluated to δ ≈ 3e-16, which is what is measured (max
//! element error ~1e-11 on the tiny networks). Measured alternatives on the same networks:
//! the two-point stencil reaches 5e-9 (h = 1e-6) to 1e-9 (h = 1e-5) relative per tensor on the
//! CIFAR nets but 5e-6 on the smallest-gradient tensor (`norm0.weight`, ‖g‖ ≈ 4e-5); the
//! four-point one with h = 1e-4 is more accurate still where smooth, but its ±2e-4 reach
//! crossed a ReLU kink in the 5×5 CIFAR net (one element off by 1e-3). A kink crossing
//! shows up as a gross error in one element, never as a silently small one.
//!
//! # Conditioning of the test networks
//!
//! A training-mode BN over two values per channel outputs `±γ + β` whatever its input (up to
//! O(ε) terms). With an ImageNet stem, 5×5 and 7×9 images leave the second block at 1×1, so
//! with batch 2 every BN of that block sees two values and every gradient upstream of it is
//! O(ε)-small (1e-7–1e-4) and curved on a √ε scale: the finite differences still agree to
//! ~1.5e-11 absolute on 5×5, but a *relative* criterion there measures the FD noise, not the
//! oracle. The ImageNet-stem checks therefore run those image sizes with batch 2 on a
//! one-block network and with batch 4 on the two-block one, plus a 13×15 image (last block
//! 2×2) with batch 2.

use super::ops::{self, BnCache, ConvShape, Tensor};
use super::*;
use crate::config::{Stem, conv_out};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const FD_STEP: f64 = 3e-5;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn normal_vec(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| StandardNormal.sample(rng)).collect()
}

fn normal_tensor(rng: &mut ChaCha8Rng, n: usize, c: usize, h: usize, w: usize) -> Tensor {
    Tensor::from_vec(n, c, h, w, normal_vec(rng, n * c * h * w))
}

/// Fourth-order central difference of `f` at `x` along coordinate `i`.
fn fd_at(f: &mut impl FnMut(&[f64]) -> f64, x: &mut [f64], i: usize) -> f64 {
    let x0 = x[i];
    let mut at = |d: f64, x: &mut [f64]| {
        x[i] = x0 + d;
        f(x)
    };
    let (m2, m1, p1, p2) = (at(-2.0 * FD_STEP, x), at(-FD_STEP, x), at(FD_STEP, x), at(2.0 * FD_STEP, x));
    x[i] = x0;
    (m2 - 8.0 * m1 + 8.0 * p1 - p2) / (12.0 * FD_STEP)
}

/// Finite-difference gradient of `f` at `x`, every coordinate.
fn fd_grad(mut f: impl FnMut(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len()).map(|i| fd_at(&mut f, &mut x, i)).collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// `‖fd − analytic‖ / ‖analytic‖`.
fn rel_err(fd: &[f64], analytic: &[f64]) -> f64 {
    assert_eq!(fd.len(), analytic.len());
    let diff: Vec<f64> = fd.iter().zip(analytic).map(|(a, b)| a - b).collect();
    let denom = norm(analytic);
    assert!(denom > 0.0, "analytic gradient is exactly zero: the check would be vacuous");
    norm(&diff) / denom
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Asserts an FD relative error for one op's gradient.
fn assert_close(what: &str, fd: &[f64], analytic: &[f64]) {
    let e = rel_err(fd, analytic);
    assert!(e < 1e-8, "{what}: relative error {e:e}");
}

// ---------------------------------------------------------------------------------------------
// Forward definitions
// ---------------------------------------------------------------------------------------------

/// Convolution straight from the definition, with explicit bounds checks.
fn conv_reference(x: &Tensor, w: &[f64], c_out: usize, s: ConvShape) -> Tensor {
    let k = s.kernel;
    let (oh, ow) = (conv_out(x.h, k, s.stride, s.pad), conv_out(x.w, k, s.stride, s.pad));
    let mut y = Tensor::zeros(x.n, c_out, oh, ow);
    for n in 0..x.n {
        for o in 0..c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0.0;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                                continue;
                            }
                            for i in 0..x.c {
                                acc += w[((o * k + ky) * k + kx) * x.c + i]
                                    * x.data[((n * x.c + i) * x.h + iy as usize) * x.w + ix as usize];
                            }
                        }
                    }
                    y.data[((n * c_out + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

const CONV_CASES: &[(usize, usize, usize, usize, usize)] = &[
    // (kernel, stride, pad, h, w)
    (1, 1, 0, 5, 7),
    (3, 1, 1, 5, 7),
    (3, 1, 1, 1, 1),
    (3, 1, 1, 2, 3),
    (7, 2, 3, 5, 5),
    (7, 2, 3, 9, 8),
    (3, 2, 0, 7, 6),
    (3, 1, 2, 4, 5),
    (5, 3, 1, 8, 9),
];

#[test]
fn conv_forward_matches_definition() {
    let mut r = rng(1);
    for &(k, s, p, h, w) in CONV_CASES {
        let shape = ConvShape { kernel: k, stride: s, pad: p };
        let x = normal_tensor(&mut r, 2, 3, h, w);
        let wt = normal_vec(&mut r, 4 * k * k * 3);
        let y = ops::conv2d_forward(&x, &wt, 4, shape);
        let yr = conv_reference(&x, &wt, 4, shape);
        assert_eq!((y.n, y.c, y.h, y.w), (yr.n, yr.c, yr.h, yr.w));
        let diff = y.data.iter().zip(&yr.data).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-12, "conv {shape:?} on {h}x{w}: max diff {diff}");
    }
}

#[test]
fn pool_forwards_match_definition() {
    let mut r = rng(2);
    let x = normal_tensor(&mut r, 2, 3, 5, 7);
    // Max pool 3×3/2 pad 1 by definition, with explicit −∞ padding.
    let (y, arg) = ops::maxpool3s2p1_forward(&x);
    assert_eq!((y.h, y.w), (3, 4));
    for n in 0..2 {
        for c in 0..3 {
            for oy in 0..3 {
                for ox in 0..4 {
                    let mut best = f64::NEG_INFINITY;
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
                            if iy >= 0 && ix >= 0 && iy < 5 && ix < 7 {
                                best = best.max(x.plane(n, c)[iy as usize * 7 + ix as usize]);
                            }
                        }
                    }
                    assert_eq!(y.plane(n, c)[oy * 4 + ox], best);
                    assert_eq!(x.plane(n, c)[arg[(n * 3 + c) * 12 + oy * 4 + ox]], best);
                }
            }
        }
    }
    // Ties: the first maximum in row-major window order wins (PyTorch).
    let t = Tensor::from_vec(1, 1, 3, 3, vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let (y, arg) = ops::maxpool3s2p1_forward(&t);
    assert_eq!((y.h, y.w), (2, 2));
    assert_eq!(y.data, vec![1.0; 4]);
    assert_eq!(arg, vec![1, 1, 3, 4]);
    // Average pool drops the odd last row/column.
    let a = ops::avgpool2_forward(&x);
    assert_eq!((a.h, a.w), (2, 3));
    let p = x.plane(1, 2);
    let expect = (p[2 * 7 + 2] + p[2 * 7 + 3] + p[3 * 7 + 2] + p[3 * 7 + 3]) / 4.0;
    assert!((a.plane(1, 2)[3 + 1] - expect).abs() < 1e-15);
}

#[test]
fn batchnorm_forward_normalises() {
    let mut r = rng(3);
    let x = normal_tensor(&mut r, 3, 2, 3, 5);
    let gamma = [1.5, -0.7];
    let beta = [0.2, -0.4];
    let (y, cache) = ops::batchnorm_train_forward(&x, &gamma, &beta);
    for c in 0..2 {
        let vals: Vec<f64> = (0..3).flat_map(|n| y.plane(n, c).to_vec()).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let v = vals.iter().map(|a| (a - m).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!((m - beta[c]).abs() < 1e-12);
        let want = gamma[c] * gamma[c] * cache.var[c] / (cache.var[c] + ops::BN_EPS);
        assert!((v - want).abs() < 1e-12);
    }
}

// ---------------------------------------------------------------------------------------------
// Per-op finite differences: L = Σ r ⊙ op(x) for a random r, so dL/dop = r.
// ---------------------------------------------------------------------------------------------

#[test]
fn conv_backward_matches_fd() {
    let mut r = rng(10);
    for &(k, s, p, h, w) in CONV_CASES {
        let shape = ConvShape { kernel: k, stride: s, pad: p };
        let (n, ci, co) = (2, 3, 5);
        let x = normal_tensor(&mut r, n, ci, h, w);
        let wt = normal_vec(&mut r, co * k * k * ci);
        let y = ops::conv2d_forward(&x, &wt, co, shape);
        let dy = normal_tensor(&mut r, n, co, y.h, y.w);
        let dx = ops::conv2d_backward_data(&dy, &wt, ci, h, w, shape);
        let dw = ops::conv2d_backward_weight(&x, &dy, shape);
        let fx = fd_grad(
            |v| {
                dot(
                    &ops::conv2d_forward(&Tensor::from_vec(n, ci, h, w, v.to_vec()), &wt, co, shape).data,
                    &dy.data,
                )
            },
            &x.data,
        );
        let fw = fd_grad(|v| dot(&ops::conv2d_forward(&x, v, co, shape).data, &dy.data), &wt);
        assert_close(&format!("conv {shape:?} {h}x{w} dx"), &fx, &dx.data);
        assert_close(&format!("conv {shape:?} {h}x{w} dw"), &fw, &dw);
    }
}

#[test]
fn batchnorm_backward_matches_fd() {
    let mut r = rng(11);
    let (n, c, h, w) = (3, 4, 3, 5);
    let x = normal_tensor(&mut r, n, c, h, w);
    let gamma = [1.2, -0.8, 0.5, 2.0];
    let beta = [0.1, -0.3, 0.0, 0.7];
    let dy = normal_tensor(&mut r, n, c, h, w);
    let (_, cache) = ops::batchnorm_train_forward(&x, &gamma, &beta);
    let (dx, dg, db) = ops::batchnorm_backward(&dy, &cache, &gamma);
    let loss =
        |x: &Tensor, g: &[f64], b: &[f64]| dot(&ops::batchnorm_train_forward(x, g, b).0.data, &dy.data);
    let fx = fd_grad(|v| loss(&Tensor::from_vec(n, c, h, w, v.to_vec()), &gamma, &beta), &x.data);
    let fg = fd_grad(|v| loss(&x, v, &beta), &gamma);
    let fb = fd_grad(|v| loss(&x, &gamma, v), &beta);
    assert_close("bn dx", &fx, &dx.data);
    assert_close("bn dgamma", &fg, &dg);
    assert_close("bn dbeta", &fb, &db);
}

#[test]
fn relu_backward_matches_fd() {
    let mut r = rng(12);
    let x = normal_tensor(&mut r, 2, 3, 3, 5);
    let dy = normal_tensor(&mut r, 2, 3, 3, 5);
    let y = ops::relu_forward(&x);
    assert!(y.data.iter().zip(&x.data).all(|(a, b)| *a == b.max(0.0)));
    let dx = ops::relu_backward(&dy, &ops::relu_mask(&x));
    let f = fd_grad(
        |v| dot(&ops::relu_forward(&Tensor::from_vec(2, 3, 3, 5, v.to_vec())).data, &dy.data),
        &x.data,
    );
    assert_close("relu dx", &f, &dx.data);
}

#[test]
fn pool_backwards_match_fd() {
    let mut r = rng(13);
    for (h, w) in [(5, 7), (4, 6), (3, 3), (1, 2), (2, 1)] {
        let x = normal_tensor(&mut r, 2, 3, h, w);
        let t = |v: &[f64]| Tensor::from_vec(2, 3, h, w, v.to_vec());

        let (y, arg) = ops::maxpool3s2p1_forward(&x);
        let dy = normal_tensor(&mut r, 2, 3, y.h, y.w);
        let dx = ops::maxpool3s2p1_backward(&dy, &arg, h, w);
        let f = fd_grad(|v| dot(&ops::maxpool3s2p1_forward(&t(v)).0.data, &dy.data), &x.data);
        assert_close(&format!("maxpool {h}x{w}"), &f, &dx.data);

        if h >= 2 && w >= 2 {
            let y = ops::avgpool2_forward(&x);
            let dy = normal_tensor(&mut r, 2, 3, y.h, y.w);
            let dx = ops::avgpool2_backward(&dy, h, w);
            let f = fd_grad(|v| dot(&ops::avgpool2_forward(&t(v)).data, &dy.data), &x.data);
            assert_close(&format!("avgpool {h}x{w}"), &f, &dx.data);
        }

        let dy = normal_vec(&mut r, 2 * 3);
        let dx = ops::global_avg_pool_backward(&dy, 2, 3, h, w);
        let f = fd_grad(|v| dot(&ops::global_avg_pool_forward(&t(v)), &dy), &x.data);
        assert_close(&format!("global pool {h}x{w}"), &f, &dx.data);
    }
}

#[test]
fn linear_and_loss_backward_match_fd() {
    let mut r = rng(14);
    let (n, inp, out) = (3, 7, 5);
    let x = normal_vec(&mut r, n * inp);
    let w = normal_vec(&mut r, out * inp);
    let b = normal_vec(&mut r, out);
    let dy = normal_vec(&mut r, n * out);
    let (dx, dw, db) = ops::linear_backward(&dy, &x, n, inp, &w, out);
    assert_close("linear dx", &fd_grad(|v| dot(&ops::linear_forward(v, n, inp, &w, &b, out), &dy), &x), &dx);
    assert_close("linear dw", &fd_grad(|v| dot(&ops::linear_forward(&x, n, inp, v, &b, out), &dy), &w), &dw);
    assert_close("linear db", &fd_grad(|v| dot(&ops::linear_forward(&x, n, inp, &w, v, out), &dy), &b), &db);

    let labels = [4, 0, 2];
    let z: Vec<f64> = normal_vec(&mut r, n * out).iter().map(|v| 3.0 * v).collect();
    let dz = ops::softmax_xent_backward(&z, n, out, &labels);
    assert_close("xent", &fd_grad(|v| ops::softmax_xent_forward(v, n, out, &labels), &z), &dz);
    // Stable for huge logits, and equal to the textbook formula on small ones.
    let big = [1000.0, 0.0, -1000.0];
    assert!((ops::softmax_xent_forward(&big, 1, 3, &[0])).abs() < 1e-12);
    let small = [0.5, -0.25, 1.0];
    let want = (small.iter().map(|v: &f64| v.exp()).sum::<f64>()).ln() - small[1];
    assert!((ops::softmax_xent_forward(&small, 1, 3, &[1]) - want).abs() < 1e-14);
}

#[test]
fn concat_split_are_adjoint() {
    let mut r = rng(15);
    let a = normal_tensor(&mut r, 2, 3, 3, 5);
    let b = normal_tensor(&mut r, 2, 1, 3, 5);
    let c = normal_tensor(&mut r, 2, 2, 3, 5);
    let cat = ops::concat_channels(&[&a, &b, &c]);
    assert_eq!(cat.c, 6);
    assert_eq!(cat.plane(1, 3), b.plane(1, 0));
    let parts = ops::split_channels(&cat, &[3, 1, 2]);
    assert_eq!(parts, vec![a.clone(), b.clone(), c.clone()]);
    // Backward of concat w.r.t. each part = the matching split of dL/dcat.
    let dcat = normal_tensor(&mut r, 2, 6, 3, 5);
    let grads = ops::split_channels(&dcat, &[3, 1, 2]);
    let fa = fd_grad(
        |v| dot(&ops::concat_channels(&[&Tensor::from_vec(2, 3, 3, 5, v.to_vec()), &b, &c]).data, &dcat.data),
        &a.data,
    );
    let fb = fd_grad(
        |v| dot(&ops::concat_channels(&[&a, &Tensor::from_vec(2, 1, 3, 5, v.to_vec()), &c]).data, &dcat.data),
        &b.data,
    );
    assert_close("concat a", &fa, &grads[0].data);
    assert_close("concat b", &fb, &grads[1].data);
}

#[test]
fn running_update_matches_hand_computation() {
    // One channel with values 1, 2, 3, 6 (batch 2, 1×2 images): mean 3, biased var 3.5,
    // unbiased var 14/3.
    let x = Tensor::from_vec(2, 1, 1, 2, vec![1.0, 2.0, 3.0, 6.0]);
    let (_, cache): (Tensor, BnCache) = ops::batchnorm_train_forward(&x, &[1.0], &[0.0]);
    assert!((cache.mean[0] - 3.0).abs() < 1e-15 && (cache.var[0] - 3.5).abs() < 1e-15);
    let (mut m, mut v) = ([0.5], [2.0]);
    ops::batchnorm_update_running(&mut m, &mut v, &cache);
    assert!((m[0] - (0.9 * 0.5 + 0.1 * 3.0)).abs() < 1e-15);
    assert!((v[0] - (0.9 * 2.0 + 0.1 * 14.0 / 3.0)).abs() < 1e-15);
}

// ---------------------------------------------------------------------------------------------
// Whole network
// ---------------------------------------------------------------------------------------------

fn tiny(stem: Stem) -> DenseNetConfig {
    DenseNetConfig {
        growth: 3,
        blocks: vec![2, 2],
        init_features: 4,
        bn_size: 2,
        compression: 0.5,
        stem,
        classes: 3,
        in_channels: 3,
    }
}

struct Problem {
    cfg: DenseNetConfig,
    layout: ParamLayout,
    params: Vec<f64>,
    running: Vec<f64>,
    images: Vec<f64>,
    labels: Vec<usize>,
    n: usize,
    h: usize,
    w: usize,
}

impl Problem {
    fn new(cfg: DenseNetConfig, n: usize, h: usize, w: usize, seed: u64) -> Self {
        let layout = ParamLayout::new(&cfg);
        let (p, r) = layout.init_random(seed);
        let mut g = rng(seed + 1000);
        let images = normal_vec(&mut g, n * cfg.in_channels * h * w);
        let labels = (0..n).map(|_| g.random_range(0..cfg.classes)).collect();
        Problem {
            params: p.iter().map(|&v| v as f64).collect(),
            running: r.iter().map(|&v| v as f64).collect(),
            cfg,
            layout,
            images,
            labels,
            n,
            h,
            w,
        }
    }

    fn batch(&self) -> Batch<'_> {
        Batch { images: &self.images, labels: &self.labels, n: self.n, h: self.h, w: self.w }
    }
}

/// Checks every parameter-gradient element and every input-gradient element of
/// `train_step` against finite differences of `train_loss`; returns the largest relative
/// error over parameter tensors and the input gradient, printing each.
fn network_fd(pb: &Problem, label: &str) -> f64 {
    let out = train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
    let loss_p = |p: &[f64]| train_loss(&pb.cfg, &pb.layout, p, &pb.running, &pb.batch()).unwrap();
    assert!((loss_p(&pb.params) - out.loss).abs() < 1e-14);

    let fd_params = fd_grad(loss_p, &pb.params);
    let mut worst = (0.0f64, String::new());
    for t in &pb.layout.tensors {
        let range = t.offset..t.offset + t.len;
        let e = rel_err(&fd_params[range.clone()], &out.grads[range.clone()]);
        if e > worst.0 {
            worst = (e, t.name.clone());
        }
        assert!(
            e < 1e-6,
            "{label}: {} relative error {e:e} (|grad| = {:e})",
            t.name,
            norm(&out.grads[range])
        );
    }
    let fd_input = fd_grad(
        |x| {
            let b = Batch { images: x, labels: &pb.labels, n: pb.n, h: pb.h, w: pb.w };
            train_loss(&pb.cfg, &pb.layout, &pb.params, &pb.running, &b).unwrap()
        },
        &pb.images,
    );
    let e_in = rel_err(&fd_input, &out.input_grad);
    assert!(e_in < 1e-6, "{label}: input gradient relative error {e_in:e}");
    println!(
        "{label}: {} params, {} inputs; max param-tensor rel err {:.2e} ({}), input rel err {e_in:.2e}, \
         |input grad| {:.2e}",
        pb.params.len(),
        pb.images.len(),
        worst.0,
        worst.1,
        norm(&out.input_grad)
    );
    worst.0.max(e_in)
}

#[test]
fn network_gradients_match_fd_cifar_stem() {
    network_fd(&Problem::new(tiny(Stem::Cifar), 2, 5, 5, 21), "cifar 2x5x5");
    network_fd(&Problem::new(tiny(Stem::Cifar), 2, 7, 9, 22), "cifar 2x7x9");
}

#[test]
fn network_gradients_match_fd_imagenet_stem() {
    // See "Conditioning of the test networks" above for why not batch 2 with two blocks.
    let one_block = DenseNetConfig { blocks: vec![2], ..tiny(Stem::Imagenet) };
    network_fd(&Problem::new(one_block.clone(), 2, 5, 5, 23), "imagenet 1 block 2x5x5");
    network_fd(&Problem::new(one_block, 2, 7, 9, 24), "imagenet 1 block 2x7x9");
    network_fd(&Problem::new(tiny(Stem::Imagenet), 4, 5, 5, 23), "imagenet 4x5x5");
    network_fd(&Problem::new(tiny(Stem::Imagenet), 4, 7, 9, 24), "imagenet 4x7x9");
    // The last block is 2×2 here, so batch 2 gives every BN at least 8 values.
    network_fd(&Problem::new(tiny(Stem::Imagenet), 2, 13, 15, 25), "imagenet 2x13x15");
}

#[test]
fn network_gradients_match_fd_odd_shapes() {
    // Three blocks, odd channel counts through the transitions (θ = 0.5 on odd c), one
    // input channel, batch 3.
    let cfg = DenseNetConfig {
        growth: 2,
        blocks: vec![1, 2, 1],
        init_features: 3,
        bn_size: 3,
        compression: 0.5,
        stem: Stem::Cifar,
        classes: 4,
        in_channels: 1,
    };
    network_fd(&Problem::new(cfg, 3, 9, 7, 26), "cifar 3 blocks 3x9x7");
}

#[test]
fn train_step_updates_running_statistics() {
    // CIFAR stem: the first BN (block 1, layer 1, norm1) sees the stem conv output, which is
    // recomputed here from the definition.
    let pb = Problem::new(tiny(Stem::Cifar), 2, 5, 5, 31);
    let out = train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
    let x = Tensor::from_vec(2, 3, 5, 5, pb.images.clone());
    let w0 = &pb.params[pb.layout.stem.conv..pb.layout.stem.conv + 4 * 9 * 3];
    let s = conv_reference(&x, w0, 4, ConvShape { kernel: 3, stride: 1, pad: 1 });
    let bn = pb.layout.blocks[0][0].norm1;
    for c in 0..4 {
        let vals: Vec<f64> = (0..2).flat_map(|n| s.plane(n, c).to_vec()).collect();
        let m = vals.iter().sum::<f64>() / 50.0;
        let unbiased = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 49.0;
        let want_m = 0.9 * pb.running[bn.running_mean + c] + 0.1 * m;
        let want_v = 0.9 * pb.running[bn.running_var + c] + 0.1 * unbiased;
        assert!((out.running[bn.running_mean + c] - want_m).abs() < 1e-12);
        assert!((out.running[bn.running_var + c] - want_v).abs() < 1e-12);
    }
    // Every BN layer's statistics were updated (no running value left untouched).
    assert!(out.running.iter().zip(&pb.running).all(|(a, b)| a != b));
}

#[test]
fn eval_with_batch_statistics_reproduces_training_forward() {
    // Recover each BN's batch mean and biased variance from the running-statistics update
    // (r' = 0.9 r + 0.1 s), install them as running statistics, and evaluate: eval mode then
    // normalises exactly as training mode did, so the logits must agree. With the original
    // running statistics they must not.
    for (stem, h, w) in [(Stem::Cifar, 7, 9), (Stem::Imagenet, 13, 15)] {
        let pb = Problem::new(tiny(stem), 2, h, w, 41);
        let out = train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
        let geo = pb.cfg.geometry(h, w).unwrap();
        let mut stats = pb.running.clone();
        // Values per channel seen by each BN, in `norms` order.
        let (ch, cw) = geo.stem_conv;
        let mut counts = Vec::new();
        if stem == Stem::Imagenet {
            counts.push(2 * ch * cw);
        }
        for (b, bg) in geo.blocks.iter().enumerate() {
            let per_layer = 2 * bg.hw();
            counts.extend(std::iter::repeat_n(per_layer, 2 * bg.layers));
            if b + 1 < geo.blocks.len() {
                counts.push(per_layer); // transition norm
            }
        }
        counts.push(2 * geo.last().hw()); // norm5
        assert_eq!(counts.len(), pb.layout.norms.len());
        for ((_, bn), &m) in pb.layout.norms.iter().zip(&counts) {
            for c in 0..bn.channels {
                let (im, iv) = (bn.running_mean + c, bn.running_var + c);
                stats[im] = (out.running[im] - 0.9 * pb.running[im]) / 0.1;
                let unbiased = (out.running[iv] - 0.9 * pb.running[iv]) / 0.1;
                stats[iv] = unbiased * (m - 1) as f64 / m as f64;
            }
        }
        let eval = eval_logits(&pb.cfg, &pb.layout, &pb.params, &stats, &pb.batch()).unwrap();
        let diff = eval.iter().zip(&out.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-9, "{stem:?}: eval with batch stats differs from training by {diff}");
        let eval0 = eval_logits(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
        let diff0 = eval0.iter().zip(&out.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff0 > 1e-3, "{stem:?}: eval ignores the running statistics");
    }
}

#[test]
fn eval_matches_hand_computation() {
    // Smallest network: 1-channel 3×3 image, stem conv 1→1, one dense layer with growth 1 and
    // bottleneck 1, 2 classes. Eval mode, batch of 1, computed by hand below.
    let cfg = DenseNetConfig {
        growth: 1,
        blocks: vec![1],
        init_features: 1,
        bn_size: 1,
        compression: 0.5,
        stem: Stem::Cifar,
        classes: 2,
        in_channels: 1,
    };
    let layout = ParamLayout::new(&cfg);
    let (p32, r32) = layout.init_random(51);
    let params: Vec<f64> = p32.iter().map(|&v| v as f64).collect();
    let running: Vec<f64> = r32.iter().map(|&v| v as f64).collect();
    let mut g = rng(51);
    let img: Vec<f64> = normal_vec(&mut g, 9);
    let logits = eval_logits(
        &cfg,
        &layout,
        &params,
        &running,
        &Batch { images: &img, labels: &[1], n: 1, h: 3, w: 3 },
    )
    .unwrap();

    let p = |o: usize| params[o];
    let bn = |x: f64, l: &crate::params::BnLayout, c: usize| {
        let y = p(l.gamma + c) * (x - running[l.running_mean + c])
            / (running[l.running_var + c] + 1e-5).sqrt()
            + p(l.beta + c);
        y.max(0.0)
    };
    let conv3 = |x: &[f64; 9], w: &[f64]| -> [f64; 9] {
        let mut y = [0.0; 9];
        for oy in 0..3i32 {
            for ox in 0..3i32 {
                for ky in 0..3i32 {
                    for kx in 0..3i32 {
                        let (iy, ix) = (oy + ky - 1, ox + kx - 1);
                        if (0..3).contains(&iy) && (0..3).contains(&ix) {
                            y[(oy * 3 + ox) as usize] +=
                                w[(ky * 3 + kx) as usize] * x[(iy * 3 + ix) as usize];
                        }
                    }
                }
            }
        }
        y
    };
    let s = conv3(&img.clone().try_into().unwrap(), &params[layout.stem.conv..layout.stem.conv + 9]);
    let l = &layout.blocks[0][0];
    let mut z = [0.0; 9];
    for i in 0..9 {
        z[i] = bn(bn(s[i], &l.norm1, 0) * p(l.conv1), &l.norm2, 0);
    }
    let y = conv3(&z, &params[l.conv2..l.conv2 + 9]);
    let hl = &layout.head;
    let f0 = s.iter().map(|&v| bn(v, &hl.norm, 0)).sum::<f64>() / 9.0;
    let f1 = y.iter().map(|&v| bn(v, &hl.norm, 1)).sum::<f64>() / 9.0;
    for (o, &logit) in logits.iter().enumerate() {
        let want = p(hl.fc_bias + o) + p(hl.fc_weight + 2 * o) * f0 + p(hl.fc_weight + 2 * o + 1) * f1;
        assert!((logit - want).abs() < 1e-12, "logit {o}: {logit} vs {want}");
    }
    assert_eq!(logits.len(), 2);
}

#[test]
fn bad_inputs_are_errors() {
    let pb = Problem::new(tiny(Stem::Cifar), 2, 5, 5, 61);
    let (cfg, lay) = (&pb.cfg, &pb.layout);
    let ok = pb.batch();
    assert!(train_step(cfg, lay, &pb.params, &pb.running, &ok).is_ok());
    let is_shape = |r: Result<TrainOutput>| matches!(r, Err(Error::Shape(_)));
    let is_config = |r: Result<TrainOutput>| matches!(r, Err(Error::Config(_)));

    assert!(is_shape(train_step(cfg, lay, &pb.params[1..], &pb.running, &ok)));
    assert!(is_shape(train_step(cfg, lay, &pb.params, &pb.running[1..], &ok)));
    let short = Batch { images: &pb.images[1..], ..ok };
    assert!(is_shape(train_step(cfg, lay, &pb.params, &pb.running, &short)));
    let bad_label = Batch { labels: &[0, 3], ..ok };
    assert!(is_shape(train_step(cfg, lay, &pb.params, &pb.running, &bad_label)));
    assert!(matches!(eval_logits(cfg, lay, &pb.params, &pb.running, &bad_label), Err(Error::Shape(_))));
    let few_labels = Batch { labels: &[0], ..ok };
    assert!(is_shape(train_step(cfg, lay, &pb.params, &pb.running, &few_labels)));
    let empty = Batch { images: &[], labels: &[], n: 0, ..ok };
    assert!(is_config(train_step(cfg, lay, &pb.params, &pb.running, &empty)));
    assert!(matches!(eval_logits(cfg, lay, &pb.params, &pb.running, &empty), Err(Error::Config(_))));
    assert!(matches!(train_loss(cfg, lay, &pb.params, &pb.running, &empty), Err(Error::Config(_))));
    // Batch 1 with a 2×2 last block is fine for training; a 1×1 one is not (BN of one value),
    // but it is fine in eval mode.
    let one = Batch { images: &pb.images[..75], labels: &[0], n: 1, ..ok };
    assert!(train_step(cfg, lay, &pb.params, &pb.running, &one).is_ok());
    let tiny_img = vec![0.5; 3 * 3 * 3];
    let one_small = Batch { images: &tiny_img, labels: &[0], n: 1, h: 3, w: 3 };
    assert!(is_config(train_step(cfg, lay, &pb.params, &pb.running, &one_small)));
    assert!(eval_logits(cfg, lay, &pb.params, &pb.running, &one_small).is_ok());
    // Image too small: the second block would be empty.
    let img = vec![0.5; 2 * 3];
    let too_small = Batch { images: &img, labels: &[0, 1], n: 2, h: 1, w: 1 };
    assert!(is_config(train_step(cfg, lay, &pb.params, &pb.running, &too_small)));
    assert!(matches!(eval_logits(cfg, lay, &pb.params, &pb.running, &too_small), Err(Error::Config(_))));
    // Layout of another configuration.
    let other = ParamLayout::new(&tiny(Stem::Imagenet));
    assert!(train_step(cfg, &other, &pb.params, &pb.running, &ok).is_err());
    // Invalid configuration.
    let mut bad = pb.cfg.clone();
    bad.growth = 0;
    assert!(is_config(train_step(&bad, lay, &pb.params, &pb.running, &ok)));
}

/// The convolutions run on rayon's threads, but every element is summed by one thread in a
/// fixed order: a whole training step (both stems: stride 1 and 2, padding, pooling) gives the
/// same bits on one thread as on three.
#[test]
fn train_step_is_bit_identical_across_thread_counts() {
    for (stem, n, h, w) in [(Stem::Cifar, 3, 9, 7), (Stem::Imagenet, 4, 13, 15)] {
        let pb = Problem::new(tiny(stem), n, h, w, 41);
        let bits = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let out = pool.install(|| train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()));
            let out = out.unwrap();
            let eval =
                pool.install(|| eval_logits(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()));
            [out.logits, vec![out.loss], out.grads, out.input_grad, out.running, eval.unwrap()]
                .map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>())
        };
        assert!(bits(1) == bits(3), "{stem:?}: the oracle's output depends on the thread count");
    }
}

/// Timing of the real networks (release): `cargo test --release --lib reference -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn timing_real_networks() {
    for (name, n, h) in [("densenet-bc-100-k12", 2, 32), ("densenet121", 1, 224)] {
        let cfg = DenseNetConfig::preset(name).unwrap();
        let pb = Problem::new(cfg, n, h, h, 7);
        let t = std::time::Instant::now();
        let out = train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
        let train = t.elapsed();
        let t = std::time::Instant::now();
        let _ = eval_logits(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
        println!(
            "{name} batch {n} {h}x{h}: train_step {:.2} s, eval {:.2} s, loss {:.4}",
            train.as_secs_f64(),
            t.elapsed().as_secs_f64(),
            out.loss
        );
        assert!(out.loss.is_finite() && out.grads.iter().all(|g| g.is_finite()));
    }
}

/// A resolver that inverts every decision inside its margin, recording the sites it saw.
struct Inverting {
    margin: f64,
    sites: std::cell::RefCell<Vec<BnSite>>,
}

impl KinkResolver for Inverting {
    fn margin(&self) -> f64 {
        self.margin
    }
    fn relu_passes(&self, site: BnSite, _at: [usize; 4], v: f64) -> bool {
        self.sites.borrow_mut().push(site);
        v <= 0.0
    }
    fn maxpool_pick(&self, candidates: &[[usize; 4]]) -> usize {
        candidates.len() - 1
    }
}

#[test]
fn kink_resolver_decides_only_inside_its_margin() {
    for stem in [Stem::Cifar, Stem::Imagenet] {
        let pb = Problem::new(tiny(stem), 2, 13, 15, 41);
        let plain = train_step(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch()).unwrap();
        // A zero margin never consults the resolver: identical results.
        let none = Inverting { margin: 0.0, sites: Default::default() };
        let (same, count) =
            train_step_resolved(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch(), Some(&none))
                .unwrap();
        assert_eq!(count, 0);
        assert_eq!(same.grads, plain.grads);
        // A wide margin hands many decisions to the resolver; inverting them changes the
        // gradients but not the forward (relu(v) ≈ 0 inside the band).
        let wide = Inverting { margin: 0.05, sites: Default::default() };
        let (flipped, count) =
            train_step_resolved(&pb.cfg, &pb.layout, &pb.params, &pb.running, &pb.batch(), Some(&wide))
                .unwrap();
        // Max-pool near-ties are counted too, ReLU decisions are recorded by the resolver.
        assert!(count >= wide.sites.borrow().len() && !wide.sites.borrow().is_empty());
        assert_eq!(flipped.logits, plain.logits);
        assert!(rel_err(&flipped.grads, &plain.grads) > 1e-3, "{stem:?}");
        let sites = wide.sites.borrow();
        assert!(sites.iter().any(|s| matches!(s, BnSite::Norm2 { .. })));
        assert!(sites.iter().any(|s| matches!(s, BnSite::Norm5)));
    }
}
