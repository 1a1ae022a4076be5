// mma_tile.cuh — one warp's tensor-core (TF32 or BF16) multiply of a GEMM step staged in shared
// memory k-major (a[k][m], b[k][n]), the layout every GEMM family (fused_gemm.cuh, conv3x3.cu,
// conv.cu) stages its operands in for its exact f32 register tiles, so that their tf32 and bf16
// kernels keep those loaders, masks and epilogues and change only the multiply.
//
// The warp's tile is 16·FM rows × 8·FN columns of mma tiles (m16n8k8 tf32, m16n8k16 bf16, whose
// C fragments are laid out alike). A lane's accumulators are
// the 2·FM × 2·FN grid acc[i][j] = C(dn_mma_tile_row(m0, i), dn_mma_tile_col(n0, j)): the C
// fragment (c0, c1 at row g, columns 2t, 2t + 1; c2, c3 eight rows below; g = lane / 4,
// t = lane % 4, PTX ISA) of mma tile (i / 2, j / 2). Rows and columns of the grid are
// independent and increase with i and j, so an epilogue written for a register tile of
// per-thread rows × columns works unchanged on it.
#pragma once
#include "mma.cuh"

// Tile row of acc[i][·] in the warp tile starting at row m0: 16·(i / 2) + 8·(i % 2) + g.
__device__ __forceinline__ int dn_mma_tile_row(int m0, int i) {
    return m0 + 8 * i + static_cast<int>(threadIdx.x % 32 / 4);
}

// Tile column of acc[·][j] in the warp tile starting at column n0: 8·(j / 2) + 2t + j % 2.
__device__ __forceinline__ int dn_mma_tile_col(int n0, int j) {
    return n0 + 8 * (j / 2) + 2 * static_cast<int>(threadIdx.x % 4) + j % 2;
}

// acc += A·B over the stage's first K reduction indices, A(m, k) = a[k][m], B(k, n) = b[k][n],
// for the warp tile at (m0, n0). Every lane of the warp must call it (mma.sync is a warp
// instruction). The operands are rounded with cvt.rna.tf32.f32 as the fragments are read, so
// an mma multiplies exactly Precision::round_operand of the staged values.
template <int FM, int FN, int K, int LDA, int LDB>
__device__ __forceinline__ void dn_mma_tile_tf32(const float (*a)[LDA], const float (*b)[LDB], int m0,
                                                 int n0, float (&acc)[2 * FM][2 * FN]) {
    static_assert(K % 8 == 0, "a stage is whole k8 slices");
    const int g = static_cast<int>(threadIdx.x % 32 / 4), t = static_cast<int>(threadIdx.x % 4);
#pragma unroll
    for (int k = 0; k < K; k += 8) {
        // B's fragments for the slice, then A's one mma row at a time: 4 + 2·FN operand
        // registers live instead of 4·FM + 2·FN.
        unsigned bf[FN][2];
#pragma unroll
        for (int j = 0; j < FN; ++j) {
            const int n = n0 + 8 * j + g;
            bf[j][0] = dn_cvt_tf32(b[k + t][n]);
            bf[j][1] = dn_cvt_tf32(b[k + t + 4][n]);
        }
#pragma unroll
        for (int i = 0; i < FM; ++i) {
            const int m = m0 + 16 * i + g;
            const unsigned af[4] = {dn_cvt_tf32(a[k + t][m]), dn_cvt_tf32(a[k + t][m + 8]),
                                    dn_cvt_tf32(a[k + t + 4][m]), dn_cvt_tf32(a[k + t + 4][m + 8])};
#pragma unroll
            for (int j = 0; j < FN; ++j) {
                float c[4] = {acc[2 * i][2 * j], acc[2 * i][2 * j + 1], acc[2 * i + 1][2 * j],
                              acc[2 * i + 1][2 * j + 1]};
                dn_mma_m16n8k8_tf32(c, af, bf[j], c);
                acc[2 * i][2 * j] = c[0];
                acc[2 * i][2 * j + 1] = c[1];
                acc[2 * i + 1][2 * j] = c[2];
                acc[2 * i + 1][2 * j + 1] = c[3];
            }
        }
    }
}

// As dn_mma_tile_tf32, with mma.m16n8k16 on BF16 operands: each fragment register packs two
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
            for (int j = 0; j < FN; ++j) {
                float c[4] = {acc[2 * i][2 * j], acc[2 * i][2 * j + 1], acc[2 * i + 1][2 * j],
                              acc[2 * i + 1][2 * j + 1]};
                dn_mma_m16n8k16_bf16(c, af, bf[j], c);
                acc[2 * i][2 * j] = c[0];
                acc[2 * i][2 * j + 1] = c[1];
                acc[2 * i + 1][2 * j] = c[2];
                acc[2 * i + 1][2 * j + 1] = c[3];
            }
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
    __device__ static float round(float x) { return __uint_as_float(dn_cvt_tf32(x)); }
};

struct Bf16Operands {
    template <int FM, int FN, int K, int LDA, int LDB>
    __device__ static void tile(const float (*a)[LDA], const float (*b)[LDB], int m0, int n0,
                                float (&acc)[2 * FM][2 * FN]) {
        dn_mma_tile_bf16<FM, FN, K, LDA, LDB>(a, b, m0, n0, acc);
    }
    // The bf16 value in the high half of an f32 is that value as an f32.
    __device__ static float round(float x) { return __uint_as_float(dn_pack_bf16x2(x, 0.0f) << 16); }
};
