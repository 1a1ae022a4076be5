//! Launch wrappers of `kernels/conv.cu`: the stems' plain convolution (forward, weight
//! gradient through the scratch and `split_sum_f32`, data gradient as a gather).
//! Params of `kernels/conv.cu` (its split reduction takes
//! [`SplitSumParams`](super::conv3x3::SplitSumParams)).

use super::ConvOps;
use crate::backend::conv3x3::cuda::{spatial_u32, wgrad_splits};
use crate::backend::cuda::conv_kernel;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::split_sum_launch;
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::{At, AtMut, ConvGeom, Spatial, View, ViewMut, validate};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// `kernels/conv.cu`: input `n × h × w` with `c_in` channels, output `n × oh × ow` with
/// `c_out`, a square `kernel` with `stride` and `pad`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ConvParams {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub c_in: u32,
    pub c_out: u32,
    pub kernel: u32,
    pub stride: u32,
    pub pad: u32,
    /// Pitch of x (forward, weight gradient) or dx (data gradient).
    pub ld_x: u32,
    /// Pitch of y (forward) or dy (gradients).
    pub ld_y: u32,
    /// Weight gradient: output pixels per split.
    pub split_pixels: u32,
}

kernel_params!(ConvParams);

/// Threads per block of the three kernels (`conv::kThreads`).
const THREADS: u32 = 256;
/// Forward tile: output pixels × output channels per block (`kBM`, `kBN`).
const FWD_PIXELS: usize = 128;
const FWD_COLS: usize = 32;
/// Weight-gradient tile: output channels × GEMM-K columns per block, pixels per stage
/// (`kWgradBCO`, `kWgradBK`, `kWgradBP`).
const WGRAD_CO: usize = 32;
const WGRAD_COLS: usize = 64;
const WGRAD_STAGE_PIXELS: usize = 16;
/// Data gradient: channels per thread, and (output channel, tap) weight vectors staged per
/// chunk, which bounds the kernel to k² ≤ 512 (`kDgradChannels`, `kDgradPairs`).
const DGRAD_CHANNELS: usize = 4;
const DGRAD_PAIRS: usize = 512;

/// The kernels' params for a convolution of `shape` with `c_in` → `c_out` channels (whose
/// geometry `validate::conv_*` accepted: kernel and stride at least 1), and the output extent.
/// Errors on extents the kernels' 32-bit coordinates cannot hold.
fn conv_params(
    shape: Spatial,
    geom: ConvGeom,
    c_in: usize,
    c_out: usize,
    ld_x: usize,
    ld_y: usize,
) -> Result<(ConvParams, Spatial)> {
    let out = geom.out(shape);
    let [n, h, w] = spatial_u32(shape, "conv input")?;
    let [_, oh, ow] = spatial_u32(out, "conv output")?;
    for (size, what) in [(shape.h, "height"), (shape.w, "width")] {
        if size.checked_add(2 * geom.pad).is_none_or(|s| i32::try_from(s).is_err()) {
            return Err(Error::Shape(format!("conv: padded {what} exceeds the kernels' 32-bit coordinates")));
        }
    }
    let p = ConvParams {
        n,
        h,
        w,
        oh,
        ow,
        c_in: u32_of(c_in, "input channels")?,
        c_out: u32_of(c_out, "output channels")?,
        kernel: u32_of(geom.kernel, "kernel")?,
        stride: u32_of(geom.stride, "stride")?,
        pad: u32_of(geom.pad, "padding")?,
        ld_x: u32_of(ld_x, "input pitch")?,
        ld_y: u32_of(ld_y, "output pitch")?,
        split_pixels: 0,
    };
    Ok((p, out))
}

impl<D: Device> ConvOps for KernelBackend<D> {
    fn conv_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::conv_fwd(&x, shape, geom, w, &y)?;
        self.dtypes(&[("x", x.buf), ("y", &*y.buf)], &[("w", w.buf)])?;
        let View { buf: x, mat: xm } = x;
        let ViewMut { buf: y, mat: ym } = y;
        let (p, out) = conv_params(shape, geom, xm.cols, ym.cols, xm.ld, ym.ld)?;
        if out.pixels() == 0 || ym.cols == 0 {
            return Ok(());
        }
        let grid = [
            u32_of(out.pixels().div_ceil(FWD_PIXELS), "blocks")?,
            u32_of(ym.cols.div_ceil(FWD_COLS), "blocks")?,
            1,
        ];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let addrs = [self.addr(x, xm.offset), self.addr(w.buf, w.offset), self.addr(y, ym.offset)];
        // SAFETY: x covers xm (one row per input pixel), y covers ym (one row per output
        // pixel; only its columns are written), W c_out·k²·c_in floats (checked above).
        unsafe { self.device.launch(conv_kernel!(self, "conv_fwd"), cfg, &p, &addrs) }
    }

    fn conv_wgrad(
        &self,
        x: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        dy: View<'_, DeviceBuf<D>>,
        dw: AtMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::conv_wgrad(&x, shape, geom, &dy, &dw)?;
        self.dtypes(&[("x", x.buf), ("dy", dy.buf)], &[("dw", &*dw.buf)])?;
        let View { buf: x, mat: xm } = x;
        let View { buf: dy, mat: dym } = dy;
        let AtMut { buf: dw, offset: dw_off } = dw;
        let (mut p, out) = conv_params(shape, geom, xm.cols, dym.cols, xm.ld, dym.ld)?;
        let cols = geom.kernel * geom.kernel * xm.cols;
        let len = dym.cols * cols;
        if len == 0 || out.pixels() == 0 {
            return Ok(());
        }
        let tile_blocks = [cols.div_ceil(WGRAD_COLS), dym.cols.div_ceil(WGRAD_CO)];
        let (splits, split_pixels) =
            wgrad_splits(out.pixels(), tile_blocks[0] * tile_blocks[1], len, WGRAD_STAGE_PIXELS);
        p.split_pixels = u32_of(split_pixels, "split pixels")?;
        let grid =
            [u32_of(tile_blocks[0], "blocks")?, u32_of(tile_blocks[1], "blocks")?, u32_of(splits, "splits")?];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let (sum_p, sum_cfg) = split_sum_launch(len, splits, true)?;
        let (x_addr, dy_addr, dw_addr) =
            (self.addr(x, xm.offset), self.addr(dy, dym.offset), self.addr(dw, dw_off));
        self.with_scratch(splits * len, |scratch| {
            // SAFETY: x covers xm, dy covers dym (one row per input / output pixel); split s
            // writes rows [s·len, (s+1)·len) of the scratch, which holds splits·len floats.
            unsafe {
                self.device.launch(conv_kernel!(self, "conv_wgrad"), cfg, &p, &[x_addr, dy_addr, scratch])?
            };
            // SAFETY: the scratch holds splits rows of len partials, dw covers len floats at
            // dw_off (checked above).
            unsafe { self.device.launch("split_sum_f32", sum_cfg, &sum_p, &[scratch, dw_addr]) }
        })
    }

    /// See `ConvOps::conv_dgrad`. Kernels up to 22×22 (k² ≤ 512).
    fn conv_dgrad(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, DeviceBuf<D>>,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::conv_dgrad(&dy, shape, geom, w, &dx)?;
        self.dtypes(&[("dy", dy.buf), ("dx", &*dx.buf)], &[("w", w.buf)])?;
        let View { buf: dy, mat: dym } = dy;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let (p, _) = conv_params(shape, geom, dxm.cols, dym.cols, dxm.ld, dym.ld)?;
        if geom.kernel * geom.kernel > DGRAD_PAIRS {
            return Err(Error::Shape(format!(
                "conv dgrad: a {0}x{0} kernel exceeds the supported 22x22",
                geom.kernel
            )));
        }
        if shape.pixels() == 0 || dxm.cols == 0 {
            return Ok(());
        }
        let grid = [
            u32_of(shape.pixels().div_ceil(THREADS as usize), "blocks")?,
            u32_of(dxm.cols.div_ceil(DGRAD_CHANNELS), "blocks")?,
            1,
        ];
        let cfg = LaunchCfg { grid, block: [THREADS, 1, 1], shared_bytes: 0 };
        let addrs = [self.addr(dy, dym.offset), self.addr(w.buf, w.offset), self.addr(dx, dxm.offset)];
        // SAFETY: dy covers dym (one row per output pixel), dx covers dxm (one row per input
        // pixel; only its columns are written), W c_out·k²·c_in floats (checked above).
        unsafe { self.device.launch(conv_kernel!(self, "conv_dgrad"), cfg, &p, &addrs) }
    }
}
