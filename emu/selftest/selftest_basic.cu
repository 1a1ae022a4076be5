// Self-test kernels of the CPU emulator (emu/cuda_emu.h), written as production CUDA would be.
// tests/emulator.rs launches each one and checks it against a plain Rust computation.

// ---- tiled matrix multiply ------------------------------------------------------------------
// C[m x n] = A[m x k] . B[k x n], row-major. Block (16, 16) computes one 16x16 tile of C,
// stepping through k in 16-wide tiles staged in shared memory.
constexpr int kTile = 16;

template <bool kTrailingSync>
__device__ void matmul_tiled(const float* __restrict__ a, const float* __restrict__ b,
                             float* __restrict__ c, int m, int n, int k) {
    __shared__ float as[kTile][kTile];
    __shared__ float bs[kTile][kTile];
    const int row = blockIdx.y * kTile + threadIdx.y;
    const int col = blockIdx.x * kTile + threadIdx.x;
    float acc = 0.0f;
    for (int k0 = 0; k0 < k; k0 += kTile) {
        const int ka = k0 + threadIdx.x;
        const int kb = k0 + threadIdx.y;
        as[threadIdx.y][threadIdx.x] = (row < m && ka < k) ? a[row * k + ka] : 0.0f;
        bs[threadIdx.y][threadIdx.x] = (kb < k && col < n) ? b[kb * n + col] : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < kTile; ++kk) acc += as[threadIdx.y][kk] * bs[kk][threadIdx.x];
        // Without this barrier a fast thread overwrites the tiles while others still read them.
        if (kTrailingSync) __syncthreads();
    }
    if (row < m && col < n) c[row * n + col] = acc;
}

extern "C" __global__ void selftest_matmul(const float* a, const float* b, float* c, int m, int n,
                                           int k) {
    matmul_tiled<true>(a, b, c, m, n, k);
}

// The same with the trailing __syncthreads missing (a race, not a divergence: no diagnostic).
extern "C" __global__ void selftest_matmul_missing_sync(const float* a, const float* b, float* c,
                                                        int m, int n, int k) {
    matmul_tiled<false>(a, b, c, m, n, k);
}

// ---- block reduction ------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum_xor(float v) {
    for (int offset = warpSize / 2; offset > 0; offset /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_sum_down(float v) {
    for (int offset = warpSize / 2; offset > 0; offset /= 2)
        v += __shfl_down_sync(0xffffffffu, v, offset);
    return v; // complete in lane 0 only
}

// partial[blockIdx.x] = sum of the block's grid-stride slice of x[0..n).
// blockDim.x must be a multiple of 32.
extern "C" __global__ void __launch_bounds__(1024) selftest_block_sum(const float* x,
                                                                       float* partial, int n) {
    __shared__ float warp_sums[32];
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        v += x[i];
    v = warp_sum_xor(v);
    const int lane = threadIdx.x % warpSize;
    const int warp = threadIdx.x / warpSize;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x / warpSize) ? warp_sums[lane] : 0.0f;
        v = warp_sum_down(v);
        if (lane == 0) partial[blockIdx.x] = v;
    }
}

// ---- atomics --------------------------------------------------------------------------------
// hist[x[i] % bins] += 1 for every i, with global atomics.
extern "C" __global__ void selftest_histogram(const unsigned* x, unsigned* hist, int n, int bins) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&hist[x[i] % bins], 1u);
}

// The same, privatised per block in dynamic shared memory (bins * 4 bytes).
extern "C" __global__ void selftest_histogram_shared(const unsigned* x, unsigned* hist, int n,
                                                     int bins) {
    extern __shared__ unsigned block_hist[];
    for (int b = threadIdx.x; b < bins; b += blockDim.x) block_hist[b] = 0;
    __syncthreads();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        atomicAdd(&block_hist[x[i] % bins], 1u);
    __syncthreads();
    for (int b = threadIdx.x; b < bins; b += blockDim.x)
        if (block_hist[b]) atomicAdd(&hist[b], block_hist[b]);
}

// Every thread of every block hits the same few words.
extern "C" __global__ void selftest_atomics(int* ints, unsigned* uints, unsigned long long* ull,
                                            float* f, double* d) {
    const int gid = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(&ints[0], 1);
    atomicMax(&ints[1], gid);
    atomicMin(&ints[2], -gid);
    atomicSub(&ints[3], 2);
    int old = ints[4], seen;
    while ((seen = atomicCAS(&ints[4], old, old + 3)) != old) old = seen;
    atomicOr(&ints[5], 1 << (gid % 31));
    atomicExch(&ints[6], 7);
    atomicInc(&uints[0], 999u);
    atomicAnd(&uints[1], ~(1u << (gid % 32)));
    atomicAdd(ull, (unsigned long long)gid);
    atomicAdd(f, 1.0f);
    atomicAdd(d, 0.5);
}

// ---- dynamic shared memory ------------------------------------------------------------------
namespace selftest {
// Another name for the block's dynamic shared memory, declared in a namespace.
__device__ float* dynamic_floats() {
    extern __shared__ float ns_dynamic[];
    return ns_dynamic;
}
} // namespace selftest

// Reverses each block's n-element row of data (n <= blockDim.x) through dynamic shared memory,
// reading back through a second extern __shared__ name (all of them alias, as on a GPU).
extern "C" __global__ void selftest_reverse(float* data, int n) {
    extern __shared__ float row[];
    const int i = threadIdx.x;
    float* base = data + blockIdx.x * n;
    if (i < n) row[i] = base[i];
    __syncthreads();
    const float* alias = selftest::dynamic_floats();
    if (i < n) base[i] = alias[n - 1 - i];
}

// out[t] = the block's dynamic shared word t, never written (the emulator fills it with 0xff).
extern "C" __global__ void selftest_read_unwritten_shared(unsigned* out) {
    extern __shared__ unsigned untouched[];
    out[threadIdx.x] = untouched[threadIdx.x];
}

// ---- indices --------------------------------------------------------------------------------
// out[8 * (block_linear * threads + thread_linear) + ...] = what the thread sees.
extern "C" __global__ void selftest_indices(unsigned* out) {
    const unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned* o = out + 8 * (block * threads + thread);
    o[0] = threadIdx.x;
    o[1] = threadIdx.y;
    o[2] = threadIdx.z;
    o[3] = blockIdx.x;
    o[4] = blockIdx.y;
    o[5] = blockIdx.z;
    o[6] = blockDim.x * 10000 + blockDim.y * 100 + blockDim.z;
    o[7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z;
}

// ---- warp collectives and barrier variants --------------------------------------------------
constexpr int kWarpOps = 19;

// out[t * kWarpOps + j] = result j of thread t (see tests/emulator.rs for the expectations).
extern "C" __global__ void selftest_warp_ops(const int* in, int* out) {
    const unsigned full = 0xffffffffu;
    const int t = threadIdx.x;
    const int lane = t % warpSize;
    const int v = in[t];
    int* o = out + t * kWarpOps;
    o[0] = __shfl_sync(full, v, (lane * 7) % 32);
    o[1] = __shfl_up_sync(full, v, 3);
    o[2] = __shfl_down_sync(full, v, 5);
    o[3] = __shfl_xor_sync(full, v, 9);
    o[4] = __shfl_xor_sync(full, v, 1, 8);
    o[5] = __shfl_down_sync(full, v, 2, 16);
    o[6] = (int)__ballot_sync(full, v & 1);
    o[7] = __any_sync(full, v == 17);
    o[8] = __all_sync(full, v >= 0);
    o[9] = (int)__match_any_sync(full, v % 4);
    o[10] = (int)__reduce_add_sync(full, (unsigned)v);
    o[11] = __reduce_min_sync(full, v);
    o[12] = __reduce_max_sync(full, v);
    o[13] = __syncthreads_count(v & 1);
    o[14] = __syncthreads_and(v < 1000);
    o[15] = __syncthreads_or(v == 5);
    // Two half-warp collectives with disjoint masks at different call sites.
    if (lane < 16)
        o[16] = __shfl_sync(0x0000ffffu, v, lane ^ 1);
    else
        o[16] = __shfl_sync(0xffff0000u, v, lane ^ 1);
    o[17] = (int)__activemask();
    o[18] = (int)(__shfl_xor_sync(full, (double)v * 0.5, 2) * 2.0);
}

// ---- timing ---------------------------------------------------------------------------------
// `iterations` barriers per thread; out[blockIdx.x] = iterations.
extern "C" __global__ void selftest_barrier_loop(int iterations, int* out) {
    __shared__ int counter;
    if (threadIdx.x == 0) counter = 0;
    for (int i = 0; i < iterations; ++i) {
        __syncthreads();
        if (threadIdx.x == (unsigned)i % blockDim.x) ++counter;
    }
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = counter;
}

// `iterations` full-warp shuffles per thread; out[t] = the final value.
extern "C" __global__ void selftest_shuffle_loop(int iterations, int* out) {
    int v = threadIdx.x;
    for (int i = 0; i < iterations; ++i) v = __shfl_xor_sync(0xffffffffu, v, 1 + i % 31);
    out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Threads >= active return at once; the others exchange values through shared memory after a
// __syncwarp(), which waits only for the lanes that have not exited (block of 48: the second
// warp is partial too). out[t] = t ^ 1 if that thread is active, else t.
extern "C" __global__ void selftest_syncwarp_after_exit(int* out, int active) {
    __shared__ int s[64];
    const int t = threadIdx.x;
    if (t >= active) return;
    s[t] = t;
    __syncwarp();
    const int other = t ^ 1;
    out[t] = other < active ? s[other] : t;
}
