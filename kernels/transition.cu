// transition.cu — the transition layer BN-ReLU-Conv1x1-AvgPool2, pool first: pooling and a 1×1
// convolution are both linear, so they commute, and pooling first makes the GEMM 4× smaller.
// Each op is one tiled GEMM over the feature storage (fused_gemm.cuh: tiles, loaders, epilogue
// staging, determinism) whose rows are the R = n·⌊h/2⌋·⌊w/2⌋ output pixels.
//
// bn_relu_avgpool_conv1x1_fwd_<T>: y = avgpool2(relu(a⊙x + b))·Wᵀ, overwriting y; each A element
//   is the mean of 4 BN-ReLU'd inputs, made while loading (the host's order, so bit-identical),
//   (a, b) read from the table bn_affine_f32 (stats.cu) wrote. Grid (output-pixel tiles, cout
//   tiles).
// bn_relu_avgpool_conv1x1_wgrad_<T>: dW += dyᵀ·avgpool2(relu(a⊙x + b)). Grid (cout tiles, cin
//   tiles, splits of the output pixels); more than one split goes through the scratch and
//   split_sum_f32 (reduce.cu).
// bn_relu_avgpool_conv1x1_dgrad_<T>: gpre = (dy·W)/4 per output pixel; the epilogue scatters it
//   to the 4 input pixels of the window, g = gpre ⊙ [a⊙x + b > 0], dx = a⊙g, and adds
//   [Σg | Σg·x̂]. It overwrites every element of dx: the last output row (column) of an image
//   also owns the input row (column) an odd height (width) drops, and writes 0 there. Grid (cin
//   tiles, runs of output-pixel tiles); more than one run goes through the scratch and
//   tile_sums_finish_f32 (reduce.cu). An input too small to pool (h or w < 2) has no output pixel: the
//   launch wrapper zeroes dx and the sums instead.
// Results are bit-identical run to run: the splits and runs depend on the shape only.
//
// CPU reference: src/backend/transition/cpu.rs (same op names).
#include "fused_gemm.cuh"
// Mirrors backend::transition::TransitionParams: x is images × h × w pixels ×
// cin channels (pitch ld_x), y or dy images × ⌊h/2⌋ × ⌊w/2⌋ pixels × cout (pitch ld_y), dx like x
// (pitch ld_dx). wgrad: `splits` runs of `run` reduction steps of kTileK output pixels; dgrad:
// `splits` runs of `run` tiles of kTileM output pixels.
struct TransitionParams {
    unsigned int images;
    unsigned int h;
    unsigned int w;
    unsigned int cin;
    unsigned int cout;
    unsigned int ld_x;
    unsigned int ld_y;
    unsigned int ld_dx;
    unsigned int splits;
    unsigned int run;
};
static_assert(sizeof(TransitionParams) == 40, "size of the Rust mirror (tests/kernel_params.rs)");

__device__ __forceinline__ unsigned int transition_rows(const TransitionParams& p) {
    return p.images * (p.h / 2) * (p.w / 2);
}

template <typename T, class Bn>
__device__ PoolBnReluSource<T, Bn> transition_source(const TransitionParams& p, const T* x,
                                                     const Bn& bn) {
    return {x, p.ld_x, p.h, p.w, p.h / 2, p.w / 2, transition_rows(p), p.cin, bn};
}

// The dgrad epilogue of output pixel r, channel c: the window's input pixels get a·g, where
// g = gpre/4 masked by each input's ReLU; dropped inputs get 0.
template <typename T>
struct TransitionDxEpilogue {
    const T* x;
    T* dx;
    unsigned int ld_x, ld_dx, h, w, out_h, out_w, cin;
    BnParams bn;

    __device__ BnChannel channel(unsigned int c) const { return dn_bn_channel(bn, c, cin); }
    __device__ void apply(const BnChannel& k, unsigned int r, unsigned int c, float acc, float& s1,
                          float& s2) const {
        const float gpre = 0.25f * acc;
        const unsigned int image = out_h * out_w;
        const unsigned int n = r / image, oy = (r - n * image) / out_w;
        const unsigned int ox = r - n * image - oy * out_w;
        const unsigned int y_end = oy + 1 == out_h ? h : 2 * oy + 2;
        const unsigned int x_end = ox + 1 == out_w ? w : 2 * ox + 2;
        for (unsigned int iy = 2 * oy; iy < y_end; ++iy)
            for (unsigned int ix = 2 * ox; ix < x_end; ++ix) {
                const unsigned int pixel = (n * h + iy) * w + ix;
                T& d = dx[dn_at(pixel, c, ld_dx)];
                if (iy < 2 * out_h && ix < 2 * out_w) {
                    const float x_pc = static_cast<float>(x[dn_at(pixel, c, ld_x)]);
                    d = static_cast<T>(k.a * dn_masked_grad(k, x_pc, gpre, s1, s2));
                } else {
                    d = static_cast<T>(0.0f);
                }
            }
    }
};

template <class Math, typename T>
__device__ void bn_relu_avgpool_conv1x1_fwd(const TransitionParams p, const T* x,
                                            const BnTable bn, const float* w, T* y) {
    __shared__ GemmSmem s;
    dn_fused_gemm_fwd<Math>(s, transition_source(p, x, bn), transition_rows(p), p.cin, w, p.cout, y,
                            p.ld_y);
}

template <class Math, typename T>
__device__ void bn_relu_avgpool_conv1x1_wgrad(const TransitionParams p, const T* x,
                                              const BnParams bn, const T* dy, float* dw,
                                              float* partials) {
    dn_fused_gemm_wgrad<Math>(transition_source(p, x, bn), dy, transition_rows(p), p.ld_y, p.cout, p.cin,
                        p.splits, p.run, dw, partials);
}

template <class Math, typename T>
__device__ void bn_relu_avgpool_conv1x1_dgrad(const TransitionParams p, const T* dy,
                                              const float* w, const T* x, const BnParams bn,
                                              T* dx, float* sums, double* partials) {
    const TransitionDxEpilogue<T> epi{x, dx, p.ld_x, p.ld_dx, p.h, p.w, p.h / 2, p.w / 2, p.cin, bn};
    dn_fused_gemm_dgrad<Math>(epi, dy, transition_rows(p), p.ld_y, w, p.cout, p.cin, p.splits, p.run,
                        sums, partials);
}

#define DN_TRANSITION_KERNELS(T, MATH, SUFFIX)                                                      \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_avgpool_conv1x1_fwd_##SUFFIX(const TransitionParams p, const T* x,                  \
                                             const float2* ab, const float* w, T* y) {              \
        bn_relu_avgpool_conv1x1_fwd<MATH, T>(p, x, BnTable{ab}, w, y);                              \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_avgpool_conv1x1_wgrad_##SUFFIX(const TransitionParams p, const T* x,                \
                                               const float* mean, const float* var,                 \
                                               const float* gamma, const float* beta,               \
                                               const T* dy, float* dw, float* partials) {           \
        bn_relu_avgpool_conv1x1_wgrad<MATH, T>(p, x, BnParams{mean, var, gamma, beta}, dy, dw,      \
                                         partials);                                                 \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(kGemmThreads, MATH::kMinBlocks)                    \
        bn_relu_avgpool_conv1x1_dgrad_##SUFFIX(const TransitionParams p, const T* dy,               \
                                               const float* w, const T* x, const float* mean,       \
                                               const float* var, const float* gamma,                \
                                               const float* beta, T* dx, float* sums,               \
                                               double* partials) {                                  \
        bn_relu_avgpool_conv1x1_dgrad<MATH, T>(p, dy, w, x, BnParams{mean, var, gamma, beta}, dx, sums, \
                                         partials);                                                 \
    }

DN_TRANSITION_KERNELS(float, SimtF32, f32)
DN_TRANSITION_KERNELS(float, MmaTf32, tf32)
DN_TRANSITION_KERNELS(dn_bf16, MmaBf16, bf16)
