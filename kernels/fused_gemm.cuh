// fused_gemm.cuh — the tiled f32 GEMM behind the fused 1×1 convolutions (conv1x1.cu) and the
// transition (transition.cu), with its BN-ReLU(-pool) prologue and BN-backward epilogue.
//
// WHAT
//   Every op of those two files is one GEMM over the NHWC-with-pitch storage. The operands are
//   read in place and transformed while they are loaded, so the BN-ReLU'd (and pooled) input
//   only ever exists in registers and shared memory:
//     forward  out[R × cout]  = A[R × cin] · Wᵀ          A = relu(a⊙x + b), pooled 2×2 for
//                                                         the transition (R = its output pixels)
//     wgrad    dW[cout × cin] += dOutᵀ[cout × R] · A[R × cin]   (reduction over the R pixels)
//     dgrad    gpre[R × cin]   = dOut[R × cout] · W,  handed to a BN-ReLU backward epilogue.
//
// HOW (CUTLASS's names)
//   * Threadblock tile kTileM × kTileN = 64 × 64 outputs, kGemmThreads = 256 threads, each owning
//     a 4 × 4 register micro-tile: per reduction index, 16 FFMA for two float4 shared loads.
//     Reduction steps of kTileK = 16.
//   * Shared memory holds both operand tiles k-major (a[k][m], b[k][n]), double-buffered: the
//     loaders fetch step s + 1 from global memory into registers while step s is multiplied, then
//     store it into the other buffer; one barrier per step. (The tensor-core forwards of the 1×1
//     convolution and the data gradients have cp.async pipelines instead where their rows are
//     aligned: "cp.async pipelines" below.)
//   * Loaders. An operand whose global rows run along the reduction index (x and W in the
//     forward, dOut in dgrad: K-contiguous) is read in groups of 4 consecutive elements, one
//     128-bit load each (64-bit for bf16) where the matrix's start and pitch are multiples of 4
//     elements and element loads otherwise (the choice is uniform per launch), 4 threads per row
//     — a warp reads eight 64-byte row pieces — and transposed on its way into shared memory; the
//     row pitch of 68 floats keeps float4 alignment and makes that store 2-way bank-conflicted.
//     An operand whose rows run along the output index (dOut and x in wgrad, W in dgrad) is read
//     as 32 consecutive floats per warp and stored as is. What an element is — a plain value,
//     relu(a·x + b), the mean of four of those — is the loader's Source. Rows and channels
//     outside the matrices read as 0 (never as relu(b)), so no size needs to be a multiple of a
//     tile.
//   * Epilogue. The accumulators are staged through shared memory (aliasing the operand
//     buffers): thread t then owns channel column t mod 64 and tile rows t/64 + 4i, so a warp
//     reads and writes 32 consecutive channels of one pixel, and each thread's BN constants
//     (one channel) are computed once.
//
// MULTIPLY (the `Math` policy every GEMM below is instantiated with)
//   * SimtF32: the 4 × 4 FFMA micro-tile of each thread above; exact f32 (the fp32 precision).
//   * MmaTf32: tensor cores, mma.sync m16n8k8 tf32 with f32 accumulation (the tf32 precision).
//   * MmaBf16: the same warp tiles with mma.sync m16n8k16 bf16 (the bf16 precision): one k16
//     slice per step, its fragments packed from the same f32 shared tiles with
//     cvt.rn.bf16x2.f32 (dn_mma_tile_bf16), so an mma multiplies the bf16-rounded operands the
//     cpu backend multiplies at bf16; activations are loaded from and stored to bf16 (T).
//     Warp tile 32 × 16 (8 warps as 2 along M × 4 along N), mma tile 16 × 8 × 8, so a warp
//     issues 2 × 2 mma per 8-deep slice of the step, through dn_mma_tile_tf32 (mma_tile.cuh,
//     shared with the implicit-GEMM convolutions). The fragments are read from the same
//     k-major shared tiles as SimtF32's (the loaders, their BN-ReLU(-pool) prologue and the
//     epilogue are shared) and rounded there with cvt.rna.tf32.f32, so the operand an mma
//     sees is exactly Precision::round_operand of what the cpu backend multiplies. The
//     accumulators are staged into s.c by their tile rows and columns, after which the
//     epilogues are the same.
//
// DETERMINISM (no float atomics anywhere; the splits depend on the shape only)
//   * wgrad splits the reduction into `splits` runs of `run` steps (blockIdx.z). With one split
//     each block adds its tile into dW; otherwise it stores the tile into the backend's scratch
//     and split_sum_f32 (reduce.cu) adds the splits in order, in double, into dW.
//   * dgrad: a block owns a 64-channel tile (blockIdx.x) and a run of `run` consecutive row tiles
//     (blockIdx.y). Each thread adds its channel's Σg and Σg·x̂ in f32 over one row tile and in
//     double across tiles; the block adds its 4 row threads in order and stores the totals into
//     `sums` (one run) or, as doubles, into the scratch for dn_tile_sums_finish (common.cuh),
//     which adds the runs in order. Runs rather than one partial per row tile: R/64 partials of
//     2·cin doubles would overflow the 4 Mi-float scratch at ImageNet sizes (R = 64·56·56,
//     cin up to 1024), and a run amortises a block's fixed costs (BN constants, final combine).
//     Runs rather than one block per channel tile looping over all pixels: cin/64 blocks cannot
//     fill a GPU.
//
// CPU references: src/backend/{conv1x1,transition}/cpu.rs (same op names).
#pragma once
#include "common.cuh"
#include "mma_tile.cuh"

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kGemmThreads = 256;
constexpr int kMicro = 4;
static_assert(kTileM == kTileN, "both operand tiles share one shared-memory pitch");
static_assert((kTileM / kMicro) * (kTileN / kMicro) == kGemmThreads, "one micro-tile a thread");
static_assert(kMicro == 4, "micro-tile rows and columns are read as float4");
// Shared row pitch: +4 floats keeps float4 alignment and spreads transposing stores over banks.
constexpr int kSmemPitch = kTileM + 4;
// Elements each thread loads per operand tile.
constexpr int kLoads = kTileK * kTileM / kGemmThreads;
// Threads sharing a row of a K-contiguous operand tile, kLoads consecutive elements each.
constexpr int kGroupsPerRow = kTileK / kLoads;
// Epilogue: row threads per channel column, and rows per thread.
constexpr int kEpiRowThreads = kGemmThreads / kTileN;
constexpr int kEpiRows = kTileM / kEpiRowThreads;

struct GemmOperands {
    float a[2][kTileK][kSmemPitch];
    float b[2][kTileK][kSmemPitch];
};

// The operand buffers, the accumulator tile the epilogue reads once they are free, and the data
// gradient's per-thread channel sums, combined after its last tile.
union __align__(16) GemmSmem {
    GemmOperands op;
    float c[kTileM][kSmemPitch];
    double totals[2][kEpiRowThreads][kTileN];
};

__device__ __forceinline__ unsigned int dn_ceil_div(unsigned int a, unsigned int b) {
    return (a + b - 1) / b;
}

// ---- Sources: what element (row, column) of an operand is --------------------------------------

// A pixel row of a source: the offset of its first element, and whether it exists.
struct SrcRow {
    size_t offset;
    bool valid;
};

// A column of a plain source.
struct PlainCol {
    unsigned int c;
    bool valid;
};

// ---- Groups of four consecutive elements of a row (the TransposingLoader's unit) ----------------

// Whether every row of a matrix at p with pitch ld starts on a 4-element boundary
// (16 bytes for f32, 8 for bf16), so that a group at a column multiple of 4 is one aligned
// vector load.
template <typename T>
__device__ __forceinline__ bool dn_rows_vec4(const T* p, unsigned int ld) {
    return reinterpret_cast<size_t>(p) % (4 * sizeof(T)) == 0 && ld % 4 == 0;
}

// Elements q[0..4) widened to f32, q aligned to 4 elements: one 128-bit load for f32, one
// 64-bit load for bf16.
__device__ __forceinline__ void dn_load_vec4(const float* q, float v[4]) {
    const float4 u = *reinterpret_cast<const float4*>(q);
    v[0] = u.x;
    v[1] = u.y;
    v[2] = u.z;
    v[3] = u.w;
}
__device__ __forceinline__ void dn_load_vec4(const dn_bf16* q, float v[4]) {
    const uint2 u = *reinterpret_cast<const uint2*>(q);
    v[0] = __uint_as_float(u.x << 16);
    v[1] = __uint_as_float(u.x & 0xffff0000u);
    v[2] = __uint_as_float(u.y << 16);
    v[3] = __uint_as_float(u.y & 0xffff0000u);
}

// Elements c[0..4).c (consecutive, the first a multiple of 4) of the row at q, widened to f32:
// a vector load when the rows allow it and the whole group lies inside the matrix, else one
// load per valid element and 0 for the others.
template <typename T, class Col>
__device__ __forceinline__ void dn_load_group(const T* q, bool vec, const Col (&c)[4], float v[4]) {
    if (vec && c[3].valid) {
        dn_load_vec4(q + c[0].c, v);
        return;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = c[e].valid ? static_cast<float>(q[c[e].c]) : 0.0f;
}

// Element (r, c) of a rows × cols matrix with pitch ld, as it is.
template <typename T>
struct PlainSource {
    using Col = PlainCol;
    const T* p;
    unsigned int rows, cols, ld;

    __device__ SrcRow row(unsigned int r) const { return {dn_at(r, 0, ld), r < rows}; }
    __device__ Col col(unsigned int c) const { return {c, c < cols}; }
    __device__ float load(SrcRow r, Col c) const {
        return r.valid && c.valid ? static_cast<float>(p[r.offset + c.c]) : 0.0f;
    }
    __device__ void load_group(SrcRow r, const Col (&c)[4], float v[4]) const {
        if (!r.valid) {
#pragma unroll
            for (int e = 0; e < 4; ++e) v[e] = 0.0f;
            return;
        }
        dn_load_group(p + r.offset, dn_rows_vec4(p, ld), c, v);
    }
};

// Where a BN finds its per-channel statistics and parameters (the kernels' argument order).
struct BnParams {
    const float* mean;
    const float* var;
    const float* gamma;
    const float* beta;
};

// A BN's per-channel (a, b), computed once per op by bn_affine_f32 (stats.cu). The forwards
// read it: their TransposingLoader resolves a new channel at every reduction step, where
// evaluating γ/√(var + ε) would cost each thread four loads, a square root and a division per
// step. The gradients resolve their channels once per block and take BnParams.
struct BnTable {
    const float2* ab;
};

// A BN-ReLU'd column: channel c and its affine a, b as the host computes them.
struct BnCol {
    unsigned int c;
    bool valid;
    float a, b;
};

__device__ __forceinline__ BnCol dn_bn_col(const BnParams& bn, unsigned int c, unsigned int cols) {
    BnCol k{c, c < cols, 0.0f, 0.0f};
    if (k.valid) dn_bn_affine(bn.gamma[c], bn.beta[c], bn.mean[c], bn.var[c], k.a, k.b);
    return k;
}

__device__ __forceinline__ BnCol dn_bn_col(const BnTable& bn, unsigned int c, unsigned int cols) {
    BnCol k{c, c < cols, 0.0f, 0.0f};
    if (k.valid) {
        const float2 ab = bn.ab[c];
        k.a = ab.x;
        k.b = ab.y;
    }
    return k;
}

// relu(a·x + b), the pre-activation rounded as on the host.
__device__ __forceinline__ float dn_bn_relu(const BnCol& k, float x) {
    return dn_relu(dn_affine(k.a, x, k.b));
}

// Element (r, c) of relu(a⊙x + b), x a rows × cols matrix with pitch ld; the BN's affine from
// Bn (BnParams or BnTable).
template <typename T, class Bn>
struct BnReluSource {
    using Col = BnCol;
    const T* x;
    unsigned int rows, cols, ld;
    Bn bn;

    __device__ SrcRow row(unsigned int r) const { return {dn_at(r, 0, ld), r < rows}; }
    __device__ Col col(unsigned int c) const { return dn_bn_col(bn, c, cols); }
    __device__ float load(SrcRow r, Col c) const {
        return r.valid && c.valid ? dn_bn_relu(c, static_cast<float>(x[r.offset + c.c])) : 0.0f;
    }
    __device__ void load_group(SrcRow r, const Col (&c)[4], float v[4]) const {
        float raw[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (r.valid) dn_load_group(x + r.offset, dn_rows_vec4(x, ld), c, raw);
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = r.valid && c[e].valid ? dn_bn_relu(c[e], raw[e]) : 0.0f;
    }
};

// The transition's pooled input: row r is output pixel (n, oy, ox) of AvgPool2d(2) over an
// images × h × w input, element c the mean of relu(a·x + b) over input pixels (2oy + i, 2ox + j),
// added in the host's order (pool_rows in src/backend/transition/cpu.rs), so it is bit-identical to the host's.
template <typename T, class Bn>
struct PoolBnReluSource {
    using Col = BnCol;
    const T* x;
    unsigned int ld, h, w, out_h, out_w, rows, cols;
    Bn bn;

    __device__ SrcRow row(unsigned int r) const {
        if (r >= rows) return {0, false};
        const unsigned int image = out_h * out_w;
        const unsigned int n = r / image, oy = (r - n * image) / out_w;
        const unsigned int ox = r - n * image - oy * out_w;
        return {dn_at((n * h + 2 * oy) * w + 2 * ox, 0, ld), true};
    }
    __device__ Col col(unsigned int c) const { return dn_bn_col(bn, c, cols); }
    __device__ float load(SrcRow r, Col c) const {
        if (!(r.valid && c.valid)) return 0.0f;
        const T* q = x + r.offset + c.c;
        const size_t below = static_cast<size_t>(w) * ld;
        float s = dn_bn_relu(c, static_cast<float>(q[0]));
        s += dn_bn_relu(c, static_cast<float>(q[ld]));
        s += dn_bn_relu(c, static_cast<float>(q[below]));
        s += dn_bn_relu(c, static_cast<float>(q[below + ld]));
        return s * 0.25f;
    }
    // The same sums for four channels, each of the window's pixels read as one group.
    __device__ void load_group(SrcRow r, const Col (&c)[4], float v[4]) const {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = 0.0f;
        if (!r.valid) return;
        const T* q = x + r.offset;
        const size_t below = static_cast<size_t>(w) * ld;
        const bool vec = dn_rows_vec4(x, ld);
        const size_t taps[4] = {0, ld, below, below + ld};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            float raw[4];
            dn_load_group(q + taps[i], vec, c, raw);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float a = dn_bn_relu(c[e], raw[e]);
                v[e] = i == 0 ? a : v[e] + a;
            }
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) v[e] = c[e].valid ? v[e] * 0.25f : 0.0f;
    }
};

// ---- Loaders: global → registers → shared, one reduction step at a time ------------------------

// A tile whose source rows run along the reduction: tile element (k, i) = src(i0 + i, k0 + k).
// Thread t reads the group of four indices k0 + 4·(t mod 4) .. + 3 of row i0 + t/4 — one
// 128-bit load (64-bit for bf16) where the source's alignment and pitch allow, element loads
// otherwise (Src::load_group) — and transposes it into shared memory. The row is resolved
// once, the four columns (BN affines: BnTable) once per step.
template <class Src>
struct TransposingLoader {
    static_assert(kLoads == 4 && kGroupsPerRow * kTileM == kGemmThreads, "one group of four a thread");
    Src src;
    SrcRow row;
    float v[kLoads];

    __device__ TransposingLoader(const Src& s, unsigned int i0)
        : src(s), row(s.row(i0 + threadIdx.x / kGroupsPerRow)) {}
    __device__ void fetch(unsigned int k0) {
        const unsigned int k = k0 + kLoads * (threadIdx.x % kGroupsPerRow);
        const typename Src::Col c[kLoads] = {src.col(k), src.col(k + 1), src.col(k + 2), src.col(k + 3)};
        src.load_group(row, c, v);
    }
    // Row pitch 68: a warp's 32 stores (8 rows × 4 groups) hit each bank at most twice.
    __device__ void store(float (*s)[kSmemPitch]) const {
#pragma unroll
        for (int e = 0; e < kLoads; ++e)
            s[kLoads * (threadIdx.x % kGroupsPerRow) + e][threadIdx.x / kGroupsPerRow] = v[e];
    }
};

// A tile whose source rows run along the output index: tile element (k, i) = src(k0 + k, i0 + i).
// Thread t reads column i0 + t mod 64 of rows k0 + t/64 + 4e, stored as they are. The column (a
// BN affine) is resolved once, the rows once per step.
template <class Src>
struct DirectLoader {
    Src src;
    typename Src::Col col;
    float v[kLoads];

    __device__ DirectLoader(const Src& s, unsigned int i0)
        : src(s), col(s.col(i0 + threadIdx.x % kTileM)) {}
    __device__ void fetch(unsigned int k0) {
#pragma unroll
        for (int e = 0; e < kLoads; ++e)
            v[e] = src.load(src.row(k0 + threadIdx.x / kTileM + e * (kGemmThreads / kTileM)), col);
    }
    __device__ void store(float (*s)[kSmemPitch]) const {
#pragma unroll
        for (int e = 0; e < kLoads; ++e)
            s[threadIdx.x / kTileM + e * (kGemmThreads / kTileM)][threadIdx.x % kTileM] = v[e];
    }
};

// ---- Main loop and accumulator staging ---------------------------------------------------------

// First tile row and column of this thread's micro-tile.
__device__ __forceinline__ int dn_micro_row() { return threadIdx.x / (kTileN / kMicro) * kMicro; }
__device__ __forceinline__ int dn_micro_col() { return threadIdx.x % (kTileN / kMicro) * kMicro; }

// Exact f32: each thread's kMicro × kMicro register tile, 16 FFMA per reduction index.
struct SimtF32 {
    // Stages its operands through registers (dn_gemm_mainloop) everywhere.
    static constexpr bool kPipelined = false;
    // The launch bounds' minimum of resident blocks: 0 leaves the register budget to ptxas,
    // which keeps these kernels at ≤ 65 registers without spilling.
    static constexpr int kMinBlocks = 0;

    struct Acc {
        float v[kMicro][kMicro];
    };

    __device__ static void multiply(const float (*a)[kSmemPitch], const float (*b)[kSmemPitch],
                                    Acc& acc) {
        const int m = dn_micro_row(), n = dn_micro_col();
#pragma unroll
        for (int k = 0; k < kTileK; ++k) {
            const float4 av = *reinterpret_cast<const float4*>(&a[k][m]);
            const float4 bv = *reinterpret_cast<const float4*>(&b[k][n]);
            const float ar[kMicro] = {av.x, av.y, av.z, av.w};
            const float br[kMicro] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) acc.v[i][j] += ar[i] * br[j];
        }
    }

    // Writes the micro-tile into c (the tile's row-major accumulators).
    __device__ static void stage(float (*c)[kSmemPitch], const Acc& acc) {
        const int m = dn_micro_row(), n = dn_micro_col();
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
            *reinterpret_cast<float4*>(&c[m + i][n]) =
                make_float4(acc.v[i][0], acc.v[i][1], acc.v[i][2], acc.v[i][3]);
    }
};

// Tensor cores, f32 accumulation, operands of `Operands` (mma_tile.cuh: Tf32Operands,
// Bf16Operands): each warp multiplies its 32 × 16 warp tile with Operands::tile, whose
// accumulator grid is staged into s.c by the tile row and column of each element. `MinBlocks`
// is the launch bounds' minimum of resident blocks.
template <class Operands, int MinBlocks>
struct MmaGemm {
    static constexpr int kWarpM = 32, kWarpN = 16;
    static constexpr int kWarpsN = kTileN / kWarpN;
    static constexpr int kFragsM = kWarpM / 16, kFragsN = kWarpN / 8;
    static_assert((kTileM / kWarpM) * kWarpsN * 32 == kGemmThreads, "one warp tile per warp");
    static constexpr int kMinBlocks = MinBlocks;
    // The forward and data gradient run the cp.async pipelines where alignment allows.
    static constexpr bool kPipelined = true;
    using Ops = Operands;

    struct Acc {
        float v[2 * kFragsM][2 * kFragsN];
    };

    // The first tile row and column of this warp's tile.
    __device__ static int warp_row() { return threadIdx.x / 32 / kWarpsN * kWarpM; }
    __device__ static int warp_col() { return threadIdx.x / 32 % kWarpsN * kWarpN; }

    __device__ static void multiply(const float (*a)[kSmemPitch], const float (*b)[kSmemPitch],
                                    Acc& acc) {
        Operands::template tile<kFragsM, kFragsN, kTileK>(a, b, warp_row(), warp_col(), acc.v);
    }

    // acc += pro(X)·B over a stage of the cp.async pipelines (X, W as staged; B = Wᵀ when
    // kBRowsN).
    template <bool kBRowsN, typename T, class Pro, int LDX, int LDW>
    __device__ static void multiply_rows(const T (*x)[LDX], const Pro& pro, const float (*w)[LDW],
                                         Acc& acc) {
        Operands::template rows_tile<kFragsM, kFragsN, kTileK, kBRowsN>(x, pro, w, warp_row(),
                                                                        warp_col(), acc.v);
    }

    __device__ static void stage(float (*c)[kSmemPitch], const Acc& acc) {
#pragma unroll
        for (int i = 0; i < 2 * kFragsM; ++i)
#pragma unroll
            for (int j = 0; j < 2 * kFragsN; ++j)
                c[dn_mma_tile_row(warp_row(), i)][dn_mma_tile_col(warp_col(), j)] = acc.v[i][j];
    }
};

// TF32: left to itself ptxas gives these kernels 64 registers and spills in the pooled ones;
// three resident blocks (≤ 85 registers) schedule every one without a spill (78–80).
using MmaTf32 = MmaGemm<Tf32Operands, 3>;
// BF16 (k16 slices: one per step of kTileK = 16): the same bound, for the same reason.
using MmaBf16 = MmaGemm<Bf16Operands, 3>;

// acc += A·B over the reduction steps [first, first + steps). Ends with a barrier (when there is
// any step), after which the operand buffers are free.
template <class Math, class LoadA, class LoadB>
__device__ void dn_gemm_mainloop(GemmSmem& s, LoadA& la, LoadB& lb, unsigned int first,
                                 unsigned int steps, typename Math::Acc& acc) {
    if (steps == 0) return;
    la.fetch(first * kTileK);
    lb.fetch(first * kTileK);
    la.store(s.op.a[0]);
    lb.store(s.op.b[0]);
    __syncthreads();
    for (unsigned int i = 0; i < steps; ++i) {
        const int cur = i & 1;
        const bool more = i + 1 < steps;
        if (more) {
            la.fetch((first + i + 1) * kTileK);
            lb.fetch((first + i + 1) * kTileK);
        }
        Math::multiply(s.op.a[cur], s.op.b[cur], acc);
        // The other buffer was last read in step i − 1, which every thread finished before the
        // barrier that ended it.
        if (more) {
            la.store(s.op.a[cur ^ 1]);
            lb.store(s.op.b[cur ^ 1]);
        }
        __syncthreads();
    }
}

// Writes the accumulators into s.c and waits for the whole tile. The caller has passed a
// barrier since the operand buffers were last read (the main loop ends with one).
template <class Math>
__device__ __forceinline__ void dn_stage_accumulators(GemmSmem& s, const typename Math::Acc& acc) {
    Math::stage(s.c, acc);
    __syncthreads();
}

// The epilogue's channel column of this thread, and its q-th tile row.
__device__ __forceinline__ int dn_epi_col() { return threadIdx.x % kTileN; }
__device__ __forceinline__ int dn_epi_row(int q) {
    return threadIdx.x / kTileN + q * kEpiRowThreads;
}

// ---- The three GEMMs ----------------------------------------------------------------------------

// Stores the staged forward tile s.c (rows m0.., channels n0..) into out (pitch ld_out): a warp
// writes 32 consecutive channels of one pixel.
template <typename T>
__device__ __forceinline__ void dn_store_fwd_tile(const GemmSmem& s, unsigned int m0, unsigned int n0,
                                                  unsigned int rows, unsigned int cout,
                                                  T* __restrict__ out, unsigned int ld_out) {
    const unsigned int c = n0 + dn_epi_col();
    if (c >= cout) return;
#pragma unroll 4
    for (int q = 0; q < kEpiRows; ++q) {
        const unsigned int r = m0 + dn_epi_row(q);
        if (r < rows) out[dn_at(r, c, ld_out)] = static_cast<T>(s.c[dn_epi_row(q)][dn_epi_col()]);
    }
}

// Forward: out[r][n] = Σ_k src(r, k)·W[n][k] (W is cout × cin), overwriting out (pitch ld_out).
// blockIdx.x: tile of rows, blockIdx.y: tile of output channels.
template <class Math, typename T, class Src>
__device__ void dn_fused_gemm_fwd(GemmSmem& s, const Src& src, unsigned int rows, unsigned int cin,
                                  const float* __restrict__ w, unsigned int cout,
                                  T* __restrict__ out, unsigned int ld_out) {
    const unsigned int m0 = blockIdx.x * kTileM, n0 = blockIdx.y * kTileN;
    TransposingLoader<Src> la(src, m0);
    TransposingLoader<PlainSource<float>> lb(PlainSource<float>{w, cout, cin, cin}, n0);
    typename Math::Acc acc = {};
    dn_gemm_mainloop<Math>(s, la, lb, 0, dn_ceil_div(cin, kTileK), acc);
    dn_stage_accumulators<Math>(s, acc);
    dn_store_fwd_tile(s, m0, n0, rows, cout, out, ld_out);
}

// ---- cp.async pipelines (tensor cores): the forward and the data gradient ---------------------
// The register-staged main loop above has one step in flight, and its transposing loads tie up
// registers. The tensor-core forward and data gradient instead copy the raw rows of their
// operands (and the forward's per-step (a, b)) global → shared with cp.async, kStages − 1 steps
// ahead, in the rows' own layout — x or dOut as [m][k], W as [n][k] (forward) or [k][n] (data
// gradient) — which the mma fragments read directly; the forward's BN-ReLU is applied between
// shared memory and the fragments (mma_tile.cuh, dn_mma_rows_<type>). They need the rows to
// start on 4-element boundaries and the forward's (a, b) on 16 bytes (uniform per launch), and
// fall back to the register-staged loop otherwise. Same tiles, warp tiles and staged epilogues,
// so their outputs are bit for bit the fallback's.

constexpr int kStages = 3;

// Padding of a staged [m][k] activation row of T: 20 floats (80 B) or 24 bf16 (48 B) keep rows
// 16-byte aligned (cp.async, ldmatrix) and make a warp's fragment reads — 8 rows × 4
// consecutive words, or ldmatrix's 8 rows of 16 B — hit distinct banks.
template <typename T>
constexpr int kRowPad = sizeof(T) == 4 ? 4 : 8;

// A forward step: 64 rows × 16 channels of x and of W, and the channels' (a, b).
template <typename T, class Operands>
struct __align__(16) FwdStage {
    T x[kTileM][kTileK + kRowPad<T>];
    float w[kTileN][kTileK + Operands::kRowsPadW];
    float2 ab[kTileK];
};

// A data-gradient step: 64 rows × 16 output channels of dOut, 16 rows × 64 channels of W.
template <typename T, class Operands>
struct __align__(16) DgradStage {
    T x[kTileM][kTileK + kRowPad<T>];
    float w[kTileK][kTileN + Operands::kColsPadW];
};

// The stages, the accumulator tile the epilogue stages once they are free, and the fallback's
// buffers, all in one place.
template <class Stage>
union __align__(16) PipelinedSmem {
    Stage st[kStages];
    GemmSmem plain;
};

// Runs `steps` reduction steps through the stages: issue(stage, step) starts one step's copies,
// multiply(stage) consumes one; step i + kStages − 1 is issued while step i is multiplied, one
// barrier a step. Ends with a barrier after which the stages are free.
template <class Stage, class Issue, class Multiply>
__device__ __forceinline__ void dn_cp_async_pipeline(Stage (&st)[kStages], unsigned int steps,
                                                     Issue issue, Multiply multiply) {
    // Every call commits a group, empty past the last step, so that the wait counts steps.
    auto next = [&](unsigned int step) {
        if (step < steps) issue(st[step % kStages], step);
        dn_cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i) next(i);
    for (unsigned int i = 0; i < steps; ++i) {
        // This thread's copies of step i have landed (at most the kStages − 2 newer groups are
        // pending); the barrier makes every thread's visible, and ends the reads of step i − 1,
        // whose stage the next issue refills.
        dn_cp_async_wait<kStages - 2>();
        __syncthreads();
        next(i + kStages - 1);
        multiply(st[i % kStages]);
    }
    // Only empty groups can still be pending.
    dn_cp_async_wait<0>();
    __syncthreads();
}

// Four consecutive elements, global → shared, as one cp.async: 16 bytes for f32, 8 for bf16.
__device__ __forceinline__ void dn_cp_async_vec4(float* s, const float* g) { dn_cp_async_16(s, g); }
__device__ __forceinline__ void dn_cp_async_vec4(dn_bf16* s, const dn_bf16* g) { dn_cp_async_8(s, g); }

// Elements c .. c + 3 of row r of a matrix at p (pitch ld; valid: the row exists) into s: one
// cp.async when they all lie inside the row's `cols`, else plain stores, 0 outside; every
// staged element is defined.
template <typename T>
__device__ __forceinline__ void dn_stage_group(T* s, const T* p, unsigned int ld, unsigned int r,
                                               bool valid, unsigned int c, unsigned int cols) {
    if (valid && c + 4 <= cols) {
        dn_cp_async_vec4(s, p + dn_at(r, c, ld));
        return;
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
        s[e] = static_cast<T>(valid && c + e < cols ? static_cast<float>(p[dn_at(r, c + e, ld)]) : 0.0f);
}

// Rows m0.. of a rows × cols matrix at p (pitch ld), columns k0 .. k0 + 15, into x[64][·]:
// thread t stages group t mod 4 of row t / 4. Rows past `rows` are staged as 0; their outputs
// are never stored.
template <typename T, int LD>
__device__ __forceinline__ void dn_stage_rows(T (*x)[LD], const T* p, unsigned int ld,
                                             unsigned int rows, unsigned int cols, unsigned int m0,
                                             unsigned int k0) {
    const unsigned int r = threadIdx.x / kGroupsPerRow, g = kLoads * (threadIdx.x % kGroupsPerRow);
    dn_stage_group(x[r] + g, p, ld, m0 + r, m0 + r < rows, k0 + g, cols);
}

// out = relu(a⊙x + b)·Wᵀ as dn_fused_gemm_fwd computes it over BnReluSource (x rows × cin,
// pitch ld_x; W cout × cin; ab the BN table, 16-byte aligned).
template <class Math, typename T>
__device__ void dn_pipelined_fwd(PipelinedSmem<FwdStage<T, typename Math::Ops>>& s,
                                 const T* __restrict__ x, unsigned int ld_x, unsigned int rows,
                                 unsigned int cin, const float2* __restrict__ ab,
                                 const float* __restrict__ w, unsigned int cout,
                                 T* __restrict__ out, unsigned int ld_out) {
    using Stage = FwdStage<T, typename Math::Ops>;
    const unsigned int m0 = blockIdx.x * kTileM, n0 = blockIdx.y * kTileN;
    typename Math::Acc acc = {};
    // Threads 0–7 stage a pair of (a, b) each, (0, 0) past cin, so that a missing channel is
    // relu(0·0 + 0) = 0.
    auto issue = [&](Stage& st, unsigned int step) {
        const unsigned int k0 = step * kTileK;
        dn_stage_rows(st.x, x, ld_x, rows, cin, m0, k0);
        dn_stage_rows(st.w, w, cin, cout, cin, n0, k0);
        if (threadIdx.x < kTileK / 2) {
            const unsigned int j = 2 * threadIdx.x, c = k0 + j;
            if (c + 2 <= cin) {
                dn_cp_async_16(&st.ab[j], ab + c);
            } else {
                st.ab[j] = c < cin ? ab[c] : make_float2(0.0f, 0.0f);
                st.ab[j + 1] = make_float2(0.0f, 0.0f);
            }
        }
    };
    auto multiply = [&](const Stage& st) {
        Math::template multiply_rows<true>(st.x, BnReluA{st.ab}, st.w, acc);
    };
    dn_cp_async_pipeline(s.st, dn_ceil_div(cin, kTileK), issue, multiply);
    dn_stage_accumulators<Math>(s.plain, acc);
    dn_store_fwd_tile(s.plain, m0, n0, rows, cout, out, ld_out);
}

// acc = dOut[m0.., ·] · W[·, n0..] for one data-gradient tile, as dn_fused_gemm_dgrad's
// register-staged loop computes it (dOut rows × cout, pitch ld_dout; W cout × cin). Thread t
// stages dOut's group t mod 4 of row t / 4 and W's group t mod 16 of row t / 16. Ends with a
// barrier after which s.plain is free.
template <class Math, typename T>
__device__ void dn_pipelined_dgrad_tile(PipelinedSmem<DgradStage<T, typename Math::Ops>>& s,
                                        const T* __restrict__ dout, unsigned int rows,
                                        unsigned int ld_dout, const float* __restrict__ w,
                                        unsigned int cout, unsigned int cin, unsigned int m0,
                                        unsigned int n0, typename Math::Acc& acc) {
    using Stage = DgradStage<T, typename Math::Ops>;
    constexpr unsigned int kGroupsW = kTileN / kLoads;
    static_assert(kTileK * kGroupsW == kGemmThreads, "one group of W a thread");
    auto issue = [&](Stage& st, unsigned int step) {
        const unsigned int k0 = step * kTileK;
        dn_stage_rows(st.x, dout, ld_dout, rows, cout, m0, k0);
        const unsigned int r = threadIdx.x / kGroupsW, g = kLoads * (threadIdx.x % kGroupsW);
        dn_stage_group(st.w[r] + g, w, cin, k0 + r, k0 + r < cout, n0 + g, cin);
    };
    auto multiply = [&](const Stage& st) {
        Math::template multiply_rows<false>(st.x, RawA{}, st.w, acc);
    };
    dn_cp_async_pipeline(s.st, dn_ceil_div(cout, kTileK), issue, multiply);
}

// Weight gradient: dw[n][c] += Σ_r dout[r][n]·src(r, c) over the rows, dw dense cout × cin.
// blockIdx.x: tile of output channels n, blockIdx.y: tile of input channels c, blockIdx.z: the
// split, reduction steps [z·run, (z + 1)·run). With one split the block adds into dw, otherwise it
// stores its tile into partials[z][n][c] for split_sum_f32 (reduce.cu).
template <class Math, typename T, class Src>
__device__ void dn_fused_gemm_wgrad(const Src& src, const T* __restrict__ dout, unsigned int rows,
                                    unsigned int ld_dout, unsigned int cout, unsigned int cin,
                                    unsigned int splits, unsigned int run, float* __restrict__ dw,
                                    float* __restrict__ partials) {
    __shared__ GemmSmem s;
    const unsigned int m0 = blockIdx.x * kTileM, n0 = blockIdx.y * kTileN;
    DirectLoader<PlainSource<T>> la(PlainSource<T>{dout, rows, cout, ld_dout}, m0);
    DirectLoader<Src> lb(src, n0);
    const unsigned int first = blockIdx.z * run;
    const unsigned int steps = min(run, dn_ceil_div(rows, kTileK) - first);
    typename Math::Acc acc = {};
    dn_gemm_mainloop<Math>(s, la, lb, first, steps, acc);
    dn_stage_accumulators<Math>(s, acc);
    const unsigned int c = n0 + dn_epi_col();
    if (c >= cin) return;
    float* target = splits == 1 ? dw : partials + static_cast<size_t>(blockIdx.z) * cout * cin;
#pragma unroll 4
    for (int q = 0; q < kEpiRows; ++q) {
        const unsigned int n = m0 + dn_epi_row(q);
        if (n >= cout) continue;
        const float v = s.c[dn_epi_row(q)][dn_epi_col()];
        float& t = target[static_cast<size_t>(n) * cin + c];
        t = splits == 1 ? t + v : v;
    }
}

// The per-channel constants of a BN backward epilogue: affine a, b and x̂ = (x − mean)·invstd.
struct BnChannel {
    float a, b, mean, invstd;
};

__device__ __forceinline__ BnChannel dn_bn_channel(const BnParams& bn, unsigned int c,
                                                   unsigned int cols) {
    BnChannel k{0.0f, 0.0f, 0.0f, 0.0f};
    if (c < cols) {
        dn_bn_affine(bn.gamma[c], bn.beta[c], bn.mean[c], bn.var[c], k.a, k.b);
        k.mean = bn.mean[c];
        k.invstd = dn_invstd(bn.var[c]);
    }
    return k;
}

// g = gpre ⊙ [a·x + b > 0] (the forward's ReLU decision, bit for bit), added to the thread's
// Σg (s1) and Σg·x̂ (s2).
__device__ __forceinline__ float dn_masked_grad(const BnChannel& k, float x, float gpre, float& s1,
                                                float& s2) {
    const float g = dn_affine(k.a, x, k.b) > 0.0f ? gpre : 0.0f;
    s1 += g;
    s2 += g * ((x - k.mean) * k.invstd);
    return g;
}

// Data gradient with a BN-ReLU backward epilogue: gpre = dout · W (W cout × cin, dense) for the
// block's run of row tiles (blockIdx.y: tiles [y·run, (y + 1)·run)) and 64 channels (blockIdx.x);
// each element goes to epi.apply(k, r, c, gpre, s1, s2), which stores the input gradient of row
// r, channel c and adds to the thread's sums. The block's [Σg | Σg·x̂] go to `sums` (one run)
// or, as doubles, to partials[y·2·cin + c] and [y·2·cin + cin + c] for dn_tile_sums_finish.
// mainloop(m0, n0, acc) computes a tile's gpre into acc and ends with a barrier.
template <class Math, class Epi, class Mainloop>
__device__ void dn_dgrad_tiles(GemmSmem& s, const Epi& epi, unsigned int rows, unsigned int cin,
                               unsigned int splits, unsigned int run, float* __restrict__ sums,
                               double* __restrict__ partials, Mainloop mainloop) {
    const unsigned int n0 = blockIdx.x * kTileN;
    const unsigned int c = n0 + dn_epi_col();
    const BnChannel k = epi.channel(c);
    const unsigned int first = blockIdx.y * run;
    const unsigned int last = min(first + run, dn_ceil_div(rows, kTileM));
    double s1 = 0.0, s2 = 0.0;
    for (unsigned int tile = first; tile < last; ++tile) {
        const unsigned int m0 = tile * kTileM;
        typename Math::Acc acc = {};
        mainloop(m0, n0, acc);
        dn_stage_accumulators<Math>(s, acc);
        // f32 over one tile's rows (at most 16 pixels, 144 for the transition), double beyond.
        float t1 = 0.0f, t2 = 0.0f;
        if (c < cin) {
#pragma unroll 4
            for (int q = 0; q < kEpiRows; ++q) {
                const unsigned int r = m0 + dn_epi_row(q);
                if (r < rows) epi.apply(k, r, c, s.c[dn_epi_row(q)][dn_epi_col()], t1, t2);
            }
        }
        s1 += t1;
        s2 += t2;
        // s.c is read before the next tile's operands overwrite it.
        __syncthreads();
    }
    // The last tile ended with a barrier (and without tiles nothing touched s).
    s.totals[0][threadIdx.x / kTileN][dn_epi_col()] = s1;
    s.totals[1][threadIdx.x / kTileN][dn_epi_col()] = s2;
    __syncthreads();
    // Threads 0–63 total Σg, threads 64–127 Σg·x̂, of channel n0 + t mod 64.
    const unsigned int which = threadIdx.x / kTileN;
    if (which < 2 && c < cin) {
        double total = 0.0;
        for (int i = 0; i < kEpiRowThreads; ++i) total += s.totals[which][i][dn_epi_col()];
        if (splits == 1)
            sums[which * cin + c] = static_cast<float>(total);
        else
            partials[static_cast<size_t>(blockIdx.y) * 2 * cin + which * cin + c] = total;
    }
}

// The tile loop with the register-staged main loop.
template <class Math, typename T, class Epi>
__device__ void dn_dgrad_tiles_staged(GemmSmem& s, const Epi& epi, const T* __restrict__ dout,
                                      unsigned int rows, unsigned int ld_dout,
                                      const float* __restrict__ w, unsigned int cout,
                                      unsigned int cin, unsigned int splits, unsigned int run,
                                      float* __restrict__ sums, double* __restrict__ partials) {
    dn_dgrad_tiles<Math>(s, epi, rows, cin, splits, run, sums, partials,
                         [&](unsigned int m0, unsigned int n0, typename Math::Acc& acc) {
                             TransposingLoader<PlainSource<T>> la(PlainSource<T>{dout, rows, cout, ld_dout}, m0);
                             DirectLoader<PlainSource<float>> lb(PlainSource<float>{w, cout, cin, cin}, n0);
                             dn_gemm_mainloop<Math>(s, la, lb, 0, dn_ceil_div(cout, kTileK), acc);
                         });
}

// The data gradient above: tensor cores through the cp.async pipeline where dOut's and W's rows
// allow it, the register-staged main loop otherwise.
template <class Math, typename T, class Epi>
__device__ void dn_fused_gemm_dgrad(const Epi& epi, const T* __restrict__ dout, unsigned int rows,
                                    unsigned int ld_dout, const float* __restrict__ w,
                                    unsigned int cout, unsigned int cin, unsigned int splits,
                                    unsigned int run, float* __restrict__ sums,
                                    double* __restrict__ partials) {
    if constexpr (Math::kPipelined) {
        __shared__ PipelinedSmem<DgradStage<T, typename Math::Ops>> s;
        if (dn_rows_vec4(dout, ld_dout) && dn_rows_vec4(w, cin))
            dn_dgrad_tiles<Math>(s.plain, epi, rows, cin, splits, run, sums, partials,
                                 [&](unsigned int m0, unsigned int n0, typename Math::Acc& acc) {
                                     dn_pipelined_dgrad_tile<Math>(s, dout, rows, ld_dout, w, cout,
                                                                   cin, m0, n0, acc);
                                 });
        else
            dn_dgrad_tiles_staged<Math>(s.plain, epi, dout, rows, ld_dout, w, cout, cin, splits,
                                        run, sums, partials);
    } else {
        __shared__ GemmSmem s;
        dn_dgrad_tiles_staged<Math>(s, epi, dout, rows, ld_dout, w, cout, cin, splits, run, sums,
                                    partials);
    }
}
