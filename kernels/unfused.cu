// unfused.cu — the unfused ops of the baseline (`crate::baseline`), which materialises
// what the fused kernels keep in registers: concatenations, BN outputs, ReLU outputs.
//
// copy_columns_<T>: dst ← src or dst += src (building a concatenation / splitting its gradient).
// bn_apply_<T>: y = a·x + b, with dn_affine: the fused kernels' pre-activation bit for bit, so a
//   ReLU of it decides exactly as they do.
// relu_fwd_<T>: y = dn_relu(x) = max(x, 0), a NaN passing through (as PyTorch and the host's
//   `backend::relu`). relu_bwd_<T>: g ← 0 where !(x > 0), in place.
// bn_grad_sums_<T>: per-pixel-tile partials of [Σg | Σg·x̂], x̂ in double as on the host;
//   tile_sums_finish_f32 (reduce.cu) adds the tiles in a fixed order (common.cuh, "Deterministic
//   per-channel sums"; the tiles live in the backend's scratch): no float atomics,
//   bit-identical run to run.
// avg_pool_fwd_<T>: mean over non-overlapping kh × kw windows (a partial last row/column of
//   windows is dropped), summed in double in row-major window order. avg_pool_bwd_<T>: dx =
//   dy/(kh·kw) on every pixel of a window, 0 on dropped pixels (every element overwritten).
// max_pool_fwd_<T>: the stem max-pool 3×3/2, pad 1, first maximum in row-major window order
//   (dn_maxpool_first_max, shared with pool.cu). max_pool_bwd_<T>: gather formulation as in
//   pool.cu: each input pixel recomputes the arg-max of the ≤ 2 × 2 windows holding it and adds
//   their dy, in output order — no atomics, bit-identical to the host's scatter.
//
// Layout: NHWC with a pitch; blocks of 32 channels × 8 pixel-row threads (a warp covers 32
// consecutive floats of one pixel), rows walked grid-stride; per-channel parameters loaded once
// per thread.
//
// CPU reference: src/backend/unfused/cpu.rs (same function names).
#include "common.cuh"

// Mirrors backend::unfused::UnfusedParams: rows × cols matrices x (the input,
// pitch ld_x) and y (the output; relu_bwd: the gradient updated in place; bn_grad_sums: the
// gradient, read), `accumulate` for copy_columns, `tile_rows` for bn_grad_sums.
struct UnfusedParams {
    unsigned int rows;
    unsigned int cols;
    unsigned int ld_x;
    unsigned int ld_y;
    unsigned int accumulate;
    unsigned int tile_rows;
};
static_assert(sizeof(UnfusedParams) == 24, "size of the Rust mirror (tests/kernel_params.rs)");

// Mirrors backend::unfused::UnfusedPoolParams: the pool's input x (and its
// gradient dx) is n × h × w pixels, its output y (and dy) n × out_h × out_w; window win_h ×
// win_w (average pool only).
struct UnfusedPoolParams {
    unsigned int n;
    unsigned int h;
    unsigned int w;
    unsigned int out_h;
    unsigned int out_w;
    unsigned int win_h;
    unsigned int win_w;
    unsigned int cols;
    unsigned int ld_x;
    unsigned int ld_y;
    unsigned int ld_dx;
};
static_assert(sizeof(UnfusedPoolParams) == 44, "size of the Rust mirror (tests/kernel_params.rs)");

constexpr int kUnfusedThreads = kDnTileCols * kDnTileRows;

// Internal linkage: the emulator links every kernel file into one library, where same-named
// helpers of two files would silently merge.
namespace {

// The plain max-pool's `act`: the value itself.
struct Identity {
    __device__ __forceinline__ float operator()(float v) const { return v; }
};

// First row of this thread in a grid-stride walk over rows, and the stride.
__device__ __forceinline__ unsigned int unfused_first_row() { return blockIdx.y * kDnTileRows + threadIdx.y; }
__device__ __forceinline__ unsigned int unfused_row_stride() { return gridDim.y * kDnTileRows; }

template <typename T>
__device__ void copy_columns(const UnfusedParams p, const T* __restrict__ src, T* __restrict__ dst) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    for (unsigned int r = unfused_first_row(); r < p.rows; r += unfused_row_stride()) {
        const T v = src[dn_at(r, c, p.ld_x)];
        T& d = dst[dn_at(r, c, p.ld_y)];
        d = p.accumulate ? static_cast<T>(static_cast<float>(d) + static_cast<float>(v)) : v;
    }
}

template <typename T>
__device__ void bn_apply(const UnfusedParams p, const T* __restrict__ x, const float* __restrict__ mean,
                         const float* __restrict__ var, const float* __restrict__ gamma,
                         const float* __restrict__ beta, T* __restrict__ y) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    float a, b;
    dn_bn_affine(gamma[c], beta[c], mean[c], var[c], a, b);
    for (unsigned int r = unfused_first_row(); r < p.rows; r += unfused_row_stride())
        y[dn_at(r, c, p.ld_y)] = static_cast<T>(dn_affine(a, static_cast<float>(x[dn_at(r, c, p.ld_x)]), b));
}

template <typename T>
__device__ void relu_fwd(const UnfusedParams p, const T* __restrict__ x, T* __restrict__ y) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    for (unsigned int r = unfused_first_row(); r < p.rows; r += unfused_row_stride())
        y[dn_at(r, c, p.ld_y)] = static_cast<T>(dn_relu(static_cast<float>(x[dn_at(r, c, p.ld_x)])));
}

template <typename T>
__device__ void relu_bwd(const UnfusedParams p, T* __restrict__ g, const T* __restrict__ x) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    for (unsigned int r = unfused_first_row(); r < p.rows; r += unfused_row_stride())
        // `!(x > 0)` also drops the gradient of a NaN input, whose max(x, 0) was 0.
        if (!(static_cast<float>(x[dn_at(r, c, p.ld_x)]) > 0.0f)) g[dn_at(r, c, p.ld_y)] = static_cast<T>(0.0f);
}

template <typename T>
__device__ void bn_grad_sums(const UnfusedParams p, const T* __restrict__ g, const T* __restrict__ x,
                             const float* __restrict__ mean, const float* __restrict__ var,
                             double* __restrict__ partials) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    const bool active = c < p.cols;
    // x̂ in double from the f32 1/√(var + ε), as the host.
    const double mu = active ? static_cast<double>(mean[c]) : 0.0;
    const double invstd = active ? static_cast<double>(dn_invstd(var[c])) : 0.0;
    // 64-bit: the last tile may reach past 2^32 − 1 even though rows does not.
    const size_t first = static_cast<size_t>(blockIdx.y) * p.tile_rows;
    const unsigned int last = static_cast<unsigned int>(min(first + p.tile_rows, static_cast<size_t>(p.rows)));
    double s1 = 0.0, s2 = 0.0;
    if (active)
        for (unsigned int r = static_cast<unsigned int>(first) + threadIdx.y; r < last; r += kDnTileRows) {
            const double gv = static_cast<double>(g[dn_at(r, c, p.ld_y)]);
            s1 += gv;
            s2 += gv * ((static_cast<double>(x[dn_at(r, c, p.ld_x)]) - mu) * invstd);
        }
    dn_tile_sums_store(s1, s2, p.cols, partials);
}

template <typename T>
__device__ void avg_pool_fwd(const UnfusedPoolParams p, const T* __restrict__ x, T* __restrict__ y) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    const unsigned int out_image = p.out_h * p.out_w;
    const unsigned int rows = p.n * out_image;
    const double area = static_cast<double>(p.win_h) * p.win_w;
    for (unsigned int q = unfused_first_row(); q < rows; q += unfused_row_stride()) {
        const unsigned int n = q / out_image;
        const unsigned int oy = q % out_image / p.out_w;
        const unsigned int ox = q % p.out_w;
        double s = 0.0;
        for (unsigned int iy = oy * p.win_h; iy < (oy + 1) * p.win_h; ++iy)
            for (unsigned int ix = ox * p.win_w; ix < (ox + 1) * p.win_w; ++ix)
                s += static_cast<float>(x[dn_at((n * p.h + iy) * p.w + ix, c, p.ld_x)]);
        y[dn_at(q, c, p.ld_y)] = static_cast<T>(s / area);
    }
}

template <typename T>
__device__ void avg_pool_bwd(const UnfusedPoolParams p, const T* __restrict__ dy, T* __restrict__ dx) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    const unsigned int image = p.h * p.w;
    const unsigned int rows = p.n * image;
    const float area = static_cast<float>(p.win_h * p.win_w);
    for (unsigned int pix = unfused_first_row(); pix < rows; pix += unfused_row_stride()) {
        const unsigned int n = pix / image;
        const unsigned int oy = pix % image / p.w / p.win_h;
        const unsigned int ox = pix % p.w / p.win_w;
        // Pixels of a dropped last row/column of windows get no gradient.
        const float d = oy < p.out_h && ox < p.out_w
                            ? static_cast<float>(dy[dn_at((n * p.out_h + oy) * p.out_w + ox, c, p.ld_y)]) / area
                            : 0.0f;
        dx[dn_at(pix, c, p.ld_dx)] = static_cast<T>(d);
    }
}

template <typename T>
__device__ void max_pool_fwd(const UnfusedPoolParams p, const T* __restrict__ x, T* __restrict__ y) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    const unsigned int out_image = p.out_h * p.out_w;
    const unsigned int rows = p.n * out_image;
    for (unsigned int q = unfused_first_row(); q < rows; q += unfused_row_stride()) {
        const unsigned int n = q / out_image;
        unsigned int arg;
        const float best = dn_maxpool_first_max(x, p.ld_x, n * p.h * p.w, p.h, p.w, c, q % out_image / p.out_w,
                                                q % p.out_w, Identity{}, arg);
        y[dn_at(q, c, p.ld_y)] = static_cast<T>(best);
    }
}

template <typename T>
__device__ void max_pool_bwd(const UnfusedPoolParams p, const T* __restrict__ dy, const T* __restrict__ x,
                             T* __restrict__ dx) {
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    if (c >= p.cols) return;
    const unsigned int image = p.h * p.w;
    const unsigned int rows = p.n * image;
    for (unsigned int pix = unfused_first_row(); pix < rows; pix += unfused_row_stride()) {
        const unsigned int n = pix / image;
        const unsigned int own = pix % image;
        const unsigned int iy = own / p.w;
        const unsigned int ix = own % p.w;
        float gv = 0.0f;
        // The windows holding (iy, ix), in the row-major output order the host adds in.
        for (unsigned int oy = iy / 2; oy <= min((iy + 1) / 2, p.out_h - 1); ++oy)
            for (unsigned int ox = ix / 2; ox <= min((ix + 1) / 2, p.out_w - 1); ++ox) {
                unsigned int arg;
                dn_maxpool_first_max(x, p.ld_x, n * image, p.h, p.w, c, oy, ox, Identity{}, arg);
                if (arg == own) gv += static_cast<float>(dy[dn_at((n * p.out_h + oy) * p.out_w + ox, c, p.ld_y)]);
            }
        dx[dn_at(pix, c, p.ld_dx)] = static_cast<T>(gv);
    }
}

} // namespace

#define DN_UNFUSED_KERNELS(T, SUFFIX)                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        copy_columns_##SUFFIX(const UnfusedParams p, const T* src, T* dst) {                       \
        copy_columns<T>(p, src, dst);                                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        bn_apply_##SUFFIX(const UnfusedParams p, const T* x, const float* mean, const float* var,  \
                          const float* gamma, const float* beta, T* y) {                           \
        bn_apply<T>(p, x, mean, var, gamma, beta, y);                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        relu_fwd_##SUFFIX(const UnfusedParams p, const T* x, T* y) {                               \
        relu_fwd<T>(p, x, y);                                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        relu_bwd_##SUFFIX(const UnfusedParams p, T* g, const T* x) {                               \
        relu_bwd<T>(p, g, x);                                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads) bn_grad_sums_##SUFFIX(           \
        const UnfusedParams p, const T* g, const T* x, const float* mean, const float* var,        \
        double* partials) {                                                                        \
        bn_grad_sums<T>(p, g, x, mean, var, partials);                                             \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        avg_pool_fwd_##SUFFIX(const UnfusedPoolParams p, const T* x, T* y) {                       \
        avg_pool_fwd<T>(p, x, y);                                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        avg_pool_bwd_##SUFFIX(const UnfusedPoolParams p, const T* dy, T* dx) {                     \
        avg_pool_bwd<T>(p, dy, dx);                                                                \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        max_pool_fwd_##SUFFIX(const UnfusedPoolParams p, const T* x, T* y) {                       \
        max_pool_fwd<T>(p, x, y);                                                                  \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(kUnfusedThreads)                                  \
        max_pool_bwd_##SUFFIX(const UnfusedPoolParams p, const T* dy, const T* x, T* dx) {         \
        max_pool_bwd<T>(p, dy, x, dx);                                                             \
    }

DN_UNFUSED_KERNELS(float, f32)
