// loss.cu — mean softmax cross-entropy and its gradient w.r.t. the logits.
//
// softmax_xent_<T>: one block walks the rows in order; per row the block reduces the maximum
//   and Σexp(l − max) (in double), so every exponent is ≤ 0 (no overflow however large the
//   logits). Thread 0 adds the row losses in row order: the mean loss is deterministic.
//   dlogits = (softmax − onehot)/n. Labels are class indices stored exactly as floats.
//   The batch is small (≤ a few hundred rows) next to the rest of a training step, so one
//   block is enough.
//
// CPU reference: src/backend/loss/cpu.rs (softmax_xent).
#include "common.cuh"

// Mirrors backend::loss::SoftmaxXentParams.
struct SoftmaxXentParams {
    unsigned int rows;
    unsigned int classes;
};
static_assert(sizeof(SoftmaxXentParams) == 8, "size of the Rust mirror (tests/kernel_params.rs)");

constexpr int kLossThreads = 256;

// Block-wide reduction of one double per thread, in a fixed order (tree over shared memory).
template <bool kMax>
__device__ double block_reduce(double v, double* scratch) {
    scratch[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int stride = kLossThreads / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const double other = scratch[threadIdx.x + stride];
            scratch[threadIdx.x] = kMax ? fmax(scratch[threadIdx.x], other) : scratch[threadIdx.x] + other;
        }
        __syncthreads();
    }
    const double total = scratch[0];
    // Everyone has read the total before the scratch is reused.
    __syncthreads();
    return total;
}

template <typename T>
__device__ void softmax_xent(const SoftmaxXentParams p, const T* __restrict__ logits,
                             const float* __restrict__ labels, float* __restrict__ loss,
                             T* __restrict__ dlogits) {
    __shared__ double scratch[kLossThreads];
    double total = 0.0;
    for (unsigned int r = 0; r < p.rows; ++r) {
        const T* row = logits + static_cast<size_t>(r) * p.classes;
        double m = dn_neg_inf_d();
        for (unsigned int j = threadIdx.x; j < p.classes; j += kLossThreads)
            m = fmax(m, static_cast<double>(row[j]));
        m = block_reduce<true>(m, scratch);
        double s = 0.0;
        for (unsigned int j = threadIdx.x; j < p.classes; j += kLossThreads)
            s += exp(static_cast<double>(row[j]) - m);
        s = block_reduce<false>(s, scratch);
        // A label that is not a class index makes the row's loss and gradient NaN (never an
        // out-of-bounds read), so training stops on a non-finite loss.
        const float lf = labels[r];
        const bool valid = lf >= 0.0f && lf < static_cast<float>(p.classes);
        const unsigned int label = valid ? static_cast<unsigned int>(lf) : 0u;
        T* drow = dlogits + static_cast<size_t>(r) * p.classes;
        for (unsigned int j = threadIdx.x; j < p.classes; j += kLossThreads) {
            const double onehot = j == label ? 1.0 : 0.0;
            const double d = (exp(static_cast<double>(row[j]) - m) / s - onehot) / p.rows;
            drow[j] = static_cast<T>(valid ? d : dn_nan_d());
        }
        if (threadIdx.x == 0) total += valid ? log(s) - (static_cast<double>(row[label]) - m) : dn_nan_d();
    }
    if (threadIdx.x == 0) loss[0] = static_cast<float>(total / p.rows);
}

#define DN_LOSS_KERNELS(T, SUFFIX)                                                               \
    extern "C" __global__ void __launch_bounds__(kLossThreads)                                  \
        softmax_xent_##SUFFIX(const SoftmaxXentParams p, const T* logits, const float* labels,  \
                              float* loss, T* dlogits) {                                         \
        softmax_xent<T>(p, logits, labels, loss, dlogits);                                       \
    }

DN_LOSS_KERNELS(float, f32)
