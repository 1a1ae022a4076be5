// mma_tile.cuh — one warp's tensor-core (TF32 or BF16) multiply of a GEMM step staged in shared
// memory k-major (a[k][m], b[k][n]), the layout every GEMM family (fused_gemm.cuh, conv3x3.cu,
// conv.cu) stages its operands in for its exact f32 register tiles, so that their tf32 and bf16
// kernels keep those loaders, masks and epilogues and change only the multiply; and the same
// multiply on operands staged row-major along the reduction with a BN-ReLU applied to A as its
// fragments are read (dn_mma_rows_<type>), for the cp.async pipelines of fused_gemm.cuh.
//
// The warp's tile is 16·FM rows × 8·FN columns of mma tiles (m16n8k8 tf32, m16n8k16 bf16, whose
// C fragments are laid out alike). A lane's accumulators are
// the 2·FM × 2·FN grid acc[i][j] = C(dn_mma_tile_row(m0, i), dn_mma_tile_col(n0, j)): the C
// fragment (c0, c1 at row g, columns 2t, 2t + 1; c2, c3 eight rows below; g = lane / 4,
// t = lane % 4, PTX ISA) of mma tile (i / 2, j / 2). Rows and columns of the grid are
// independent and increase with i and j, so an epilogue written for a register tile of
// per-thread rows × columns works unchanged on it.
#pragma once
#include "common.cuh"
#include "mma.cuh"

// Tile row of acc[i][·] in the warp tile starting at row m0: 16·(i / 2) + 8·(i % 2) + g.
__device__ __forceinline__ int dn_mma_tile_row(int m0, int i) {
    return m0 + 8 * i + static_cast<int>(threadIdx.x % 32 / 4);
}

// Tile column of acc[·][j] in the warp tile starting at column n0: 8·(j / 2) + 2t + j % 2.
__device__ __forceinline__ int dn_mma_tile_col(int n0, int j) {
    return n0 + 8 * (j / 2) + 2 * static_cast<int>(threadIdx.x % 4) + j % 2;
}

// Accumulator grid cells (2i .. 2i + 1, 2j .. 2j + 1) += the mma of A fragment af (mma row i)
// and B fragment bf (mma column j): m16n8k16 on bf16 pairs (kBf16) or m16n8k8 on tf32.
template <bool kBf16, int M, int N>
__device__ __forceinline__ void dn_mma_acc(float (&acc)[M][N], int i, int j, const unsigned (&af)[4],
                                           const unsigned (&bf)[2]) {
    float c[4] = {acc[2 * i][2 * j], acc[2 * i][2 * j + 1], acc[2 * i + 1][2 * j],
                  acc[2 * i + 1][2 * j + 1]};
    if constexpr (kBf16)
        dn_mma_m16n8k16_bf16(c, af, bf, c);
    else
        dn_mma_m16n8k8_tf32(c, af, bf, c);
    acc[2 * i][2 * j] = c[0];
    acc[2 * i][2 * j + 1] = c[1];
    acc[2 * i + 1][2 * j] = c[2];
    acc[2 * i + 1][2 * j + 1] = c[3];
}

// As dn_mma_tile_tf32 (below), with mma.m16n8k16 on BF16 operands: each fragment register packs two
// staged f32 values with cvt.rn.bf16x2.f32 (round to nearest even, as Precision::Bf16 rounds
// the cpu backend's operands), so an mma multiplies exactly the bf16-rounded staged values.
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), lower
// index in the low half: A's registers hold (row g; columns 2t, 2t + 1), (row g + 8; the same),
// (row g; 2t + 8, 2t + 9), (row g + 8; 2t + 8, 2t + 9); B's hold (rows 2t, 2t + 1; column g) and
// (rows 2t + 8, 2t + 9; column g); C as for tf32.
template <int FM, int FN, int K, int LDA, int LDB>
__device__ __forceinline__ void dn_mma_tile_bf16(const float (*a)[LDA], const float (*b)[LDB], int m0,
                                                 int n0, float (&acc)[2 * FM][2 * FN]) {
    static_assert(K % 16 == 0, "a stage is whole k16 slices");
    const int g = static_cast<int>(threadIdx.x % 32 / 4), t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
    for (int k = 0; k < K; k += 16) {
        const int k0 = k + 2 * t;
        unsigned bf[FN][2];
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int n = n0 + 8 * j + g;
            bf[j][0] = dn_pack_bf16x2(b[k0][n], b[k0 + 1][n]);
            bf[j][1] = dn_pack_bf16x2(b[k0 + 8][n], b[k0 + 9][n]);
        }
#pragma unroll
        for (int i = 0; i < FM; ++i) {
            const int m = m0 + 16 * i + g;
            const unsigned af[4] = {dn_pack_bf16x2(a[k0][m], a[k0 + 1][m]),
                                    dn_pack_bf16x2(a[k0][m + 8], a[k0 + 1][m + 8]),
                                    dn_pack_bf16x2(a[k0 + 8][m], a[k0 + 9][m]),
                                    dn_pack_bf16x2(a[k0 + 8][m + 8], a[k0 + 9][m + 8])};
#pragma unroll
            for (int j = 0; j < FN; ++j) dn_mma_acc<true>(acc, i, j, af, bf[j]);
        }
    }
}

// ---- Operands staged along the reduction (the cp.async pipelines' layout) --------------------
// The layout a cp.async pipeline stages: global rows as they are. A is x[m][k] (pixel m,
// reduction index k), B either w[n][k] (kBRowsN: W's cout × cin rows, the forward) or w[k][n]
// (W's rows along the outputs, the data gradient). The A prologue (RawA, BnReluA) is applied in
// registers, between shared memory and the fragments, rounded as everywhere else, so the
// fragments are bit for bit those dn_mma_tile_<type> reads from a k-major tile of the same
// values. Every lane of the warp must call them.

__device__ __forceinline__ float dn_bn_relu_ab(float2 ab, float x) {
    return dn_relu(dn_affine(ab.x, x, ab.y));
}

// A as staged.
struct RawA {
    static constexpr bool kRaw = true;
    struct Channel {};
    __device__ Channel channel(int) const { return {}; }
    __device__ static float apply(Channel, float v) { return v; }
};

// A through its channel's BN-ReLU; ab holds the stage's (a, b), one per reduction index.
struct BnReluA {
    static constexpr bool kRaw = false;
    using Channel = float2;
    const float2* ab;
    __device__ Channel channel(int k) const { return ab[k]; }
    __device__ static float apply(Channel c, float v) { return dn_bn_relu_ab(c, v); }
};

// Element B(k, n) of a staged W, and A(m, k) of a staged x: stored along the reduction
// (w[n][k], x[m][k]) or k-major (w[k][n], x[k][m]).
template <bool kBRowsN, int LDW>
__device__ __forceinline__ float dn_staged_b(const float (*w)[LDW], int k, int n) {
    return kBRowsN ? w[n][k] : w[k][n];
}
template <bool kARowsM, int LDX>
__device__ __forceinline__ float dn_staged_a(const float (*x)[LDX], int m, int k) {
    return kARowsM ? x[m][k] : x[k][m];
}

// TF32 (m16n8k8): lane (g, t) reads A(m, k + t) and A(m, k + t + 4) for its A registers (rows
// m = g, g + 8 of each mma tile) and B(k + t, n), B(k + t + 4, n), two A channels a slice: B's
// fragments for the slice, then A's one mma row at a time, so 4 + 2·FN operand registers are
// live instead of 4·FM + 2·FN. A is x[m][k] unless kARowsM is false (x[k][m]).
template <int FM, int FN, int K, bool kBRowsN, class Pro, int LDX, int LDW, bool kARowsM = true>
__device__ __forceinline__ void dn_mma_rows_tf32(const float (*x)[LDX], const Pro& pro,
                                                 const float (*w)[LDW], int m0, int n0,
                                                 float (&acc)[2 * FM][2 * FN]) {
    static_assert(K % 8 == 0, "a stage is whole k8 slices");
    const int g = static_cast<int>(threadIdx.x % 32 / 4), t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
    for (int k = 0; k < K; k += 8) {
        const int k1 = k + t, k2 = k + t + 4;
        const typename Pro::Channel c1 = pro.channel(k1), c2 = pro.channel(k2);
        unsigned bf[FN][2];
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int n = n0 + 8 * j + g;
            bf[j][0] = dn_cvt_tf32(dn_staged_b<kBRowsN>(w, k1, n));
            bf[j][1] = dn_cvt_tf32(dn_staged_b<kBRowsN>(w, k2, n));
        }
#pragma unroll
        for (int i = 0; i < FM; ++i) {
            const int m = m0 + 16 * i + g;
            const unsigned af[4] = {dn_cvt_tf32(Pro::apply(c1, dn_staged_a<kARowsM>(x, m, k1))),
                                    dn_cvt_tf32(Pro::apply(c1, dn_staged_a<kARowsM>(x, m + 8, k1))),
                                    dn_cvt_tf32(Pro::apply(c2, dn_staged_a<kARowsM>(x, m, k2))),
                                    dn_cvt_tf32(Pro::apply(c2, dn_staged_a<kARowsM>(x, m + 8, k2)))};
#pragma unroll
            for (int j = 0; j < FN; ++j) dn_mma_acc<false>(acc, i, j, af, bf[j]);
        }
    }
}

// acc += A·B over the stage's first K reduction indices, A(m, k) = a[k][m], B(k, n) = b[k][n],
// for the warp tile at (m0, n0). Every lane of the warp must call it (mma.sync is a warp
// instruction). The operands are rounded with cvt.rna.tf32.f32 as the fragments are read, so
// an mma multiplies exactly Precision::round_operand of the staged values: dn_mma_rows_tf32
// with both operands k-major and A as staged.
template <int FM, int FN, int K, int LDA, int LDB>
__device__ __forceinline__ void dn_mma_tile_tf32(const float (*a)[LDA], const float (*b)[LDB], int m0,
                                                 int n0, float (&acc)[2 * FM][2 * FN]) {
    dn_mma_rows_tf32<FM, FN, K, false, RawA, LDA, LDB, false>(a, RawA{}, b, m0, n0, acc);
}

// Two bf16 of x (lo in the low half) through their channels' prologue, repacked as bf16.
template <class Pro>
__device__ __forceinline__ unsigned dn_apply_bf16x2(unsigned u, typename Pro::Channel lo,
                                                    typename Pro::Channel hi) {
    return dn_pack_bf16x2(Pro::apply(lo, __uint_as_float(u << 16)),
                          Pro::apply(hi, __uint_as_float(u & 0xffff0000u)));
}

// BF16 (m16n8k16): each mma tile's A fragment is one ldmatrix.x4 of the 16 × 16 staged tile
// (lane l: row l % 16, columns 8·(l / 16) ..; rows 16-byte aligned), whose registers hold
// reduction pairs (2t, 2t + 1) and (2t + 8, 2t + 9), used as loaded for RawA; B pairs
// B(2t, n), B(2t + 1, n) and 8 further on.
template <int FM, int FN, int K, bool kBRowsN, class Pro, int LDX, int LDW>
__device__ __forceinline__ void dn_mma_rows_bf16(const dn_bf16 (*x)[LDX], const Pro& pro,
                                                 const float (*w)[LDW], int m0, int n0,
                                                 float (&acc)[2 * FM][2 * FN]) {
    static_assert(K % 16 == 0, "a stage is whole k16 slices");
    const int lane = static_cast<int>(threadIdx.x % 32);
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int k = 0; k < K; k += 16) {
        const int k0 = k + 2 * t;
        const typename Pro::Channel c0 = pro.channel(k0), c1 = pro.channel(k0 + 1);
        const typename Pro::Channel c8 = pro.channel(k0 + 8), c9 = pro.channel(k0 + 9);
        unsigned bf[FN][2];
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int n = n0 + 8 * j + g;
            bf[j][0] = dn_pack_bf16x2(dn_staged_b<kBRowsN>(w, k0, n), dn_staged_b<kBRowsN>(w, k0 + 1, n));
            bf[j][1] = dn_pack_bf16x2(dn_staged_b<kBRowsN>(w, k0 + 8, n),
                                      dn_staged_b<kBRowsN>(w, k0 + 9, n));
        }
#pragma unroll
        for (int i = 0; i < FM; ++i) {
            unsigned r[4];
            dn_ldmatrix_x4(r, &x[m0 + 16 * i + lane % 16][k + 8 * (lane / 16)]);
            if constexpr (!Pro::kRaw) {
                r[0] = dn_apply_bf16x2<Pro>(r[0], c0, c1);
                r[1] = dn_apply_bf16x2<Pro>(r[1], c0, c1);
                r[2] = dn_apply_bf16x2<Pro>(r[2], c8, c9);
                r[3] = dn_apply_bf16x2<Pro>(r[3], c8, c9);
            }
#pragma unroll
            for (int j = 0; j < FN; ++j) dn_mma_acc<true>(acc, i, j, r, bf[j]);
        }
    }
}

// The operand type of a tensor-core precision, for the Math policies of the GEMM families:
// tile<FM, FN, K>() is its dn_mma_tile_<type>, round(x) the operand an mma makes of x (for the
// stem's data gradient, an FFMA loop on operands rounded as the tensor cores would round them:
// a product of two such values is exact in f32).
struct Tf32Operands {
    template <int FM, int FN, int K, int LDA, int LDB>
    __device__ static void tile(const float (*a)[LDA], const float (*b)[LDB], int m0, int n0,
                                float (&acc)[2 * FM][2 * FN]) {
        dn_mma_tile_tf32<FM, FN, K, LDA, LDB>(a, b, m0, n0, acc);
    }
    // Padding of staged W rows (16 or 64 floats wide), so that a warp's B reads hit 32 banks:
    // w[n][k] 20 floats (8 rows × 4 consecutive floats), w[k][n] 72 (4 rows × 8 consecutive).
    static constexpr int kRowsPadW = 4;
    static constexpr int kColsPadW = 8;
    template <int FM, int FN, int K, bool kBRowsN, class Pro, int LDX, int LDW>
    __device__ static void rows_tile(const float (*x)[LDX], const Pro& pro, const float (*w)[LDW],
                                     int m0, int n0, float (&acc)[2 * FM][2 * FN]) {
        dn_mma_rows_tf32<FM, FN, K, kBRowsN>(x, pro, w, m0, n0, acc);
    }
    __device__ static float round(float x) { return __uint_as_float(dn_cvt_tf32(x)); }
};

struct Bf16Operands {
    template <int FM, int FN, int K, int LDA, int LDB>
    __device__ static void tile(const float (*a)[LDA], const float (*b)[LDB], int m0, int n0,
                                float (&acc)[2 * FM][2 * FN]) {
        dn_mma_tile_bf16<FM, FN, K, LDA, LDB>(a, b, m0, n0, acc);
    }
    // Padding of staged W rows (16 or 64 floats wide), so that B reads hit 32 banks: w[n][k] 24
    // floats (each half-warp's 64-bit reads: 4 rows × 4 pairs), w[k][n] 68 (a warp reads rows
    // 2t, t = 0..3, × 8 consecutive floats).
    static constexpr int kRowsPadW = 8;
    static constexpr int kColsPadW = 4;
    template <int FM, int FN, int K, bool kBRowsN, class Pro, int LDX, int LDW>
    __device__ static void rows_tile(const dn_bf16 (*x)[LDX], const Pro& pro, const float (*w)[LDW],
                                     int m0, int n0, float (&acc)[2 * FM][2 * FN]) {
        dn_mma_rows_bf16<FM, FN, K, kBRowsN>(x, pro, w, m0, n0, acc);
    }
    // The bf16 value in the high half of an f32 is that value as an f32.
    __device__ static float round(float x) { return __uint_as_float(dn_pack_bf16x2(x, 0.0f) << 16); }
};
