//! The cpu backend's unfused ops.

use super::UnfusedOps;
use crate::backend::cpu::rows::{CHUNK_ROWS, chunk_bounds, par_blocks, reduce_rows, row, store_sums};
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf, resolve_stats};
use crate::backend::pool::cpu::{pool_out, window_max};
use crate::backend::{BnRef, Mat, PoolWindow, Spatial, StatsRef, View, ViewMut, relu, validate};
use crate::error::Result;

impl UnfusedOps for CpuBackend {
    fn copy_columns(&self, src: View<'_, CpuBuf>, dst: ViewMut<'_, CpuBuf>, accumulate: bool) -> Result<()> {
        validate::copy_columns(&src, &dst)?;
        let _timed = self.timed("unfused", "copy_columns", 0);
        let View { buf: src, mat: sm } = src;
        let ViewMut { buf: dst, mat: dm } = dst;
        copy_columns(src.f32s("source")?, sm, dst.f32s_mut("destination")?, dm, accumulate);
        Ok(())
    }

    fn bn_apply(&self, x: View<'_, CpuBuf>, bn: BnRef<'_, CpuBuf>, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::bn_apply(&x, bn, &y)?;
        let _timed = self.timed("unfused", "bn_apply", 0);
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, xm.cols)?;
        bn_apply(x.f32s("activations")?, xm, &bn, y.f32s_mut("outputs")?, ym);
        Ok(())
    }

    fn relu_fwd(&self, x: View<'_, CpuBuf>, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::relu_fwd(&x, &y)?;
        let _timed = self.timed("unfused", "relu_fwd", 0);
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        relu_fwd(x.f32s("activations")?, xm, y.f32s_mut("outputs")?, ym);
        Ok(())
    }

    fn relu_bwd(&self, g: ViewMut<'_, CpuBuf>, x: View<'_, CpuBuf>) -> Result<()> {
        validate::relu_bwd(&g, &x)?;
        let _timed = self.timed("unfused", "relu_bwd", 0);
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        relu_bwd(g.f32s_mut("gradients")?, gm, x.f32s("activations")?, xm);
        Ok(())
    }

    fn bn_grad_sums(
        &self,
        g: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        stats: StatsRef<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_grad_sums(&g, &x, stats, sums)?;
        let _timed = self.timed("unfused", "bn_grad_sums", 0);
        let View { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let (mean, invstd) = resolve_stats(stats, xm.cols)?;
        bn_grad_sums(
            g.f32s("gradients")?,
            gm,
            x.f32s("activations")?,
            xm,
            &mean,
            &invstd,
            sums.f32s_mut("BN sums")?,
        );
        Ok(())
    }

    fn avg_pool_fwd(
        &self,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::avg_pool_fwd(&x, shape, window, &y)?;
        let _timed = self.timed("unfused", "avg_pool_fwd", 0);
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        avg_pool_fwd(x.f32s("activations")?, xm, shape, window, y.f32s_mut("outputs")?, ym);
        Ok(())
    }

    fn avg_pool_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::avg_pool_bwd(&dy, shape, window, &dx)?;
        let _timed = self.timed("unfused", "avg_pool_bwd", 0);
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        avg_pool_bwd(dy.f32s("output gradients")?, dym, shape, window, dx.f32s_mut("input gradients")?, dxm);
        Ok(())
    }

    fn max_pool_fwd(&self, x: View<'_, CpuBuf>, shape: Spatial, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::max_pool_fwd(&x, shape, &y)?;
        let _timed = self.timed("unfused", "max_pool_fwd", 0);
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        max_pool_fwd(x.f32s("activations")?, xm, shape, y.f32s_mut("outputs")?, ym);
        Ok(())
    }

    fn max_pool_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::max_pool_bwd(&dy, &x, shape, &dx)?;
        let _timed = self.timed("unfused", "max_pool_bwd", 0);
        let View { buf: dy, mat: dym } = dy;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        max_pool_bwd(
            dy.f32s("output gradients")?,
            dym,
            x.f32s("activations")?,
            xm,
            shape,
            dx.f32s_mut("input gradients")?,
            dxm,
        );
        Ok(())
    }
}

pub(crate) fn copy_columns(src: &[f32], sm: Mat, dst: &mut [f32], dm: Mat, accumulate: bool) {
    par_blocks(dst, dm, &chunk_bounds(dm.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let s = row(src, sm, piece.first + r);
            let d = piece.row(r);
            if accumulate {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d += s);
            } else {
                d.copy_from_slice(s);
            }
        }
    });
}

pub(crate) fn bn_apply(x: &[f32], xm: Mat, bn: &Bn, y: &mut [f32], ym: Mat) {
    par_blocks(y, ym, &chunk_bounds(ym.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let xr = row(x, xm, piece.first + r);
            for (c, (o, &v)) in piece.row(r).iter_mut().zip(xr).enumerate() {
                // The fused ops' pre-activation, written the same way (no FMA contraction).
                *o = bn.a[c] * v + bn.b[c];
            }
        }
    });
}

pub(crate) fn relu_fwd(x: &[f32], xm: Mat, y: &mut [f32], ym: Mat) {
    par_blocks(y, ym, &chunk_bounds(ym.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let xr = row(x, xm, piece.first + r);
            piece.row(r).iter_mut().zip(xr).for_each(|(o, &v)| *o = relu(v));
        }
    });
}

pub(crate) fn relu_bwd(g: &mut [f32], gm: Mat, x: &[f32], xm: Mat) {
    par_blocks(g, gm, &chunk_bounds(gm.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let xr = row(x, xm, piece.first + r);
            // A NaN input passes no gradient, like an input ≤ 0.
            piece
                .row(r)
                .iter_mut()
                .zip(xr)
                .filter(|(_, v)| v.is_nan() || **v <= 0.0)
                .for_each(|(g, _)| *g = 0.0);
        }
    });
}

pub(crate) fn bn_grad_sums(
    g: &[f32],
    gm: Mat,
    x: &[f32],
    xm: Mat,
    mean: &[f32],
    invstd: &[f32],
    sums: &mut [f32],
) {
    let c = xm.cols;
    let totals = reduce_rows(gm.rows, 2 * c, |p, acc| {
        let (sum_g, sum_gx) = acc.split_at_mut(c);
        for (j, (&gv, &xv)) in row(g, gm, p).iter().zip(row(x, xm, p)).enumerate() {
            let x_hat = (f64::from(xv) - f64::from(mean[j])) * f64::from(invstd[j]);
            sum_g[j] += f64::from(gv);
            sum_gx[j] += f64::from(gv) * x_hat;
        }
    });
    store_sums(&mut sums[..2 * c], &totals);
}

/// Output pixel rows per parallel piece of a pooling op: about [`CHUNK_ROWS`] input pixels.
pub(crate) fn pool_piece(window: PoolWindow) -> usize {
    (CHUNK_ROWS / (window.h * window.w)).max(1)
}

pub(crate) fn avg_pool_fwd(x: &[f32], xm: Mat, shape: Spatial, window: PoolWindow, y: &mut [f32], ym: Mat) {
    let out = window.out(shape);
    let area = (window.h * window.w) as f64;
    par_blocks(y, ym, &chunk_bounds(ym.rows, pool_piece(window)), |piece, _| {
        let mut acc = vec![0.0f64; xm.cols];
        for r in 0..piece.rows {
            let q = piece.first + r;
            let (n, oy, ox) = (q / (out.h * out.w), q / out.w % out.h, q % out.w);
            acc.fill(0.0);
            for iy in oy * window.h..(oy + 1) * window.h {
                for ix in ox * window.w..(ox + 1) * window.w {
                    let xr = row(x, xm, (n * shape.h + iy) * shape.w + ix);
                    acc.iter_mut().zip(xr).for_each(|(a, &v)| *a += f64::from(v));
                }
            }
            piece.row(r).iter_mut().zip(&acc).for_each(|(o, a)| *o = (a / area) as f32);
        }
    });
}

pub(crate) fn avg_pool_bwd(
    dy: &[f32],
    dym: Mat,
    shape: Spatial,
    window: PoolWindow,
    dx: &mut [f32],
    dxm: Mat,
) {
    let out = window.out(shape);
    let area = (window.h * window.w) as f32;
    par_blocks(dx, dxm, &chunk_bounds(dxm.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let p = piece.first + r;
            let (n, iy, ix) = (p / (shape.h * shape.w), p / shape.w % shape.h, p % shape.w);
            let (oy, ox) = (iy / window.h, ix / window.w);
            let g = piece.row(r);
            if oy < out.h && ox < out.w {
                let d = row(dy, dym, (n * out.h + oy) * out.w + ox);
                g.iter_mut().zip(d).for_each(|(g, &d)| *g = d / area);
            } else {
                // Dropped by the pool.
                g.fill(0.0);
            }
        }
    });
}

pub(crate) fn max_pool_fwd(x: &[f32], xm: Mat, shape: Spatial, y: &mut [f32], ym: Mat) {
    par_blocks(y, ym, &chunk_bounds(ym.rows, CHUNK_ROWS), |piece, _| {
        let mut arg = vec![0; xm.cols];
        for r in 0..piece.rows {
            window_max(x, xm, shape, |_, v| v, piece.first + r, piece.row(r), &mut arg);
        }
    });
}

pub(crate) fn max_pool_bwd(
    dy: &[f32],
    dym: Mat,
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    dx: &mut [f32],
    dxm: Mat,
) {
    let cols = xm.cols;
    let (oh, ow) = pool_out(shape);
    let image = shape.h * shape.w;
    // Windows overlap, so the scatter accumulates: one image per work item keeps each
    // image's writes private to it and its additions in a fixed order.
    par_blocks(dx, dxm, &chunk_bounds(dxm.rows, image), |piece, _| {
        let n = piece.first / image;
        (0..piece.rows).for_each(|r| piece.row(r).fill(0.0));
        let (mut best, mut arg) = (vec![0.0; cols], vec![0; cols]);
        for q in n * oh * ow..(n + 1) * oh * ow {
            window_max(x, xm, shape, |_, v| v, q, &mut best, &mut arg);
            for (c, &d) in row(dy, dym, q).iter().enumerate() {
                piece.row(arg[c] - piece.first)[c] += d;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! Every op against plain f64 loops on odd shapes (batch 3, 7×5 and 23×19 images, 13
    //! channels), inputs and outputs at an offset with a pitch wider than the channels.
    //! Relative error ‖out − ref‖₂/‖ref‖₂ ≤ 1e-6: apart from the BN reductions (f64 inside)
    //! these ops are exact or one rounding away.
    use super::*;
    use crate::backend::BN_EPS;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const TOL: f64 = 1e-6;
    const C: usize = 13;
    const SHAPES: [Spatial; 2] = [Spatial { n: 3, h: 7, w: 5 }, Spatial { n: 3, h: 23, w: 19 }];

    /// A `rows × cols` matrix at offset 5 with pitch `cols + 3` in a buffer of random values
    /// (the gaps too, so that touching one shows).
    fn strided(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Vec<f32>, Mat) {
        let m = Mat { offset: 5, rows, cols, ld: cols + 3 };
        ((0..5 + rows * m.ld + 2).map(|_| rng.random_range(-2.0..2.0)).collect(), m)
    }

    fn at(buf: &[f32], m: Mat, p: usize, c: usize) -> f64 {
        f64::from(buf[m.at(p, c)])
    }

    /// Checks the elements of `m` in `out` against `reference` (dense, rows × cols) and that
    /// nothing outside `m` differs from `before`.
    fn check(what: &str, before: &[f32], out: &[f32], m: Mat, reference: &[f64]) {
        let (mut diff, mut norm) = (0.0, 0.0);
        let mut inside = vec![false; out.len()];
        for p in 0..m.rows {
            for c in 0..m.cols {
                let r = reference[p * m.cols + c];
                diff += (at(out, m, p, c) - r).powi(2);
                norm += r * r;
                inside[m.at(p, c)] = true;
            }
        }
        let e = (diff / norm).sqrt();
        assert!(norm > 0.0 && e <= TOL, "{what}: relative error {e:.2e}");
        for (i, ((b, a), inside)) in before.iter().zip(out).zip(inside).enumerate() {
            assert!(inside || b.to_bits() == a.to_bits(), "{what}: element {i} outside the output changed");
        }
    }

    /// Runs `op` on a copy of `out` whose elements in `m` are NaN (an output that must be
    /// overwritten) and checks the result.
    fn check_overwrite(what: &str, out: &[f32], m: Mat, reference: &[f64], op: impl FnOnce(&mut [f32])) {
        let mut poisoned = out.to_vec();
        (0..m.rows).for_each(|p| poisoned[m.at(p, 0)..][..m.cols].fill(f32::NAN));
        let before = poisoned.clone();
        op(&mut poisoned);
        check(what, &before, &poisoned, m, reference);
    }

    fn random_bn(rng: &mut ChaCha8Rng) -> Bn {
        let mean: Vec<f32> = (0..C).map(|_| rng.random_range(-0.5..0.5)).collect();
        let var: Vec<f32> = (0..C).map(|_| rng.random_range(0.5..2.0)).collect();
        let gamma: Vec<f32> = (0..C).map(|_| rng.random_range(-1.5..1.5)).collect();
        let beta: Vec<f32> = (0..C).map(|_| rng.random_range(-0.5..0.5)).collect();
        let (a, b) = crate::backend::bn_affine(&gamma, &beta, &mean, &var);
        let invstd = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
        Bn { a, b, mean, invstd }
    }

    #[test]
    fn pointwise_ops_match_f64_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for shape in SHAPES {
            let rows = shape.pixels();
            let (x, xm) = strided(&mut rng, rows, C);
            let (y, ym) = strided(&mut rng, rows, C);
            let bn = random_bn(&mut rng);
            let dense = |f: &dyn Fn(usize, usize) -> f64| -> Vec<f64> {
                (0..rows * C).map(|i| f(i / C, i % C)).collect()
            };

            let reference = dense(&|p, c| at(&x, xm, p, c));
            check_overwrite("copy_columns", &y, ym, &reference, |out| copy_columns(&x, xm, out, ym, false));
            let reference = dense(&|p, c| at(&x, xm, p, c) + at(&y, ym, p, c));
            let mut out = y.clone();
            copy_columns(&x, xm, &mut out, ym, true);
            check("copy_columns accumulate", &y, &out, ym, &reference);

            let pre = |p, c| f64::from(bn.a[c]) * at(&x, xm, p, c) + f64::from(bn.b[c]);
            check_overwrite("bn_apply", &y, ym, &dense(&pre), |out| bn_apply(&x, xm, &bn, out, ym));
            let reference = dense(&|p, c| at(&x, xm, p, c).max(0.0));
            check_overwrite("relu_fwd", &y, ym, &reference, |out| relu_fwd(&x, xm, out, ym));

            let reference = dense(&|p, c| if at(&x, xm, p, c) > 0.0 { at(&y, ym, p, c) } else { 0.0 });
            let mut g = y.clone();
            relu_bwd(&mut g, ym, &x, xm);
            check("relu_bwd", &y, &g, ym, &reference);
        }
    }

    #[test]
    fn bn_grad_sums_match_f64_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        for shape in SHAPES {
            let (x, xm) = strided(&mut rng, shape.pixels(), C);
            let (g, gm) = strided(&mut rng, shape.pixels(), C);
            let bn = random_bn(&mut rng);
            let mut reference = vec![0.0; 2 * C];
            for p in 0..xm.rows {
                for c in 0..C {
                    let x_hat = (at(&x, xm, p, c) - f64::from(bn.mean[c])) * f64::from(bn.invstd[c]);
                    reference[c] += at(&g, gm, p, c);
                    reference[C + c] += at(&g, gm, p, c) * x_hat;
                }
            }
            let mut sums = vec![f32::NAN; 2 * C + 1];
            bn_grad_sums(&g, gm, &x, xm, &bn.mean, &bn.invstd, &mut sums);
            assert!(sums[2 * C].is_nan(), "bn_grad_sums wrote past its 2·c sums");
            let out = Mat::dense(0, 1, 2 * C);
            check("bn_grad_sums", &sums, &sums, out, &reference);
        }
    }

    #[test]
    fn avg_pool_matches_f64_loops() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for shape in SHAPES {
            // 2×2 (odd sizes drop a row and a column), a non-square window, the global pool.
            for window in
                [PoolWindow { h: 2, w: 2 }, PoolWindow { h: 3, w: 2 }, PoolWindow { h: shape.h, w: shape.w }]
            {
                let out = window.out(shape);
                let (x, xm) = strided(&mut rng, shape.pixels(), C);
                let (y, ym) = strided(&mut rng, out.pixels(), C);
                let mut reference = vec![0.0; out.pixels() * C];
                let area = (window.h * window.w) as f64;
                for q in 0..out.pixels() {
                    let (n, oy, ox) = (q / (out.h * out.w), q / out.w % out.h, q % out.w);
                    for c in 0..C {
                        let mut s = 0.0;
                        for ky in 0..window.h {
                            for kx in 0..window.w {
                                let p = (n * shape.h + oy * window.h + ky) * shape.w + ox * window.w + kx;
                                s += at(&x, xm, p, c);
                            }
                        }
                        reference[q * C + c] = s / area;
                    }
                }
                let what = format!("avg_pool_fwd {window:?} on {shape:?}");
                check_overwrite(&what, &y, ym, &reference, |o| avg_pool_fwd(&x, xm, shape, window, o, ym));

                // Backward: the adjoint of the forward, checked element by element.
                let (dy, dym) = strided(&mut rng, out.pixels(), C);
                let (dx, dxm) = strided(&mut rng, shape.pixels(), C);
                let mut reference = vec![0.0; shape.pixels() * C];
                for q in 0..out.pixels() {
                    let (n, oy, ox) = (q / (out.h * out.w), q / out.w % out.h, q % out.w);
                    for ky in 0..window.h {
                        for kx in 0..window.w {
                            let p = (n * shape.h + oy * window.h + ky) * shape.w + ox * window.w + kx;
                            for c in 0..C {
                                reference[p * C + c] += at(&dy, dym, q, c) / area;
                            }
                        }
                    }
                }
                let what = format!("avg_pool_bwd {window:?} on {shape:?}");
                check_overwrite(&what, &dx, dxm, &reference, |o| {
                    avg_pool_bwd(&dy, dym, shape, window, o, dxm)
                });
            }
        }
    }

    #[test]
    fn max_pool_matches_f64_loops_with_first_maximum_ties() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        for shape in SHAPES {
            let out = Spatial { n: shape.n, h: pool_out(shape).0, w: pool_out(shape).1 };
            let (mut x, xm) = strided(&mut rng, shape.pixels(), C);
            // Values on a coarse grid make ties inside windows common.
            for p in 0..xm.rows {
                for c in 0..C {
                    x[xm.at(p, c)] = (x[xm.at(p, c)] * 2.0).round() / 2.0;
                }
            }
            let (y, ym) = strided(&mut rng, out.pixels(), C);
            let (dy, dym) = strided(&mut rng, out.pixels(), C);
            let (dx, dxm) = strided(&mut rng, shape.pixels(), C);
            let (mut fwd, mut bwd) = (vec![0.0; out.pixels() * C], vec![0.0; shape.pixels() * C]);
            for q in 0..out.pixels() {
                let (n, oy, ox) = (q / (out.h * out.w), q / out.w % out.h, q % out.w);
                for c in 0..C {
                    let mut best = (f64::NEG_INFINITY, usize::MAX);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((2 * oy + ky) as isize - 1, (2 * ox + kx) as isize - 1);
                            if iy < 0 || ix < 0 || iy >= shape.h as isize || ix >= shape.w as isize {
                                continue;
                            }
                            let p = (n * shape.h + iy as usize) * shape.w + ix as usize;
                            if at(&x, xm, p, c) > best.0 {
                                best = (at(&x, xm, p, c), p);
                            }
                        }
                    }
                    fwd[q * C + c] = best.0;
                    bwd[best.1 * C + c] += at(&dy, dym, q, c);
                }
            }
            check_overwrite("max_pool_fwd", &y, ym, &fwd, |o| max_pool_fwd(&x, xm, shape, o, ym));
            check_overwrite("max_pool_bwd", &dx, dxm, &bwd, |o| {
                max_pool_bwd(&dy, dym, &x, xm, shape, o, dxm)
            });
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let shape = Spatial { n: 3, h: 23, w: 19 };
        let (x, xm) = strided(&mut rng, shape.pixels(), C);
        let (g, gm) = strided(&mut rng, shape.pixels(), C);
        let bn = random_bn(&mut rng);
        let run = || {
            let mut sums = vec![0.0; 2 * C];
            bn_grad_sums(&g, gm, &x, xm, &bn.mean, &bn.invstd, &mut sums);
            let window = PoolWindow { h: shape.h, w: shape.w };
            let mut pooled = vec![0.0; shape.n * C];
            avg_pool_fwd(&x, xm, shape, window, &mut pooled, Mat::dense(0, shape.n, C));
            (sums, pooled)
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(run(), pool.install(run));
    }
}
