//! Params of `kernels/conv1x1.cu`, and of the split-wgrad finishing pass in
//! `kernels/fused_gemm.cuh` (also launched by `kernels/transition.cu`).

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
