//! The cpu backend's conv1x1 ops.

use super::Conv1x1Ops;
use crate::Precision;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::gemm::{Operand, bn_relu_rows, gemm, gemm_chunks, wgrad_in_segments};
use crate::backend::cpu::rows::{Store, masked_block, par_blocks, scratch, store_sums, sum_in_order};
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf};
use crate::backend::{At, AtMut, BnReluView, Mat, View, ViewMut, validate};
use crate::error::Result;

impl Conv1x1Ops for CpuBackend {
    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        z: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_fwd(&x, w, &z)?;
        let _timed =
            self.timed("conv1x1", "bn_relu_conv1x1_fwd", 2 * x.x.mat.rows * x.x.mat.cols * z.mat.cols);
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: z, mat: zm } = z;
        let bn = Bn::resolve(bn, xm.cols)?;
        let w = &w.buf.f32s("weights")?[w.offset..];
        with_elems!({ bn_relu_conv1x1_fwd(self.precision, x, xm, &bn, w, z, zm) } x = x, mut z = z);
        Ok(())
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, CpuBuf>,
        dz: View<'_, CpuBuf>,
        dw: AtMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_wgrad(&x, &dz, &dw)?;
        let _timed =
            self.timed("conv1x1", "bn_relu_conv1x1_wgrad", 2 * x.x.mat.rows * x.x.mat.cols * dz.mat.cols);
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dz, mat: dzm } = dz;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, xm.cols)?;
        let dw = &mut dw.f32s_mut("weight gradients")?[dw_off..];
        with_elems!({ bn_relu_conv1x1_wgrad(self.precision, x, xm, &bn, dz, dzm, dw) } x = x, dz = dz);
        Ok(())
    }

    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        x: BnReluView<'_, CpuBuf>,
        dx: ViewMut<'_, CpuBuf>,
        accumulate: bool,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_dgrad(&dz, w, &x, &dx, sums)?;
        let _timed =
            self.timed("conv1x1", "bn_relu_conv1x1_dgrad", 2 * dz.mat.rows * dz.mat.cols * x.x.mat.cols);
        let View { buf: dz, mat: dzm } = dz;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols)?;
        let w = &w.buf.f32s("weights")?[w.offset..];
        let sums = sums.f32s_mut("BN sums")?;
        with_elems!({
            bn_relu_conv1x1_dgrad(
                self.precision,
                View::new(&dz[..], dzm),
                w,
                View::new(&x[..], xm),
                &bn,
                ViewMut::new(&mut dx[..], dxm),
                accumulate,
                sums,
            )
        } dz = dz, x = x, mut dx = dx);
        Ok(())
    }
}

pub(crate) fn bn_relu_conv1x1_fwd<X: Elem, Z: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    bn: &Bn,
    w: &[f32],
    z: &mut [Z],
    zm: Mat,
) {
    let (cin, cout) = (xm.cols, zm.cols);
    par_blocks(z, zm, &gemm_chunks(zm.rows), |blk, s| {
        let act = scratch(&mut s.a, blk.rows * cin);
        bn_relu_rows(x, xm, bn, blk.first, blk.rows, act);
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

pub(crate) fn bn_relu_conv1x1_wgrad<X: Elem, D: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    bn: &Bn,
    dz: &[D],
    dzm: Mat,
    dw: &mut [f32],
) {
    wgrad_in_segments(precision, dz, dzm, xm.cols, dw, |p0, rows, act| {
        bn_relu_rows(x, xm, bn, p0, rows, act)
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn bn_relu_conv1x1_dgrad<D: Elem, X: Elem, O: Elem>(
    precision: Precision,
    dz: View<'_, [D]>,
    w: &[f32],
    x: View<'_, [X]>,
    bn: &Bn,
    dx: ViewMut<'_, [O]>,
    accumulate: bool,
    sums: &mut [f32],
) {
    let View { buf: dz, mat: dzm } = dz;
    let View { buf: x, mat: xm } = x;
    let ViewMut { buf: dx, mat: dxm } = dx;
    let (cin, cout) = (xm.cols, dzm.cols);
    let store = if accumulate { Store::AddScaled } else { Store::Scaled };
    let partials = par_blocks(dx, dxm, &gemm_chunks(dxm.rows), |blk, s| {
        let g = scratch(&mut s.a, blk.rows * cin);
        let d = Operand::dense(cin);
        gemm(precision, blk.rows, cout, cin, 1.0, dz, Operand::rows_of(dzm, blk.first), w, d, 0.0, g, d);
        masked_block(g, x, xm, bn, store, blk)
    });
    store_sums(&mut sums[..2 * cin], &sum_in_order(partials, 2 * cin));
}
