// reduce.cu — the second pass of every deterministic split reduction.
//
// Kernels that reduce over many pixels in parallel (split-K weight gradients, per-channel BN
// sums over pixel tiles) write one row of partials per split to the backend's scratch instead of
// racing float atomics; these entry points add the rows in a fixed order (dn_sum_rows,
// common.cuh), so results repeat bit for bit. One pair serves every kernel family.
//
// split_sum_f32: out (+)= Σ rows of f32 partials (weight gradients: accumulate into dW).
// tile_sums_finish_f32: sums = Σ rows of double partials [Σg | Σg·x̂] (BN backward sums).
//
// CPU reference: the fixed-order chunk/segment sums of src/backend/cpu/gemm.rs and rows.rs.
#include "common.cuh"

extern "C" __global__ void split_sum_f32(const SplitSumParams p, const float* partials, float* out) {
    dn_split_sum(p, partials, out);
}

extern "C" __global__ void tile_sums_finish_f32(const TileSumsParams p, const double* partials,
                                                float* sums) {
    dn_tile_sums_finish(p, partials, sums);
}
