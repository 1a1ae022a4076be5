//! The stems' plain convolution kernels against the cpu backend: the CIFAR (3×3/1/1) and
//! ImageNet (7×7/2/3) geometries from 3 channels on batch 3 of 7×5, 1×1 and 1×6 images and on
//! 2×45×39 images (more output pixels, channels and GEMM-K columns than one block tile), and a
//! 2×2/2/0 kernel from 13 channels that drops the odd last row and column; inputs at an offset
//! with a pitch wider than their columns, outputs in the middle of a wider storage whose
//! other elements must keep their values, dW starting non-zero.
//!
//! Tolerance: the default 1e-5 (GEMM-K ≤ 147; the weight gradient sums up to 3510 pixels in 14
//! splits of 256, added in double).

use crate::{Bench, W_OFF};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, Category, ConvGeom, Mat, Spatial};
use densenet::backend::{AtMut, View, ViewMut};

crate::kernel_cases! {
    conv_fwd => ["conv_fwd_f32"],
    conv_wgrad => ["conv_wgrad_f32", "split_sum_f32"],
    conv_dgrad => ["conv_dgrad_f32"],
    conv_wgrad_repeats_bit_for_bit => ["conv_wgrad_f32", "split_sum_f32"],
    conv_fwd @ tf32 => ["conv_fwd_tf32"],
    conv_wgrad @ tf32 => ["conv_wgrad_tf32", "split_sum_f32"],
    conv_dgrad @ tf32 => ["conv_dgrad_tf32"],
    conv_wgrad_repeats_bit_for_bit @ tf32 => ["conv_wgrad_tf32", "split_sum_f32"],
    conv_fwd @ bf16 => ["conv_fwd_bf16"],
    conv_wgrad @ bf16 => ["conv_wgrad_bf16", "split_sum_f32"],
    conv_dgrad @ bf16 => ["conv_dgrad_bf16"],
    conv_wgrad_repeats_bit_for_bit @ bf16 => ["conv_wgrad_bf16", "split_sum_f32"],
    conv_rejects_unsupported_geometry => [],
}

const fn s(n: usize, h: usize, w: usize) -> Spatial {
    Spatial { n, h, w }
}

const CIFAR: ConvGeom = ConvGeom { kernel: 3, stride: 1, pad: 1 };
const IMAGENET: ConvGeom = ConvGeom { kernel: 7, stride: 2, pad: 3 };

/// (input shape, geometry, c_in, c_out).
const CASES: [(Spatial, ConvGeom, usize, usize); 7] = [
    (s(3, 7, 5), CIFAR, 3, 24),
    (s(3, 1, 1), IMAGENET, 3, 20),
    (s(3, 1, 6), CIFAR, 3, 5),
    (s(3, 1, 6), IMAGENET, 3, 12),
    (s(3, 7, 5), ConvGeom { kernel: 2, stride: 2, pad: 0 }, 13, 5),
    (s(2, 45, 39), IMAGENET, 3, 37),
    (s(2, 45, 39), CIFAR, 3, 13),
];

fn conv_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 41);
    for (shape, g, c_in, c_out) in CASES {
        let (x, xm) = b.matrix(shape.pixels(), c_in, -1.0, 1.0);
        let w = b.weights(c_out * g.kernel * g.kernel * c_in);
        let (mut y, ym) = b.storage(g.out(shape).pixels(), c_out);
        b.cpu
            .conv_fwd(
                View::new(&x.cpu, xm),
                shape,
                g,
                At { buf: &w.cpu, offset: W_OFF },
                ViewMut::new(&mut y.cpu, ym),
            )
            .unwrap();
        b.emu
            .conv_fwd(
                View::new(&x.emu, xm),
                shape,
                g,
                At { buf: &w.emu, offset: W_OFF },
                ViewMut::new(&mut y.emu, ym),
            )
            .unwrap();
        b.check(&format!("conv fwd {shape:?} {g:?} {c_in}->{c_out}"), &y, &[ym]);
    }
}

fn conv_wgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 42);
    for (shape, g, c_in, c_out) in CASES {
        let (x, xm) = b.matrix(shape.pixels(), c_in, -1.0, 1.0);
        let (dy, dym) = b.matrix(g.out(shape).pixels(), c_out, -1.0, 1.0);
        let len = c_out * g.kernel * g.kernel * c_in;
        // dW starts non-zero: the op accumulates.
        let mut dw = b.weights(len);
        b.cpu
            .conv_wgrad(
                View::new(&x.cpu, xm),
                shape,
                g,
                View::new(&dy.cpu, dym),
                AtMut::new(&mut dw.cpu, W_OFF),
            )
            .unwrap();
        b.emu
            .conv_wgrad(
                View::new(&x.emu, xm),
                shape,
                g,
                View::new(&dy.emu, dym),
                AtMut::new(&mut dw.emu, W_OFF),
            )
            .unwrap();
        b.check(&format!("conv wgrad {shape:?} {g:?} {c_in}->{c_out}"), &dw, &[Mat::dense(W_OFF, 1, len)]);
    }
}

fn conv_dgrad<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 43);
    for (shape, g, c_in, c_out) in CASES {
        let (dy, dym) = b.matrix(g.out(shape).pixels(), c_out, -1.0, 1.0);
        let w = b.weights(c_out * g.kernel * g.kernel * c_in);
        let (mut dx, dxm) = b.storage(shape.pixels(), c_in);
        let (wc, we) = (At { buf: &w.cpu, offset: W_OFF }, At { buf: &w.emu, offset: W_OFF });
        b.cpu.conv_dgrad(View::new(&dy.cpu, dym), shape, g, wc, ViewMut::new(&mut dx.cpu, dxm)).unwrap();
        b.emu.conv_dgrad(View::new(&dy.emu, dym), shape, g, we, ViewMut::new(&mut dx.emu, dxm)).unwrap();
        b.check(&format!("conv dgrad {shape:?} {g:?} {c_out}->{c_in}"), &dx, &[dxm]);
    }
}

/// Split partials added in a fixed order, never float atomics: two runs give the same bits.
fn conv_wgrad_repeats_bit_for_bit<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 44);
    let (shape, g, c_in, c_out) = (s(2, 45, 39), CIFAR, 3, 13);
    let (x, xm) = b.matrix(shape.pixels(), c_in, -1.0, 1.0);
    let (dy, dym) = b.matrix(g.out(shape).pixels(), c_out, -1.0, 1.0);
    let len = c_out * 9 * c_in;
    let run = || {
        let mut dw = b.emu.alloc(len, Category::Workspace).unwrap();
        b.emu
            .conv_wgrad(View::new(&x.emu, xm), shape, g, View::new(&dy.emu, dym), AtMut::new(&mut dw, 0))
            .unwrap();
        b.emu.download(&dw, 0, len).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    assert!(run() == run(), "conv_wgrad differs between two runs");
}

fn conv_rejects_unsupported_geometry<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 45);
    let shape = s(1, 4, 4);
    let (x, xm) = b.matrix(16, 3, -1.0, 1.0);
    let mut y = b.emu.alloc(16 * 2, Category::Workspace).unwrap();
    let ym = Mat::dense(0, 16, 2);
    let w = b.pair(&vec![0.5; 2 * 23 * 23 * 3]);
    let wa = At { buf: &w.emu, offset: 0 };
    // Stride 0, and an output with the wrong number of pixels (4×4/2 gives 2×2).
    assert!(
        b.emu
            .conv_fwd(
                View::new(&x.emu, xm),
                shape,
                ConvGeom { kernel: 3, stride: 0, pad: 1 },
                wa,
                ViewMut::new(&mut y, ym)
            )
            .is_err()
    );
    assert!(
        b.emu
            .conv_fwd(
                View::new(&x.emu, xm),
                shape,
                ConvGeom { kernel: 2, stride: 2, pad: 0 },
                wa,
                ViewMut::new(&mut y, ym)
            )
            .is_err()
    );
    // The data gradient stages k² ≤ 512 weight vectors per chunk: 23×23 is refused.
    let big = ConvGeom { kernel: 23, stride: 1, pad: 11 };
    let mut dx = b.emu.alloc(16 * 3, Category::Workspace).unwrap();
    assert!(
        b.emu
            .conv_dgrad(View::new(&y, ym), shape, big, wa, ViewMut::new(&mut dx, Mat::dense(0, 16, 3)))
            .is_err()
    );
}
