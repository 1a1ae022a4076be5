// conv3x3.cu — the dense layer's BN-ReLU-Conv3x3 (stride 1, padding 1): forward, weight
// gradient and data gradient, each a tiled implicit GEMM over NHWC storage with a channel
// pitch (why the storage has one: "Why it is built this way" in docs/ARCHITECTURE.md).
//
// WHAT
//   z is P = n·h·w pixels × c_in channels (pitch ld_z), r(p, c) = relu(a_c·z(p, c) + b_c) its
//   BN-ReLU (a, b from the batch-norm's statistics and γ, β; never stored), W is OHWI
//   [c_out][3][3][c_in]. Padding applies after the BN-ReLU: a tap outside the image reads 0.
//   The GEMM-K index of the forward and the weight gradient is k = tap·c_in + c (tap = ky·3 + kx),
//   W's memory order, so one weight row is a contiguous run of K = 9·c_in floats;
//   off(tap) = (ky − 1)·w + (kx − 1) is the tap's step in the flattened pixel index.
//   bn_relu_conv3x3_fwd_<T>:   y(p, o) = Σ_k A(p, k)·W(o, k), A(p, tap·c_in + c) = r(p + off(tap), c);
//                              stores columns [0, c_out) of y's view (pitch ld_y) and nothing else.
//   bn_relu_conv3x3_wgrad_<T>: per pixel split s, partial_s(o, k) = Σ_{p in s} dy(p, o)·A(p, k)
//                              into the scratch; split_sum_f32 (reduce.cu) then adds Σ_s partial_s
//                              to dW in split order.
//   bn_relu_conv3x3_dgrad_<T>: g(p, c) = [a_c·z(p, c) + b_c > 0] · Σ_{tap, o} dy(p − off(tap), o)·W(o, tap, c)
//                              (GEMM-K index tap·c_out + o) overwrites g, and per block of pixel
//                              tiles the partial [Σ g | Σ g·x̂] (x̂ = (z − mean)/√(var + ε)) goes
//                              to the scratch; split_sum_f32 (reduce.cu) sums them into `sums`.
//
// HOW
//   Forward and data gradient share one main loop (CUTLASS's "analytic" implicit GEMM): a block
//   of 256 threads owns BM pixels × BN output columns; each K-step stages a BM × 16 tile of the
//   gathered operand A (the tap's partner pixels) and a 16 × BN tile of W in shared memory,
//   double-buffered: the next step's global loads are in flight in registers while the current
//   step is multiplied, and the forward's BN-ReLU (a, b from a per-channel table in shared
//   memory, up to kMaxChannels input channels) is applied to them on the way into shared memory,
//   after the multiply (one barrier per step). A thread accumulates a 4-pixel × TN-column
//   register tile from float4 (A) and float4/float2 (W) shared-memory fragments. Global loads
//   run along channels (NHWC: contiguous per pixel). Which taps of a pixel lie inside the image
//   is a 9-bit mask per tile row, computed once per tile; a thread turns the masks of its rows
//   into one bit per row whenever its column moves to the next tap, so the K loop does no
//   coordinate arithmetic. Growth rates give narrow GEMM-N
//   (c_out = 12, 32, 5; c_in = 48, 128, 20 for the data gradient), so the wrapper picks per
//   launch the N tile that wastes the fewest columns (`tile`):
//     BN = 32, TN = 4: BM = 128 pixels;  BN = 16, TN = 4: BM = 256;  BN = 8, TN = 2: BM = 256;
//   the three bodies share one entry point and one shared-memory union.
//   Weight gradient: GEMM M = c_out (tile BCO = 32, 16 or 8, again the least wasteful), N = K
//   (tiles of 128 columns), reduction over pixels in stages of 16. Each thread's A column, hence
//   its (tap, channel) and BN affine, is fixed for the whole block; its 8 rows are consecutive
//   pixels, so their coordinates advance without division; the stages are double-buffered and
//   the BN-ReLU applied on the way into shared memory as in the forward. The GEMM's reduction
//   dimension is P (up to ~800k pixels), so the pixels are split across grid.z and each split
//   writes its own partial dW to the scratch.
//   Determinism: no atomics. Each partial is written by exactly one block, and
//   split_sum_f32 (reduce.cu) adds them in split order in double (dn_split_sum, common.cuh).
//   The data gradient's channel sums reduce over all P pixels too. Blocks owning a channel tile
//   and looping over every pixel would be deterministic without scratch, but give only
//   ⌈c_in/BN⌉ blocks (4 for c_in = 128) for a GPU of 132 SMs. So blocks own pixel tiles
//   (grid.x blocks step through the tiles, the wrapper caps grid.x so the partials fit the
//   scratch), accumulate per thread in double, combine their threads in a fixed order through
//   shared memory, and write one partial row each; the reduction adds rows in block order.
//   ReLU decisions use dn_affine (common.cuh), bit-identical to the host's.
//
// MULTIPLY (the `Math` policy each entry point is instantiated with: <op>_f32, <op>_tf32,
// <op>_bf16)
//   * SimtF32: the per-thread FFMA register tiles above; exact f32 (the fp32 precision).
//   * MmaTf32: tensor cores, mma.sync m16n8k8 tf32 with f32 accumulation (the tf32
//     precision). Only the multiply of a staged step differs: loaders, BN-ReLU, tap masks,
//     epilogues and split reductions are the f32 kernels', and the fragments are read from
//     the same k-major stages (mma_tile.cuh) and rounded there with cvt.rna.tf32.f32, so an
//     mma multiplies exactly the operands the cpu backend multiplies at tf32.
//     Forward / data gradient: warp tiles of 32 pixels, 8 warps as 4 × 2 of 32 × 16 for
//     BN = 32, 8 × 1 of 32 × 16 for BN = 16 and of 32 × 8 for BN = 8. A lane's fragments are
//     then 4 pixel rows × TN columns, the shape of a thread's f32 tile, so the epilogues read
//     them in place without staging them through shared memory; the data gradient's block
//     reduction orders its thread rows by warp row and fragment row instead.
//     Weight gradient: the transposed product dWᵀ, mma rows the block's 128 K columns (16 per
//     warp), mma columns its BCO output channels, so that BCO = 8 fills the mma's 8 columns
//     instead of half of its 16 rows; warp tiles 16 × BCO.
//   * MmaBf16 (the bf16 precision, on bf16 activations): the same warp tiles and fragment grid
//     with mma.sync m16n8k16 bf16, one k16 slice per staged step (kBK = kWgradBP = 16), the
//     fragments packed from the same stages with cvt.rn.bf16x2.f32 (dn_mma_tile_bf16).
//
// CPU reference: src/backend/conv3x3/cpu.rs (bn_relu_conv3x3_fwd / _wgrad / _dgrad, im2col,
// im2col_dgrad).
#include "common.cuh"
#include "mma_tile.cuh"

// Mirrors backend::conv3x3::Conv3x3Params.
struct Conv3x3Params {
    unsigned int n;
    unsigned int h;
    unsigned int w;
    unsigned int c_in;  // channels of z and g
    unsigned int c_out; // channels of y and dy
    unsigned int ld_z;
    unsigned int ld_y; // pitch of y (forward) or dy (gradients)
    unsigned int ld_g;
    // Forward / data gradient: GEMM-N tile width (8, 16 or 32). Weight gradient: the c_out
    // tile width (8, 16 or 32).
    unsigned int tile;
    // Weight gradient: pixels per split (a multiple of kWgradBP).
    unsigned int split_pixels;
};
static_assert(sizeof(Conv3x3Params) == 40, "size of the Rust mirror (tests/kernel_params.rs)");

namespace conv3x3 {

// ---- tiling ---------------------------------------------------------------------------------

constexpr int kThreads = 256;
// GEMM-K per main-loop step of the forward and the data gradient.
constexpr int kBK = 16;
// Output pixels per thread.
constexpr int kTM = 4;
// Floats of padding per shared-memory row: spreads the transposing stores over more banks
// and keeps rows 16-byte aligned for the float4 fragment loads.
constexpr int kPad = 4;
// Rows between the A elements one thread loads.
constexpr int kARowStride = kThreads / kBK;
// Channels the forward's per-channel BN table holds (the wrapper checks c_in against it).
constexpr int kMaxChannels = 1024;
// Weight gradient: GEMM-N (K = 9·c_in) columns per block and pixels per stage.
constexpr int kWgradBK = 128;
constexpr int kWgradBP = 16;
// Consecutive pixels whose A elements one thread loads per weight-gradient stage.
constexpr int kWgradRows = kWgradBP * kWgradBK / kThreads;

// The forward / data-gradient block tile: BN columns, TN per thread, BM pixels.
template <int BN, int TN>
struct Tile {
    static constexpr int kThreadsN = BN / TN;
    static constexpr int kThreadsM = kThreads / kThreadsN;
    static constexpr int BM = kThreadsM * kTM;
    static constexpr int kARows = BM / kARowStride;
    static constexpr int kBLoads = (kBK * BN + kThreads - 1) / kThreads;
    static_assert(BN % TN == 0 && kThreads % kThreadsN == 0 && BM % kARowStride == 0, "tile shape");
    static_assert(BM <= kThreads, "one thread per tile row computes the tap masks");
};

// Double-buffered shared tiles of one variant: A as [k][pixel], W as [k][column].
template <int BN, int TN>
struct __align__(16) Stages {
    float a[2][kBK][Tile<BN, TN>::BM + kPad];
    float b[2][kBK][BN + kPad];
};

// The weight-gradient block tile: BCO output channels (TMW per thread) × kWgradBK columns of K
// (TNW per thread).
template <int BCO, int TMW, int TNW>
struct WTile {
    static constexpr int kThreadsCo = BCO / TMW;
    static constexpr int kThreadsK = kThreads / kThreadsCo;
    static constexpr int kDyLoads = (kWgradBP * BCO + kThreads - 1) / kThreads;
    static_assert(kThreadsK * TNW == kWgradBK, "weight-gradient tile is kWgradBK columns wide");
};

template <int BCO>
struct __align__(16) WStages {
    float a[2][kWgradBP][kWgradBK + kPad];
    float dy[2][kWgradBP][BCO + kPad];
};

// TN consecutive floats of shared memory (16- or 8-byte aligned) as one vector load.
template <int TN>
__device__ __forceinline__ void load_frag(const float* src, float (&dst)[TN]) {
    static_assert(TN == 2 || TN == 4, "fragments are float2 or float4");
    if constexpr (TN == 4) {
        const float4 v = *reinterpret_cast<const float4*>(src);
        dst[0] = v.x;
        dst[1] = v.y;
        dst[2] = v.z;
        dst[3] = v.w;
    } else {
        const float2 v = *reinterpret_cast<const float2*>(src);
        dst[0] = v.x;
        dst[1] = v.y;
    }
}

// ---- tap geometry ---------------------------------------------------------------------------

// Step of tap t (ky = t/3, kx = t%3) in the flattened pixel index of a w-wide image.
__device__ __forceinline__ int tap_offset(int t, int w) { return (t / 3 - 1) * w + (t % 3 - 1); }

// Bit t set: pixel (y, x)'s partner at tap t lies inside the h × w image. The forward (dir = 1)
// reads (y + ky − 1, x + kx − 1); the data gradient (dir = −1) collects from the output pixel
// (y − ky + 1, x − kx + 1) that reads (y, x) at tap t.
__device__ __forceinline__ unsigned int tap_mask(int y, int x, int h, int w, int dir) {
    unsigned int mask = 0;
#pragma unroll
    for (int t = 0; t < 9; ++t) {
        const int yy = y + dir * (t / 3 - 1);
        const int xx = x + dir * (t % 3 - 1);
        if (yy >= 0 && yy < h && xx >= 0 && xx < w) mask |= 1u << t;
    }
    return mask;
}

// Tap masks of the BM pixel rows of the tile starting at pixel m0; rows past the last pixel get
// no taps (they load zeros and store nothing). The caller synchronises before reading them.
template <int BM>
__device__ __forceinline__ void tile_tap_masks(const Conv3x3Params& p, unsigned int m0, int dir,
                                               unsigned int* __restrict__ tapmask) {
    const unsigned int r = threadIdx.x;
    if (r >= BM) return;
    const unsigned int pixel = m0 + r;
    unsigned int mask = 0;
    if (pixel < p.n * p.h * p.w)
        mask = tap_mask(static_cast<int>(pixel / p.w % p.h), static_cast<int>(pixel % p.w),
                        static_cast<int>(p.h), static_cast<int>(p.w), dir);
    tapmask[r] = mask;
}

// ---- forward / data-gradient main loop ------------------------------------------------------

// What the implicit GEMM gathers as A: the forward, the BN-ReLU'd z at the pixels an output
// pixel reads; the data gradient, dy at the output pixels that read an input pixel.
enum class Pass { kForward, kDataGrad };

// A thread's place in the A operand: column kk = tid % kBK of every K-step, at (tap, ch) of K
// (tap == 9: past the end), advanced by kBK per step without division; and, for the current
// tap, which of its rows tid / kBK + i·kARowStride (bit i) have a partner inside the image.
struct ACursor {
    int tap;
    int ch;
    int rows_tap; // the tap `rows` was computed for
    unsigned int rows;
};

// One K-step of A in flight: raw values (0 where the bit in `valid` is clear) and, for the
// forward, the step's BN affine. The transform is applied by store_stage, after the multiply
// that hides the loads' latency.
template <int N>
struct AFrag {
    float v[N];
    unsigned int valid;
    float a;
    float b;
};

// Issues this thread's A loads of the K-step at the cursor.
template <typename T, Pass kPass, int BN, int TN>
__device__ __forceinline__ void load_a(const Conv3x3Params& p, unsigned int m0, ACursor& cur,
                                       const unsigned int* __restrict__ tapmask,
                                       const float2* __restrict__ ab, const T* __restrict__ src,
                                       AFrag<Tile<BN, TN>::kARows>& f) {
    constexpr bool kFwd = kPass == Pass::kForward;
    constexpr int kRows = Tile<BN, TN>::kARows;
    const int r0 = threadIdx.x / kBK;
    f.valid = 0;
    f.a = 0.0f;
    f.b = 0.0f;
    if (cur.tap >= 9) {
#pragma unroll
        for (int i = 0; i < kRows; ++i) f.v[i] = 0.0f;
        return;
    }
    if (cur.rows_tap != cur.tap) {
        cur.rows = 0;
#pragma unroll
        for (int i = 0; i < kRows; ++i) cur.rows |= ((tapmask[r0 + i * kARowStride] >> cur.tap) & 1u) << i;
        cur.rows_tap = cur.tap;
    }
    f.valid = cur.rows;
    if constexpr (kFwd) {
        f.a = ab[cur.ch].x;
        f.b = ab[cur.ch].y;
    }
    // Element i is at pixel m0 + r0 + i·kARowStride + off; only valid ones (inside the image,
    // hence non-negative indices) are read.
    const int off = (kFwd ? 1 : -1) * tap_offset(cur.tap, static_cast<int>(p.w));
    const long long ld = kFwd ? p.ld_z : p.ld_y;
    const long long first = (static_cast<long long>(m0) + r0 + off) * ld + cur.ch;
#pragma unroll
    for (int i = 0; i < kRows; ++i)
        f.v[i] = (f.valid >> i) & 1u ? static_cast<float>(src[first + i * kARowStride * ld]) : 0.0f;
}

// This thread's W elements of the K-step starting at k0, as B(k, n) for columns n0 + n.
// Forward: B(k, o) = W[o·K + k], loaded along k (a weight row is contiguous in k).
// Data gradient: B(tap·c_out + o, c) = W[(o·9 + tap)·c_in + c], loaded along c.
template <Pass kPass, int BN, int TN>
__device__ __forceinline__ void load_b(const Conv3x3Params& p, unsigned int n0, int k0,
                                       const float* __restrict__ w,
                                       float (&rb)[Tile<BN, TN>::kBLoads]) {
    constexpr bool kFwd = kPass == Pass::kForward;
    const int ca = static_cast<int>(kFwd ? p.c_in : p.c_out);
    const unsigned int cols = kFwd ? p.c_out : p.c_in;
    const int K = 9 * ca;
#pragma unroll
    for (int j = 0; j < Tile<BN, TN>::kBLoads; ++j) {
        const int e = threadIdx.x + j * kThreads;
        const int kk = kFwd ? e % kBK : e / BN;
        const int n = kFwd ? e / kBK : e % BN;
        const int k = k0 + kk;
        float v = 0.0f;
        if (e < kBK * BN && k < K && n0 + n < cols) {
            if constexpr (kFwd) {
                v = w[static_cast<size_t>(n0 + n) * K + k];
            } else {
                const int tap = k / ca;
                const int o = k - tap * ca;
                v = w[(static_cast<size_t>(o) * 9 + tap) * p.c_in + n0 + n];
            }
        }
        rb[j] = v;
    }
}

// Stores a K-step into stage `buf`; the forward applies its BN-ReLU here, padding stays 0.
template <Pass kPass, int BN, int TN>
__device__ __forceinline__ void store_stage(Stages<BN, TN>& s, int buf,
                                            const AFrag<Tile<BN, TN>::kARows>& f,
                                            const float (&rb)[Tile<BN, TN>::kBLoads]) {
    constexpr bool kFwd = kPass == Pass::kForward;
    const int kk = threadIdx.x % kBK, r0 = threadIdx.x / kBK;
#pragma unroll
    for (int i = 0; i < Tile<BN, TN>::kARows; ++i) {
        float v = f.v[i];
        if constexpr (kFwd) v = (f.valid >> i) & 1u ? dn_relu(dn_affine(f.a, v, f.b)) : 0.0f;
        s.a[buf][kk][r0 + i * kARowStride] = v;
    }
#pragma unroll
    for (int j = 0; j < Tile<BN, TN>::kBLoads; ++j) {
        const int e = threadIdx.x + j * kThreads;
        if (e < kBK * BN) {
            if constexpr (kFwd)
                s.b[buf][e % kBK][e / kBK] = rb[j];
            else
                s.b[buf][e / BN][e % BN] = rb[j];
        }
    }
}

// How a block multiplies a staged K-step, and which tile elements a thread's kTM × TN
// accumulators acc[i][j] are: tile row row(i), column col(j), both increasing with the index.
// The data gradient's block reduction adds per-thread column sums in the order of red_row(),
// the thread's place among the kThreadsM threads that share each column.
struct SimtF32 {};
// Tensor cores on operands of `Operands` (mma_tile.cuh).
template <class Operands>
struct Mma {};
using MmaTf32 = Mma<Tf32Operands>;
using MmaBf16 = Mma<Bf16Operands>;
template <class Math, int BN, int TN>
struct Micro;

// Exact f32: rows tm·4 .. +3 and columns tn·TN .. +TN−1 of the tile, kTM·TN FFMA per K index
// from one float4 (A) and one float4/float2 (W) fragment.
template <int BN, int TN>
struct Micro<SimtF32, BN, TN> {
    __device__ static int red_row() { return threadIdx.x / Tile<BN, TN>::kThreadsN; }
    __device__ static int row(int i) { return red_row() * kTM + i; }
    __device__ static int col(int j) { return threadIdx.x % Tile<BN, TN>::kThreadsN * TN + j; }

    __device__ static void multiply(const Stages<BN, TN>& s, int buf, float (&acc)[kTM][TN]) {
        const int m = row(0), n = col(0);
#pragma unroll
        for (int kk = 0; kk < kBK; ++kk) {
            float a[kTM], b[TN];
            load_frag<kTM>(&s.a[buf][kk][m], a);
            load_frag<TN>(&s.b[buf][kk][n], b);
#pragma unroll
            for (int i = 0; i < kTM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
    }
};

// Tensor cores (mma_tile.cuh): warp tiles of 32 pixels × BN / kWarpsN columns, the warps
// kWarpsM along the pixels × kWarpsN along the columns: 4 × 2 of 32 × 16 for BN = 32
// (BM = 128), 8 × 1 of 32 × 16 for BN = 16 and of 32 × 8 for BN = 8 (BM = 256). A lane's
// mma accumulators then are kTM rows × TN columns, the shape of the f32 register tile.
template <class Operands, int BN, int TN>
struct Micro<Mma<Operands>, BN, TN> {
    static constexpr int kWarpsM = Tile<BN, TN>::BM / 32;
    static constexpr int kWarpsN = kThreads / 32 / kWarpsM;
    static constexpr int kWarpN = BN / kWarpsN;
    static_assert(kWarpsM * kWarpsN * 32 == kThreads && kWarpN % 8 == 0, "one warp tile per warp");
    static_assert(kTM == 4 && TN == kWarpN / 4, "a lane's fragments are the thread's kTM × TN");

    __device__ static int warp_m() { return threadIdx.x / 32 / kWarpsN; }
    __device__ static int warp_n() { return threadIdx.x / 32 % kWarpsN; }
    __device__ static int red_row() { return warp_m() * 8 + static_cast<int>(threadIdx.x % 32 / 4); }
    __device__ static int row(int i) { return dn_mma_tile_row(warp_m() * 32, i); }
    __device__ static int col(int j) { return dn_mma_tile_col(warp_n() * kWarpN, j); }

    __device__ static void multiply(const Stages<BN, TN>& s, int buf, float (&acc)[kTM][TN]) {
        Operands::template tile<2, kWarpN / 8, kBK>(s.a[buf], s.b[buf], warp_m() * 32, warp_n() * kWarpN,
                                                   acc);
    }
};

// The K loop of one BM × BN tile: acc = A · B. The tile's tap masks (and the forward's BN
// table) must be visible. Ends with a barrier, so the stages may be reused afterwards.
template <class Math, typename T, Pass kPass, int BN, int TN>
__device__ __forceinline__ void mainloop(const Conv3x3Params& p, unsigned int m0, unsigned int n0,
                                         Stages<BN, TN>& s, const unsigned int* __restrict__ tapmask,
                                         const float2* __restrict__ ab, const T* __restrict__ src,
                                         const float* __restrict__ w, float (&acc)[kTM][TN]) {
    const int ca = static_cast<int>(kPass == Pass::kForward ? p.c_in : p.c_out);
    const int steps = (9 * ca + kBK - 1) / kBK;
    if (steps == 0) return;
    const int kk = threadIdx.x % kBK;
    ACursor cur{kk / ca, kk % ca, -1, 0};
    AFrag<Tile<BN, TN>::kARows> fa;
    float rb[Tile<BN, TN>::kBLoads];
    load_a<T, kPass, BN, TN>(p, m0, cur, tapmask, ab, src, fa);
    load_b<kPass, BN, TN>(p, n0, 0, w, rb);
    store_stage<kPass, BN, TN>(s, 0, fa, rb);
    __syncthreads();
    for (int step = 0; step < steps; ++step) {
        const int buf = step & 1;
        const bool more = step + 1 < steps;
        if (more) {
            for (cur.ch += kBK; cur.ch >= ca && cur.tap < 9; cur.ch -= ca) ++cur.tap;
            load_a<T, kPass, BN, TN>(p, m0, cur, tapmask, ab, src, fa);
            load_b<kPass, BN, TN>(p, n0, (step + 1) * kBK, w, rb);
        }
        Micro<Math, BN, TN>::multiply(s, buf, acc);
        // The other buffer was last read before the previous barrier.
        if (more) store_stage<kPass, BN, TN>(s, buf ^ 1, fa, rb);
        __syncthreads();
    }
}

// ---- forward --------------------------------------------------------------------------------

template <class Math, typename T, int BN, int TN>
__device__ __forceinline__ void forward(const Conv3x3Params& p, Stages<BN, TN>& s,
                                        unsigned int* __restrict__ tapmask, float2* __restrict__ ab,
                                        const T* __restrict__ z, const float* __restrict__ mean,
                                        const float* __restrict__ var,
                                        const float* __restrict__ gamma,
                                        const float* __restrict__ beta,
                                        const float* __restrict__ w, T* __restrict__ y) {
    using Tl = Tile<BN, TN>;
    const unsigned int m0 = blockIdx.x * Tl::BM, n0 = blockIdx.y * BN;
    // Prologue: the BN affine of every input channel, and the tile's tap masks.
    for (unsigned int c = threadIdx.x; c < p.c_in; c += kThreads) {
        float a, b;
        dn_bn_affine(gamma[c], beta[c], mean[c], var[c], a, b);
        ab[c] = make_float2(a, b);
    }
    tile_tap_masks<Tl::BM>(p, m0, 1, tapmask);
    __syncthreads();

    float acc[kTM][TN] = {};
    mainloop<Math, T, Pass::kForward, BN, TN>(p, m0, n0, s, tapmask, ab, z, w, acc);

    // Epilogue: straight into y's columns.
    using Mi = Micro<Math, BN, TN>;
    const unsigned int pixels = p.n * p.h * p.w;
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
        const unsigned int pixel = m0 + Mi::row(i);
        if (pixel >= pixels) break;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const unsigned int o = n0 + Mi::col(j);
            if (o < p.c_out) y[dn_at(pixel, o, p.ld_y)] = static_cast<T>(acc[i][j]);
        }
    }
}

// ---- data gradient --------------------------------------------------------------------------

// The stages, reused after the last tile for the block's fixed-order reduction of the
// per-thread channel sums ([thread row][Σg columns | Σg·x̂ columns]).
template <int BN, int TN>
union DgradShared {
    Stages<BN, TN> stages;
    double red[Tile<BN, TN>::kThreadsM][2 * BN];
};

template <class Math, typename T, int BN, int TN>
__device__ __forceinline__ void data_grad(const Conv3x3Params& p, DgradShared<BN, TN>& s,
                                          unsigned int* __restrict__ tapmask,
                                          float4* __restrict__ chan, const T* __restrict__ dy,
                                          const float* __restrict__ w, const T* __restrict__ z,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ var,
                                          const float* __restrict__ gamma,
                                          const float* __restrict__ beta, T* __restrict__ g,
                                          float* __restrict__ partials) {
    using Tl = Tile<BN, TN>;
    using Mi = Micro<Math, BN, TN>;
    const unsigned int n0 = blockIdx.y * BN;
    const unsigned int pixels = p.n * p.h * p.w;
    // The epilogue's per-channel (a, b, mean, 1/√(var + ε)) of this block's columns; visible
    // after the first tile's barrier.
    if (threadIdx.x < BN) {
        const unsigned int c = n0 + threadIdx.x;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (c < p.c_in) {
            dn_bn_affine(gamma[c], beta[c], mean[c], var[c], v.x, v.y);
            v.z = mean[c];
            v.w = dn_invstd(var[c]);
        }
        chan[threadIdx.x] = v;
    }

    double sum_g[TN] = {}, sum_gx[TN] = {};
    const unsigned int tiles = (pixels + Tl::BM - 1) / Tl::BM;
    for (unsigned int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const unsigned int m0 = tile * Tl::BM;
        // The previous tile's last reads of the masks came before its final barrier.
        tile_tap_masks<Tl::BM>(p, m0, -1, tapmask);
        __syncthreads();
        float acc[kTM][TN] = {};
        mainloop<Math, T, Pass::kDataGrad, BN, TN>(p, m0, n0, s.stages, tapmask, nullptr, dy, w, acc);

        // Epilogue: ReLU mask from z, store g, accumulate the BN-backward sums.
#pragma unroll
        for (int i = 0; i < kTM; ++i) {
            const unsigned int pixel = m0 + Mi::row(i);
            if (pixel >= pixels) break;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const unsigned int c = n0 + Mi::col(j);
                if (c >= p.c_in) continue;
                const float4 bn = chan[Mi::col(j)];
                const float zv = static_cast<float>(z[dn_at(pixel, c, p.ld_z)]);
                const float gv = dn_affine(bn.x, zv, bn.y) > 0.0f ? acc[i][j] : 0.0f;
                g[dn_at(pixel, c, p.ld_g)] = static_cast<T>(gv);
                sum_g[j] += gv;
                sum_gx[j] += static_cast<double>(gv) *
                             ((static_cast<double>(zv) - bn.z) * static_cast<double>(bn.w));
            }
        }
    }

    // Block reduction in a fixed order: thread rows 0, 1, 2, ... per column. The last main
    // loop ended with a barrier (with c_out = 0 none touched the stages), so they are free.
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        s.red[Mi::red_row()][Mi::col(j)] = sum_g[j];
        s.red[Mi::red_row()][BN + Mi::col(j)] = sum_gx[j];
    }
    __syncthreads();
    if (threadIdx.x < 2 * BN) {
        const unsigned int col = threadIdx.x % BN, c = n0 + col;
        if (c < p.c_in) {
            double total = 0.0;
            for (int r = 0; r < Tl::kThreadsM; ++r) total += s.red[r][threadIdx.x];
            const unsigned int half = threadIdx.x < BN ? 0 : p.c_in;
            partials[static_cast<size_t>(blockIdx.x) * 2 * p.c_in + half + c] =
                static_cast<float>(total);
        }
    }
}

// The weight gradient's multiply of a staged stage of kWgradBP pixels, and which elements of
// the BCO × kWgradBK block tile a thread's kO × kK accumulators are: output channel o(i),
// K column k(j), both increasing with the index; at(acc, i, j) is that element.
template <class Math, int BCO, int TMW, int TNW>
struct WMicro;

// Exact f32: channels to·TMW .. +TMW−1 × columns tk·TNW .. +TNW−1, TMW·TNW FFMA per pixel.
template <int BCO, int TMW, int TNW>
struct WMicro<SimtF32, BCO, TMW, TNW> {
    using Tl = WTile<BCO, TMW, TNW>;
    static constexpr int kO = TMW, kK = TNW;
    using Acc = float[TMW][TNW];

    __device__ static int o(int i) { return threadIdx.x / Tl::kThreadsK * TMW + i; }
    __device__ static int k(int j) { return threadIdx.x % Tl::kThreadsK * TNW + j; }
    __device__ static float at(const Acc& acc, int i, int j) { return acc[i][j]; }

    __device__ static void multiply(const WStages<BCO>& s, int buf, Acc& acc) {
        const int o0 = o(0), k0 = k(0);
#pragma unroll
        for (int r = 0; r < kWgradBP; ++r) {
            float d[TMW], v[TNW];
            load_frag<TMW>(&s.dy[buf][r][o0], d);
            load_frag<TNW>(&s.a[buf][r][k0], v);
#pragma unroll
            for (int i = 0; i < TMW; ++i)
#pragma unroll
                for (int j = 0; j < TNW; ++j) acc[i][j] += d[i] * v[j];
        }
    }
};

// Tensor cores on the transposed product dWᵀ = Aᵀ·dy: mma rows are the block's kWgradBK K
// columns (16 per warp), mma columns its BCO output channels, so the narrowest tile (BCO = 8)
// fills an m16n8k8 without padding; each warp tile is 16 × BCO (BCO / 8 mma per k8 slice).
template <class Operands, int BCO, int TMW, int TNW>
struct WMicro<Mma<Operands>, BCO, TMW, TNW> {
    static constexpr int kWarpK = 16;
    static_assert(kThreads / 32 * kWarpK == kWgradBK && BCO % 8 == 0, "one warp tile per warp");
    static constexpr int kO = BCO / 4, kK = 2;
    // [K column][output channel], the mma tile's rows × columns.
    using Acc = float[kK][kO];

    __device__ static int warp_k() { return threadIdx.x / 32 * kWarpK; }
    __device__ static int o(int i) { return dn_mma_tile_col(0, i); }
    __device__ static int k(int j) { return dn_mma_tile_row(warp_k(), j); }
    __device__ static float at(const Acc& acc, int i, int j) { return acc[j][i]; }

    __device__ static void multiply(const WStages<BCO>& s, int buf, Acc& acc) {
        Operands::template tile<1, BCO / 8, kWgradBP>(s.a[buf], s.dy[buf], warp_k(), 0, acc);
    }
};

// ---- weight gradient ------------------------------------------------------------------------

template <class Math, typename T, int BCO, int TMW, int TNW>
__device__ __forceinline__ void weight_grad(const Conv3x3Params& p, WStages<BCO>& s,
                                            const T* __restrict__ z, const float* __restrict__ mean,
                                            const float* __restrict__ var,
                                            const float* __restrict__ gamma,
                                            const float* __restrict__ beta,
                                            const T* __restrict__ dy,
                                            float* __restrict__ partials) {
    using Tl = WTile<BCO, TMW, TNW>;
    const int K = 9 * static_cast<int>(p.c_in);
    const unsigned int k0 = blockIdx.x * kWgradBK, o0 = blockIdx.y * BCO;
    const unsigned int pixels = p.n * p.h * p.w;
    const unsigned int begin = blockIdx.z * p.split_pixels;
    const unsigned int end = min(pixels, begin + p.split_pixels);
    const int h = static_cast<int>(p.h), width = static_cast<int>(p.w);

    // This thread's A column: fixed (tap, channel, BN affine) for the whole block.
    const int col = threadIdx.x % kWgradBK, row0 = threadIdx.x / kWgradBK * kWgradRows;
    const int k = static_cast<int>(k0) + col;
    const bool k_valid = k < K;
    const int tap = k_valid ? k / static_cast<int>(p.c_in) : 0;
    const unsigned int ch = k_valid ? k - tap * p.c_in : 0;
    const int dy_tap = tap / 3 - 1, dx_tap = tap % 3 - 1;
    const int off = tap_offset(tap, width);
    float a = 0.0f, b = 0.0f;
    if (k_valid) dn_bn_affine(gamma[ch], beta[ch], mean[ch], var[ch], a, b);

    // A stage in flight: raw z (bit i of `valid`: row i is inside the split and its tap inside
    // the image) and dy. The BN-ReLU is applied by `store`, after the multiply that hides the
    // loads' latency.
    float ra[kWgradRows], rd[Tl::kDyLoads];
    unsigned int valid = 0;
    // Rows row0 .. row0 + kWgradRows − 1 of the stage at pixel q0: consecutive pixels whose
    // coordinates step without division.
    auto load = [&](unsigned int q0) {
        unsigned int q = q0 + row0;
        int x = 0, y = 0;
        if (q < end) {
            x = static_cast<int>(q % p.w);
            y = static_cast<int>(q / p.w % p.h);
        }
        valid = 0;
#pragma unroll
        for (int i = 0; i < kWgradRows; ++i, ++q) {
            const int yy = y + dy_tap, xx = x + dx_tap;
            if (k_valid && q < end && yy >= 0 && yy < h && xx >= 0 && xx < width) valid |= 1u << i;
            ra[i] = (valid >> i) & 1u ? static_cast<float>(z[dn_at(q + off, ch, p.ld_z)]) : 0.0f;
            if (++x == width) {
                x = 0;
                if (++y == h) y = 0;
            }
        }
#pragma unroll
        for (int j = 0; j < Tl::kDyLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            const unsigned int r = e / BCO, o = o0 + e % BCO, qr = q0 + r;
            rd[j] = e < kWgradBP * BCO && qr < end && o < p.c_out
                        ? static_cast<float>(dy[dn_at(qr, o, p.ld_y)])
                        : 0.0f;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < kWgradRows; ++i)
            s.a[buf][row0 + i][col] = (valid >> i) & 1u ? dn_relu(dn_affine(a, ra[i], b)) : 0.0f;
#pragma unroll
        for (int j = 0; j < Tl::kDyLoads; ++j) {
            const int e = threadIdx.x + j * kThreads;
            if (e < kWgradBP * BCO) s.dy[buf][e / BCO][e % BCO] = rd[j];
        }
    };

    using Mi = WMicro<Math, BCO, TMW, TNW>;
    typename Mi::Acc acc = {};
    const int stages = static_cast<int>((end - begin + kWgradBP - 1) / kWgradBP);
    load(begin);
    store(0);
    __syncthreads();
    for (int st = 0; st < stages; ++st) {
        const int buf = st & 1;
        const bool more = st + 1 < stages;
        if (more) load(begin + (st + 1) * kWgradBP);
        Mi::multiply(s, buf, acc);
        // The other buffer was last read before the previous barrier.
        if (more) store(buf ^ 1);
        __syncthreads();
    }

    // This split's partial dW tile, one writer per element.
    float* part = partials + static_cast<size_t>(blockIdx.z) * p.c_out * K;
#pragma unroll
    for (int i = 0; i < Mi::kO; ++i) {
        const unsigned int o = o0 + Mi::o(i);
        if (o >= p.c_out) break;
#pragma unroll
        for (int j = 0; j < Mi::kK; ++j) {
            const int kj = static_cast<int>(k0) + Mi::k(j);
            if (kj < K) part[static_cast<size_t>(o) * K + kj] = Mi::at(acc, i, j);
        }
    }
}

// ---- dispatch over the tile variants ---------------------------------------------------------

// One shared-memory union per entry point: the three variants' tiles overlap instead of
// adding up.
struct FwdShared {
    union {
        Stages<8, 2> n8;
        Stages<16, 4> n16;
        Stages<32, 4> n32;
    } stages;
    unsigned int tapmask[kThreads];
    float2 ab[kMaxChannels];
};

struct DgradSmem {
    union {
        DgradShared<8, 2> n8;
        DgradShared<16, 4> n16;
        DgradShared<32, 4> n32;
    } u;
    unsigned int tapmask[kThreads];
    float4 chan[32];
};

union WgradShared {
    WStages<8> n8;
    WStages<16> n16;
    WStages<32> n32;
};

template <class Math, typename T>
__device__ __forceinline__ void forward_dispatch(const Conv3x3Params& p, const T* __restrict__ z,
                                                 const float* __restrict__ mean,
                                                 const float* __restrict__ var,
                                                 const float* __restrict__ gamma,
                                                 const float* __restrict__ beta,
                                                 const float* __restrict__ w, T* __restrict__ y) {
    __shared__ FwdShared s;
    switch (p.tile) {
    case 8:
        forward<Math, T, 8, 2>(p, s.stages.n8, s.tapmask, s.ab, z, mean, var, gamma, beta, w, y);
        break;
    case 16:
        forward<Math, T, 16, 4>(p, s.stages.n16, s.tapmask, s.ab, z, mean, var, gamma, beta, w, y);
        break;
    default:
        forward<Math, T, 32, 4>(p, s.stages.n32, s.tapmask, s.ab, z, mean, var, gamma, beta, w, y);
        break;
    }
}

template <class Math, typename T>
__device__ __forceinline__ void data_grad_dispatch(
    const Conv3x3Params& p, const T* __restrict__ dy, const float* __restrict__ w,
    const T* __restrict__ z, const float* __restrict__ mean, const float* __restrict__ var,
    const float* __restrict__ gamma, const float* __restrict__ beta, T* __restrict__ g,
    float* __restrict__ partials) {
    __shared__ DgradSmem s;
    switch (p.tile) {
    case 8:
        data_grad<Math, T, 8, 2>(p, s.u.n8, s.tapmask, s.chan, dy, w, z, mean, var, gamma, beta, g, partials);
        break;
    case 16:
        data_grad<Math, T, 16, 4>(p, s.u.n16, s.tapmask, s.chan, dy, w, z, mean, var, gamma, beta, g,
                                  partials);
        break;
    default:
        data_grad<Math, T, 32, 4>(p, s.u.n32, s.tapmask, s.chan, dy, w, z, mean, var, gamma, beta, g,
                                  partials);
        break;
    }
}

template <class Math, typename T>
__device__ __forceinline__ void weight_grad_dispatch(
    const Conv3x3Params& p, const T* __restrict__ z, const float* __restrict__ mean,
    const float* __restrict__ var, const float* __restrict__ gamma,
    const float* __restrict__ beta, const T* __restrict__ dy, float* __restrict__ partials) {
    __shared__ WgradShared s;
    switch (p.tile) {
    case 8: weight_grad<Math, T, 8, 2, 2>(p, s.n8, z, mean, var, gamma, beta, dy, partials); break;
    case 16: weight_grad<Math, T, 16, 4, 2>(p, s.n16, z, mean, var, gamma, beta, dy, partials); break;
    default: weight_grad<Math, T, 32, 4, 4>(p, s.n32, z, mean, var, gamma, beta, dy, partials); break;
    }
}

} // namespace conv3x3

#define DN_CONV3X3_KERNELS(T, MATH, SUFFIX)                                                       \
    extern "C" __global__ void __launch_bounds__(conv3x3::kThreads) bn_relu_conv3x3_fwd_##SUFFIX( \
        const Conv3x3Params p, const T* __restrict__ z, const float* __restrict__ mean,           \
        const float* __restrict__ var, const float* __restrict__ gamma,                           \
        const float* __restrict__ beta, const float* __restrict__ w, T* __restrict__ y) {         \
        conv3x3::forward_dispatch<conv3x3::MATH, T>(p, z, mean, var, gamma, beta, w, y);          \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(conv3x3::kThreads)                               \
        bn_relu_conv3x3_wgrad_##SUFFIX(const Conv3x3Params p, const T* __restrict__ z,            \
                                       const float* __restrict__ mean,                            \
                                       const float* __restrict__ var,                             \
                                       const float* __restrict__ gamma,                           \
                                       const float* __restrict__ beta, const T* __restrict__ dy,  \
                                       float* __restrict__ partials) {                            \
        conv3x3::weight_grad_dispatch<conv3x3::MATH, T>(p, z, mean, var, gamma, beta, dy,         \
                                                        partials);                                \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(conv3x3::kThreads)                               \
        bn_relu_conv3x3_dgrad_##SUFFIX(const Conv3x3Params p, const T* __restrict__ dy,           \
                                       const float* __restrict__ w, const T* __restrict__ z,      \
                                       const float* __restrict__ mean,                            \
                                       const float* __restrict__ var,                             \
                                       const float* __restrict__ gamma,                           \
                                       const float* __restrict__ beta, T* __restrict__ g,         \
                                       float* __restrict__ partials) {                            \
        conv3x3::data_grad_dispatch<conv3x3::MATH, T>(p, dy, w, z, mean, var, gamma, beta, g,     \
                                                      partials);                                  \
    }

DN_CONV3X3_KERNELS(float, SimtF32, f32)
DN_CONV3X3_KERNELS(float, MmaTf32, tf32)
DN_CONV3X3_KERNELS(dn_bf16, MmaBf16, bf16)
