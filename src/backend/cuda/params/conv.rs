//! Params of `kernels/conv.cu` (its split reduction takes
//! [`SplitSumParams`](super::conv3x3::SplitSumParams)).

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
