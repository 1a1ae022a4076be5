//! What the kernel families' launch code shares: the one split-count rule of every
//! deterministic split reduction, the elementwise launch shape, BN argument addresses, and the
//! finishing kernels of `kernels/reduce.cu` with their params.
//!
//! Each family's launch code (`backend::<family>::cuda`) checks its arguments against the op
//! contract every backend shares (`backend::validate`, first thing), then fills the family's
//! params struct (where `u32_of` refuses extents the kernels' 32-bit fields cannot hold, and
//! a family refuses what its kernels do not support: those are this backend's own limits),
//! picks grid and block, and launches.

use super::device::{Device, LaunchCfg};
use super::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::{BnRef, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/reduce.cu` (`split_sum_f32`): `out (+)= Σ rows` over `splits` rows of `len` f32
/// partials (split-K weight gradients).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SplitSumParams {
    pub len: u32,
    pub splits: u32,
    /// Non-zero adds into `out` instead of overwriting it.
    pub accumulate: u32,
}

/// `kernels/reduce.cu` (`tile_sums_finish_f32`): adds `tiles` rows of `width` double partials
/// (`[Σg | Σg·x̂]` per tile) in order into f32 sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TileSumsParams {
    pub tiles: u32,
    pub width: u32,
}

kernel_params!(SplitSumParams, TileSumsParams);

/// An op argument for [`KernelBackend::dtypes`]: its name and its buffer.
pub(crate) type Arg<'a, D> = (&'static str, &'a DeviceBuf<D>);

/// Rows each thread of an elementwise kernel walks through (grid-stride), so a launch has
/// enough blocks to fill the GPU without one block per handful of rows.
pub(crate) const ROWS_PER_THREAD: usize = 16;
/// Channel-tile width and row threads of the elementwise kernels (`kEwCols`, `kEwRows`).
pub(crate) const EW_COLS: u32 = 32;
pub(crate) const EW_ROWS: u32 = 8;

/// Params and launch shape of `split_sum_f32` (`kernels/reduce.cu`): `out (+)= Σ rows` over
/// `splits` rows of `len` f32 partials, in blocks of `kDnSumCols × kDnSumRows` = 32 × 8.
pub(crate) fn split_sum_launch(
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

/// How a kernel family cuts a deterministic reduction into splits (see [`split`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitRule {
    /// Fewest units (not 0) a split is meant to cover, so that its work outweighs writing and
    /// re-reading its partials: there are at most ⌈units / min_run⌉ splits.
    pub(crate) min_run: usize,
    /// Most splits: the family's block target and what its partials leave room for in the
    /// scratch, whichever is smaller.
    pub(crate) max_splits: usize,
    /// How the units are dealt out to the splits.
    pub(crate) cut: Cut,
}

/// How a [`SplitRule`] deals the units out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cut {
    /// Split s takes the contiguous units [s·run, (s+1)·run): the count is evened out to equal
    /// runs (but the last), none shorter than `floor` (not 0) units, which may leave fewer
    /// splits than the count.
    Runs { floor: usize },
    /// Split s takes units s, s + splits, s + 2·splits, … (a grid-stride loop), so the count is
    /// the number of splits as it is.
    Strided,
}

/// A reduction's cut: `splits` rows of partials, each over at most `run` units.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Split {
    pub(crate) splits: usize,
    pub(crate) run: usize,
}

/// The one split-count rule of every split reduction of this backend (weight gradients, data-
/// gradient sums, channel statistics, pooling sums): the count is ⌈units / min_run⌉ within
/// [1, max_splits], then dealt out as `rule.cut` says. It depends on the shape only, never
/// on the device, so the finishing kernels add the same partials in the same order on every
/// run and the results are bit-identical. `units` may be 0 (one split).
pub(crate) fn split(units: usize, rule: SplitRule) -> Split {
    let count = units.div_ceil(rule.min_run).min(rule.max_splits).max(1);
    match rule.cut {
        Cut::Runs { floor } => {
            let run = units.div_ceil(count).max(floor);
            Split { splits: units.div_ceil(run).max(1), run }
        }
        Cut::Strided => Split { splits: count, run: units.div_ceil(count) },
    }
}

/// An elementwise launch over a rows × cols matrix: 32-channel × 8-row blocks.
pub(crate) fn elementwise_cfg(rows: usize, cols: usize) -> LaunchCfg {
    let row_blocks = rows.div_ceil(EW_ROWS as usize * ROWS_PER_THREAD).clamp(1, 65_535) as u32;
    LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(cols, row_blocks)
}

impl<D: Device> KernelBackend<D> {
    /// A deterministic per-channel reduction into `sums[0..2·cols]` (checked by the caller):
    /// `partial` launches the kernel that writes `tiles` rows of `[Σg | Σg·x̂]` double
    /// partials at the address it is given (in the scratch), then `tile_sums_finish_f32`
    /// (`kernels/reduce.cu`) adds the rows in a fixed order.
    pub(crate) fn tile_sums(
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

    /// [`validate::dtypes`] for this backend's storage dtype, of the named buffers.
    pub(crate) fn dtypes(&self, activations: &[Arg<'_, D>], f32_args: &[Arg<'_, D>]) -> Result<()> {
        let dtypes =
            |args: &[Arg<'_, D>]| args.iter().map(|&(what, buf)| (what, buf.dtype())).collect::<Vec<_>>();
        validate::dtypes(self.precision.storage(), &dtypes(activations), &dtypes(f32_args))
    }

    /// Addresses of a BN's mean, var, γ, β (the argument order of every fused kernel).
    pub(crate) fn bn_addresses(&self, bn: BnRef<'_, DeviceBuf<D>>) -> [u64; 4] {
        [
            self.addr(bn.stats, bn.mean),
            self.addr(bn.stats, bn.var),
            self.addr(bn.params, bn.gamma),
            self.addr(bn.params, bn.beta),
        ]
    }
}

#[cfg(test)]
mod tests {
    //! Every family's split counts for a table of shapes, computed with the rules as they stood
    //! before they were unified in `split`, so that the unification provably changes nothing.

    use crate::backend::conv1x1::cuda::{DgradRuns, WgradSplit};
    use crate::backend::conv3x3::cuda::{dgrad_pixel_blocks, wgrad_splits};
    use crate::backend::pool::cuda::SumTiles;
    use crate::backend::stats::cuda::stats_split;

    /// conv1x1 / transition weight gradients: (rows, cout, cin) → (splits, run of 16-row steps).
    const WGRAD_1X1: &[(usize, usize, usize, u32, u32)] = &[
        (1, 1, 3, 1, 1),
        (1000, 1, 3, 2, 32),
        (4096, 2048, 1024, 2, 128),
        (25_088, 256, 1024, 16, 98),
        (200_704, 1, 3, 392, 32),
        (200_704, 128, 1024, 32, 392),
        (200_704, 2048, 1024, 2, 6272),
        (802_816, 1, 1024, 64, 784),
        (802_816, 256, 128, 128, 392),
        (802_816, 2048, 1024, 2, 25_088),
        (3_211_264, 1, 1024, 64, 3136),
        (3_211_264, 256, 128, 128, 1568),
    ];
    /// conv1x1 / transition data-gradient sums: (rows, cin) → (runs, run of 64-row tiles).
    const DGRAD_1X1: &[(usize, usize, u32, u32)] = &[
        (1, 1, 1, 1),
        (100, 1, 1, 2),
        (4096, 1, 16, 4),
        (25_088, 1024, 56, 7),
        (200_704, 1, 784, 4),
        (200_704, 256, 242, 13),
        (200_704, 2048, 32, 98),
        (802_816, 1, 965, 13),
        (802_816, 256, 256, 49),
        (802_816, 2048, 32, 392),
        (3_211_264, 128, 512, 98),
        (3_211_264, 1024, 64, 784),
    ];
    /// conv3x3 / conv weight gradients, 16-pixel stages: (pixels, tile blocks, dW floats) →
    /// (splits, pixels per split).
    const WGRAD_CONV: &[(usize, usize, usize, usize, usize)] = &[
        (1, 1, 288, 1, 16),
        (1000, 1, 2_097_152, 2, 512),
        (4096, 1, 294_912, 14, 304),
        (25_088, 1, 73_728, 56, 448),
        (25_088, 1, 262_144, 16, 1568),
        (200_704, 1024, 288, 1, 200_704),
        (200_704, 1, 131_072, 32, 6272),
        (802_816, 7, 288, 146, 5504),
        (802_816, 1, 18_432, 227, 3552),
        (802_816, 1, 589_824, 7, 114_688),
        (3_211_264, 7, 288, 146, 22_000),
        (3_211_264, 1, 18_432, 227, 14_160),
    ];
    /// conv3x3 data-gradient sums: (pixels, pixels per tile, c_in) → pixel blocks.
    const DGRAD_3X3: &[(usize, usize, usize, usize)] = &[
        (1, 128, 1, 1),
        (1000, 128, 1, 8),
        (1000, 256, 1, 4),
        (4096, 128, 1, 32),
        (4096, 256, 1, 16),
        (25_088, 128, 1, 196),
        (25_088, 256, 1, 98),
        (200_704, 128, 1, 1568),
        (200_704, 256, 1, 784),
        (200_704, 128, 2048, 1024),
        (802_816, 128, 1, 2048),
    ];
    /// channel_stats: (rows, cols) → (splits, rows per split).
    const STATS: &[(usize, usize, usize, usize)] = &[
        (1, 1, 1, 1),
        (15, 1, 1, 15),
        (17, 1, 1, 17),
        (100, 1, 1, 100),
        (1000, 1, 1, 1000),
        (4096, 1, 4, 1024),
        (25_088, 1, 25, 1004),
        (200_704, 1, 196, 1024),
        (802_816, 1, 256, 3136),
        (3_211_264, 1, 256, 12_544),
        (0, 64, 1, 1),
    ];
    /// pool / unfused per-channel sums: (rows, cols) → (tiles, rows per tile).
    const SUM_TILES: &[(usize, usize, u32, u32)] = &[
        (1, 1, 1, 128),
        (1000, 1, 8, 128),
        (4096, 1, 32, 128),
        (25_088, 1, 196, 128),
        (200_704, 1, 1024, 196),
        (200_704, 1024, 1019, 197),
        (200_704, 2048, 511, 393),
        (802_816, 1, 1024, 784),
        (802_816, 1024, 1023, 785),
        (802_816, 2048, 511, 1572),
        (3_211_264, 1, 1024, 3136),
        (3_211_264, 1024, 1023, 3140),
        (0, 64, 1, 128),
    ];

    #[test]
    fn split_counts_are_pinned() {
        for &(rows, cout, cin, splits, run) in WGRAD_1X1 {
            let s = WgradSplit::new(rows, cout, cin).unwrap();
            assert_eq!((s.splits, s.run), (splits, run), "conv1x1 wgrad {rows} × {cout} × {cin}");
        }
        for &(rows, cin, splits, run) in DGRAD_1X1 {
            let s = DgradRuns::new(rows, cin).unwrap();
            assert_eq!((s.splits, s.run), (splits, run), "conv1x1 dgrad {rows} × {cin}");
        }
        for &(pixels, tile_blocks, len, splits, split_pixels) in WGRAD_CONV {
            let got = wgrad_splits(pixels, tile_blocks, len, 16);
            assert_eq!(got, (splits, split_pixels), "conv wgrad {pixels} px, {tile_blocks} blocks, {len}");
        }
        for &(pixels, rows, c_in, blocks) in DGRAD_3X3 {
            assert_eq!(
                dgrad_pixel_blocks(pixels, rows, c_in),
                blocks,
                "conv3x3 dgrad {pixels} / {rows} × {c_in}"
            );
        }
        for &(rows, cols, splits, rows_per_split) in STATS {
            assert_eq!(stats_split(rows, cols), (splits, rows_per_split), "channel_stats {rows} × {cols}");
        }
        for &(rows, cols, tiles, tile_rows) in SUM_TILES {
            let t = SumTiles::new(rows, cols).unwrap();
            assert_eq!((t.tiles, t.tile_rows), (tiles, tile_rows), "sum tiles {rows} × {cols}");
        }
    }
}
