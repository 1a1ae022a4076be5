use super::BnBackwardOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::elementwise_cfg;
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, storage_kernel, u32_of};
use crate::backend::{BnGradTarget, BnRef, BnSums, StatsRef, View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/bn_backward.cu`: gradient g (rows × cols, pitch ld_g), BN input x (pitch ld_x),
/// `count` values per channel behind the sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnElementwiseParams {
    pub rows: u32,
    pub cols: u32,
    pub ld_g: u32,
    pub ld_x: u32,
    pub count: u32,
}

/// `kernels/bn_backward.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnFoldParams {
    pub channels: u32,
    pub count: u32,
    /// Non-zero: also update the deferred-correction accumulators.
    pub correct: u32,
}

kernel_params!(BnElementwiseParams, BnFoldParams);

impl<D: Device> BnBackwardOps for KernelBackend<D> {
    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        sums: &DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_backward_elementwise(&g, &x, bn, sums)?;
        self.dtypes(
            &[("g", &*g.buf), ("x", x.buf)],
            &[("BN statistics", bn.stats), ("BN parameters", bn.params), ("sums", sums)],
        )?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let p = BnElementwiseParams {
            rows: u32_of(gm.rows, "rows")?,
            cols: u32_of(gm.cols, "cols")?,
            ld_g: u32_of(gm.ld, "ld")?,
            ld_x: u32_of(xm.ld, "ld")?,
            count: u32_of(gm.rows, "rows")?,
        };
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let addrs =
            [self.addr(g, gm.offset), self.addr(x, xm.offset), mean, var, gamma, beta, self.addr(sums, 0)];
        // SAFETY: g and x cover their matrices, per-channel vectors cover cols (checked).
        unsafe {
            self.device.launch(
                storage_kernel!(self, "bn_backward_elementwise"),
                elementwise_cfg(gm.rows, gm.cols),
                &p,
                &addrs,
            )
        }
    }

    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        grads: &mut DeviceBuf<D>,
        corr: &mut DeviceBuf<D>,
        target: BnGradTarget,
    ) -> Result<()> {
        validate::bn_grad_fold(&sums, bn, grads, corr, target)?;
        self.dtypes(
            &[],
            &[
                ("sums", sums.sums),
                ("BN statistics", bn.stats),
                ("BN parameters", bn.params),
                ("grads", &*grads),
                ("correction", &*corr),
            ],
        )?;
        let BnSums { sums, channels, count } = sums;
        let (alpha, beta) = target.correction.unwrap_or((0, 0));
        let p = BnFoldParams {
            channels: u32_of(channels, "channels")?,
            count: u32_of(count, "count")?,
            correct: u32::from(target.correction.is_some()),
        };
        let [mean, var, gamma, beta_p] = self.bn_addresses(bn);
        let addrs = [
            self.addr(sums, 0),
            mean,
            var,
            gamma,
            beta_p,
            self.addr(grads, target.dgamma),
            self.addr(grads, target.dbeta),
            self.addr(corr, alpha),
            self.addr(corr, beta),
        ];
        // SAFETY: all vectors cover `channels` floats; the correction pointers are only
        // dereferenced when `correct` is set, and then they were checked.
        unsafe { self.device.launch("bn_grad_fold_f32", LaunchCfg::per_element::<128>(channels), &p, &addrs) }
    }

    fn bn_correction(
        &self,
        g: ViewMut<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        stats: StatsRef<'_, DeviceBuf<D>>,
        corr: &DeviceBuf<D>,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        validate::bn_correction(&g, &x, stats, corr, alpha, beta)?;
        self.dtypes(&[("g", &*g.buf), ("x", x.buf)], &[("statistics", stats.stats), ("correction", corr)])?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let p = BnElementwiseParams {
            rows: u32_of(gm.rows, "rows")?,
            cols: u32_of(gm.cols, "cols")?,
            ld_g: u32_of(gm.ld, "ld")?,
            ld_x: u32_of(xm.ld, "ld")?,
            count: u32_of(gm.rows, "rows")?,
        };
        let addrs = [
            self.addr(g, gm.offset),
            self.addr(x, xm.offset),
            self.addr(stats.stats, stats.mean),
            self.addr(stats.stats, stats.var),
            self.addr(corr, alpha),
            self.addr(corr, beta),
        ];
        // SAFETY: g and x cover their matrices, per-channel vectors cover cols (checked).
        unsafe {
            self.device.launch(
                storage_kernel!(self, "bn_correction"),
                elementwise_cfg(gm.rows, gm.cols),
                &p,
                &addrs,
            )
        }
    }
}
