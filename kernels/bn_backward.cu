// bn_backward.cu — the pieces of batch-norm backward that are not fused into a convolution.
//
// With g the gradient arriving at a BN-ReLU's output (already masked by the ReLU), x̂ the
// normalised input and the per-channel sums S1 = Σg, S2 = Σg·x̂ over the P values of a channel:
//   bn_backward_elementwise_<T>: in place g ← a·(g − S1/P − x̂·S2/P)  (bottleneck and stem BNs,
//     whose input has one reader, so the full backward is applied at once);
//   bn_grad_fold_f32: dγ += S2, dβ += S1 and, for BNs over a feature storage, the deferred
//     correction accumulators α += a·S1/P, β += a·S2/P (docs/ARCHITECTURE.md, "Deferred BN correction");
//   bn_correction_<T>: g ← g − α − x̂·β, applied once per storage channel when its gradient is
//     complete.
// Elementwise kernels use blocks of 32 channels × 8 row-threads: a warp touches 32
// consecutive floats of one pixel.
//
// CPU reference: src/backend/bn_backward/cpu.rs (same function names).
#include "common.cuh"

// Mirrors backend::bn_backward::BnElementwiseParams: g is rows × cols with pitch ld_g, x the
// BN input with pitch ld_x; count = P, the values per channel behind the sums.
struct BnElementwiseParams {
    unsigned int rows;
    unsigned int cols;
    unsigned int ld_g;
    unsigned int ld_x;
    unsigned int count;
};
static_assert(sizeof(BnElementwiseParams) == 20, "size of the Rust mirror (tests/kernel_params.rs)");

// Mirrors backend::bn_backward::BnFoldParams.
struct BnFoldParams {
    unsigned int channels;
    unsigned int count;
    // Non-zero when the correction accumulators are updated.
    unsigned int correct;
};
static_assert(sizeof(BnFoldParams) == 12, "size of the Rust mirror (tests/kernel_params.rs)");

constexpr int kEwCols = 32;
constexpr int kEwRows = 8;

template <typename T>
__device__ void bn_backward_elementwise(const BnElementwiseParams p, T* __restrict__ g,
                                        const T* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ var,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta,
                                        const float* __restrict__ sums) {
    const unsigned int c = blockIdx.x * kEwCols + threadIdx.x;
    if (c >= p.cols) return;
    float a, b;
    dn_bn_affine(gamma[c], beta[c], mean[c], var[c], a, b);
    const float invstd = dn_invstd(var[c]);
    const float inv_p = 1.0f / static_cast<float>(p.count);
    const float s1 = sums[c] * inv_p;
    const float s2 = sums[p.cols + c] * inv_p;
    for (unsigned int r = blockIdx.y * kEwRows + threadIdx.y; r < p.rows; r += gridDim.y * kEwRows) {
        const float xhat = (static_cast<float>(x[dn_at(r, c, p.ld_x)]) - mean[c]) * invstd;
        T& gv = g[dn_at(r, c, p.ld_g)];
        gv = static_cast<T>(a * (static_cast<float>(gv) - s1 - xhat * s2));
    }
}

template <typename T>
__device__ void bn_correction(const BnElementwiseParams p, T* __restrict__ g,
                              const T* __restrict__ x, const float* __restrict__ mean,
                              const float* __restrict__ var, const float* __restrict__ alpha,
                              const float* __restrict__ beta) {
    const unsigned int c = blockIdx.x * kEwCols + threadIdx.x;
    if (c >= p.cols) return;
    const float invstd = dn_invstd(var[c]);
    for (unsigned int r = blockIdx.y * kEwRows + threadIdx.y; r < p.rows; r += gridDim.y * kEwRows) {
        const float xhat = (static_cast<float>(x[dn_at(r, c, p.ld_x)]) - mean[c]) * invstd;
        T& gv = g[dn_at(r, c, p.ld_g)];
        gv = static_cast<T>(static_cast<float>(gv) - alpha[c] - xhat * beta[c]);
    }
}

__device__ void bn_grad_fold(const BnFoldParams p, const float* __restrict__ sums,
                             const float* __restrict__ mean, const float* __restrict__ var,
                             const float* __restrict__ gamma, const float* __restrict__ beta,
                             float* __restrict__ dgamma, float* __restrict__ dbeta,
                             float* __restrict__ corr_alpha, float* __restrict__ corr_beta) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) return;
    const float s1 = sums[c];
    const float s2 = sums[p.channels + c];
    dgamma[c] += s2;
    dbeta[c] += s1;
    if (p.correct) {
        float a, b;
        dn_bn_affine(gamma[c], beta[c], mean[c], var[c], a, b);
        const float inv_p = 1.0f / static_cast<float>(p.count);
        corr_alpha[c] += a * s1 * inv_p;
        corr_beta[c] += a * s2 * inv_p;
    }
}

#define DN_BN_BACKWARD_KERNELS(T, SUFFIX)                                                         \
    extern "C" __global__ void bn_backward_elementwise_##SUFFIX(                                  \
        const BnElementwiseParams p, T* g, const T* x, const float* mean, const float* var,       \
        const float* gamma, const float* beta, const float* sums) {                               \
        bn_backward_elementwise<T>(p, g, x, mean, var, gamma, beta, sums);                        \
    }                                                                                             \
    extern "C" __global__ void bn_correction_##SUFFIX(const BnElementwiseParams p, T* g,          \
                                                      const T* x, const float* mean,              \
                                                      const float* var, const float* alpha,       \
                                                      const float* beta) {                        \
        bn_correction<T>(p, g, x, mean, var, alpha, beta);                                        \
    }

DN_BN_BACKWARD_KERNELS(float, f32)
DN_BN_BACKWARD_KERNELS(dn_bf16, bf16)

// Statistics and parameters are f32 whatever the activation type: one instance.
extern "C" __global__ void bn_grad_fold_f32(const BnFoldParams p, const float* sums,
                                            const float* mean, const float* var,
                                            const float* gamma, const float* beta, float* dgamma,
                                            float* dbeta, float* corr_alpha, float* corr_beta) {
    bn_grad_fold(p, sums, mean, var, gamma, beta, dgamma, dbeta, corr_alpha, corr_beta);
}
