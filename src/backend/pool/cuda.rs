//! Launch wrappers of `kernels/pool.cu`, and the pieces shared with `unfused.rs`: the stem
//! max-pool's extent, channel checks, and the pixel tiling of the deterministic per-channel
//! sums (`KernelBackend::tile_sums`).
//! Params of `kernels/pool.cu`, and of the tile-sum finishing pass in `kernels/common.cuh`.

use super::PoolOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::launch::{Cut, EW_COLS, EW_ROWS, SplitRule, elementwise_cfg, split};
use crate::backend::cuda::{DeviceBuf, KernelBackend, SCRATCH_FLOATS, kernel_params, storage_kernel, u32_of};
use crate::backend::{BnReluView, Mat, Spatial, View, ViewMut, validate};
use crate::config::conv_out;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// `kernels/pool.cu`, the stem max-pool: input t is `n × h × w` pixels with pitch `ld_t`, the
/// output (y forward, dy backward) `n × out_h × out_w` with pitch `ld_y`, the input gradient g
/// (backward) t's pixels with pitch `ld_g`; the backward's partial sums cover `tile_rows` input
/// pixels per tile.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct MaxPoolParams {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub cols: u32,
    pub ld_t: u32,
    pub ld_y: u32,
    pub ld_g: u32,
    pub tile_rows: u32,
}

/// `kernels/pool.cu`, the head's global pool: x is `n` images of `image` = h·w pixels with
/// pitch `ld_x`, dx the same pixels with pitch `ld_dx`, pooled / dpooled `n × cols` dense; the
/// backward's partial sums cover `tile_rows` pixels per tile.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GlobalPoolParams {
    pub n: u32,
    pub image: u32,
    pub cols: u32,
    pub ld_x: u32,
    pub ld_dx: u32,
    pub tile_rows: u32,
}

kernel_params!(MaxPoolParams, GlobalPoolParams);

/// Fewest pixels of a partial-sum tile: a 32 × 8 block then walks at least 16 pixels per
/// thread, enough to amortise its final in-block combine.
const MIN_TILE_ROWS: usize = 128;
/// Most partial-sum tiles: ImageNet's stem (64 channels) then runs 2 × 1024 blocks, several
/// waves on any GPU, while the finishing pass adds at most 1024 partials per sum.
const MAX_TILES: usize = 1024;
/// Most blocks along a grid's y dimension.
const MAX_GRID_Y: usize = 65_535;

/// The pixel tiling of a deterministic per-channel reduction (`kernels/common.cuh`,
/// "Deterministic per-channel sums"). It depends on the shape only, never on the device, so
/// the sums are bit-identical on every run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SumTiles {
    pub(crate) tile_rows: u32,
    pub(crate) tiles: u32,
    pub(crate) cols: usize,
}

impl SumTiles {
    pub(crate) fn new(rows: usize, cols: usize) -> Result<Self> {
        // A tile's partials are 2·cols doubles (4·cols floats); one float is kept for alignment.
        let fit = (SCRATCH_FLOATS - 1) / (4 * cols.max(1));
        if fit == 0 {
            return Err(Error::Shape(format!(
                "{cols} channels: their partial sums exceed the kernel scratch"
            )));
        }
        // Tiles of at least MIN_TILE_ROWS rows (but the last), rather than evened out below it.
        let rule = SplitRule {
            min_run: MIN_TILE_ROWS,
            max_splits: fit.min(MAX_TILES),
            cut: Cut::Runs { floor: MIN_TILE_ROWS },
        };
        let s = split(rows, rule);
        Ok(SumTiles { tile_rows: u32_of(s.run, "tile rows")?, tiles: u32_of(s.splits, "tiles")?, cols })
    }

    /// The partial kernel's grid: blocks of 32 channels × 8 row threads, one block row per tile.
    pub(crate) fn cfg(&self) -> LaunchCfg {
        LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(self.cols, self.tiles)
    }
}

/// Output extent of the stem max-pool (3×3, stride 2, padding 1).
pub(crate) fn stem_pool_out(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: conv_out(s.h, 3, 2, 1), w: conv_out(s.w, 3, 2, 1) }
}

/// The stem max-pool's params for input matrix `tm` of `shape`, output pitch `ld_y`, input
/// gradient pitch `ld_g` and partial-sum tile `tile_rows` (both 0 in the forward).
fn max_pool_params(
    tm: Mat,
    shape: Spatial,
    ld_y: usize,
    ld_g: usize,
    tile_rows: u32,
) -> Result<MaxPoolParams> {
    let out = stem_pool_out(shape);
    Ok(MaxPoolParams {
        n: u32_of(shape.n, "batch")?,
        h: u32_of(shape.h, "height")?,
        w: u32_of(shape.w, "width")?,
        out_h: u32_of(out.h, "pooled height")?,
        out_w: u32_of(out.w, "pooled width")?,
        cols: u32_of(tm.cols, "cols")?,
        ld_t: u32_of(tm.ld, "ld")?,
        ld_y: u32_of(ld_y, "ld")?,
        ld_g: u32_of(ld_g, "ld")?,
        tile_rows,
    })
}

/// The global pool's params for input matrix `xm` of `shape`, input-gradient pitch `ld_dx`
/// and partial-sum tile `tile_rows` (both 0 in the forward).
fn global_pool_params(xm: Mat, shape: Spatial, ld_dx: usize, tile_rows: u32) -> Result<GlobalPoolParams> {
    Ok(GlobalPoolParams {
        n: u32_of(shape.n, "batch")?,
        image: u32_of(shape.h * shape.w, "image pixels")?,
        cols: u32_of(xm.cols, "cols")?,
        ld_x: u32_of(xm.ld, "ld")?,
        ld_dx: u32_of(ld_dx, "ld")?,
        tile_rows,
    })
}

impl<D: Device> PoolOps for KernelBackend<D> {
    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        validate::bn_relu_maxpool_fwd(&t, shape, &y)?;
        self.dtypes(
            &[("t", t.x.buf), ("y", &*y.buf)],
            &[("BN statistics", t.bn.stats), ("BN parameters", t.bn.params)],
        )?;
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: y, mat: ym } = y;
        let p = max_pool_params(tm, shape, ym.ld, 0, 0)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let addrs = [self.addr(t, tm.offset), mean, var, gamma, beta, self.addr(y, ym.offset)];
        // SAFETY: t covers tm (shape's pixels), y covers ym (the pooled pixels), per-channel
        // vectors cover cols (checked above).
        unsafe {
            self.device.launch(
                storage_kernel!(self, "bn_relu_maxpool_fwd"),
                elementwise_cfg(ym.rows, ym.cols),
                &p,
                &addrs,
            )
        }
    }

    fn bn_relu_maxpool_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        t: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        g: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_relu_maxpool_bwd(&dy, &t, shape, &g, sums)?;
        self.dtypes(
            &[("dy", dy.buf), ("t", t.x.buf), ("g", &*g.buf)],
            &[("BN statistics", t.bn.stats), ("BN parameters", t.bn.params), ("sums", &*sums)],
        )?;
        let View { buf: dy, mat: dym } = dy;
        let BnReluView { x: View { buf: t, mat: tm }, bn } = t;
        let ViewMut { buf: g, mat: gm } = g;
        let tiles = SumTiles::new(tm.rows, tm.cols)?;
        let p = max_pool_params(tm, shape, dym.ld, gm.ld, tiles.tile_rows)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (dy, t, g) = (self.addr(dy, dym.offset), self.addr(t, tm.offset), self.addr(g, gm.offset));
        self.tile_sums(tiles.tiles, tiles.cols, sums, |partials| {
            // SAFETY: dy, t and g cover their matrices (the pooled and the input pixels), the
            // per-channel vectors cover cols, partials one row of 2·cols doubles per tile.
            unsafe {
                self.device.launch(
                    storage_kernel!(self, "bn_relu_maxpool_bwd"),
                    tiles.cfg(),
                    &p,
                    &[dy, t, mean, var, gamma, beta, g, partials],
                )
            }
        })
    }

    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        pooled: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_relu_global_pool_fwd(&x, shape, pooled)?;
        self.dtypes(
            &[("x", x.x.buf)],
            &[("BN statistics", x.bn.stats), ("BN parameters", x.bn.params), ("pooled", &*pooled)],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let p = global_pool_params(xm, shape, 0, 0)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let addrs = [self.addr(x, xm.offset), mean, var, gamma, beta, self.addr(pooled, 0)];
        // One block row per image (looping past the grid's limit): each image's sums are made
        // inside one block, in a fixed order.
        let cfg = LaunchCfg::channel_tiles::<EW_COLS, EW_ROWS>(xm.cols, shape.n.min(MAX_GRID_Y) as u32);
        // SAFETY: x covers xm (shape's pixels), pooled n × cols floats, per-channel vectors
        // cover cols (checked above).
        unsafe { self.device.launch(storage_kernel!(self, "bn_relu_global_pool_fwd"), cfg, &p, &addrs) }
    }

    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &DeviceBuf<D>,
        x: BnReluView<'_, DeviceBuf<D>>,
        shape: Spatial,
        dx: ViewMut<'_, DeviceBuf<D>>,
        sums: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::bn_relu_global_pool_bwd(dpooled, &x, shape, &dx, sums)?;
        self.dtypes(
            &[("x", x.x.buf), ("dx", &*dx.buf)],
            &[
                ("dpooled", dpooled),
                ("BN statistics", x.bn.stats),
                ("BN parameters", x.bn.params),
                ("sums", &*sums),
            ],
        )?;
        let BnReluView { x: View { buf: x, mat: xm }, bn } = x;
        let ViewMut { buf: dx, mat: dxm } = dx;
        let tiles = SumTiles::new(xm.rows, xm.cols)?;
        let p = global_pool_params(xm, shape, dxm.ld, tiles.tile_rows)?;
        let [mean, var, gamma, beta] = self.bn_addresses(bn);
        let (dpooled, x, dx) = (self.addr(dpooled, 0), self.addr(x, xm.offset), self.addr(dx, dxm.offset));
        self.tile_sums(tiles.tiles, tiles.cols, sums, |partials| {
            // SAFETY: dpooled covers n × cols floats, x and dx their matrices, the per-channel
            // vectors cols, partials one row of 2·cols doubles per tile.
            unsafe {
                self.device.launch(
                    storage_kernel!(self, "bn_relu_global_pool_bwd"),
                    tiles.cfg(),
                    &p,
                    &[dpooled, x, mean, var, gamma, beta, dx, partials],
                )
            }
        })
    }
}
