// Kernels with planted memory and race bugs, and correct twins: the emulator's checks
// (emu/checker.cpp) must report each bug with the file:line of the accesses marked `BUG:`
// (tests/emulator.rs looks the markers up) and stay silent on the twins.

// Every thread stores its element and reads its mirror's without a barrier in between.
extern "C" __global__ void selftest_race_missing_barrier(const float* in, float* out) {
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = in[t]; // BUG: race-write
    out[t] = s[63 - t]; // BUG: race-read
}

// The same with the barrier: clean.
extern "C" __global__ void selftest_race_with_barrier(const float* in, float* out) {
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = in[t];
    __syncthreads();
    out[t] = s[63 - t];
}

// The classic last-warp reduction that assumes lockstep execution (no __syncwarp): a race on
// Volta and later, where the threads of a warp are scheduled independently.
extern "C" __global__ void selftest_race_warp_synchronous(const float* in, float* out) {
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = in[t];
    __syncthreads();
    if (t < 32) {
        for (unsigned d = 32; d > 0; d /= 2) s[t] += s[t + d]; // BUG: warp-synchronous
    }
    if (t == 0) out[0] = s[0];
}

// The same reduction made correct with __syncwarp between its reads and writes: clean.
extern "C" __global__ void selftest_warp_reduction_with_syncwarp(const float* in, float* out) {
    __shared__ float s[64];
    const unsigned t = threadIdx.x;
    s[t] = in[t];
    __syncthreads();
    if (t < 32) {
        for (unsigned d = 32; d > 0; d /= 2) {
            float v = t < d ? s[t] + s[t + d] : 0.0f;
            __syncwarp();
            if (t < d) s[t] = v;
            __syncwarp();
        }
    }
    if (t == 0) out[0] = s[0];
}

// Writes one element past the end of `out` (`<=` instead of `<`).
extern "C" __global__ void selftest_oob_global_write(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = (float)i; // BUG: one-past-the-end
}

// Thread 0 reads element -1 of a shared array.
extern "C" __global__ void selftest_negative_shared_index(float* out) {
    __shared__ float s[32];
    const int t = threadIdx.x;
    s[t] = (float)t;
    __syncthreads();
    out[t] = s[t - 1]; // BUG: negative-shared-index
}

// Copies `in` to `out`; run on an `in` that was never written.
extern "C" __global__ void selftest_copy(const float* in, float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i]; // BUG: uninitialised-read
}

// Reads past the dynamic shared memory the launch asked for.
extern "C" __global__ void selftest_dynamic_shared_overrun(float* out) {
    extern __shared__ float dyn[];
    const unsigned t = threadIdx.x;
    dyn[t] = 1.0f;
    __syncthreads();
    out[t] = dyn[t + blockDim.x]; // BUG: dynamic-overrun
}

// Copies one float past the end of `out` through memcpy, which the instrumentation does not
// see: only the guard zone's check after the launch can.
// (`bytes` comes from the host so that the compiler keeps the library call.)
extern "C" __global__ void selftest_oob_memcpy(float* out, const float* in, int n, int bytes) {
    if (threadIdx.x == 0) memcpy(out + n, in, bytes); // BUG: memcpy-past-the-end
}

// ticket[t] = the order in which thread t got here (one block).
extern "C" __global__ void selftest_arrival_order(unsigned* counter, unsigned* ticket) {
    ticket[threadIdx.x] = atomicAdd(counter, 1u);
}
