// linear.cu — the classifier's fully connected layer, forward and backward. Its sizes are small
// (n ≤ a few hundred images, k ≤ a few thousand features, out ≤ 1000 classes), so the kernels
// are simple: no tiling, one owner thread (or warp) per output, fixed summation orders —
// deterministic without atomics.
//
// linear_fwd_<T>: y[i][o] = bias[o] + Σ_j x[i][j]·W[o][j]. One warp per output: the lanes stride
//   along j (coalesced reads of a row of x and a row of W) and combine by an xor-shuffle tree.
// linear_bwd_<T>: one launch, a 1-D grid of two parts.
//   * threads t < out·(k + 1), row o = t / (k + 1), column j = t mod (k + 1) of [dW | dbias]:
//     dW[o][j] += Σ_i dy[i][o]·x[i][j], i in order starting from dW as the host does; the last
//     column adds dbias[o] += Σ_i dy[i][o]. Consecutive threads take consecutive j: the reads of
//     x's rows are coalesced and dy[i][o] is a broadcast.
//   * the next n·k threads: dx[i][j] = Σ_o dy[i][o]·W[o][j] (overwrites), o in order; coalesced
//     along j the same way.
//
// CPU reference: src/backend/linear/cpu.rs (linear_fwd, linear_bwd).
#include "common.cuh"

// Mirrors backend::head::LinearParams: x is n × k, W out × k, y / dy n × out, all
// dense.
struct LinearParams {
    unsigned int n;
    unsigned int k;
    unsigned int out;
};
static_assert(sizeof(LinearParams) == 12, "size of the Rust mirror (tests/kernel_params.rs)");

constexpr int kLinearWarpSize = 32;

template <typename T>
__device__ void linear_fwd(const LinearParams p, const T* __restrict__ x,
                           const float* __restrict__ w, const float* __restrict__ bias,
                           T* __restrict__ y) {
    const size_t idx = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kLinearWarpSize;
    // The whole warp shares idx, so it leaves together and the shuffles below see all lanes.
    if (idx >= static_cast<size_t>(p.n) * p.out) return;
    const unsigned int lane = threadIdx.x % kLinearWarpSize;
    const unsigned int i = idx / p.out, o = idx % p.out;
    float s = 0.0f;
    for (unsigned int j = lane; j < p.k; j += kLinearWarpSize)
        s += static_cast<float>(x[dn_at(i, j, p.k)]) * w[dn_at(o, j, p.k)];
    for (int d = kLinearWarpSize / 2; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d);
    if (lane == 0) y[idx] = static_cast<T>(bias[o] + s);
}

template <typename T>
__device__ void linear_bwd(const LinearParams p, const T* __restrict__ dy, const T* __restrict__ x,
                           const float* __restrict__ w, float* __restrict__ dw,
                           float* __restrict__ dbias, T* __restrict__ dx) {
    const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t grad_params = static_cast<size_t>(p.out) * (p.k + 1);
    if (t < grad_params) {
        const unsigned int o = t / (p.k + 1), j = t % (p.k + 1);
        if (j < p.k) {
            float g = dw[dn_at(o, j, p.k)];
            for (unsigned int i = 0; i < p.n; ++i)
                g += static_cast<float>(dy[dn_at(i, o, p.out)]) * static_cast<float>(x[dn_at(i, j, p.k)]);
            dw[dn_at(o, j, p.k)] = g;
        } else {
            float s = 0.0f;
            for (unsigned int i = 0; i < p.n; ++i) s += static_cast<float>(dy[dn_at(i, o, p.out)]);
            dbias[o] += s;
        }
    } else if (t - grad_params < static_cast<size_t>(p.n) * p.k) {
        const size_t e = t - grad_params;
        const unsigned int i = e / p.k, j = e % p.k;
        float g = 0.0f;
        for (unsigned int o = 0; o < p.out; ++o)
            g += static_cast<float>(dy[dn_at(i, o, p.out)]) * w[dn_at(o, j, p.k)];
        dx[e] = static_cast<T>(g);
    }
}

#define DN_LINEAR_KERNELS(T, SUFFIX)                                                              \
    extern "C" __global__ void linear_fwd_##SUFFIX(const LinearParams p, const T* x,             \
                                                   const float* w, const float* bias, T* y) {    \
        linear_fwd<T>(p, x, w, bias, y);                                                          \
    }                                                                                             \
    extern "C" __global__ void linear_bwd_##SUFFIX(const LinearParams p, const T* dy, const T* x, \
                                                   const float* w, float* dw, float* dbias,       \
                                                   T* dx) {                                       \
        linear_bwd<T>(p, dy, x, w, dw, dbias, dx);                                                \
    }

DN_LINEAR_KERNELS(float, f32)
