//! Params of `kernels/pool.cu`, and of the tile-sum finishing pass in `kernels/common.cuh`.

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

/// `tile_sums_finish_f32` (`kernels/reduce.cu`, `dn_tile_sums_finish`):
/// `tiles` rows of `width` = 2·channels double partial sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TileSumsParams {
    pub tiles: u32,
    pub width: u32,
}

kernel_params!(MaxPoolParams, GlobalPoolParams, TileSumsParams);
