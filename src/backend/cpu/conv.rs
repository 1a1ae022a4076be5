//! Convolution-family ops of the cpu backend (GEMM-based, chunked over pixels).
#![allow(unused_variables, clippy::too_many_arguments)]

use super::Bn;
use crate::backend::{ConvGeom, Mat, Spatial};

pub(super) fn bn_relu_conv1x1_fwd(x: &[f32], xm: Mat, bn: &Bn, w: &[f32], z: &mut [f32], zm: Mat) {
    unimplemented!()
}

pub(super) fn bn_relu_conv1x1_wgrad(x: &[f32], xm: Mat, bn: &Bn, dz: &[f32], dzm: Mat, dw: &mut [f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_conv1x1_dgrad(
    dz: &[f32], dzm: Mat, w: &[f32], x: &[f32], xm: Mat, bn: &Bn,
    dx: &mut [f32], dxm: Mat, accumulate: bool, sums: &mut [f32],
) {
    unimplemented!()
}

pub(super) fn bn_relu_conv3x3_fwd(z: &[f32], zm: Mat, shape: Spatial, bn: &Bn, w: &[f32], y: &mut [f32], ym: Mat) {
    unimplemented!()
}

pub(super) fn bn_relu_conv3x3_wgrad(z: &[f32], zm: Mat, shape: Spatial, bn: &Bn, dy: &[f32], dym: Mat, dw: &mut [f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_conv3x3_dgrad(
    dy: &[f32], dym: Mat, shape: Spatial, w: &[f32], z: &[f32], zm: Mat, bn: &Bn,
    g: &mut [f32], gm: Mat, sums: &mut [f32],
) {
    unimplemented!()
}

pub(super) fn bn_relu_avgpool_conv1x1_fwd(x: &[f32], xm: Mat, shape: Spatial, bn: &Bn, w: &[f32], y: &mut [f32], ym: Mat) {
    unimplemented!()
}

pub(super) fn bn_relu_avgpool_conv1x1_wgrad(x: &[f32], xm: Mat, shape: Spatial, bn: &Bn, dy: &[f32], dym: Mat, dw: &mut [f32]) {
    unimplemented!()
}

pub(super) fn bn_relu_avgpool_conv1x1_dgrad(
    dy: &[f32], dym: Mat, w: &[f32], x: &[f32], xm: Mat, shape: Spatial, bn: &Bn,
    dx: &mut [f32], dxm: Mat, sums: &mut [f32],
) {
    unimplemented!()
}

pub(super) fn conv_fwd(x: &[f32], xm: Mat, shape: Spatial, geom: ConvGeom, w: &[f32], y: &mut [f32], ym: Mat) {
    unimplemented!()
}

pub(super) fn conv_wgrad(x: &[f32], xm: Mat, shape: Spatial, geom: ConvGeom, dy: &[f32], dym: Mat, dw: &mut [f32]) {
    unimplemented!()
}

pub(super) fn conv_dgrad(dy: &[f32], dym: Mat, shape: Spatial, geom: ConvGeom, w: &[f32], dx: &mut [f32], dxm: Mat) {
    unimplemented!()
}
