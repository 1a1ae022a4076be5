// stats.cu — per-channel batch statistics of a column range of a feature storage, and the
// running-statistics update.
//
// channel_stats_<T>: mean and biased variance of each column of a rows × cols matrix with
//   leading dimension ld (a channel range of an NHWC storage). Two passes (mean, then
//   Σ(x − mean)²) with double accumulation — never E[x²] − E[x]², which loses every digit
//   when |mean| ≫ std. One block per 32 channels: threadIdx.x is the channel (a warp reads
//   32 consecutive floats of a pixel, one 128-byte transaction), threadIdx.y strides over
//   rows; the per-thread partials are combined in a fixed order, so the result is
//   deterministic.
// update_running_stats_<T>: running ← (1 − m)·running + m·batch, the variance unbiased by
//   count/(count − 1), as PyTorch.
//
// CPU reference: src/backend/cpu/pointwise.rs (channel_stats, update_running_stats).
#include "common.cuh"

// Mirrors backend::cuda::params::ChannelStatsParams.
struct ChannelStatsParams {
    unsigned int rows;
    unsigned int cols;
    unsigned int ld;
};

// Mirrors backend::cuda::params::RunningStatsParams.
struct RunningStatsParams {
    unsigned int channels;
    unsigned int count;
    float momentum;
};

constexpr int kStatsCols = 32;
constexpr int kStatsRowThreads = 16;

// Sum over the kStatsRowThreads partials of this thread's column, in a fixed order.
__device__ __forceinline__ double column_total(double partial, double (*scratch)[kStatsCols]) {
    scratch[threadIdx.y][threadIdx.x] = partial;
    __syncthreads();
    double total = 0.0;
    for (int i = 0; i < kStatsRowThreads; ++i) total += scratch[i][threadIdx.x];
    // Everyone has read the scratch before anyone reuses it.
    __syncthreads();
    return total;
}

template <typename T>
__device__ void channel_stats(const ChannelStatsParams p, const T* __restrict__ x,
                              float* __restrict__ mean, float* __restrict__ var) {
    __shared__ double scratch[kStatsRowThreads][kStatsCols];
    const unsigned int col = blockIdx.x * kStatsCols + threadIdx.x;
    const bool active = col < p.cols;

    double sum = 0.0;
    if (active)
        for (unsigned int r = threadIdx.y; r < p.rows; r += kStatsRowThreads)
            sum += static_cast<double>(x[dn_at(r, col, p.ld)]);
    const double m = column_total(sum, scratch) / p.rows;

    double sq = 0.0;
    if (active)
        for (unsigned int r = threadIdx.y; r < p.rows; r += kStatsRowThreads) {
            const double d = static_cast<double>(x[dn_at(r, col, p.ld)]) - m;
            sq += d * d;
        }
    const double v = column_total(sq, scratch) / p.rows;

    if (active && threadIdx.y == 0) {
        mean[col] = static_cast<float>(m);
        var[col] = static_cast<float>(v);
    }
}

template <typename T>
__device__ void update_running_stats(const RunningStatsParams p, const float* __restrict__ mean,
                                     const float* __restrict__ var, T* __restrict__ run_mean,
                                     T* __restrict__ run_var) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) return;
    const float keep = 1.0f - p.momentum;
    // The unbiasing factor in double, as the host computes it.
    const float unbiased = static_cast<float>(static_cast<double>(var[c]) *
                                              (static_cast<double>(p.count) / (p.count - 1.0)));
    run_mean[c] = keep * run_mean[c] + p.momentum * mean[c];
    run_var[c] = keep * run_var[c] + p.momentum * unbiased;
}

#define DN_STATS_KERNELS(T, SUFFIX)                                                              \
    extern "C" __global__ void channel_stats_##SUFFIX(const ChannelStatsParams p, const T* x,   \
                                                      float* mean, float* var) {                 \
        channel_stats<T>(p, x, mean, var);                                                       \
    }                                                                                            \
    extern "C" __global__ void update_running_stats_##SUFFIX(                                    \
        const RunningStatsParams p, const float* mean, const float* var, T* run_mean,            \
        T* run_var) {                                                                            \
        update_running_stats<T>(p, mean, var, run_mean, run_var);                                \
    }

DN_STATS_KERNELS(float, f32)
