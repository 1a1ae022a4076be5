//! Cases of `kernels/pool.cu`: the stem's BN-ReLU-max-pool and the head's BN-ReLU-global-pool
//! against the cpu backend, relative error ≤ `TOL` = 1e-5 (the max-pool's forward and its
//! gradient add the same f32 values in the same order as the host, so they come out exact;
//! the per-channel sums are f64 on both sides, added in different orders).
//!
//! Shapes: batch 3 of 7×5 and 9×6 images (max-pool windows clipped at odd edges), 1×1 images,
//! and 3 × 37×41 (4551 pixels: 36 partial-sum tiles); 13 and 37 channels. Outputs are a
//! column range of a wider storage whose other elements must stay untouched (`check_output`
//! checks them bit for bit), filled beforehand with garbage that must be overwritten.

use crate::{Bench, Pair, TOL, bn_cpu, bn_emu, rel_error};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::{Backend, Mat, Spatial};
use rand::Rng;

crate::kernel_cases! {
    bn_relu_maxpool => ["bn_relu_maxpool_fwd_f32", "bn_relu_maxpool_bwd_f32", "tile_sums_finish_f32"],
    bn_relu_global_pool => ["bn_relu_global_pool_fwd_f32", "bn_relu_global_pool_bwd_f32", "tile_sums_finish_f32"],
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

/// Columns [4, 4 + cols) of a random rows × (cols + 9) storage at offset 2, with 5 more floats
/// after it (so that it exists with 0 rows too): an output whose neighbours must stay untouched.
pub(crate) fn storage<D: Device>(b: &mut Bench<'_, D>, rows: usize, cols: usize) -> (Pair<D>, Mat) {
    let m = Mat { offset: 2 + 4, rows, cols, ld: cols + 9 };
    let values = b.uniform(2 + rows * m.ld + 5, -3.0, 3.0);
    (b.pair(&values), m)
}

/// A matrix like `Bench::matrix` whose values lie on the grid 0.5·{−4, …, 4}: windows then hold
/// ties, both above 0 and (after a BN-ReLU) at 0, so the first-maximum rule decides.
pub(crate) fn coarse<D: Device>(b: &mut Bench<'_, D>, rows: usize, cols: usize) -> (Pair<D>, Mat) {
    let m = Mat { offset: 3, rows, cols, ld: cols + 5 };
    let values: Vec<f32> =
        (0..3 + rows * m.ld + 2).map(|_| b.rng.random_range(-4i32..=4) as f32 * 0.5).collect();
    (b.pair(&values), m)
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

            let (mut y, ym) = storage(&mut b, out.pixels(), c);
            b.cpu.bn_relu_maxpool_fwd(&t.cpu, tm, shape, bn_cpu(&stats, &params, c), &mut y.cpu, ym).unwrap();
            b.emu.bn_relu_maxpool_fwd(&t.emu, tm, shape, bn_emu(&stats, &params, c), &mut y.emu, ym).unwrap();
            check_output(&b, &format!("bn_relu_maxpool_fwd {what}"), &y, ym);

            let (dy, dym) = b.matrix(out.pixels(), c, -1.0, 1.0);
            let (mut g, gm) = storage(&mut b, shape.pixels(), c);
            let mut sums = b.pair(&vec![7.0; 2 * c + 3]);
            b.cpu
                .bn_relu_maxpool_bwd(
                    &dy.cpu,
                    dym,
                    &t.cpu,
                    tm,
                    shape,
                    bn_cpu(&stats, &params, c),
                    &mut g.cpu,
                    gm,
                    &mut sums.cpu,
                )
                .unwrap();
            let mut run = || {
                b.emu
                    .bn_relu_maxpool_bwd(
                        &dy.emu,
                        dym,
                        &t.emu,
                        tm,
                        shape,
                        bn_emu(&stats, &params, c),
                        &mut g.emu,
                        gm,
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
            check_output(&b, &format!("bn_relu_maxpool_bwd g {what}"), &g, gm);
            check_output(&b, &format!("bn_relu_maxpool_bwd sums {what}"), &sums, Mat::dense(0, 1, 2 * c));
        }
    }
}

fn bn_relu_global_pool<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 22);
    for (shape, c) in SHAPES {
        let what = format!("{}x{}x{}x{c}", shape.n, shape.h, shape.w);
        let (x, xm) = b.matrix(shape.pixels(), c, -2.0, 2.0);
        let (stats, params) = b.bn_buffers(c);

        let mut pooled = b.pair(&vec![5.0; shape.n * c + 4]);
        b.cpu
            .bn_relu_global_pool_fwd(&x.cpu, xm, shape, bn_cpu(&stats, &params, c), &mut pooled.cpu)
            .unwrap();
        b.emu
            .bn_relu_global_pool_fwd(&x.emu, xm, shape, bn_emu(&stats, &params, c), &mut pooled.emu)
            .unwrap();
        check_output(&b, &format!("bn_relu_global_pool_fwd {what}"), &pooled, Mat::dense(0, shape.n, c));

        let dpooled = b.uniform(shape.n * c, -1.0, 1.0);
        let dpooled = b.pair(&dpooled);
        let (mut dx, dxm) = storage(&mut b, shape.pixels(), c);
        let mut sums = b.pair(&vec![7.0; 2 * c + 3]);
        b.cpu
            .bn_relu_global_pool_bwd(
                &dpooled.cpu,
                &x.cpu,
                xm,
                shape,
                bn_cpu(&stats, &params, c),
                &mut dx.cpu,
                dxm,
                &mut sums.cpu,
            )
            .unwrap();
        b.emu
            .bn_relu_global_pool_bwd(
                &dpooled.emu,
                &x.emu,
                xm,
                shape,
                bn_emu(&stats, &params, c),
                &mut dx.emu,
                dxm,
                &mut sums.emu,
            )
            .unwrap();
        check_output(&b, &format!("bn_relu_global_pool_bwd dx {what}"), &dx, dxm);
        check_output(&b, &format!("bn_relu_global_pool_bwd sums {what}"), &sums, Mat::dense(0, 1, 2 * c));
    }
}

/// Compares the elements of `m` in both copies of `p` (relative error ≤ TOL, printed) and
/// checks that every other element is bit-identical on both sides: the op left it untouched.
pub(crate) fn check_output<D: Device>(b: &Bench<'_, D>, what: &str, p: &Pair<D>, m: Mat) {
    let emu = b.emu.download(&p.emu, 0, p.cpu.len()).unwrap();
    let cpu = b.cpu.download(&p.cpu, 0, p.cpu.len()).unwrap();
    let mut inside = vec![false; cpu.len()];
    (0..m.rows).for_each(|r| inside[m.at(r, 0)..][..m.cols].fill(true));
    let pick = |v: &[f32], keep: bool| -> Vec<f32> {
        v.iter().zip(&inside).filter(|(_, i)| **i == keep).map(|(v, _)| *v).collect()
    };
    let err = rel_error(&pick(&emu, true), &pick(&cpu, true));
    println!("{what}: relative error {err:.2e}");
    assert!(err <= TOL, "{what}: relative error {err:.3e} > {TOL:.0e}");
    let changed =
        emu.iter().zip(&cpu).zip(&inside).filter(|((e, c), i)| !**i && e.to_bits() != c.to_bits()).count();
    assert_eq!(changed, 0, "{what}: {changed} elements outside the output differ");
}

/// The bit patterns of downloaded buffers (NaN-safe equality).
fn bits((g, sums): &(Vec<f32>, Vec<f32>)) -> Vec<u32> {
    g.iter().chain(sums).map(|v| v.to_bits()).collect()
}

/// The wrappers refuse, before launching anything, shapes their kernels would index out of
/// bounds with: rows that are not the shape's pixels, mismatched channels, short outputs.
#[cfg(feature = "cuda-emu")]
#[test]
fn pool_wrappers_reject_mismatched_shapes() {
    use densenet::backend::{BnRef, Category};
    use densenet::emu;
    let b = densenet::backend::cuda::EmuBackend::new().unwrap();
    let (shape, c) = (Spatial { n: 2, h: 5, w: 4 }, 3);
    let pooled_rows = 2 * 3 * 2;
    let t = b.alloc(shape.pixels() * c, Category::Workspace).unwrap();
    let stats = b.alloc(2 * c, Category::Workspace).unwrap();
    let bn = BnRef { stats: &stats, mean: 0, var: c, params: &stats, gamma: 0, beta: c };
    let mut y = b.alloc(shape.pixels() * c, Category::Workspace).unwrap();
    let mut sums = b.alloc(2 * c, Category::Workspace).unwrap();
    let tm = Mat::dense(0, shape.pixels(), c);
    emu::take_launches();
    assert!(b.bn_relu_maxpool_fwd(&t, tm, shape, bn, &mut y, Mat::dense(0, pooled_rows + 1, c)).is_err());
    assert!(
        b.bn_relu_maxpool_fwd(
            &t,
            Mat::dense(0, shape.pixels() - 1, c),
            shape,
            bn,
            &mut y,
            Mat::dense(0, pooled_rows, c)
        )
        .is_err()
    );
    assert!(b.bn_relu_maxpool_fwd(&t, tm, shape, bn, &mut y, Mat::dense(0, pooled_rows, c - 1)).is_err());
    let dy = Mat::dense(0, pooled_rows, c);
    assert!(
        b.bn_relu_maxpool_bwd(
            &t,
            dy,
            &t,
            tm,
            shape,
            bn,
            &mut y,
            Mat::dense(0, shape.pixels() - 1, c),
            &mut sums
        )
        .is_err()
    );
    let mut short = b.alloc(2 * c - 1, Category::Workspace).unwrap();
    assert!(b.bn_relu_maxpool_bwd(&t, dy, &t, tm, shape, bn, &mut y, tm, &mut short).is_err());
    assert!(b.bn_relu_global_pool_fwd(&t, tm, shape, bn, &mut short).is_err());
    assert!(
        b.bn_relu_global_pool_bwd(
            &t,
            &t,
            tm,
            shape,
            bn,
            &mut y,
            Mat::dense(0, shape.pixels(), c - 1),
            &mut sums
        )
        .is_err()
    );
    assert_eq!(emu::take_launches(), Vec::<&str>::new());
    b.bn_relu_maxpool_fwd(&t, tm, shape, bn, &mut y, Mat::dense(0, pooled_rows, c)).unwrap();
    assert_eq!(emu::take_launches(), vec!["bn_relu_maxpool_fwd_f32"]);
}
