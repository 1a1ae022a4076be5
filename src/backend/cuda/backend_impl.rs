//! [`Backend`] for [`KernelBackend`]: memory management here, every op delegated to the
//! launch wrapper of the same name and signature in `ops/`.

use super::device::Device;
use super::{DeviceBuf, KernelBackend};
use crate::backend::{
    At, Backend, BnGradTarget, BnRef, Category, ConvGeom, Mat, MemoryReport, PoolWindow, SgdParams, Spatial,
    StatsRef,
};
use crate::error::Result;

impl<D: Device> Backend for KernelBackend<D> {
    type Buf = DeviceBuf<D>;

    fn name(&self) -> String {
        KernelBackend::name(self)
    }

    fn alloc(&self, len: usize, category: Category) -> Result<DeviceBuf<D>> {
        KernelBackend::alloc(self, len, category)
    }

    fn memory(&self) -> MemoryReport {
        KernelBackend::memory(self)
    }

    fn reset_peak(&self) {
        KernelBackend::reset_peak(self)
    }

    fn available_bytes(&self) -> Option<usize> {
        KernelBackend::available_bytes(self)
    }

    fn upload(&self, dst: &mut DeviceBuf<D>, offset: usize, src: &[f32]) -> Result<()> {
        KernelBackend::upload(self, dst, offset, src)
    }

    fn download(&self, src: &DeviceBuf<D>, offset: usize, len: usize) -> Result<Vec<f32>> {
        KernelBackend::download(self, src, offset, len)
    }

    fn fill_zero(&self, buf: &mut DeviceBuf<D>, offset: usize, len: usize) -> Result<()> {
        KernelBackend::fill_zero(self, buf, offset, len)
    }

    fn synchronize(&self) -> Result<()> {
        KernelBackend::synchronize(self)
    }

    fn channel_stats(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        out: &mut DeviceBuf<D>,
        mean: usize,
        var: usize,
    ) -> Result<()> {
        KernelBackend::channel_stats(self, x, xm, out, mean, var)
    }

    fn update_running_stats(
        &self,
        batch: StatsRef<'_, DeviceBuf<D>>,
        channels: usize,
        count: usize,
        running: &mut DeviceBuf<D>,
        run_mean: usize,
        run_var: usize,
    ) -> Result<()> {
        KernelBackend::update_running_stats(self, batch, channels, count, running, run_mean, run_var)
    }

    fn bn_relu_conv1x1_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        z: &mut DeviceBuf<D>,
        zm: Mat,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_fwd(self, x, xm, bn, w, z, zm)
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        dz: &DeviceBuf<D>,
        dzm: Mat,
        dw: &mut DeviceBuf<D>,
        dw_off: usize,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_wgrad(self, x, xm, bn, dz, dzm, dw, dw_off)
    }

    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: &DeviceBuf<D>,
        dzm: Mat,
        w: At<'_, DeviceBuf<D>>,
        x: &DeviceBuf<D>,
        xm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
        accumulate: bool,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_dgrad(self, dz, dzm, w, x, xm, bn, dx, dxm, accumulate, sums)
    }

    fn bn_relu_conv3x3_fwd(
        &self,
        z: &DeviceBuf<D>,
        zm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_fwd(self, z, zm, shape, bn, w, y, ym)
    }

    fn bn_relu_conv3x3_wgrad(
        &self,
        z: &DeviceBuf<D>,
        zm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        dy: &DeviceBuf<D>,
        dym: Mat,
        dw: &mut DeviceBuf<D>,
        dw_off: usize,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_wgrad(self, z, zm, shape, bn, dy, dym, dw, dw_off)
    }

    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        z: &DeviceBuf<D>,
        zm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        g: &mut DeviceBuf<D>,
        gm: Mat,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_dgrad(self, dy, dym, shape, w, z, zm, bn, g, gm, sums)
    }

    fn bn_backward_elementwise(
        &self,
        g: &mut DeviceBuf<D>,
        gm: Mat,
        x: &DeviceBuf<D>,
        xm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        sums: &DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_backward_elementwise(self, g, gm, x, xm, bn, sums)
    }

    fn bn_grad_fold(
        &self,
        sums: &DeviceBuf<D>,
        channels: usize,
        count: usize,
        bn: BnRef<'_, DeviceBuf<D>>,
        grads: &mut DeviceBuf<D>,
        corr: &mut DeviceBuf<D>,
        target: BnGradTarget,
    ) -> Result<()> {
        KernelBackend::bn_grad_fold(self, sums, channels, count, bn, grads, corr, target)
    }

    fn bn_correction(
        &self,
        g: &mut DeviceBuf<D>,
        gm: Mat,
        x: &DeviceBuf<D>,
        xm: Mat,
        stats: StatsRef<'_, DeviceBuf<D>>,
        corr: &DeviceBuf<D>,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        KernelBackend::bn_correction(self, g, gm, x, xm, stats, corr, alpha, beta)
    }

    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::bn_relu_avgpool_conv1x1_fwd(self, x, xm, shape, bn, w, y, ym)
    }

    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        dy: &DeviceBuf<D>,
        dym: Mat,
        dw: &mut DeviceBuf<D>,
        dw_off: usize,
    ) -> Result<()> {
        KernelBackend::bn_relu_avgpool_conv1x1_wgrad(self, x, xm, shape, bn, dy, dym, dw, dw_off)
    }

    fn bn_relu_avgpool_conv1x1_dgrad(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        w: At<'_, DeviceBuf<D>>,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_avgpool_conv1x1_dgrad(self, dy, dym, w, x, xm, shape, bn, dx, dxm, sums)
    }

    fn conv_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::conv_fwd(self, x, xm, shape, geom, w, y, ym)
    }

    fn conv_wgrad(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        geom: ConvGeom,
        dy: &DeviceBuf<D>,
        dym: Mat,
        dw: &mut DeviceBuf<D>,
        dw_off: usize,
    ) -> Result<()> {
        KernelBackend::conv_wgrad(self, x, xm, shape, geom, dy, dym, dw, dw_off)
    }

    fn conv_dgrad(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
    ) -> Result<()> {
        KernelBackend::conv_dgrad(self, dy, dym, shape, geom, w, dx, dxm)
    }

    fn bn_relu_maxpool_fwd(
        &self,
        t: &DeviceBuf<D>,
        tm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::bn_relu_maxpool_fwd(self, t, tm, shape, bn, y, ym)
    }

    fn bn_relu_maxpool_bwd(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        t: &DeviceBuf<D>,
        tm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        g: &mut DeviceBuf<D>,
        gm: Mat,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_maxpool_bwd(self, dy, dym, t, tm, shape, bn, g, gm, sums)
    }

    fn bn_relu_global_pool_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        pooled: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_global_pool_fwd(self, x, xm, shape, bn, pooled)
    }

    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &DeviceBuf<D>,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, DeviceBuf<D>>,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_global_pool_bwd(self, dpooled, x, xm, shape, bn, dx, dxm, sums)
    }

    fn linear_fwd(
        &self,
        x: &DeviceBuf<D>,
        n: usize,
        k: usize,
        w: At<'_, DeviceBuf<D>>,
        bias: At<'_, DeviceBuf<D>>,
        out_features: usize,
        y: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::linear_fwd(self, x, n, k, w, bias, out_features, y)
    }

    fn linear_bwd(
        &self,
        dy: &DeviceBuf<D>,
        x: &DeviceBuf<D>,
        n: usize,
        k: usize,
        w: At<'_, DeviceBuf<D>>,
        out_features: usize,
        grads: &mut DeviceBuf<D>,
        dw_off: usize,
        dbias_off: usize,
        dx: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::linear_bwd(self, dy, x, n, k, w, out_features, grads, dw_off, dbias_off, dx)
    }

    fn softmax_xent(
        &self,
        logits: &DeviceBuf<D>,
        labels: &DeviceBuf<D>,
        n: usize,
        classes: usize,
        loss: &mut DeviceBuf<D>,
        dlogits: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::softmax_xent(self, logits, labels, n, classes, loss, dlogits)
    }

    fn sgd_update(
        &self,
        params: &mut DeviceBuf<D>,
        grads: &DeviceBuf<D>,
        velocity: &mut DeviceBuf<D>,
        len: usize,
        hp: SgdParams,
    ) -> Result<()> {
        KernelBackend::sgd_update(self, params, grads, velocity, len, hp)
    }

    fn copy_columns(
        &self,
        src: &DeviceBuf<D>,
        sm: Mat,
        dst: &mut DeviceBuf<D>,
        dm: Mat,
        accumulate: bool,
    ) -> Result<()> {
        KernelBackend::copy_columns(self, src, sm, dst, dm, accumulate)
    }

    fn bn_apply(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        bn: BnRef<'_, DeviceBuf<D>>,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::bn_apply(self, x, xm, bn, y, ym)
    }

    fn relu_fwd(&self, x: &DeviceBuf<D>, xm: Mat, y: &mut DeviceBuf<D>, ym: Mat) -> Result<()> {
        KernelBackend::relu_fwd(self, x, xm, y, ym)
    }

    fn relu_bwd(&self, g: &mut DeviceBuf<D>, gm: Mat, x: &DeviceBuf<D>, xm: Mat) -> Result<()> {
        KernelBackend::relu_bwd(self, g, gm, x, xm)
    }

    fn bn_grad_sums(
        &self,
        g: &DeviceBuf<D>,
        gm: Mat,
        x: &DeviceBuf<D>,
        xm: Mat,
        stats: StatsRef<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_grad_sums(self, g, gm, x, xm, stats, sums)
    }

    fn avg_pool_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        window: PoolWindow,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::avg_pool_fwd(self, x, xm, shape, window, y, ym)
    }

    fn avg_pool_bwd(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        shape: Spatial,
        window: PoolWindow,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
    ) -> Result<()> {
        KernelBackend::avg_pool_bwd(self, dy, dym, shape, window, dx, dxm)
    }

    fn max_pool_fwd(
        &self,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        y: &mut DeviceBuf<D>,
        ym: Mat,
    ) -> Result<()> {
        KernelBackend::max_pool_fwd(self, x, xm, shape, y, ym)
    }

    fn max_pool_bwd(
        &self,
        dy: &DeviceBuf<D>,
        dym: Mat,
        x: &DeviceBuf<D>,
        xm: Mat,
        shape: Spatial,
        dx: &mut DeviceBuf<D>,
        dxm: Mat,
    ) -> Result<()> {
        KernelBackend::max_pool_bwd(self, dy, dym, x, xm, shape, dx, dxm)
    }
}
