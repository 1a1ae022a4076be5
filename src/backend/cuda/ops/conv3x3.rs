//! Launch wrappers of `kernels/conv3x3.cu`.
