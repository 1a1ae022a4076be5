//! The cpu backend's transition ops.

use super::TransitionOps;
use crate::Precision;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::gemm::{CHUNK, Operand, gemm, gemm_chunks, pixel, wgrad_in_segments};
use crate::backend::cpu::rows::{
    Store, bn_relu, masked_row, par_blocks, row, scratch, store_sums, sum_in_order,
};
use crate::backend::cpu::simd::multiversioned;
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf};
use crate::backend::{At, AtMut, BnReluView, Mat, Spatial, View, ViewMut, validate};
use crate::error::Result;

impl TransitionOps for CpuBackend {
    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_fwd(&x, shape, w, &y)?;
        let _timed = self.timed(
            "transition",
            "bn_relu_avgpool_conv1x1_fwd",
            2 * y.mat.rows * x.x.mat.cols * y.mat.cols,
        );
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, xm.cols)?;
        with_elems!({
            bn_relu_avgpool_conv1x1_fwd(
                self.precision,
                &x[..],
                xm,
                shape,
                &bn,
                &w.buf.f32s("weights")?[w.offset..],
                &mut y[..],
                ym,
            )
        } x = x, mut y = y);
        Ok(())
    }

    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        dy: View<'_, CpuBuf>,
        dw: AtMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_wgrad(&x, shape, &dy, &dw)?;
        let _timed = self.timed(
            "transition",
            "bn_relu_avgpool_conv1x1_wgrad",
            2 * dy.mat.rows * x.x.mat.cols * dy.mat.cols,
        );
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, xm.cols)?;
        with_elems!({
            bn_relu_avgpool_conv1x1_wgrad(
                self.precision,
                &x[..],
                xm,
                shape,
                &bn,
                &dy[..],
                dym,
                &mut dw.f32s_mut("weight gradients")?[dw_off..],
            )
        } x = x, dy = dy);
        Ok(())
    }

    fn bn_relu_avgpool_conv1x1_dgrad(
        &self,
        dy: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        dx: ViewMut<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_dgrad(&dy, w, &x, shape, &dx, sums)?;
        let _timed = self.timed(
            "transition",
            "bn_relu_avgpool_conv1x1_dgrad",
            2 * dy.mat.rows * dy.mat.cols * x.x.mat.cols,
        );
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols)?;
        with_elems!({
            bn_relu_avgpool_conv1x1_dgrad(
                self.precision,
                View::new(&dy[..], dym),
                &w.buf.f32s("weights")?[w.offset..],
                View::new(&x[..], xm),
                shape,
                &bn,
                ViewMut::new(&mut dx[..], dxm),
                sums.f32s_mut("BN sums")?,
            )
        } x = x, dy = dy, mut dx = dx);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_avgpool_conv1x1_fwd<X: Elem, Y: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    w: &[f32],
    y: &mut [Y],
    ym: Mat,
) {
    let (cin, cout) = (xm.cols, ym.cols);
    par_blocks(y, ym, &gemm_chunks(ym.rows), |blk, s| {
        let act = scratch(&mut s.a, blk.rows * cin);
        pool_rows(x, xm, shape, bn, blk.first, blk.rows, act);
        let wt = Operand::dense_t(cin);
        gemm(
            precision,
            blk.rows,
            cin,
            cout,
            1.0,
            act,
            Operand::dense(cin),
            w,
            wt,
            0.0,
            blk.data,
            blk.operand(),
        );
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_avgpool_conv1x1_wgrad<X: Elem, D: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    dy: &[D],
    dym: Mat,
    dw: &mut [f32],
) {
    wgrad_in_segments(precision, dy, dym, xm.cols, dw, |p0, rows, act| {
        pool_rows(x, xm, shape, bn, p0, rows, act)
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_avgpool_conv1x1_dgrad<D: Elem, X: Elem, O: Elem>(
    precision: Precision,
    dy: View<'_, [D]>,
    w: &[f32],
    x: View<'_, [X]>,
    shape: Spatial,
    bn: &Bn,
    dx: ViewMut<'_, [O]>,
    sums: &mut [f32],
) {
    let View { buf: dy, mat: dym } = dy;
    let View { buf: x, mat: xm } = x;
    let ViewMut { buf: dx, mat: dxm } = dx;
    let (cin, cout) = (xm.cols, dym.cols);
    let out = pooled(shape);
    if out.pixels() == 0 {
        // Nothing survives the pool, so no input receives a gradient.
        for p in 0..dxm.rows {
            dx[dxm.at(p, 0)..][..dxm.cols].fill(O::default());
        }
        sums[..2 * cin].fill(0.0);
        return;
    }
    // Blocks of whole output rows. Output row R = n·OH + oy pools input rows 2oy and 2oy+1 of
    // image n; the last one also owns the row an odd height drops. So each block's input
    // gradient is a contiguous range of dx's pixel rows and the blocks can run in parallel.
    let out_rows = out.n * out.h;
    let rows_per_block = (CHUNK / out.w).max(1);
    let first_input_pixel = |r: usize| (r / out.h * shape.h + r % out.h * 2) * shape.w;
    let bounds: Vec<usize> = (0..out_rows)
        .step_by(rows_per_block)
        .map(first_input_pixel)
        .chain(std::iter::once(shape.pixels()))
        .collect();
    let partials = par_blocks(dx, dxm, &bounds, |blk, s| {
        let (n, iy, _) = pixel(blk.first, shape);
        let r0 = n * out.h + iy / 2;
        let out_pixels = rows_per_block.min(out_rows - r0) * out.w;
        // The gradient of each pooled pixel, already divided among its 4 inputs.
        let gpre = scratch(&mut s.a, out_pixels * cin);
        let d = Operand::dense(cin);
        gemm(
            precision,
            out_pixels,
            cout,
            cin,
            0.25,
            dy,
            Operand::rows_of(dym, r0 * out.w),
            w,
            d,
            0.0,
            gpre,
            d,
        );
        let mut sums = vec![0.0; 2 * cin];
        for p in blk.first..blk.first + blk.rows {
            let (n, iy, ix) = pixel(p, shape);
            let (oy, ox) = (iy / 2, ix / 2);
            if oy < out.h && ox < out.w {
                let q = (n * out.h + oy) * out.w + ox - r0 * out.w;
                let x_row = row(x, xm, p);
                masked_row(
                    &gpre[q * cin..][..cin],
                    x_row,
                    bn,
                    Store::Scaled,
                    blk.row(p - blk.first),
                    &mut sums,
                );
            } else {
                // Dropped by the pool: zero gradient, nothing to add to the sums.
                blk.row(p - blk.first).fill(O::default());
            }
        }
        sums
    });
    store_sums(&mut sums[..2 * cin], &sum_in_order(partials, 2 * cin));
}

/// Spatial extent after AvgPool2d(2, 2), which drops an odd last row/column.
pub(crate) fn pooled(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: s.h / 2, w: s.w / 2 }
}

multiversioned! {
    /// Fills `tile` (rows × c, dense) with the 2×2 means of BN-ReLU'd x for the pooled pixels
    /// `[p0, p0 + rows)`. Pooling before the 1×1 conv is exact (both are linear) and makes the
    /// GEMM 4× smaller.
    pub(crate) fn pool_rows<X: Elem>(
        x: &[X],
        xm: Mat,
        shape: Spatial,
        bn: &Bn,
        p0: usize,
        rows: usize,
        tile: &mut [f32],
    ) {
        let (out, c) = (pooled(shape), xm.cols);
        for r in 0..rows {
            let (n, oy, ox) = pixel(p0 + r, out);
            let top_left = (n * shape.h + 2 * oy) * shape.w + 2 * ox;
            let dst = &mut tile[r * c..][..c];
            dst.fill(0.0);
            for q in [top_left, top_left + 1, top_left + shape.w, top_left + shape.w + 1] {
                for (j, (d, &v)) in dst.iter_mut().zip(row(x, xm, q)).enumerate() {
                    *d += bn_relu(bn, j, v.get());
                }
            }
            dst.iter_mut().for_each(|d| *d *= 0.25);
        }
    }
}
