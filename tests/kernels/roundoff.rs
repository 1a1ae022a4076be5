//! The tensor-core kernels (tf32, bf16) against the exact path: the device computing in its
//! precision against the cpu backend in fp32, with an error bound derived from the unit
//! roundoff and the GEMM depth K instead of a tuned tolerance. (The cases `<op>_tf32` and
//! `<op>_bf16` of the family modules compare the same kernels with the cpu backend at their
//! precision, which multiplies the same rounded operands, to the harness's tolerances.)
//!
//! The bound. A kernel rounds each GEMM operand to its format, relative error ≤ u (TF32: 2⁻¹¹,
//! 10 explicit mantissa bits; bf16: 2⁻⁸, 7; round to nearest), so each product a·b is formed as
//! a·b·(1 + θ) with |θ| ≤ (1 + u)² − 1 = 2u + u², exactly (products of two such values fit an
//! f32). Both paths then add K terms in f32, each sum within γ_K·Σ|terms| of its exact value
//! (γ_K = K·ε/(1 − K·ε), ε = 2⁻²⁴, for any order and any tree of additions), the rounded path's
//! terms being up to (1 + u)² times larger. So, per output element,
//!     |c − c_fp32| ≤ B·Σ_k |a_k|·|b_k|,  B = 2u + u² + γ_K·(1 + (1 + u)²),
//! and the same for the Frobenius norm of the whole output, with Σ|a||b| the output of the same
//! op on |operands| (computed by the cpu backend in fp32, whose own error there is another
//! γ_K relative, covered by the 1.01 margin). BN-ReLU'd and pooled operands are ≥ 0 already; a
//! data gradient's BN-ReLU-backward epilogue multiplies by a per-channel a and a 0/1 mask, which
//! the bound carries through as |a|. A bf16 kernel also stores its activation outputs (forward,
//! data gradient) in bf16, one more rounding of relative error ≤ u of a value at most
//! (1 + B)·Σ|a||b|: the bound there is B + u·(1 + B). Its activation inputs are bf16 values,
//! which the fp32 path reads exactly. Each check also requires the error to be above 10⁻⁶ of
//! the output: a kernel that quietly multiplied in f32 would pass the bound but fail that.

use densenet::backend::cpu::CpuBackend;
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, AtMut, BnRef, Category, ConvGeom, Mat, Spatial, View, ViewMut};
use densenet::precision::round_bf16;
use densenet::{Dtype, Precision};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

crate::kernel_cases! {
    conv1x1 @ tf32 => ["bn_relu_conv1x1_fwd_tf32", "bn_relu_conv1x1_wgrad_tf32", "bn_relu_conv1x1_dgrad_tf32"],
    transition @ tf32 => [
        "bn_relu_avgpool_conv1x1_fwd_tf32",
        "bn_relu_avgpool_conv1x1_wgrad_tf32",
        "bn_relu_avgpool_conv1x1_dgrad_tf32",
    ],
    conv3x3 @ tf32 => ["bn_relu_conv3x3_fwd_tf32", "bn_relu_conv3x3_wgrad_tf32", "bn_relu_conv3x3_dgrad_tf32"],
    stem @ tf32 => ["conv_fwd_tf32", "conv_wgrad_tf32", "conv_dgrad_tf32"],
    conv1x1 @ bf16 => ["bn_relu_conv1x1_fwd_bf16", "bn_relu_conv1x1_wgrad_bf16", "bn_relu_conv1x1_dgrad_bf16"],
    transition @ bf16 => [
        "bn_relu_avgpool_conv1x1_fwd_bf16",
        "bn_relu_avgpool_conv1x1_wgrad_bf16",
        "bn_relu_avgpool_conv1x1_dgrad_bf16",
    ],
    conv3x3 @ bf16 => ["bn_relu_conv3x3_fwd_bf16", "bn_relu_conv3x3_wgrad_bf16", "bn_relu_conv3x3_dgrad_bf16"],
    stem @ bf16 => ["conv_fwd_bf16", "conv_wgrad_bf16", "conv_dgrad_bf16"],
}

/// The derived bound on ‖c − c_fp32‖ / ‖Σ|a||b|‖ for GEMMs of depth `k` in `precision`, for an
/// output `stored` in the precision's storage format or kept in f32 (module docs).
pub fn bound(precision: Precision, k: usize, stored: bool) -> f64 {
    let u = precision.operand_roundoff();
    let eps = 2f64.powi(-24);
    let gamma = k as f64 * eps / (1.0 - k as f64 * eps);
    let b = 2.0 * u + u * u + gamma * (1.0 + (1.0 + u).powi(2));
    let rounded = stored && precision.storage() == Dtype::Bf16;
    1.01 * if rounded { b + u * (1.0 + b) } else { b }
}

/// Requires ‖c − fp32‖ ≤ bound·‖abs‖ and ‖c − fp32‖ > 10⁻⁶·‖fp32‖.
pub fn check_bound(
    what: &str,
    precision: Precision,
    c: &[f32],
    fp32: &[f32],
    abs: &[f32],
    k: usize,
    stored: bool,
) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let err = norm(&mut c.iter().zip(fp32).map(|(a, b)| f64::from(*a) - f64::from(*b)));
    let scale = norm(&mut abs.iter().map(|&v| f64::from(v)));
    let reference = norm(&mut fp32.iter().map(|&v| f64::from(v)));
    let bound = bound(precision, k, stored);
    println!(
        "{what}: ‖{precision} − fp32‖/‖fp32‖ = {:.2e}, ‖{precision} − fp32‖/‖Σ|a||b|‖ = {:.2e} ≤ {bound:.2e} (K = {k})",
        err / reference,
        err / scale
    );
    assert!(
        err.is_finite() && err <= bound * scale,
        "{what}: error {err:e} above the bound {:e}",
        bound * scale
    );
    assert!(
        err > 1e-6 * reference,
        "{what}: {precision} agrees with fp32 to {:e}: were the operands rounded?",
        err / reference
    );
}

/// For an op whose operands are all stored activations, which a bf16 kernel multiplies as they
/// are (the stem's weight gradient: input × output gradient): nothing is rounded, so the two
/// paths differ by their summation orders only, ‖c − fp32‖ ≤ 2γ_K·‖Σ|a||b|‖.
pub fn check_unrounded(what: &str, c: &[f32], fp32: &[f32], abs: &[f32], k: usize) {
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let err = norm(&mut c.iter().zip(fp32).map(|(a, b)| f64::from(*a) - f64::from(*b)));
    let scale = norm(&mut abs.iter().map(|&v| f64::from(v)));
    let eps = 2f64.powi(-24);
    let bound = 1.01 * 2.0 * k as f64 * eps / (1.0 - k as f64 * eps);
    println!("{what}: ‖c − fp32‖/‖Σ|a||b|‖ = {:.2e} ≤ {bound:.2e} (K = {k}, operands exact)", err / scale);
    assert!(err.is_finite() && err <= bound * scale, "{what}: error {err:e} above {:e}", bound * scale);
}

/// Host inputs of one op: x (rows × cin), BN statistics and parameters over cin, W (cout × cin),
/// an output gradient (rows_out × cout), all dense.
struct Inputs {
    x: Vec<f32>,
    stats: Vec<f32>,
    params: Vec<f32>,
    w: Vec<f32>,
    dout: Vec<f32>,
}

impl Inputs {
    /// W has `taps`·cin·cout elements (OHWI).
    fn random(
        rng: &mut ChaCha8Rng,
        rows: usize,
        rows_out: usize,
        cin: usize,
        cout: usize,
        taps: usize,
    ) -> Inputs {
        let mut uniform =
            |n: usize, lo: f32, hi: f32| (0..n).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>();
        let x = uniform(rows * cin, -2.0, 2.0);
        let mut stats = uniform(cin, -0.5, 0.5);
        stats.extend(uniform(cin, 0.2, 2.0));
        // γ of both signs, so that the epilogue's a is negative for some channels.
        let mut params: Vec<f32> = uniform(cin, 0.5, 1.5)
            .into_iter()
            .enumerate()
            .map(|(i, g)| if i % 5 == 2 { -g } else { g })
            .collect();
        params.extend(uniform(cin, -0.3, 0.3));
        let w = uniform(taps * cout * cin, -1.0, 1.0);
        let dout = uniform(rows_out * cout, -1.0, 1.0);
        Inputs { x, stats, params, w, dout }
    }

    /// The activations (x, the output gradient) as `precision` stores them, so that the fp32
    /// path reads exactly the values the device holds.
    fn stored_as(mut self, precision: Precision) -> Inputs {
        if precision.storage() == Dtype::Bf16 {
            for v in self.x.iter_mut().chain(&mut self.dout) {
                *v = round_bf16(*v);
            }
        }
        self
    }
}

fn magnitudes(v: &[f32], abs: bool) -> Vec<f32> {
    v.iter().map(|x| if abs { x.abs() } else { *x }).collect()
}

/// The BN of `c` channels whose [mean | var] and [γ | β] are `stats` and `params`.
fn bn<'a, T>(stats: &'a T, params: &'a T, c: usize) -> BnRef<'a, T> {
    BnRef { stats, mean: 0, var: c, params, gamma: 0, beta: c }
}

fn upload<B: Buffers>(b: &B, v: &[f32]) -> B::Buf {
    let mut buf = b.alloc(v.len(), Category::Workspace).unwrap();
    b.upload(&mut buf, 0, v).unwrap();
    buf
}

/// An activation buffer of `b` (in its storage dtype) holding `v`.
fn upload_activation<B: Buffers>(b: &B, v: &[f32]) -> B::Buf {
    let mut buf = b.alloc_as(v.len(), b.precision().storage(), Category::Workspace).unwrap();
    b.upload(&mut buf, 0, v).unwrap();
    buf
}

/// A zeroed activation buffer of `b` (in its storage dtype).
fn activation<B: Buffers>(b: &B, len: usize) -> B::Buf {
    b.alloc_as(len, b.precision().storage(), Category::Workspace).unwrap()
}

/// The three outputs of one op: forward y, weight gradient dW (from zero), data gradient dx,
/// each on |operands| when `abs` (and then |dx|).
type Outputs = [Vec<f32>; 3];

/// A fused 1×1 family's three ops on backend `b`: `pooled` selects the transition (input
/// `shape`), else the bottleneck (`shape.pixels()` rows).
fn run<B: Backend>(
    b: &B,
    i: &Inputs,
    shape: Spatial,
    pooled: bool,
    cin: usize,
    cout: usize,
    abs: bool,
) -> Outputs {
    let rows = shape.pixels();
    let rows_out = if pooled { shape.n * (shape.h / 2) * (shape.w / 2) } else { rows };
    let (x, stats, params) = (upload_activation(b, &i.x), upload(b, &i.stats), upload(b, &i.params));
    let w = upload(b, &magnitudes(&i.w, abs));
    let dout = upload_activation(b, &magnitudes(&i.dout, abs));
    let xv = || View::new(&x, Mat::dense(0, rows, cin)).bn_relu(bn(&stats, &params, cin));
    let om = Mat::dense(0, rows_out, cout);
    let mut y = activation(b, rows_out * cout);
    let mut dw = b.alloc(cout * cin, Category::Workspace).unwrap();
    let mut dx = activation(b, rows * cin);
    let mut sums = b.alloc(2 * cin, Category::Workspace).unwrap();
    let dxv = ViewMut::new(&mut dx, Mat::dense(0, rows, cin));
    if pooled {
        b.bn_relu_avgpool_conv1x1_fwd(xv(), shape, At { buf: &w, offset: 0 }, ViewMut::new(&mut y, om))
            .unwrap();
        b.bn_relu_avgpool_conv1x1_wgrad(xv(), shape, View::new(&dout, om), AtMut::new(&mut dw, 0)).unwrap();
        b.bn_relu_avgpool_conv1x1_dgrad(
            View::new(&dout, om),
            At { buf: &w, offset: 0 },
            xv(),
            shape,
            dxv,
            &mut sums,
        )
        .unwrap();
    } else {
        b.bn_relu_conv1x1_fwd(xv(), At { buf: &w, offset: 0 }, ViewMut::new(&mut y, om)).unwrap();
        b.bn_relu_conv1x1_wgrad(xv(), View::new(&dout, om), AtMut::new(&mut dw, 0)).unwrap();
        b.bn_relu_conv1x1_dgrad(View::new(&dout, om), At { buf: &w, offset: 0 }, xv(), dxv, false, &mut sums)
            .unwrap();
    }
    let down = |buf: &B::Buf, n: usize| b.download(buf, 0, n).unwrap();
    [down(&y, rows_out * cout), down(&dw, cout * cin), magnitudes(&down(&dx, rows * cin), abs)]
}

/// (shape, c_in, c_out) with a GEMM depth from 5 to 4551 (the bottleneck wgrad over 3 × 37×41
/// pixels).
const SHAPES: [(Spatial, usize, usize); 3] = [
    (Spatial { n: 3, h: 7, w: 5 }, 13, 37),
    (Spatial { n: 3, h: 37, w: 41 }, 70, 48),
    (Spatial { n: 3, h: 15, w: 7 }, 130, 72),
];

/// Which of an op's three outputs (forward, weight gradient, data gradient) are activations,
/// stored in the precision's format; the weight gradient stays f32.
const STORED: [bool; 3] = [true, false, true];

fn family<D: Device>(device: &KernelBackend<D>, pooled: bool, seed: u64) {
    let precision = device.precision();
    assert_ne!(precision, Precision::Fp32);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cpu = CpuBackend::new();
    let name = if pooled { "transition" } else { "conv1x1" };
    for (shape, cin, cout) in SHAPES {
        let rows_out = if pooled { shape.n * (shape.h / 2) * (shape.w / 2) } else { shape.pixels() };
        let i = Inputs::random(&mut rng, shape.pixels(), rows_out, cin, cout, 1).stored_as(precision);
        let rounded = run(device, &i, shape, pooled, cin, cout, false);
        let fp32 = run(&cpu, &i, shape, pooled, cin, cout, false);
        let abs = run(&cpu, &i, shape, pooled, cin, cout, true);
        // The reduction depth of each GEMM (the pooled input's four taps are added before the
        // rounding, so they do not deepen it).
        let depths = [cin, rows_out, cout];
        for (k, op) in ["fwd", "wgrad", "dgrad"].into_iter().enumerate() {
            let what = format!("{name} {op} {shape:?} {cin}->{cout}");
            check_bound(&what, precision, &rounded[k], &fp32[k], &abs[k], depths[k], STORED[k]);
        }
    }
}

fn conv1x1<D: Device>(device: &KernelBackend<D>) {
    family(device, false, 31);
}

fn transition<D: Device>(device: &KernelBackend<D>) {
    family(device, true, 32);
}

/// The dense layer's 3×3 convolution (stride 1, padding 1, same spatial size) on backend `b`:
/// forward, weight gradient from zero, and the data gradient g (masked by the ReLU, not
/// scaled); on |operands| when `abs`.
fn run_conv3x3<B: Backend>(b: &B, i: &Inputs, shape: Spatial, cin: usize, cout: usize, abs: bool) -> Outputs {
    let rows = shape.pixels();
    let (z, stats, params) = (upload_activation(b, &i.x), upload(b, &i.stats), upload(b, &i.params));
    let w = upload(b, &magnitudes(&i.w, abs));
    let dout = upload_activation(b, &magnitudes(&i.dout, abs));
    let zv = || View::new(&z, Mat::dense(0, rows, cin)).bn_relu(bn(&stats, &params, cin));
    let om = Mat::dense(0, rows, cout);
    let mut y = activation(b, rows * cout);
    let mut dw = b.alloc(9 * cout * cin, Category::Workspace).unwrap();
    let mut g = activation(b, rows * cin);
    let mut sums = b.alloc(2 * cin, Category::Workspace).unwrap();
    b.bn_relu_conv3x3_fwd(zv(), shape, At { buf: &w, offset: 0 }, ViewMut::new(&mut y, om)).unwrap();
    b.bn_relu_conv3x3_wgrad(zv(), shape, View::new(&dout, om), AtMut::new(&mut dw, 0)).unwrap();
    b.bn_relu_conv3x3_dgrad(
        View::new(&dout, om),
        shape,
        At { buf: &w, offset: 0 },
        zv(),
        ViewMut::new(&mut g, Mat::dense(0, rows, cin)),
        &mut sums,
    )
    .unwrap();
    let down = |buf: &B::Buf, n: usize| b.download(buf, 0, n).unwrap();
    [down(&y, rows * cout), down(&dw, 9 * cout * cin), down(&g, rows * cin)]
}

/// The stem's plain convolution of `geom` on backend `b`: forward, weight gradient from zero,
/// data gradient; on |operands| when `abs` (the input too: no ReLU makes it ≥ 0).
fn run_stem<B: Backend>(
    b: &B,
    i: &Inputs,
    shape: Spatial,
    geom: ConvGeom,
    cin: usize,
    cout: usize,
    abs: bool,
) -> Outputs {
    let (rows, out) = (shape.pixels(), geom.out(shape).pixels());
    let taps = geom.kernel * geom.kernel;
    let x = upload_activation(b, &magnitudes(&i.x, abs));
    let w = upload(b, &magnitudes(&i.w, abs));
    let dout = upload_activation(b, &magnitudes(&i.dout, abs));
    let (xm, om) = (Mat::dense(0, rows, cin), Mat::dense(0, out, cout));
    let mut y = activation(b, out * cout);
    let mut dw = b.alloc(taps * cout * cin, Category::Workspace).unwrap();
    let mut dx = activation(b, rows * cin);
    b.conv_fwd(View::new(&x, xm), shape, geom, At { buf: &w, offset: 0 }, ViewMut::new(&mut y, om)).unwrap();
    b.conv_wgrad(View::new(&x, xm), shape, geom, View::new(&dout, om), AtMut::new(&mut dw, 0)).unwrap();
    b.conv_dgrad(View::new(&dout, om), shape, geom, At { buf: &w, offset: 0 }, ViewMut::new(&mut dx, xm))
        .unwrap();
    let down = |buf: &B::Buf, n: usize| b.download(buf, 0, n).unwrap();
    [down(&y, out * cout), down(&dw, taps * cout * cin), down(&dx, rows * cin)]
}

fn conv3x3<D: Device>(device: &KernelBackend<D>) {
    let precision = device.precision();
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    let cpu = CpuBackend::new();
    // The bottleneck widths 4k → k of growth 12 and 32, and an odd one; batch 3.
    for (shape, cin, cout) in [
        (Spatial { n: 3, h: 7, w: 5 }, 20, 5),
        (Spatial { n: 3, h: 9, w: 11 }, 48, 12),
        (Spatial { n: 3, h: 8, w: 6 }, 128, 32),
    ] {
        let i = Inputs::random(&mut rng, shape.pixels(), shape.pixels(), cin, cout, 9).stored_as(precision);
        let rounded = run_conv3x3(device, &i, shape, cin, cout, false);
        let fp32 = run_conv3x3(&cpu, &i, shape, cin, cout, false);
        let abs = run_conv3x3(&cpu, &i, shape, cin, cout, true);
        let depths = [9 * cin, shape.pixels(), 9 * cout];
        for (k, op) in ["fwd", "wgrad", "dgrad"].into_iter().enumerate() {
            check_bound(
                &format!("conv3x3 {op} {shape:?} {cin}->{cout}"),
                precision,
                &rounded[k],
                &fp32[k],
                &abs[k],
                depths[k],
                STORED[k],
            );
        }
    }
}

fn stem<D: Device>(device: &KernelBackend<D>) {
    let precision = device.precision();
    let mut rng = ChaCha8Rng::seed_from_u64(34);
    let cpu = CpuBackend::new();
    // The CIFAR stem (3×3, stride 1) and the ImageNet one (7×7, stride 2, padding 3).
    for (shape, geom, cout) in [
        (Spatial { n: 3, h: 9, w: 7 }, ConvGeom { kernel: 3, stride: 1, pad: 1 }, 24),
        (Spatial { n: 3, h: 23, w: 19 }, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 16),
    ] {
        let cin = 3;
        let taps = geom.kernel * geom.kernel;
        let i = Inputs::random(&mut rng, shape.pixels(), geom.out(shape).pixels(), cin, cout, taps)
            .stored_as(precision);
        let rounded = run_stem(device, &i, shape, geom, cin, cout, false);
        let fp32 = run_stem(&cpu, &i, shape, geom, cin, cout, false);
        let abs = run_stem(&cpu, &i, shape, geom, cin, cout, true);
        let depths = [taps * cin, geom.out(shape).pixels(), taps * cout];
        for (k, op) in ["fwd", "wgrad", "dgrad"].into_iter().enumerate() {
            let what = format!("stem {op} {shape:?} {geom:?} 3->{cout}");
            if op == "wgrad" && precision.storage() == Dtype::Bf16 {
                check_unrounded(&what, &rounded[k], &fp32[k], &abs[k], depths[k]);
                continue;
            }
            check_bound(&what, precision, &rounded[k], &fp32[k], &abs[k], depths[k], STORED[k]);
        }
    }
}
