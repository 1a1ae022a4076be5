//! Launch wrappers: each checks its arguments against the op contract every backend shares
//! (`backend::validate`, first thing), then fills the kernel family's params struct (where
//! `u32_of` refuses extents the kernels' 32-bit fields cannot hold, and a family refuses
//! what its kernels do not support: those are this backend's own limits), picks grid and
//! block, and launches. Every wrapper is an inherent method of
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
use super::params::conv3x3::SplitSumParams;
use super::params::pool::TileSumsParams;
use super::{DeviceBuf, KernelBackend, u32_of};
use crate::backend::BnRef;
use crate::error::Result;

/// Rows each thread of an elementwise kernel walks through (grid-stride), so a launch has
/// enough blocks to fill the GPU without one block per handful of rows.
const ROWS_PER_THREAD: usize = 16;
/// Channel-tile width and row threads of the elementwise kernels (`kEwCols`, `kEwRows`).
const EW_COLS: u32 = 32;
const EW_ROWS: u32 = 8;

/// Params and launch shape of `split_sum_f32` (`kernels/reduce.cu`): `out (+)= Σ rows` over
/// `splits` rows of `len` f32 partials, in blocks of `kDnSumCols × kDnSumRows` = 32 × 8.
pub(super) fn split_sum_launch(
    len: usize,
    splits: usize,
    accumulate: bool,
) -> Result<(SplitSumParams, LaunchCfg)> {
    let p = SplitSumParams {
        len: u32_of(len, "partials per split")?,
        splits: u32_of(splits, "splits")?,
        accumulate: u32::from(accumulate),
    };
    Ok((p, LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(len, 1)))
}

/// An elementwise launch over a rows × cols matrix: 32-channel × 8-row blocks.
pub(super) fn elementwise_cfg(rows: usize, cols: usize) -> LaunchCfg {
    let row_blocks = rows.div_ceil(EW_ROWS as usize * ROWS_PER_THREAD).clamp(1, 65_535) as u32;
    LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(cols, row_blocks)
}

impl<D: Device> KernelBackend<D> {
    /// A deterministic per-channel reduction into `sums[0..2·cols]` (checked by the caller):
    /// `partial` launches the kernel that writes `tiles` rows of `[Σg | Σg·x̂]` double
    /// partials at the address it is given (in the scratch), then `tile_sums_finish_f32`
    /// (`kernels/reduce.cu`) adds the rows in a fixed order.
    pub(super) fn tile_sums(
        &self,
        tiles: u32,
        cols: usize,
        sums: &mut DeviceBuf<D>,
        partial: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        let width = 2 * cols;
        let p = TileSumsParams { tiles, width: u32_of(width, "sum width")? };
        let sums = self.addr(sums, 0);
        self.with_scratch(tiles as usize * 2 * width + 1, |scratch| {
            // Doubles need 8-byte alignment; the emulator's scratch is only f32-aligned.
            let partials = scratch.next_multiple_of(8);
            partial(partials)?;
            let cfg = LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(width, 1);
            // SAFETY: `partials` holds tiles × width doubles inside the scratch reserved above
            // (2·width floats a tile plus the alignment float); sums covers width floats.
            unsafe { self.device.launch("tile_sums_finish_f32", cfg, &p, &[partials, sums]) }
        })
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
