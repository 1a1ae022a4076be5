//! Params of `kernels/linear.cu`.

use bytemuck::{Pod, Zeroable};

/// `kernels/linear.cu`: x is `n × k`, W `out × k`, y and dy `n × out`, all dense.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LinearParams {
    pub n: u32,
    pub k: u32,
    pub out: u32,
}

kernel_params!(LinearParams);
