//! The transition kernels (`kernels/transition.cu`): BN-ReLU-AvgPool2-Conv1x1 and its gradients.
//! Tolerance as for the 1×1 convolutions (see `conv1x1.rs`): the pooled GEMM input is
//! bit-identical to the host's, the GEMMs differ in summation order only.

use crate::conv1x1::{assert_same_bits, copy};
use crate::{Bench, W_OFF, bn_cpu, bn_emu};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, Mat, Spatial};
use densenet::backend::{AtMut, View, ViewMut};

crate::kernel_cases! {
    transition_fwd => ["bn_relu_avgpool_conv1x1_fwd_f32", "bn_affine_f32"],
    transition_wgrad => ["bn_relu_avgpool_conv1x1_wgrad_f32", "split_sum_f32"],
    transition_dgrad => ["bn_relu_avgpool_conv1x1_dgrad_f32", "tile_sums_finish_f32"],
    transition_fwd @ tf32 => ["bn_relu_avgpool_conv1x1_fwd_tf32", "bn_affine_f32"],
    transition_wgrad @ tf32 => ["bn_relu_avgpool_conv1x1_wgrad_tf32", "split_sum_f32"],
    transition_dgrad @ tf32 => ["bn_relu_avgpool_conv1x1_dgrad_tf32", "tile_sums_finish_f32"],
    transition_fwd @ bf16 => ["bn_relu_avgpool_conv1x1_fwd_bf16", "bn_affine_f32"],
    transition_wgrad @ bf16 => ["bn_relu_avgpool_conv1x1_wgrad_bf16", "split_sum_f32"],
    transition_dgrad @ bf16 => ["bn_relu_avgpool_conv1x1_dgrad_bf16", "tile_sums_finish_f32"],
}

/// (input shape, c_in, c_out): odd height and width, even height and odd width, odd height and
/// even width (the pool drops the odd last row/column), images too small to pool (1×1, 1×3:
/// nothing survives), and 3 × 37×41 → 3 × 18×20 with 70 → 72 channels, more than one 64 × 64
/// tile along every dimension (the wgrad is split and the dgrad runs go through the scratch).
const SHAPES: [(Spatial, usize, usize); 6] = [
    (Spatial { n: 3, h: 7, w: 5 }, 13, 7),
    (Spatial { n: 3, h: 6, w: 7 }, 37, 18),
    (Spatial { n: 3, h: 9, w: 6 }, 5, 12),
    (Spatial { n: 3, h: 1, w: 1 }, 13, 6),
    (Spatial { n: 2, h: 1, w: 3 }, 5, 4),
    (Spatial { n: 3, h: 37, w: 41 }, 70, 72),
];

/// Shapes run with [`Bench::aligned`] layouts (see `conv1x1.rs`): an odd height and width with
/// 20 channels (a partial last group in a step), and two channel tiles of 68.
const ALIGNED_SHAPES: [(Spatial, usize, usize); 2] =
    [(Spatial { n: 3, h: 7, w: 9 }, 20, 12), (Spatial { n: 2, h: 10, w: 13 }, 68, 36)];

/// `SHAPES` in the odd layouts, then `ALIGNED_SHAPES` in aligned ones.
fn layouts() -> impl Iterator<Item = (bool, (Spatial, usize, usize))> {
    SHAPES.into_iter().map(|s| (false, s)).chain(ALIGNED_SHAPES.into_iter().map(|s| (true, s)))
}

fn pooled(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: s.h / 2, w: s.w / 2 }
}

fn transition_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 21);
    for (aligned, (s, cin, cout)) in layouts() {
        b.aligned = aligned;
        let (x, xm) = b.matrix(s.pixels(), cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let w = b.weights(cout * cin);
        let (mut y, ym) = b.storage(pooled(s).pixels(), cout);
        let w_cpu = At { buf: &w.cpu, offset: b.w_off() };
        let w_emu = At { buf: &w.emu, offset: b.w_off() };
        b.cpu
            .bn_relu_avgpool_conv1x1_fwd(
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                s,
                w_cpu,
                ViewMut::new(&mut y.cpu, ym),
            )
            .unwrap();
        b.emu
            .bn_relu_avgpool_conv1x1_fwd(
                View::new(&x.emu, xm).bn_relu(bn_emu(&stats, &params, cin)),
                s,
                w_emu,
                ViewMut::new(&mut y.emu, ym),
            )
            .unwrap();
        b.check(&format!("transition fwd {s:?} {cin}->{cout} aligned {aligned}"), &y, &[ym]);
    }
}

fn transition_wgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 22);
    for (s, cin, cout) in SHAPES {
        let (x, xm) = b.matrix(s.pixels(), cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        let (dy, dym) = b.matrix(pooled(s).pixels(), cout, -1.0, 1.0);
        // dW starts non-zero: the op accumulates.
        let mut dw = b.weights(cout * cin);
        let mut again = copy(&mut b, &dw);
        let bn = bn_emu(&stats, &params, cin);
        b.cpu
            .bn_relu_avgpool_conv1x1_wgrad(
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                s,
                View::new(&dy.cpu, dym),
                AtMut::new(&mut dw.cpu, W_OFF),
            )
            .unwrap();
        b.emu
            .bn_relu_avgpool_conv1x1_wgrad(
                View::new(&x.emu, xm).bn_relu(bn),
                s,
                View::new(&dy.emu, dym),
                AtMut::new(&mut dw.emu, W_OFF),
            )
            .unwrap();
        let what = format!("transition wgrad {s:?} {cin}->{cout}");
        b.check(&what, &dw, &[Mat::dense(W_OFF, 1, cout * cin)]);
        b.emu
            .bn_relu_avgpool_conv1x1_wgrad(
                View::new(&x.emu, xm).bn_relu(bn),
                s,
                View::new(&dy.emu, dym),
                AtMut::new(&mut again.emu, W_OFF),
            )
            .unwrap();
        assert_same_bits(&b, &what, &dw, &again);
    }
}

fn transition_dgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 23);
    for (aligned, (s, cin, cout)) in layouts() {
        b.aligned = aligned;
        let (dy, dym) = b.matrix(pooled(s).pixels(), cout, -1.0, 1.0);
        let w = b.weights(cout * cin);
        let (x, xm) = b.matrix(s.pixels(), cin, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(cin);
        // dx starts random: every element of it must be overwritten, zeros where the pool
        // dropped a row or column.
        let (mut dx, dxm) = b.storage(s.pixels(), cin);
        let sums_m = Mat::dense(0, 1, 2 * cin);
        let mut sums = b.poisoned(2 * cin + 3, &[sums_m], -1.0, 1.0);
        let (mut dx2, mut sums2) = (copy(&mut b, &dx), copy(&mut b, &sums));
        let w_emu = At { buf: &w.emu, offset: b.w_off() };
        let bn = bn_emu(&stats, &params, cin);
        b.cpu
            .bn_relu_avgpool_conv1x1_dgrad(
                View::new(&dy.cpu, dym),
                At { buf: &w.cpu, offset: b.w_off() },
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, cin)),
                s,
                ViewMut::new(&mut dx.cpu, dxm),
                &mut sums.cpu,
            )
            .unwrap();
        b.emu
            .bn_relu_avgpool_conv1x1_dgrad(
                View::new(&dy.emu, dym),
                w_emu,
                View::new(&x.emu, xm).bn_relu(bn),
                s,
                ViewMut::new(&mut dx.emu, dxm),
                &mut sums.emu,
            )
            .unwrap();
        let what = format!("transition dgrad {s:?} {cout}->{cin} aligned {aligned}");
        b.check(&format!("{what} dx"), &dx, &[dxm]);
        b.check(&format!("{what} sums"), &sums, &[sums_m]);
        let got = b.emu.download(&dx.emu, 0, dx.emu.len()).unwrap();
        for p in 0..s.pixels() {
            let (iy, ix) = (p / s.w % s.h, p % s.w);
            if iy >= s.h / 2 * 2 || ix >= s.w / 2 * 2 {
                let row = &got[dxm.at(p, 0)..][..cin];
                assert!(row.iter().all(|&v| v == 0.0), "{what}: dropped pixel {p} not zeroed");
            }
        }
        // A rerun gives the same bits.
        b.emu
            .bn_relu_avgpool_conv1x1_dgrad(
                View::new(&dy.emu, dym),
                w_emu,
                View::new(&x.emu, xm).bn_relu(bn),
                s,
                ViewMut::new(&mut dx2.emu, dxm),
                &mut sums2.emu,
            )
            .unwrap();
        assert_same_bits(&b, &format!("{what} dx"), &dx, &dx2);
        assert_same_bits(&b, &format!("{what} sums"), &sums, &sums2);
    }
}
