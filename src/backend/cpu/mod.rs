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
    At, BN_EPS, Backend, BnGradTarget, BnRef, Category, ConvGeom, Mat, MemoryReport, MemoryTracker,
    PoolWindow, SgdParams, Spatial, StatsRef, bn_affine, validate,
};
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

    fn channel_stats(&self, x: &CpuBuf, xm: Mat, out: &mut CpuBuf, mean: usize, var: usize) -> Result<()> {
        validate::channel_stats(x, xm, out, mean, var)?;
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
        running: &mut CpuBuf,
        run_mean: usize,
        run_var: usize,
    ) -> Result<()> {
        validate::update_running_stats(batch, channels, running, run_mean, run_var)?;
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
        x: &CpuBuf,
        xm: Mat,
        bn: BnRef<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        z: &mut CpuBuf,
        zm: Mat,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_fwd(x, xm, bn, w, z, zm)?;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_conv1x1_fwd(x.as_slice(), xm, &bn, &w.buf.data[w.offset..], z.as_mut_slice(), zm);
        Ok(())
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: &CpuBuf,
        xm: Mat,
        bn: BnRef<'_, CpuBuf>,
        dz: &CpuBuf,
        dzm: Mat,
        dw: &mut CpuBuf,
        dw_off: usize,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_wgrad(x, xm, bn, dz, dzm, dw, dw_off)?;
        let bn = Bn::resolve(bn, xm.cols);
        conv::bn_relu_conv1x1_wgrad(x.as_slice(), xm, &bn, dz.as_slice(), dzm, &mut dw.data[dw_off..]);
        Ok(())
    }

    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: &CpuBuf,
        dzm: Mat,
        w: At<'_, CpuBuf>,
        x: &CpuBuf,
        xm: Mat,
        bn: BnRef<'_, CpuBuf>,
        dx: &mut CpuBuf,
        dxm: Mat,
        accumulate: bool,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_dgrad(dz, dzm, w, x, xm, bn, dx, dxm, sums)?;
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
        z: &CpuBuf,
        zm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        y: &mut CpuBuf,
        ym: Mat,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_fwd(z, zm, shape, bn, w, y, ym)?;
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
        z: &CpuBuf,
        zm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        dy: &CpuBuf,
        dym: Mat,
        dw: &mut CpuBuf,
        dw_off: usize,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_wgrad(z, zm, shape, bn, dy, dym, dw, dw_off)?;
        let bn = Bn::resolve(bn, zm.cols);
        conv::bn_relu_conv3x3_wgrad(z.as_slice(), zm, shape, &bn, dy.as_slice(), dym, &mut dw.data[dw_off..]);
        Ok(())
    }

    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: &CpuBuf,
        dym: Mat,
        shape: Spatial,
        w: At<'_, CpuBuf>,
        z: &CpuBuf,
        zm: Mat,
        bn: BnRef<'_, CpuBuf>,
        g: &mut CpuBuf,
        gm: Mat,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_dgrad(dy, dym, shape, w, z, zm, bn, g, gm, sums)?;
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
        g: &mut CpuBuf,
        gm: Mat,
        x: &CpuBuf,
        xm: Mat,
        bn: BnRef<'_, CpuBuf>,
        sums: &CpuBuf,
    ) -> Result<()> {
        validate::bn_backward_elementwise(g, gm, x, xm, bn, sums)?;
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
        sums: &CpuBuf,
        channels: usize,
        count: usize,
        bn: BnRef<'_, CpuBuf>,
        grads: &mut CpuBuf,
        corr: &mut CpuBuf,
        target: BnGradTarget,
    ) -> Result<()> {
        validate::bn_grad_fold(sums, channels, bn, grads, corr, target)?;
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
        g: &mut CpuBuf,
        gm: Mat,
        x: &CpuBuf,
        xm: Mat,
        stats: StatsRef<'_, CpuBuf>,
        corr: &CpuBuf,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        validate::bn_correction(g, gm, x, xm, stats, corr, alpha, beta)?;
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
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        y: &mut CpuBuf,
        ym: Mat,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_fwd(x, xm, shape, bn, w, y, ym)?;
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
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        dy: &CpuBuf,
        dym: Mat,
        dw: &mut CpuBuf,
        dw_off: usize,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_wgrad(x, xm, shape, bn, dy, dym, dw, dw_off)?;
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
        dy: &CpuBuf,
        dym: Mat,
        w: At<'_, CpuBuf>,
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        dx: &mut CpuBuf,
        dxm: Mat,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_avgpool_conv1x1_dgrad(dy, dym, w, x, xm, shape, bn, dx, dxm, sums)?;
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
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, CpuBuf>,
        y: &mut CpuBuf,
        ym: Mat,
    ) -> Result<()> {
        validate::conv_fwd(x, xm, shape, geom, w, y, ym)?;
        conv::conv_fwd(x.as_slice(), xm, shape, geom, &w.buf.data[w.offset..], y.as_mut_slice(), ym);
        Ok(())
    }

    fn conv_wgrad(
        &self,
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        geom: ConvGeom,
        dy: &CpuBuf,
        dym: Mat,
        dw: &mut CpuBuf,
        dw_off: usize,
    ) -> Result<()> {
        validate::conv_wgrad(x, xm, shape, geom, dy, dym, dw, dw_off)?;
        conv::conv_wgrad(x.as_slice(), xm, shape, geom, dy.as_slice(), dym, &mut dw.data[dw_off..]);
        Ok(())
    }

    fn conv_dgrad(
        &self,
        dy: &CpuBuf,
        dym: Mat,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, CpuBuf>,
        dx: &mut CpuBuf,
        dxm: Mat,
    ) -> Result<()> {
        validate::conv_dgrad(dy, dym, shape, geom, w, dx, dxm)?;
        conv::conv_dgrad(dy.as_slice(), dym, shape, geom, &w.buf.data[w.offset..], dx.as_mut_slice(), dxm);
        Ok(())
    }

    fn bn_relu_maxpool_fwd(
        &self,
        t: &CpuBuf,
        tm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        y: &mut CpuBuf,
        ym: Mat,
    ) -> Result<()> {
        validate::bn_relu_maxpool_fwd(t, tm, shape, bn, y, ym)?;
        let bn = Bn::resolve(bn, tm.cols);
        pointwise::bn_relu_maxpool_fwd(t.as_slice(), tm, shape, &bn, y.as_mut_slice(), ym);
        Ok(())
    }

    fn bn_relu_maxpool_bwd(
        &self,
        dy: &CpuBuf,
        dym: Mat,
        t: &CpuBuf,
        tm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        g: &mut CpuBuf,
        gm: Mat,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_maxpool_bwd(dy, dym, t, tm, shape, bn, g, gm, sums)?;
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
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        pooled: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_global_pool_fwd(x, xm, shape, bn, pooled)?;
        let bn = Bn::resolve(bn, xm.cols);
        pointwise::bn_relu_global_pool_fwd(x.as_slice(), xm, shape, &bn, pooled.as_mut_slice());
        Ok(())
    }

    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &CpuBuf,
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        bn: BnRef<'_, CpuBuf>,
        dx: &mut CpuBuf,
        dxm: Mat,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_relu_global_pool_bwd(dpooled, x, xm, shape, bn, dx, dxm, sums)?;
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
        x: &CpuBuf,
        n: usize,
        k: usize,
        w: At<'_, CpuBuf>,
        bias: At<'_, CpuBuf>,
        out_features: usize,
        y: &mut CpuBuf,
    ) -> Result<()> {
        validate::linear_fwd(x, n, k, w, bias, out_features, y)?;
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
        dy: &CpuBuf,
        x: &CpuBuf,
        n: usize,
        k: usize,
        w: At<'_, CpuBuf>,
        out_features: usize,
        grads: &mut CpuBuf,
        dw_off: usize,
        dbias_off: usize,
        dx: &mut CpuBuf,
    ) -> Result<()> {
        validate::linear_bwd(dy, x, n, k, w, out_features, grads, dw_off, dbias_off, dx)?;
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
        logits: &CpuBuf,
        labels: &CpuBuf,
        n: usize,
        classes: usize,
        loss: &mut CpuBuf,
        dlogits: &mut CpuBuf,
    ) -> Result<()> {
        validate::softmax_xent(logits, labels, n, classes, loss, dlogits)?;
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

    fn copy_columns(&self, src: &CpuBuf, sm: Mat, dst: &mut CpuBuf, dm: Mat, accumulate: bool) -> Result<()> {
        validate::copy_columns(src, sm, dst, dm)?;
        unfused::copy_columns(src.as_slice(), sm, dst.as_mut_slice(), dm, accumulate);
        Ok(())
    }

    fn bn_apply(&self, x: &CpuBuf, xm: Mat, bn: BnRef<'_, CpuBuf>, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        validate::bn_apply(x, xm, bn, y, ym)?;
        let bn = Bn::resolve(bn, xm.cols);
        unfused::bn_apply(x.as_slice(), xm, &bn, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_fwd(&self, x: &CpuBuf, xm: Mat, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        validate::relu_fwd(x, xm, y, ym)?;
        unfused::relu_fwd(x.as_slice(), xm, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_bwd(&self, g: &mut CpuBuf, gm: Mat, x: &CpuBuf, xm: Mat) -> Result<()> {
        validate::relu_bwd(g, gm, x, xm)?;
        unfused::relu_bwd(g.as_mut_slice(), gm, x.as_slice(), xm);
        Ok(())
    }

    fn bn_grad_sums(
        &self,
        g: &CpuBuf,
        gm: Mat,
        x: &CpuBuf,
        xm: Mat,
        stats: StatsRef<'_, CpuBuf>,
        sums: &mut CpuBuf,
    ) -> Result<()> {
        validate::bn_grad_sums(g, gm, x, xm, stats, sums)?;
        let (mean, invstd) = resolve_stats(stats, xm.cols);
        unfused::bn_grad_sums(g.as_slice(), gm, x.as_slice(), xm, &mean, &invstd, sums.as_mut_slice());
        Ok(())
    }

    fn avg_pool_fwd(
        &self,
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        window: PoolWindow,
        y: &mut CpuBuf,
        ym: Mat,
    ) -> Result<()> {
        validate::avg_pool_fwd(x, xm, shape, window, y, ym)?;
        unfused::avg_pool_fwd(x.as_slice(), xm, shape, window, y.as_mut_slice(), ym);
        Ok(())
    }

    fn avg_pool_bwd(
        &self,
        dy: &CpuBuf,
        dym: Mat,
        shape: Spatial,
        window: PoolWindow,
        dx: &mut CpuBuf,
        dxm: Mat,
    ) -> Result<()> {
        validate::avg_pool_bwd(dy, dym, shape, window, dx, dxm)?;
        unfused::avg_pool_bwd(dy.as_slice(), dym, shape, window, dx.as_mut_slice(), dxm);
        Ok(())
    }

    fn max_pool_fwd(&self, x: &CpuBuf, xm: Mat, shape: Spatial, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        validate::max_pool_fwd(x, xm, shape, y, ym)?;
        unfused::max_pool_fwd(x.as_slice(), xm, shape, y.as_mut_slice(), ym);
        Ok(())
    }

    fn max_pool_bwd(
        &self,
        dy: &CpuBuf,
        dym: Mat,
        x: &CpuBuf,
        xm: Mat,
        shape: Spatial,
        dx: &mut CpuBuf,
        dxm: Mat,
    ) -> Result<()> {
        validate::max_pool_bwd(dy, dym, x, xm, shape, dx, dxm)?;
        unfused::max_pool_bwd(dy.as_slice(), dym, x.as_slice(), xm, shape, dx.as_mut_slice(), dxm);
        Ok(())
    }
}
