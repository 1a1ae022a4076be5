// cuda_emu.h — the CUDA shim of the CPU emulator.
//
// WHAT
//   CI machines have no GPU, so the crate's `kernels/*.cu` are also compiled as C++20 for the
//   host (g++ -x c++ -std=c++20 -O2 -include emu/cuda_emu.h) and run on the CPU. This header
//   is force-included into every such translation unit; `emu/runtime.cpp` implements the
//   scheduler behind it; build.rs (`build/emu.rs`) generates the glue; `src/emu.rs` is the
//   Rust API (feature `cuda-emu`). `DENSENET_EMU` is defined to 1, `__CUDACC__` and
//   `__CUDA_ARCH__` are NOT defined: device-only paths that must also run in the emulator
//   are written `#if defined(__CUDA_ARCH__) || defined(DENSENET_EMU)`.
//
// HOW
//   * Every CUDA thread is a fiber with its own 64 KiB stack (guard page below it; stacks are
//     pooled per worker and reused across launches). A block runs entirely on one worker OS
//     thread; blocks are handed out to a pool of workers (default: number of cores; the env
//     var DENSENET_EMU_THREADS, read at the first launch, overrides; 1 runs blocks one at a
//     time on the launching thread). The context switch is ~20 lines of x86-64 assembly
//     (callee-saved registers, rsp, MXCSR, x87 control word); other architectures fall back
//     to ucontext (much slower: swapcontext makes a syscall per switch).
//   * A fiber runs until it blocks (barrier, warp collective) or exits; then the next ready
//     fiber of the block runs (FIFO run queue). Execution between two blocking points is
//     therefore sequential, which makes races deterministic: a missing `__syncthreads` gives
//     the same wrong answer every time instead of passing by luck.
//   * `__shared__` is `thread_local constinit`: at function scope that is static storage with
//     one instance per worker OS thread; since a worker runs one block at a time with all its
//     threads as fibers, that is exactly one instance per block (also inside templates).
//     Static shared memory keeps whatever the previous block on that worker left (as on a
//     GPU, it is not zeroed).
//   * `extern __shared__ T name[]`: build.rs finds every such name (with its enclosing named
//     namespaces) and defines it in a generated TU as a TLS alias of one 227 KiB buffer
//     (`emu_dynamic_smem`), so all dynamic shared arrays of a kernel alias each other as on
//     the GPU. It is filled with 0xFF bytes (NaN as f32/f16, -1 as int) before every block, so
//     reading it before writing shows up. Launches asking for more than EMU_MAX_DYN_SMEM
//     (the H100/H200 opt-in per-block limit) fail.
//   * threadIdx is per fiber, blockIdx/blockDim/gridDim per worker; all are read-only.
//   * `__syncthreads()` counts arrivals and records the call site (file:line via
//     __builtin_FILE/__builtin_LINE default arguments). It reports, instead of hanging: a
//     barrier reached by only part of the block (seen when the other threads exit or reach a
//     barrier at a different call site), a thread exiting while others wait at a barrier or
//     reaching one after others exited, and deadlock (no fiber can run).
//   * Warp collectives (`__shfl*_sync`, `__ballot_sync`, `__any/__all_sync`, `__syncwarp`,
//     `__match_*_sync`, `__reduce_*_sync`) wait until every lane named in the mask has
//     arrived at the same call site with the same mask, then the last arriver computes
//     every lane's result. Reported: a mask without the caller's own lane, naming lanes that
//     do not exist or have exited (except for `__syncwarp`, which, as documented, waits only
//     for the non-exited lanes of its mask), lanes of one mask waiting at different call sites
//     or with different masks, a shuffle reading from a lane outside the mask, and deadlock.
//     warpSize is 32; lane = linear thread id % 32 (x fastest, as on the GPU).
//     `__activemask()` returns the lanes of the warp that have not exited (the emulator has
//     no notion of divergence), so it is only meaningful in converged code.
//   * Diagnostics are collected per launch (count + the first messages, each with kernel,
//     block, thread, file:line); the offending block is abandoned (its fibers are dropped
//     without unwinding — destructors of kernel locals do not run), other blocks go on, and
//     the launch returns EMU_ERR_DIAGNOSTICS.
//   * Atomics use std::atomic_ref (relaxed, like CUDA's); `__threadfence*` is a seq_cst
//     fence. `__half` and `__nv_bfloat16` are software types with round-to-nearest-even
//     conversions (NaN -> canonical 0x7fff, as the GPU's cvt.rn); arithmetic is done in f32
//     and rounded once, which is correctly rounded for + - * / (f32 has >= 2p+2 bits); fused
//     multiply-add rounds to odd in f64 first, so it is correctly rounded too.
//   * Checks a launch may ask for (EmuLaunchConfig::checks, emu/checker.cpp): kernel code is
//     compiled with ThreadSanitizer's access instrumentation (no TSan runtime), so every load
//     and store passes through a hook that knows the thread, the block's shared variables
//     (each registers itself, see build/emu_shared.rs), the device buffers handed to the
//     launch and their guard zones. EMU_CHECK_MEMORY reports out-of-bounds and misaligned
//     accesses and reads of device memory never written; EMU_CHECK_RACES reports shared-memory
//     accesses of different threads not ordered by a barrier (or, within a warp, a full-warp
//     __syncwarp); EMU_CHECK_SHUFFLE runs the ready threads of a block in a seeded random order.
//   * Tensor-core instructions are emulated behind the wrappers of `kernels/mma.cuh`, which
//     call the functions of the "Tensor-core instructions" section below (runtime.cpp):
//     mma.sync (tf32 m16n8k8, bf16 m16n8k16) and ldmatrix.x4 (.trans) are full-warp
//     collectives (every lane at the same call site, or a diagnostic) that gather the lanes'
//     fragments in the PTX ISA's layouts; mma adds C and the exact products in f64 and rounds
//     once to f32, and reads tf32 operands truncated to their top 19 bits, as the tensor core
//     does. Each lane's ldmatrix row is read as its own 16-byte shared-memory access (memory
//     and race checks). cp.async reads its source at issue and lands in shared memory only when
//     the issuing thread's cp.async.wait_group completes its group (or the thread exits; a
//     __syncthreads does not); until then the destination holds 0xFF bytes, and with
//     EMU_CHECK_MEMORY any access to it is reported as a missing wait.
//   * Each `extern "C" __global__ void NAME(...)` is exported as
//     `extern "C" int emu_launch_NAME(const EmuLaunchConfig*, void** args)`, where `args` is
//     the same array `cuLaunchKernel` takes (args[i] points at the i-th argument's value).
//
// LIMITS
//   * No inline PTX: tensor-core instructions and cp.async only through `kernels/mma.cuh`
//     (a new instruction needs a wrapper there and an emulated version here); no
//     textures/surfaces, no cooperative groups, no dynamic parallelism, no `__noinline__`
//     macro (it clashes with libstdc++'s `__attribute__((__noinline__))`).
//   * Tensor cores: the summation order and internal precision of the hardware's mma are
//     unspecified; the emulator's correctly rounded sum is within the error bound of any of
//     them (compare with tolerances), and subnormal operands are not flushed. cp.async copies
//     complete exactly at the wait, so a kernel that only works because a copy landed early
//     by luck is not modelled.
//   * `__shared__` variables must be constant-initialisable (`constinit`): no initialisers
//     and no user-provided constructors, which CUDA forbids as well.
//   * Fast-math intrinsics (`__expf`, `rsqrtf`, ...) are exact here; summation order differs
//     from the GPU's: compare with tolerances.
//   * The race check covers shared memory only (not global memory between blocks) and treats
//     atomics and warp shuffles as unordered; an out-of-bounds shared access that lands inside
//     another variable the block declared is seen as an access to that variable.
//   * Blocks of one launch run concurrently on several OS threads, but not all at once: a
//     block spinning on a flag set by another block may hang. One launch runs at a time
//     (launches from several host threads queue up); a kernel cannot launch kernels.
//   * An `extern __shared__` declared inside an anonymous namespace cannot be defined by the
//     generated TU (build error). The dynamic shared buffer is static TLS: every thread of a
//     process linking the emulator carries 227 KiB of zero-initialised TLS.
//   * Floating-point exceptions/rounding modes: fibers start with MXCSR 0x1F80 (round to
//     nearest, no FTZ/DAZ), unlike `-use_fast_math` GPU code (FTZ).

#pragma once

#define DENSENET_EMU 1

#if defined(DENSENET_EMU_SCAN)
// build.rs preprocesses each .cu with this macro defined and reads the entry points and the
// `extern __shared__` names from the output; nothing else matters here.
#define __global__ __emu_global__
#define __shared__ __emu_shared__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__
#define __constant__
#define __managed__
#define __grid_constant__
#define __align__(n)
#define EMU_SHARED_VAR(name)
#else

#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <stdlib.h>
#include <tuple>
#include <type_traits>
#include <utility>

// ---------------------------------------------------------------------------------------------
// C ABI shared with runtime.cpp and src/emu.rs (keep the three in sync).
extern "C" {
/// Status codes of `emu_launch_NAME`.
enum {
    EMU_OK = 0,
    EMU_ERR_DIAGNOSTICS = 1, ///< the kernel ran; `report` holds what went wrong
    EMU_ERR_CONFIG = 2,      ///< invalid grid/block/shared size or argument array
    EMU_ERR_RUNTIME = 3,     ///< the emulator itself failed (e.g. no memory for stacks)
};
#define EMU_MAX_THREADS_PER_BLOCK 1024
#define EMU_MAX_DYN_SMEM (227 * 1024)
#define EMU_REPORT_BYTES 8192
/// Filled by the runtime for every launch (diagnostics, or the reason a launch was refused).
typedef struct EmuReport {
    unsigned long long diagnostics;   ///< number of diagnostics raised by the launch (all kinds)
    unsigned long long races;         ///< of which shared-memory races (distinct site pairs)
    unsigned long long memory_errors; ///< of which invalid memory accesses (distinct sites)
    unsigned long long len;           ///< bytes used in `messages`
    char messages[EMU_REPORT_BYTES];  ///< first messages, one per line, NUL-terminated
} EmuReport;
/// Checks a launch may ask for (`EmuLaunchConfig::checks`), see emu/checker.cpp.
enum {
    EMU_CHECK_MEMORY = 1,  ///< every access inside a buffer handed to the launch, a declared
                           ///< shared variable or the thread's own stack; no read of unwritten
                           ///< device memory; natural alignment
    EMU_CHECK_RACES = 2,   ///< shared-memory accesses ordered by barriers
    EMU_CHECK_SHUFFLE = 4, ///< threads of a block run in a seeded random order
};
typedef struct EmuLaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    size_t shared_bytes; ///< dynamic shared memory per block
    size_t num_args;     ///< entries in the argument array (checked against the kernel's arity)
    EmuReport* report;   ///< may be null
    unsigned checks;     ///< EMU_CHECK_* flags
    unsigned long long seed;                ///< of EMU_CHECK_SHUFFLE
    const unsigned long long* buffers;      ///< device addresses handed to the launch (the
    size_t num_buffers;                     ///< pointer arguments), for EMU_CHECK_MEMORY
} EmuLaunchConfig;

/// Device memory for the memory check (emu/checker.cpp): `bytes` at `base`, `guard` bytes of
/// guard zone on each side (owned by the caller, never to be touched by kernels), contents
/// initialised or not.
void emu_mem_register(void* base, size_t bytes, size_t guard, int initialised);
void emu_mem_unregister(void* base);
/// The host wrote (`initialised` = 1) or poisoned (0) `bytes` at `p` inside a registered
/// buffer.
void emu_mem_mark(void* p, size_t bytes, int initialised);
}

// ---------------------------------------------------------------------------------------------
// Qualifiers.
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ thread_local constinit
#define __forceinline__ __inline__ __attribute__((always_inline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __builtin_assume(x) ((void)0)
// __restrict__ is a g++ keyword already.

// ---------------------------------------------------------------------------------------------
// Vector types (sizes and alignments as in CUDA's vector_types.h).
#define EMU_VEC(T, N, A2, A4)                                                                     \
    struct N##1 { T x; };                                                                         \
    struct __attribute__((aligned(A2))) N##2 { T x, y; };                                         \
    struct N##3 { T x, y, z; };                                                                   \
    struct __attribute__((aligned(A4))) N##4 { T x, y, z, w; };                                   \
    constexpr inline N##1 make_##N##1(T x) { return {x}; }                                        \
    constexpr inline N##2 make_##N##2(T x, T y) { return {x, y}; }                                \
    constexpr inline N##3 make_##N##3(T x, T y, T z) { return {x, y, z}; }                        \
    constexpr inline N##4 make_##N##4(T x, T y, T z, T w) { return {x, y, z, w}; }
EMU_VEC(signed char, char, 2, 4)
EMU_VEC(unsigned char, uchar, 2, 4)
EMU_VEC(short, short, 4, 8)
EMU_VEC(unsigned short, ushort, 4, 8)
EMU_VEC(int, int, 8, 16)
EMU_VEC(unsigned int, uint, 8, 16)
EMU_VEC(long long, longlong, 16, 16)
EMU_VEC(unsigned long long, ulonglong, 16, 16)
EMU_VEC(float, float, 8, 16)
EMU_VEC(double, double, 16, 16)
#undef EMU_VEC

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Runtime interface (emu/runtime.cpp).
namespace emu {
namespace detail {
/// The part of a fiber that inline code reads; `t_self` points at the running fiber's.
struct ThreadSelf {
    uint3 tid;
    unsigned linear;            ///< x + y·bx + z·bx·by
    std::uintptr_t stack_lo;    ///< the fiber's stack: [stack_lo, stack_lo + kStackBytes)
};
extern thread_local constinit ThreadSelf* t_self;
extern thread_local constinit uint3 t_block_idx;
extern thread_local constinit dim3 t_block_dim;
extern thread_local constinit dim3 t_grid_dim;
inline const uint3& thread_idx() { return t_self->tid; }
inline const uint3& block_idx() { return t_block_idx; }
inline const dim3& block_dim() { return t_block_dim; }
inline const dim3& grid_dim() { return t_grid_dim; }
} // namespace detail

/// Block barrier kinds.
enum BarrierKind : int { BAR_SYNC, BAR_COUNT, BAR_AND, BAR_OR };
/// Warp collective kinds (names in runtime.cpp's `kWarpOpNames`).
enum WarpOp : int {
    WOP_SHFL_IDX,
    WOP_SHFL_UP,
    WOP_SHFL_DOWN,
    WOP_SHFL_XOR,
    WOP_BALLOT,
    WOP_ANY,
    WOP_ALL,
    WOP_SYNCWARP,
    WOP_MATCH_ANY,
    WOP_MATCH_ALL,
    WOP_REDUCE_ADD,
    WOP_REDUCE_MIN_U,
    WOP_REDUCE_MAX_U,
    WOP_REDUCE_MIN_I,
    WOP_REDUCE_MAX_I,
    WOP_REDUCE_AND,
    WOP_REDUCE_OR,
    WOP_REDUCE_XOR,
    WOP_MMA_M16N8K8_TF32, // tensor-core collectives (full warp, see mma_m16n8k8_tf32 & co.)
    WOP_MMA_M16N8K16_BF16,
    WOP_LDMATRIX_X4,
    WOP_LDMATRIX_X4_TRANS,
};
int barrier(int kind, int pred, const char* file, int line);
std::uint64_t warp_op(int op, unsigned mask, std::uint64_t value, int param, int width,
                      const char* file, int line);
unsigned active_mask();
[[noreturn]] void trap(const char* what, const char* file, int line);

/// Runs a launch: `invoke(ctx)` is called once per CUDA thread. The `ctx_bytes` at `ctx` hold
/// the kernel's arguments, which kernel code may read (as a GPU's parameter space).
int run_launch(const char* kernel, const EmuLaunchConfig* cfg, void (*invoke)(void*), void* ctx,
               std::size_t ctx_bytes);
/// Registers a statically sized `__shared__` variable of the running block (see
/// `EMU_SHARED_VAR`).
void shared_var(const void* p, std::size_t bytes, const char* name, const char* file, int line);
/// Refuses a launch whose argument array is missing or has the wrong length.
int bad_arguments(const char* kernel, const EmuLaunchConfig* cfg, std::size_t arity);

template <class T> inline std::uint64_t to_bits64(const T& v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                  "warp collectives move values of at most 8 bytes");
    std::uint64_t u = 0;
    std::memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> inline T from_bits64(std::uint64_t u) {
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

template <class... A, std::size_t... I>
int launch_impl(void (*kernel)(A...), const char* name, const EmuLaunchConfig* cfg, void** args,
                std::index_sequence<I...>) {
    if (cfg == nullptr || cfg->num_args != sizeof...(A) || (sizeof...(A) > 0 && args == nullptr))
        return bad_arguments(name, cfg, sizeof...(A));
    using Values = std::tuple<std::remove_cvref_t<A>...>;
    // One copy of the arguments per launch; every thread gets its own by-value copy from it.
    struct Ctx {
        void (*kernel)(A...);
        Values values;
    } ctx{kernel, Values(*static_cast<std::remove_cvref_t<A>*>(args[I])...)};
    return run_launch(
        name, cfg,
        [](void* p) {
            auto* c = static_cast<Ctx*>(p);
            std::apply(c->kernel, c->values);
        },
        &ctx, sizeof ctx);
}
/// Unpacks a `cuLaunchKernel`-style argument array for `kernel` and runs it.
template <class... A>
int launch(void (*kernel)(A...), const char* name, const EmuLaunchConfig* cfg, void** args) {
    return launch_impl(kernel, name, cfg, args, std::index_sequence_for<A...>{});
}
} // namespace emu

/// Used by the TU that build.rs generates for each .cu file.
#define EMU_EXPORT_KERNEL(name)                                                                   \
    extern "C" int emu_launch_##name(const EmuLaunchConfig* cfg, void** args) {                   \
        return ::emu::launch(&name, #name, cfg, args);                                            \
    }

/// Follows every statically sized `__shared__` declaration in the copies of the sources the
/// emulator compiles (build/emu_shared.rs).
#define EMU_SHARED_VAR(name)                                                                      \
    ::emu::shared_var(&(name), sizeof(name), #name, __builtin_FILE(), __builtin_LINE());

#define threadIdx (::emu::detail::thread_idx())
#define blockIdx (::emu::detail::block_idx())
#define blockDim (::emu::detail::block_dim())
#define gridDim (::emu::detail::grid_dim())

// ---------------------------------------------------------------------------------------------
// Synchronisation.
#define EMU_SITE const char *emu_file = __builtin_FILE(), int emu_line = __builtin_LINE()
#define EMU_COMPILER_FENCE() asm volatile("" ::: "memory")

inline void __syncthreads(EMU_SITE) {
    EMU_COMPILER_FENCE();
    ::emu::barrier(::emu::BAR_SYNC, 0, emu_file, emu_line);
    EMU_COMPILER_FENCE();
}
inline int __syncthreads_count(int pred, EMU_SITE) {
    EMU_COMPILER_FENCE();
    int r = ::emu::barrier(::emu::BAR_COUNT, pred, emu_file, emu_line);
    EMU_COMPILER_FENCE();
    return r;
}
inline int __syncthreads_and(int pred, EMU_SITE) {
    EMU_COMPILER_FENCE();
    int r = ::emu::barrier(::emu::BAR_AND, pred, emu_file, emu_line);
    EMU_COMPILER_FENCE();
    return r;
}
inline int __syncthreads_or(int pred, EMU_SITE) {
    EMU_COMPILER_FENCE();
    int r = ::emu::barrier(::emu::BAR_OR, pred, emu_file, emu_line);
    EMU_COMPILER_FENCE();
    return r;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, EMU_SITE) {
    EMU_COMPILER_FENCE();
    ::emu::warp_op(::emu::WOP_SYNCWARP, mask, 0, 0, 32, emu_file, emu_line);
    EMU_COMPILER_FENCE();
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __nanosleep(unsigned) {}
[[noreturn]] inline void __trap(EMU_SITE) { ::emu::trap("__trap()", emu_file, emu_line); }
[[noreturn]] inline void __brkpt(EMU_SITE) { ::emu::trap("__brkpt()", emu_file, emu_line); }
inline long long clock64() {
#if defined(__x86_64__)
    return (long long)__builtin_ia32_rdtsc();
#else
    return 0;
#endif
}

// ---------------------------------------------------------------------------------------------
// Warp collectives.
template <class T> inline T emu_warp_value(int op, unsigned mask, T v, int param, int width,
                                           const char* file, int line) {
    EMU_COMPILER_FENCE();
    T r = ::emu::from_bits64<T>(
        ::emu::warp_op(op, mask, ::emu::to_bits64(v), param, width, file, line));
    EMU_COMPILER_FENCE();
    return r;
}
template <class T> inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
                                        EMU_SITE) {
    return emu_warp_value(::emu::WOP_SHFL_IDX, mask, var, src_lane, width, emu_file, emu_line);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T var, unsigned delta,
                                           int width = warpSize, EMU_SITE) {
    return emu_warp_value(::emu::WOP_SHFL_UP, mask, var, (int)delta, width, emu_file, emu_line);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T var, unsigned delta,
                                             int width = warpSize, EMU_SITE) {
    return emu_warp_value(::emu::WOP_SHFL_DOWN, mask, var, (int)delta, width, emu_file,
                          emu_line);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask,
                                            int width = warpSize, EMU_SITE) {
    return emu_warp_value(::emu::WOP_SHFL_XOR, mask, var, lane_mask, width, emu_file, emu_line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, EMU_SITE) {
    return (unsigned)emu_warp_value<std::uint64_t>(::emu::WOP_BALLOT, mask, pred != 0, 0, 32,
                                                   emu_file, emu_line);
}
inline int __any_sync(unsigned mask, int pred, EMU_SITE) {
    return (int)emu_warp_value<std::uint64_t>(::emu::WOP_ANY, mask, pred != 0, 0, 32, emu_file,
                                              emu_line);
}
inline int __all_sync(unsigned mask, int pred, EMU_SITE) {
    return (int)emu_warp_value<std::uint64_t>(::emu::WOP_ALL, mask, pred != 0, 0, 32, emu_file,
                                              emu_line);
}
template <class T> inline unsigned __match_any_sync(unsigned mask, T value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_MATCH_ANY, mask, ::emu::to_bits64(value), 0, 32,
                                    emu_file, emu_line);
}
template <class T> inline unsigned __match_all_sync(unsigned mask, T value, int* pred, EMU_SITE) {
    unsigned r = (unsigned)::emu::warp_op(::emu::WOP_MATCH_ALL, mask, ::emu::to_bits64(value), 0,
                                          32, emu_file, emu_line);
    *pred = r != 0;
    return r;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_ADD, mask, value, 0, 32, emu_file, emu_line);
}
inline int __reduce_add_sync(unsigned mask, int value, EMU_SITE) {
    return (int)::emu::warp_op(::emu::WOP_REDUCE_ADD, mask, (unsigned)value, 0, 32, emu_file,
                               emu_line);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_MIN_U, mask, value, 0, 32, emu_file,
                                    emu_line);
}
inline int __reduce_min_sync(unsigned mask, int value, EMU_SITE) {
    return (int)::emu::warp_op(::emu::WOP_REDUCE_MIN_I, mask, (unsigned)value, 0, 32, emu_file,
                               emu_line);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_MAX_U, mask, value, 0, 32, emu_file,
                                    emu_line);
}
inline int __reduce_max_sync(unsigned mask, int value, EMU_SITE) {
    return (int)::emu::warp_op(::emu::WOP_REDUCE_MAX_I, mask, (unsigned)value, 0, 32, emu_file,
                               emu_line);
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_AND, mask, value, 0, 32, emu_file, emu_line);
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_OR, mask, value, 0, 32, emu_file, emu_line);
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned value, EMU_SITE) {
    return (unsigned)::emu::warp_op(::emu::WOP_REDUCE_XOR, mask, value, 0, 32, emu_file, emu_line);
}
inline unsigned __activemask() { return ::emu::active_mask(); }

// ---------------------------------------------------------------------------------------------
// Integer and float intrinsics.
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
constexpr std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
constexpr std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}

inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero((unsigned)x); }
inline int __clzll(long long x) { return std::countl_zero((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    return __builtin_bswap32(x);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((std::uint64_t)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((std::int64_t)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return powf(10.0f, x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline void __sincosf(float x, float* s, float* c) { *s = sinf(x), *c = cosf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
inline unsigned __float2uint_rz(float x) { return (unsigned)x; }
inline float __int2float_rn(int x) { return (float)x; }
inline float __uint2float_rn(unsigned x) { return (float)x; }

// Cache-hint loads and stores are plain accesses.
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---------------------------------------------------------------------------------------------
// Software __half and __nv_bfloat16.
namespace emu {
/// f32 -> IEEE binary16, round to nearest even; NaN -> 0x7fff.
inline std::uint16_t f32_to_f16_bits(float f) {
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    std::uint32_t sign = (x >> 16) & 0x8000u;
    std::uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;                 // NaN
    if (ax >= 0x477ff000u) return (std::uint16_t)(sign | 0x7c00u); // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                              // normal half (>= 2^-14)
        std::uint32_t r = ax - 0x38000000u;               // rebias exponent 127 -> 15
        r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;        // round 23 -> 10 mantissa bits
        return (std::uint16_t)(sign | r);
    }
    // Subnormal half: units of 2^-24. |f| = mant * 2^(e - 150).
    std::uint32_t e = ax >> 23;
    if (e < 102) return (std::uint16_t)sign; // < 2^-25: rounds to zero
    std::uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    std::uint32_t shift = 126 - e; // 14..24
    std::uint32_t q = mant >> shift;
    std::uint32_t rem = mant & ((1u << shift) - 1u);
    std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u))) ++q; // may carry into the smallest normal
    return (std::uint16_t)(sign | q);
}
/// IEEE binary16 -> f32 (exact).
inline float f16_bits_to_f32(std::uint16_t h) {
    std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}
/// f32 -> bfloat16, round to nearest even; NaN -> 0x7fff.
inline std::uint16_t f32_to_bf16_bits(float f) {
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    return (std::uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_f32(std::uint16_t b) {
    return std::bit_cast<float>((std::uint32_t)b << 16);
}
/// f64 -> a binary format with MANT stored mantissa bits and exponent bias BIAS (binary16:
/// 10/15, bfloat16: 7/127), rounding once to nearest even; NaN -> 0x7fff.
template <int MANT, int BIAS> inline std::uint16_t f64_to_small_bits(double d) {
    constexpr int kMaxField = 2 * BIAS + 1; // all-ones exponent field
    std::uint16_t sign = std::signbit(d) ? 0x8000u : 0u;
    if (std::isnan(d)) return 0x7fffu;
    double a = std::fabs(d);
    if (std::isinf(a)) return (std::uint16_t)(sign | (kMaxField << MANT));
    if (a == 0.0) return sign;
    int e;
    std::frexp(a, &e);                      // a = m * 2^e, m in [0.5, 1)
    int E = e - 1 > 1 - BIAS ? e - 1 : 1 - BIAS; // exponent of the result's quantum grid
    double scaled = std::ldexp(a, MANT - E); // exact; in [0, 2^(MANT+1))
    double fl = std::floor(scaled);
    double frac = scaled - fl;
    if (frac > 0.5 || (frac == 0.5 && std::fmod(fl, 2.0) != 0.0)) fl += 1.0;
    std::uint64_t n = (std::uint64_t)fl;
    if (n == (std::uint64_t{1} << (MANT + 1))) n >>= 1, ++E;
    int field = (n >> MANT) ? E + BIAS : 0;
    if (field >= kMaxField) return (std::uint16_t)(sign | (kMaxField << MANT));
    return (std::uint16_t)(sign | (field << MANT) | (n & ((std::uint64_t{1} << MANT) - 1)));
}
/// a*b + c for a, b, c with at most 26 significant bits, rounded to odd in f64: rounding that
/// once more to a format with at most 51 bits is the correctly rounded fused result
/// (Boldo & Melquiond), unlike fmaf followed by a second rounding.
inline double fma_round_to_odd(double a, double b, double c) {
    double p = a * b; // exact
    double s = p + c;
    double bb = s - p;
    double e = (p - (s - bb)) + (c - bb); // p + c == s + e exactly (TwoSum)
    if (e == 0.0 || std::isinf(s)) return s;
    double t = std::signbit(e) != std::signbit(s) ? std::nextafter(s, 0.0) : s; // truncated
    if ((std::bit_cast<std::uint64_t>(t) & 1u) == 0)
        t = std::nextafter(t, std::signbit(t) ? -HUGE_VAL : HUGE_VAL);
    return t;
}
} // namespace emu

struct __half_raw {
    unsigned short x;
};
struct __nv_bfloat16_raw {
    unsigned short x;
};

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(::emu::f32_to_f16_bits(f)) {}
    __half(double f) : __x(::emu::f64_to_small_bits<10, 15>(f)) {}
    __half(int i) : __half((double)i) {}
    __half(unsigned int i) : __half((double)i) {}
    operator float() const { return ::emu::f16_bits_to_f32(__x); }
    constexpr operator __half_raw() const { return {__x}; }
};
struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(::emu::f32_to_bf16_bits(f)) {}
    __nv_bfloat16(double f) : __x(::emu::f64_to_small_bits<7, 127>(f)) {}
    __nv_bfloat16(int i) : __nv_bfloat16((double)i) {}
    __nv_bfloat16(unsigned int i) : __nv_bfloat16((double)i) {}
    operator float() const { return ::emu::bf16_bits_to_f32(__x); }
    constexpr operator __nv_bfloat16_raw() const { return {__x}; }
};
struct __attribute__((aligned(4))) __half2 {
    __half x, y;
};
struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return (float)h; }
inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short s) { return __half_raw{(unsigned short)s}; }
inline short __half_as_short(__half h) { return (short)h.__x; }
inline __half __int2half_rn(int i) { return __half(i); }
inline int __half2int_rz(__half h) { return (int)(float)h; }
inline int __half2int_rn(__half h) { return (int)nearbyintf((float)h); }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline __half2 __half2half2(__half a) { return {a, a}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline float2 __half22float2(__half2 h) { return {(float)h.x, (float)h.y}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return (float)h.x; }
inline float __high2float(__half2 h) { return (float)h.y; }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
inline float __bfloat162float(__nv_bfloat16 b) { return (float)b; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __short_as_bfloat16(short s) {
    return __nv_bfloat16_raw{(unsigned short)s};
}
inline short __bfloat16_as_short(__nv_bfloat16 b) { return (short)b.__x; }
inline __nv_bfloat16 __int2bfloat16_rn(int i) { return __nv_bfloat16(i); }
inline int __bfloat162int_rz(__nv_bfloat16 b) { return (int)(float)b; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__nv_bfloat16(f), __nv_bfloat16(f)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return {__nv_bfloat16(a), __nv_bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) {
    return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {(float)b.x, (float)b.y}; }
inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 b) { return b.x; }
inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 b) { return b.y; }

// Arithmetic in f32, rounded once (exact for + - * /, see the header comment).
#define EMU_SMALL_FLOAT_OPS(H, H2)                                                                \
    inline H operator+(H a, H b) { return H((float)a + (float)b); }                               \
    inline H operator-(H a, H b) { return H((float)a - (float)b); }                               \
    inline H operator*(H a, H b) { return H((float)a * (float)b); }                               \
    inline H operator/(H a, H b) { return H((float)a / (float)b); }                               \
    inline H operator-(H a) {                                                                     \
        H r = a;                                                                                  \
        r.__x ^= 0x8000u;                                                                         \
        return r;                                                                                 \
    }                                                                                             \
    inline H operator+(H a) { return a; }                                                         \
    inline H& operator+=(H& a, H b) { return a = a + b; }                                         \
    inline H& operator-=(H& a, H b) { return a = a - b; }                                         \
    inline H& operator*=(H& a, H b) { return a = a * b; }                                         \
    inline H& operator/=(H& a, H b) { return a = a / b; }                                         \
    inline bool operator==(H a, H b) { return (float)a == (float)b; }                             \
    inline bool operator!=(H a, H b) { return (float)a != (float)b; }                             \
    inline bool operator<(H a, H b) { return (float)a < (float)b; }                               \
    inline bool operator<=(H a, H b) { return (float)a <= (float)b; }                             \
    inline bool operator>(H a, H b) { return (float)a > (float)b; }                               \
    inline bool operator>=(H a, H b) { return (float)a >= (float)b; }                             \
    inline H __hadd(H a, H b) { return a + b; }                                                   \
    inline H __hsub(H a, H b) { return a - b; }                                                   \
    inline H __hmul(H a, H b) { return a * b; }                                                   \
    inline H __hdiv(H a, H b) { return a / b; }                                                   \
    inline H __hfma(H a, H b, H c) {                                                              \
        return H(::emu::fma_round_to_odd((float)a, (float)b, (float)c));                          \
    }                                                                                             \
    inline H __hneg(H a) { return -a; }                                                           \
    inline H __habs(H a) {                                                                        \
        H r = a;                                                                                  \
        r.__x &= 0x7fffu;                                                                         \
        return r;                                                                                 \
    }                                                                                             \
    inline H __hmax(H a, H b) { return H(fmaxf((float)a, (float)b)); }                            \
    inline H __hmin(H a, H b) { return H(fminf((float)a, (float)b)); }                            \
    inline bool __heq(H a, H b) { return a == b; }                                                \
    inline bool __hne(H a, H b) { return a != b; }                                                \
    inline bool __hlt(H a, H b) { return a < b; }                                                 \
    inline bool __hle(H a, H b) { return a <= b; }                                                \
    inline bool __hgt(H a, H b) { return a > b; }                                                 \
    inline bool __hge(H a, H b) { return a >= b; }                                                \
    inline bool __hisnan(H a) { return std::isnan((float)a); }                                    \
    inline int __hisinf(H a) { return std::isinf((float)a) ? ((float)a > 0 ? 1 : -1) : 0; }       \
    inline H hsqrt(H a) { return H(sqrtf((float)a)); }                                            \
    inline H hexp(H a) { return H(expf((float)a)); }                                              \
    inline H hlog(H a) { return H(logf((float)a)); }                                              \
    inline H2 __hadd2(H2 a, H2 b) { return {a.x + b.x, a.y + b.y}; }                              \
    inline H2 __hsub2(H2 a, H2 b) { return {a.x - b.x, a.y - b.y}; }                              \
    inline H2 __hmul2(H2 a, H2 b) { return {a.x * b.x, a.y * b.y}; }                              \
    inline H2 __h2div(H2 a, H2 b) { return {a.x / b.x, a.y / b.y}; }                              \
    inline H2 __hfma2(H2 a, H2 b, H2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; } \
    inline H2 __hneg2(H2 a) { return {-a.x, -a.y}; }                                              \
    inline H2 __hmax2(H2 a, H2 b) { return {__hmax(a.x, b.x), __hmax(a.y, b.y)}; }                \
    inline H2 __hmin2(H2 a, H2 b) { return {__hmin(a.x, b.x), __hmin(a.y, b.y)}; }
EMU_SMALL_FLOAT_OPS(__half, __half2)
EMU_SMALL_FLOAT_OPS(__nv_bfloat16, __nv_bfloat162)
#undef EMU_SMALL_FLOAT_OPS

// ---------------------------------------------------------------------------------------------
// Tensor-core instructions, behind the wrappers of kernels/mma.cuh (runtime.cpp).
namespace emu {
/// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 and
/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32: full-warp collectives. Every lane
/// hands in its fragments (PTX ISA layouts, see runtime.cpp) and gets its part of D.
void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                      const char* file, int line);
void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                       const char* file, int line);
/// ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16: a full-warp collective; `row` is this
/// lane's row address (checked as a 16-byte shared-memory read of this thread).
void ldmatrix_x4(unsigned r[4], const void* row, bool trans, const char* file, int line);
/// cp.async of `bytes` (4, 8 or 16) from global to shared memory, deferred until a
/// cp_async_wait completes its group; until then the destination holds 0xFF bytes.
void cp_async(void* smem, const void* gmem, int bytes);
/// cp.async.commit_group / cp.async.wait_group n, for the calling thread.
void cp_async_commit();
void cp_async_wait(int n);

/// f32 -> tf32 as cvt.rna.tf32.f32 does it: round to nearest, ties away from zero, keeping
/// the top 19 bits. ptxas lowers the instruction to "add 0x1000 unless |x| is inf or NaN,
/// then clear the low 13 bits" (so a NaN keeps its sign and upper payload bits, and one whose
/// payload lies only in the low 13 bits becomes inf); this is that.
inline std::uint32_t f32_to_tf32_bits(float f) {
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) x |= 0x00400000u; // a NaN stays one once truncated
    else if ((x & 0x7fffffffu) < 0x7f800000u) x += 0x1000u;
    return x & 0xffffe000u;
}
} // namespace emu

// ---------------------------------------------------------------------------------------------
// Atomics (relaxed, like CUDA's; device-, block- and system-scope variants are the same here).
namespace emu {
template <class T> inline std::atomic_ref<T> aref(T* p) { return std::atomic_ref<T>(*p); }
template <class T, class F> inline T atomic_update(T* p, F f) {
    auto a = aref(p);
    T old = a.load(std::memory_order_relaxed);
    while (!a.compare_exchange_weak(old, f(old), std::memory_order_relaxed)) {
    }
    return old;
}
/// 16-bit float atomics go through a 16-bit compare-exchange on the raw bits.
template <class H, class F> inline H atomic_update16(H* p, F f) {
    auto* u = reinterpret_cast<unsigned short*>(p);
    unsigned short old = atomic_update(u, [&](unsigned short bits) {
        H h;
        h.__x = bits;
        return f(h).__x;
    });
    H r;
    r.__x = old;
    return r;
}
} // namespace emu

#define EMU_ATOMIC_ALL_SCOPES(RET, NAME, ARGS, CALL)                                             \
    inline RET NAME ARGS { return CALL; }                                                         \
    inline RET NAME##_block ARGS { return CALL; }                                                 \
    inline RET NAME##_system ARGS { return CALL; }
#define EMU_ATOMIC_FETCH(T, NAME, OP)                                                             \
    EMU_ATOMIC_ALL_SCOPES(T, NAME, (T * p, T v), ::emu::aref(p).OP(v, std::memory_order_relaxed))
EMU_ATOMIC_FETCH(int, atomicAdd, fetch_add)
EMU_ATOMIC_FETCH(unsigned int, atomicAdd, fetch_add)
EMU_ATOMIC_FETCH(unsigned long long, atomicAdd, fetch_add)
EMU_ATOMIC_FETCH(float, atomicAdd, fetch_add)
EMU_ATOMIC_FETCH(double, atomicAdd, fetch_add)
EMU_ATOMIC_FETCH(int, atomicSub, fetch_sub)
EMU_ATOMIC_FETCH(unsigned int, atomicSub, fetch_sub)
EMU_ATOMIC_FETCH(int, atomicAnd, fetch_and)
EMU_ATOMIC_FETCH(unsigned int, atomicAnd, fetch_and)
EMU_ATOMIC_FETCH(unsigned long long, atomicAnd, fetch_and)
EMU_ATOMIC_FETCH(int, atomicOr, fetch_or)
EMU_ATOMIC_FETCH(unsigned int, atomicOr, fetch_or)
EMU_ATOMIC_FETCH(unsigned long long, atomicOr, fetch_or)
EMU_ATOMIC_FETCH(int, atomicXor, fetch_xor)
EMU_ATOMIC_FETCH(unsigned int, atomicXor, fetch_xor)
EMU_ATOMIC_FETCH(unsigned long long, atomicXor, fetch_xor)
EMU_ATOMIC_FETCH(int, atomicExch, exchange)
EMU_ATOMIC_FETCH(unsigned int, atomicExch, exchange)
EMU_ATOMIC_FETCH(unsigned long long, atomicExch, exchange)
EMU_ATOMIC_FETCH(float, atomicExch, exchange)
#undef EMU_ATOMIC_FETCH
#define EMU_ATOMIC_MINMAX(T)                                                                      \
    EMU_ATOMIC_ALL_SCOPES(T, atomicMin, (T * p, T v),                                             \
                          ::emu::atomic_update(p, [v](T o) { return v < o ? v : o; }))            \
    EMU_ATOMIC_ALL_SCOPES(T, atomicMax, (T * p, T v),                                             \
                          ::emu::atomic_update(p, [v](T o) { return v > o ? v : o; }))
EMU_ATOMIC_MINMAX(int)
EMU_ATOMIC_MINMAX(unsigned int)
EMU_ATOMIC_MINMAX(long long)
EMU_ATOMIC_MINMAX(unsigned long long)
#undef EMU_ATOMIC_MINMAX
#define EMU_ATOMIC_CAS(T)                                                                         \
    EMU_ATOMIC_ALL_SCOPES(T, atomicCAS, (T * p, T compare, T v), ([&] {                           \
                              T expected = compare;                                               \
                              ::emu::aref(p).compare_exchange_strong(expected, v,                 \
                                                                     std::memory_order_relaxed);  \
                              return expected;                                                    \
                          }()))
EMU_ATOMIC_CAS(int)
EMU_ATOMIC_CAS(unsigned int)
EMU_ATOMIC_CAS(unsigned long long)
EMU_ATOMIC_CAS(unsigned short)
#undef EMU_ATOMIC_CAS
EMU_ATOMIC_ALL_SCOPES(unsigned int, atomicInc, (unsigned int* p, unsigned int limit),
                      ::emu::atomic_update(p, [limit](unsigned o) { return o >= limit ? 0u : o + 1; }))
EMU_ATOMIC_ALL_SCOPES(unsigned int, atomicDec, (unsigned int* p, unsigned int limit),
                      ::emu::atomic_update(p, [limit](unsigned o) {
                          return (o == 0 || o > limit) ? limit : o - 1;
                      }))
EMU_ATOMIC_ALL_SCOPES(__half, atomicAdd, (__half * p, __half v),
                      ::emu::atomic_update16(p, [v](__half o) { return o + v; }))
EMU_ATOMIC_ALL_SCOPES(__nv_bfloat16, atomicAdd, (__nv_bfloat16 * p, __nv_bfloat16 v),
                      ::emu::atomic_update16(p, [v](__nv_bfloat16 o) { return o + v; }))
#undef EMU_ATOMIC_ALL_SCOPES

#endif // DENSENET_EMU_SCAN
