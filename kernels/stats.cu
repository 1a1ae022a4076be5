// stats.cu — per-channel batch statistics of a column range of a feature storage, and the
// running-statistics update.
//
// channel_stats_<T>: mean and biased variance of each column of a rows × cols matrix with
//   leading dimension ld (a channel range of an NHWC storage). Blocks of 32 channels × 16 row
//   threads (a warp reads 32 consecutive floats of a pixel, one 128-byte transaction); the
//   rows are cut into `splits` runs of `rows_per_split` (grid.y), because one block per
//   32 channels could not fill a GPU when a layer adds only 12–32 channels over ~10⁵ pixels.
//   Each block makes two passes over its run (mean, then Σ(x − mean)²) in double — never
//   E[x²] − E[x]², which loses every digit when |mean| ≫ std — and combines its row threads
//   in a fixed order. One split writes mean and variance directly; otherwise each run's
//   (mean, M2) goes to the backend's scratch as doubles and
// channel_stats_finish_f32 merges the runs in order with Chan's pairwise formula
//   (mean += δ·n_s/n, M2 += M2_s + δ²·n_acc·n_s/n), exact and stable in double. The split
//   depends on the shape only, so results are deterministic.
// update_running_stats_f32: running ← (1 − m)·running + m·batch, the variance unbiased by
//   count/(count − 1), as PyTorch.
// bn_affine_f32: a BN's per-channel (a, b) = (γ/√(var + ε), β − mean·a), evaluated once per op
//   into the backend's scratch for the fused forwards (fused_gemm.cuh), whose loaders resolve
//   a new channel at every reduction step: reading a precomputed pair there replaces four
//   loads, an IEEE square root and a division per thread and step.
//
// CPU reference: src/backend/stats/cpu.rs (same op names).
#include "common.cuh"

// Mirrors backend::stats::ChannelStatsParams.
struct ChannelStatsParams {
    unsigned int rows;
    unsigned int cols;
    unsigned int ld;
    unsigned int splits;
    unsigned int rows_per_split;
};
static_assert(sizeof(ChannelStatsParams) == 20, "size of the Rust mirror (tests/kernel_params.rs)");

// Mirrors backend::stats::RunningStatsParams.
struct RunningStatsParams {
    unsigned int channels;
    unsigned int count;
    float momentum;
};
static_assert(sizeof(RunningStatsParams) == 12, "size of the Rust mirror (tests/kernel_params.rs)");

// Mirrors backend::stats::BnAffineParams.
struct BnAffineParams {
    unsigned int channels;
};
static_assert(sizeof(BnAffineParams) == 4, "size of the Rust mirror (tests/kernel_params.rs)");

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

// Rows of split `s`.
__device__ __forceinline__ unsigned int split_rows(const ChannelStatsParams& p, unsigned int s) {
    const unsigned int r0 = s * p.rows_per_split;
    return min(p.rows, r0 + p.rows_per_split) - r0;
}

template <typename T>
__device__ void channel_stats(const ChannelStatsParams p, const T* __restrict__ x,
                              float* __restrict__ mean, float* __restrict__ var,
                              double* __restrict__ partials) {
    __shared__ double scratch[kStatsRowThreads][kStatsCols];
    const unsigned int col = blockIdx.x * kStatsCols + threadIdx.x;
    const bool active = col < p.cols;
    const unsigned int r0 = blockIdx.y * p.rows_per_split;
    const unsigned int r1 = r0 + split_rows(p, blockIdx.y);

    double sum = 0.0;
    if (active)
        for (unsigned int r = r0 + threadIdx.y; r < r1; r += kStatsRowThreads)
            sum += static_cast<double>(x[dn_at(r, col, p.ld)]);
    const double m = column_total(sum, scratch) / (r1 - r0);

    double sq = 0.0;
    if (active)
        for (unsigned int r = r0 + threadIdx.y; r < r1; r += kStatsRowThreads) {
            const double d = static_cast<double>(x[dn_at(r, col, p.ld)]) - m;
            sq += d * d;
        }
    const double m2 = column_total(sq, scratch);

    if (active && threadIdx.y == 0) {
        if (p.splits == 1) {
            mean[col] = static_cast<float>(m);
            var[col] = static_cast<float>(m2 / p.rows);
        } else {
            partials[(static_cast<size_t>(blockIdx.y) * 2) * p.cols + col] = m;
            partials[(static_cast<size_t>(blockIdx.y) * 2 + 1) * p.cols + col] = m2;
        }
    }
}

__device__ void channel_stats_finish(const ChannelStatsParams p, const double* __restrict__ partials,
                                     float* __restrict__ mean, float* __restrict__ var) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.cols) return;
    double n = 0.0, m = 0.0, m2 = 0.0;
    for (unsigned int s = 0; s < p.splits; ++s) {
        const double ns = split_rows(p, s);
        const double ms = partials[(static_cast<size_t>(s) * 2) * p.cols + c];
        const double m2s = partials[(static_cast<size_t>(s) * 2 + 1) * p.cols + c];
        const double total = n + ns;
        const double delta = ms - m;
        m += delta * (ns / total);
        m2 += m2s + delta * delta * (n * ns / total);
        n = total;
    }
    mean[c] = static_cast<float>(m);
    var[c] = static_cast<float>(m2 / p.rows);
}

// Running statistics are f32 at every precision (the op contract), so there is one kernel.
__device__ void update_running_stats(const RunningStatsParams p, const float* __restrict__ mean,
                                     const float* __restrict__ var, float* __restrict__ run_mean,
                                     float* __restrict__ run_var) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) return;
    const float keep = 1.0f - p.momentum;
    // The unbiasing factor in double, as the host computes it.
    const float unbiased = static_cast<float>(static_cast<double>(var[c]) *
                                              (static_cast<double>(p.count) / (p.count - 1.0)));
    run_mean[c] = keep * run_mean[c] + p.momentum * mean[c];
    run_var[c] = keep * run_var[c] + p.momentum * unbiased;
}

// The affine as dn_bn_affine computes it everywhere else, so a ReLU decision taken from the
// table is bit-identical to one taken from the statistics.
__device__ void bn_affine(const BnAffineParams p, const float* __restrict__ mean,
                          const float* __restrict__ var, const float* __restrict__ gamma,
                          const float* __restrict__ beta, float2* __restrict__ ab) {
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= p.channels) return;
    float a, b;
    dn_bn_affine(gamma[c], beta[c], mean[c], var[c], a, b);
    ab[c] = make_float2(a, b);
}

#define DN_STATS_KERNELS(T, SUFFIX)                                                              \
    extern "C" __global__ void channel_stats_##SUFFIX(const ChannelStatsParams p, const T* x,   \
                                                      float* mean, float* var,                   \
                                                      double* partials) {                        \
        channel_stats<T>(p, x, mean, var, partials);                                             \
    }

DN_STATS_KERNELS(float, f32)
DN_STATS_KERNELS(dn_bf16, bf16)

extern "C" __global__ void channel_stats_finish_f32(const ChannelStatsParams p,
                                                    const double* partials, float* mean,
                                                    float* var) {
    channel_stats_finish(p, partials, mean, var);
}

extern "C" __global__ void update_running_stats_f32(const RunningStatsParams p, const float* mean,
                                                    const float* var, float* run_mean,
                                                    float* run_var) {
    update_running_stats(p, mean, var, run_mean, run_var);
}

extern "C" __global__ void bn_affine_f32(const BnAffineParams p, const float* mean, const float* var,
                                         const float* gamma, const float* beta, float2* ab) {
    bn_affine(p, mean, var, gamma, beta, ab);
}
