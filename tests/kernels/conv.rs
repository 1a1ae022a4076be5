//! Cases of `kernels/conv.cu`.

crate::kernel_cases! {}
