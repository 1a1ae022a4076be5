//! Cases of `kernels/conv3x3.cu`.

crate::kernel_cases! {}
