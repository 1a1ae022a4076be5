// Self-test kernels of the tensor-core primitives (kernels/mma.cuh) as the emulator runs them:
// single mma and ldmatrix instructions whose per-lane fragments tests/emulator.rs builds and
// decodes from the PTX ISA's layout formulas, a tiled bf16 GEMM that combines cp.async,
// ldmatrix and mma, conversions, and planted bugs (marked `BUG:`) that must be caught.
// scripts/mma-check.sh compiles this file with nvcc for sm_90 as well, so the wrappers' PTX is
// checked by ptxas.
#include "mma.cuh"

// One m16n8k8 tf32 mma by one warp: lane l's fragments are a[4l..4l+4], b[2l..2l+2],
// c[4l..4l+4]; D goes to d[4l..4l+4]. `convert` = 0 hands the f32 bits to the tensor core
// unrounded, as a kernel that forgets dn_cvt_tf32 would.
extern "C" __global__ void selftest_mma_tf32(const float* a, const float* b, const float* c,
                                             float* d, int convert) {
    const unsigned l = threadIdx.x;
    unsigned ra[4], rb[2];
    float rc[4], rd[4];
    for (int i = 0; i < 4; ++i) {
        ra[i] = convert ? dn_cvt_tf32(a[4 * l + i]) : __float_as_uint(a[4 * l + i]);
        rc[i] = c[4 * l + i];
    }
    for (int i = 0; i < 2; ++i)
        rb[i] = convert ? dn_cvt_tf32(b[2 * l + i]) : __float_as_uint(b[2 * l + i]);
    dn_mma_m16n8k8_tf32(rd, ra, rb, rc);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = rd[i];
}

// One m16n8k16 bf16 mma by one warp, fragments as above (a and b: packed bf16 pairs); with
// `swap_a`, a[1] and a[2] are exchanged: the wrong fragment index of a planted bug.
template <bool kSwapA>
__device__ void mma_bf16_tile(const unsigned* a, const unsigned* b, const float* c, float* d) {
    const unsigned l = threadIdx.x;
    unsigned ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    const unsigned rb[2] = {b[2 * l], b[2 * l + 1]};
    float acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    if (kSwapA) {
        const unsigned t = ra[1]; // BUG: swapped-a-fragment
        ra[1] = ra[2];
        ra[2] = t;
    }
    dn_mma_m16n8k16_bf16(acc, ra, rb, acc); // C and D in the same registers, as mainloops do
    for (int i = 0; i < 4; ++i) d[4 * l + i] = acc[i];
}

extern "C" __global__ void selftest_mma_bf16(const unsigned* a, const unsigned* b,
                                             const float* c, float* d) {
    mma_bf16_tile<false>(a, b, c, d);
}

extern "C" __global__ void selftest_mma_bf16_swapped_a(const unsigned* a, const unsigned* b,
                                                       const float* c, float* d) {
    mma_bf16_tile<true>(a, b, c, d);
}

// Only half of the warp reaches the mma; the other half exits.
extern "C" __global__ void selftest_mma_half_warp(const unsigned* a, const unsigned* b,
                                                  const float* c, float* d) {
    const unsigned l = threadIdx.x;
    if (l < 16) {
        const unsigned ra[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
        const unsigned rb[2] = {b[2 * l], b[2 * l + 1]};
        float acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
        dn_mma_m16n8k16_bf16(acc, ra, rb, acc); // BUG: half-warp-mma
        for (int i = 0; i < 4; ++i) d[4 * l + i] = acc[i];
    }
}

// A row-major 16x16 b16 tile through shared memory and ldmatrix.x4, plain and .trans: lane l
// passes row l % 16, column 8 * (l / 16) (shifted by `skew` elements, a planted misalignment
// when not 0; with `global`, of the tile in global memory, a planted wrong state space) and
// writes its registers to out[8l..8l+4] (plain) and out[8l+4..8l+8] (.trans).
extern "C" __global__ void selftest_ldmatrix(const unsigned short* tile, unsigned* out,
                                             int skew, int global) {
    // 24-element rows: 48 bytes, so every row start stays 16-byte aligned.
    __shared__ __align__(16) unsigned short s[16][24];
    const unsigned l = threadIdx.x;
    for (unsigned i = l; i < 16 * 16; i += 32) s[i / 16][i % 16] = tile[i];
    __syncthreads();
    const unsigned short* row =
        global ? &tile[(l % 16) * 16 + 8 * (l / 16)] : &s[l % 16][8 * (l / 16) + skew];
    unsigned r[4], rt[4];
    dn_ldmatrix_x4(r, row); // BUG: bad-ldmatrix-row
    dn_ldmatrix_x4_trans(rt, row);
    for (int i = 0; i < 4; ++i) {
        out[8 * l + i] = r[i];
        out[8 * l + 4 + i] = rt[i];
    }
}

// cp.async groups: thread t copies in[4t..4t+4] into three groups (16-byte .cg, 16-byte .cg,
// four 4-byte .ca), then waits for all but the newest two groups, crosses a __syncthreads
// (which completes nothing) and reads back its own bytes: out[12t..12t+4] from the first group
// (complete), out[12t+4..12t+12] from the others (still in flight: the 0xFF poison). Finally
// it waits for everything and adds the three groups into sum[4t..4t+4].
extern "C" __global__ void selftest_cp_async_groups(const float* in, float* out, float* sum) {
    __shared__ __align__(16) float s[3][128];
    const unsigned t = threadIdx.x;
    dn_cp_async_16(&s[0][4 * t], &in[4 * t]);
    dn_cp_async_commit();
    dn_cp_async_16(&s[1][4 * t], &in[4 * t]);
    dn_cp_async_commit();
    for (int i = 0; i < 4; ++i) dn_cp_async_4(&s[2][4 * t + i], &in[4 * t + i]);
    dn_cp_async_commit();
    dn_cp_async_wait<2>();
    __syncthreads();
    for (int g = 0; g < 3; ++g)
        for (int i = 0; i < 4; ++i) out[12 * t + 4 * g + i] = s[g][4 * t + i]; // BUG: early-read
    dn_cp_async_wait<0>();
    for (int i = 0; i < 4; ++i) sum[4 * t + i] = s[0][4 * t + i] + s[1][4 * t + i] + s[2][4 * t + i];
}

// C = A·B (f32) for bf16 A (m x k, row-major) and B (k x n, row-major), m and n multiples of
// 64 (the grid is n/64 x m/64), k a multiple of 32: 64x64 blocks of 4 warps (2x2, 32x32 each), a 2-stage cp.async
// pipeline of 64x32 A and 32x64 B tiles, A fragments by ldmatrix.x4 and B fragments by
// ldmatrix.x4.trans, m16n8k16 bf16 mma. Without `kWait` the mainloop skips the
// cp.async.wait_group before reading a stage: the planted bug.
namespace {
constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 32;
constexpr int kGemmPad = 8; // bf16 elements: rows stay 16-byte aligned (80 and 144 bytes)
} // namespace

template <bool kWait>
__device__ void gemm_bf16(const unsigned short* a, const unsigned short* b, float* c, int n,
                          int k) {
    __shared__ __align__(16) unsigned short as[2][kGemmBM][kGemmBK + kGemmPad];
    __shared__ __align__(16) unsigned short bs[2][kGemmBK][kGemmBN + kGemmPad];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2; // the warp's 32x32 quadrant
    const int m0 = blockIdx.y * kGemmBM, n0 = blockIdx.x * kGemmBN;
    // Each tile is 256 chunks of 16 bytes (8 bf16): two per thread for A, two for B.
    auto load = [&](int stage, int k0) {
        for (int q = tid; q < 256; q += 128) {
            const int ar = q / 4, ac = (q % 4) * 8;
            dn_cp_async_16(&as[stage][ar][ac], &a[(size_t)(m0 + ar) * k + k0 + ac]);
            const int br = q / 8, bc = (q % 8) * 8;
            dn_cp_async_16(&bs[stage][br][bc], &b[(size_t)(k0 + br) * n + n0 + bc]);
        }
    };
    float acc[2][4][4] = {};
    const int tiles = k / kGemmBK;
    load(0, 0);
    dn_cp_async_commit();
    for (int kt = 0; kt < tiles; ++kt) {
        const int stage = kt % 2;
        if (kt + 1 < tiles) load(stage ^ 1, (kt + 1) * kGemmBK);
        // Committed even when empty, so that "all but the newest group" is always tile kt.
        dn_cp_async_commit();
        if (kWait) dn_cp_async_wait<1>();
        __syncthreads();
        for (int ks = 0; ks < kGemmBK; ks += 16) {
            unsigned fa[2][4], fb[4][2];
            for (int mi = 0; mi < 2; ++mi)
                dn_ldmatrix_x4(fa[mi], &as[stage][wm * 32 + mi * 16 + lane % 16][ks + 8 * (lane / 16)]); // BUG: read-before-wait
            for (int nj = 0; nj < 2; ++nj) {
                unsigned r[4];
                const int kr = ks + lane % 8 + 8 * ((lane / 8) % 2);
                dn_ldmatrix_x4_trans(r, &bs[stage][kr][wn * 32 + nj * 16 + 8 * (lane / 16)]);
                fb[2 * nj][0] = r[0];
                fb[2 * nj][1] = r[1];
                fb[2 * nj + 1][0] = r[2];
                fb[2 * nj + 1][1] = r[3];
            }
            for (int mi = 0; mi < 2; ++mi)
                for (int ni = 0; ni < 4; ++ni) dn_mma_m16n8k16_bf16(acc[mi][ni], fa[mi], fb[ni], acc[mi][ni]);
        }
        __syncthreads(); // the next iteration's copies overwrite this stage
    }
    const int g = lane / 4, t = lane % 4;
    for (int mi = 0; mi < 2; ++mi)
        for (int ni = 0; ni < 4; ++ni)
            for (int i = 0; i < 4; ++i) {
                const int row = m0 + wm * 32 + mi * 16 + g + (i < 2 ? 0 : 8);
                const int col = n0 + wn * 32 + ni * 8 + 2 * t + (i & 1);
                c[(size_t)row * n + col] = acc[mi][ni][i];
            }
}

extern "C" __global__ void selftest_gemm_bf16(const unsigned short* a, const unsigned short* b,
                                              float* c, int n, int k) {
    gemm_bf16<true>(a, b, c, n, k);
}

extern "C" __global__ void selftest_gemm_bf16_no_wait(const unsigned short* a,
                                                      const unsigned short* b, float* c, int n,
                                                      int k) {
    gemm_bf16<false>(a, b, c, n, k);
}

// out[i] = dn_cvt_tf32(in[i]); out[n + i] = dn_pack_bf16x2(in[i], -in[i]).
extern "C" __global__ void selftest_mma_conversions(const float* in, unsigned* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[i] = dn_cvt_tf32(in[i]);
        out[n + i] = dn_pack_bf16x2(in[i], -in[i]);
    }
}
