//! The cpu backend's pool ops.

use super::PoolOps;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::rows::{
    CHUNK_ROWS, Store, bn_relu, chunk_bounds, masked_row, par_blocks, row, scratch, store_sums, sum_in_order,
};
use crate::backend::cpu::simd::multiversioned;
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf};
use crate::backend::{BnReluView, Mat, Spatial, View, ViewMut, max_pool_takes, validate};
use crate::config::conv_out;
use crate::error::Result;
use rayon::prelude::*;

impl PoolOps for CpuBackend {
    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_maxpool_fwd(&t, shape, &y)?;
        let _timed = self.timed("pool", "bn_relu_maxpool_fwd", 0);
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, tm.cols)?;
        with_elems!({ bn_relu_maxpool_fwd(t, tm, shape, &bn, y, ym) } t = t, mut y = y);
        Ok(())
    }

    fn bn_relu_maxpool_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        t: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        g: ViewMut<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_maxpool_bwd(&dy, &t, shape, &g, sums)?;
        let _timed = self.timed("pool", "bn_relu_maxpool_bwd", 0);
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: g, mat: gm } = g;
        let bn = Bn::resolve(bn, tm.cols)?;
        with_elems!({
            bn_relu_maxpool_bwd(
                View::new(&dy[..], dym),
                View::new(&t[..], tm),
                shape,
                &bn,
                ViewMut::new(&mut g[..], gm),
                sums.f32s_mut("BN sums")?,
            )
        } t = t, dy = dy, mut g = g);
        Ok(())
    }

    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        pooled: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_global_pool_fwd(&x, shape, pooled)?;
        let _timed = self.timed("pool", "bn_relu_global_pool_fwd", 0);
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let bn = Bn::resolve(bn, xm.cols)?;
        let pooled = pooled.f32s_mut("pooled features")?;
        with_elems!({ bn_relu_global_pool_fwd(x, xm, shape, &bn, pooled) } x = x);
        Ok(())
    }

    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &CpuBuf,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        dx: ViewMut<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_global_pool_bwd(dpooled, &x, shape, &dx, sums)?;
        let _timed = self.timed("pool", "bn_relu_global_pool_bwd", 0);
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols)?;
        with_elems!({
            bn_relu_global_pool_bwd(
                dpooled.f32s("pooled-feature gradients")?,
                View::new(&x[..], xm),
                shape,
                &bn,
                ViewMut::new(&mut dx[..], dxm),
                sums.f32s_mut("BN sums")?,
            )
        } x = x, mut dx = dx);
        Ok(())
    }
}

/// Output height and width of the stem max-pool (3×3, stride 2, padding 1).
pub(crate) fn pool_out(shape: Spatial) -> (usize, usize) {
    (conv_out(shape.h, 3, 2, 1), conv_out(shape.w, 3, 2, 1))
}

multiversioned! {
    /// For output pixel `q` of the stem max-pool, the maximum of `act(c, t)` per channel (the
    /// fused op's `relu(a⊙t + b)`, or the plain max-pool's identity) into `best` and the input
    /// pixel holding it into `arg`. Padding never wins (−∞, as PyTorch); the first maximum in
    /// row-major window order is kept (replaced only by a strictly greater value), which is the
    /// element PyTorch's max-pool picks. Forward and backward both call this, so the backward
    /// routes the gradient to the forward's choice. `arg` starts at the window's first pixel, so
    /// it stays inside the window even where NaN inputs never compare greater.
    pub(crate) fn window_max<T: Elem>(
        t: &[T],
        tm: Mat,
        shape: Spatial,
        act: impl Fn(usize, f32) -> f32,
        q: usize,
        best: &mut [f32],
        arg: &mut [usize],
    ) {
        let (oh, ow) = pool_out(shape);
        let (n, oy, ox) = (q / (oh * ow), q / ow % oh, q % ow);
        let (y0, x0) = ((2 * oy).saturating_sub(1), (2 * ox).saturating_sub(1));
        best.fill(f32::NEG_INFINITY);
        arg.fill((n * shape.h + y0) * shape.w + x0);
        for iy in y0..(2 * oy + 2).min(shape.h) {
            for ix in x0..(2 * ox + 2).min(shape.w) {
                let p = (n * shape.h + iy) * shape.w + ix;
                // Slices cut to one length: no bounds checks in the loop.
                let (x, best, arg) = (&row(t, tm, p)[..tm.cols], &mut best[..tm.cols], &mut arg[..tm.cols]);
                for c in 0..tm.cols {
                    let v = act(c, x[c].get());
                    if max_pool_takes(v, best[c]) {
                        best[c] = v;
                        arg[c] = p;
                    }
                }
            }
        }
    }
}

pub(crate) fn bn_relu_maxpool_fwd<T: Elem, Y: Elem>(
    t: &[T],
    tm: Mat,
    shape: Spatial,
    bn: &Bn,
    y: &mut [Y],
    ym: Mat,
) {
    par_blocks(y, ym, &chunk_bounds(ym.rows, CHUNK_ROWS), |piece, _| {
        let (mut best, mut arg) = (vec![0.0; tm.cols], vec![0; tm.cols]);
        for r in 0..piece.rows {
            window_max(t, tm, shape, |c, v| bn_relu(bn, c, v), piece.first + r, &mut best, &mut arg);
            piece.row(r).iter_mut().zip(&best).for_each(|(o, &v)| *o = Y::put(v));
        }
    });
}

pub(crate) fn bn_relu_maxpool_bwd<D: Elem, T: Elem, G: Elem>(
    dy: View<'_, [D]>,
    t: View<'_, [T]>,
    shape: Spatial,
    bn: &Bn,
    g: ViewMut<'_, [G]>,
    sums: &mut [f32],
) {
    let View { buf: dy, mat: dym } = dy;
    let View { buf: t, mat: tm } = t;
    let ViewMut { buf: g, mat: gm } = g;
    let cols = tm.cols;
    let (oh, ow) = pool_out(shape);
    let image = shape.h * shape.w;
    // Windows overlap, so the scatter accumulates. One image per work item keeps each
    // image's writes private to it and its additions in a fixed order.
    let partials = par_blocks(g, gm, &chunk_bounds(gm.rows, image), |piece, s| {
        let n = piece.first / image;
        let gpre = scratch(&mut s.a, piece.rows * cols);
        gpre.fill(0.0);
        let (mut best, mut arg) = (vec![0.0; cols], vec![0; cols]);
        for q in n * oh * ow..(n + 1) * oh * ow {
            window_max(t, tm, shape, |c, v| bn_relu(bn, c, v), q, &mut best, &mut arg);
            for (c, &d) in row(dy, dym, q).iter().enumerate() {
                gpre[(arg[c] - piece.first) * cols + c] += d.get();
            }
        }
        let mut acc = vec![0.0; 2 * cols];
        for r in 0..piece.rows {
            let tr = row(t, tm, piece.first + r);
            masked_row(&gpre[r * cols..][..cols], tr, bn, Store::Plain, piece.row(r), &mut acc);
        }
        acc
    });
    store_sums(sums, &sum_in_order(partials, 2 * cols));
}

pub(crate) fn bn_relu_global_pool_fwd<X: Elem>(
    x: &[X],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    pooled: &mut [f32],
) {
    let cols = xm.cols;
    let image = shape.h * shape.w;
    pooled[..shape.n * cols].par_chunks_mut(cols.max(1)).enumerate().for_each(|(n, out)| {
        let mut acc = vec![0.0; cols];
        for p in n * image..(n + 1) * image {
            for (c, (s, &v)) in acc.iter_mut().zip(row(x, xm, p)).enumerate() {
                *s += f64::from(bn_relu(bn, c, v.get()));
            }
        }
        out.iter_mut().zip(&acc).for_each(|(o, s)| *o = (s / image as f64) as f32);
    });
}

pub(crate) fn bn_relu_global_pool_bwd<X: Elem, O: Elem>(
    dpooled: &[f32],
    x: View<'_, [X]>,
    shape: Spatial,
    bn: &Bn,
    dx: ViewMut<'_, [O]>,
    sums: &mut [f32],
) {
    let View { buf: x, mat: xm } = x;
    let ViewMut { buf: dx, mat: dxm } = dx;
    let cols = xm.cols;
    let image = shape.h * shape.w;
    let partials = par_blocks(dx, dxm, &chunk_bounds(dxm.rows, CHUNK_ROWS), |piece, _| {
        let mut acc = vec![0.0; 2 * cols];
        let mut gpre = vec![0.0; cols];
        for r in 0..piece.rows {
            let p = piece.first + r;
            let n = p / image;
            gpre.iter_mut().zip(&dpooled[n * cols..][..cols]).for_each(|(g, &d)| *g = d / image as f32);
            masked_row(&gpre, row(x, xm, p), bn, Store::Scaled, piece.row(r), &mut acc);
        }
        acc
    });
    store_sums(sums, &sum_in_order(partials, 2 * cols));
}
