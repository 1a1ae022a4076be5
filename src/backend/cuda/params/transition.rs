//! Params of `kernels/transition.cu`.
