// common.cuh — device helpers shared by every kernel family.
//
// Included by each kernels/*.cu. Under nvcc it is compiled for the GPU; under the CPU
// emulator (emu/cuda_emu.h, DENSENET_EMU defined) the same code runs on the host.
#pragma once

// Batch-norm epsilon, as PyTorch (mirrors backend::BN_EPS).
#define DN_BN_EPS 1e-5f

// Per-channel affine of a batch-norm, `a = γ/√(var + ε)`, `b = β − mean·a`, evaluated in
// exactly the order and rounding of backend::bn_affine on the host: every backend then takes
// bit-identical ReLU decisions `a·x + b > 0` on identical inputs. The `_rn` intrinsics keep
// nvcc from contracting the multiply-add into an FMA, which would round differently.
__device__ __forceinline__ void dn_bn_affine(float gamma, float beta, float mean, float var,
                                             float& a, float& b) {
    a = __fmul_rn(gamma, __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, DN_BN_EPS))));
    b = __fsub_rn(beta, __fmul_rn(mean, a));
}

// `a·x + b` rounded as on the host (no FMA): the pre-activation whose sign is the ReLU mask.
__device__ __forceinline__ float dn_affine(float a, float x, float b) {
    return __fadd_rn(__fmul_rn(a, x), b);
}

// 1/√(var + ε), as the host computes it.
__device__ __forceinline__ float dn_invstd(float var) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, DN_BN_EPS)));
}

// Element (row, col) of a row-major matrix with leading dimension ld, in 64-bit arithmetic:
// a feature storage can exceed 2^31 elements.
__device__ __forceinline__ size_t dn_at(unsigned int row, unsigned int col, unsigned int ld) {
    return static_cast<size_t>(row) * ld + col;
}
