//! Statistics, batch-norm backward pieces, pooling, head, loss and optimiser ops of the cpu
//! backend.
#![allow(unused_variables, clippy::too_many_arguments)]

use super::Bn;
use crate::backend::{BnGradTarget, Mat, SgdParams, Spatial};

pub(super) fn channel_stats(x: &[f32], xm: Mat) -> (Vec<f32>, Vec<f32>) {
    unimplemented!()
}

pub(super) fn update_running_stats(mean: &[f32], var: &[f32], count: usize, running: &mut [f32], run_mean: usize, run_var: usize) {
    unimplemented!()
}

pub(super) fn bn_backward_elementwise(g: &mut [f32], gm: Mat, x: &[f32], xm: Mat, bn: &Bn, sums: &[f32]) {
    unimplemented!()
}

pub(super) fn bn_grad_fold(sums: &[f32], count: usize, bn: &Bn, grads: &mut [f32], corr: &mut [f32], target: BnGradTarget) {
    unimplemented!()
}

pub(super) fn bn_correction(g: &mut [f32], gm: Mat, x: &[f32], xm: Mat, mean: &[f32], invstd: &[f32], alpha: &[f32], beta: &[f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_maxpool_fwd(t: &[f32], tm: Mat, shape: Spatial, bn: &Bn, y: &mut [f32], ym: Mat) {
    unimplemented!()
}

pub(super) fn bn_relu_maxpool_bwd(dy: &[f32], dym: Mat, t: &[f32], tm: Mat, shape: Spatial, bn: &Bn, g: &mut [f32], gm: Mat, sums: &mut [f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_global_pool_fwd(x: &[f32], xm: Mat, shape: Spatial, bn: &Bn, pooled: &mut [f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_global_pool_bwd(dpooled: &[f32], x: &[f32], xm: Mat, shape: Spatial, bn: &Bn, dx: &mut [f32], dxm: Mat, sums: &mut [f32]) {
    unimplemented!()
}

pub(super) fn linear_fwd(x: &[f32], n: usize, k: usize, w: &[f32], bias: &[f32], y: &mut [f32]) {
    unimplemented!()
}

pub(super) fn linear_bwd(dy: &[f32], x: &[f32], n: usize, k: usize, w: &[f32], grads: &mut [f32], dw_off: usize, dbias_off: usize, dx: &mut [f32]) {
    unimplemented!()
}

/// Returns the mean loss; writes `(softmax − onehot)/n` into dlogits.
pub(super) fn softmax_xent(logits: &[f32], labels: &[f32], classes: usize, dlogits: &mut [f32]) -> f32 {
    unimplemented!()
}

pub(super) fn sgd_update(params: &mut [f32], grads: &[f32], velocity: &mut [f32], hp: SgdParams) {
    unimplemented!()
}
