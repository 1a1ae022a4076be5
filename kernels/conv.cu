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
// CPU reference: src/backend/conv/cpu.rs (conv_fwd, conv_wgrad, conv_dgrad; im2col in cpu/gemm.rs,
// im2col_dgrad).
#include "common.cuh"

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

// ---- forward --------------------------------------------------------------------------------

template <typename T>
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
    const int tn = threadIdx.x % kThreadsN, tm = threadIdx.x / kThreadsN;
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
#pragma unroll
        for (int kq = 0; kq < kBK; ++kq) {
            const float4 a = *reinterpret_cast<const float4*>(&a_s[kq][tm * kTM]);
            const float4 b = *reinterpret_cast<const float4*>(&b_s[kq][tn * kTN]);
            const float av[kTM] = {a.x, a.y, a.z, a.w}, bv[kTN] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < kTM; ++i)
#pragma unroll
                for (int jj = 0; jj < kTN; ++jj) acc[i][jj] += av[i] * bv[jj];
        }
    }

#pragma unroll
    for (int i = 0; i < kTM; ++i) {
        const unsigned int q = m0 + tm * kTM + i;
        if (q >= out_pixels) break;
#pragma unroll
        for (int j = 0; j < kTN; ++j) {
            const unsigned int o = n0 + tn * kTN + j;
            if (o < p.c_out) y[dn_at(q, o, p.ld_y)] = static_cast<T>(acc[i][j]);
        }
    }
}

// ---- weight gradient ------------------------------------------------------------------------

template <typename T>
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

    const int tk = threadIdx.x % kWgradThreadsK, to = threadIdx.x / kWgradThreadsK;
    float acc[kWgradTM][kWgradTN] = {};
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
#pragma unroll
        for (int r = 0; r < kWgradBP; ++r) {
            const float4 d = *reinterpret_cast<const float4*>(&dy_s[r][to * kWgradTM]);
            const float2 v = *reinterpret_cast<const float2*>(&a_s[r][tk * kWgradTN]);
            const float dv[kWgradTM] = {d.x, d.y, d.z, d.w}, vv[kWgradTN] = {v.x, v.y};
#pragma unroll
            for (int i = 0; i < kWgradTM; ++i)
#pragma unroll
                for (int j = 0; j < kWgradTN; ++j) acc[i][j] += dv[i] * vv[j];
        }
    }

    // This split's partial dW tile, one writer per element.
    float* part = partials + static_cast<size_t>(blockIdx.z) * p.c_out * K;
#pragma unroll
    for (int i = 0; i < kWgradTM; ++i) {
        const unsigned int o = o0 + to * kWgradTM + i;
        if (o >= p.c_out) break;
#pragma unroll
        for (int j = 0; j < kWgradTN; ++j) {
            const int kj = static_cast<int>(k0) + tk * kWgradTN + j;
            if (kj < K) part[static_cast<size_t>(o) * K + kj] = acc[i][j];
        }
    }
}

// ---- data gradient --------------------------------------------------------------------------

template <typename T>
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
            for (int j = 0; j < kDgradChannels; ++j) v[j] = c0 + j < p.c_in ? src[j] : 0.0f;
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
                    const float g = static_cast<float>(d[o]);
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

#define DN_CONV_KERNELS(T, SUFFIX)                                                               \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_fwd_##SUFFIX(const ConvParams p, const T* __restrict__ x,                           \
                          const float* __restrict__ w, T* __restrict__ y) {                      \
        conv::forward<T>(p, x, w, y);                                                            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_wgrad_##SUFFIX(const ConvParams p, const T* __restrict__ x,                         \
                            const T* __restrict__ dy, float* __restrict__ partials) {            \
        conv::weight_grad<T>(p, x, dy, partials);                                                \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(conv::kThreads)                                 \
        conv_dgrad_##SUFFIX(const ConvParams p, const T* __restrict__ dy,                        \
                            const float* __restrict__ w, T* __restrict__ dx) {                   \
        conv::data_grad<T>(p, dy, w, dx);                                                        \
    }

DN_CONV_KERNELS(float, f32)
