// mma_tile.cuh — one warp's tensor-core (TF32) multiply of a GEMM step staged in shared memory
// k-major (a[k][m], b[k][n]), the layout the implicit-GEMM convolutions (conv3x3.cu, conv.cu)
// stage their operands in for their exact f32 register tiles, so that their tf32 kernels keep
// those loaders, masks and epilogues and change only the multiply.
//
// The warp's tile is 16·FM rows × 8·FN columns of mma.m16n8k8 tiles. A lane's accumulators are
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
