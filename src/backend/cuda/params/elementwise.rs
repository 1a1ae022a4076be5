//! Params of `kernels/stats.cu`, `bn_backward.cu`, `loss.cu` and `sgd.cu`.

use bytemuck::{Pod, Zeroable};

/// `kernels/stats.cu`: a rows × cols matrix with leading dimension ld, its rows cut into
/// `splits` runs of `rows_per_split`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ChannelStatsParams {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub splits: u32,
    pub rows_per_split: u32,
}

/// `kernels/stats.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RunningStatsParams {
    pub channels: u32,
    pub count: u32,
    pub momentum: f32,
}

/// `kernels/bn_backward.cu`: gradient g (rows × cols, pitch ld_g), BN input x (pitch ld_x),
/// `count` values per channel behind the sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnElementwiseParams {
    pub rows: u32,
    pub cols: u32,
    pub ld_g: u32,
    pub ld_x: u32,
    pub count: u32,
}

/// `kernels/bn_backward.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BnFoldParams {
    pub channels: u32,
    pub count: u32,
    /// Non-zero: also update the deferred-correction accumulators.
    pub correct: u32,
}

/// `kernels/loss.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SoftmaxXentParams {
    pub rows: u32,
    pub classes: u32,
}

/// `kernels/sgd.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SgdKernelParams {
    pub len: u64,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: u32,
}

kernel_params!(
    ChannelStatsParams,
    RunningStatsParams,
    BnElementwiseParams,
    BnFoldParams,
    SoftmaxXentParams,
    SgdKernelParams,
);
