//! Params of `kernels/head.cu`.
