//! The `cpu` backend: plain Rust in f32, the executable specification of every fused op and
//! the CPU fallback. GEMMs go through `matrixmultiply` on row chunks of the pixel dimension,
//! so no op materialises more than a chunk of its fused (BN-ReLU'd, im2col'd) input — the
//! same working-set discipline as the CUDA kernels' shared-memory tiles.
//!
//! Results do not depend on the number of threads: work is split into fixed chunks and
//! per-chunk partial reductions are combined in chunk order.

mod conv;
mod pointwise;
mod unfused;

use super::{
    At, BN_EPS, Backend, BnGradTarget, BnRef, Category, ConvGeom, Mat, MemoryReport, MemoryTracker,
    PoolWindow, SgdParams, Spatial, StatsRef, bn_affine,
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

fn check_range(buf: &CpuBuf, offset: usize, len: usize, what: &str) -> Result<()> {
    if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
        return Err(Error::Shape(format!(
            "{what}: range {offset}..{} outside a buffer of {} floats",
            offset.saturating_add(len),
            buf.len()
        )));
    }
    Ok(())
}

/// Checks that every element a [`Mat`] addresses lies inside `buf`.
fn check_mat(buf: &CpuBuf, m: Mat, what: &str) -> Result<()> {
    if m.cols > m.ld && m.rows > 1 {
        return Err(Error::Shape(format!("{what}: {} columns exceed the pitch {}", m.cols, m.ld)));
    }
    let len = if m.rows == 0 || m.cols == 0 { 0 } else { (m.rows - 1) * m.ld + m.cols };
    check_range(buf, m.offset, len, what)
}

/// Checks that two matrices an elementwise op pairs up have the same shape.
fn check_same_shape(a: Mat, b: Mat, what: &str) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::Shape(format!(
            "{what}: {}x{} and {}x{} matrices",
            a.rows, a.cols, b.rows, b.cols
        )));
    }
    Ok(())
}

/// Checks that two matrices have the same number of channels (columns).
fn check_channels(a: Mat, b: Mat, what: &str) -> Result<()> {
    if a.cols != b.cols {
        return Err(Error::Shape(format!("{what}: {} and {} channels", a.cols, b.cols)));
    }
    Ok(())
}

/// Checks that a matrix has one row per pixel of `shape`.
fn check_pixels(m: Mat, shape: Spatial, what: &str) -> Result<()> {
    if m.rows != shape.pixels() {
        return Err(Error::Shape(format!(
            "{what}: {} rows for {} pixels ({}x{}x{})",
            m.rows,
            shape.pixels(),
            shape.n,
            shape.h,
            shape.w
        )));
    }
    Ok(())
}

/// Checks that the statistics of `channels` channels lie inside their buffer.
fn check_stats(s: StatsRef<'_, CpuBuf>, channels: usize, what: &str) -> Result<()> {
    check_range(s.stats, s.mean, channels, &format!("{what} mean"))?;
    check_range(s.stats, s.var, channels, &format!("{what} variance"))
}

/// Checks that statistics and affine parameters of `channels` channels lie inside their
/// buffers.
fn check_bn(bn: BnRef<'_, CpuBuf>, channels: usize, what: &str) -> Result<()> {
    check_stats(StatsRef { stats: bn.stats, mean: bn.mean, var: bn.var }, channels, what)?;
    check_range(bn.params, bn.gamma, channels, &format!("{what} gamma"))?;
    check_range(bn.params, bn.beta, channels, &format!("{what} beta"))
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
        check_range(dst, offset, src.len(), "upload")?;
        dst.data[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &CpuBuf, offset: usize, len: usize) -> Result<Vec<f32>> {
        check_range(src, offset, len, "download")?;
        Ok(src.data[offset..offset + len].to_vec())
    }

    fn fill_zero(&self, buf: &mut CpuBuf, offset: usize, len: usize) -> Result<()> {
        check_range(buf, offset, len, "fill_zero")?;
        buf.data[offset..offset + len].fill(0.0);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn channel_stats(&self, x: &CpuBuf, xm: Mat, out: &mut CpuBuf, mean: usize, var: usize) -> Result<()> {
        check_mat(x, xm, "channel_stats input")?;
        check_range(out, mean, xm.cols, "channel_stats mean")?;
        check_range(out, var, xm.cols, "channel_stats var")?;
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
        check_range(running, run_mean, channels, "running mean")?;
        check_range(running, run_var, channels, "running var")?;
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
        check_mat(x, xm, "conv1x1 input")?;
        check_mat(z, zm, "conv1x1 output")?;
        check_range(w.buf, w.offset, zm.cols * xm.cols, "conv1x1 weight")?;
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
        check_mat(x, xm, "conv1x1 wgrad input")?;
        check_mat(dz, dzm, "conv1x1 wgrad output grad")?;
        check_range(dw, dw_off, dzm.cols * xm.cols, "conv1x1 weight grad")?;
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
        check_mat(dz, dzm, "conv1x1 dgrad output grad")?;
        check_mat(x, xm, "conv1x1 dgrad input")?;
        check_mat(dx, dxm, "conv1x1 dgrad input grad")?;
        check_range(w.buf, w.offset, dzm.cols * xm.cols, "conv1x1 weight")?;
        check_range(sums, 0, 2 * xm.cols, "conv1x1 dgrad sums")?;
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
        check_mat(z, zm, "conv3x3 input")?;
        check_mat(y, ym, "conv3x3 output")?;
        check_range(w.buf, w.offset, ym.cols * 9 * zm.cols, "conv3x3 weight")?;
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
        check_mat(z, zm, "conv3x3 wgrad input")?;
        check_mat(dy, dym, "conv3x3 wgrad output grad")?;
        check_range(dw, dw_off, dym.cols * 9 * zm.cols, "conv3x3 weight grad")?;
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
        check_mat(dy, dym, "conv3x3 dgrad output grad")?;
        check_mat(z, zm, "conv3x3 dgrad input")?;
        check_mat(g, gm, "conv3x3 dgrad input grad")?;
        check_range(w.buf, w.offset, dym.cols * 9 * zm.cols, "conv3x3 weight")?;
        check_range(sums, 0, 2 * zm.cols, "conv3x3 dgrad sums")?;
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
        check_mat(g, gm, "bn backward gradient")?;
        check_mat(x, xm, "bn backward input")?;
        check_range(sums, 0, 2 * xm.cols, "bn backward sums")?;
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
        check_range(sums, 0, 2 * channels, "bn grad sums")?;
        check_range(grads, target.dgamma, channels, "dgamma")?;
        check_range(grads, target.dbeta, channels, "dbeta")?;
        if let Some((a, b)) = target.correction {
            check_range(corr, a, channels, "correction alpha")?;
            check_range(corr, b, channels, "correction beta")?;
        }
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
        check_mat(g, gm, "bn correction gradient")?;
        check_mat(x, xm, "bn correction input")?;
        check_range(corr, alpha, xm.cols, "correction alpha")?;
        check_range(corr, beta, xm.cols, "correction beta")?;
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
        check_mat(x, xm, "transition input")?;
        check_mat(y, ym, "transition output")?;
        check_range(w.buf, w.offset, ym.cols * xm.cols, "transition weight")?;
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
        check_mat(x, xm, "transition wgrad input")?;
        check_mat(dy, dym, "transition wgrad output grad")?;
        check_range(dw, dw_off, dym.cols * xm.cols, "transition weight grad")?;
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
        check_mat(dy, dym, "transition dgrad output grad")?;
        check_mat(x, xm, "transition dgrad input")?;
        check_mat(dx, dxm, "transition dgrad input grad")?;
        check_range(w.buf, w.offset, dym.cols * xm.cols, "transition weight")?;
        check_range(sums, 0, 2 * xm.cols, "transition dgrad sums")?;
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
        check_mat(x, xm, "conv input")?;
        check_mat(y, ym, "conv output")?;
        check_range(w.buf, w.offset, ym.cols * geom.kernel * geom.kernel * xm.cols, "conv weight")?;
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
        check_mat(x, xm, "conv wgrad input")?;
        check_mat(dy, dym, "conv wgrad output grad")?;
        check_range(dw, dw_off, dym.cols * geom.kernel * geom.kernel * xm.cols, "conv weight grad")?;
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
        check_mat(dy, dym, "conv dgrad output grad")?;
        check_mat(dx, dxm, "conv dgrad input grad")?;
        check_range(w.buf, w.offset, dym.cols * geom.kernel * geom.kernel * dxm.cols, "conv weight")?;
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
        check_mat(t, tm, "maxpool input")?;
        check_mat(y, ym, "maxpool output")?;
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
        check_mat(dy, dym, "maxpool output grad")?;
        check_mat(t, tm, "maxpool input")?;
        check_mat(g, gm, "maxpool input grad")?;
        check_range(sums, 0, 2 * tm.cols, "maxpool sums")?;
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
        check_mat(x, xm, "global pool input")?;
        check_range(pooled, 0, shape.n * xm.cols, "pooled features")?;
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
        check_range(dpooled, 0, shape.n * xm.cols, "pooled gradient")?;
        check_mat(x, xm, "global pool input")?;
        check_mat(dx, dxm, "global pool input grad")?;
        check_range(sums, 0, 2 * xm.cols, "global pool sums")?;
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
        check_range(x, 0, n * k, "linear input")?;
        check_range(w.buf, w.offset, out_features * k, "linear weight")?;
        check_range(bias.buf, bias.offset, out_features, "linear bias")?;
        check_range(y, 0, n * out_features, "linear output")?;
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
        check_range(dy, 0, n * out_features, "linear output grad")?;
        check_range(x, 0, n * k, "linear input")?;
        check_range(w.buf, w.offset, out_features * k, "linear weight")?;
        check_range(grads, dw_off, out_features * k, "linear weight grad")?;
        check_range(grads, dbias_off, out_features, "linear bias grad")?;
        check_range(dx, 0, n * k, "linear input grad")?;
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
        check_range(logits, 0, n * classes, "logits")?;
        check_range(labels, 0, n, "labels")?;
        check_range(loss, 0, 1, "loss")?;
        check_range(dlogits, 0, n * classes, "logit grad")?;
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
        check_range(params, 0, len, "parameters")?;
        check_range(grads, 0, len, "gradients")?;
        check_range(velocity, 0, len, "velocity")?;
        pointwise::sgd_update(&mut params.data[..len], &grads.data[..len], &mut velocity.data[..len], hp);
        Ok(())
    }

    fn copy_columns(&self, src: &CpuBuf, sm: Mat, dst: &mut CpuBuf, dm: Mat, accumulate: bool) -> Result<()> {
        check_mat(src, sm, "copy_columns source")?;
        check_mat(dst, dm, "copy_columns destination")?;
        check_same_shape(sm, dm, "copy_columns")?;
        unfused::copy_columns(src.as_slice(), sm, dst.as_mut_slice(), dm, accumulate);
        Ok(())
    }

    fn bn_apply(&self, x: &CpuBuf, xm: Mat, bn: BnRef<'_, CpuBuf>, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        check_mat(x, xm, "bn_apply input")?;
        check_mat(y, ym, "bn_apply output")?;
        check_same_shape(xm, ym, "bn_apply")?;
        check_bn(bn, xm.cols, "bn_apply")?;
        let bn = Bn::resolve(bn, xm.cols);
        unfused::bn_apply(x.as_slice(), xm, &bn, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_fwd(&self, x: &CpuBuf, xm: Mat, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        check_mat(x, xm, "relu input")?;
        check_mat(y, ym, "relu output")?;
        check_same_shape(xm, ym, "relu")?;
        unfused::relu_fwd(x.as_slice(), xm, y.as_mut_slice(), ym);
        Ok(())
    }

    fn relu_bwd(&self, g: &mut CpuBuf, gm: Mat, x: &CpuBuf, xm: Mat) -> Result<()> {
        check_mat(g, gm, "relu backward gradient")?;
        check_mat(x, xm, "relu backward input")?;
        check_same_shape(gm, xm, "relu backward")?;
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
        check_mat(g, gm, "bn_grad_sums gradient")?;
        check_mat(x, xm, "bn_grad_sums input")?;
        check_same_shape(gm, xm, "bn_grad_sums")?;
        check_stats(stats, xm.cols, "bn_grad_sums")?;
        check_range(sums, 0, 2 * xm.cols, "bn_grad_sums sums")?;
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
        check_window(window)?;
        check_mat(x, xm, "avg_pool input")?;
        check_mat(y, ym, "avg_pool output")?;
        check_pixels(xm, shape, "avg_pool input")?;
        check_pixels(ym, window.out(shape), "avg_pool output")?;
        check_channels(xm, ym, "avg_pool")?;
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
        check_window(window)?;
        check_mat(dy, dym, "avg_pool output grad")?;
        check_mat(dx, dxm, "avg_pool input grad")?;
        check_pixels(dxm, shape, "avg_pool input grad")?;
        check_pixels(dym, window.out(shape), "avg_pool output grad")?;
        check_channels(dxm, dym, "avg_pool")?;
        unfused::avg_pool_bwd(dy.as_slice(), dym, shape, window, dx.as_mut_slice(), dxm);
        Ok(())
    }

    fn max_pool_fwd(&self, x: &CpuBuf, xm: Mat, shape: Spatial, y: &mut CpuBuf, ym: Mat) -> Result<()> {
        check_mat(x, xm, "max_pool input")?;
        check_mat(y, ym, "max_pool output")?;
        check_pixels(xm, shape, "max_pool input")?;
        check_pixels(ym, max_pool_out(shape), "max_pool output")?;
        check_channels(xm, ym, "max_pool")?;
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
        check_mat(dy, dym, "max_pool output grad")?;
        check_mat(x, xm, "max_pool input")?;
        check_mat(dx, dxm, "max_pool input grad")?;
        check_pixels(xm, shape, "max_pool input")?;
        check_same_shape(xm, dxm, "max_pool input grad")?;
        check_pixels(dym, max_pool_out(shape), "max_pool output grad")?;
        check_channels(xm, dym, "max_pool")?;
        unfused::max_pool_bwd(dy.as_slice(), dym, x.as_slice(), xm, shape, dx.as_mut_slice(), dxm);
        Ok(())
    }
}

fn check_window(w: PoolWindow) -> Result<()> {
    if w.h == 0 || w.w == 0 {
        return Err(Error::Shape(format!("pooling window {}x{} is empty", w.h, w.w)));
    }
    Ok(())
}

/// Output extent of the stem max-pool (3×3, stride 2, padding 1).
fn max_pool_out(s: Spatial) -> Spatial {
    let (h, w) = pointwise::pool_out(s);
    Spatial { n: s.n, h, w }
}
