//! Launch wrappers of `kernels/transition.cu`. The GEMM grid and the split reductions are the
//! ones of `conv1x1.rs`.
//! Params of `kernels/transition.cu`.

use super::TransitionOps;
use crate::backend::Buffers;
use crate::backend::conv1x1::cuda::{DgradRuns, WgradSplit, fwd_cfg};
use crate::backend::cuda::conv_kernel;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::{At, AtMut, BnReluView, Mat, Spatial, View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/transition.cu`: x is `images × h × w` pixels × `cin` channels with pitch `ld_x`,
/// y (forward) or dy (gradients) `images × ⌊h/2⌋ × ⌊w/2⌋` pixels × `cout` with pitch `ld_y`, dx
/// (dgrad) like x with pitch `ld_dx`. wgrad reduces over `splits` runs of `run` steps of 16
/// output pixels; dgrad runs `splits` runs of `run` tiles of 64 output pixels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TransitionParams {
    pub images: u32,
    pub h: u32,
    pub w: u32,
    pub cin: u32,
    pub cout: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub ld_dx: u32,
    pub splits: u32,
    pub run: u32,
}

kernel_params!(TransitionParams);

/// The params of a transition from x (`xm`, spatial `shape`) to y or dy (`ym`).
fn transition_params(
    xm: Mat,
    shape: Spatial,
    ym: Mat,
    ld_dx: usize,
    splits: u32,
    run: u32,
) -> Result<TransitionParams> {
    Ok(TransitionParams {
        images: u32_of(shape.n, "batch")?,
        h: u32_of(shape.h, "height")?,
        w: u32_of(shape.w, "width")?,
        cin: u32_of(xm.cols, "input channels")?,
        cout: u32_of(ym.cols, "output channels")?,
        ld_x: u32_of(xm.ld, "ld")?,
        ld_y: u32_of(ym.ld, "ld")?,
        ld_dx: u32_of(ld_dx, "ld")?,
        splits,
        run,
    })
}

impl<D: Device> KernelBackend<D> {
    /// Zeroes every element `m` addresses in `buf` (and nothing between its rows).
    fn zero_rows(&self, buf: &mut DeviceBuf<D>, m: Mat) -> Result<()> {
        if m.rows == 0 || m.cols == 0 {
            return Ok(());
        }
        if m.rows == 1 || m.ld == m.cols {
            return self.fill_zero(buf, m.offset, (m.rows - 1) * m.ld + m.cols);
        }
        (0..m.rows).try_for_each(|r| self.fill_zero(buf, m.offset + r * m.ld, m.cols))
    }
}

impl<D: Device> TransitionOps for KernelBackend<D> {
    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_fwd(&x, shape, w, &y)?;
        self.dtypes(
            &[("x", x.x.buf), ("y", &*y.buf)],
            &[("w", w.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params)],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: y, mat: ym } = y;
        if ym.rows == 0 || ym.cols == 0 {
            return Ok(());
        }
        let p = transition_params(xm, shape, ym, 0, 1, 0)?;
        let (x, w, y) = (self.addr(x, xm.offset), self.addr(w.buf, w.offset), self.addr(y, ym.offset));
        let cfg = fwd_cfg(ym.rows, ym.cols)?;
        self.with_bn_affine(bn, xm.cols, |ab| {
            // SAFETY: x covers xm (shape's pixels), y covers ym (the pooled pixels), W
            // cout × cin floats (checked above), the affine table cin pairs.
            unsafe {
                self.device.launch(conv_kernel!(self, "bn_relu_avgpool_conv1x1_fwd"), cfg, &p, &[x, ab, w, y])
            }
        })
    }

    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_wgrad(&x, shape, &dy, &dw)?;
        self.dtypes(
            &[("x", x.x.buf), ("dy", dy.buf)],
            &[("dw", &*dw.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params)],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        if dym.rows == 0 || xm.cols == 0 || dym.cols == 0 {
            return Ok(());
        }
        let split = WgradSplit::new(dym.rows, dym.cols, xm.cols)?;
        let p = transition_params(xm, shape, dym, 0, split.splits, split.run)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (x, dy, dw_addr) = (self.addr(x, xm.offset), self.addr(dy, dym.offset), self.addr(dw, dw_off));
        let cfg = split.cfg()?;
        self.split_wgrad(split, dw, dw_off, |partials| {
            // SAFETY: x covers xm (shape's pixels), dy covers dym (the pooled pixels), dW
            // cout × cin floats, the per-channel vectors cin floats (checked above); partials is
            // 0 with one split (the kernel adds into dW) or holds a dW-sized tile per split.
            unsafe {
                self.device.launch(
                    conv_kernel!(self, "bn_relu_avgpool_conv1x1_wgrad"),
                    cfg,
                    &p,
                    &[x, mean, var, gamma, beta, dy, dw_addr, partials],
                )
            }
        })
    }

    fn bn_relu_avgpool_conv1x1_dgrad(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dx: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_dgrad(&dy, w, &x, shape, &dx, sums)?;
        self.dtypes(
            &[("dy", dy.buf), ("x", x.x.buf), ("dx", &*dx.buf)],
            &[("w", w.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params), ("sums", &*sums)],
        )?;
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        if xm.cols == 0 {
            return Ok(());
        }
        if dym.rows == 0 {
            // Nothing survives the pool (or there is no pixel): no input gets a gradient.
            self.zero_rows(dx, dxm)?;
            return self.fill_zero(sums, 0, 2 * xm.cols);
        }
        let runs = DgradRuns::new(dym.rows, xm.cols)?;
        let p = transition_params(xm, shape, dym, dxm.ld, runs.splits, runs.run)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let operands = [
            self.addr(dy, dym.offset),
            self.addr(w.buf, w.offset),
            self.addr(x, xm.offset),
            mean,
            var,
            gamma,
            beta,
            self.addr(dx, dxm.offset),
        ];
        // SAFETY: dy covers dym (the pooled pixels), x and dx cover xm and dxm (shape's pixels,
        // same channels), W cout × cin floats, sums and the per-channel vectors 2·cin and cin
        // floats (checked above).
        unsafe {
            self.fused_dgrad(conv_kernel!(self, "bn_relu_avgpool_conv1x1_dgrad"), runs, &p, operands, sums)
        }
    }
}
