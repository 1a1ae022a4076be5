//! Launch wrappers: each checks its buffers and shapes, fills the kernel family's params
//! struct, picks grid and block, and launches. Every wrapper is an inherent method of
//! [`KernelBackend`] named and typed exactly as the `Backend` trait's op it implements.

mod conv;
mod conv1x1;
mod conv3x3;
mod elementwise;
mod head;
mod pool;
mod transition;
mod unfused;

use super::device::{Device, LaunchCfg};
use super::{DeviceBuf, KernelBackend, check_range};
use crate::backend::{BnRef, Mat, StatsRef};
use crate::error::{Error, Result};

/// Rows each thread of an elementwise kernel walks through (grid-stride), so a launch has
/// enough blocks to fill the GPU without one block per handful of rows.
const ROWS_PER_THREAD: usize = 16;
/// Channel-tile width and row threads of the elementwise kernels (`kEwCols`, `kEwRows`).
const EW_COLS: u32 = 32;
const EW_ROWS: u32 = 8;

/// Errors unless two matrices have the same rows and columns.
pub(super) fn same_shape(g: Mat, x: Mat, what: &str) -> Result<()> {
    if (g.rows, g.cols) != (x.rows, x.cols) {
        return Err(Error::Shape(format!(
            "{what}: gradient is {}x{} but the input is {}x{}",
            g.rows, g.cols, x.rows, x.cols
        )));
    }
    Ok(())
}

/// An elementwise launch over a rows × cols matrix: 32-channel × 8-row blocks.
pub(super) fn elementwise_cfg(rows: usize, cols: usize) -> LaunchCfg {
    let row_blocks = rows.div_ceil(EW_ROWS as usize * ROWS_PER_THREAD).clamp(1, 65_535) as u32;
    LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(cols, row_blocks)
}

impl<D: Device> KernelBackend<D> {
    /// Checks that a BN's statistics cover `channels`.
    pub(super) fn check_stats(
        &self,
        s: StatsRef<'_, DeviceBuf<D>>,
        channels: usize,
        what: &str,
    ) -> Result<()> {
        check_range(s.stats, s.mean, channels, what)?;
        check_range(s.stats, s.var, channels, what)
    }

    /// Checks that a BN's statistics and γ, β cover `channels`.
    pub(super) fn check_bn(&self, bn: BnRef<'_, DeviceBuf<D>>, channels: usize, what: &str) -> Result<()> {
        self.check_stats(StatsRef { stats: bn.stats, mean: bn.mean, var: bn.var }, channels, what)?;
        check_range(bn.params, bn.gamma, channels, what)?;
        check_range(bn.params, bn.beta, channels, what)
    }

    /// Addresses of a BN's mean, var, γ, β (the argument order of every fused kernel).
    pub(super) fn bn_addresses(&self, bn: BnRef<'_, DeviceBuf<D>>) -> [u64; 4] {
        [
            self.addr(bn.stats, bn.mean),
            self.addr(bn.stats, bn.var),
            self.addr(bn.params, bn.gamma),
            self.addr(bn.params, bn.beta),
        ]
    }
}
