//! Params of `kernels/conv1x1.cu`.
