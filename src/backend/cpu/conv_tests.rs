use super::Bn;
use super::gemm::*;
use super::oracle::{affine_backward, bn_relu, bn_relu_backward, mat_to_tensor, tensor_to_nhwc, to_f64};
use crate::Precision;
use crate::backend::{ConvGeom, Mat, Spatial, View, ViewMut};
use crate::backend::{conv::cpu::*, conv1x1::cpu::*, conv3x3::cpu::*, transition::cpu::*};
use crate::reference::ops::{
    ConvShape, avgpool2_backward, avgpool2_forward, conv2d_backward_data, conv2d_backward_weight,
    conv2d_forward,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Every comparison with the f64 reference requires ‖out − ref‖₂ / ‖ref‖₂ below this.
const TOL: f64 = 1e-5;

/// Batch 3, 7×5 images: one chunk, odd sizes.
const SMALL: Spatial = Spatial { n: 3, h: 7, w: 5 };
/// 3034 pixels: many chunks and eight weight-gradient segments, the last ones partial.
const LARGE: Spatial = Spatial { n: 2, h: 37, w: 41 };

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// A random BN with some negative scales `a`.
fn random_bn(rng: &mut ChaCha8Rng, c: usize) -> Bn {
    Bn {
        a: uniform(rng, c, -1.5, 1.5),
        b: uniform(rng, c, -0.5, 0.5),
        mean: uniform(rng, c, -0.5, 0.5),
        invstd: uniform(rng, c, 0.5, 2.0),
    }
}

/// A storage of `rows` pixels with pitch `cols + extra`, random everywhere, and the Mat of
/// its columns `[col0, col0 + cols)`.
fn strided(rng: &mut ChaCha8Rng, rows: usize, cols: usize, col0: usize, extra: usize) -> (Vec<f32>, Mat) {
    let ld = cols + extra;
    (uniform(rng, rows * ld, -1.0, 1.0), Mat { offset: col0, rows, cols, ld })
}

/// An input activation: columns [3, 3 + cols) of a (cols + 10)-wide storage.
fn input(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Vec<f32>, Mat) {
    strided(rng, rows, cols, 3, 10)
}

/// An output activation: columns [5, 5 + cols) of a (cols + 6)-wide storage.
fn output(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Vec<f32>, Mat) {
    strided(rng, rows, cols, 5, 6)
}

/// The elements a Mat addresses, row-major, in f64.
fn dense(buf: &[f32], m: Mat) -> Vec<f64> {
    (0..m.rows).flat_map(|p| (0..m.cols).map(move |c| f64::from(buf[m.at(p, c)]))).collect()
}

/// Asserts that every element of `after` outside `m` still equals `before`, bit for bit.
fn assert_outside_untouched(before: &[f32], after: &[f32], m: Mat) {
    let mut inside = vec![false; before.len()];
    for p in 0..m.rows {
        inside[m.at(p, 0)..m.at(p, 0) + m.cols].fill(true);
    }
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        assert!(inside[i] || b.to_bits() == a.to_bits(), "element {i} outside the output changed");
    }
}

/// Checks ‖got − want‖/‖want‖ < TOL and returns the relative error.
fn assert_close(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    let err = diff / norm;
    println!("{what}: relative error {err:.2e}");
    assert!(err < TOL, "{what}: relative error {err:e} (tolerance {TOL:e})");
    err
}

// ---- the f64 oracle (crate::reference::ops), through the shared NHWC bridge ----

/// The oracle's description of a convolution geometry.
fn conv_shape(g: ConvGeom) -> ConvShape {
    ConvShape { kernel: g.kernel, stride: g.stride, pad: g.pad }
}

const ONE_BY_ONE: ConvShape = ConvShape { kernel: 1, stride: 1, pad: 0 };

/// `P` pixels as a batch of 1×1 images, for 1×1 convolutions.
fn flat(p: usize) -> Spatial {
    Spatial { n: p, h: 1, w: 1 }
}

// ---- dense layer 1×1 ----

#[test]
fn conv1x1_fwd_matches_reference() {
    for (seed, p, cin, cout) in [(1, SMALL.pixels(), 13, 20), (2, LARGE.pixels(), 37, 5), (3, 1, 5, 13)] {
        let mut r = rng(seed);
        let (x, xm) = input(&mut r, p, cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * cin, -1.0, 1.0);
        let (mut z, zm) = output(&mut r, p, cout);
        let before = z.clone();
        bn_relu_conv1x1_fwd(Precision::Fp32, &x, xm, &bn, &w, &mut z, zm);
        let act = bn_relu(&mat_to_tensor(&x, xm, flat(p)), &bn);
        let want = tensor_to_nhwc(&conv2d_forward(&act, &to_f64(&w), cout, ONE_BY_ONE));
        assert_close(&format!("conv1x1 fwd P={p} {cin}->{cout}"), &dense(&z, zm), &want);
        assert_outside_untouched(&before, &z, zm);
    }
}

#[test]
fn conv1x1_wgrad_accumulates_reference() {
    for (seed, p, cin, cout) in [(4, SMALL.pixels(), 13, 20), (5, LARGE.pixels(), 37, 5)] {
        let mut r = rng(seed);
        let (x, xm) = input(&mut r, p, cin);
        let bn = random_bn(&mut r, cin);
        let (dz, dzm) = input(&mut r, p, cout);
        // dW starts non-zero, and the slice runs past the tensor (3 floats must survive).
        let mut dw = uniform(&mut r, cout * cin + 3, -1.0, 1.0);
        let before = dw.clone();
        bn_relu_conv1x1_wgrad(Precision::Fp32, &x, xm, &bn, &dz, dzm, &mut dw);
        let act = bn_relu(&mat_to_tensor(&x, xm, flat(p)), &bn);
        let grad = conv2d_backward_weight(&act, &mat_to_tensor(&dz, dzm, flat(p)), ONE_BY_ONE);
        let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
        assert_close(&format!("conv1x1 wgrad P={p} {cin}->{cout}"), &to_f64(&dw[..cout * cin]), &want);
        assert_eq!(dw[cout * cin..], before[cout * cin..]);
    }
}

#[test]
fn conv1x1_dgrad_matches_reference_overwrite_and_accumulate() {
    for (seed, p, cin, cout) in [(6, SMALL.pixels(), 13, 20), (7, LARGE.pixels(), 37, 5)] {
        for accumulate in [false, true] {
            let mut r = rng(seed);
            let (x, xm) = input(&mut r, p, cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * cin, -1.0, 1.0);
            let (dz, dzm) = input(&mut r, p, cout);
            let (mut dx, dxm) = output(&mut r, p, cin);
            let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
            let (dx0, sums0) = (dx.clone(), sums.clone());
            bn_relu_conv1x1_dgrad(
                Precision::Fp32,
                View::new(&dz, dzm),
                &w,
                View::new(&x, xm),
                &bn,
                ViewMut::new(&mut dx, dxm),
                accumulate,
                &mut sums,
            );

            // dz · W is the transposed 1×1 conv.
            let dz = mat_to_tensor(&dz, dzm, flat(p));
            let gpre = conv2d_backward_data(&dz, &to_f64(&w), cin, 1, 1, ONE_BY_ONE);
            let (g, want_sums) = bn_relu_backward(&gpre, &x, xm, &bn);
            let mut want_dx = affine_backward(&g, &bn);
            if accumulate {
                want_dx.iter_mut().zip(dense(&dx0, dxm)).for_each(|(d, b)| *d += b);
            }
            let what = format!("conv1x1 dgrad P={p} {cout}->{cin} accumulate={accumulate}");
            assert_close(&format!("{what} dx"), &dense(&dx, dxm), &want_dx);
            assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
            assert_outside_untouched(&dx0, &dx, dxm);
            assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
        }
    }
}

// ---- dense layer 3×3 ----

/// (seed, shape, c_in, c_out) for the 3×3 tests: odd sizes, 1×1 and 1-wide images, many chunks.
const CASES_3X3: [(u64, Spatial, usize, usize); 4] = [
    (10, SMALL, 13, 5),
    (11, Spatial { n: 3, h: 1, w: 1 }, 20, 13),
    (12, Spatial { n: 2, h: 1, w: 6 }, 5, 7),
    (13, LARGE, 13, 5),
];

#[test]
fn conv3x3_fwd_matches_reference() {
    for (seed, s, cin, cout) in CASES_3X3 {
        let mut r = rng(seed);
        let (z, zm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
        let (mut y, ym) = output(&mut r, s.pixels(), cout);
        let before = y.clone();
        bn_relu_conv3x3_fwd(Precision::Fp32, &z, zm, s, &bn, &w, &mut y, ym);
        let act = bn_relu(&mat_to_tensor(&z, zm, s), &bn);
        let want = tensor_to_nhwc(&conv2d_forward(&act, &to_f64(&w), cout, conv_shape(CONV3X3)));
        assert_close(&format!("conv3x3 fwd {s:?} {cin}->{cout}"), &dense(&y, ym), &want);
        assert_outside_untouched(&before, &y, ym);
    }
}

#[test]
fn conv3x3_wgrad_accumulates_reference() {
    for (seed, s, cin, cout) in CASES_3X3 {
        let mut r = rng(seed);
        let (z, zm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let (dy, dym) = input(&mut r, s.pixels(), cout);
        let len = cout * 9 * cin;
        let mut dw = uniform(&mut r, len + 3, -1.0, 1.0);
        let before = dw.clone();
        bn_relu_conv3x3_wgrad(Precision::Fp32, &z, zm, s, &bn, &dy, dym, &mut dw);
        let act = bn_relu(&mat_to_tensor(&z, zm, s), &bn);
        let grad = conv2d_backward_weight(&act, &mat_to_tensor(&dy, dym, s), conv_shape(CONV3X3));
        let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
        assert_close(&format!("conv3x3 wgrad {s:?} {cin}->{cout}"), &to_f64(&dw[..len]), &want);
        assert_eq!(dw[len..], before[len..]);
    }
}

#[test]
fn conv3x3_dgrad_matches_reference() {
    for (seed, s, cin, cout) in CASES_3X3 {
        let mut r = rng(seed);
        let (z, zm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
        let (dy, dym) = input(&mut r, s.pixels(), cout);
        let (mut g, gm) = output(&mut r, s.pixels(), cin);
        let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
        let (g0, sums0) = (g.clone(), sums.clone());
        bn_relu_conv3x3_dgrad(
            Precision::Fp32,
            View::new(&dy, dym),
            s,
            &w,
            View::new(&z, zm),
            &bn,
            ViewMut::new(&mut g, gm),
            &mut sums,
        );
        let dy = mat_to_tensor(&dy, dym, s);
        let gpre = conv2d_backward_data(&dy, &to_f64(&w), cin, s.h, s.w, conv_shape(CONV3X3));
        let (want_g, want_sums) = bn_relu_backward(&gpre, &z, zm, &bn);
        let what = format!("conv3x3 dgrad {s:?} {cout}->{cin}");
        assert_close(&format!("{what} g"), &dense(&g, gm), &want_g);
        assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
        assert_outside_untouched(&g0, &g, gm);
        assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
    }
}

// ---- transition ----

/// (seed, input shape, c_in, c_out): odd heights/widths that the pool crops, and enough
/// pooled pixels (2325) for several chunks and weight-gradient segments.
const CASES_TRANSITION: [(u64, Spatial, usize, usize); 4] = [
    (20, SMALL, 13, 5),
    (21, Spatial { n: 3, h: 5, w: 9 }, 20, 13),
    (22, Spatial { n: 2, h: 6, w: 7 }, 37, 20),
    (23, Spatial { n: 3, h: 63, w: 51 }, 13, 5),
];

fn pooled_shape(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: s.h / 2, w: s.w / 2 }
}

#[test]
fn transition_fwd_matches_reference() {
    for (seed, s, cin, cout) in CASES_TRANSITION {
        let mut r = rng(seed);
        let o = pooled_shape(s);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * cin, -1.0, 1.0);
        let (mut y, ym) = output(&mut r, o.pixels(), cout);
        let before = y.clone();
        bn_relu_avgpool_conv1x1_fwd(Precision::Fp32, &x, xm, s, &bn, &w, &mut y, ym);
        let pooled = avgpool2_forward(&bn_relu(&mat_to_tensor(&x, xm, s), &bn));
        let want = tensor_to_nhwc(&conv2d_forward(&pooled, &to_f64(&w), cout, ONE_BY_ONE));
        assert_close(&format!("transition fwd {s:?} {cin}->{cout}"), &dense(&y, ym), &want);
        assert_outside_untouched(&before, &y, ym);
    }
}

#[test]
fn transition_wgrad_accumulates_reference() {
    for (seed, s, cin, cout) in CASES_TRANSITION {
        let mut r = rng(seed);
        let o = pooled_shape(s);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let (dy, dym) = input(&mut r, o.pixels(), cout);
        let mut dw = uniform(&mut r, cout * cin + 3, -1.0, 1.0);
        let before = dw.clone();
        bn_relu_avgpool_conv1x1_wgrad(Precision::Fp32, &x, xm, s, &bn, &dy, dym, &mut dw);
        let pooled = avgpool2_forward(&bn_relu(&mat_to_tensor(&x, xm, s), &bn));
        let grad = conv2d_backward_weight(&pooled, &mat_to_tensor(&dy, dym, o), ONE_BY_ONE);
        let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
        assert_close(&format!("transition wgrad {s:?} {cin}->{cout}"), &to_f64(&dw[..cout * cin]), &want);
        assert_eq!(dw[cout * cin..], before[cout * cin..]);
    }
}

#[test]
fn transition_dgrad_matches_reference() {
    for (seed, s, cin, cout) in CASES_TRANSITION {
        let mut r = rng(seed);
        let o = pooled_shape(s);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * cin, -1.0, 1.0);
        let (dy, dym) = input(&mut r, o.pixels(), cout);
        // dx starts as random garbage: every element of dxm must be overwritten.
        let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
        let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
        let (dx0, sums0) = (dx.clone(), sums.clone());
        bn_relu_avgpool_conv1x1_dgrad(
            Precision::Fp32,
            View::new(&dy, dym),
            &w,
            View::new(&x, xm),
            s,
            &bn,
            ViewMut::new(&mut dx, dxm),
            &mut sums,
        );
        let dy = mat_to_tensor(&dy, dym, o);
        let dpooled = conv2d_backward_data(&dy, &to_f64(&w), cin, o.h, o.w, ONE_BY_ONE);
        let (g, want_sums) = bn_relu_backward(&avgpool2_backward(&dpooled, s.h, s.w), &x, xm, &bn);
        let what = format!("transition dgrad {s:?} {cout}->{cin}");
        let got = dense(&dx, dxm);
        assert_close(&format!("{what} dx"), &got, &affine_backward(&g, &bn));
        assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
        // The cropped last row/column gets exactly zero.
        for p in 0..s.pixels() {
            let (_, y, x) = pixel(p, s);
            if y >= 2 * o.h || x >= 2 * o.w {
                assert!(got[p * cin..][..cin].iter().all(|&v| v == 0.0), "dropped pixel {p} not zeroed");
            }
        }
        assert_outside_untouched(&dx0, &dx, dxm);
        assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
    }
}

#[test]
fn transition_on_images_too_small_to_pool_zeroes_the_gradient() {
    let mut r = rng(24);
    let (s, cin, cout) = (Spatial { n: 2, h: 1, w: 3 }, 5, 4);
    let (x, xm) = input(&mut r, s.pixels(), cin);
    let bn = random_bn(&mut r, cin);
    let w = uniform(&mut r, cout * cin, -1.0, 1.0);
    let (dy, dym) = input(&mut r, 0, cout);
    let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
    let mut sums = uniform(&mut r, 2 * cin, -1.0, 1.0);
    let dx0 = dx.clone();
    bn_relu_avgpool_conv1x1_dgrad(
        Precision::Fp32,
        View::new(&dy, dym),
        &w,
        View::new(&x, xm),
        s,
        &bn,
        ViewMut::new(&mut dx, dxm),
        &mut sums,
    );
    assert!(dense(&dx, dxm).iter().all(|&v| v == 0.0));
    assert!(sums.iter().all(|&v| v == 0.0));
    assert_outside_untouched(&dx0, &dx, dxm);
}

// ---- plain convolution ----

/// (seed, shape, geometry, c_in, c_out) for the plain-conv tests.
const CASES_CONV: [(u64, Spatial, ConvGeom, usize, usize); 5] = [
    (30, SMALL, CONV3X3, 5, 13),
    (31, SMALL, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 20),
    (32, Spatial { n: 2, h: 6, w: 9 }, ConvGeom { kernel: 2, stride: 2, pad: 0 }, 13, 5),
    (33, Spatial { n: 2, h: 1, w: 1 }, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 5),
    (34, Spatial { n: 2, h: 45, w: 39 }, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 13),
];

#[test]
fn conv_fwd_matches_reference() {
    for (seed, s, g, cin, cout) in CASES_CONV {
        let mut r = rng(seed);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
        let (mut y, ym) = output(&mut r, g.out(s).pixels(), cout);
        let before = y.clone();
        conv_fwd(Precision::Fp32, &x, xm, s, g, &w, &mut y, ym);
        let want =
            tensor_to_nhwc(&conv2d_forward(&mat_to_tensor(&x, xm, s), &to_f64(&w), cout, conv_shape(g)));
        assert_close(&format!("conv fwd {s:?} {g:?} {cin}->{cout}"), &dense(&y, ym), &want);
        assert_outside_untouched(&before, &y, ym);
    }
}

#[test]
fn conv_wgrad_accumulates_reference() {
    for (seed, s, g, cin, cout) in CASES_CONV {
        let mut r = rng(seed);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
        let len = cout * g.kernel * g.kernel * cin;
        let mut dw = uniform(&mut r, len + 3, -1.0, 1.0);
        let before = dw.clone();
        conv_wgrad(Precision::Fp32, &x, xm, s, g, &dy, dym, &mut dw);
        let (x, dy) = (mat_to_tensor(&x, xm, s), mat_to_tensor(&dy, dym, g.out(s)));
        let grad = conv2d_backward_weight(&x, &dy, conv_shape(g));
        let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
        assert_close(&format!("conv wgrad {s:?} {g:?} {cin}->{cout}"), &to_f64(&dw[..len]), &want);
        assert_eq!(dw[len..], before[len..]);
    }
}

#[test]
fn conv_dgrad_matches_reference() {
    for (seed, s, g, cin, cout) in CASES_CONV {
        let mut r = rng(seed);
        let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
        let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
        let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
        let before = dx.clone();
        conv_dgrad(Precision::Fp32, &dy, dym, s, g, &w, &mut dx, dxm);
        let dy = mat_to_tensor(&dy, dym, g.out(s));
        let want = tensor_to_nhwc(&conv2d_backward_data(&dy, &to_f64(&w), cin, s.h, s.w, conv_shape(g)));
        assert_close(&format!("conv dgrad {s:?} {g:?} {cout}->{cin}"), &dense(&dx, dxm), &want);
        assert_outside_untouched(&before, &dx, dxm);
    }
}

#[test]
fn conv_dgrad_is_adjoint_of_conv_fwd() {
    for (seed, s, g, cin, cout) in CASES_CONV {
        let mut r = rng(seed + 100);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
        let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
        let (mut y, ym) = output(&mut r, g.out(s).pixels(), cout);
        let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
        conv_fwd(Precision::Fp32, &x, xm, s, g, &w, &mut y, ym);
        conv_dgrad(Precision::Fp32, &dy, dym, s, g, &w, &mut dx, dxm);
        // ⟨conv(x), dy⟩ = ⟨x, dgrad(dy)⟩, relative to Σ|y·dy| (the scale of the rounding).
        let (y, dy, x, dx) = (dense(&y, ym), dense(&dy, dym), dense(&x, xm), dense(&dx, dxm));
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
        let scale: f64 = y.iter().zip(&dy).map(|(a, b)| (a * b).abs()).sum();
        let err = (lhs - rhs).abs() / scale;
        println!("conv adjoint {s:?} {g:?}: ⟨y,dy⟩={lhs:.6} ⟨x,dx⟩={rhs:.6} relative gap {err:.2e}");
        assert!(err < TOL, "adjoint gap {err:e} (tolerance {TOL:e})");
    }
}

// ---- determinism ----

/// Runs every op on fixed inputs large enough for many chunks and segments and returns all
/// outputs.
fn run_all_ops() -> Vec<Vec<f32>> {
    let mut r = rng(40);
    let (s, cin, cout) = (LARGE, 13, 7);
    let p = s.pixels();
    let (x, xm) = input(&mut r, p, cin);
    let bn = random_bn(&mut r, cin);
    let (d, dm) = input(&mut r, p, cout);
    let w1 = uniform(&mut r, cout * cin, -1.0, 1.0);
    let w3 = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
    let ts = Spatial { n: 3, h: 63, w: 51 };
    let (tx, txm) = input(&mut r, ts.pixels(), cin);
    let (td, tdm) = input(&mut r, pooled_shape(ts).pixels(), cout);
    let stem = ConvGeom { kernel: 7, stride: 2, pad: 3 };
    let (sd, sdm) = input(&mut r, stem.out(s).pixels(), cout);
    let ws = uniform(&mut r, cout * 49 * cin, -1.0, 1.0);

    let mut outs = Vec::new();
    let mut out = |len: usize, f: &mut dyn FnMut(&mut [f32])| {
        let mut v = vec![0.5; len];
        f(&mut v);
        outs.push(v);
    };
    let dm_out = Mat::dense(0, p, cout);
    let xm_out = Mat::dense(0, p, cin);
    out(p * cout, &mut |o| bn_relu_conv1x1_fwd(Precision::Fp32, &x, xm, &bn, &w1, o, dm_out));
    out(cout * cin, &mut |o| bn_relu_conv1x1_wgrad(Precision::Fp32, &x, xm, &bn, &d, dm, o));
    out(p * cin + 2 * cin, &mut |o| {
        let (dx, sums) = o.split_at_mut(p * cin);
        bn_relu_conv1x1_dgrad(
            Precision::Fp32,
            View::new(&d, dm),
            &w1,
            View::new(&x, xm),
            &bn,
            ViewMut::new(dx, xm_out),
            true,
            sums,
        )
    });
    out(p * cout, &mut |o| bn_relu_conv3x3_fwd(Precision::Fp32, &x, xm, s, &bn, &w3, o, dm_out));
    out(cout * 9 * cin, &mut |o| bn_relu_conv3x3_wgrad(Precision::Fp32, &x, xm, s, &bn, &d, dm, o));
    out(p * cin + 2 * cin, &mut |o| {
        let (g, sums) = o.split_at_mut(p * cin);
        bn_relu_conv3x3_dgrad(
            Precision::Fp32,
            View::new(&d, dm),
            s,
            &w3,
            View::new(&x, xm),
            &bn,
            ViewMut::new(g, xm_out),
            sums,
        )
    });
    let (tp, tq) = (pooled_shape(ts).pixels(), ts.pixels());
    out(tp * cout, &mut |o| {
        bn_relu_avgpool_conv1x1_fwd(Precision::Fp32, &tx, txm, ts, &bn, &w1, o, Mat::dense(0, tp, cout))
    });
    out(cout * cin, &mut |o| bn_relu_avgpool_conv1x1_wgrad(Precision::Fp32, &tx, txm, ts, &bn, &td, tdm, o));
    out(tq * cin + 2 * cin, &mut |o| {
        let (dx, sums) = o.split_at_mut(tq * cin);
        bn_relu_avgpool_conv1x1_dgrad(
            Precision::Fp32,
            View::new(&td, tdm),
            &w1,
            View::new(&tx, txm),
            ts,
            &bn,
            ViewMut::new(dx, Mat::dense(0, tq, cin)),
            sums,
        )
    });
    let sp = stem.out(s).pixels();
    out(sp * cout, &mut |o| conv_fwd(Precision::Fp32, &x, xm, s, stem, &ws, o, Mat::dense(0, sp, cout)));
    out(cout * 49 * cin, &mut |o| conv_wgrad(Precision::Fp32, &x, xm, s, stem, &sd, sdm, o));
    out(p * cin, &mut |o| conv_dgrad(Precision::Fp32, &sd, sdm, s, stem, &ws, o, xm_out));
    outs
}

#[test]
fn results_are_identical_for_any_thread_count() {
    let in_pool = |threads: usize| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run_all_ops)
    };
    let bits = |outs: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
        outs.into_iter().map(|v| v.into_iter().map(f32::to_bits).collect()).collect()
    };
    let reference = bits(in_pool(1));
    assert_eq!(bits(run_all_ops()), reference, "default pool differs from 1 thread");
    assert_eq!(bits(in_pool(3)), reference, "3 threads differ from 1 thread");
}

// ---- the GEMM itself ----

/// `gemm` (the AVX-512 kernel where the CPU has it, else matrixmultiply) against an f64
/// product: shapes around its tile sizes (8 rows, 16/32/48 columns, 256-deep k blocks, so
/// partial row and column tiles and several k blocks), A and B row-major with a pitch or
/// transposed, beta = 0 over a C of NaNs (never read), beta = 1 and 0.5, alpha ≠ 1, k = 0
/// (exactly beta·C), and C's pitch padding untouched. An f32 FMA chain of k ≤ 600 terms of O(1) values stays far below
/// TOL relative to the product's norm.
#[test]
fn gemm_matches_f64_on_odd_shapes_strides_and_scalars() {
    let mut r = rng(61);
    let shapes =
        [(1, 1, 1), (7, 5, 12), (8, 300, 33), (9, 17, 16), (130, 600, 48), (13, 257, 100), (3, 0, 5)];
    for (m, k, n) in shapes {
        for (transposed_a, transposed_b) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (-0.75, 1.0), (1.5, 0.5)] {
                // A m×k with pitch k + 3 (or its transpose stored k×m, pitch m + 2); B likewise.
                let (a, av) = if transposed_a {
                    (uniform(&mut r, k * (m + 2) + 1, -1.0, 1.0), Operand { off: 1, rs: 1, cs: m + 2 })
                } else {
                    (uniform(&mut r, m * (k + 3) + 2, -1.0, 1.0), Operand { off: 2, rs: k + 3, cs: 1 })
                };
                let (b, bv) = if transposed_b {
                    (uniform(&mut r, n * (k + 1), -1.0, 1.0), Operand { off: 0, rs: 1, cs: k + 1 })
                } else {
                    (uniform(&mut r, k * (n + 5), -1.0, 1.0), Operand { off: 0, rs: n + 5, cs: 1 })
                };
                let cm = Mat { offset: 3, rows: m, cols: n, ld: n + 4 };
                let mut c = uniform(&mut r, 3 + m * (n + 4), -1.0, 1.0);
                if beta == 0.0 {
                    (0..m).for_each(|i| c[cm.at(i, 0)..][..n].fill(f32::NAN));
                }
                let before = c.clone();
                let want: Vec<f64> = (0..m * n)
                    .map(|e| {
                        let (i, j) = (e / n, e % n);
                        let dot: f64 = (0..k)
                            .map(|l| {
                                f64::from(a[av.off + i * av.rs + l * av.cs])
                                    * f64::from(b[bv.off + l * bv.rs + j * bv.cs])
                            })
                            .sum();
                        let old =
                            if beta == 0.0 { 0.0 } else { f64::from(beta) * f64::from(before[cm.at(i, j)]) };
                        f64::from(alpha) * dot + old
                    })
                    .collect();
                let cv = Operand { off: cm.offset, rs: cm.ld, cs: 1 };
                gemm(Precision::Fp32, m, k, n, alpha, &a, av, &b, bv, beta, &mut c, cv);
                let what = format!("gemm {m}×{k}×{n} Aᵀ {transposed_a} Bᵀ {transposed_b} α {alpha} β {beta}");
                if k == 0 {
                    // No products: exactly beta·C, and exactly 0 (not NaN) for beta = 0.
                    let got = dense(&c, cm);
                    assert!(got.iter().zip(&want).all(|(g, w)| g == w), "{what}: {got:?} ≠ {want:?}");
                } else {
                    assert_close(&what, &dense(&c, cm), &want);
                }
                assert_outside_untouched(&before, &c, cm);
            }
        }
    }
}

/// The portable GEMM (matrixmultiply, what CPUs without AVX-512 run) computes what the AVX-512
/// kernel (checked against the f64 oracle above) does, op for op, within TOL: every op of
/// `run_all_ops`, run on a pool whose threads are told to take the portable path.
#[test]
fn portable_and_avx512_gemms_agree() {
    if !super::simd::wide() {
        println!("this CPU lacks AVX-512: both runs take the portable path");
    }
    let fast = run_all_ops();
    #[cfg(target_arch = "x86_64")]
    let portable = super::avx512_gemm::portable_pool().install(run_all_ops);
    #[cfg(not(target_arch = "x86_64"))]
    let portable = run_all_ops();
    for (i, (f, p)) in fast.iter().zip(&portable).enumerate() {
        assert_close(&format!("output {i}"), &to_f64(f), &to_f64(p));
    }
}
