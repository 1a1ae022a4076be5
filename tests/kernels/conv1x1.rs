//! The fused 1×1 convolution kernels (`kernels/conv1x1.cu`), and the output checks the
//! transition's cases share.
//!
//! Tolerance: the harness's 1e-5 relative error also for these GEMM outputs. They sum at most
//! 4551 f32 products (the weight gradient over 3 × 37 × 41 pixels) in another order than the
//! cpu backend, which moves a sum by ~√K·2⁻²⁴ relative, ~4e-6 in the worst case and ~1e-7
//! typically; the ReLU masks are bit-identical (both use the same f32 pre-activation), so no
//! element is decided differently.

use crate::{Bench, Pair, TOL, bn_cpu, bn_emu, rel_error};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::{At, Backend, Mat};

crate::kernel_cases! {
    conv1x1_fwd => ["bn_relu_conv1x1_fwd_f32"],
    conv1x1_wgrad => ["bn_relu_conv1x1_wgrad_f32", "split_sum_f32"],
    conv1x1_dgrad => ["bn_relu_conv1x1_dgrad_f32", "tile_sums_finish_f32"],
}

/// (pixels, c_in, c_out): batch 3 of 7×5 images; 1×1 images; 3 × 37×41 pixels, more than one
/// 64 × 64 tile along the pixels and the input channels (the realistic bottleneck width 48);
/// and 3 × 15×7 pixels, more than one tile along every dimension. No count is a multiple of 8.
/// The wgrad reduction is split (and finished through the scratch) for 4551 pixels only, the
/// dgrad runs go through the scratch for 4551 and 315 pixels.
const SHAPES: [(usize, usize, usize); 4] = [(105, 13, 37), (3, 5, 12), (4551, 70, 48), (315, 130, 72)];

/// Offset of a weight inside its buffer.
pub const W_OFF: usize = 2;

/// A random `len`-float weight at [`W_OFF`] of a slightly larger buffer.
pub fn weights<D: Device>(b: &mut Bench<'_, D>, len: usize) -> Pair<D> {
    let v = b.uniform(W_OFF + len + 3, -1.0, 1.0);
    b.pair(&v)
}

/// A rows × cols output in the middle of a wider random storage (columns 4.. of a pitch of
/// cols + 9, starting at offset 3): everything around it must be left untouched.
pub fn wide_output<D: Device>(b: &mut Bench<'_, D>, rows: usize, cols: usize) -> (Pair<D>, Mat) {
    let m = Mat { offset: 3 + 4, rows, cols, ld: cols + 9 };
    let v = b.uniform(m.offset + rows.max(1) * m.ld, -3.0, 3.0);
    (b.pair(&v), m)
}

/// Compares the elements of `m` in both buffers (relative error ≤ [`TOL`]) and requires every
/// other element of the emu buffer to equal the cpu one bit for bit (both start equal and the
/// cpu backend writes inside `m` only). Returns the relative error.
pub fn check_mat<D: Device>(b: &Bench<'_, D>, what: &str, p: &Pair<D>, m: Mat) -> f64 {
    let emu = b.emu.download(&p.emu, 0, p.emu.len()).unwrap();
    let cpu = b.cpu.download(&p.cpu, 0, p.cpu.len()).unwrap();
    let inside = |i: usize| i >= m.offset && (i - m.offset) / m.ld < m.rows && (i - m.offset) % m.ld < m.cols;
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (i, (&e, &c)) in emu.iter().zip(&cpu).enumerate() {
        if inside(i) {
            got.push(e);
            want.push(c);
        } else {
            assert_eq!(e.to_bits(), c.to_bits(), "{what}: element {i} outside the output changed");
        }
    }
    assert_eq!(got.len(), m.rows * m.cols);
    report(what, &got, &want)
}

/// Compares `len` floats at `offset` (relative error ≤ [`TOL`]) and requires the rest of the
/// emu buffer to equal the cpu one bit for bit.
pub fn check_range<D: Device>(b: &Bench<'_, D>, what: &str, p: &Pair<D>, offset: usize, len: usize) -> f64 {
    check_mat(b, what, p, Mat::dense(offset, 1, len))
}

fn report(what: &str, got: &[f32], want: &[f32]) -> f64 {
    let err = rel_error(got, want);
    println!("{what}: relative error {err:.2e}");
    assert!(err <= TOL, "{what}: relative error {err:.3e} > {TOL:.0e}");
    err
}

/// A second pair holding the same values as `p` (its cpu side).
pub fn copy<D: Device>(b: &mut Bench<'_, D>, p: &Pair<D>) -> Pair<D> {
    let v = b.cpu.download(&p.cpu, 0, p.cpu.len()).unwrap();
    b.pair(&v)
}

/// Requires two emu buffers to hold the same bits: a rerun of a deterministic op.
pub fn assert_same_bits<D: Device>(b: &Bench<'_, D>, what: &str, first: &Pair<D>, second: &Pair<D>) {
    let one = b.emu.download(&first.emu, 0, first.emu.len()).unwrap();
    let two = b.emu.download(&second.emu, 0, second.emu.len()).unwrap();
    assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: a rerun differs");
}

fn conv1x1_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 11);
    for (rows, cin, cout) in SHAPES {
        let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let w = weights(&mut b, cout * cin);
        let (mut z, zm) = wide_output(&mut b, rows, cout);
        let w_cpu = At { buf: &w.cpu, offset: W_OFF };
        let w_emu = At { buf: &w.emu, offset: W_OFF };
        b.cpu.bn_relu_conv1x1_fwd(&x.cpu, xm, bn_cpu(&stats, &params, cin), w_cpu, &mut z.cpu, zm).unwrap();
        b.emu.bn_relu_conv1x1_fwd(&x.emu, xm, bn_emu(&stats, &params, cin), w_emu, &mut z.emu, zm).unwrap();
        check_mat(&b, &format!("conv1x1 fwd {rows}x{cin}->{cout}"), &z, zm);
    }
}

fn conv1x1_wgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 12);
    for (rows, cin, cout) in SHAPES {
        let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let (dz, dzm) = b.matrix(rows, cout, -1.0, 1.0);
        // dW starts non-zero: the op accumulates.
        let mut dw = weights(&mut b, cout * cin);
        let mut again = copy(&mut b, &dw);
        let bn = bn_emu(&stats, &params, cin);
        b.cpu
            .bn_relu_conv1x1_wgrad(&x.cpu, xm, bn_cpu(&stats, &params, cin), &dz.cpu, dzm, &mut dw.cpu, W_OFF)
            .unwrap();
        b.emu.bn_relu_conv1x1_wgrad(&x.emu, xm, bn, &dz.emu, dzm, &mut dw.emu, W_OFF).unwrap();
        let what = format!("conv1x1 wgrad {rows}x{cin}->{cout}");
        check_range(&b, &what, &dw, W_OFF, cout * cin);
        b.emu.bn_relu_conv1x1_wgrad(&x.emu, xm, bn, &dz.emu, dzm, &mut again.emu, W_OFF).unwrap();
        assert_same_bits(&b, &what, &dw, &again);
    }
}

fn conv1x1_dgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 13);
    for accumulate in [false, true] {
        for (rows, cin, cout) in SHAPES {
            let (dz, dzm) = b.matrix(rows, cout, -1.0, 1.0);
            let w = weights(&mut b, cout * cin);
            let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
            let (stats, params) = b.bn_buffers(cin);
            let (mut dx, dxm) = wide_output(&mut b, rows, cin);
            let sums = b.uniform(2 * cin + 3, -1.0, 1.0);
            let mut sums = b.pair(&sums);
            let (mut dx2, mut sums2) = (copy(&mut b, &dx), copy(&mut b, &sums));
            let w_emu = At { buf: &w.emu, offset: W_OFF };
            let bn = bn_emu(&stats, &params, cin);
            b.cpu
                .bn_relu_conv1x1_dgrad(
                    &dz.cpu,
                    dzm,
                    At { buf: &w.cpu, offset: W_OFF },
                    &x.cpu,
                    xm,
                    bn_cpu(&stats, &params, cin),
                    &mut dx.cpu,
                    dxm,
                    accumulate,
                    &mut sums.cpu,
                )
                .unwrap();
            b.emu
                .bn_relu_conv1x1_dgrad(
                    &dz.emu,
                    dzm,
                    w_emu,
                    &x.emu,
                    xm,
                    bn,
                    &mut dx.emu,
                    dxm,
                    accumulate,
                    &mut sums.emu,
                )
                .unwrap();
            let what = format!("conv1x1 dgrad {rows}x{cout}->{cin} accumulate {accumulate}");
            check_mat(&b, &format!("{what} dx"), &dx, dxm);
            check_range(&b, &format!("{what} sums"), &sums, 0, 2 * cin);
            // A rerun gives the same bits.
            b.emu
                .bn_relu_conv1x1_dgrad(
                    &dz.emu,
                    dzm,
                    w_emu,
                    &x.emu,
                    xm,
                    bn,
                    &mut dx2.emu,
                    dxm,
                    accumulate,
                    &mut sums2.emu,
                )
                .unwrap();
            assert_same_bits(&b, &format!("{what} dx"), &dx, &dx2);
            assert_same_bits(&b, &format!("{what} sums"), &sums, &sums2);
        }
    }
}
