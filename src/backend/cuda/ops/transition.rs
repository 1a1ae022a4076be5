//! Launch wrappers of `kernels/transition.cu`.
