// common.cuh — device helpers shared by every kernel family.
//
// Included by each kernels/*.cu. Under nvcc it is compiled for the GPU; under the CPU
// emulator (emu/cuda_emu.h, DENSENET_EMU defined) the same code runs on the host.
#pragma once

// ---- bf16 activations ------------------------------------------------------------------------
// f32 → bf16 bits, rounded to nearest even, NaN → 0x7fff: what __float2bfloat16,
// cvt.rn.bf16.f32 and the host's precision::bf16_bits give. In integer arithmetic, so that a
// module holding bf16 kernels still compiles for a GPU without bf16 instructions (below sm_80)
// for its f32 kernels.
__device__ __forceinline__ unsigned short dn_bf16_bits(float f) {
    const unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// The activation element of the bf16 kernels (`<op>_bf16`): two bytes of bf16 bits; a load widens
// it exactly (static_cast<float>), a store rounds with dn_bf16_bits (static_cast<dn_bf16>).
// Defined here rather than taken from <cuda_bf16.h>: the kernels ship as sources for NVRTC, and
// NVRTC 13.0 has no cuda_bf16.h built in (the toolkit's needs the toolkit's include directory at
// run time); nvcc, NVRTC and the emulator thus compile the same type.
struct __align__(2) dn_bf16 {
    unsigned short bits;
    dn_bf16() = default;
    __device__ __forceinline__ dn_bf16(float f) : bits(dn_bf16_bits(f)) {}
    __device__ __forceinline__ operator float() const {
        return __uint_as_float(static_cast<unsigned int>(bits) << 16);
    }
};

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

// max(v, 0) with NaN passing through, as PyTorch's ReLU (fmaxf would turn a NaN into 0 and
// hide it from the loss); the host backends use the same definition (backend::relu). Written
// `v != v`: with isnan, NVRTC's build of the transition forward spills 4 bytes.
__device__ __forceinline__ float dn_relu(float v) { return v > 0.0f || v != v ? v : 0.0f; }

// 1/√(var + ε), as the host computes it.
__device__ __forceinline__ float dn_invstd(float var) {
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, DN_BN_EPS)));
}

// −∞ and a quiet NaN from their bit patterns. NVRTC compiles without the host's <math.h>, so
// INFINITY, NAN, FLT_MAX and friends are undefined there; these intrinsics exist under nvcc,
// NVRTC and the CPU emulator alike. Kernels use these instead of any host-header macro.
__device__ __forceinline__ float dn_neg_inf_f() { return __int_as_float(static_cast<int>(0xff800000u)); }
__device__ __forceinline__ double dn_neg_inf_d() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}
__device__ __forceinline__ double dn_nan_d() { return __longlong_as_double(0x7ff8000000000000ll); }

// Element (row, col) of a row-major matrix with leading dimension ld, in 64-bit arithmetic:
// a feature storage can exceed 2^31 elements.
__device__ __forceinline__ size_t dn_at(unsigned int row, unsigned int col, unsigned int ld) {
    return static_cast<size_t>(row) * ld + col;
}

// ---- Stem max-pool window (3×3, stride 2, padding 1) ----------------------------------------
// Output (oy, ox) covers input rows 2oy−1 .. 2oy+1 and columns 2ox−1 .. 2ox+1, clipped to the
// image: padding never wins (PyTorch pads with −∞). Returns the first maximum of act(x) over
// channel c of that window in row-major window order — a later value replaces it only when
// strictly greater, the element PyTorch and the cpu backend (`window_max`) pick — and its
// position iy·w + ix inside the image in `arg`. `arg` starts at the window's first pixel, as on
// the host, so it stays inside the window when NaNs never compare greater. Forward and
// backward kernels both call this, so the backward routes each gradient to the forward's choice.
template <typename T, typename Act>
__device__ __forceinline__ float dn_maxpool_first_max(const T* __restrict__ x, unsigned int ld,
                                                      unsigned int image_first, unsigned int h,
                                                      unsigned int w, unsigned int c,
                                                      unsigned int oy, unsigned int ox,
                                                      const Act& act, unsigned int& arg) {
    const unsigned int y0 = oy > 0 ? 2 * oy - 1 : 0;
    const unsigned int x0 = ox > 0 ? 2 * ox - 1 : 0;
    const unsigned int y1 = min(2 * oy + 2, h);
    const unsigned int x1 = min(2 * ox + 2, w);
    float best = dn_neg_inf_f();
    arg = y0 * w + x0;
    for (unsigned int iy = y0; iy < y1; ++iy)
        for (unsigned int ix = x0; ix < x1; ++ix) {
            const float v = act(static_cast<float>(x[dn_at(image_first + iy * w + ix, c, ld)]));
            // Larger, or the window's first NaN, which then stays (see backend::max_pool_takes;
            // this form of the test is also the one ptxas compiles without spills).
            if (!(v <= best) && !isnan(best)) {
                best = v;
                arg = iy * w + ix;
            }
        }
    return best;
}

// ---- Fixed-order sums of rows of partials --------------------------------------------------
// out[e] (+)= Σ_r rows[r·len + e] in double, for this block's kDnSumCols entries (blocks of
// kDnSumCols × kDnSumRows threads): row thread y adds rows y, y + kDnSumRows, ... in order, then
// the row threads' subtotals are added in order. The result does not depend on scheduling. Both
// the per-tile BN sums (double partials) and the split-K weight gradients (float partials) end
// with this.
constexpr int kDnSumCols = 32;
constexpr int kDnSumRows = 8;

template <typename P>
__device__ __forceinline__ void dn_sum_rows(unsigned int len, unsigned int rows, bool accumulate,
                                            const P* __restrict__ partials,
                                            float* __restrict__ out) {
    __shared__ double subtotal[kDnSumRows][kDnSumCols];
    const unsigned int e = blockIdx.x * kDnSumCols + threadIdx.x;
    double sum = 0.0;
    if (e < len)
        for (unsigned int r = threadIdx.y; r < rows; r += kDnSumRows)
            sum += static_cast<double>(partials[static_cast<size_t>(r) * len + e]);
    subtotal[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && e < len) {
        double total = 0.0;
        for (int i = 0; i < kDnSumRows; ++i) total += subtotal[i][threadIdx.x];
        out[e] = accumulate ? static_cast<float>(static_cast<double>(out[e]) + total)
                            : static_cast<float>(total);
    }
}

// ---- Deterministic per-channel sums over pixel tiles -----------------------------------------
// BN backward reductions `sums = [Σg (cols values) | Σg·x̂ (cols values)]` over P pixels without
// float atomics: a first kernel runs blocks of kDnTileCols channels × kDnTileRows row threads
// (blockIdx.x: channel tile, blockIdx.y: pixel tile), each thread accumulating in double over its
// rows of the tile; dn_tile_sums_store adds the block's row threads in a fixed order and stores
// the tile's totals as doubles, partials[tile·2·cols + k·cols + c] (k = 0: Σg, 1: Σg·x̂). A second
// kernel, dn_tile_sums_finish, adds the tiles in a fixed order. The tile count depends on P and
// cols only (the launch wrappers choose it), so the result is bit-identical run to run and GPU to
// GPU. The block shape mirrors EW_COLS × EW_ROWS of src/backend/cuda/launch.rs.
constexpr int kDnTileCols = 32;
constexpr int kDnTileRows = 8;

// Mirrors backend::pool::TileSumsParams: `tiles` rows of `width` = 2·cols doubles.
struct TileSumsParams {
    unsigned int tiles;
    unsigned int width;
};
static_assert(sizeof(TileSumsParams) == 8, "size of the Rust mirror (tests/kernel_params.rs)");

// Stores this block's tile totals of Σg (s1) and Σg·x̂ (s2) for channel blockIdx.x·kDnTileCols +
// threadIdx.x. Every thread of the block calls it exactly once, last (it has a barrier and no
// trailing one).
__device__ __forceinline__ void dn_tile_sums_store(double s1, double s2, unsigned int cols,
                                                   double* __restrict__ partials) {
    __shared__ double part[2][kDnTileRows][kDnTileCols];
    part[0][threadIdx.y][threadIdx.x] = s1;
    part[1][threadIdx.y][threadIdx.x] = s2;
    __syncthreads();
    const unsigned int c = blockIdx.x * kDnTileCols + threadIdx.x;
    // Row thread 0 totals Σg, row thread 1 totals Σg·x̂: two warps, 32 channels each.
    if (threadIdx.y < 2 && c < cols) {
        double total = 0.0;
        for (int i = 0; i < kDnTileRows; ++i) total += part[threadIdx.y][i][threadIdx.x];
        partials[static_cast<size_t>(blockIdx.y) * 2 * cols + threadIdx.y * cols + c] = total;
    }
}

// sums[j] = Σ over the tiles of partials[tile·width + j], as f32 (dn_sum_rows above).
__device__ __forceinline__ void dn_tile_sums_finish(const TileSumsParams p,
                                                    const double* __restrict__ partials,
                                                    float* __restrict__ sums) {
    dn_sum_rows(p.width, p.tiles, false, partials, sums);
}

// ---- deterministic split reductions ---------------------------------------------------------
// A kernel that reduces over many pixels in parallel (split-K weight gradients, per-channel
// sums over pixel tiles) writes one row of partials per split to the backend's scratch instead
// of racing float atomics; a second kernel adds the rows with dn_split_sum in a fixed order
// (blocks of kDnSumCols × kDnSumRows).
// Mirrors backend::conv3x3::SplitSumParams.
struct SplitSumParams {
    unsigned int len;        // entries per row
    unsigned int splits;     // rows of partials
    unsigned int accumulate; // non-zero: out += Σ rows; zero: out = Σ rows
};
static_assert(sizeof(SplitSumParams) == 12, "size of the Rust mirror (tests/kernel_params.rs)");

// out[e] (+)= Σ_s partials[s·len + e] (dn_sum_rows above).
__device__ __forceinline__ void dn_split_sum(const SplitSumParams& p,
                                             const float* __restrict__ partials,
                                             float* __restrict__ out) {
    dn_sum_rows(p.len, p.splits, p.accumulate != 0, partials, out);
}
