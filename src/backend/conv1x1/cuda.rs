//! Launch wrappers of `kernels/conv1x1.cu`, and what `transition.rs` shares with them: the GEMM
//! grid of `kernels/fused_gemm.cuh` and its deterministic split reductions — weight-gradient
//! splits and data-gradient runs whose partials live in the backend's scratch and are added in
//! a fixed order by a finishing kernel. The splits depend on the shape only, never on the device.
//! Params of `kernels/conv1x1.cu`, and of the split-wgrad finishing pass in
//! `kernels/fused_gemm.cuh` (also launched by `kernels/transition.cu`).

use super::Conv1x1Ops;
use crate::backend::Buffers;
use crate::backend::cuda::conv_kernel;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::{Cut, SplitRule, split, split_sum_launch};
use crate::backend::cuda::{DeviceBuf, KernelBackend, KernelParams, SCRATCH_FLOATS, kernel_params, u32_of};
use crate::backend::{At, AtMut, BnReluView, Mat, View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/conv1x1.cu`: x is `pixels × cin` with pitch `ld_x`, z (forward) or dz (gradients)
/// `pixels × cout` with pitch `ld_z`, dx (dgrad) like x with pitch `ld_dx`. wgrad reduces over
/// `splits` runs of `run` steps of 16 pixels; dgrad runs `splits` runs of `run` tiles of 64
/// pixels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Conv1x1Params {
    pub pixels: u32,
    pub cin: u32,
    pub cout: u32,
    pub ld_x: u32,
    pub ld_z: u32,
    pub ld_dx: u32,
    /// dgrad: non-zero adds into dx instead of overwriting it.
    pub accumulate: u32,
    pub splits: u32,
    pub run: u32,
}

kernel_params!(Conv1x1Params);

/// Threadblock tile of `kernels/fused_gemm.cuh` (`kTileM` = `kTileN`), its reduction step
/// (`kTileK`) and its block size (`kGemmThreads`).
const TILE: usize = 64;
const TILE_K: usize = 16;
const GEMM_THREADS: u32 = 256;
/// Blocks a split launch aims at: two to three waves of resident 256-thread blocks on a
/// 132-SM H100/H200, so that the last wave's tail is short.
const TARGET_BLOCKS: usize = 1024;
/// Fewest reduction steps (of 16 rows) in a weight-gradient split: 512 rows, so that a split's
/// GEMM outweighs writing and re-reading its partial tile.
const MIN_WGRAD_RUN: usize = 32;
/// Fewest row tiles (of 64 rows) in a data-gradient run, to amortise a block's fixed costs
/// (BN constants, the final combine of its sums).
const MIN_DGRAD_RUN: usize = 4;

/// A launch of GEMM blocks over `tiles` = [x, y, z] tiles.
fn gemm_cfg(tiles: [usize; 3]) -> Result<LaunchCfg> {
    Ok(LaunchCfg {
        grid: [u32_of(tiles[0], "grid x")?, u32_of(tiles[1], "grid y")?, u32_of(tiles[2], "grid z")?],
        block: [GEMM_THREADS, 1, 1],
        shared_bytes: 0,
    })
}

/// The forward's grid: tiles of `rows` output rows × tiles of `cout` channels.
pub(crate) fn fwd_cfg(rows: usize, cout: usize) -> Result<LaunchCfg> {
    gemm_cfg([rows.div_ceil(TILE), cout.div_ceil(TILE), 1])
}

/// How a weight gradient `dW (cout × cin) += Σ over rows` is split along the rows: `splits`
/// runs of `run` steps of 16 rows, as many as reach [`TARGET_BLOCKS`] blocks with at least
/// [`MIN_WGRAD_RUN`] steps each and partials that fit the scratch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WgradSplit {
    pub(crate) splits: u32,
    pub(crate) run: u32,
    cout: usize,
    cin: usize,
}

impl WgradSplit {
    /// The split of `rows` rows for a `cout × cin` weight (none of them 0).
    pub(crate) fn new(rows: usize, cout: usize, cin: usize) -> Result<Self> {
        let tiles = cout.div_ceil(TILE) * cin.div_ceil(TILE);
        let max_splits = TARGET_BLOCKS.div_ceil(tiles).min(SCRATCH_FLOATS / (cout * cin));
        let rule = SplitRule { min_run: MIN_WGRAD_RUN, max_splits, cut: Cut::Runs { floor: 1 } };
        let s = split(rows.div_ceil(TILE_K), rule);
        Ok(WgradSplit { splits: u32_of(s.splits, "splits")?, run: u32_of(s.run, "run")?, cout, cin })
    }

    /// Grid: output-channel tiles × input-channel tiles × splits.
    pub(crate) fn cfg(&self) -> Result<LaunchCfg> {
        gemm_cfg([self.cout.div_ceil(TILE), self.cin.div_ceil(TILE), self.splits as usize])
    }
}

/// How a data gradient's rows are cut into runs of row tiles for its per-channel sums:
/// `splits` runs of `run` tiles of 64 rows, as many as reach [`TARGET_BLOCKS`] blocks with at
/// least [`MIN_DGRAD_RUN`] tiles each and double partials that fit the scratch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DgradRuns {
    pub(crate) splits: u32,
    pub(crate) run: u32,
    cin: usize,
}

impl DgradRuns {
    /// The runs over `rows` rows of a gradient with `cin` channels (neither 0).
    pub(crate) fn new(rows: usize, cin: usize) -> Result<Self> {
        // Each run stores 2·cin doubles (4·cin floats); one float more aligns them.
        let fit = (SCRATCH_FLOATS - 1) / (4 * cin);
        let max_splits = TARGET_BLOCKS.div_ceil(cin.div_ceil(TILE)).min(fit);
        let s = split(
            rows.div_ceil(TILE),
            SplitRule { min_run: MIN_DGRAD_RUN, max_splits, cut: Cut::Runs { floor: 1 } },
        );
        Ok(DgradRuns { splits: u32_of(s.splits, "runs")?, run: u32_of(s.run, "run")?, cin })
    }

    /// Grid: input-channel tiles × runs.
    pub(crate) fn cfg(&self) -> Result<LaunchCfg> {
        gemm_cfg([self.cin.div_ceil(TILE), self.splits as usize, 1])
    }
}

impl<D: Device> KernelBackend<D> {
    /// A split weight gradient into the `cout × cin` floats at `dw[dw_off..]`:
    /// `partial` launches the GEMM with the address of its partials (0 when there is a single
    /// split: the kernel then adds into dW itself), then `split_sum_f32` (`kernels/reduce.cu`)
    /// adds the splits into dW in order.
    pub(crate) fn split_wgrad(
        &self,
        split: WgradSplit,
        dw: &mut DeviceBuf<D>,
        dw_off: usize,
        partial: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        if split.splits == 1 {
            return partial(0);
        }
        let len = split.cout * split.cin;
        validate::range(dw, dw_off, len, "weight grad")?;
        let (p, cfg) = split_sum_launch(len, split.splits as usize, true)?;
        let dw = self.addr(dw, dw_off);
        self.with_scratch(split.splits as usize * len, |partials| {
            partial(partials)?;
            // SAFETY: `partials` holds splits × len floats of the scratch reserved above; dw
            // covers len floats (checked above).
            unsafe { self.device.launch("split_sum_f32", cfg, &p, &[partials, dw]) }
        })
    }

    /// Launches `kernel`, a data gradient of `kernels/fused_gemm.cuh` with its BN-ReLU backward
    /// epilogue (the 1×1 convolution's or the transition's), over `runs`, with `operands` =
    /// [output gradient, W, x, mean, var, γ, β, dx] as the kernel takes them, then the sums'
    /// finishing pass ([`Self::split_sums`]).
    ///
    /// # Safety
    /// The operands must cover what `p` describes and `sums` 2·cin floats: each kernel's
    /// arguments are raw addresses.
    pub(crate) unsafe fn fused_dgrad<P: KernelParams>(
        &self,
        kernel: &'static str,
        runs: DgradRuns,
        p: &P,
        operands: [u64; 8],
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        let cfg = runs.cfg()?;
        let sums_addr = self.addr(sums, 0);
        self.split_sums(runs, sums, |partials| {
            let [grad, w, x, mean, var, gamma, beta, dx] = operands;
            // SAFETY: the operands are the caller's; partials is 0 with one run (the kernel
            // stores the sums) or holds 2·cin doubles per run (split_sums).
            unsafe {
                self.device.launch(
                    kernel,
                    cfg,
                    p,
                    &[grad, w, x, mean, var, gamma, beta, dx, sums_addr, partials],
                )
            }
        })
    }

    /// The per-channel sums of a data gradient into `sums[0..2·cin]`: `partial` launches the
    /// GEMM with the address of its double partials (0 when there is a single run: the kernel
    /// then stores the sums itself), then `tile_sums` adds the runs in order.
    pub(crate) fn split_sums(
        &self,
        runs: DgradRuns,
        sums: &mut DeviceBuf<D>,
        partial: impl FnOnce(u64) -> Result<()>,
    ) -> Result<()> {
        if runs.splits == 1 {
            return partial(0);
        }
        validate::range(sums, 0, 2 * runs.cin, "sums")?;
        self.tile_sums(runs.splits, runs.cin, sums, partial)
    }
}

/// The params of a 1×1 convolution between x (`xm`) and z or dz (`zm`).
fn conv1x1_params(
    xm: Mat,
    zm: Mat,
    ld_dx: usize,
    accumulate: bool,
    splits: u32,
    run: u32,
) -> Result<Conv1x1Params> {
    Ok(Conv1x1Params {
        pixels: u32_of(xm.rows, "pixels")?,
        cin: u32_of(xm.cols, "input channels")?,
        cout: u32_of(zm.cols, "output channels")?,
        ld_x: u32_of(xm.ld, "ld")?,
        ld_z: u32_of(zm.ld, "ld")?,
        ld_dx: u32_of(ld_dx, "ld")?,
        accumulate: u32::from(accumulate),
        splits,
        run,
    })
}

impl<D: Device> Conv1x1Ops for KernelBackend<D> {
    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        z: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_fwd(&x, w, &z)?;
        self.dtypes(
            &[("x", x.x.buf), ("z", &*z.buf)],
            &[("w", w.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params)],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: z, mat: zm } = z;
        if zm.rows == 0 || zm.cols == 0 {
            return Ok(());
        }
        let p = conv1x1_params(xm, zm, 0, false, 1, 0)?;
        let (x, w, z) = (self.addr(x, xm.offset), self.addr(w.buf, w.offset), self.addr(z, zm.offset));
        let cfg = fwd_cfg(zm.rows, zm.cols)?;
        self.with_bn_affine(bn, xm.cols, |ab| {
            // SAFETY: x covers xm, z covers zm (same pixels), W cout × cin floats (checked
            // above), the affine table cin pairs.
            unsafe { self.device.launch(conv_kernel!(self, "bn_relu_conv1x1_fwd"), cfg, &p, &[x, ab, w, z]) }
        })
    }

    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        dz: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_conv1x1_wgrad(&x, &dz, &dw)?;
        self.dtypes(
            &[("x", x.x.buf), ("dz", dz.buf)],
            &[("dw", &*dw.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params)],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let View { buf: dz, mat: dzm } = dz;
        let AtMut { buf: dw, offset: dw_off } = dw;
        if xm.rows == 0 || xm.cols == 0 || dzm.cols == 0 {
            return Ok(());
        }
        let split = WgradSplit::new(xm.rows, dzm.cols, xm.cols)?;
        let p = conv1x1_params(xm, dzm, 0, false, split.splits, split.run)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (x, dz, dw_addr) = (self.addr(x, xm.offset), self.addr(dz, dzm.offset), self.addr(dw, dw_off));
        let cfg = split.cfg()?;
        self.split_wgrad(split, dw, dw_off, |partials| {
            // SAFETY: x covers xm, dz covers dzm (same pixels), dW cout × cin floats, the
            // per-channel vectors cin floats (checked above); partials is 0 with one split (the
            // kernel adds into dW) or holds a dW-sized tile per split (split_wgrad).
            unsafe {
                self.device.launch(
                    conv_kernel!(self, "bn_relu_conv1x1_wgrad"),
                    cfg,
                    &p,
                    &[x, mean, var, gamma, beta, dz, dw_addr, partials],
                )
            }
        })
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
        validate::bn_relu_conv1x1_dgrad(&dz, w, &x, &dx, sums)?;
        self.dtypes(
            &[("dz", dz.buf), ("x", x.x.buf), ("dx", &*dx.buf)],
            &[("w", w.buf), ("BN statistics", x.bn.stats), ("BN parameters", x.bn.params), ("sums", &*sums)],
        )?;
        let View { buf: dz, mat: dzm } = dz;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        if xm.cols == 0 {
            return Ok(());
        }
        if xm.rows == 0 {
            // No pixel: every sum is empty.
            return self.fill_zero(sums, 0, 2 * xm.cols);
        }
        let runs = DgradRuns::new(xm.rows, xm.cols)?;
        let p = conv1x1_params(xm, dzm, dxm.ld, accumulate, runs.splits, runs.run)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let operands = [
            self.addr(dz, dzm.offset),
            self.addr(w.buf, w.offset),
            self.addr(x, xm.offset),
            mean,
            var,
            gamma,
            beta,
            self.addr(dx, dxm.offset),
        ];
        // SAFETY: dz covers dzm, x covers xm, dx covers dxm (same pixels and channels), W
        // cout × cin floats, sums and the per-channel vectors 2·cin and cin floats (checked
        // above).
        unsafe { self.fused_dgrad(conv_kernel!(self, "bn_relu_conv1x1_dgrad"), runs, &p, operands, sums) }
    }
}
