//! Params of `kernels/unfused.cu`.

use bytemuck::{Pod, Zeroable};

/// `kernels/unfused.cu`, the elementwise ops and `bn_grad_sums`: `rows × cols` matrices x (the
/// input, pitch `ld_x`) and y (the output; for `relu_bwd` the gradient updated in place, for
/// `bn_grad_sums` the gradient read), `accumulate` (non-zero: `copy_columns` adds),
/// `tile_rows` pixels per partial-sum tile of `bn_grad_sums`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct UnfusedParams {
    pub rows: u32,
    pub cols: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub accumulate: u32,
    pub tile_rows: u32,
}

/// `kernels/unfused.cu`, the plain pools: input x (and its gradient dx) `n × h × w` pixels with
/// pitches `ld_x` (`ld_dx`), output y (and dy) `n × out_h × out_w` with pitch `ld_y`; the
/// average pool's window `win_h × win_w`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct UnfusedPoolParams {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub win_h: u32,
    pub win_w: u32,
    pub cols: u32,
    pub ld_x: u32,
    pub ld_y: u32,
    pub ld_dx: u32,
}

kernel_params!(UnfusedParams, UnfusedPoolParams);
