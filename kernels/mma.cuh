// mma.cuh — tensor-core primitives for GEMM mainloops: warp-level matrix multiply-accumulate
// (TF32 m16n8k8, BF16 m16n8k16), the ldmatrix loads that feed them and the cp.async copies
// of a multi-stage pipeline. Each wrapper stands for one PTX instruction (sm_80 or newer);
// its name says which.
//
// On the GPU each is inline PTX. In the CPU emulator (`DENSENET_EMU`, emu/cuda_emu.h) each
// calls the emulator's version of the instruction, which follows the PTX ISA's fragment
// layouts and reports misuse (an mma or ldmatrix not reached by the whole warp, a read of
// shared memory that a cp.async has not filled yet) instead of computing garbage.
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8" / "for mma.m16n8k16 with floating
// point type"), with groupID = %laneid >> 2 and threadID_in_group = %laneid % 4:
//   * tf32 m16n8k8: A is four .b32 registers (a0..a3), B two (b0, b1), C and D four f32;
//   * bf16 m16n8k16: A is four .b32 registers holding a0..a7 (two bf16 each, the lower
//     index in the low half), B two registers holding b0..b3, C and D four f32.
// ldmatrix.x4 loads exactly the A fragment of m16n8k16 from a row-major 16x16 tile (lane l
// passing the address of row l % 16, column 8 * (l / 16)), and with .trans the B fragments
// of two n8 tiles from a row-major K x N tile.
#pragma once

// The instructions exist from sm_80 on. Compiled for an older GPU (NVRTC compiles for the GPU
// it runs on) every wrapper traps instead, so that the modules holding tensor-core kernels
// still load there for their fp32 kernels; the backends refuse tf32 on such a GPU before
// launching anything, so the trap is never reached.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define DN_TENSOR_CORES 1
#else
#define DN_TENSOR_CORES 0
#endif

#if defined(DENSENET_EMU)

// D = A·B + C over the warp (every lane of the warp must call it at the same site).
__device__ __forceinline__ void dn_mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                    const unsigned b[2], const float c[4],
                                                    EMU_SITE) {
    ::emu::mma_m16n8k8_tf32(d, a, b, c, emu_file, emu_line);
}
__device__ __forceinline__ void dn_mma_m16n8k16_bf16(float d[4], const unsigned a[4],
                                                     const unsigned b[2], const float c[4],
                                                     EMU_SITE) {
    ::emu::mma_m16n8k16_bf16(d, a, b, c, emu_file, emu_line);
}
// f32 -> tf32 as cvt.rna.tf32.f32: round to nearest, ties away from zero.
__device__ __forceinline__ unsigned dn_cvt_tf32(float x) { return ::emu::f32_to_tf32_bits(x); }
// Two f32 -> one .b32 of two bf16 (lo in the low half) as cvt.rn.bf16x2.f32: round to
// nearest even, NaN -> 0x7fff.
__device__ __forceinline__ unsigned dn_pack_bf16x2(float lo, float hi) {
    return (unsigned)::emu::f32_to_bf16_bits(lo) | (unsigned)::emu::f32_to_bf16_bits(hi) << 16;
}
__device__ __forceinline__ void dn_ldmatrix_x4(unsigned r[4], const void* smem_row_addr,
                                               EMU_SITE) {
    ::emu::ldmatrix_x4(r, smem_row_addr, false, emu_file, emu_line);
}
__device__ __forceinline__ void dn_ldmatrix_x4_trans(unsigned r[4], const void* smem_row_addr,
                                                     EMU_SITE) {
    ::emu::ldmatrix_x4(r, smem_row_addr, true, emu_file, emu_line);
}
__device__ __forceinline__ void dn_cp_async_16(void* smem, const void* gmem) {
    ::emu::cp_async(smem, gmem, 16);
}
__device__ __forceinline__ void dn_cp_async_8(void* smem, const void* gmem) {
    ::emu::cp_async(smem, gmem, 8);
}
__device__ __forceinline__ void dn_cp_async_4(void* smem, const void* gmem) {
    ::emu::cp_async(smem, gmem, 4);
}
__device__ __forceinline__ void dn_cp_async_commit() { ::emu::cp_async_commit(); }
template <int N> __device__ __forceinline__ void dn_cp_async_wait() { ::emu::cp_async_wait(N); }

#else

__device__ __forceinline__ void dn_mma_m16n8k8_tf32(float d[4], const unsigned a[4],
                                                    const unsigned b[2], const float c[4]) {
#if DN_TENSOR_CORES
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

__device__ __forceinline__ void dn_mma_m16n8k16_bf16(float d[4], const unsigned a[4],
                                                     const unsigned b[2], const float c[4]) {
#if DN_TENSOR_CORES
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// cvt.rna.tf32.f32 rounds to nearest with ties AWAY from zero (the only rounding PTX offers
// for an f32 -> tf32 cvt on sm_80/sm_90); the result is an f32 bit pattern whose low 13 bits
// are zero. Not volatile: a pure conversion the compiler may schedule or share.
__device__ __forceinline__ unsigned dn_cvt_tf32(float x) {
    unsigned r = 0;
#if DN_TENSOR_CORES
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
    return r;
}

// cvt.rn.bf16x2.f32 d, a, b puts cvt(a) in the high half and cvt(b) in the low half.
__device__ __forceinline__ unsigned dn_pack_bf16x2(float lo, float hi) {
    unsigned r = 0;
#if DN_TENSOR_CORES
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
    return r;
}

// Each lane passes the address of one 16-byte row (lanes 8i..8i+7: the rows of matrix i),
// which must be 16-byte aligned and in shared memory.
__device__ __forceinline__ void dn_ldmatrix_x4(unsigned r[4], const void* smem_row_addr) {
#if DN_TENSOR_CORES
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_row_addr));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

__device__ __forceinline__ void dn_ldmatrix_x4_trans(unsigned r[4], const void* smem_row_addr) {
#if DN_TENSOR_CORES
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_row_addr));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// 16 bytes global -> shared, bypassing L1 (.cg: the tile is read once per block); both
// addresses 16-byte aligned. The "memory" clobbers keep the compiler from moving shared
// accesses across the asynchronous copy and its waits.
__device__ __forceinline__ void dn_cp_async_16(void* smem, const void* gmem) {
#if DN_TENSOR_CORES
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// 8 bytes global -> shared through L1 (.ca: .cg allows 16-byte copies only); both addresses
// 8-byte aligned.
__device__ __forceinline__ void dn_cp_async_8(void* smem, const void* gmem) {
#if DN_TENSOR_CORES
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// 4 bytes global -> shared through L1, as dn_cp_async_8; both addresses 4-byte aligned.
__device__ __forceinline__ void dn_cp_async_4(void* smem, const void* gmem) {
#if DN_TENSOR_CORES
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// Closes the calling thread's group of cp.async copies issued since the last commit.
__device__ __forceinline__ void dn_cp_async_commit() {
#if DN_TENSOR_CORES
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// Waits until at most N of the calling thread's committed groups are pending. Only the
// calling thread's copies: other threads see them after a __syncthreads that follows.
template <int N> __device__ __forceinline__ void dn_cp_async_wait() {
#if DN_TENSOR_CORES
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

#endif
