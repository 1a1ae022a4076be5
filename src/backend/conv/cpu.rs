//! The cpu backend's conv ops.

use super::ConvOps;
use crate::Precision;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::gemm::{Operand, conv_fwd_impl, conv_wgrad_impl, gemm, gemm_chunks, im2col_dgrad};
use crate::backend::cpu::rows::{par_blocks, scratch};
use crate::backend::cpu::{CpuBackend, CpuBuf};
use crate::backend::{At, AtMut, ConvGeom, Mat, Spatial, View, ViewMut, validate};
use crate::error::Result;

impl ConvOps for CpuBackend {
    fn conv_fwd(
        &self,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::conv_fwd(&x, shape, geom, w, &y)?;
        let _timed = self.timed(
            "conv",
            "conv_fwd",
            2 * geom.kernel * geom.kernel * y.mat.rows * x.mat.cols * y.mat.cols,
        );
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        with_elems!({
            conv_fwd(
                self.precision,
                &x[..],
                xm,
                shape,
                geom,
                &w.buf.f32s("weights")?[w.offset..],
                &mut y[..],
                ym,
            )
        } x = x, mut y = y);
        Ok(())
    }

    fn conv_wgrad(
        &self,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        geom: ConvGeom,
        dy: View<'_, CpuBuf>,
        dw: AtMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::conv_wgrad(&x, shape, geom, &dy, &dw)?;
        let _timed = self.timed(
            "conv",
            "conv_wgrad",
            2 * geom.kernel * geom.kernel * dy.mat.rows * x.mat.cols * dy.mat.cols,
        );
        let View { buf: x, mat: xm } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let dw = &mut dw.f32s_mut("weight gradients")?[dw_off..];
        with_elems!({ conv_wgrad(self.precision, x, xm, shape, geom, dy, dym, dw) } x = x, dy = dy);
        Ok(())
    }

    fn conv_dgrad(
        &self,
        dy: View<'_, CpuBuf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, CpuBuf>,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::conv_dgrad(&dy, shape, geom, w, &dx)?;
        let _timed = self.timed(
            "conv",
            "conv_dgrad",
            2 * geom.kernel * geom.kernel * dy.mat.rows * dx.mat.cols * dy.mat.cols,
        );
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        with_elems!({
            conv_dgrad(
                self.precision,
                &dy[..],
                dym,
                shape,
                geom,
                &w.buf.f32s("weights")?[w.offset..],
                &mut dx[..],
                dxm,
            )
        } dy = dy, mut dx = dx);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_fwd<X: Elem, Y: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    w: &[f32],
    y: &mut [Y],
    ym: Mat,
) {
    conv_fwd_impl(precision, x, xm, shape, geom, None, w, y, ym);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_wgrad<X: Elem, D: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    dy: &[D],
    dym: Mat,
    dw: &mut [f32],
) {
    conv_wgrad_impl(precision, x, xm, shape, geom, None, dy, dym, dw);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_dgrad<D: Elem, X: Elem>(
    precision: Precision,
    dy: &[D],
    dym: Mat,
    shape: Spatial,
    geom: ConvGeom,
    w: &[f32],
    dx: &mut [X],
    dxm: Mat,
) {
    let (cin, width) = (dxm.cols, dym.cols * geom.kernel * geom.kernel);
    par_blocks(dx, dxm, &gemm_chunks(dxm.rows), |blk, s| {
        let taps = scratch(&mut s.a, blk.rows * width);
        im2col_dgrad(dy, dym, shape, geom, blk.first, blk.rows, taps);
        let d = Operand::dense(cin);
        gemm(
            precision,
            blk.rows,
            width,
            cin,
            1.0,
            taps,
            Operand::dense(width),
            w,
            d,
            0.0,
            blk.data,
            blk.operand(),
        );
    });
}
