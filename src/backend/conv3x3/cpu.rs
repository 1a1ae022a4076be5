//! The cpu backend's conv3x3 ops.

use super::Conv3x3Ops;
use crate::Precision;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::gemm::{Operand, conv_fwd_impl, conv_wgrad_impl, gemm, gemm_chunks, im2col_dgrad};
use crate::backend::cpu::rows::{Store, masked_block, par_blocks, scratch, store_sums, sum_in_order};
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf};
use crate::backend::{At, AtMut, BnReluView, ConvGeom, Mat, Spatial, View, ViewMut, validate};
use crate::error::Result;

impl Conv3x3Ops for CpuBackend {
    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_fwd(&z, shape, w, &y)?;
        let _timed =
            self.timed("conv3x3", "bn_relu_conv3x3_fwd", 2 * 9 * z.x.mat.rows * z.x.mat.cols * y.mat.cols);
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, zm.cols)?;
        with_elems!({
            bn_relu_conv3x3_fwd(
                self.precision,
                &z[..],
                zm,
                shape,
                &bn,
                &w.buf.f32s("weights")?[w.offset..],
                &mut y[..],
                ym,
            )
        } z = z, mut y = y);
        Ok(())
    }

    fn bn_relu_conv3x3_wgrad(
        &self,
        z: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        dy: View<'_, CpuBuf>,
        dw: AtMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_wgrad(&z, shape, &dy, &dw)?;
        let _timed =
            self.timed("conv3x3", "bn_relu_conv3x3_wgrad", 2 * 9 * z.x.mat.rows * z.x.mat.cols * dy.mat.cols);
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, zm.cols)?;
        with_elems!({
            bn_relu_conv3x3_wgrad(
                self.precision,
                &z[..],
                zm,
                shape,
                &bn,
                &dy[..],
                dym,
                &mut dw.f32s_mut("weight gradients")?[dw_off..],
            )
        } z = z, dy = dy);
        Ok(())
    }

    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: View<'_, CpuBuf>,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        z: BnReluView<'_, CpuBuf>,
        g: ViewMut<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_dgrad(&dy, shape, w, &z, &g, sums)?;
        let _timed =
            self.timed("conv3x3", "bn_relu_conv3x3_dgrad", 2 * 9 * dy.mat.rows * dy.mat.cols * z.x.mat.cols);
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: g, mat: gm } = g;
        let bn = Bn::resolve(bn, zm.cols)?;
        with_elems!({
            bn_relu_conv3x3_dgrad(
                self.precision,
                View::new(&dy[..], dym),
                shape,
                &w.buf.f32s("weights")?[w.offset..],
                View::new(&z[..], zm),
                &bn,
                ViewMut::new(&mut g[..], gm),
                sums.f32s_mut("BN sums")?,
            )
        } z = z, dy = dy, mut g = g);
        Ok(())
    }
}

/// The dense layer's 3×3 convolution.
pub(crate) const CONV3X3: ConvGeom = ConvGeom { kernel: 3, stride: 1, pad: 1 };

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_conv3x3_fwd<Z: Elem, Y: Elem>(
    precision: Precision,
    z: &[Z],
    zm: Mat,
    shape: Spatial,
    bn: &Bn,
    w: &[f32],
    y: &mut [Y],
    ym: Mat,
) {
    conv_fwd_impl(precision, z, zm, shape, CONV3X3, Some(bn), w, y, ym);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_conv3x3_wgrad<Z: Elem, D: Elem>(
    precision: Precision,
    z: &[Z],
    zm: Mat,
    shape: Spatial,
    bn: &Bn,
    dy: &[D],
    dym: Mat,
    dw: &mut [f32],
) {
    conv_wgrad_impl(precision, z, zm, shape, CONV3X3, Some(bn), dy, dym, dw);
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_conv3x3_dgrad<D: Elem, Z: Elem, G: Elem>(
    precision: Precision,
    dy: View<'_, [D]>,
    shape: Spatial,
    w: &[f32],
    z: View<'_, [Z]>,
    bn: &Bn,
    g: ViewMut<'_, [G]>,
    sums: &mut [f32],
) {
    let View { buf: dy, mat: dym } = dy;
    let View { buf: z, mat: zm } = z;
    let ViewMut { buf: g, mat: gm } = g;
    let (cin, width) = (zm.cols, dym.cols * 9);
    let partials = par_blocks(g, gm, &gemm_chunks(gm.rows), |blk, s| {
        let taps = scratch(&mut s.a, blk.rows * width);
        im2col_dgrad(dy, dym, shape, CONV3X3, blk.first, blk.rows, taps);
        let gpre = scratch(&mut s.b, blk.rows * cin);
        let d = Operand::dense(cin);
        gemm(precision, blk.rows, width, cin, 1.0, taps, Operand::dense(width), w, d, 0.0, gpre, d);
        masked_block(gpre, z, zm, bn, Store::Plain, blk)
    });
    store_sums(&mut sums[..2 * cin], &sum_in_order(partials, 2 * cin));
}
