// Self-test kernels of the emulator's software __half / __nv_bfloat16 (emu/cuda_emu.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

extern "C" __global__ void selftest_f32_to_f16(const float* in, unsigned short* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __half_as_ushort(__float2half_rn(in[i]));
}

extern "C" __global__ void selftest_f16_to_f32(const unsigned short* in, float* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __half2float(__ushort_as_half(in[i]));
}

extern "C" __global__ void selftest_f32_to_bf16(const float* in, unsigned short* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
}

extern "C" __global__ void selftest_bf16_to_f32(const unsigned short* in, float* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __bfloat162float(__ushort_as_bfloat16(in[i]));
}

// out[2i] = bits of (half)in[i], out[2i+1] = bits of (bfloat16)in[i], rounding from f64 once.
extern "C" __global__ void selftest_f64_to_small(const double* in, unsigned short* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[2 * i] = __half_as_ushort(__double2half(in[i]));
        out[2 * i + 1] = __bfloat16_as_ushort(__double2bfloat16(in[i]));
    }
}

// out[4i..4i+4] = a+b, a*b, fma(a, b, c), a/b on 16-bit values given as bits.
template <class H, class Bits, class FromBits>
__device__ void small_float_arith(const unsigned short* a, const unsigned short* b,
                                  const unsigned short* c, unsigned short* out, int n, Bits bits,
                                  FromBits from_bits) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const H x = from_bits(a[i]);
        const H y = from_bits(b[i]);
        out[4 * i + 0] = bits(__hadd(x, y));
        out[4 * i + 1] = bits(x * y);
        out[4 * i + 2] = bits(__hfma(x, y, from_bits(c[i])));
        out[4 * i + 3] = bits(__hdiv(x, y));
    }
}

extern "C" __global__ void selftest_f16_arith(const unsigned short* a, const unsigned short* b,
                                              const unsigned short* c, unsigned short* out,
                                              int n) {
    small_float_arith<__half>(
        a, b, c, out, n, [](__half h) { return __half_as_ushort(h); },
        [](unsigned short u) { return __ushort_as_half(u); });
}

extern "C" __global__ void selftest_bf16_arith(const unsigned short* a, const unsigned short* b,
                                               const unsigned short* c, unsigned short* out,
                                               int n) {
    small_float_arith<__nv_bfloat16>(
        a, b, c, out, n, [](__nv_bfloat16 h) { return __bfloat16_as_ushort(h); },
        [](unsigned short u) { return __ushort_as_bfloat16(u); });
}
