//! Launch wrappers of `kernels/head.cu`.
