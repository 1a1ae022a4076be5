//! Launch wrappers of `kernels/unfused.cu`: the unfused ops of the baseline.
//! Params of `kernels/unfused.cu`.

use super::UnfusedOps;
use crate::backend::cuda::device::Device;
use crate::backend::cuda::launch::elementwise_cfg;
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::pool::cuda::{SumTiles, stem_pool_out};
use crate::backend::{BnRef, Mat, PoolWindow, Spatial, StatsRef, View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/unfused.cu`, the elementwise ops and `bn_grad_sums`: `rows × cols` matrices x (the
/// input, pitch `ld_x`) and y (the output; for `relu_bwd` the gradient updated in place, for
/// `bn_grad_sums` the gradient read), `accumulate` (non-zero: `copy_columns` adds),
/// `tile_rows` pixels per partial-sum tile of `bn_grad_sums`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct UnfusedParams {
    pub rows: u32,
    pub cols: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub accumulate: u32,
    pub tile_rows: u32,
}

/// `kernels/unfused.cu`, the plain pools: input x (and its gradient dx) `n × h × w` pixels with
/// pitches `ld_x` (`ld_dx`), output y (and dy) `n × out_h × out_w` with pitch `ld_y`; the
/// average pool's window `win_h × win_w`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct UnfusedPoolParams {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub win_h: u32,
    pub win_w: u32,
    pub cols: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub ld_dx: u32,
}

kernel_params!(UnfusedParams, UnfusedPoolParams);

/// Params of an elementwise op reading `xm` and writing (or reading) `ym`.
fn unfused_params(xm: Mat, ym: Mat, accumulate: bool, tile_rows: u32) -> Result<UnfusedParams> {
    Ok(UnfusedParams {
        rows: u32_of(xm.rows, "rows")?,
        cols: u32_of(xm.cols, "cols")?,
        ld_x: u32_of(xm.ld, "ld")?,
        ld_y: u32_of(ym.ld, "ld")?,
        accumulate: u32::from(accumulate),
        tile_rows,
    })
}

/// Params of a pool with input `xm` of `shape`, output `out` with pitch `ld_y`, input-gradient
/// pitch `ld_dx` (0 in the forward) and average-pool `window` (1 × 1 for the max-pool).
fn pool_params(
    xm: Mat,
    shape: Spatial,
    out: Spatial,
    ld_y: usize,
    ld_dx: usize,
    window: PoolWindow,
) -> Result<UnfusedPoolParams> {
    Ok(UnfusedPoolParams {
        n: u32_of(shape.n, "batch")?,
        h: u32_of(shape.h, "height")?,
        w: u32_of(shape.w, "width")?,
        out_h: u32_of(out.h, "pooled height")?,
        out_w: u32_of(out.w, "pooled width")?,
        win_h: u32_of(window.h, "window height")?,
        win_w: u32_of(window.w, "window width")?,
        cols: u32_of(xm.cols, "cols")?,
        ld_x: u32_of(xm.ld, "ld")?,
        ld_y: u32_of(ld_y, "ld")?,
        ld_dx: u32_of(ld_dx, "ld")?,
    })
}

/// The max-pool's window field, unused by its kernels.
const NO_WINDOW: PoolWindow = PoolWindow { h: 1, w: 1 };

impl<D: Device> UnfusedOps for KernelBackend<D> {
    fn copy_columns(
        &self,
        src: View<'_, DeviceBuf<D>>,
        dst: ViewMut<'_, DeviceBuf<D>>,
        accumulate: bool,
    ) -> Result<()> {
        validate::copy_columns(&src, &dst)?;
        self.dtypes(&[], &[("src", src.buf), ("dst", &*dst.buf)])?;
        let View { buf: src, mat: sm } = src;
        let ViewMut { buf: dst, mat: dm } = dst;
        let p = unfused_params(sm, dm, accumulate, 0)?;
        let addrs = [self.addr(src, sm.offset), self.addr(dst, dm.offset)];
        // SAFETY: src covers sm, dst covers dm, of the same shape (checked above).
        unsafe { self.device.launch("copy_columns_f32", elementwise_cfg(sm.rows, sm.cols), &p, &addrs) }
    }

    fn bn_apply(
        &self,
        x: View<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_apply(&x, bn, &y)?;
        self.dtypes(
            &[],
            &[("x", x.buf), ("BN statistics", bn.stats), ("BN parameters", bn.params), ("y", &*y.buf)],
        )?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let p = unfused_params(xm, ym, false, 0)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let addrs = [self.addr(x, xm.offset), mean, var, gamma, beta, self.addr(y, ym.offset)];
        // SAFETY: x covers xm, y covers ym (same shape), per-channel vectors cover cols.
        unsafe { self.device.launch("bn_apply_f32", elementwise_cfg(xm.rows, xm.cols), &p, &addrs) }
    }

    fn relu_fwd(&self, x: View<'_, DeviceBuf<D>>, y: ViewMut<'_, DeviceBuf<D>>) -> Result<()> {
        validate::relu_fwd(&x, &y)?;
        self.dtypes(&[], &[("x", x.buf), ("y", &*y.buf)])?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let p = unfused_params(xm, ym, false, 0)?;
        let addrs = [self.addr(x, xm.offset), self.addr(y, ym.offset)];
        // SAFETY: x covers xm, y covers ym, of the same shape (checked above).
        unsafe { self.device.launch("relu_fwd_f32", elementwise_cfg(xm.rows, xm.cols), &p, &addrs) }
    }

    fn relu_bwd(&self, g: ViewMut<'_, DeviceBuf<D>>, x: View<'_, DeviceBuf<D>>) -> Result<()> {
        validate::relu_bwd(&g, &x)?;
        self.dtypes(&[], &[("g", &*g.buf), ("x", x.buf)])?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let p = unfused_params(xm, gm, false, 0)?;
        let addrs = [self.addr(g, gm.offset), self.addr(x, xm.offset)];
        // SAFETY: g covers gm, x covers xm, of the same shape (checked above).
        unsafe { self.device.launch("relu_bwd_f32", elementwise_cfg(xm.rows, xm.cols), &p, &addrs) }
    }

    fn bn_grad_sums(
        &self,
        g: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        stats: StatsRef<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_grad_sums(&g, &x, stats, sums)?;
        self.dtypes(&[], &[("g", g.buf), ("x", x.buf), ("statistics", stats.stats), ("sums", &*sums)])?;
        let View { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let tiles = SumTiles::new(xm.rows, xm.cols)?;
        let p = unfused_params(xm, gm, false, tiles.tile_rows)?;
        let addrs = [
            self.addr(g, gm.offset),
            self.addr(x, xm.offset),
            self.addr(stats.stats, stats.mean),
            self.addr(stats.stats, stats.var),
        ];
        self.tile_sums(tiles.tiles, tiles.cols, sums, |partials| {
            let [g, x, mean, var] = addrs;
            // SAFETY: g and x cover their (same-shaped) matrices, mean and var cover cols,
            // partials one row of 2·cols doubles per tile.
            unsafe { self.device.launch("bn_grad_sums_f32", tiles.cfg(), &p, &[g, x, mean, var, partials]) }
        })
    }

    fn avg_pool_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::avg_pool_fwd(&x, shape, window, &y)?;
        self.dtypes(&[], &[("x", x.buf), ("y", &*y.buf)])?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let out = window.out(shape);
        let p = pool_params(xm, shape, out, ym.ld, 0, window)?;
        let addrs = [self.addr(x, xm.offset), self.addr(y, ym.offset)];
        // SAFETY: x covers xm (shape's pixels), y covers ym (the pooled pixels), same channels.
        unsafe { self.device.launch("avg_pool_fwd_f32", elementwise_cfg(ym.rows, ym.cols), &p, &addrs) }
    }

    fn avg_pool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::avg_pool_bwd(&dy, shape, window, &dx)?;
        self.dtypes(&[], &[("dy", dy.buf), ("dx", &*dx.buf)])?;
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let out = window.out(shape);
        let p = pool_params(dxm, shape, out, dym.ld, dxm.ld, window)?;
        let addrs = [self.addr(dy, dym.offset), self.addr(dx, dxm.offset)];
        // SAFETY: dy covers dym (the pooled pixels), dx covers dxm (shape's pixels).
        unsafe { self.device.launch("avg_pool_bwd_f32", elementwise_cfg(dxm.rows, dxm.cols), &p, &addrs) }
    }

    fn max_pool_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::max_pool_fwd(&x, shape, &y)?;
        self.dtypes(&[], &[("x", x.buf), ("y", &*y.buf)])?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let out = stem_pool_out(shape);
        let p = pool_params(xm, shape, out, ym.ld, 0, NO_WINDOW)?;
        let addrs = [self.addr(x, xm.offset), self.addr(y, ym.offset)];
        // SAFETY: x covers xm (shape's pixels), y covers ym (the pooled pixels), same channels.
        unsafe { self.device.launch("max_pool_fwd_f32", elementwise_cfg(ym.rows, ym.cols), &p, &addrs) }
    }

    fn max_pool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::max_pool_bwd(&dy, &x, shape, &dx)?;
        self.dtypes(&[], &[("dy", dy.buf), ("x", x.buf), ("dx", &*dx.buf)])?;
        let View { buf: dy, mat: dym } = dy;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let out = stem_pool_out(shape);
        let p = pool_params(xm, shape, out, dym.ld, dxm.ld, NO_WINDOW)?;
        let addrs = [self.addr(dy, dym.offset), self.addr(x, xm.offset), self.addr(dx, dxm.offset)];
        // SAFETY: dy covers dym (the pooled pixels), x and dx their same-shaped matrices.
        unsafe { self.device.launch("max_pool_bwd_f32", elementwise_cfg(xm.rows, xm.cols), &p, &addrs) }
    }
}
