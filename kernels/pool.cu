// pool.cu — pooling fused with the batch-norm + ReLU before it, and its backward with the BN
// reductions: the ImageNet stem's max-pool and the head's global average pool.
//
// bn_relu_maxpool_fwd_<T>: y = maxpool3x3/2,pad1(relu(a·t + b)); one thread per (output pixel,
//   channel) takes the first maximum of its window (dn_maxpool_first_max, common.cuh).
// bn_relu_maxpool_bwd_<T>: g = scatter(dy) ⊙ [a·t + b > 0], overwriting every element of g, and
//   the partial sums of [Σg | Σg·t̂]. No indices are stored: the forward's arg-max is recomputed
//   from t. The scatter is written as a gather, so overlapping windows need no float atomics:
//   input pixel (iy, ix) lies in at most 2 × 2 windows (output rows iy/2 ..= (iy+1)/2, the same
//   for columns); it recomputes each one's first maximum and adds that window's dy when the
//   maximum is itself, in row-major output order — the order in which the host adds them, so g
//   is bit-identical to the cpu backend's. A pixel with a·t + b ≤ 0 is masked to 0 whatever it
//   would gather, so it skips the windows (about half the pixels after a BN).
// bn_relu_global_pool_fwd_<T>: pooled[n, c] (f32 for every T: the head is f32) = mean over image n's pixels of relu(a·x + b); one
//   block per (32 channels, image), each row thread adds a strided subset of the pixels in
//   double, the 8 totals are added in order (fixed order, deterministic).
// bn_relu_global_pool_bwd_<T>: g = dpooled[n, c]/(h·w) ⊙ [a·x + b > 0]; dx = a·g (overwrites);
//   partial sums of [Σg | Σg·x̂].
// tile_sums_finish_f32 (reduce.cu): adds the backward kernels' per-tile partial sums into `sums`.
//
// Determinism of the per-channel sums (common.cuh, "Deterministic per-channel sums"): the
// backward kernels run a grid of (channel tiles of 32) × (pixel tiles); each block writes its
// tile's [Σg | Σg·x̂] as doubles into the backend's scratch (`KernelBackend::with_scratch`) and
// tile_sums_finish_f32 (reduce.cu) adds the tiles in a fixed order. This beats one block per 32 channels
// looping over all pixels, which gives the stem (64 channels, 64·112·112 pixels) two blocks on a
// 132-SM GPU; the tile count (≤ 1024, ≥ 128 pixels a tile) depends on the shape only.
//
// Layout: activations NHWC with a pitch; blocks of 32 channels × 8 pixel-row threads, so a warp
// reads 32 consecutive floats of one pixel (one 128-byte transaction); per-channel BN
// parameters are loaded once per thread. ReLU decisions use dn_affine, bit-identical to the host.
//
// CPU reference: src/backend/pool/cpu.rs (same function names, `window_max`).
#include "common.cuh"

// Mirrors backend::pool::MaxPoolParams: input t is n × h × w pixels (pitch ld_t),
// the output (y forward, dy backward) n × out_h × out_w (pitch ld_y), g has t's pixels (ld_g);
// the backward's partial sums cover tile_rows input pixels per tile.
struct MaxPoolParams {
    unsigned int n;
    unsigned int h;
    unsigned int w;
    unsigned int out_h;
    unsigned int out_w;
    unsigned int cols;
    unsigned int ld_t;
    unsigned int ld_y;
    unsigned int ld_g;
    unsigned int tile_rows;
};
static_assert(sizeof(MaxPoolParams) == 40, "size of the Rust mirror (tests/kernel_params.rs)");

// Mirrors backend::pool::GlobalPoolParams: x is n images of `image` pixels
// (pitch ld_x), dx the same pixels (pitch ld_dx); pooled/dpooled n × cols dense.
struct GlobalPoolParams {
    unsigned int n;
    unsigned int image;
    unsigned int cols;
    unsigned int ld_x;
    unsigned int ld_dx;
    unsigned int tile_rows;
};
static_assert(sizeof(GlobalPoolParams) == 24, "size of the Rust mirror (tests/kernel_params.rs)");

constexpr int kPoolThreads = kDnTileCols * kDnTileRows;

// Internal linkage: the emulator links every kernel file into one library, where same-named
// helpers of two files would silently merge.
namespace {

// relu(a·v + b) with the host's rounding.
struct BnRelu {
    float a;
    float b;
    __device__ __forceinline__ float operator()(float v) const { return dn_relu(dn_affine(a, v, b)); }
};

// The BN affine of channel c (zero for channels past the matrix, which only join barriers).
__device__ __forceinline__ BnRelu pool_bn_relu(unsigned int c, unsigned int cols,
                                               const float* __restrict__ mean,
                                               const float* __restrict__ var,
                                               const float* __restrict__ gamma,
                                               const float* __restrict__ beta) {
    BnRelu act{0.0f, 0.0f};
    if (c < cols) dn_bn_affine(gamma[c], beta[c], mean[c], var[c], act.a, act.b);
    return act;
}

template <typename T>
__device__ void bn_relu_maxpool_fwd(const MaxPoolParams p, const T* __restrict__ t,
                                    const float* __restrict__ mean, const float* __restrict__ var,
                                    const float* __restrict__ gamma,
                                    const float* __restrict__ beta, T* __restrict__ y) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    const BnRelu act = pool_bn_relu(c, p.cols, mean, var, gamma, beta);
    const unsigned int out_image = p.out_h * p.out_w;
    const unsigned int rows = p.n * out_image;
    for (unsigned int q = blockIdx.y * kDnTileRows + threadIdx.y; q < rows; q += gridDim.y * kDnTileRows) {
        const unsigned int n = q / out_image;
        const unsigned int oy = q % out_image / p.out_w;
        const unsigned int ox = q % p.out_w;
        unsigned int arg;
        const float best = dn_maxpool_first_max(t, p.ld_t, n * p.h * p.w, p.h, p.w, c, oy, ox, act, arg);
        y[dn_at(q, c, p.ld_y)] = static_cast<T>(best);
    }
}

template <typename T>
__device__ void bn_relu_maxpool_bwd(const MaxPoolParams p, const T* __restrict__ dy,
                                    const T* __restrict__ t, const float* __restrict__ mean,
                                    const float* __restrict__ var, const float* __restrict__ gamma,
                                    const float* __restrict__ beta, T* __restrict__ g,
                                    double* __restrict__ partials) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    const bool active = c < p.cols;
    const BnRelu act = pool_bn_relu(c, p.cols, mean, var, gamma, beta);
    const float mu = active ? mean[c] : 0.0f;
    const float invstd = active ? dn_invstd(var[c]) : 0.0f;
    const unsigned int image = p.h * p.w;
    const unsigned int rows = p.n * image;
    // 64-bit: the last tile may reach past 2^32 − 1 even though rows does not.
    const size_t first = static_cast<size_t>(blockIdx.y) * p.tile_rows;
    const unsigned int last = static_cast<unsigned int>(min(first + p.tile_rows, static_cast<size_t>(rows)));
    double s1 = 0.0, s2 = 0.0;
    if (active)
        for (unsigned int pix = static_cast<unsigned int>(first) + threadIdx.y; pix < last; pix += kDnTileRows) {
            const float tv = static_cast<float>(t[dn_at(pix, c, p.ld_t)]);
            float gv = 0.0f;
            if (dn_affine(act.a, tv, act.b) > 0.0f) {
                const unsigned int n = pix / image;
                const unsigned int own = pix % image;
                const unsigned int iy = own / p.w;
                const unsigned int ix = own % p.w;
                // The windows holding (iy, ix), in the row-major output order the host adds in.
                for (unsigned int oy = iy / 2; oy <= min((iy + 1) / 2, p.out_h - 1); ++oy)
                    for (unsigned int ox = ix / 2; ox <= min((ix + 1) / 2, p.out_w - 1); ++ox) {
                        unsigned int arg;
                        dn_maxpool_first_max(t, p.ld_t, n * image, p.h, p.w, c, oy, ox, act, arg);
                        if (arg == own)
                            gv += static_cast<float>(dy[dn_at((n * p.out_h + oy) * p.out_w + ox, c, p.ld_y)]);
                    }
            }
            g[dn_at(pix, c, p.ld_g)] = static_cast<T>(gv);
            s1 += gv;
            s2 += static_cast<double>(gv) * static_cast<double>((tv - mu) * invstd);
        }
    dn_tile_sums_store(s1, s2, p.cols, partials);
}

template <typename T>
__device__ void bn_relu_global_pool_fwd(const GlobalPoolParams p, const T* __restrict__ x,
                                        const float* __restrict__ mean,
                                        const float* __restrict__ var,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float* __restrict__ pooled) {
    __shared__ double part[kDnTileRows][kDnTileCols];
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    const bool active = c < p.cols;
    const BnRelu act = pool_bn_relu(c, p.cols, mean, var, gamma, beta);
    // gridDim.y is capped at 65535 blocks; larger batches loop (the same n for the whole block,
    // so every thread meets the barriers).
    for (unsigned int n = blockIdx.y; n < p.n; n += gridDim.y) {
        double s = 0.0;
        if (active)
            for (unsigned int i = threadIdx.y; i < p.image; i += kDnTileRows)
                s += act(static_cast<float>(x[dn_at(n * p.image + i, c, p.ld_x)]));
        part[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && active) {
            double total = 0.0;
            for (int i = 0; i < kDnTileRows; ++i) total += part[i][threadIdx.x];
            pooled[static_cast<size_t>(n) * p.cols + c] = static_cast<float>(total / p.image);
        }
        // Row thread 0 has read `part` before the next image overwrites it.
        __syncthreads();
    }
}

template <typename T>
__device__ void bn_relu_global_pool_bwd(const GlobalPoolParams p, const float* __restrict__ dpooled,
                                        const T* __restrict__ x, const float* __restrict__ mean,
                                        const float* __restrict__ var,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta, T* __restrict__ dx,
                                        double* __restrict__ partials) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    const bool active = c < p.cols;
    const BnRelu act = pool_bn_relu(c, p.cols, mean, var, gamma, beta);
    const float mu = active ? mean[c] : 0.0f;
    const float invstd = active ? dn_invstd(var[c]) : 0.0f;
    const float area = static_cast<float>(p.image);
    const unsigned int rows = p.n * p.image;
    const size_t first = static_cast<size_t>(blockIdx.y) * p.tile_rows;
    const unsigned int last = static_cast<unsigned int>(min(first + p.tile_rows, static_cast<size_t>(rows)));
    double s1 = 0.0, s2 = 0.0;
    if (active)
        for (unsigned int pix = static_cast<unsigned int>(first) + threadIdx.y; pix < last; pix += kDnTileRows) {
            const float xv = static_cast<float>(x[dn_at(pix, c, p.ld_x)]);
            float gv = dpooled[static_cast<size_t>(pix / p.image) * p.cols + c] / area;
            if (!(dn_affine(act.a, xv, act.b) > 0.0f)) gv = 0.0f;
            dx[dn_at(pix, c, p.ld_dx)] = static_cast<T>(act.a * gv);
            s1 += gv;
            s2 += static_cast<double>(gv) * static_cast<double>((xv - mu) * invstd);
        }
    dn_tile_sums_store(s1, s2, p.cols, partials);
}

} // namespace

#define DN_POOL_KERNELS(T, SUFFIX)                                                                \
    extern "C" __global__ void __launch_bounds__(kPoolThreads) bn_relu_maxpool_fwd_##SUFFIX(      \
        const MaxPoolParams p, const T* t, const float* mean, const float* var,                   \
        const float* gamma, const float* beta, T* y) {                                            \
        bn_relu_maxpool_fwd<T>(p, t, mean, var, gamma, beta, y);                                  \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kPoolThreads) bn_relu_maxpool_bwd_##SUFFIX(      \
        const MaxPoolParams p, const T* dy, const T* t, const float* mean, const float* var,      \
        const float* gamma, const float* beta, T* g, double* partials) {                          \
        bn_relu_maxpool_bwd<T>(p, dy, t, mean, var, gamma, beta, g, partials);                    \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kPoolThreads) bn_relu_global_pool_fwd_##SUFFIX(  \
        const GlobalPoolParams p, const T* x, const float* mean, const float* var,                \
        const float* gamma, const float* beta, float* pooled) {                                   \
        bn_relu_global_pool_fwd<T>(p, x, mean, var, gamma, beta, pooled);                         \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(kPoolThreads) bn_relu_global_pool_bwd_##SUFFIX(  \
        const GlobalPoolParams p, const float* dpooled, const T* x, const float* mean,            \
        const float* var, const float* gamma, const float* beta, T* dx, double* partials) {       \
        bn_relu_global_pool_bwd<T>(p, dpooled, x, mean, var, gamma, beta, dx, partials);          \
    }

DN_POOL_KERNELS(float, f32)
DN_POOL_KERNELS(dn_bf16, bf16)
