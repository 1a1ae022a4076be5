// Kernels with planted synchronisation bugs: the emulator must report each one (with the
// file:line of the construct marked `BUG:`, which tests/emulator.rs looks up) and return.

// Threads 128.. skip the barrier and exit while threads 0..127 wait at it.
extern "C" __global__ void selftest_bug_barrier_in_if(float* out) {
    if (threadIdx.x < 128) {
        __syncthreads(); // BUG: barrier-in-if
    }
    out[threadIdx.x] = 1.0f;
}

// The last block's tail threads return before a barrier the others reach.
extern "C" __global__ void selftest_bug_early_return(const float* in, float* out, int n) {
    __shared__ float s[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = in[i];
    __syncthreads(); // BUG: barrier-after-return
    out[i] = s[threadIdx.x ^ 1u];
}

// Half of each warp skips a full-mask shuffle and exits.
extern "C" __global__ void selftest_bug_partial_shuffle(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x % 32 < 16) v += __shfl_xor_sync(0xffffffffu, v, 16); // BUG: partial-shuffle
    out[threadIdx.x] = v;
}

// Threads 0..15 wait in a full-mask shuffle for lanes that wait at a barrier for them.
extern "C" __global__ void selftest_bug_deadlock(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v += __shfl_xor_sync(0xffffffffu, v, 16); // BUG: deadlock-shuffle
    __syncthreads(); // BUG: deadlock-barrier
    out[threadIdx.x] = v;
}

// Two halves of the block meet at different barriers.
extern "C" __global__ void selftest_bug_divergent_barriers(float* out) {
    if (threadIdx.x < 64) {
        __syncthreads(); // BUG: divergent-a
    } else {
        __syncthreads(); // BUG: divergent-b
    }
    out[threadIdx.x] = 1.0f;
}

// Block 1's thread 3 traps; the other blocks complete.
extern "C" __global__ void selftest_bug_trap(float* out) {
    if (blockIdx.x == 1 && threadIdx.x == 3) __trap(); // BUG: trap
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
