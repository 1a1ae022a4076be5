//! Launch wrappers of `kernels/conv.cu`.
