//! Launch wrappers of `kernels/conv3x3.cu`: the dense layer's fused BN-ReLU-conv3x3 forward,
//! weight gradient and data gradient (implicit GEMMs; the gradients reduce over pixels through
//! the backend's scratch and `split_sum_f32`, deterministically).
//! Params of `kernels/conv3x3.cu`, and of the split reduction its gradients share with
//! `kernels/conv.cu` (`dn_split_sum` in `kernels/common.cuh`).

use super::Conv3x3Ops;
use crate::backend::Buffers;
use crate::backend::cuda::conv_kernel;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::{Cut, SplitRule, split, split_sum_launch};
use crate::backend::cuda::{DeviceBuf, KernelBackend, SCRATCH_FLOATS, kernel_params, u32_of};
use crate::backend::{At, AtMut, BnReluView, Spatial, View, ViewMut, validate};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// `kernels/conv3x3.cu`: an NHWC activation of `n·h·w` pixels; z (and g) has `c_in` channels,
/// y (and dy) `c_out`; pitches of z, y/dy and g.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Conv3x3Params {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub c_in: u32,
    pub c_out: u32,
    pub ld_z: u32,
    /// Pitch of y (forward) or dy (gradients).
    pub ld_y: u32,
    pub ld_g: u32,
    /// Tile variant: the GEMM-N tile width of the forward / data gradient, the output-channel
    /// tile width of the weight gradient (8, 16 or 32).
    pub tile: u32,
    /// Weight gradient: pixels per split.
    pub split_pixels: u32,
}

kernel_params!(Conv3x3Params);

/// Threads per block of the three conv3x3 kernels (`conv3x3::kThreads`).
const THREADS: u32 = 256;
/// Tile variants of the forward and data-gradient kernels, widest first: (GEMM-N columns `BN`,
/// pixels per block `BM`), as `conv3x3::Tile<BN, TN>` defines them.
const GEMM_TILES: [(u32, usize); 3] = [(32, 128), (16, 256), (8, 256)];
/// Output-channel tile widths of the weight gradient, widest first (`WTile<BCO, ..>`).
const WGRAD_TILES: [u32; 3] = [32, 16, 8];
/// GEMM-K columns (of `9·c_in`) per weight-gradient block and pixels per stage
/// (`kWgradBK`, `kWgradBP`).
const WGRAD_COLS: usize = 128;
const WGRAD_STAGE_PIXELS: usize = 16;
/// Input channels the forward's shared-memory BN table holds (`kMaxChannels`).
const MAX_CHANNELS: usize = 1024;
/// Blocks a weight-gradient launch aims for (several waves on a large GPU), and the fewest
/// pixels worth a split of its own (`wgrad_splits`, shared with `conv.rs`).
const WGRAD_TARGET_BLOCKS: usize = 1024;
const WGRAD_MIN_SPLIT_PIXELS: usize = 256;
/// Most pixel blocks of a data-gradient launch: each writes one row of partial channel sums,
/// so this bounds the scratch and the final reduction; blocks loop over the remaining tiles.
const DGRAD_MAX_PIXEL_BLOCKS: usize = 2048;

/// `shape` as the kernels' 32-bit fields; they index pixels with `int`, so the pixel count
/// must fit in an `i32`.
pub(crate) fn spatial_u32(shape: Spatial, what: &str) -> Result<[u32; 3]> {
    if i32::try_from(shape.pixels()).is_err() {
        return Err(Error::Shape(format!(
            "{what}: {} pixels exceed the kernels' 32-bit indices",
            shape.pixels()
        )));
    }
    Ok([u32_of(shape.n, "batch")?, u32_of(shape.h, "height")?, u32_of(shape.w, "width")?])
}

/// The tile variant that pads `n` columns the least; ties go to the wider (earlier) tile.
fn least_padding<T: Copy>(n: usize, tiles: &[T], width: impl Fn(T) -> u32) -> T {
    let padded = |t: &T| n.div_ceil(width(*t) as usize) * width(*t) as usize;
    *tiles.iter().min_by_key(|t| padded(t)).expect("tile tables are not empty")
}

/// How a weight gradient splits its reduction over `pixels`: about [`WGRAD_TARGET_BLOCKS`]
/// blocks in all with `tile_blocks` blocks per split, no split under
/// [`WGRAD_MIN_SPLIT_PIXELS`] pixels, and the splits' partials (`len` floats each) within the
/// scratch (`with_scratch` reports a dW too large for even one). Returns the number of splits
/// and the pixels per split, a multiple of the kernel's `stage`.
pub(crate) fn wgrad_splits(pixels: usize, tile_blocks: usize, len: usize, stage: usize) -> (usize, usize) {
    // Cut in whole stages; the fewest stages a split covers is exactly the fewest pixels because
    // both callers' stage (16) divides them.
    let rule = SplitRule {
        min_run: WGRAD_MIN_SPLIT_PIXELS.div_ceil(stage),
        max_splits: (WGRAD_TARGET_BLOCKS / tile_blocks).min(SCRATCH_FLOATS / len),
        cut: Cut::Runs { floor: 1 },
    };
    let s = split(pixels.div_ceil(stage), rule);
    (s.splits, s.run * stage)
}

/// Pixel blocks of a data-gradient launch over `pixels` pixels in tiles of `rows`, for `c_in`
/// channels (not 0): one per tile, at most [`DGRAD_MAX_PIXEL_BLOCKS`], and their rows of
/// `2·c_in` partials within the scratch; the blocks walk the tiles grid-stride.
pub(crate) fn dgrad_pixel_blocks(pixels: usize, rows: usize, c_in: usize) -> usize {
    let max_splits = DGRAD_MAX_PIXEL_BLOCKS.min(SCRATCH_FLOATS / (2 * c_in));
    split(pixels.div_ceil(rows), SplitRule { min_run: 1, max_splits, cut: Cut::Strided }).splits
}

impl<D: Device> Conv3x3Ops for KernelBackend<D> {
    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_fwd(&z, shape, w, &y)?;
        self.dtypes(
            &[("z", z.x.buf), ("y", &*y.buf)],
            &[("w", w.buf), ("BN statistics", z.bn.stats), ("BN parameters", z.bn.params)],
        )?;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: y, mat: ym } = y;
        let (c_in, c_out) = (zm.cols, ym.cols);
        if c_in > MAX_CHANNELS {
            return Err(Error::Shape(format!(
                "conv3x3: {c_in} input channels, the kernel supports {MAX_CHANNELS}"
            )));
        }
        let [n, h, width] = spatial_u32(shape, "conv3x3")?;
        if shape.pixels() == 0 || c_out == 0 {
            return Ok(());
        }
        let (tile, rows) = least_padding(c_out, &GEMM_TILES, |t| t.0);
        let p = Conv3x3Params {
            n,
            h,
            w: width,
            c_in: u32_of(c_in, "input channels")?,
            c_out: u32_of(c_out, "output channels")?,
            ld_z: u32_of(zm.ld, "input pitch")?,
            ld_y: u32_of(ym.ld, "output pitch")?,
            ld_g: 0,
            tile,
            split_pixels: 0,
        };
        let grid = [
            u32_of(shape.pixels().div_ceil(rows), "blocks")?,
            u32_of(c_out.div_ceil(tile as usize), "blocks")?,
            1,
        ];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let addrs = [
            self.addr(z, zm.offset),
            mean,
            var,
            gamma,
            beta,
            self.addr(w.buf, w.offset),
            self.addr(y, ym.offset),
        ];
        // SAFETY: z covers zm and y covers ym, both with one row per pixel of `shape`; the
        // kernel writes only columns [0, c_out) of ym's rows. W covers c_out·9·c_in floats, the
        // BN vectors c_in each (all checked above).
        unsafe { self.device.launch(conv_kernel!(self, "bn_relu_conv3x3_fwd"), cfg, &p, &addrs) }
    }

    fn bn_relu_conv3x3_wgrad(
        &self,
        z: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_wgrad(&z, shape, &dy, &dw)?;
        self.dtypes(
            &[("z", z.x.buf), ("dy", dy.buf)],
            &[("dw", &*dw.buf), ("BN statistics", z.bn.stats), ("BN parameters", z.bn.params)],
        )?;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let (c_in, c_out, pixels) = (zm.cols, dym.cols, shape.pixels());
        let len = c_out * 9 * c_in;
        let [n, h, width] = spatial_u32(shape, "conv3x3 wgrad")?;
        if len == 0 || pixels == 0 {
            return Ok(());
        }
        let tile = least_padding(c_out, &WGRAD_TILES, |t| t);
        let col_blocks = (9 * c_in).div_ceil(WGRAD_COLS);
        let co_blocks = c_out.div_ceil(tile as usize);
        let (splits, split_pixels) = wgrad_splits(pixels, col_blocks * co_blocks, len, WGRAD_STAGE_PIXELS);
        let p = Conv3x3Params {
            n,
            h,
            w: width,
            c_in: u32_of(c_in, "input channels")?,
            c_out: u32_of(c_out, "output channels")?,
            ld_z: u32_of(zm.ld, "input pitch")?,
            ld_y: u32_of(dym.ld, "output grad pitch")?,
            ld_g: 0,
            tile,
            split_pixels: u32_of(split_pixels, "split pixels")?,
        };
        let grid = [u32_of(col_blocks, "blocks")?, u32_of(co_blocks, "blocks")?, u32_of(splits, "splits")?];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let (sum_p, sum_cfg) = split_sum_launch(len, splits, true)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (z_addr, dy_addr, dw_addr) =
            (self.addr(z, zm.offset), self.addr(dy, dym.offset), self.addr(dw, dw_off));
        self.with_scratch(splits * len, |scratch| {
            let addrs = [z_addr, mean, var, gamma, beta, dy_addr, scratch];
            // SAFETY: z covers zm and dy covers dym (one row per pixel each), the BN vectors
            // c_in floats; split s writes rows [s·len, (s+1)·len) of the scratch, which holds
            // splits·len floats.
            unsafe { self.device.launch(conv_kernel!(self, "bn_relu_conv3x3_wgrad"), cfg, &p, &addrs)? };
            // SAFETY: the scratch holds splits rows of len partials, dw covers len floats at
            // dw_off (checked above).
            unsafe { self.device.launch("split_sum_f32", sum_cfg, &sum_p, &[scratch, dw_addr]) }
        })
    }

    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        w: At<'_, DeviceBuf<D>>,
        z: BnReluView<'_, DeviceBuf<D>>,
        g: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_relu_conv3x3_dgrad(&dy, shape, w, &z, &g, sums)?;
        self.dtypes(
            &[("dy", dy.buf), ("z", z.x.buf), ("g", &*g.buf)],
            &[("w", w.buf), ("BN statistics", z.bn.stats), ("BN parameters", z.bn.params), ("sums", &*sums)],
        )?;
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: z, mat: zm }, bn } = z;
        let ViewMut { buf: g, mat: gm } = g;
        let (c_in, c_out, pixels) = (zm.cols, dym.cols, shape.pixels());
        let [n, h, width] = spatial_u32(shape, "conv3x3 dgrad")?;
        if c_in == 0 {
            return Ok(());
        }
        if pixels == 0 {
            // Sums over no pixels.
            return self.fill_zero(sums, 0, 2 * c_in);
        }
        let (tile, rows) = least_padding(c_in, &GEMM_TILES, |t| t.0);
        let pixel_blocks = dgrad_pixel_blocks(pixels, rows, c_in);
        let p = Conv3x3Params {
            n,
            h,
            w: width,
            c_in: u32_of(c_in, "input channels")?,
            c_out: u32_of(c_out, "output channels")?,
            ld_z: u32_of(zm.ld, "input pitch")?,
            ld_y: u32_of(dym.ld, "output grad pitch")?,
            ld_g: u32_of(gm.ld, "input grad pitch")?,
            tile,
            split_pixels: 0,
        };
        let grid = [u32_of(pixel_blocks, "blocks")?, u32_of(c_in.div_ceil(tile as usize), "blocks")?, 1];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let (sum_p, sum_cfg) = split_sum_launch(2 * c_in, pixel_blocks, false)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (dy_addr, w_addr, z_addr) =
            (self.addr(dy, dym.offset), self.addr(w.buf, w.offset), self.addr(z, zm.offset));
        let (g_addr, sums_addr) = (self.addr(g, gm.offset), self.addr(sums, 0));
        self.with_scratch(pixel_blocks * 2 * c_in, |scratch| {
            let addrs = [dy_addr, w_addr, z_addr, mean, var, gamma, beta, g_addr, scratch];
            // SAFETY: dy, z and g cover their matrices (one row per pixel, g and z of the same
            // shape), W c_out·9·c_in floats, the BN vectors c_in; pixel block b writes row b
            // of 2·c_in partials, and the scratch holds pixel_blocks such rows.
            unsafe { self.device.launch(conv_kernel!(self, "bn_relu_conv3x3_dgrad"), cfg, &p, &addrs)? };
            // SAFETY: pixel_blocks rows of 2·c_in partials in the scratch; sums covers 2·c_in.
            unsafe { self.device.launch("split_sum_f32", sum_cfg, &sum_p, &[scratch, sums_addr]) }
        })
    }
}
