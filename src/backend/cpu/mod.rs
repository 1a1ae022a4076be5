//! The `cpu` backend: plain Rust in f32, the executable specification of every fused op and
//! the CPU fallback. GEMMs go through `matrixmultiply` on row chunks of the pixel dimension,
//! so no op materialises more than a chunk of its fused (BN-ReLU'd, im2col'd) input — the
//! same working-set discipline as the CUDA kernels' shared-memory tiles.
//!
//! Results do not depend on the number of threads: work is split into fixed chunks and
//! per-chunk partial reductions are combined in chunk order.
//!
//! Every op first checks its arguments against the contract all backends share
//! (`backend::validate`); the slicing below relies on it and cannot go out of bounds.

mod conv;
#[cfg(test)]
mod oracle;
mod pointwise;
mod unfused;

use super::{
    At, BN_EPS, Backend, BnGradTarget, BnRef, Category, ConvGeom, MemoryReport, MemoryTracker, PoolWindow,
    SgdParams, Spatial, StatsRef, bn_affine, validate,
};
use crate::backend::{AtMut, BnReluView, BnSums, LinearGrads, StatsMut, View, ViewMut};
use crate::error::{Error, Result};
use std::sync::Arc;

/// A host buffer whose bytes are counted by the backend's tracker while it lives.
#[derive(Debug)]
pub struct CpuBuf {
    data: Vec<f32>,
    category: Category,
    tracker: Arc<MemoryTracker>,
}

impl CpuBuf {
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl Drop for CpuBuf {
    fn drop(&mut self) {
        self.tracker.freed(self.data.len() * 4, self.category);
    }
}

/// The CPU backend. Cloning shares the allocation counter.
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    tracker: Arc<MemoryTracker>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }
}

/// A batch-norm resolved to per-channel host vectors: `y = a·x + b`, `x̂ = (x − mean)·invstd`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bn {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

impl Bn {
    fn resolve(bn: BnRef<'_, CpuBuf>, channels: usize) -> Bn {
        let stats = StatsRef { stats: bn.stats, mean: bn.mean, var: bn.var };
        let (mean, invstd) = resolve_stats(stats, channels);
        let s = bn.stats.as_slice();
        let p = bn.params.as_slice();
        let (a, b) = bn_affine(
            &p[bn.gamma..bn.gamma + channels],
            &p[bn.beta..bn.beta + channels],
            &mean,
            &s[bn.var..bn.var + channels],
        );
        Bn { a, b, mean, invstd }
    }
}

fn resolve_stats(s: StatsRef<'_, CpuBuf>, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let d = s.stats.as_slice();
    let mean = d[s.mean..s.mean + channels].to_vec();
    let invstd = d[s.var..s.var + channels].iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    (mean, invstd)
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn alloc(&self, len: usize, category: Category) -> Result<CpuBuf> {
        let mut data = Vec::new();
        data.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
            device: "cpu".into(),
            requested: len.saturating_mul(4),
            free: super::memory::host_available_bytes().unwrap_or(0),
        })?;
        data.resize(len, 0.0);
        self.tracker.allocated(len * 4, category);
        Ok(CpuBuf { data, category, tracker: self.tracker.clone() })
    }

    fn memory(&self) -> MemoryReport {
        self.tracker.report()
    }

    fn reset_peak(&self) {
        self.tracker.reset_peak()
    }

    fn available_bytes(&self) -> Option<usize> {
        super::memory::host_available_bytes()
    }

    fn upload(&self, dst: &mut CpuBuf, offset: usize, src: &[f32]) -> Result<()> {
        validate::range(dst, offset, src.len(), "upload")?;
        dst.data[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &CpuBuf, offset: usize, len: usize) -> Result<Vec<f32>> {
        validate::range(src, offset, len, "download")?;
        Ok(src.data[offset..offset + len].to_vec())
    }

    fn fill_zero(&self, buf: &mut CpuBuf, offset: usize, len: usize) -> Result<()> {
        validate::range(buf, offset, len, "fill_zero")?;
        buf.data[offset..offset + len].fill(0.0);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn channel_stats(&self, x: View<'_, CpuBuf>, out: StatsMut<'_, CpuBuf>) -> Result<()> {
        validate::channel_stats(&x, &out)?;
        let View { buf: x, mat: xm } = x;
        let StatsMut { stats: out, mean, var } = out;
        let (m, v) = pointwise::channel_stats(x.as_slice(), xm);
        out.data[mean..mean + xm.cols].copy_from_slice(&m);
        out.data[var..var + xm.cols].copy_from_slice(&v);
        Ok(())
    }

    fn update_running_stats(
        &self,
        batch: StatsRef<'_, CpuBuf>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::update_running_stats(batch, channels, &running)?;
        let StatsMut { stats: running, mean: run_mean, var: run_var } = running;
        let s = batch.stats.as_slice();
        pointwise::update_running_stats(
            &s[batch.mean..batch.mean + channels],
            &s[batch.var..batch.var + channels],
            count,
            running.as_mut_slice(),
            run_mean,
            run_var,
        );
        Ok(())
    }

    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        z: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_fwd(&x, w, &z)?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: z, mat: zm } = z;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_conv1x1_fwd(x.as_slice(), xm, &bn, &w.buf.data[w.offset..], z.as_mut_slice(), zm);
        Ok(())
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, CpuBuf>,
        dz: View<'_, CpuBuf>,
        dw: AtMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_wgrad(&x, &dz, &dw)?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dz, mat: dzm } = dz;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_conv1x1_wgrad(x.as_slice(), xm, &bn, dz.as_slice(), dzm, &mut dw.data[dw_off..]);
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
        let View { buf: dz, mat: dzm } = dz;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_conv1x1_dgrad(
            dz.as_slice(),
            dzm,
            &w.buf.data[w.offset..],
            x.as_slice(),
            xm,
            &bn,
            dx.as_mut_slice(),
            dxm,
            accumulate,
            sums.as_mut_slice(),
        );
        Ok(())
    }

    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_fwd(&z, shape, w, &y)?;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, zm.cols);
        conv::bn_relu_conv3x3_fwd(
            z.as_slice(),
            zm,
            shape,
            &bn,
            &w.buf.data[w.offset..],
            y.as_mut_slice(),
            ym,
        );
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
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, zm.cols);
        conv::bn_relu_conv3x3_wgrad(z.as_slice(), zm, shape, &bn, dy.as_slice(), dym, &mut dw.data[dw_off..]);
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
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: g, mat: gm } = g;
        let bn = Bn::resolve(bn, zm.cols);
        conv::bn_relu_conv3x3_dgrad(
            dy.as_slice(),
            dym,
            shape,
            &w.buf.data[w.offset..],
            z.as_slice(),
            zm,
            &bn,
            g.as_mut_slice(),
            gm,
            sums.as_mut_slice(),
        );
        Ok(())
    }

    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        bn: BnRef<'_, CpuBuf>,
        sums: &CpuBuf,
    ) -> Result<()> {
        validate::bn_backward_elementwise(&g, &x, bn, sums)?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let bn = Bn::resolve(bn, xm.cols);
        pointwise::bn_backward_elementwise(
            g.as_mut_slice(),
            gm,
            x.as_slice(),
            xm,
            &bn,
            &sums.data[..2 * xm.cols],
        );
        Ok(())
    }

    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, CpuBuf>,
        bn: BnRef<'_, CpuBuf>,
        grads: &mut CpuBuf,
        corr: &mut CpuBuf,
        target: BnGradTarget,
    ) -> Result<()> {
        validate::bn_grad_fold(&sums, bn, grads, corr, target)?;
        let BnSums { sums, channels, count } = sums;
        let bn = Bn::resolve(bn, channels);
        pointwise::bn_grad_fold(
            &sums.data[..2 * channels],
            count,
            &bn,
            grads.as_mut_slice(),
            corr.as_mut_slice(),
            target,
        );
        Ok(())
    }

    fn bn_correction(
        &self,
        g: ViewMut<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        stats: StatsRef<'_, CpuBuf>,
        corr: &CpuBuf,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        validate::bn_correction(&g, &x, stats, corr, alpha, beta)?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let (mean, invstd) = resolve_stats(stats, xm.cols);
        pointwise::bn_correction(
            g.as_mut_slice(),
            gm,
            x.as_slice(),
            xm,
            &mean,
            &invstd,
            &corr.data[alpha..alpha + xm.cols],
            &corr.data[beta..beta + xm.cols],
        );
        Ok(())
    }

    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_fwd(&x, shape, w, &y)?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_avgpool_conv1x1_fwd(
            x.as_slice(),
            xm,
            shape,
            &bn,
            &w.buf.data[w.offset..],
            y.as_mut_slice(),
            ym,
        );
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
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_avgpool_conv1x1_wgrad(
            x.as_slice(),
            xm,
            shape,
            &bn,
            dy.as_slice(),
            dym,
            &mut dw.data[dw_off..],
        );
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
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_avgpool_conv1x1_dgrad(
            dy.as_slice(),
            dym,
            &w.buf.data[w.offset..],
            x.as_slice(),
            xm,
            shape,
            &bn,
            dx.as_mut_slice(),
            dxm,
            sums.as_mut_slice(),
        );
        Ok(())
    }

    fn conv_fwd(
        &self,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::conv_fwd(&x, shape, geom, w, &y)?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        conv::conv_fwd(x.as_slice(), xm, shape, geom, &w.buf.data[w.offset..], y.as_mut_slice(), ym);
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
        let View { buf: x, mat: xm } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        conv::conv_wgrad(x.as_slice(), xm, shape, geom, dy.as_slice(), dym, &mut dw.data[dw_off..]);
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
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        conv::conv_dgrad(dy.as_slice(), dym, shape, geom, &w.buf.data[w.offset..], dx.as_mut_slice(), dxm);
        Ok(())
    }

    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::bn_relu_maxpool_fwd(&t, shape, &y)?;
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, tm.cols);
        pointwise::bn_relu_maxpool_fwd(t.as_slice(), tm, shape, &bn, y.as_mut_slice(), ym);
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
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: g, mat: gm } = g;
        let bn = Bn::resolve(bn, tm.cols);
        pointwise::bn_relu_maxpool_bwd(
            dy.as_slice(),
            dym,
            t.as_slice(),
            tm,
            shape,
            &bn,
            g.as_mut_slice(),
            gm,
            sums.as_mut_slice(),
        );
        Ok(())
    }

    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, CpuBuf>,
        shape: Spatial,
        pooled: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_global_pool_fwd(&x, shape, pooled)?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let bn = Bn::resolve(bn, xm.cols);
        pointwise::bn_relu_global_pool_fwd(x.as_slice(), xm, shape, &bn, pooled.as_mut_slice());
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
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let bn = Bn::resolve(bn, xm.cols);
        pointwise::bn_relu_global_pool_bwd(
            dpooled.as_slice(),
            x.as_slice(),
            xm,
            shape,
            &bn,
            dx.as_mut_slice(),
            dxm,
            sums.as_mut_slice(),
        );
        Ok(())
    }

    fn linear_fwd(
        &self,
        x: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        bias: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, k, out_features) = validate::linear_fwd(x, w, bias, y.as_view())?;
        let (x, y) = (x.buf, y.buf);
        pointwise::linear_fwd(
            x.as_slice(),
            n,
            k,
            &w.buf.data[w.offset..w.offset + out_features * k],
            &bias.buf.data[bias.offset..bias.offset + out_features],
            y.as_mut_slice(),
        );
        Ok(())
    }

    fn linear_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        grads: LinearGrads<'_, CpuBuf>,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, k, out_features) =
            validate::linear_bwd(dy, x, w, grads.grads, grads.dw, grads.dbias, dx.as_view())?;
        let LinearGrads { grads, dw: dw_off, dbias: dbias_off } = grads;
        let (dy, x, dx) = (dy.buf, x.buf, dx.buf);
        pointwise::linear_bwd(
            dy.as_slice(),
            x.as_slice(),
            n,
            k,
            &w.buf.data[w.offset..w.offset + out_features * k],
            grads.as_mut_slice(),
            dw_off,
            dbias_off,
            dx.as_mut_slice(),
        );
        Ok(())
    }

    fn softmax_xent(
        &self,
        logits: View<'_, CpuBuf>,
        labels: &CpuBuf,
        loss: &mut CpuBuf,
        dlogits: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, classes) = validate::softmax_xent(logits, labels, loss, dlogits.as_view())?;
        let (logits, dlogits) = (logits.buf, dlogits.buf);
        // A value check, the cpu backend's own: the kernels cannot refuse a label without a
        // copy to the host, and give a NaN loss instead.
        let labels = &labels.data[..n];
        if let Some(bad) = labels.iter().find(|&&l| !(l >= 0.0 && (l as usize) < classes && l.fract() == 0.0))
        {
            return Err(Error::Shape(format!("label {bad} is not a class index below {classes}")));
        }
        loss.data[0] = pointwise::softmax_xent(
            &logits.data[..n * classes],
            labels,
            classes,
            &mut dlogits.data[..n * classes],
        );
        Ok(())
    }

    fn sgd_update(
        &self,
        params: &mut CpuBuf,
        grads: &CpuBuf,
        velocity: &mut CpuBuf,
        len: usize,
        hp: SgdParams,
    ) -> Result<()> {
        validate::sgd_update(params, grads, velocity, len)?;
        pointwise::sgd_update(&mut params.data[..len], &grads.data[..len], &mut velocity.data[..len], hp);
        Ok(())
    }

    fn copy_columns(&self, src: View<'_, CpuBuf>, dst: ViewMut<'_, CpuBuf>, accumulate: bool) -> Result<()> {
        validate::copy_columns(&src, &dst)?;
        let View { buf: src, mat: sm } = src;
        let ViewMut { buf: dst, mat: dm } = dst;
        unfused::copy_columns(src.as_slice(), sm, dst.as_mut_slice(), dm, accumulate);
        Ok(())
    }

    fn bn_apply(&self, x: View<'_, CpuBuf>, bn: BnRef<'_, CpuBuf>, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::bn_apply(&x, bn, &y)?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let bn = Bn::resolve(bn, xm.cols);
        unfused::bn_apply(x.as_slice(), xm, &bn, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_fwd(&self, x: View<'_, CpuBuf>, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::relu_fwd(&x, &y)?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        unfused::relu_fwd(x.as_slice(), xm, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_bwd(&self, g: ViewMut<'_, CpuBuf>, x: View<'_, CpuBuf>) -> Result<()> {
        validate::relu_bwd(&g, &x)?;
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        unfused::relu_bwd(g.as_mut_slice(), gm, x.as_slice(), xm);
        Ok(())
    }

    fn bn_grad_sums(
        &self,
        g: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        stats: StatsRef<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_grad_sums(&g, &x, stats, sums)?;
        let View { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let (mean, invstd) = resolve_stats(stats, xm.cols);
        unfused::bn_grad_sums(g.as_slice(), gm, x.as_slice(), xm, &mean, &invstd, sums.as_mut_slice());
        Ok(())
    }

    fn avg_pool_fwd(
        &self,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::avg_pool_fwd(&x, shape, window, &y)?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        unfused::avg_pool_fwd(x.as_slice(), xm, shape, window, y.as_mut_slice(), ym);
        Ok(())
    }

    fn avg_pool_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::avg_pool_bwd(&dy, shape, window, &dx)?;
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        unfused::avg_pool_bwd(dy.as_slice(), dym, shape, window, dx.as_mut_slice(), dxm);
        Ok(())
    }

    fn max_pool_fwd(&self, x: View<'_, CpuBuf>, shape: Spatial, y: ViewMut<'_, CpuBuf>) -> Result<()> {
        validate::max_pool_fwd(&x, shape, &y)?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        unfused::max_pool_fwd(x.as_slice(), xm, shape, y.as_mut_slice(), ym);
        Ok(())
    }

    fn max_pool_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        shape: Spatial,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::max_pool_bwd(&dy, &x, shape, &dx)?;
        let View { buf: dy, mat: dym } = dy;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        unfused::max_pool_bwd(dy.as_slice(), dym, x.as_slice(), xm, shape, dx.as_mut_slice(), dxm);
        Ok(())
    }
}
