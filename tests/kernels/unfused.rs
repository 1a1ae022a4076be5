//! Cases of `kernels/unfused.cu` (the baseline's ops) against the cpu backend, relative
//! error ≤ `TOL` = 1e-5 (all but `bn_grad_sums` and the average pool are exact or one identical
//! rounding away; those two sum in f64 on both sides, in different orders). Shapes as in
//! `pool.rs` (`SHAPES`); elementwise ops on 105 × 13 and 4551 × 37 matrices (36 partial-sum
//! tiles for `bn_grad_sums`). Outputs are column ranges of wider storages holding garbage
//! ([`Bench::storage`](crate::Bench::storage)).

use crate::pool::{SHAPES, coarse, stem_pool_out};
use crate::{Bench, bn_cpu, bn_emu};
use densenet::Dtype;
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{Mat, PoolWindow, StatsRef};
use densenet::backend::{View, ViewMut};
use rand::Rng;

crate::kernel_cases! {
    copy_columns => ["copy_columns_f32"],
    bn_apply_relu => ["bn_apply_f32", "relu_fwd_f32", "relu_bwd_f32"],
    bn_grad_sums => ["bn_grad_sums_f32", "tile_sums_finish_f32"],
    avg_pool => ["avg_pool_fwd_f32", "avg_pool_bwd_f32"],
    max_pool => ["max_pool_fwd_f32", "max_pool_bwd_f32"],
}

/// (rows, channels) of the elementwise cases.
const MATRICES: [(usize, usize); 2] = [(105, 13), (4551, 37)];

fn copy_columns<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 31);
    for (rows, c) in MATRICES {
        for accumulate in [false, true] {
            let (src, sm) = b.matrix(rows, c, -2.0, 2.0);
            let (mut dst, dm) = b.storage(rows, c);
            b.cpu.copy_columns(View::new(&src.cpu, sm), ViewMut::new(&mut dst.cpu, dm), accumulate).unwrap();
            b.emu.copy_columns(View::new(&src.emu, sm), ViewMut::new(&mut dst.emu, dm), accumulate).unwrap();
            b.check(&format!("copy_columns {rows}x{c} accumulate {accumulate}"), &dst, &[dm]);
        }
    }
}

fn bn_apply_relu<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 32);
    for (rows, c) in MATRICES {
        let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c);
        let (mut y, ym) = b.storage(rows, c);
        b.cpu
            .bn_apply(View::new(&x.cpu, xm), bn_cpu(&stats, &params, c), ViewMut::new(&mut y.cpu, ym))
            .unwrap();
        b.emu
            .bn_apply(View::new(&x.emu, xm), bn_emu(&stats, &params, c), ViewMut::new(&mut y.emu, ym))
            .unwrap();
        b.check(&format!("bn_apply {rows}x{c}"), &y, &[ym]);

        // ReLU input with exact zeros (±0) and NaNs besides the random values: the zeros give 0,
        // the NaNs pass through (as PyTorch), and the gradient of both is dropped.
        let x = b.fill(3 + rows * xm.ld + 2, &[xm], Dtype::F32, |rng, i| {
            if i % 7 == 0 { [0.0, -0.0, f32::NAN][i / 7 % 3] } else { rng.random_range(-1.0..1.0) }
        });
        let (mut r, rm) = b.storage(rows, c);
        b.cpu.relu_fwd(View::new(&x.cpu, xm), ViewMut::new(&mut r.cpu, rm)).unwrap();
        b.emu.relu_fwd(View::new(&x.emu, xm), ViewMut::new(&mut r.emu, rm)).unwrap();
        b.check(&format!("relu_fwd {rows}x{c}"), &r, &[rm]);

        let (mut g, gm) = b.storage(rows, c);
        b.cpu.relu_bwd(ViewMut::new(&mut g.cpu, gm), View::new(&x.cpu, xm)).unwrap();
        b.emu.relu_bwd(ViewMut::new(&mut g.emu, gm), View::new(&x.emu, xm)).unwrap();
        b.check(&format!("relu_bwd {rows}x{c}"), &g, &[gm]);
    }
}

fn bn_grad_sums<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 33);
    for (rows, c) in MATRICES {
        let (g, gm) = b.storage(rows, c);
        let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
        let (stats, _) = b.bn_buffers(c);
        let sums_m = Mat::dense(0, 1, 2 * c);
        let mut sums = b.poisoned(2 * c + 3, &[sums_m], 6.0, 8.0);
        let s_cpu = StatsRef { stats: &stats.cpu, mean: 0, var: c };
        let s_emu = StatsRef { stats: &stats.emu, mean: 0, var: c };
        b.cpu.bn_grad_sums(View::new(&g.cpu, gm), View::new(&x.cpu, xm), s_cpu, &mut sums.cpu).unwrap();
        b.emu.bn_grad_sums(View::new(&g.emu, gm), View::new(&x.emu, xm), s_emu, &mut sums.emu).unwrap();
        b.check(&format!("bn_grad_sums {rows}x{c}"), &sums, &[sums_m]);
    }
}

fn avg_pool<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 34);
    for (shape, c) in SHAPES {
        // 2×2 (odd extents drop a row or column), a non-square window, the global pool.
        for window in
            [PoolWindow { h: 2, w: 2 }, PoolWindow { h: 3, w: 2 }, PoolWindow { h: shape.h, w: shape.w }]
        {
            let what = format!("{}x{}x{}x{c} window {}x{}", shape.n, shape.h, shape.w, window.h, window.w);
            let out = window.out(shape);
            let (x, xm) = b.matrix(shape.pixels(), c, -2.0, 2.0);
            let (mut y, ym) = b.storage(out.pixels(), c);
            b.cpu.avg_pool_fwd(View::new(&x.cpu, xm), shape, window, ViewMut::new(&mut y.cpu, ym)).unwrap();
            b.emu.avg_pool_fwd(View::new(&x.emu, xm), shape, window, ViewMut::new(&mut y.emu, ym)).unwrap();
            b.check(&format!("avg_pool_fwd {what}"), &y, &[ym]);

            let (dy, dym) = b.matrix(out.pixels(), c, -1.0, 1.0);
            let (mut dx, dxm) = b.storage(shape.pixels(), c);
            b.cpu
                .avg_pool_bwd(View::new(&dy.cpu, dym), shape, window, ViewMut::new(&mut dx.cpu, dxm))
                .unwrap();
            b.emu
                .avg_pool_bwd(View::new(&dy.emu, dym), shape, window, ViewMut::new(&mut dx.emu, dxm))
                .unwrap();
            b.check(&format!("avg_pool_bwd {what}"), &dx, &[dxm]);
        }
    }
}

fn max_pool<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 35);
    for (shape, c) in SHAPES {
        for ties in [false, true] {
            let what = format!("{}x{}x{}x{c}{}", shape.n, shape.h, shape.w, if ties { " ties" } else { "" });
            let out = stem_pool_out(shape);
            let (x, xm) =
                if ties { coarse(&mut b, shape.pixels(), c) } else { b.matrix(shape.pixels(), c, -2.0, 2.0) };
            let (mut y, ym) = b.storage(out.pixels(), c);
            b.cpu.max_pool_fwd(View::new(&x.cpu, xm), shape, ViewMut::new(&mut y.cpu, ym)).unwrap();
            b.emu.max_pool_fwd(View::new(&x.emu, xm), shape, ViewMut::new(&mut y.emu, ym)).unwrap();
            b.check(&format!("max_pool_fwd {what}"), &y, &[ym]);

            let (dy, dym) = b.matrix(out.pixels(), c, -1.0, 1.0);
            let (mut dx, dxm) = b.storage(shape.pixels(), c);
            b.cpu
                .max_pool_bwd(
                    View::new(&dy.cpu, dym),
                    View::new(&x.cpu, xm),
                    shape,
                    ViewMut::new(&mut dx.cpu, dxm),
                )
                .unwrap();
            b.emu
                .max_pool_bwd(
                    View::new(&dy.emu, dym),
                    View::new(&x.emu, xm),
                    shape,
                    ViewMut::new(&mut dx.emu, dxm),
                )
                .unwrap();
            b.check(&format!("max_pool_bwd {what}"), &dx, &[dxm]);
        }
    }
}
