//! Params of `kernels/conv.cu`.
