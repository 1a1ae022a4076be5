// conv1x1.cu — the dense layer's bottleneck BN-ReLU-Conv1x1: forward and both gradients, each
// one tiled GEMM over the feature storage with the BN-ReLU fused into its loads or its epilogue
// (fused_gemm.cuh: tiles, loaders, epilogue staging, determinism).
//
// bn_relu_conv1x1_fwd_<T>: z = relu(a⊙x + b)·Wᵀ, overwriting z, (a, b) read from the table
//   bn_affine_f32 (stats.cu) wrote. Grid (pixel tiles, cout tiles).
// bn_relu_conv1x1_wgrad_<T>: dW += dzᵀ·relu(a⊙x + b). Grid (cout tiles, cin tiles, splits of the
//   pixels); with more than one split the tiles go to the backend's scratch and
//   split_sum_f32 (reduce.cu) adds them into dW in a fixed order.
// bn_relu_conv1x1_dgrad_<T>: g = (dz·W) ⊙ [a⊙x + b > 0] is never stored: the epilogue writes
//   dx (+)= a⊙g and the per-channel [Σg | Σg·x̂]. Grid (cin tiles, runs of pixel tiles): a block
//   owns one channel tile and a run of pixel tiles, so its sums need no atomics; with more than
//   one run the run totals go to the scratch as doubles and tile_sums_finish_f32
//   (reduce.cu) adds them in a fixed order.
// Results are bit-identical run to run: the splits and runs depend on the shape only.
//
// CPU reference: src/backend/conv1x1/cpu.rs (same op names).
#include "fused_gemm.cuh"
// Mirrors backend::conv1x1::Conv1x1Params: x is pixels × cin (pitch ld_x), z or dz
// pixels × cout (pitch ld_z), dx like x (pitch ld_dx). wgrad: `splits` runs of `run` reduction
// steps of kTileK pixels; dgrad: `splits` runs of `run` tiles of kTileM pixels.
struct Conv1x1Params {
    unsigned int pixels;
    unsigned int cin;
    unsigned int cout;
    unsigned int ld_x;
    unsigned int ld_z;
    unsigned int ld_dx;
    // dgrad: non-zero adds into dx instead of overwriting it.
    unsigned int accumulate;
    unsigned int splits;
    unsigned int run;
};
static_assert(sizeof(Conv1x1Params) == 36, "size of the Rust mirror (tests/kernel_params.rs)");

// The dgrad epilogue of pixel p, channel c: g from the GEMM's gpre, dx (+)= a·g.
template <typename T>
struct Conv1x1DxEpilogue {
    const T* x;
    T* dx;
    unsigned int ld_x, ld_dx, cin;
    bool accumulate;
    BnParams bn;

    __device__ BnChannel channel(unsigned int c) const { return dn_bn_channel(bn, c, cin); }
    __device__ void apply(const BnChannel& k, unsigned int p, unsigned int c, float gpre, float& s1,
                          float& s2) const {
        const float x_pc = static_cast<float>(x[dn_at(p, c, ld_x)]);
        const float ag = k.a * dn_masked_grad(k, x_pc, gpre, s1, s2);
        T& d = dx[dn_at(p, c, ld_dx)];
        d = static_cast<T>(accumulate ? static_cast<float>(d) + ag : ag);
    }
};

// Tensor cores take the cp.async pipeline where x, W and the table are aligned for it, the
// register-staged main loop otherwise (fused_gemm.cuh); both give the same bits.
template <class Math, typename T>
__device__ void bn_relu_conv1x1_fwd(const Conv1x1Params p, const T* x, const BnTable bn,
                                    const float* w, T* z) {
    const BnReluSource<T, BnTable> src{x, p.pixels, p.cin, p.ld_x, bn};
    if constexpr (Math::kPipelined) {
        __shared__ PipelinedSmem<FwdStage<T, typename Math::Ops>> s;
        if (dn_rows_vec4(x, p.ld_x) && dn_rows_vec4(w, p.cin) &&
            reinterpret_cast<size_t>(bn.ab) % 16 == 0)
            dn_pipelined_fwd<Math>(s, x, p.ld_x, p.pixels, p.cin, bn.ab, w, p.cout, z, p.ld_z);
        else
            dn_fused_gemm_fwd<Math>(s.plain, src, p.pixels, p.cin, w, p.cout, z, p.ld_z);
    } else {
        __shared__ GemmSmem s;
        dn_fused_gemm_fwd<Math>(s, src, p.pixels, p.cin, w, p.cout, z, p.ld_z);
    }
}

template <class Math, typename T>
__device__ void bn_relu_conv1x1_wgrad(const Conv1x1Params p, const T* x, const BnParams bn,
                                      const T* dz, float* dw, float* partials) {
    const BnReluSource<T, BnParams> src{x, p.pixels, p.cin, p.ld_x, bn};
    dn_fused_gemm_wgrad<Math>(src, dz, p.pixels, p.ld_z, p.cout, p.cin, p.splits, p.run, dw, partials);
}

template <class Math, typename T>
__device__ void bn_relu_conv1x1_dgrad(const Conv1x1Params p, const T* dz, const float* w,
                                      const T* x, const BnParams bn, T* dx, float* sums,
                                      double* partials) {
    const Conv1x1DxEpilogue<T> epi{x, dx, p.ld_x, p.ld_dx, p.cin, p.accumulate != 0, bn};
    dn_fused_gemm_dgrad<Math>(epi, dz, p.pixels, p.ld_z, w, p.cout, p.cin, p.splits, p.run, sums,
                        partials);
}

#define DN_CONV1X1_KERNELS(T, MATH, SUFFIX)                                                         \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_conv1x1_fwd_##SUFFIX(                                                               \
        const Conv1x1Params p, const T* x, const float2* ab, const float* w, T* z) {                \
        bn_relu_conv1x1_fwd<MATH, T>(p, x, BnTable{ab}, w, z);                                      \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_conv1x1_wgrad_##SUFFIX(                                                             \
        const Conv1x1Params p, const T* x, const float* mean, const float* var,                     \
        const float* gamma, const float* beta, const T* dz, float* dw, float* partials) {           \
        bn_relu_conv1x1_wgrad<MATH, T>(p, x, BnParams{mean, var, gamma, beta}, dz, dw, partials);   \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_conv1x1_dgrad_##SUFFIX(                                                             \
        const Conv1x1Params p, const T* dz, const float* w, const T* x, const float* mean,          \
        const float* var, const float* gamma, const float* beta, T* dx, float* sums,                \
        double* partials) {                                                                         \
        bn_relu_conv1x1_dgrad<MATH, T>(p, dz, w, x, BnParams{mean, var, gamma, beta}, dx, sums,     \
                                 partials);                                                         \
    }

DN_CONV1X1_KERNELS(float, SimtF32, f32)
DN_CONV1X1_KERNELS(float, MmaTf32, tf32)
DN_CONV1X1_KERNELS(dn_bf16, MmaBf16, bf16)
