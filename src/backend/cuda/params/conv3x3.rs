//! Params of `kernels/conv3x3.cu`, and of the split reduction its gradients share with
//! `kernels/conv.cu` (`dn_split_sum` in `kernels/common.cuh`).

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

/// `kernels/common.cuh` (`dn_split_sum`): `out (+)= Σ` over `splits` rows of `len` partials.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SplitSumParams {
    pub len: u32,
    pub splits: u32,
    /// Non-zero: accumulate into `out`; zero: overwrite it.
    pub accumulate: u32,
}

kernel_params!(Conv3x3Params, SplitSumParams);
