//! Cases of `kernels/transition.cu`.

crate::kernel_cases! {}
