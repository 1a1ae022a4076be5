//! [`Backend`] for [`KernelBackend`]: memory management here, every op delegated to the
//! launch wrapper of the same name and signature in `ops/`.

use super::device::Device;
use super::{DeviceBuf, KernelBackend};
use crate::backend::{
    At, Backend, BnGradTarget, BnRef, Category, ConvGeom, MemoryReport, PoolWindow, SgdParams, Spatial,
    StatsRef,
};
use crate::backend::{AtMut, BnReluView, BnSums, LinearGrads, StatsMut, View, ViewMut};
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

    fn channel_stats(&self, x: View<'_, DeviceBuf<D>>, out: StatsMut<'_, DeviceBuf<D>>) -> Result<()> {
        KernelBackend::channel_stats(self, x, out)
    }

    fn update_running_stats(
        &self,
        batch: StatsRef<'_, DeviceBuf<D>>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::update_running_stats(self, batch, channels, count, running)
    }

    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        z: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_fwd(self, x, w, z)
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        dz: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_wgrad(self, x, dz, dw)
    }

    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        x: BnReluView<'_, DeviceBuf<D>>,
        dx: ViewMut<'_, DeviceBuf<D>>,
        accumulate: bool,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv1x1_dgrad(self, dz, w, x, dx, accumulate, sums)
    }

    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_fwd(self, z, shape, w, y)
    }

    fn bn_relu_conv3x3_wgrad(
        &self,
        z: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_wgrad(self, z, shape, dy, dw)
    }

    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        z: BnReluView<'_, DeviceBuf<D>>,
        g: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_conv3x3_dgrad(self, dy, shape, w, z, g, sums)
    }

    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        sums: &DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_backward_elementwise(self, g, x, bn, sums)
    }

    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        grads: &mut DeviceBuf<D>,
        corr: &mut DeviceBuf<D>,
        target: BnGradTarget,
    ) -> Result<()> {
        KernelBackend::bn_grad_fold(self, sums, bn, grads, corr, target)
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
        KernelBackend::bn_correction(self, g, x, stats, corr, alpha, beta)
    }

    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_avgpool_conv1x1_fwd(self, x, shape, w, y)
    }

    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_avgpool_conv1x1_wgrad(self, x, shape, dy, dw)
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
        KernelBackend::bn_relu_avgpool_conv1x1_dgrad(self, dy, w, x, shape, dx, sums)
    }

    fn conv_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::conv_fwd(self, x, shape, geom, w, y)
    }

    fn conv_wgrad(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::conv_wgrad(self, x, shape, geom, dy, dw)
    }

    fn conv_dgrad(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::conv_dgrad(self, dy, shape, geom, w, dx)
    }

    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_relu_maxpool_fwd(self, t, shape, y)
    }

    fn bn_relu_maxpool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        t: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        g: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_maxpool_bwd(self, dy, t, shape, g, sums)
    }

    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        pooled: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_global_pool_fwd(self, x, shape, pooled)
    }

    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &DeviceBuf<D>,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dx: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_relu_global_pool_bwd(self, dpooled, x, shape, dx, sums)
    }

    fn linear_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        bias: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::linear_fwd(self, x, w, bias, y)
    }

    fn linear_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        grads: LinearGrads<'_, DeviceBuf<D>>,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::linear_bwd(self, dy, x, w, grads, dx)
    }

    fn softmax_xent(
        &self,
        logits: View<'_, DeviceBuf<D>>,
        labels: &DeviceBuf<D>,
        loss: &mut DeviceBuf<D>,
        dlogits: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::softmax_xent(self, logits, labels, loss, dlogits)
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
        src: View<'_, DeviceBuf<D>>,
        dst: ViewMut<'_, DeviceBuf<D>>,
        accumulate: bool,
    ) -> Result<()> {
        KernelBackend::copy_columns(self, src, dst, accumulate)
    }

    fn bn_apply(
        &self,
        x: View<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::bn_apply(self, x, bn, y)
    }

    fn relu_fwd(&self, x: View<'_, DeviceBuf<D>>, y: ViewMut<'_, DeviceBuf<D>>) -> Result<()> {
        KernelBackend::relu_fwd(self, x, y)
    }

    fn relu_bwd(&self, g: ViewMut<'_, DeviceBuf<D>>, x: View<'_, DeviceBuf<D>>) -> Result<()> {
        KernelBackend::relu_bwd(self, g, x)
    }

    fn bn_grad_sums(
        &self,
        g: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        stats: StatsRef<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        KernelBackend::bn_grad_sums(self, g, x, stats, sums)
    }

    fn avg_pool_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::avg_pool_fwd(self, x, shape, window, y)
    }

    fn avg_pool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::avg_pool_bwd(self, dy, shape, window, dx)
    }

    fn max_pool_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::max_pool_fwd(self, x, shape, y)
    }

    fn max_pool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        KernelBackend::max_pool_bwd(self, dy, x, shape, dx)
    }
}
