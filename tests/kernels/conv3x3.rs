//! The dense layer's fused BN-ReLU-conv3x3 kernels against the cpu backend: batch 3 of 7×5,
//! 1×1 and 1×6 images (padding on every side of every pixel), and 2×37×41 images, larger than
//! a block tile in every GEMM dimension; channel counts that are not multiples of 8 or of the
//! tiles, picked so that every tile variant of each kernel runs; inputs at an offset with a
//! pitch wider than their columns, outputs in the middle of a wider storage whose other
//! elements must keep their values bit for bit, dW starting non-zero.
//!
//! Tolerance: the default 1e-5 everywhere. The longest reduction is the weight gradient's,
//! over 3034 pixels, split in 12 blocks of 256 summed in double; f32 rounding over that many
//! terms stays near 1e-7 relative.

use crate::{Bench, W_OFF, bn_cpu, bn_emu};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, Category, Mat, Spatial};
use densenet::backend::{AtMut, View, ViewMut};

crate::kernel_cases! {
    conv3x3_fwd => ["bn_relu_conv3x3_fwd_f32"],
    conv3x3_wgrad => ["bn_relu_conv3x3_wgrad_f32", "split_sum_f32"],
    conv3x3_dgrad => ["bn_relu_conv3x3_dgrad_f32", "split_sum_f32"],
    conv3x3_gradients_repeat_bit_for_bit => ["bn_relu_conv3x3_wgrad_f32", "bn_relu_conv3x3_dgrad_f32"],
    conv3x3_fwd @ tf32 => ["bn_relu_conv3x3_fwd_tf32"],
    conv3x3_wgrad @ tf32 => ["bn_relu_conv3x3_wgrad_tf32", "split_sum_f32"],
    conv3x3_dgrad @ tf32 => ["bn_relu_conv3x3_dgrad_tf32", "split_sum_f32"],
    conv3x3_gradients_repeat_bit_for_bit @ tf32 => ["bn_relu_conv3x3_wgrad_tf32", "bn_relu_conv3x3_dgrad_tf32"],
    conv3x3_fwd @ bf16 => ["bn_relu_conv3x3_fwd_bf16"],
    conv3x3_wgrad @ bf16 => ["bn_relu_conv3x3_wgrad_bf16", "split_sum_f32"],
    conv3x3_dgrad @ bf16 => ["bn_relu_conv3x3_dgrad_bf16", "split_sum_f32"],
    conv3x3_gradients_repeat_bit_for_bit @ bf16 => ["bn_relu_conv3x3_wgrad_bf16", "bn_relu_conv3x3_dgrad_bf16"],
    conv3x3_rejects_inconsistent_shapes => [],
}

const fn s(n: usize, h: usize, w: usize) -> Spatial {
    Spatial { n, h, w }
}

/// (shape, c_in, c_out). Tile variants: forward N = c_out → 8 (5), 16 (12, 48), 32 (32);
/// data gradient N = c_in → 16 (13, 48), 8 (20, 37), 32 (57); weight gradient c_out tiles
/// 8, 16, 32 as the forward.
const CASES: [(Spatial, usize, usize); 6] = [
    (s(3, 7, 5), 13, 5),
    (s(3, 1, 1), 20, 12),
    (s(3, 1, 6), 37, 32),
    (s(3, 7, 5), 57, 12),
    (s(2, 37, 41), 37, 48),
    (s(2, 37, 41), 48, 32),
];

fn conv3x3_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 31);
    for (shape, c_in, c_out) in CASES {
        let p = shape.pixels();
        let (z, zm) = b.matrix(p, c_in, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c_in);
        let w = b.weights(c_out * 9 * c_in);
        let (mut y, ym) = b.storage(p, c_out);
        let (wc, we) = (At { buf: &w.cpu, offset: W_OFF }, At { buf: &w.emu, offset: W_OFF });
        b.cpu
            .bn_relu_conv3x3_fwd(
                View::new(&z.cpu, zm).bn_relu(bn_cpu(&stats, &params, c_in)),
                shape,
                wc,
                ViewMut::new(&mut y.cpu, ym),
            )
            .unwrap();
        b.emu
            .bn_relu_conv3x3_fwd(
                View::new(&z.emu, zm).bn_relu(bn_emu(&stats, &params, c_in)),
                shape,
                we,
                ViewMut::new(&mut y.emu, ym),
            )
            .unwrap();
        b.check(&format!("conv3x3 fwd {shape:?} {c_in}->{c_out}"), &y, &[ym]);
    }
}

fn conv3x3_wgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 32);
    for (shape, c_in, c_out) in CASES {
        let p = shape.pixels();
        let (z, zm) = b.matrix(p, c_in, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c_in);
        let (dy, dym) = b.matrix(p, c_out, -1.0, 1.0);
        let len = c_out * 9 * c_in;
        // dW starts non-zero: the op accumulates.
        let mut dw = b.weights(len);
        b.cpu
            .bn_relu_conv3x3_wgrad(
                View::new(&z.cpu, zm).bn_relu(bn_cpu(&stats, &params, c_in)),
                shape,
                View::new(&dy.cpu, dym),
                AtMut::new(&mut dw.cpu, W_OFF),
            )
            .unwrap();
        b.emu
            .bn_relu_conv3x3_wgrad(
                View::new(&z.emu, zm).bn_relu(bn_emu(&stats, &params, c_in)),
                shape,
                View::new(&dy.emu, dym),
                AtMut::new(&mut dw.emu, W_OFF),
            )
            .unwrap();
        b.check(&format!("conv3x3 wgrad {shape:?} {c_in}->{c_out}"), &dw, &[Mat::dense(W_OFF, 1, len)]);
    }
}

fn conv3x3_dgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 33);
    for (shape, c_in, c_out) in CASES {
        let p = shape.pixels();
        let (dy, dym) = b.matrix(p, c_out, -1.0, 1.0);
        let w = b.weights(c_out * 9 * c_in);
        let (z, zm) = b.matrix(p, c_in, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c_in);
        let (mut g, gm) = b.storage(p, c_in);
        let sums_m = Mat::dense(0, 1, 2 * c_in);
        let mut sums = b.poisoned(2 * c_in + 4, &[sums_m], -1.0, 1.0);
        let (wc, we) = (At { buf: &w.cpu, offset: W_OFF }, At { buf: &w.emu, offset: W_OFF });
        let bc = bn_cpu(&stats, &params, c_in);
        b.cpu
            .bn_relu_conv3x3_dgrad(
                View::new(&dy.cpu, dym),
                shape,
                wc,
                View::new(&z.cpu, zm).bn_relu(bc),
                ViewMut::new(&mut g.cpu, gm),
                &mut sums.cpu,
            )
            .unwrap();
        let be = bn_emu(&stats, &params, c_in);
        b.emu
            .bn_relu_conv3x3_dgrad(
                View::new(&dy.emu, dym),
                shape,
                we,
                View::new(&z.emu, zm).bn_relu(be),
                ViewMut::new(&mut g.emu, gm),
                &mut sums.emu,
            )
            .unwrap();
        let what = format!("conv3x3 dgrad {shape:?} {c_out}->{c_in}");
        b.check(&format!("{what} g"), &g, &[gm]);
        b.check(&format!("{what} sums"), &sums, &[sums_m]);
    }
}

/// The gradients reduce over pixels through per-split partials, never float atomics: two runs
/// give the same bits (blocks of the emulator run on several threads in varying order).
fn conv3x3_gradients_repeat_bit_for_bit<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 34);
    let (shape, c_in, c_out) = (s(2, 37, 41), 37, 12);
    let p = shape.pixels();
    let (z, zm) = b.matrix(p, c_in, -2.0, 2.0);
    let (stats, params) = b.bn_buffers(c_in);
    let (dy, dym) = b.matrix(p, c_out, -1.0, 1.0);
    let w = b.uniform(c_out * 9 * c_in, -1.0, 1.0);
    let w = b.pair(&w);
    let bn = bn_emu(&stats, &params, c_in);
    let run = || {
        let mut dw = b.emu.alloc(c_out * 9 * c_in, Category::Workspace).unwrap();
        b.emu
            .bn_relu_conv3x3_wgrad(
                View::new(&z.emu, zm).bn_relu(bn),
                shape,
                View::new(&dy.emu, dym),
                AtMut::new(&mut dw, 0),
            )
            .unwrap();
        let gm = Mat::dense(0, p, c_in);
        let mut g = b.emu.alloc_as(p * c_in, b.activations, Category::Workspace).unwrap();
        let mut sums = b.emu.alloc(2 * c_in, Category::Workspace).unwrap();
        let wa = At { buf: &w.emu, offset: 0 };
        b.emu
            .bn_relu_conv3x3_dgrad(
                View::new(&dy.emu, dym),
                shape,
                wa,
                View::new(&z.emu, zm).bn_relu(bn),
                ViewMut::new(&mut g, gm),
                &mut sums,
            )
            .unwrap();
        [&dw, &g, &sums].map(|buf| {
            b.emu.download(buf, 0, buf.len()).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        })
    };
    assert!(run() == run(), "conv3x3 gradients differ between two runs");
}

fn conv3x3_rejects_inconsistent_shapes<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 35);
    let shape = s(1, 3, 4);
    let (x, xm) = b.matrix(12, 5, -1.0, 1.0);
    let (stats, params) = b.bn_buffers(5);
    let bn = bn_emu(&stats, &params, 5);
    let w = b.pair(&vec![0.5; 2 * 9 * 5]);
    let wa = At { buf: &w.emu, offset: 0 };
    let mut y = b.emu.alloc(12 * 2, Category::Workspace).unwrap();
    let ym = Mat::dense(0, 12, 2);
    // Rows that are not the pixels of the shape, a weight buffer one short, too many channels.
    assert!(
        b.emu
            .bn_relu_conv3x3_fwd(View::new(&x.emu, xm).bn_relu(bn), s(1, 3, 5), wa, ViewMut::new(&mut y, ym))
            .is_err()
    );
    assert!(
        b.emu
            .bn_relu_conv3x3_fwd(
                View::new(&x.emu, xm).bn_relu(bn),
                shape,
                At { buf: &w.emu, offset: 1 },
                ViewMut::new(&mut y, ym)
            )
            .is_err()
    );
    let (wide, wm) = b.matrix(12, 1025, -1.0, 1.0);
    let (stats_w, params_w) = b.bn_buffers(1025);
    let wide_w = b.pair(&vec![0.5; 2 * 9 * 1025]);
    let wide_bn = bn_emu(&stats_w, &params_w, 1025);
    let err = b.emu.bn_relu_conv3x3_fwd(
        View::new(&wide.emu, wm).bn_relu(wide_bn),
        shape,
        At { buf: &wide_w.emu, offset: 0 },
        ViewMut::new(&mut y, ym),
    );
    assert!(err.is_err());
    // The data gradient's sums must hold 2·c_in values.
    let mut g = b.emu.alloc(12 * 5, Category::Workspace).unwrap();
    let mut sums = b.emu.alloc(2 * 5 - 1, Category::Workspace).unwrap();
    let dy = b.emu.alloc(12 * 2, Category::Workspace).unwrap();
    let gm = Mat::dense(0, 12, 5);
    assert!(
        b.emu
            .bn_relu_conv3x3_dgrad(
                View::new(&dy, ym),
                shape,
                wa,
                View::new(&x.emu, xm).bn_relu(bn),
                ViewMut::new(&mut g, gm),
                &mut sums
            )
            .is_err()
    );
}
