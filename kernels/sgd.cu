// sgd.cu — one fused SGD step over every parameter (they live in one flat buffer).
//
// sgd_update_<T>: PyTorch's SGD with momentum μ, weight decay wd and optional Nesterov:
//   d = g + wd·p;  v = μ·v + d;  p −= lr·(d + μ·v) (Nesterov) or lr·v.
//   Zero-initialised v makes the first step's buffer d, as PyTorch's. Grid-stride loop.
//
// CPU reference: src/backend/sgd/cpu.rs (sgd_update).
#include "common.cuh"

// Mirrors backend::sgd::SgdKernelParams.
struct SgdKernelParams {
    unsigned long long len;
    float lr;
    float momentum;
    float weight_decay;
    unsigned int nesterov;
};
static_assert(sizeof(SgdKernelParams) == 24, "size of the Rust mirror (tests/kernel_params.rs)");

template <typename T>
__device__ void sgd_update(const SgdKernelParams p, T* __restrict__ params,
                           const T* __restrict__ grads, T* __restrict__ velocity) {
    const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
    for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.len; i += stride) {
        // Written as the host writes it (no FMA contraction) so both agree to the bit.
        const float w = static_cast<float>(params[i]);
        const float d = __fadd_rn(static_cast<float>(grads[i]), __fmul_rn(p.weight_decay, w));
        const float v = __fadd_rn(__fmul_rn(p.momentum, static_cast<float>(velocity[i])), d);
        const float step = p.nesterov ? __fadd_rn(d, __fmul_rn(p.momentum, v)) : v;
        velocity[i] = static_cast<T>(v);
        params[i] = static_cast<T>(__fsub_rn(w, __fmul_rn(p.lr, step)));
    }
}

#define DN_SGD_KERNELS(T, SUFFIX)                                                                \
    extern "C" __global__ void sgd_update_##SUFFIX(const SgdKernelParams p, T* params,          \
                                                   const T* grads, T* velocity) {               \
        sgd_update<T>(p, params, grads, velocity);                                               \
    }

DN_SGD_KERNELS(float, f32)
