//! Per-channel batch statistics and the running-statistics update.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/stats.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::{BnAffineParams, ChannelStatsParams, RunningStatsParams};

use crate::backend::{Buffers, StatsMut, StatsRef, View};
use crate::error::Result;

/// Per-channel batch statistics and the running-statistics update.
pub trait StatsOps: Buffers {
    /// Per-channel batch mean and biased variance of the columns of `x` (two-pass or
    /// Welford; never E\[x²\] − E\[x\]²), written to `out[mean..mean+cols]`, `out[var..var+cols]`.
    fn channel_stats(&self, x: View<'_, Self::Buf>, out: StatsMut<'_, Self::Buf>) -> Result<()>;

    /// `running ← (1−m)·running + m·batch`, the variance term unbiased by `count/(count−1)`.
    /// Running mean at `running[run_mean..]`, variance at `running[run_var..]`.
    fn update_running_stats(
        &self,
        batch: StatsRef<'_, Self::Buf>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, Self::Buf>,
    ) -> Result<()>;
}
