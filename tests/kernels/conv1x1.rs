//! Cases of `kernels/conv1x1.cu`.

crate::kernel_cases! {}
