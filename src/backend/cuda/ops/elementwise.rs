//! Launch wrappers of the statistics, batch-norm backward, loss and optimiser kernels.

use super::{Cut, SplitRule, elementwise_cfg, split};
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::params::{
    BnElementwiseParams, BnFoldParams, ChannelStatsParams, RunningStatsParams, SgdKernelParams,
    SoftmaxXentParams,
};
use crate::backend::cuda::{DeviceBuf, KernelBackend, SCRATCH_FLOATS, u32_of};
use crate::backend::validate;
use crate::backend::{BN_MOMENTUM, BnGradTarget, BnRef, SgdParams, StatsRef};
use crate::backend::{BnSums, StatsMut, View, ViewMut};
use crate::error::Result;

/// Fewest rows per run of `channel_stats` (enough work to amortise a block).
const STATS_MIN_ROWS: usize = 1024;
/// Most runs of `channel_stats`: enough blocks to fill a GPU with one 32-channel tile.
const STATS_MAX_SPLITS: usize = 256;

/// The runs of `channel_stats` over `rows` rows of `cols` channels (`cols` not 0): the number
/// of splits and the rows per split. Runs of at least STATS_MIN_ROWS rows, at most
/// STATS_MAX_SPLITS of them, and no more than the scratch holds: (mean, M2) per run and channel
/// as doubles, plus one float to align them.
pub(super) fn stats_split(rows: usize, cols: usize) -> (usize, usize) {
    let max_splits = STATS_MAX_SPLITS.min((SCRATCH_FLOATS - 1) / (4 * cols));
    let s = split(rows, SplitRule { min_run: STATS_MIN_ROWS, max_splits, cut: Cut::Runs { floor: 1 } });
    (s.splits, s.run)
}

impl<D: Device> KernelBackend<D> {
    /// See `Backend::channel_stats`.
    pub fn channel_stats(&self, x: View<'_, DeviceBuf<D>>, out: StatsMut<'_, DeviceBuf<D>>) -> Result<()> {
        validate::channel_stats(&x, &out)?;
        let View { buf: x, mat: xm } = x;
        let StatsMut { stats: out, mean, var } = out;
        if xm.cols == 0 {
            return Ok(());
        }
        let (splits, rows_per_split) = stats_split(xm.rows, xm.cols);
        let p = ChannelStatsParams {
            rows: u32_of(xm.rows, "rows")?,
            cols: u32_of(xm.cols, "cols")?,
            ld: u32_of(xm.ld, "ld")?,
            splits: u32_of(splits, "splits")?,
            rows_per_split: u32_of(rows_per_split, "rows per split")?,
        };
        let (mean_addr, var_addr) = (self.addr(out, mean), self.addr(out, var));
        self.with_scratch(4 * splits * xm.cols + 1, |scratch| {
            // Doubles need 8-byte alignment; the emulator's scratch is only f32-aligned.
            let partials = scratch.next_multiple_of(8);
            let cfg = LaunchCfg::channel_tiles::<32, 16>(xm.cols, splits as u32);
            let addrs = [self.addr(x, xm.offset), mean_addr, var_addr, partials];
            // SAFETY: x covers xm, out covers both cols-long outputs (checked above); the
            // partials (2·splits·cols doubles) fit the scratch requested.
            unsafe { self.device.launch("channel_stats_f32", cfg, &p, &addrs) }?;
            if splits > 1 {
                let cfg = LaunchCfg::per_element::<128>(xm.cols);
                // SAFETY: as above; the first kernel wrote every partial this one reads.
                unsafe {
                    self.device.launch("channel_stats_finish_f32", cfg, &p, &[partials, mean_addr, var_addr])
                }?;
            }
            Ok(())
        })
    }

    /// See `Backend::update_running_stats`.
    pub fn update_running_stats(
        &self,
        batch: StatsRef<'_, DeviceBuf<D>>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::update_running_stats(batch, channels, &running)?;
        let StatsMut { stats: running, mean: run_mean, var: run_var } = running;
        let p = RunningStatsParams {
            channels: u32_of(channels, "channels")?,
            count: u32_of(count, "count")?,
            momentum: BN_MOMENTUM,
        };
        let addrs = [
            self.addr(batch.stats, batch.mean),
            self.addr(batch.stats, batch.var),
            self.addr(running, run_mean),
            self.addr(running, run_var),
        ];
        // SAFETY: every pointer covers `channels` floats (checked above).
        unsafe {
            self.device.launch(
                "update_running_stats_f32",
                LaunchCfg::per_element::<128>(channels),
                &p,
                &addrs,
            )
        }
    }

    /// See `Backend::bn_backward_elementwise`.
    pub fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        sums: &DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_backward_elementwise(&g, &x, bn, sums)?;
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
            self.device.launch("bn_backward_elementwise_f32", elementwise_cfg(gm.rows, gm.cols), &p, &addrs)
        }
    }

    /// See `Backend::bn_grad_fold`.
    pub fn bn_grad_fold(
        &self,
        sums: BnSums<'_, DeviceBuf<D>>,
        bn: BnRef<'_, DeviceBuf<D>>,
        grads: &mut DeviceBuf<D>,
        corr: &mut DeviceBuf<D>,
        target: BnGradTarget,
    ) -> Result<()> {
        validate::bn_grad_fold(&sums, bn, grads, corr, target)?;
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

    /// See `Backend::bn_correction`.
    pub fn bn_correction(
        &self,
        g: ViewMut<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        stats: StatsRef<'_, DeviceBuf<D>>,
        corr: &DeviceBuf<D>,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        validate::bn_correction(&g, &x, stats, corr, alpha, beta)?;
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
        unsafe { self.device.launch("bn_correction_f32", elementwise_cfg(gm.rows, gm.cols), &p, &addrs) }
    }

    /// See `Backend::softmax_xent`. A label that is not a class index gives a NaN loss.
    pub fn softmax_xent(
        &self,
        logits: View<'_, DeviceBuf<D>>,
        labels: &DeviceBuf<D>,
        loss: &mut DeviceBuf<D>,
        dlogits: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        let (n, classes) = validate::softmax_xent(logits, labels, loss, dlogits.as_view())?;
        let (logits, dlogits) = (logits.buf, dlogits.buf);
        let p = SoftmaxXentParams { rows: u32_of(n, "batch")?, classes: u32_of(classes, "classes")? };
        let addrs = [self.addr(logits, 0), self.addr(labels, 0), self.addr(loss, 0), self.addr(dlogits, 0)];
        // SAFETY: logits/dlogits cover n × classes, labels n, loss 1 (checked above).
        unsafe { self.device.launch("softmax_xent_f32", LaunchCfg::single_block::<256>(), &p, &addrs) }
    }

    /// See `Backend::sgd_update`.
    pub fn sgd_update(
        &self,
        params: &mut DeviceBuf<D>,
        grads: &DeviceBuf<D>,
        velocity: &mut DeviceBuf<D>,
        len: usize,
        hp: SgdParams,
    ) -> Result<()> {
        validate::sgd_update(params, grads, velocity, len)?;
        let p = SgdKernelParams {
            len: len as u64,
            lr: hp.lr,
            momentum: hp.momentum,
            weight_decay: hp.weight_decay,
            nesterov: u32::from(hp.nesterov),
        };
        let addrs = [self.addr(params, 0), self.addr(grads, 0), self.addr(velocity, 0)];
        // SAFETY: the three buffers cover `len` floats (checked above).
        unsafe { self.device.launch("sgd_update_f32", LaunchCfg::grid_stride::<256>(len, 1024), &p, &addrs) }
    }
}
