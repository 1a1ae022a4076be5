// checker.cpp — the emulator's memory check (memcheck/initcheck) and shared-memory race check.
//
// Kernel code is compiled with GCC's ThreadSanitizer instrumentation but without its runtime
// (build/emu.rs): every load and store of kernel code calls a `__tsan_readN` / `__tsan_writeN`
// hook with its address, and atomics call `__tsan_atomicN_*`. This file implements those
// hooks. With no check asked for, a hook returns after one thread-local load.
//
// MEMORY (EMU_CHECK_MEMORY). Every access must lie wholly inside one of:
//   * the running thread's own stack (its local memory),
//   * a `__shared__` variable the block has declared (each registers its address and size when
//     a thread reaches the declaration, see build/emu_shared.rs) or the dynamic shared memory
//     the launch asked for,
//   * a device buffer handed to the launch (`EmuLaunchConfig::buffers`: the pointer arguments;
//     buffers are registered by src/emu.rs with guard zones on both sides),
//   * the kernel's arguments, or the static data of the loaded program (constant tables).
// Anything else is reported with the access's file:line: past the end of (or before) a
// buffer, a buffer not handed to the launch, beyond a shared variable or the dynamic shared
// memory, any other address. Reads of device bytes that neither the host nor a kernel has
// written (fresh allocations are poisoned, see src/emu.rs) are reported as uninitialised, and
// 2/4/8/16-byte accesses must be naturally aligned, as on the GPU. After the launch the guard
// zones are compared with their fill pattern, which catches writes the instrumentation
// cannot see (e.g. by library code).
//
// RACES (EMU_CHECK_RACES). Fibers of a block run one at a time, so a race never shows as a
// wrong result by chance; instead every byte of shared memory remembers its last writer and
// its readers with the block's barrier epoch (the number of `__syncthreads` completed so far)
// and the warp's `__syncwarp` epoch. Two accesses by different threads, at least one a write,
// in the same barrier epoch are a race unless both threads are in one warp and a full-warp
// `__syncwarp` came between them. Warp-synchronous code that relies on lockstep execution
// without `__syncwarp` is therefore reported, as it is a race on Volta and later. Atomics are
// bounds-checked but take no part in race detection. Each distinct pair of sites is reported
// once per launch.
//
// PENDING COPIES (EMU_CHECK_MEMORY). Shared bytes that an emulated cp.async will fill are
// marked pending from the copy's issue until the issuing thread's cp.async.wait_group
// completes it; any access to them in between (by any thread: a __syncthreads does not
// complete copies) is reported, as it reads the 0xFF poison instead of the data.
//
// Emulated instructions (ldmatrix, cp.async, runtime.cpp) check their accesses through
// `check::instruction_access`, as the running thread and with the instruction's site.
//
// Sites are written `{pc:0x...}` (the return address of the hook, inside the kernel); src/emu.rs
// turns them into file:line from the program's line tables.
#include "checker.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <link.h>

extern "C" {
extern thread_local constinit unsigned char emu_dynamic_smem[];
}

namespace emu {
namespace {

using Addr = std::uintptr_t;

constexpr std::uint8_t kGuardFill = 0xfd; // guard-zone bytes, written by src/emu.rs
/// How far from a shared variable an invalid access is reported as an index out of its bounds.
constexpr Addr kNearShared = 4096;

using detail::format;

std::string site(const void* pc) { return format("{pc:%p}", pc); }

// ---- device memory ------------------------------------------------------------------------

/// A registered device buffer: `bytes` at `lo`, `guard` bytes of guard zone on each side, and
/// one bit per byte saying whether it has been written.
struct Buffer {
    Addr lo = 0;
    std::size_t bytes = 0;
    std::size_t guard = 0;
    std::vector<std::uint64_t> written;
    /// A reported access has touched a guard zone in this launch (its damage is no news).
    std::atomic<bool> guard_hit{false};

    Addr hi() const { return lo + bytes; }
    bool holds(Addr a) const { return a >= lo - guard && a < lo + bytes + guard; }

    /// Marks (or clears) bytes [a, a + n) of the buffer; blocks of a launch run on several
    /// OS threads, hence the atomic updates.
    void mark(Addr a, std::size_t n, bool on) {
        std::size_t i = a - lo;
        const std::size_t end = i + n;
        auto bit = [&](std::size_t k) {
            std::atomic_ref<std::uint64_t> word(written[k / 64]);
            std::uint64_t m = std::uint64_t{1} << (k % 64);
            if (on)
                word.fetch_or(m, std::memory_order_relaxed);
            else
                word.fetch_and(~m, std::memory_order_relaxed);
        };
        for (; i < end && i % 64; ++i) bit(i);
        // Whole words (a large upload): every byte of them is this range's.
        for (; i + 64 <= end; i += 64)
            std::atomic_ref<std::uint64_t>(written[i / 64]).store(on ? ~std::uint64_t{0} : 0, std::memory_order_relaxed);
        for (; i < end; ++i) bit(i);
    }
    /// Offset of the first unwritten byte of [a, a + n), or -1.
    long unwritten(Addr a, std::size_t n) const {
        for (std::size_t i = a - lo, end = a - lo + n; i < end; ++i) {
            std::uint64_t w = std::atomic_ref<std::uint64_t>(const_cast<std::uint64_t&>(written[i / 64]))
                                  .load(std::memory_order_relaxed);
            if (!(w >> (i % 64) & 1u)) return (long)i;
        }
        return -1;
    }
};

std::mutex g_buffers_mu;
std::map<Addr, std::unique_ptr<Buffer>> g_buffers; // by `lo`

/// The registered buffer whose extent (guard zones included) holds `a`; caller holds the lock.
Buffer* find_buffer_locked(Addr a) {
    auto it = g_buffers.upper_bound(a + (1u << 20)); // guards are far below 1 MiB
    while (it != g_buffers.begin()) {
        --it;
        if (it->second->holds(a)) return it->second.get();
        if (it->second->lo + it->second->bytes + (1u << 20) < a) break;
    }
    return nullptr;
}

/// Address ranges of the loaded program's segments (static data, constant tables).
std::vector<std::pair<Addr, Addr>> static_segments() {
    std::vector<std::pair<Addr, Addr>> v;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* p) {
            auto* out = static_cast<std::vector<std::pair<Addr, Addr>>*>(p);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type == PT_LOAD)
                    out->emplace_back(info->dlpi_addr + ph.p_vaddr, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
            }
            return 0;
        },
        &v);
    return v;
}

} // namespace

// ---- launches -----------------------------------------------------------------------------

namespace check {
struct LaunchChecks {
    const char* kernel = nullptr;
    unsigned flags = 0;
    std::vector<Buffer*> handed;
    Addr params_lo = 0, params_hi = 0;
    std::vector<std::pair<Addr, Addr>> statics;
    std::mutex mu; // guards `seen`
    std::set<std::tuple<int, const void*, const void*>> seen;

    /// Whether the finding (kind, sites) is new in this launch.
    bool first(int kind, const void* a, const void* b) {
        std::lock_guard<std::mutex> lk(mu);
        return seen.emplace(kind, std::min(a, b), std::max(a, b)).second;
    }
};
} // namespace check

namespace {

/// A byte of shared memory, for the race check. `gen` says which block's it is (shadows are
/// reused across the blocks a worker runs); epochs start at 1, so 0 means "none".
struct Cell {
    std::uint32_t gen = 0;
    std::uint32_t w_epoch = 0, w_wepoch = 0; // barrier / warp epoch of the last write
    std::uint32_t r_epoch = 0, r_wepoch = 0; // of the reads since (largest warp epoch)
    std::uint16_t w_tid = 0, r_tid = 0;      // last writer; reader (kMany: several)
    std::uint16_t r_warp = 0;                // readers' warp (kMany: several)
    bool pending = false;                    // a cp.async will write it (memory check)
    const void* w_pc = nullptr;
    const void* r_pc = nullptr;
};
constexpr std::uint16_t kMany = 0xffff;

struct SharedVar {
    Addr lo = 0, hi = 0;
    const char* name = nullptr;
    const char* file = nullptr; // null for the dynamic shared memory
    int line = 0;
    Cell* cells = nullptr;
};

/// Per worker thread: the block it runs.
struct BlockState {
    check::LaunchChecks* launch = nullptr;
    std::uint32_t gen = 0;
    std::uint32_t epoch = 1;
    std::vector<std::uint32_t> warp_epoch;
    std::vector<SharedVar> vars;
    std::unordered_map<Addr, std::vector<Cell>> shadows; // by variable address, kept
    std::size_t dyn_bytes = 0; // dynamic shared memory the launch asked for

    Cell* shadow(Addr lo, std::size_t bytes) {
        std::vector<Cell>& v = shadows[lo];
        if (v.size() < bytes) v.resize(bytes);
        return v.data();
    }
};

thread_local constinit unsigned t_flags = 0; // of the block this worker runs; 0: no checks
thread_local constinit BlockState* t_block = nullptr;
thread_local std::unique_ptr<BlockState> t_block_owner;

const detail::ThreadSelf& self() { return *detail::t_self; }

std::string thread_name(unsigned linear) {
    const dim3& b = detail::t_block_dim;
    return format("thread (%u,%u,%u)", linear % b.x, linear / b.x % b.y, linear / (b.x * b.y));
}

const char* kind_name(bool write) { return write ? "write" : "read"; }

void memory_finding(const void* pc, const std::string& what) {
    BlockState& s = *t_block;
    if (s.launch->first(detail::FINDING_MEMORY, pc, nullptr))
        detail::report_finding(detail::FINDING_MEMORY, what + " at " + site(pc));
}

SharedVar* find_var(BlockState& s, Addr a) {
    for (SharedVar& v : s.vars)
        if (a >= v.lo && a < v.hi) return &v;
    return nullptr;
}

std::string describe(const SharedVar& v) {
    if (!v.file) return format("the %zu bytes of dynamic shared memory", (std::size_t)(v.hi - v.lo));
    return format("`%s` (%zu bytes, declared at %s:%d)", v.name, (std::size_t)(v.hi - v.lo), v.file, v.line);
}

void race(BlockState& s, const SharedVar& v, Addr a, const char* what, unsigned other, bool many,
          const void* other_pc, const char* other_kind, const void* pc, const char* kind) {
    if (!s.launch->first(detail::FINDING_RACE, other_pc, pc)) return;
    std::string who = many ? std::string("other threads") : thread_name(other);
    detail::report_finding(
        detail::FINDING_RACE,
        format("shared-memory race (%s) on byte %zu of ", what, (std::size_t)(a - v.lo)) + describe(v) + ": " +
            who + " " + other_kind + " at " + site(other_pc) + ", this thread " + kind + " at " + site(pc) +
            " with no barrier in between");
}

/// The shadow of byte `a` of `v`, reset if it is still the previous block's.
Cell& cell(const BlockState& s, const SharedVar& v, Addr a) {
    Cell& c = v.cells[a - v.lo];
    if (c.gen != s.gen) c = Cell{s.gen};
    return c;
}

/// The race check of one byte.
void race_check(BlockState& s, const SharedVar& v, Addr a, bool write, const void* pc) {
    Cell& c = cell(s, v, a);
    const unsigned u = self().linear;
    const unsigned warp = u / 32;
    const std::uint32_t E = s.epoch, W = s.warp_epoch[warp];
    // A full-warp __syncwarp after the other access orders it with this one.
    auto warp_ordered = [&](unsigned other_warp, std::uint32_t other_wepoch) {
        return other_warp == warp && other_wepoch < W;
    };
    if (c.w_epoch == E && c.w_tid != u && !warp_ordered(c.w_tid / 32u, c.w_wepoch))
        race(s, v, a, write ? "write after write" : "read after write", c.w_tid, false, c.w_pc, "wrote", pc,
             write ? "writes" : "reads");
    if (write) {
        if (c.r_epoch == E && c.r_tid != u && !(c.r_warp != kMany && warp_ordered(c.r_warp, c.r_wepoch)))
            race(s, v, a, "write after read", c.r_tid, c.r_tid == kMany, c.r_pc, "read", pc, "writes");
        c.w_epoch = E;
        c.w_wepoch = W;
        c.w_tid = (std::uint16_t)u;
        c.w_pc = pc;
        c.r_epoch = 0;
    } else if (c.r_epoch != E) {
        c.r_epoch = E;
        c.r_wepoch = W;
        c.r_tid = (std::uint16_t)u;
        c.r_warp = (std::uint16_t)warp;
        c.r_pc = pc;
    } else if (c.r_tid != u) {
        c.r_tid = kMany;
        if (c.r_warp != warp) c.r_warp = kMany;
        c.r_wepoch = std::max(c.r_wepoch, W);
        c.r_pc = pc;
    }
}

/// Everything but the fast path of a hook: the access [a, a + n) by the running thread;
/// `shared_only`: by an instruction that reads or writes shared memory only.
void access(Addr a, std::size_t n, bool write, const void* pc, std::size_t align, bool atomic,
            bool shared_only = false) {
    BlockState& s = *t_block;
    const detail::ThreadSelf& me = self();
    if (a - me.stack_lo < kStackBytes) return; // local memory
    // The emulator's own state that inline code of the shim reads (threadIdx & co.).
    auto within = [&](const void* p, std::size_t bytes) { return a - (Addr)p < bytes; };
    if (within(&me, sizeof me) || within(&detail::t_self, sizeof detail::t_self) ||
        within(&detail::t_block_idx, sizeof detail::t_block_idx) ||
        within(&detail::t_block_dim, sizeof detail::t_block_dim) ||
        within(&detail::t_grid_dim, sizeof detail::t_grid_dim))
        return;
    const bool memcheck = t_flags & EMU_CHECK_MEMORY;
    if (memcheck && align > 1 && (a & (align - 1)))
        memory_finding(pc, format("misaligned %zu-byte %s at %p", n, kind_name(write), (void*)a));

    if (SharedVar* v = find_var(s, a)) {
        if (a + n > v->hi) {
            if (memcheck)
                memory_finding(pc, format("%zu-byte %s at byte %zu of ", n, kind_name(write),
                                          (std::size_t)(a - v->lo)) +
                                       describe(*v) + ": out of bounds");
            n = v->hi - a;
        }
        if (memcheck)
            for (std::size_t i = 0; i < n; ++i)
                if (cell(s, *v, a + i).pending) {
                    memory_finding(pc, format("%zu-byte %s of shared memory a cp.async has not completed "
                                              "(missing cp.async.wait_group?) at byte %zu of ",
                                              n, kind_name(write), (std::size_t)(a + i - v->lo)) +
                                           describe(*v));
                    break;
                }
        if ((t_flags & EMU_CHECK_RACES) && !atomic)
            for (std::size_t i = 0; i < n; ++i) race_check(s, *v, a + i, write, pc);
        return;
    }
    if (!memcheck) return;
    if (Addr dyn = (Addr)emu_dynamic_smem; a - dyn < EMU_MAX_DYN_SMEM) {
        memory_finding(pc, format("%zu-byte %s at byte %zu of dynamic shared memory, beyond the %zu bytes "
                                  "the launch requested",
                                  n, kind_name(write), (std::size_t)(a - dyn), s.dyn_bytes));
        return;
    }
    // Next to a shared variable of the block: an index out of its bounds.
    for (const SharedVar& v : s.vars) {
        if (a < v.lo && v.lo - a <= kNearShared) {
            memory_finding(pc, format("%zu-byte %s %zu bytes before ", n, kind_name(write), (std::size_t)(v.lo - a)) +
                                   describe(v) + ": out of bounds");
            return;
        }
        if (a >= v.hi && a - v.hi < kNearShared) {
            memory_finding(pc, format("%zu-byte %s %zu bytes after the end of ", n, kind_name(write),
                                      (std::size_t)(a - v.hi)) +
                                   describe(v) + ": out of bounds");
            return;
        }
    }
    if (shared_only) {
        memory_finding(pc, format("%zu-byte %s at %p: not in shared memory, which the instruction requires", n,
                                  kind_name(write), (void*)a));
        return;
    }
    for (Buffer* b : s.launch->handed) {
        if (!b->holds(a)) continue;
        if (a < b->lo || a + n > b->hi()) b->guard_hit.store(true, std::memory_order_relaxed);
        if (a < b->lo) {
            memory_finding(pc, format("out of bounds: %zu-byte %s %zu bytes before a %zu-byte buffer", n,
                                      kind_name(write), (std::size_t)(b->lo - a), b->bytes));
        } else if (a + n > b->hi()) {
            memory_finding(pc, format("out of bounds: %zu-byte %s at byte %zu of a %zu-byte buffer (%zu bytes past "
                                      "its end)",
                                      n, kind_name(write), (std::size_t)(a - b->lo), b->bytes,
                                      (std::size_t)(a + n - b->hi())));
        } else if (write) {
            b->mark(a, n, true);
        } else if (long i = b->unwritten(a, n); i >= 0) {
            memory_finding(pc, format("read of uninitialised device memory: byte %ld of a %zu-byte buffer was "
                                      "never written by the host or a kernel",
                                      i, b->bytes));
        }
        return;
    }
    if (a >= s.launch->params_lo && a + n <= s.launch->params_hi) return;
    for (auto [lo, hi] : s.launch->statics)
        if (a >= lo && a + n <= hi) return;
    std::string where;
    {
        std::lock_guard<std::mutex> lk(g_buffers_mu);
        if (Buffer* b = find_buffer_locked(a))
            where = format(" (byte %ld of a %zu-byte buffer that was not handed to the launch)",
                           (long)(a - b->lo), b->bytes);
    }
    memory_finding(pc, format("%zu-byte %s at invalid address %p: not in a buffer handed to the launch, a shared "
                              "variable of the block or the thread's stack",
                              n, kind_name(write), (void*)a) +
                           where);
}

} // namespace

namespace check {

LaunchChecks* begin_launch(const char* kernel, const EmuLaunchConfig& cfg, const void* params,
                           std::size_t params_bytes) {
    if (!(cfg.checks & (EMU_CHECK_MEMORY | EMU_CHECK_RACES))) return nullptr;
    auto* l = new LaunchChecks;
    l->kernel = kernel;
    l->flags = cfg.checks;
    l->params_lo = (Addr)params;
    l->params_hi = (Addr)params + params_bytes;
    static const std::vector<std::pair<Addr, Addr>> statics = static_segments();
    l->statics = statics;
    std::lock_guard<std::mutex> lk(g_buffers_mu);
    for (std::size_t i = 0; i < cfg.num_buffers; ++i)
        if (Buffer* b = find_buffer_locked((Addr)cfg.buffers[i]))
            if (std::find(l->handed.begin(), l->handed.end(), b) == l->handed.end()) l->handed.push_back(b);
    return l;
}

std::string end_launch(LaunchChecks* l, std::uint64_t& memory_errors) {
    std::unique_ptr<LaunchChecks> owner(l);
    std::string out;
    if (!l || !(l->flags & EMU_CHECK_MEMORY)) return out;
    for (Buffer* b : l->handed) {
        auto* lo = reinterpret_cast<std::uint8_t*>(b->lo - b->guard);
        auto* hi = reinterpret_cast<std::uint8_t*>(b->hi());
        const bool reported = b->guard_hit.exchange(false, std::memory_order_relaxed);
        for (auto [p, side] : {std::pair{lo, "before"}, std::pair{hi, "after"}}) {
            std::size_t bad = 0;
            for (std::size_t i = 0; i < b->guard; ++i) bad += p[i] != kGuardFill;
            std::memset(p, kGuardFill, b->guard); // ready for the next launch
            if (bad && !reported) {
                ++memory_errors;
                out += format("kernel `%s`: %zu byte(s) of the guard zone %s a %zu-byte buffer were overwritten "
                              "(a write the access checks did not see)\n",
                              l->kernel, bad, side, b->bytes);
            }
        }
    }
    return out;
}

void begin_block(LaunchChecks* l, unsigned nthreads, std::size_t dynamic_smem) {
    t_flags = l ? l->flags & (EMU_CHECK_MEMORY | EMU_CHECK_RACES) : 0;
    if (!l) return;
    if (!t_block) {
        t_block_owner = std::make_unique<BlockState>();
        t_block = t_block_owner.get();
    }
    BlockState& s = *t_block;
    s.launch = l;
    ++s.gen;
    s.epoch = 1;
    s.warp_epoch.assign((nthreads + 31) / 32, 1);
    s.vars.clear();
    s.dyn_bytes = dynamic_smem;
    if (dynamic_smem) {
        const Addr lo = (Addr)emu_dynamic_smem;
        SharedVar v{lo, lo + dynamic_smem, "dynamic shared memory", nullptr, 0, nullptr};
        v.cells = s.shadow(v.lo, dynamic_smem);
        s.vars.push_back(v);
    }
}

void end_block() { t_flags = 0; }

void barrier_done() {
    if (t_flags) ++t_block->epoch;
}

void syncwarp_done(unsigned warp, unsigned mask, unsigned live) {
    if (t_flags && (mask & live) == live) ++t_block->warp_epoch[warp];
}

void instruction_access(const void* p, std::size_t n, bool write, const void* pc, bool shared) {
    if (t_flags) access((Addr)p, n, write, pc, n, false, shared);
}

void async_pending(const void* p, std::size_t n, bool pending) {
    if (!(t_flags & EMU_CHECK_MEMORY)) return;
    BlockState& s = *t_block;
    for (Addr a = (Addr)p, end = a + n; a < end; ++a)
        if (SharedVar* v = find_var(s, a)) cell(s, *v, a).pending = pending;
}

} // namespace check

void shared_var(const void* p, std::size_t bytes, const char* name, const char* file, int line) {
    if (!t_flags) return;
    BlockState& s = *t_block;
    Addr lo = (Addr)p;
    for (const SharedVar& v : s.vars)
        if (v.lo == lo) return;
    SharedVar v{lo, lo + bytes, name, file, line, nullptr};
    v.cells = s.shadow(lo, bytes);
    s.vars.push_back(v);
}

} // namespace emu

// ---- device memory registry (called from src/emu.rs) ---------------------------------------

extern "C" void emu_mem_register(void* base, size_t bytes, size_t guard, int initialised) {
    auto b = std::make_unique<emu::Buffer>();
    b->lo = (emu::Addr)base;
    b->bytes = bytes;
    b->guard = guard;
    b->written.assign((bytes + 63) / 64, initialised ? ~std::uint64_t{0} : 0);
    std::lock_guard<std::mutex> lk(emu::g_buffers_mu);
    emu::g_buffers[b->lo] = std::move(b);
}

extern "C" void emu_mem_unregister(void* base) {
    std::lock_guard<std::mutex> lk(emu::g_buffers_mu);
    emu::g_buffers.erase((emu::Addr)base);
}

extern "C" void emu_mem_mark(void* p, size_t bytes, int initialised) {
    std::lock_guard<std::mutex> lk(emu::g_buffers_mu);
    emu::Buffer* b = emu::find_buffer_locked((emu::Addr)p);
    if (b && (emu::Addr)p >= b->lo && (emu::Addr)p + bytes <= b->hi()) b->mark((emu::Addr)p, bytes, initialised != 0);
}

// ---- ThreadSanitizer's instrumentation interface -------------------------------------------

namespace {
/// The fast path of every hook: nothing to do unless the running block is checked.
inline void hook(const void* p, std::size_t n, bool write, const void* pc, std::size_t align,
                 bool atomic = false) {
    if (__builtin_expect(emu::t_flags != 0, 0) && emu::detail::t_self)
        emu::access((emu::Addr)p, n, write, pc, align, atomic);
}
} // namespace

#define EMU_TSAN_ACCESS(N)                                                                        \
    extern "C" void __tsan_read##N(void* p) { hook(p, N, false, __builtin_return_address(0), N); } \
    extern "C" void __tsan_write##N(void* p) { hook(p, N, true, __builtin_return_address(0), N); } \
    extern "C" void __tsan_unaligned_read##N(void* p) {                                          \
        hook(p, N, false, __builtin_return_address(0), 1);                                        \
    }                                                                                             \
    extern "C" void __tsan_unaligned_write##N(void* p) {                                         \
        hook(p, N, true, __builtin_return_address(0), 1);                                         \
    }
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
#undef EMU_TSAN_ACCESS

extern "C" void __tsan_read_range(void* p, unsigned long n) { hook(p, n, false, __builtin_return_address(0), 1); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { hook(p, n, true, __builtin_return_address(0), 1); }
extern "C" void __tsan_init() {}

// Atomics: done here (sequentially consistent, at least as strong as what was asked for),
// bounds- and initialisation-checked like plain accesses, outside the race check.
#define EMU_TSAN_ATOMIC(BITS, T)                                                                  \
    extern "C" T __tsan_atomic##BITS##_load(const volatile T* a, int) {                           \
        hook((const void*)a, sizeof(T), false, __builtin_return_address(0), sizeof(T), true);           \
        return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                              \
    }                                                                                             \
    extern "C" void __tsan_atomic##BITS##_store(volatile T* a, T v, int) {                        \
        hook((const void*)a, sizeof(T), true, __builtin_return_address(0), sizeof(T), true);            \
        __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                 \
    }                                                                                             \
    EMU_TSAN_RMW(BITS, T, exchange, __atomic_exchange_n)                                          \
    EMU_TSAN_RMW(BITS, T, fetch_add, __atomic_fetch_add)                                          \
    EMU_TSAN_RMW(BITS, T, fetch_sub, __atomic_fetch_sub)                                          \
    EMU_TSAN_RMW(BITS, T, fetch_and, __atomic_fetch_and)                                          \
    EMU_TSAN_RMW(BITS, T, fetch_or, __atomic_fetch_or)                                            \
    EMU_TSAN_RMW(BITS, T, fetch_xor, __atomic_fetch_xor)                                          \
    EMU_TSAN_RMW(BITS, T, fetch_nand, __atomic_fetch_nand)                                        \
    extern "C" bool __tsan_atomic##BITS##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) { \
        hook((const void*)a, sizeof(T), true, __builtin_return_address(0), sizeof(T), true);            \
        return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);   \
    }                                                                                             \
    extern "C" bool __tsan_atomic##BITS##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) { \
        hook((const void*)a, sizeof(T), true, __builtin_return_address(0), sizeof(T), true);            \
        return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);    \
    }                                                                                             \
    extern "C" T __tsan_atomic##BITS##_compare_exchange_val(volatile T* a, T c, T v, int, int) {  \
        hook((const void*)a, sizeof(T), true, __builtin_return_address(0), sizeof(T), true);            \
        __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);         \
        return c;                                                                                 \
    }
#define EMU_TSAN_RMW(BITS, T, OP, BUILTIN)                                                        \
    extern "C" T __tsan_atomic##BITS##_##OP(volatile T* a, T v, int) {                            \
        hook((const void*)a, sizeof(T), true, __builtin_return_address(0), sizeof(T), true);            \
        return BUILTIN(a, v, __ATOMIC_SEQ_CST);                                                   \
    }
EMU_TSAN_ATOMIC(8, std::uint8_t)
EMU_TSAN_ATOMIC(16, std::uint16_t)
EMU_TSAN_ATOMIC(32, std::uint32_t)
EMU_TSAN_ATOMIC(64, std::uint64_t)
#undef EMU_TSAN_RMW
#undef EMU_TSAN_ATOMIC
extern "C" void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
extern "C" void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
