use super::StatsOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::{Cut, SplitRule, split};
use crate::backend::cuda::{DeviceBuf, KernelBackend, SCRATCH_FLOATS, kernel_params, storage_kernel, u32_of};
use crate::backend::{BN_MOMENTUM, BnRef, StatsMut, StatsRef, View, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/stats.cu`: a rows × cols matrix with leading dimension ld, its rows cut into
/// `splits` runs of `rows_per_split`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChannelStatsParams {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub splits: u32,
    pub rows_per_split: u32,
}

/// `kernels/stats.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RunningStatsParams {
    pub channels: u32,
    pub count: u32,
    pub momentum: f32,
}

/// `kernels/stats.cu`: `bn_affine_f32` over `channels` channels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnAffineParams {
    pub channels: u32,
}

kernel_params!(ChannelStatsParams, RunningStatsParams, BnAffineParams);

/// Fewest rows per run of `channel_stats` (enough work to amortise a block).
const STATS_MIN_ROWS: usize = 1024;

/// Most runs of `channel_stats`: enough blocks to fill a GPU with one 32-channel tile.
const STATS_MAX_SPLITS: usize = 256;

/// The runs of `channel_stats` over `rows` rows of `cols` channels (`cols` not 0): the number
/// of splits and the rows per split. Runs of at least STATS_MIN_ROWS rows, at most
/// STATS_MAX_SPLITS of them, and no more than the scratch holds: (mean, M2) per run and channel
/// as doubles, plus one float to align them.
pub(crate) fn stats_split(rows: usize, cols: usize) -> (usize, usize) {
    let max_splits = STATS_MAX_SPLITS.min((SCRATCH_FLOATS - 1) / (4 * cols));
    let s = split(rows, SplitRule { min_run: STATS_MIN_ROWS, max_splits, cut: Cut::Runs { floor: 1 } });
    (s.splits, s.run)
}

impl<D: Device> StatsOps for KernelBackend<D> {
    fn channel_stats(&self, x: View<'_, DeviceBuf<D>>, out: StatsMut<'_, DeviceBuf<D>>) -> Result<()> {
        validate::channel_stats(&x, &out)?;
        self.dtypes(&[("x", x.buf)], &[("statistics", &*out.stats)])?;
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
            unsafe { self.device.launch(storage_kernel!(self, "channel_stats"), cfg, &p, &addrs) }?;
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

    fn update_running_stats(
        &self,
        batch: StatsRef<'_, DeviceBuf<D>>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::update_running_stats(batch, channels, &running)?;
        self.dtypes(&[], &[("batch statistics", batch.stats), ("running statistics", &*running.stats)])?;
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
}

impl<D: Device> KernelBackend<D> {
    /// Runs `enqueue` with the device address of `bn`'s per-channel `(a, b)` over `channels`
    /// channels (f32 pairs, 16-byte aligned), which `bn_affine_f32` has just written into the
    /// scratch: the table the fused forwards (`kernels/fused_gemm.cuh`) read at every
    /// reduction step instead of evaluating `γ/√(var + ε)` there. The caller has checked that
    /// `bn`'s vectors cover `channels` floats.
    pub(crate) fn with_bn_affine<R>(
        &self,
        bn: BnRef<'_, DeviceBuf<D>>,
        channels: usize,
        enqueue: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        let p = BnAffineParams { channels: u32_of(channels, "channels")? };
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        self.with_scratch(2 * channels + 3, |scratch| {
            // 16-byte aligned, past up to 3 floats (the emulator's scratch is only f32-aligned):
            // the 1×1 forward's pipeline copies the table two channels per 16-byte cp.async.
            let table = scratch.next_multiple_of(16);
            let cfg = LaunchCfg::per_element::<128>(channels);
            // SAFETY: the four vectors cover `channels` floats (the caller's check); the table's
            // 2·channels floats fit the scratch requested, past the alignment floats.
            unsafe { self.device.launch("bn_affine_f32", cfg, &p, &[mean, var, gamma, beta, table]) }?;
            enqueue(table)
        })
    }
}
