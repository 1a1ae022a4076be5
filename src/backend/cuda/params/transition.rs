//! Params of `kernels/transition.cu`.

use bytemuck::{Pod, Zeroable};

/// `kernels/transition.cu`: x is `images × h × w` pixels × `cin` channels with pitch `ld_x`,
/// y (forward) or dy (gradients) `images × ⌊h/2⌋ × ⌊w/2⌋` pixels × `cout` with pitch `ld_y`, dx
/// (dgrad) like x with pitch `ld_dx`. wgrad reduces over `splits` runs of `run` steps of 16
/// output pixels; dgrad runs `splits` runs of `run` tiles of 64 output pixels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TransitionParams {
    pub images: u32,
    pub h: u32,
    pub w: u32,
    pub cin: u32,
    pub cout: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub ld_dx: u32,
    pub splits: u32,
    pub run: u32,
}

kernel_params!(TransitionParams);
