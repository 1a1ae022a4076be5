// conv.cu — plain convolution (no batch-norm) for the stems: forward, weight gradient and data
// gradient, for any square kernel, stride and padding (backend::ConvGeom).
//
// WHAT
//   x is n·h·w input pixels × c_in channels (pitch ld_x), W is OHWI [c_out][k][k][c_in], y is
//   n·oh·ow output pixels × c_out channels (pitch ld_y), oh = (h + 2·pad − k)/stride + 1. The
//   GEMM-K index is k' = (ky·k + kx)·c_in + c, W's memory order.
//   conv_fwd_<T>:   y(p, o) = Σ_k' X(p, k')·W(o, k') with
//                   X(p, (ky·k + kx)·c_in + c) = x(n, oy·stride − pad + ky, ox·stride − pad + kx, c),
//                   0 in the padding; overwrites columns [0, c_out) of y's view, nothing else.
//   conv_wgrad_<T>: per split s of the output pixels, partial_s(o, k') = Σ_{p in s} dy(p, o)·X(p, k')
//                   into the scratch; split_sum_f32 (reduce.cu) adds Σ_s partial_s to dW in split order.
//   conv_dgrad_<T>: dx(q, c) = Σ dy(p, o)·W(o, ky, kx, c) over the output pixels p that read input
//                   pixel q (at tap (ky, kx)) and every o; overwrites dx (0 where nothing reads q).
//
// HOW
//   The stems read 3 channels: GEMM-K is 27 (CIFAR, 3×3/1/1) or 147 (ImageNet, 7×7/2/3), and the
//   input gradient has 3 columns, so these are simple kernels:
//   Forward: implicit GEMM, blocks of 128 output pixels × 32 output channels, 256 threads with
//   4×4 register tiles, K-steps of 16 staged in shared memory (single-buffered: at most 10
//   steps). The input coordinates of the block's rows are computed once into shared memory.
//   Weight gradient: blocks of 32 output channels × 64 GEMM-K columns reduce over stages of 16
//   output pixels; each thread's column (tap, channel) is fixed for the block, its 4 rows are
//   consecutive pixels whose coordinates step without division. The pixels are split across
//   grid.z and each split writes its own partial dW to the scratch, which the second kernel adds
//   in split order in double: deterministic, no atomics.
//   Data gradient: a gather, one thread per input pixel and group of 4 channels. It visits only
//   the taps that some output pixel applies to it (ky ≡ iy + pad mod stride), which skips the
//   3/4 of the taps that a stride-2 implicit GEMM would multiply by zero. The weights of a chunk
//   of output channels are staged in shared memory as one float4 per (channel, tap). Every dx
//   element has one writer.
//
// MULTIPLY (the `Math` policy each entry point is instantiated with: <op>_f32, <op>_tf32,
// <op>_bf16)
//   * SimtF32: the FFMA register tiles above; exact f32 (the fp32 precision).
//   * MmaTf32 (the tf32 precision): the forward and the weight gradient multiply their staged
//     steps on tensor cores, mma.sync m16n8k8 tf32 with f32 accumulation, reading the
//     fragments from the same k-major shared tiles (mma_tile.cuh) and rounding them there
//     with cvt.rna.tf32.f32, as the cpu backend rounds its operands at tf32; loaders and
//     epilogues are the f32 kernels'. Forward: 8 warps as 4 × 2 warp tiles of 32 pixels × 16
//     channels, whose lane fragments are 4 × 4 like a thread's f32 tile, so the epilogue reads
//     them in place. Weight gradient: the transposed product dWᵀ (mma rows the 64 GEMM-K
//     columns, mma columns the 32 output channels), 4 × 2 warp tiles of 16 × 16. The data
//     gradient stays the FFMA gather (no mma tile fits 3 output columns and per-pixel tap
//     sets) and multiplies dy and W rounded as the tensor cores would: a product of two TF32
//     values is exact in f32, so it is the tf32 product.
//   * MmaBf16 (the bf16 precision, on bf16 activations): the same tiles with mma.sync m16n8k16
//     bf16, one k16 slice per staged step, fragments packed with cvt.rn.bf16x2.f32
//     (dn_mma_tile_bf16); the data gradient's gather multiplies bf16-rounded operands.
//
// CPU reference: src/backend/conv/cpu.rs (conv_fwd, conv_wgrad, conv_dgrad; im2col in cpu/gemm.rs,
// im2col_dgrad).
#include "common.cuh"
#include "mma_tile.cuh"

// Mirrors backend::conv::ConvParams.
struct ConvParams {
    unsigned int n;
    unsigned int h; // input extent
    unsigned int w;
    unsigned int oh; // output extent
    unsigned int ow;
    unsigned int c_in;
    unsigned int c_out;
    unsigned int kernel;
    unsigned int stride;
    unsigned int pad;
    unsigned int ld_x; // pitch of x (forward, weight gradient) or dx (data gradient)
    unsigned int ld_y; // pitch of y (forward) or dy (gradients)
    // Weight gradient: output pixels per split (a multiple of kWgradBP).
    unsigned int split_pixels;
};
static_assert(sizeof(ConvParams) == 52, "size of the Rust mirror (tests/kernel_params.rs)");

namespace conv {

constexpr int kThreads = 256;
// Floats of padding per shared-memory row (keeps rows 16-byte aligned).
constexpr int kPad = 4;

// Forward tile: kBM pixels × kBN channels, kTM × kTN per thread, K-steps of kBK.
constexpr int kBM = 128;
constexpr int kBN = 32;
constexpr int kBK = 16;
constexpr int kTM = 4;
constexpr int kTN = 4;
constexpr int kThreadsN = kBN / kTN;
constexpr int kARowStride = kThreads / kBK;
constexpr int kARows = kBM / kARowStride;
constexpr int kBLoads = kBK * kBN / kThreads;
static_assert((kBM / kTM) * kThreadsN == kThreads && kBM <= kThreads, "forward tile");

// Weight-gradient tile: kWgradBCO channels × kWgradBK columns, kWgradBP pixels per stage.
constexpr int kWgradBCO = 32;
constexpr int kWgradBK = 64;
constexpr int kWgradBP = 16;
constexpr int kWgradTM = 4;
constexpr int kWgradTN = 2;
constexpr int kWgradThreadsK = kWgradBK / kWgradTN;
constexpr int kWgradRows = kWgradBP * kWgradBK / kThreads;
constexpr int kWgradDyLoads = kWgradBP * kWgradBCO / kThreads;
static_assert((kWgradBCO / kWgradTM) * kWgradThreadsK == kThreads, "weight-gradient tile");

// Data gradient: channels per thread, and (output channel, tap) weight vectors per chunk (the
// wrapper checks k² ≤ kDgradPairs).
constexpr int kDgradChannels = 4;
constexpr int kDgradPairs = 512;

// ---- multiply policies -------------------------------------------------------------------

// How the forward and the weight gradient multiply a staged step, which tile elements a
// thread's accumulators are (row(i) / o(i), col(j) / k(j), increasing with the index), and
// what the data gradient's gather multiplies.

// Exact f32: per-thread register tiles of FFMA.
struct SimtF32 {
    // Forward: pixels tm·kTM .. +kTM−1 × channels tn·kTN .. +kTN−1.
    __device__ static int row(int i) { return threadIdx.x / kThreadsN * kTM + i; }
    __device__ static int col(int j) { return threadIdx.x % kThreadsN * kTN + j; }
    __device__ static void multiply(const float (&a)[kBK][kBM + kPad],
                                    const float (&b)[kBK][kBN + kPad], float (&acc)[kTM][kTN]) {
        const int m = row(0), n = col(0);
#pragma unroll
        for (int kq = 0; kq < kBK; ++kq) {
            const float4 av4 = *reinterpret_cast<const float4*>(&a[kq][m]);
            const float4 bv4 = *reinterpret_cast<const float4*>(&b[kq][n]);
            const float av[kTM] = {av4.x, av4.y, av4.z, av4.w}, bv[kTN] = {bv4.x, bv4.y, bv4.z, bv4.w};
#pragma unroll
            for (int i = 0; i < kTM; ++i)
#pragma unroll
                for (int jj = 0; jj < kTN; ++jj) acc[i][jj] += av[i] * bv[jj];
        }
    }

    // Weight gradient: channels to·kWgradTM .. +kWgradTM−1 × columns tk·kWgradTN .. +kWgradTN−1.
    using WAcc = float[kWgradTM][kWgradTN];
    __device__ static int o(int i) { return threadIdx.x / kWgradThreadsK * kWgradTM + i; }
    __device__ static int k(int j) { return threadIdx.x % kWgradThreadsK * kWgradTN + j; }
    __device__ static float at(const WAcc& acc, int i, int j) { return acc[i][j]; }
    __device__ static void wgrad_multiply(const float (&a)[kWgradBP][kWgradBK + kPad],
                                          const float (&dy)[kWgradBP][kWgradBCO + kPad],
                                          WAcc& acc) {
        const int o0 = o(0), k0 = k(0);
#pragma unroll
        for (int r = 0; r < kWgradBP; ++r) {
            const float4 d = *reinterpret_cast<const float4*>(&dy[r][o0]);
            const float2 v = *reinterpret_cast<const float2*>(&a[r][k0]);
            const float dv[kWgradTM] = {d.x, d.y, d.z, d.w}, vv[kWgradTN] = {v.x, v.y};
#pragma unroll
            for (int i = 0; i < kWgradTM; ++i)
#pragma unroll
                for (int j = 0; j < kWgradTN; ++j) acc[i][j] += dv[i] * vv[j];
        }
    }

    // Data gradient: the operands as they are.
    __device__ static float operand(float x) { return x; }
};

// Tensor cores on operands of `Operands` (mma_tile.cuh: Tf32Operands, Bf16Operands), f32
// accumulation.
template <class Operands>
struct Mma {
    // Forward: 8 warps as 4 along the pixels × 2 along the channels, warp tiles of 32 × 16
    // (2 × 2 mma per k8 slice), whose lane fragments are kTM × kTN like the f32 tile.
    static constexpr int kWarpsN = 2;
    static_assert((kBM / 32) * kWarpsN * 32 == kThreads && kBN / kWarpsN == 16 && kTM == 4 && kTN == 4,
                  "forward warp tiles");
    __device__ static int warp_m() { return threadIdx.x / 32 / kWarpsN * 32; }
    __device__ static int warp_n() { return threadIdx.x / 32 % kWarpsN * 16; }
    __device__ static int row(int i) { return dn_mma_tile_row(warp_m(), i); }
    __device__ static int col(int j) { return dn_mma_tile_col(warp_n(), j); }
    __device__ static void multiply(const float (&a)[kBK][kBM + kPad],
                                    const float (&b)[kBK][kBN + kPad], float (&acc)[kTM][kTN]) {
        Operands::template tile<2, 2, kBK>(a, b, warp_m(), warp_n(), acc);
    }

    // Weight gradient, transposed (dWᵀ = Xᵀ·dy: mma rows are GEMM-K columns, mma columns
    // output channels): 8 warps as 4 along the 64 columns × 2 along the 32 channels, warp
    // tiles of 16 × 16 (2 mma per k8 slice); acc is [column][channel].
    using WAcc = float[kWgradTN][kWgradTM];
    static_assert(kWgradBK == 4 * 16 && kWgradBCO == 2 * 16 && kWgradTM == 4 && kWgradTN == 2,
                  "weight-gradient warp tiles");
    __device__ static int warp_k() { return threadIdx.x / 32 / 2 * 16; }
    __device__ static int warp_o() { return threadIdx.x / 32 % 2 * 16; }
    __device__ static int o(int i) { return dn_mma_tile_col(warp_o(), i); }
    __device__ static int k(int j) { return dn_mma_tile_row(warp_k(), j); }
    __device__ static float at(const WAcc& acc, int i, int j) { return acc[j][i]; }
    __device__ static void wgrad_multiply(const float (&a)[kWgradBP][kWgradBK + kPad],
                                          const float (&dy)[kWgradBP][kWgradBCO + kPad],
                                          WAcc& acc) {
        Operands::template tile<1, 2, kWgradBP>(a, dy, warp_k(), warp_o(), acc);
    }

    // Data gradient: a gather (3 output columns for an RGB stem, and each pixel its own set of
    // taps under a stride), which no mma tile fits; it multiplies the operands rounded as the
    // tensor cores would, whose products are exact in f32, so it computes the mma's product.
    __device__ static float operand(float x) { return Operands::round(x); }
};
using MmaTf32 = Mma<Tf32Operands>;
using MmaBf16 = Mma<Bf16Operands>;

// ---- forward --------------------------------------------------------------------------------

template <class Math, typename T>
__device__ __forceinline__ void forward(const ConvParams& p, const T* __restrict__ x,
                                        const float* __restrict__ w, T* __restrict__ y) {
    __shared__ __align__(16) float a_s[kBK][kBM + kPad];
    __shared__ __align__(16) float b_s[kBK][kBN + kPad];
    // Per tile row: first pixel of its image (−1 past the last output pixel) and the input
    // coordinates of its window's top-left tap.
    __shared__ int row_image[kBM], row_y[kBM], row_x[kBM];

    const unsigned int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
    const unsigned int out_pixels = p.n * p.oh * p.ow;
    const int taps = static_cast<int>(p.kernel * p.kernel);
    const int K = taps * static_cast<int>(p.c_in);
    if (threadIdx.x < kBM) {
        const unsigned int q = m0 + threadIdx.x;
        int image = -1, iy = 0, ix = 0;
        if (q < out_pixels) {
            const unsigned int ox = q % p.ow, oy = q / p.ow % p.oh, n = q / (p.ow * p.oh);
            image = static_cast<int>(n * p.h * p.w);
            iy = static_cast<int>(oy * p.stride) - static_cast<int>(p.pad);
            ix = static_cast<int>(ox * p.stride) - static_cast<int>(p.pad);
        }
        row_image[threadIdx.x] = image;
        row_y[threadIdx.x] = iy;
        row_x[threadIdx.x] = ix;
    }
    __syncthreads();

    const int kk = threadIdx.x % kBK, r0 = threadIdx.x / kBK;
    const int h = static_cast<int>(p.h), width = static_cast<int>(p.w);
    float acc[kTM][kTN] = {};
    for (int k0 = 0; k0 < K; k0 += kBK) {
        // A: column kk of this step at (ky, kx, c), rows r0 + i·kARowStride.
        const int k = k0 + kk;
        const int tap = k / static_cast<int>(p.c_in);
        const int c = k - tap * static_cast<int>(p.c_in);
        const int ky = tap / static_cast<int>(p.kernel), kx = tap - ky * static_cast<int>(p.kernel);
        float ra[kARows], rb[kBLoads];
#pragma unroll
        for (int i = 0; i < kARows; ++i) {
            const int r = r0 + i * kARowStride;
            const int iy = row_y[r] + ky, ix = row_x[r] + kx;
            ra[i] = k < K && row_image[r] >= 0 && iy >= 0 && iy < h && ix >= 0 && ix < width
                        ? static_cast<float>(x[dn_at(row_image[r] + iy * width + ix, c, p.ld_x)])
                        : 0.0f;
        }
        // B(k, o) = W[o·K + k], loaded along k.
#pragma unroll
        for (int j = 0; j < kBLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            const int kb = k0 + e % kBK;
            const unsigned int o = n0 + e / kBK;
            rb[j] = kb < K && o < p.c_out ? w[static_cast<size_t>(o) * K + kb] : 0.0f;
        }
        // The previous step's multiply is done before its tiles are overwritten.
        if (k0 > 0) __syncthreads();
#pragma unroll
        for (int i = 0; i < kARows; ++i) a_s[kk][r0 + i * kARowStride] = ra[i];
#pragma unroll
        for (int j = 0; j < kBLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            b_s[e % kBK][e / kBK] = rb[j];
        }
        __syncthreads();
        Math::multiply(a_s, b_s, acc);
    }

#pragma unroll
    for (int i = 0; i < kTM; ++i) {
        const unsigned int q = m0 + Math::row(i);
        if (q >= out_pixels) break;
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
            const unsigned int o = n0 + Math::col(j);
            if (o < p.c_out) y[dn_at(q, o, p.ld_y)] = static_cast<T>(acc[i][j]);
        }
    }
}

// ---- weight gradient ------------------------------------------------------------------------

template <class Math, typename T>
__device__ __forceinline__ void weight_grad(const ConvParams& p, const T* __restrict__ x,
                                            const T* __restrict__ dy,
                                            float* __restrict__ partials) {
    __shared__ __align__(16) float a_s[kWgradBP][kWgradBK + kPad];
    __shared__ __align__(16) float dy_s[kWgradBP][kWgradBCO + kPad];

    const int K = static_cast<int>(p.kernel * p.kernel * p.c_in);
    const unsigned int k0 = blockIdx.x * kWgradBK, o0 = blockIdx.y * kWgradBCO;
    const unsigned int out_pixels = p.n * p.oh * p.ow;
    const unsigned int begin = blockIdx.z * p.split_pixels;
    const unsigned int end = min(out_pixels, begin + p.split_pixels);
    const int h = static_cast<int>(p.h), width = static_cast<int>(p.w);
    const int stride = static_cast<int>(p.stride), pad = static_cast<int>(p.pad);

    // This thread's A column, fixed for the block; its rows are kWgradRows consecutive pixels.
    const int col = threadIdx.x % kWgradBK, row0 = threadIdx.x / kWgradBK * kWgradRows;
    const int k = static_cast<int>(k0) + col;
    const bool k_valid = k < K;
    const int tap = k / static_cast<int>(p.c_in);
    const int c = k - tap * static_cast<int>(p.c_in);
    const int ky = tap / static_cast<int>(p.kernel), kx = tap - ky * static_cast<int>(p.kernel);

    typename Math::WAcc acc = {};
    for (unsigned int q0 = begin; q0 < end; q0 += kWgradBP) {
        float ra[kWgradRows], rd[kWgradDyLoads];
        unsigned int q = q0 + row0;
        int ox = 0, oy = 0, n = 0;
        if (q < end) {
            ox = static_cast<int>(q % p.ow);
            oy = static_cast<int>(q / p.ow % p.oh);
            n = static_cast<int>(q / (p.ow * p.oh));
        }
#pragma unroll
        for (int i = 0; i < kWgradRows; ++i, ++q) {
            const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
            ra[i] = k_valid && q < end && iy >= 0 && iy < h && ix >= 0 && ix < width
                        ? static_cast<float>(x[dn_at((n * h + iy) * width + ix, c, p.ld_x)])
                        : 0.0f;
            if (++ox == static_cast<int>(p.ow)) {
                ox = 0;
                if (++oy == static_cast<int>(p.oh)) {
                    oy = 0;
                    ++n;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < kWgradDyLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            const unsigned int qr = q0 + e / kWgradBCO, o = o0 + e % kWgradBCO;
            rd[j] = qr < end && o < p.c_out ? static_cast<float>(dy[dn_at(qr, o, p.ld_y)]) : 0.0f;
        }
        // The previous stage's multiply is done before its tiles are overwritten.
        if (q0 > begin) __syncthreads();
#pragma unroll
        for (int i = 0; i < kWgradRows; ++i) a_s[row0 + i][col] = ra[i];
#pragma unroll
        for (int j = 0; j < kWgradDyLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            dy_s[e / kWgradBCO][e % kWgradBCO] = rd[j];
        }
        __syncthreads();
        Math::wgrad_multiply(a_s, dy_s, acc);
    }

    // This split's partial dW tile, one writer per element.
    float* part = partials + static_cast<size_t>(blockIdx.z) * p.c_out * K;
#pragma unroll
    for (int i = 0; i < kWgradTM; ++i) {
        const unsigned int o = o0 + Math::o(i);
        if (o >= p.c_out) break;
#pragma unroll
        for (int j = 0; j < kWgradTN; ++j) {
            const int kj = static_cast<int>(k0) + Math::k(j);
            if (kj < K) part[static_cast<size_t>(o) * K + kj] = Math::at(acc, i, j);
        }
    }
}

// ---- data gradient --------------------------------------------------------------------------

template <class Math, typename T>
__device__ __forceinline__ void data_grad(const ConvParams& p, const T* __restrict__ dy,
                                          const float* __restrict__ w, T* __restrict__ dx) {
    // W(o, tap, c0 .. c0 + 3) of a chunk of output channels, at [(o − o_begin)·k² + tap].
    __shared__ float4 w_s[kDgradPairs];

    const unsigned int in_pixels = p.n * p.h * p.w;
    const unsigned int q = blockIdx.x * kThreads + threadIdx.x;
    const unsigned int c0 = blockIdx.y * kDgradChannels;
    const bool active = q < in_pixels;
    const int kernel = static_cast<int>(p.kernel), stride = static_cast<int>(p.stride);
    const int pad = static_cast<int>(p.pad);
    const int taps = kernel * kernel;
    const int chunk = kDgradPairs / taps;
    const int ix = static_cast<int>(q % p.w), iy = static_cast<int>(q / p.w % p.h);
    const unsigned int n = q / (p.w * p.h);

    float acc[kDgradChannels] = {};
    for (unsigned int o_begin = 0; o_begin < p.c_out; o_begin += chunk) {
        const int count = min(chunk, static_cast<int>(p.c_out - o_begin));
        // The previous chunk's reads are done before it is overwritten.
        __syncthreads();
        for (int e = threadIdx.x; e < count * taps; e += kThreads) {
            const float* src = w + (static_cast<size_t>(o_begin) * taps + e) * p.c_in + c0;
            float v[kDgradChannels];
#pragma unroll
            for (int j = 0; j < kDgradChannels; ++j) v[j] = c0 + j < p.c_in ? Math::operand(src[j]) : 0.0f;
            w_s[e] = make_float4(v[0], v[1], v[2], v[3]);
        }
        __syncthreads();
        if (!active) continue;
        // Taps with ky ≡ iy + pad (mod stride) come from output row (iy + pad − ky)/stride.
        for (int ky = (iy + pad) % stride; ky < kernel; ky += stride) {
            if (iy + pad < ky) break; // and so are all later taps
            const int oy = (iy + pad - ky) / stride;
            if (oy >= static_cast<int>(p.oh)) continue;
            for (int kx = (ix + pad) % stride; kx < kernel; kx += stride) {
                if (ix + pad < kx) break;
                const int ox = (ix + pad - kx) / stride;
                if (ox >= static_cast<int>(p.ow)) continue;
                const unsigned int out = (n * p.oh + oy) * p.ow + ox;
                const T* d = dy + dn_at(out, o_begin, p.ld_y);
                const float4* wv = w_s + ky * kernel + kx;
                for (int o = 0; o < count; ++o) {
                    const float g = Math::operand(static_cast<float>(d[o]));
                    const float4 f = wv[o * taps];
                    acc[0] += g * f.x;
                    acc[1] += g * f.y;
                    acc[2] += g * f.z;
                    acc[3] += g * f.w;
                }
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int j = 0; j < kDgradChannels; ++j)
        if (c0 + j < p.c_in) dx[dn_at(q, c0 + j, p.ld_x)] = static_cast<T>(acc[j]);
}

} // namespace conv

#define DN_CONV_KERNELS(T, MATH, SUFFIX)                                                         \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_fwd_##SUFFIX(const ConvParams p, const T* __restrict__ x,                           \
                          const float* __restrict__ w, T* __restrict__ y) {                      \
        conv::forward<conv::MATH, T>(p, x, w, y);                                                \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_wgrad_##SUFFIX(const ConvParams p, const T* __restrict__ x,                         \
                            const T* __restrict__ dy, float* __restrict__ partials) {            \
        conv::weight_grad<conv::MATH, T>(p, x, dy, partials);                                    \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_dgrad_##SUFFIX(const ConvParams p, const T* __restrict__ dy,                        \
                            const float* __restrict__ w, T* __restrict__ dx) {                   \
        conv::data_grad<conv::MATH, T>(p, dy, w, dx);                                            \
    }

DN_CONV_KERNELS(float, SimtF32, f32)
DN_CONV_KERNELS(float, MmaTf32, tf32)
DN_CONV_KERNELS(dn_bf16, MmaBf16, bf16)
