// checker.h — what the scheduler (runtime.cpp) and the memory and race checks (checker.cpp)
// tell each other. Internal to the emulator; kernels never include it.
#pragma once

#include "cuda_emu.h"

#include <cstdarg>
#include <cstdint>
#include <string>

namespace emu {
/// Stack of each fiber (runtime.cpp allocates them; the checks treat the running fiber's own
/// stack as its local memory).
inline constexpr std::size_t kStackBytes = 64 * 1024;

namespace check {
/// The checks' state for one launch (null when the launch asked for none).
struct LaunchChecks;

/// Called by the launching thread before any block runs. `params` is the kernel-argument
/// storage kernel code may read. Returns null when `cfg.checks` asks for no check.
LaunchChecks* begin_launch(const char* kernel, const EmuLaunchConfig& cfg, const void* params,
                           std::size_t params_bytes);
/// After every block: checks the guard zones of the launch's buffers (writes the
/// instrumentation could not see) and frees the state. Returns the findings' messages.
std::string end_launch(LaunchChecks* launch, std::uint64_t& memory_errors);

/// On the worker thread, before the block's first fiber runs / after its last.
void begin_block(LaunchChecks* launch, unsigned nthreads, std::size_t dynamic_smem);
void end_block();
/// A `__syncthreads` was completed by the whole block.
void barrier_done();
/// A `__syncwarp(mask)` completed for `warp`, whose non-exited lanes are `live`.
void syncwarp_done(unsigned warp, unsigned mask, unsigned live);
/// An access that an emulated instruction makes for the running thread (an ldmatrix row, the
/// source or destination of a cp.async), checked like the kernel's own accesses with `pc` as
/// its site; with `shared` the address must lie in shared memory.
void instruction_access(const void* p, std::size_t n, bool write, const void* pc, bool shared);
/// Bytes [p, p + n) of shared memory are the destination of a cp.async that has not completed
/// (`pending`), or it has completed.
void async_pending(const void* p, std::size_t n, bool pending);
} // namespace check

namespace detail {
/// Finding kinds for `report_finding`.
enum Finding : int { FINDING_RACE, FINDING_MEMORY };
/// Records a finding of the checks about the running thread (runtime.cpp): counted and
/// reported like every diagnostic, but the block goes on.
void report_finding(int kind, const std::string& body);
/// printf into a std::string (at most 1023 characters), for messages (runtime.cpp).
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string vformat(const char* fmt, va_list ap);
} // namespace detail
} // namespace emu
