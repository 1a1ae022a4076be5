//! Cases of `kernels/pool.cu`: the stem's BN-ReLU-max-pool and the head's BN-ReLU-global-pool
//! against the cpu backend, relative error ≤ `TOL` = 1e-5 (the max-pool's forward and its
//! gradient add the same f32 values in the same order as the host, so they come out exact;
//! the per-channel sums are f64 on both sides, added in different orders).
//!
//! Shapes: batch 3 of 7×5 and 9×6 images (max-pool windows clipped at odd edges), 1×1 images,
//! and 3 × 37×41 (4551 pixels: 36 partial-sum tiles); 13 and 37 channels. Outputs are a
//! column range of a wider storage ([`Bench::storage`]) whose other elements must stay
//! untouched, filled beforehand with garbage that must be overwritten.

use crate::{Bench, Pair, bn_cpu, bn_emu};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{Mat, Spatial};
use densenet::backend::{View, ViewMut};
use rand::Rng;

crate::kernel_cases! {
    bn_relu_maxpool => ["bn_relu_maxpool_fwd_f32", "bn_relu_maxpool_bwd_f32", "tile_sums_finish_f32"],
    bn_relu_global_pool => ["bn_relu_global_pool_fwd_f32", "bn_relu_global_pool_bwd_f32", "tile_sums_finish_f32"],
    bn_relu_maxpool @ bf16 => ["bn_relu_maxpool_fwd_bf16", "bn_relu_maxpool_bwd_bf16", "tile_sums_finish_f32"],
    bn_relu_global_pool @ bf16 => ["bn_relu_global_pool_fwd_bf16", "bn_relu_global_pool_bwd_bf16", "tile_sums_finish_f32"],
}

/// (shape, channels) of every case here and in `unfused.rs`.
pub(crate) const SHAPES: [(Spatial, usize); 4] = [
    (Spatial { n: 3, h: 7, w: 5 }, 13),
    (Spatial { n: 3, h: 9, w: 6 }, 37),
    (Spatial { n: 3, h: 1, w: 1 }, 13),
    (Spatial { n: 3, h: 37, w: 41 }, 37),
];

/// Output extent of the stem max-pool (3×3, stride 2, padding 1).
pub(crate) fn stem_pool_out(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: (s.h - 1) / 2 + 1, w: (s.w - 1) / 2 + 1 }
}

/// A matrix like `Bench::matrix` whose values lie on the grid 0.5·{−4, …, 4}: windows then hold
/// ties, both above 0 and (after a BN-ReLU) at 0, so the first-maximum rule decides.
pub(crate) fn coarse<D: Device>(b: &mut Bench<'_, D>, rows: usize, cols: usize) -> (Pair<D>, Mat) {
    let m = Mat { offset: 3, rows, cols, ld: cols + 5 };
    (b.fill(3 + rows * m.ld + 2, &[m], b.activations, |rng, _| rng.random_range(-4i32..=4) as f32 * 0.5), m)
}

fn bn_relu_maxpool<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 21);
    for (shape, c) in SHAPES {
        for ties in [false, true] {
            let what = format!("{}x{}x{}x{c}{}", shape.n, shape.h, shape.w, if ties { " ties" } else { "" });
            let out = stem_pool_out(shape);
            let (t, tm) =
                if ties { coarse(&mut b, shape.pixels(), c) } else { b.matrix(shape.pixels(), c, -2.0, 2.0) };
            let (stats, params) = b.bn_buffers(c);

            let (mut y, ym) = b.storage(out.pixels(), c);
            b.cpu
                .bn_relu_maxpool_fwd(
                    View::new(&t.cpu, tm).bn_relu(bn_cpu(&stats, &params, c)),
                    shape,
                    ViewMut::new(&mut y.cpu, ym),
                )
                .unwrap();
            b.emu
                .bn_relu_maxpool_fwd(
                    View::new(&t.emu, tm).bn_relu(bn_emu(&stats, &params, c)),
                    shape,
                    ViewMut::new(&mut y.emu, ym),
                )
                .unwrap();
            b.check(&format!("bn_relu_maxpool_fwd {what}"), &y, &[ym]);

            let (dy, dym) = b.matrix(out.pixels(), c, -1.0, 1.0);
            let (mut g, gm) = b.storage(shape.pixels(), c);
            let sums_m = Mat::dense(0, 1, 2 * c);
            let mut sums = b.poisoned(2 * c + 3, &[sums_m], 6.0, 8.0);
            b.cpu
                .bn_relu_maxpool_bwd(
                    View::new(&dy.cpu, dym),
                    View::new(&t.cpu, tm).bn_relu(bn_cpu(&stats, &params, c)),
                    shape,
                    ViewMut::new(&mut g.cpu, gm),
                    &mut sums.cpu,
                )
                .unwrap();
            let mut run = || {
                b.emu
                    .bn_relu_maxpool_bwd(
                        View::new(&dy.emu, dym),
                        View::new(&t.emu, tm).bn_relu(bn_emu(&stats, &params, c)),
                        shape,
                        ViewMut::new(&mut g.emu, gm),
                        &mut sums.emu,
                    )
                    .unwrap();
                (
                    b.emu.download(&g.emu, 0, g.cpu.len()).unwrap(),
                    b.emu.download(&sums.emu, 0, sums.cpu.len()).unwrap(),
                )
            };
            let first = run();
            // No atomics: a second run gives the same bits.
            assert!(bits(&first) == bits(&run()), "bn_relu_maxpool_bwd {what}: not deterministic");
            b.check(&format!("bn_relu_maxpool_bwd g {what}"), &g, &[gm]);
            b.check(&format!("bn_relu_maxpool_bwd sums {what}"), &sums, &[sums_m]);
        }
    }
}

fn bn_relu_global_pool<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 22);
    for (shape, c) in SHAPES {
        let what = format!("{}x{}x{}x{c}", shape.n, shape.h, shape.w);
        let (x, xm) = b.matrix(shape.pixels(), c, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c);

        let pm = Mat::dense(0, shape.n, c);
        let mut pooled = b.poisoned(shape.n * c + 4, &[pm], 4.0, 6.0);
        b.cpu
            .bn_relu_global_pool_fwd(
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, c)),
                shape,
                &mut pooled.cpu,
            )
            .unwrap();
        b.emu
            .bn_relu_global_pool_fwd(
                View::new(&x.emu, xm).bn_relu(bn_emu(&stats, &params, c)),
                shape,
                &mut pooled.emu,
            )
            .unwrap();
        b.check(&format!("bn_relu_global_pool_fwd {what}"), &pooled, &[pm]);

        let dpooled = b.poisoned(shape.n * c, &[pm], -1.0, 1.0);
        let (mut dx, dxm) = b.storage(shape.pixels(), c);
        let sums_m = Mat::dense(0, 1, 2 * c);
        let mut sums = b.poisoned(2 * c + 3, &[sums_m], 6.0, 8.0);
        b.cpu
            .bn_relu_global_pool_bwd(
                &dpooled.cpu,
                View::new(&x.cpu, xm).bn_relu(bn_cpu(&stats, &params, c)),
                shape,
                ViewMut::new(&mut dx.cpu, dxm),
                &mut sums.cpu,
            )
            .unwrap();
        b.emu
            .bn_relu_global_pool_bwd(
                &dpooled.emu,
                View::new(&x.emu, xm).bn_relu(bn_emu(&stats, &params, c)),
                shape,
                ViewMut::new(&mut dx.emu, dxm),
                &mut sums.emu,
            )
            .unwrap();
        b.check(&format!("bn_relu_global_pool_bwd dx {what}"), &dx, &[dxm]);
        b.check(&format!("bn_relu_global_pool_bwd sums {what}"), &sums, &[sums_m]);
    }
}

/// The bit patterns of downloaded buffers (NaN-safe equality).
fn bits((g, sums): &(Vec<f32>, Vec<f32>)) -> Vec<u32> {
    g.iter().chain(sums).map(|v| v.to_bits()).collect()
}
