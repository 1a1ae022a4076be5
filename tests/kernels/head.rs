//! Cases of `kernels/head.cu`.

crate::kernel_cases! {}
