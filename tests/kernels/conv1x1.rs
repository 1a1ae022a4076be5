//! The fused 1×1 convolution kernels (`kernels/conv1x1.cu`), and the rerun checks the
//! transition's cases share.
//!
//! Tolerance: the harness's 1e-5 relative error also for these GEMM outputs. They sum at most
//! 4551 f32 products (the weight gradient over 3 × 37 × 41 pixels) in another order than the
//! cpu backend, which moves a sum by ~√K·2⁻²⁴ relative, ~4e-6 in the worst case and ~1e-7
//! typically; the ReLU masks are bit-identical (both use the same f32 pre-activation), so no
//! element is decided differently.

use crate::{Bench, Pair, W_OFF, bn_cpu, bn_emu};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, Mat};
use densenet::backend::{AtMut, View, ViewMut};

crate::kernel_cases! {
    conv1x1_fwd => ["bn_relu_conv1x1_fwd_f32", "bn_affine_f32"],
    conv1x1_wgrad => ["bn_relu_conv1x1_wgrad_f32", "split_sum_f32"],
    conv1x1_dgrad => ["bn_relu_conv1x1_dgrad_f32", "tile_sums_finish_f32"],
    conv1x1_fwd @ tf32 => ["bn_relu_conv1x1_fwd_tf32", "bn_affine_f32"],
    conv1x1_wgrad @ tf32 => ["bn_relu_conv1x1_wgrad_tf32", "split_sum_f32"],
    conv1x1_dgrad @ tf32 => ["bn_relu_conv1x1_dgrad_tf32", "tile_sums_finish_f32"],
    conv1x1_fwd @ bf16 => ["bn_relu_conv1x1_fwd_bf16", "bn_affine_f32"],
    conv1x1_wgrad @ bf16 => ["bn_relu_conv1x1_wgrad_bf16", "split_sum_f32"],
    conv1x1_dgrad @ bf16 => ["bn_relu_conv1x1_dgrad_bf16", "tile_sums_finish_f32"],
}

/// (pixels, c_in, c_out): batch 3 of 7×5 images; 1×1 images; 3 × 37×41 pixels, more than one
/// 64 × 64 tile along the pixels and the input channels (the realistic bottleneck width 48);
/// and 3 × 15×7 pixels, more than one tile along every dimension. No count is a multiple of 8.
/// The wgrad reduction is split (and finished through the scratch) for 4551 pixels only, the
/// dgrad runs go through the scratch for 4551 and 315 pixels.
const SHAPES: [(usize, usize, usize); 4] = [(105, 13, 37), (3, 5, 12), (4551, 70, 48), (315, 130, 72)];

/// Shapes run with [`Bench::aligned`] layouts, whose rows the fused GEMMs read four elements at
/// a time and the tensor-core forwards stage with cp.async: input channels that are multiples
/// of 4 (so W's rows are aligned too), one with a partial last step (20 = 16 + 4), one of
/// exactly as many steps as the forward's pipeline has stages (48) over two output-channel
/// tiles, and one whose 9 steps go round the stages three times.
const ALIGNED_SHAPES: [(usize, usize, usize); 3] = [(105, 20, 37), (130, 48, 70), (315, 132, 12)];

/// `SHAPES` in the odd layouts, then `ALIGNED_SHAPES` in aligned ones.
fn layouts() -> impl Iterator<Item = (bool, (usize, usize, usize))> {
    SHAPES.into_iter().map(|s| (false, s)).chain(ALIGNED_SHAPES.into_iter().map(|s| (true, s)))
}

/// A second pair holding the same values as `p` (its cpu side), of the same dtype.
pub fn copy<D: Device>(b: &mut Bench<'_, D>, p: &Pair<D>) -> Pair<D> {
    let v = b.cpu.download(&p.cpu, 0, p.cpu.len()).unwrap();
    b.pair_as(&v, p.emu.dtype())
}

/// Requires two emu buffers to hold the same bits: a rerun of a deterministic op.
pub fn assert_same_bits<D: Device>(b: &Bench<'_, D>, what: &str, first: &Pair<D>, second: &Pair<D>) {
    let one = b.emu.download(&first.emu, 0, first.emu.len()).unwrap();
    let two = b.emu.download(&second.emu, 0, second.emu.len()).unwrap();
    assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: a rerun differs");
}

/// The `len` weights of `w` (at [`Bench::w_off`]) in a new pair, one element past that offset,
/// and their offset there: W's rows misaligned, so that the tensor-core kernels take their
/// register-staged loops instead of the cp.async pipelines.
fn off_by_one<D: Device>(b: &mut Bench<'_, D>, w: &Pair<D>, len: usize) -> (Pair<D>, usize) {
    let off = b.w_off() + 1;
    let mut shifted = vec![0.0; off];
    shifted.extend(b.cpu.download(&w.cpu, b.w_off(), len).unwrap());
    (b.pair(&shifted), off)
}

fn conv1x1_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 11);
    for (aligned, (rows, cin, cout)) in layouts() {
        b.aligned = aligned;
        let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let w = b.weights(cout * cin);
        let (mut z, zm) = b.storage(rows, cout);
        let w_cpu = At { buf: &w.cpu, offset: b.w_off() };
        let w_emu = At { buf: &w.emu, offset: b.w_off() };
        b.cpu
            .bn_relu_conv1x1_fwd(
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                w_cpu,
                ViewMut::new(&mut z.cpu, zm),
            )
            .unwrap();
        b.emu
            .bn_relu_conv1x1_fwd(
                View::new(&x.emu, xm).bn_relu(bn_emu(&stats, &params, cin)),
                w_emu,
                ViewMut::new(&mut z.emu, zm),
            )
            .unwrap();
        let what = format!("conv1x1 fwd {rows}x{cin}->{cout} aligned {aligned}");
        b.check(&what, &z, &[zm]);
        if aligned {
            // The tensor cores' cp.async pipeline (taken above: x, W and the BN table aligned)
            // and their register-staged fallback (taken with W one element off its alignment)
            // give the same bits.
            let (w_off_by_one, off) = off_by_one(&mut b, &w, cout * cin);
            let mut z2 = copy(&mut b, &z);
            b.emu
                .bn_relu_conv1x1_fwd(
                    View::new(&x.emu, xm).bn_relu(bn_emu(&stats, &params, cin)),
                    At { buf: &w_off_by_one.emu, offset: off },
                    ViewMut::new(&mut z2.emu, zm),
                )
                .unwrap();
            assert_same_bits(&b, &format!("{what}, unaligned W"), &z, &z2);
        }
    }
}

fn conv1x1_wgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 12);
    for (rows, cin, cout) in SHAPES {
        let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let (dz, dzm) = b.matrix(rows, cout, -1.0, 1.0);
        // dW starts non-zero: the op accumulates.
        let mut dw = b.weights(cout * cin);
        let mut again = copy(&mut b, &dw);
        let bn = bn_emu(&stats, &params, cin);
        b.cpu
            .bn_relu_conv1x1_wgrad(
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                View::new(&dz.cpu, dzm),
                AtMut::new(&mut dw.cpu, W_OFF),
            )
            .unwrap();
        b.emu
            .bn_relu_conv1x1_wgrad(
                View::new(&x.emu, xm).bn_relu(bn),
                View::new(&dz.emu, dzm),
                AtMut::new(&mut dw.emu, W_OFF),
            )
            .unwrap();
        let what = format!("conv1x1 wgrad {rows}x{cin}->{cout}");
        b.check(&what, &dw, &[Mat::dense(W_OFF, 1, cout * cin)]);
        b.emu
            .bn_relu_conv1x1_wgrad(
                View::new(&x.emu, xm).bn_relu(bn),
                View::new(&dz.emu, dzm),
                AtMut::new(&mut again.emu, W_OFF),
            )
            .unwrap();
        assert_same_bits(&b, &what, &dw, &again);
    }
}

fn conv1x1_dgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 13);
    for accumulate in [false, true] {
        for (aligned, (rows, cin, cout)) in layouts() {
            b.aligned = aligned;
            let (dz, dzm) = b.matrix(rows, cout, -1.0, 1.0);
            let w = b.weights(cout * cin);
            let (x, xm) = b.matrix(rows, cin, -2.0, 2.0);
            let (stats, params) = b.bn_buffers(cin);
            let (mut dx, dxm) = b.storage(rows, cin);
            let sums_m = Mat::dense(0, 1, 2 * cin);
            let mut sums = b.poisoned(2 * cin + 3, &[sums_m], -1.0, 1.0);
            let (mut dx2, mut sums2) = (copy(&mut b, &dx), copy(&mut b, &sums));
            let w_emu = At { buf: &w.emu, offset: b.w_off() };
            let bn = bn_emu(&stats, &params, cin);
            b.cpu
                .bn_relu_conv1x1_dgrad(
                    View::new(&dz.cpu, dzm),
                    At { buf: &w.cpu, offset: b.w_off() },
                    View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                    ViewMut::new(&mut dx.cpu, dxm),
                    accumulate,
                    &mut sums.cpu,
                )
                .unwrap();
            b.emu
                .bn_relu_conv1x1_dgrad(
                    View::new(&dz.emu, dzm),
                    w_emu,
                    View::new(&x.emu, xm).bn_relu(bn),
                    ViewMut::new(&mut dx.emu, dxm),
                    accumulate,
                    &mut sums.emu,
                )
                .unwrap();
            let what =
                format!("conv1x1 dgrad {rows}x{cout}->{cin} accumulate {accumulate} aligned {aligned}");
            b.check(&format!("{what} dx"), &dx, &[dxm]);
            b.check(&format!("{what} sums"), &sums, &[sums_m]);
            // A rerun gives the same bits; in the aligned layouts the rerun's W is misaligned,
            // so that it compares the tensor cores' cp.async pipeline with their fallback.
            let (w_rerun, rerun_off) =
                if aligned { off_by_one(&mut b, &w, cout * cin) } else { (copy(&mut b, &w), b.w_off()) };
            b.emu
                .bn_relu_conv1x1_dgrad(
                    View::new(&dz.emu, dzm),
                    At { buf: &w_rerun.emu, offset: rerun_off },
                    View::new(&x.emu, xm).bn_relu(bn),
                    ViewMut::new(&mut dx2.emu, dxm),
                    accumulate,
                    &mut sums2.emu,
                )
                .unwrap();
            assert_same_bits(&b, &format!("{what} dx"), &dx, &dx2);
            assert_same_bits(&b, &format!("{what} sums"), &sums, &sums2);
        }
    }
}
