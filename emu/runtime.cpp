// runtime.cpp — the scheduler behind cuda_emu.h: fibers, barriers, warp collectives, the
// worker pool and diagnostics. The design and its limits are described at the top of
// cuda_emu.h.
#include "checker.h"

#include <algorithm>
#include <condition_variable>
#include <cstdarg>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

extern "C" {
// Defined in the TU build.rs generates: the storage behind every `extern __shared__` array.
extern thread_local constinit unsigned char emu_dynamic_smem[];
}

#if EMU_ASM_SWITCH
extern "C" {
/// Saves callee-saved registers, MXCSR and the x87 control word on the current stack, stores
/// the stack pointer in `*save_sp`, and resumes the context whose stack pointer is `to_sp`.
void emu_ctx_switch(void** save_sp, void* to_sp);
/// First code a new fiber runs (via `ret`): calls r13(r12) and never returns.
void emu_fiber_trampoline();
}
asm(R"(
    .pushsection .text
    .p2align 4
    .globl emu_ctx_switch
    .hidden emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch

    .p2align 4
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline, @function
emu_fiber_trampoline:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
    .popsection
)");
#endif

namespace emu {
namespace detail {
thread_local constinit ThreadSelf* t_self = nullptr;
thread_local constinit uint3 t_block_idx{0, 0, 0};
thread_local constinit dim3 t_block_dim{1, 1, 1};
thread_local constinit dim3 t_grid_dim{1, 1, 1};
} // namespace detail

namespace {

constexpr unsigned kMaxMessages = 8;
constexpr unsigned kQueueMask = EMU_MAX_THREADS_PER_BLOCK - 1;
static_assert((EMU_MAX_THREADS_PER_BLOCK & kQueueMask) == 0);

const char* const kWarpOpNames[] = {
    "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",  "__shfl_xor_sync",
    "__ballot_sync",     "__any_sync",        "__all_sync",        "__syncwarp",
    "__match_any_sync",  "__match_all_sync",  "__reduce_add_sync", "__reduce_min_sync",
    "__reduce_max_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_and_sync",
    "__reduce_or_sync",  "__reduce_xor_sync",
    "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
    "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
    "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16",
};
static_assert(sizeof kWarpOpNames / sizeof kWarpOpNames[0] == WOP_LDMATRIX_X4_TRANS + 1);
const char* const kBarrierNames[] = {"__syncthreads", "__syncthreads_count", "__syncthreads_and",
                                     "__syncthreads_or"};

// ---- contexts -------------------------------------------------------------------------------

struct Context {
#if EMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

using FiberEntry = void (*)(void*);

#if EMU_ASM_SWITCH
inline void ctx_switch(Context& from, Context& to) { emu_ctx_switch(&from.sp, to.sp); }
void ctx_init(Context& c, char* stack_lo, std::size_t size, FiberEntry fn, void* arg) {
    // Frame popped by emu_ctx_switch: [mxcsr|fpucw] r15 r14 r13 r12 rbx rbp ret. After the
    // `ret` into the trampoline rsp = top16, so its `call` enters `fn` with rsp = 8 (mod 16).
    auto top16 = (reinterpret_cast<std::uintptr_t>(stack_lo + size) & ~std::uintptr_t{15}) - 16;
    auto* sp = reinterpret_cast<std::uint64_t*>(top16 - 64);
    sp[0] = 0x1f80u | (std::uint64_t{0x037f} << 32); // default MXCSR, x87 control word
    sp[1] = 0;                                       // r15
    sp[2] = 0;                                       // r14
    sp[3] = reinterpret_cast<std::uint64_t>(fn);     // r13
    sp[4] = reinterpret_cast<std::uint64_t>(arg);    // r12
    sp[5] = 0;                                       // rbx
    sp[6] = 0;                                       // rbp
    sp[7] = reinterpret_cast<std::uint64_t>(&emu_fiber_trampoline);
    c.sp = sp;
}
#else
inline void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
void ctx_init(Context& c, char* stack_lo, std::size_t size, FiberEntry fn, void*) {
    // The fiber finds its state through t_worker, so the argument is not needed here.
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, reinterpret_cast<void (*)()>(fn), 0);
}
#endif

// ---- state ----------------------------------------------------------------------------------

enum class State : std::uint8_t { Ready, Barrier, Warp, Exited };

struct Fiber {
    detail::ThreadSelf self; // must stay first: t_self points here
    Context ctx;
    unsigned linear = 0;
    State state = State::Ready;
    // The warp collective this fiber waits in (valid while state == Warp).
    int op = 0;
    unsigned mask = 0;
    int param = 0;
    int width = 32;
    std::uint64_t value = 0;
    std::uint64_t result = 0;
    const char* file = nullptr;
    int line = 0;
};
static_assert(std::is_standard_layout_v<Fiber> && offsetof(Fiber, self) == 0);

/// A warp collective that some lanes have reached and others have not yet.
struct Collective {
    int op;
    unsigned mask;
    const char* file;
    int line;
    unsigned arrived;
};

/// A cp.async that has been issued but has not completed: its source bytes, read at issue.
struct AsyncCopy {
    unsigned char* dst;
    unsigned bytes;
    unsigned group; // the number of groups the thread had committed when it issued the copy
    unsigned char data[16];
};
/// A thread's cp.async state: the copies in flight (oldest first) and its committed groups.
struct AsyncCopies {
    std::vector<AsyncCopy> pending;
    unsigned committed = 0;
};

struct Warp {
    unsigned present = 0; // lanes that exist in this block
    unsigned exited = 0;
    unsigned n_open = 0; // collectives in progress (several when masks are disjoint)
    Collective open[32];
};

struct Launch {
    const char* kernel = nullptr;
    void (*invoke)(void*) = nullptr;
    void* ctx = nullptr;
    dim3 grid, block;
    std::size_t smem = 0;
    std::uint64_t nblocks = 0;
    unsigned nthreads = 0;
    std::atomic<std::uint64_t> next_block{0};
    std::atomic<std::uint64_t> diagnostics{0};
    std::atomic<bool> runtime_error{false};
    std::atomic<std::uint64_t> races{0}, memory_errors{0}; // findings of the checks
    unsigned flags = 0;                                     // EMU_CHECK_*
    std::uint64_t seed = 0;                                 // of EMU_CHECK_SHUFFLE
    check::LaunchChecks* checks = nullptr;
    std::mutex mu; // guards messages
    std::string messages;
    unsigned stored = 0;

    void note(const std::string& line) {
        std::lock_guard<std::mutex> lk(mu);
        if (stored++ < kMaxMessages) messages += line + "\n";
    }
};

/// Per OS thread: the fibers, stacks and state of the block it is running.
struct Worker {
    Context sched; // the worker's own stack, where run_block waits for the block to finish
    Launch* job = nullptr;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    std::vector<AsyncCopies> async; // per thread
    std::vector<char*> stacks; // each: guard page(s) below kStackBytes of stack
    std::size_t guard = 0;
    dim3 prepared{0, 0, 0};
    unsigned n = 0; // threads per block
    // Ready fibers (each fiber is in it at most once): a FIFO, or drawn at random with
    // EMU_CHECK_SHUFFLE from `rng` (seeded per block, so a block's order does not depend on
    // which worker runs it).
    std::uint16_t queue[EMU_MAX_THREADS_PER_BLOCK];
    unsigned q_head = 0, q_count = 0;
    bool shuffle = false;
    std::uint64_t rng = 0;
    // Block barrier.
    std::vector<std::uint16_t> bar_waiters;
    unsigned n_bar_waiting = 0;
    int bar_kind = 0;
    const char* bar_file = nullptr;
    int bar_line = 0;
    int bar_count = 0, bar_and = 1, bar_or = 0, bar_result = 0;
    // Exits.
    unsigned exited = 0, first_exited = 0;

    ~Worker() {
        for (char* s : stacks) munmap(s, guard + kStackBytes);
    }
};

thread_local constinit Worker* t_worker = nullptr;
thread_local std::unique_ptr<Worker> t_worker_owner;

Worker& this_worker() {
    if (t_worker == nullptr) {
        t_worker_owner = std::make_unique<Worker>();
        t_worker = t_worker_owner.get();
    }
    return *t_worker;
}

inline Fiber& current() { return *reinterpret_cast<Fiber*>(detail::t_self); }

inline void push_ready(Worker& w, unsigned i) {
    w.queue[(w.q_head + w.q_count++) & kQueueMask] = (std::uint16_t)i;
}

/// splitmix64
std::uint64_t next_random(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/// Takes the next fiber to run off the ready queue (which must not be empty).
unsigned pop_ready(Worker& w) {
    if (w.shuffle && w.q_count > 1) {
        unsigned k = (unsigned)(next_random(w.rng) % w.q_count);
        std::swap(w.queue[w.q_head], w.queue[(w.q_head + k) & kQueueMask]);
    }
    unsigned i = w.queue[w.q_head];
    w.q_head = (w.q_head + 1) & kQueueMask;
    --w.q_count;
    return i;
}

bool same_site(const char* fa, int la, const char* fb, int lb) {
    return la == lb && (fa == fb || std::strcmp(fa, fb) == 0);
}

// ---- diagnostics ----------------------------------------------------------------------------

using detail::format;
using detail::vformat;

/// Records a diagnostic about thread `f` of the running block.
void report(Worker& w, const Fiber& f, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string body = vformat(fmt, ap);
    va_end(ap);
    Launch& j = *w.job;
    j.diagnostics.fetch_add(1, std::memory_order_relaxed);
    const uint3& b = detail::t_block_idx;
    j.note(format("kernel `%s` block (%u,%u,%u) thread (%u,%u,%u): ", j.kernel, b.x, b.y, b.z,
                  f.self.tid.x, f.self.tid.y, f.self.tid.z) +
           body);
}

/// Switches from fiber `f` back to the worker, which then starts the next block: used when the
/// block is done, and to drop it after a diagnostic (its other fibers are never resumed).
[[noreturn]] void leave_block(Worker& w, Fiber& f) {
    ctx_switch(f.ctx, w.sched);
    __builtin_unreachable();
}

std::string describe_wait(const Worker& w, const Fiber& g) {
    switch (g.state) {
    case State::Ready:
        return "are ready";
    case State::Exited:
        return "have exited";
    case State::Barrier:
        return format("wait at %s %s:%d", kBarrierNames[w.bar_kind], w.bar_file, w.bar_line);
    case State::Warp:
        return format("wait in %s(mask 0x%08x) at %s:%d", kWarpOpNames[g.op], g.mask, g.file,
                      g.line);
    }
    return "?";
}

/// Called when `f` must wait but no fiber of the block is ready.
[[noreturn]] void deadlock(Worker& w, Fiber& f) {
    std::string s = "deadlock: no thread of the block can proceed;";
    unsigned groups = 0;
    for (unsigned i = 0; i < w.n;) {
        std::string what = describe_wait(w, w.fibers[i]);
        unsigned k = i + 1;
        while (k < w.n && describe_wait(w, w.fibers[k]) == what) ++k;
        if (++groups > 6) {
            s += " ...";
            break;
        }
        s += format(" threads %u-%u %s;", i, k - 1, what.c_str());
        i = k;
    }
    report(w, f, "%s", s.c_str());
    leave_block(w, f);
}

/// `f` cannot continue: run the next ready fiber of the block (or report a deadlock).
void wait_for_others(Worker& w, Fiber& f) {
    if (w.q_count == 0) deadlock(w, f);
    Fiber& next = w.fibers[pop_ready(w)];
    detail::t_self = &next.self;
    ctx_switch(f.ctx, next.ctx);
    // Resumed: whoever switched here has set t_self to this fiber.
}

// ---- cp.async -------------------------------------------------------------------------------

/// Lands the copies of thread `t` whose group is older than `before` (oldest first).
void complete_copies(Worker& w, unsigned t, unsigned before) {
    std::vector<AsyncCopy>& p = w.async[t].pending;
    auto done = std::find_if(p.begin(), p.end(), [&](const AsyncCopy& c) { return c.group >= before; });
    for (auto it = p.begin(); it != done; ++it) {
        std::memcpy(it->dst, it->data, it->bytes);
        check::async_pending(it->dst, it->bytes, false);
    }
    p.erase(p.begin(), done);
}

// ---- fibers ---------------------------------------------------------------------------------

[[noreturn]] void fiber_exit(Worker& w, Fiber& f) {
    // The hardware completes a thread's copies even when it never waits for them (uncommitted
    // ones included); reading them before that was the bug, which the checks report.
    complete_copies(w, f.linear, ~0u);
    f.state = State::Exited;
    if (w.exited++ == 0) w.first_exited = f.linear;
    Warp& wp = w.warps[f.linear / 32];
    unsigned bit = 1u << (f.linear % 32);
    wp.exited |= bit;
    if (w.n_bar_waiting > 0) {
        const Fiber& g = w.fibers[w.bar_waiters[0]];
        report(w, f,
               "exits while %u thread(s) (first: thread %u (%u,%u,%u)) wait at %s %s:%d; every "
               "thread of the block must reach each barrier",
               w.n_bar_waiting, g.linear, g.self.tid.x, g.self.tid.y, g.self.tid.z,
               kBarrierNames[w.bar_kind], w.bar_file, w.bar_line);
        leave_block(w, f);
    }
    for (unsigned k = 0; k < wp.n_open; ++k) {
        Collective& c = wp.open[k];
        if (!(c.mask & bit)) continue;
        if (c.op != WOP_SYNCWARP) {
            report(w, f, "exits while lane %d waits for it in %s(mask 0x%08x) at %s:%d",
                   std::countr_zero(c.arrived), kWarpOpNames[c.op], c.mask, c.file, c.line);
            leave_block(w, f);
        }
        // __syncwarp waits only for the lanes of its mask that have not exited.
        c.mask &= ~bit;
        if (c.arrived == c.mask) {
            check::syncwarp_done(f.linear / 32, c.mask, wp.present & ~wp.exited);
            for (unsigned m = c.arrived; m; m &= m - 1) {
                unsigned i = (f.linear & ~31u) + std::countr_zero(m);
                w.fibers[i].state = State::Ready;
                push_ready(w, i);
            }
            c = wp.open[--wp.n_open];
            --k;
        }
    }
    if (w.exited == w.n) leave_block(w, f); // the block is done
    wait_for_others(w, f);
    __builtin_unreachable();
}

void fiber_main(void*) {
    Worker& w = *t_worker;
    try {
        w.job->invoke(w.job->ctx);
    } catch (...) {
        report(w, current(), "a C++ exception escaped the kernel");
        leave_block(w, current());
    }
    fiber_exit(w, current());
}

/// Sizes the worker's fibers, warps and stacks for the launch's block shape.
bool prepare(Worker& w, const Launch& j) {
    if (w.prepared.x == j.block.x && w.prepared.y == j.block.y && w.prepared.z == j.block.z)
        return true;
    if (w.guard == 0) w.guard = (std::size_t)sysconf(_SC_PAGESIZE);
    unsigned n = j.nthreads;
    while (w.stacks.size() < n) {
        void* p = mmap(nullptr, w.guard + kStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
        if (p == MAP_FAILED) return false;
        mprotect(p, w.guard, PROT_NONE); // overflow faults instead of corrupting a neighbour
        w.stacks.push_back(static_cast<char*>(p));
    }
    w.n = n;
    w.fibers.assign(n, Fiber{});
    w.warps.assign((n + 31) / 32, Warp{});
    w.async.assign(n, AsyncCopies{});
    w.bar_waiters.assign(n, 0);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.linear = i;
        f.self.tid = {i % j.block.x, (i / j.block.x) % j.block.y, i / (j.block.x * j.block.y)};
        f.self.linear = i;
        f.self.stack_lo = reinterpret_cast<std::uintptr_t>(w.stacks[i] + w.guard);
        w.warps[i / 32].present |= 1u << (i % 32);
    }
    w.prepared = j.block;
    return true;
}

void run_block(Worker& w, Launch& j, std::uint64_t b) {
    detail::t_block_idx = {(unsigned)(b % j.grid.x), (unsigned)(b / j.grid.x % j.grid.y),
                           (unsigned)(b / ((std::uint64_t)j.grid.x * j.grid.y))};
    if (j.smem) std::memset(emu_dynamic_smem, 0xff, j.smem); // poison: NaN / -1
    w.shuffle = j.flags & EMU_CHECK_SHUFFLE;
    w.rng = j.seed ^ (b * 0xd1342543de82ef95u);
    w.q_head = 0;
    w.q_count = 0;
    w.n_bar_waiting = 0;
    w.exited = 0;
    for (Warp& wp : w.warps) wp.exited = wp.n_open = 0;
    for (AsyncCopies& a : w.async) { // an abandoned block may have left copies; keep capacity
        a.pending.clear();
        a.committed = 0;
    }
    for (unsigned i = 0; i < w.n; ++i) {
        Fiber& f = w.fibers[i];
        f.state = State::Ready;
        ctx_init(f.ctx, w.stacks[i] + w.guard, kStackBytes, &fiber_main, nullptr);
        push_ready(w, i);
    }
    check::begin_block(j.checks, w.n, j.smem);
    Fiber& first = w.fibers[pop_ready(w)];
    detail::t_self = &first.self;
    ctx_switch(w.sched, first.ctx);
    detail::t_self = nullptr;
    check::end_block();
}

void run_blocks(Launch& j) {
    std::uint64_t b = j.next_block.fetch_add(1, std::memory_order_relaxed);
    if (b >= j.nblocks) return;
    Worker& w = this_worker();
    if (!prepare(w, j)) {
        j.runtime_error.store(true);
        j.note("emulator: cannot allocate fiber stacks");
        return;
    }
    w.job = &j;
    detail::t_block_dim = j.block;
    detail::t_grid_dim = j.grid;
    for (; b < j.nblocks; b = j.next_block.fetch_add(1, std::memory_order_relaxed))
        run_block(w, j, b);
    w.job = nullptr;
}

// ---- worker pool ----------------------------------------------------------------------------

/// Helper threads that run blocks next to the launching thread.
class Pool {
  public:
    explicit Pool(unsigned helpers) {
        for (; helpers_ < helpers; ++helpers_) {
            try {
                std::thread([this] { loop(); }).detach();
            } catch (const std::system_error&) {
                break; // run with the helpers we got
            }
        }
    }
    void run(Launch& j) {
        bool parallel = helpers_ > 0 && j.nblocks > 1;
        if (parallel) {
            {
                std::lock_guard<std::mutex> lk(mu_);
                job_ = &j;
                busy_ = helpers_;
                ++epoch_;
            }
            wake_.notify_all();
        }
        run_blocks(j);
        if (parallel) {
            std::unique_lock<std::mutex> lk(mu_);
            done_.wait(lk, [&] { return busy_ == 0; });
            job_ = nullptr;
        }
    }

  private:
    void loop() {
        std::uint64_t seen = 0;
        std::unique_lock<std::mutex> lk(mu_);
        for (;;) {
            wake_.wait(lk, [&] { return epoch_ != seen; });
            seen = epoch_;
            Launch* j = job_;
            lk.unlock();
            run_blocks(*j);
            lk.lock();
            if (--busy_ == 0) done_.notify_one();
        }
    }
    std::mutex mu_;
    std::condition_variable wake_, done_;
    Launch* job_ = nullptr;
    std::uint64_t epoch_ = 0;
    unsigned busy_ = 0;
    unsigned helpers_ = 0;
};

unsigned configured_threads() {
    if (const char* s = std::getenv("DENSENET_EMU_THREADS")) {
        long v = std::strtol(s, nullptr, 10);
        if (v >= 1) return (unsigned)v;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw ? hw : 1;
}

std::mutex g_launch_mutex; // one launch at a time: workers and their blocks are shared

void write_report(EmuReport* rep, std::uint64_t count, const std::string& messages,
                  std::uint64_t races = 0, std::uint64_t memory_errors = 0) {
    if (!rep) return;
    rep->diagnostics = count;
    rep->races = races;
    rep->memory_errors = memory_errors;
    std::size_t len = std::min(messages.size(), (std::size_t)EMU_REPORT_BYTES - 1);
    std::memcpy(rep->messages, messages.data(), len);
    rep->messages[len] = 0;
    rep->len = len;
}

std::string check_config(const EmuLaunchConfig& c) {
    for (int i = 0; i < 3; ++i)
        if (c.grid[i] == 0 || c.block[i] == 0) return "grid and block dimensions must be >= 1";
    if (c.grid[0] > 0x7fffffffu || c.grid[1] > 65535 || c.grid[2] > 65535)
        return format("grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", c.grid[0], c.grid[1],
                      c.grid[2]);
    if (c.block[0] > 1024 || c.block[1] > 1024 || c.block[2] > 64)
        return format("block (%u,%u,%u) exceeds (1024, 1024, 64)", c.block[0], c.block[1],
                      c.block[2]);
    std::uint64_t n = (std::uint64_t)c.block[0] * c.block[1] * c.block[2];
    if (n > EMU_MAX_THREADS_PER_BLOCK)
        return format("%llu threads per block exceed %d", (unsigned long long)n,
                      EMU_MAX_THREADS_PER_BLOCK);
    if (c.shared_bytes > EMU_MAX_DYN_SMEM)
        return format("%zu bytes of dynamic shared memory exceed %d", c.shared_bytes,
                      EMU_MAX_DYN_SMEM);
    return {};
}

} // namespace

// ---- entry points used by cuda_emu.h and checker.cpp ---------------------------------------

std::string detail::vformat(const char* fmt, va_list ap) {
    char buf[1024];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    return buf;
}

std::string detail::format(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::string s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

void detail::report_finding(int kind, const std::string& body) {
    Worker& w = *t_worker;
    (kind == detail::FINDING_RACE ? w.job->races : w.job->memory_errors)
        .fetch_add(1, std::memory_order_relaxed);
    report(w, current(), "%s", body.c_str());
}

int barrier(int kind, int pred, const char* file, int line) {
    Worker& w = *t_worker;
    Fiber& f = current();
    if (w.exited) {
        const Fiber& g = w.fibers[w.first_exited];
        report(w, f,
               "reaches %s %s:%d after %u thread(s) of the block exited (first: thread %u "
               "(%u,%u,%u)); every thread of the block must reach each barrier",
               kBarrierNames[kind], file, line, w.exited, g.linear, g.self.tid.x, g.self.tid.y,
               g.self.tid.z);
        leave_block(w, f);
    }
    if (w.n_bar_waiting == 0) {
        w.bar_kind = kind;
        w.bar_file = file;
        w.bar_line = line;
        w.bar_count = 0;
        w.bar_and = 1;
        w.bar_or = 0;
    } else if (!same_site(w.bar_file, w.bar_line, file, line)) {
        const Fiber& g = w.fibers[w.bar_waiters[0]];
        report(w, f,
               "divergent barrier: this thread is at %s %s:%d while %u thread(s) (first: thread "
               "%u (%u,%u,%u)) wait at %s %s:%d",
               kBarrierNames[kind], file, line, w.n_bar_waiting, g.linear, g.self.tid.x,
               g.self.tid.y, g.self.tid.z, kBarrierNames[w.bar_kind], w.bar_file, w.bar_line);
        leave_block(w, f);
    }
    int p = pred != 0;
    w.bar_count += p;
    w.bar_and &= p;
    w.bar_or |= p;
    if (w.n_bar_waiting + 1 == w.n) { // last to arrive: release everybody, keep running
        w.bar_result = kind == BAR_COUNT ? w.bar_count
                       : kind == BAR_AND ? w.bar_and
                       : kind == BAR_OR  ? w.bar_or
                                         : 0;
        for (unsigned i = 0; i < w.n_bar_waiting; ++i) {
            w.fibers[w.bar_waiters[i]].state = State::Ready;
            push_ready(w, w.bar_waiters[i]);
        }
        w.n_bar_waiting = 0;
        check::barrier_done();
        return w.bar_result;
    }
    w.bar_waiters[w.n_bar_waiting++] = (std::uint16_t)f.linear;
    f.state = State::Barrier;
    wait_for_others(w, f);
    return w.bar_result; // stays valid until every released thread has read it
}

namespace {
bool is_shuffle(int op) { return op <= WOP_SHFL_XOR; }

/// Source lane of a shuffle, or `lane` itself when the source is outside the segment.
unsigned shuffle_source(const Fiber& g) {
    unsigned lane = g.linear % 32, w = (unsigned)g.width, seg = lane & ~(w - 1);
    switch (g.op) {
    case WOP_SHFL_IDX:
        return seg + ((unsigned)g.param & (w - 1));
    case WOP_SHFL_UP:
        return lane >= seg + (unsigned)g.param ? lane - (unsigned)g.param : lane;
    case WOP_SHFL_DOWN:
        return lane + (unsigned)g.param < seg + w ? lane + (unsigned)g.param : lane;
    default: { // xor
        unsigned src = lane ^ (unsigned)g.param;
        return src >= seg && src < seg + w ? src : lane;
    }
    }
}

/// What a lane hands to an mma collective (its fragments; `d` receives its part of D).
struct MmaLane {
    float* d;
    const unsigned* a;
    const unsigned* b;
    const float* c;
};
/// What a lane hands to an ldmatrix collective: the 16 bytes at its row address (read when it
/// arrived, as its own access) and where its four registers go.
struct LdmatrixLane {
    unsigned* r;
    std::uint16_t row[8];
};

float tf32_operand(unsigned bits) {
    // The tensor core reads the top 19 bits of each .tf32 operand register and ignores the
    // low 13: a value the kernel did not round with cvt.rna.tf32.f32 is truncated.
    return std::bit_cast<float>(bits & 0xffffe000u);
}

/// D = A·B + C of the warp based at `base` (all 32 lanes have arrived). Layouts as the PTX ISA
/// gives them, with g = groupID = %laneid >> 2 and t = threadID_in_group = %laneid % 4:
///   "Matrix Fragments for mma.m16n8k8" (.tf32):
///     A a_i: row = g for a0 and a2, g + 8 for a1 and a3; col = t for a0 and a1, t + 4 for a2
///            and a3;
///     B b_i: row = t for b0, t + 4 for b1; col = g;
///   "Matrix Fragments for mma.m16n8k16 with floating point type" (.bf16, two per register,
///   lower index in the low half):
///     A a_i: row = g for 0 <= i < 2 || 4 <= i < 6, g + 8 otherwise;
///            col = t * 2 + (i & 0x1) for i < 4, t * 2 + (i & 0x1) + 8 for i >= 4;
///     B b_i: row = t * 2 + (i & 0x1) for i < 2, t * 2 + (i & 0x1) + 8 for i >= 2; col = g;
///   both: C/D c_i: row = g for c0 and c1, g + 8 for c2 and c3; col = t * 2 + (i & 0x1).
/// Arithmetic: the products of tf32 (11-bit) or bf16 (8-bit significand) values are exact in
/// f32 and in f64. The PTX ISA leaves the order and the internal precision of the accumulation
/// unspecified (the hardware aligns the products to the largest one and truncates), so this
/// adds C and the K products exactly in f64 (each partial sum of at most 17 such products and
/// an f32 is exact unless their exponents span more than 29 binades, and off by one f64
/// rounding then) and rounds to f32 once: the correctly rounded sum, which lies within the
/// error bound of any order the hardware might use; tests/emulator.rs compares with tolerances
/// that cover it.
void complete_mma(Worker& w, unsigned base, bool bf16) {
    const unsigned K = bf16 ? 16 : 8;
    double A[16][16], B[16][8], C[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const MmaLane& p = *reinterpret_cast<const MmaLane*>(w.fibers[base + l].value);
        const unsigned g = l >> 2, t = l % 4;
        if (bf16) {
            for (unsigned i = 0; i < 8; ++i) {
                const unsigned half = p.a[i / 2] >> (16 * (i & 1)) & 0xffffu;
                const unsigned row = (i < 2 || (4 <= i && i < 6)) ? g : g + 8;
                const unsigned col = t * 2 + (i & 0x1) + (i >= 4 ? 8 : 0);
                A[row][col] = bf16_bits_to_f32((std::uint16_t)half);
            }
            for (unsigned i = 0; i < 4; ++i) {
                const unsigned half = p.b[i / 2] >> (16 * (i & 1)) & 0xffffu;
                const unsigned row = t * 2 + (i & 0x1) + (i >= 2 ? 8 : 0);
                B[row][g] = bf16_bits_to_f32((std::uint16_t)half);
            }
        } else {
            for (unsigned i = 0; i < 4; ++i) {
                const unsigned row = (i == 0 || i == 2) ? g : g + 8;
                const unsigned col = (i < 2) ? t : t + 4;
                A[row][col] = tf32_operand(p.a[i]);
            }
            B[t][g] = tf32_operand(p.b[0]);
            B[t + 4][g] = tf32_operand(p.b[1]);
        }
        for (unsigned i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][t * 2 + (i & 0x1)] = p.c[i];
    }
    // All fragments are read before any D is written: a lane may pass the same array as C
    // and D.
    float D[16][8];
    for (unsigned r = 0; r < 16; ++r)
        for (unsigned n = 0; n < 8; ++n) {
            double sum = C[r][n];
            for (unsigned k = 0; k < K; ++k) sum += A[r][k] * B[k][n];
            D[r][n] = (float)sum;
        }
    for (unsigned l = 0; l < 32; ++l) {
        const MmaLane& p = *reinterpret_cast<const MmaLane*>(w.fibers[base + l].value);
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 4; ++i) p.d[i] = D[i < 2 ? g : g + 8][t * 2 + (i & 0x1)];
    }
}

/// ldmatrix.sync.aligned.m8n8.x4{.trans}.b16 of the warp based at `base`. PTX ISA,
/// "Warp-level matrix load instruction: ldmatrix": lanes 8i..8i+7 give the addresses of rows
/// 0..7 of matrix i, and register i of each lane receives two elements of matrix i: without
/// .trans those of row %laneid >> 2 at columns (%laneid % 4) * 2 and + 1; with .trans the
/// matrix is transposed on the way, i.e. the elements at column %laneid >> 2 of rows
/// (%laneid % 4) * 2 and + 1 (the lower one in the low half).
void complete_ldmatrix(Worker& w, unsigned base, bool trans) {
    std::uint16_t rows[32][8];
    for (unsigned l = 0; l < 32; ++l)
        std::memcpy(rows[l], reinterpret_cast<const LdmatrixLane*>(w.fibers[base + l].value)->row, 16);
    for (unsigned l = 0; l < 32; ++l) {
        unsigned* r = reinterpret_cast<const LdmatrixLane*>(w.fibers[base + l].value)->r;
        const unsigned g = l >> 2, t = l % 4;
        for (unsigned i = 0; i < 4; ++i) {
            const std::uint16_t* m = rows[8 * i];
            const unsigned lo = trans ? m[(2 * t) * 8 + g] : m[g * 8 + 2 * t];
            const unsigned hi = trans ? m[(2 * t + 1) * 8 + g] : m[g * 8 + 2 * t + 1];
            r[i] = lo | hi << 16;
        }
    }
}

/// The last lane of `mask` has arrived (as `f`): compute every lane's result, release them.
std::uint64_t complete_warp_op(Worker& w, Fiber& f) {
    unsigned base = f.linear & ~31u, mask = f.mask;
    std::uint64_t common = 0;
    switch (f.op) {
    case WOP_MMA_M16N8K8_TF32:
    case WOP_MMA_M16N8K16_BF16:
        complete_mma(w, base, f.op == WOP_MMA_M16N8K16_BF16);
        break;
    case WOP_LDMATRIX_X4:
    case WOP_LDMATRIX_X4_TRANS:
        complete_ldmatrix(w, base, f.op == WOP_LDMATRIX_X4_TRANS);
        break;
    case WOP_BALLOT:
    case WOP_ANY:
    case WOP_ALL: {
        unsigned ballot = 0;
        for (unsigned m = mask; m; m &= m - 1) {
            unsigned l = std::countr_zero(m);
            if (w.fibers[base + l].value) ballot |= 1u << l;
        }
        common = f.op == WOP_BALLOT ? ballot : f.op == WOP_ANY ? ballot != 0 : ballot == mask;
        break;
    }
    case WOP_MATCH_ALL: {
        common = mask;
        for (unsigned m = mask; m; m &= m - 1)
            if (w.fibers[base + std::countr_zero(m)].value != f.value) common = 0;
        break;
    }
    case WOP_REDUCE_ADD:
    case WOP_REDUCE_MIN_U:
    case WOP_REDUCE_MAX_U:
    case WOP_REDUCE_MIN_I:
    case WOP_REDUCE_MAX_I:
    case WOP_REDUCE_AND:
    case WOP_REDUCE_OR:
    case WOP_REDUCE_XOR: {
        bool first = true;
        std::uint32_t acc = 0;
        for (unsigned m = mask; m; m &= m - 1) {
            std::uint32_t v = (std::uint32_t)w.fibers[base + std::countr_zero(m)].value;
            if (first) {
                acc = v, first = false;
                continue;
            }
            switch (f.op) {
            case WOP_REDUCE_ADD: acc += v; break;
            case WOP_REDUCE_MIN_U: acc = std::min(acc, v); break;
            case WOP_REDUCE_MAX_U: acc = std::max(acc, v); break;
            case WOP_REDUCE_MIN_I: acc = (std::uint32_t)std::min((std::int32_t)acc, (std::int32_t)v); break;
            case WOP_REDUCE_MAX_I: acc = (std::uint32_t)std::max((std::int32_t)acc, (std::int32_t)v); break;
            case WOP_REDUCE_AND: acc &= v; break;
            case WOP_REDUCE_OR: acc |= v; break;
            default: acc ^= v; break;
            }
        }
        common = acc;
        break;
    }
    default:
        break;
    }
    for (unsigned m = mask; m; m &= m - 1) {
        unsigned l = std::countr_zero(m);
        Fiber& g = w.fibers[base + l];
        if (is_shuffle(f.op)) {
            unsigned src = shuffle_source(g);
            if (!(mask >> src & 1u)) {
                report(w, g, "%s(mask 0x%08x) at %s:%d reads lane %u, which is not in the mask",
                       kWarpOpNames[g.op], mask, g.file, g.line, src);
                leave_block(w, f);
            }
            g.result = w.fibers[base + src].value;
        } else if (f.op == WOP_MATCH_ANY) {
            unsigned same = 0;
            for (unsigned k = mask; k; k &= k - 1) {
                unsigned o = std::countr_zero(k);
                if (w.fibers[base + o].value == g.value) same |= 1u << o;
            }
            g.result = same;
        } else {
            g.result = common;
        }
        if (&g != &f) {
            g.state = State::Ready;
            push_ready(w, base + l);
        }
    }
    return f.result;
}
} // namespace

std::uint64_t warp_op(int op, unsigned mask, std::uint64_t value, int param, int width,
                      const char* file, int line) {
    Worker& w = *t_worker;
    Fiber& f = current();
    Warp& wp = w.warps[f.linear / 32];
    unsigned lane = f.linear % 32, bit = 1u << lane;
    const char* name = kWarpOpNames[op];
    // __syncwarp waits only for the lanes of its mask that exist and have not exited; the
    // other collectives read from every lane they name.
    if (op == WOP_SYNCWARP) mask &= wp.present & ~wp.exited;
    if (!(mask & bit)) {
        report(w, f, "%s(mask 0x%08x) at %s:%d: the mask does not include the calling lane %u",
               name, mask, file, line, lane);
        leave_block(w, f);
    }
    if (mask & ~wp.present) {
        report(w, f,
               "%s(mask 0x%08x) at %s:%d names lanes that do not exist (the block has %u "
               "threads)",
               name, mask, file, line, w.n);
        leave_block(w, f);
    }
    if (unsigned gone = mask & wp.exited) {
        report(w, f, "%s(mask 0x%08x) at %s:%d names lane %d, which has already exited", name,
               mask, file, line, std::countr_zero(gone));
        leave_block(w, f);
    }
    if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1)))) {
        report(w, f, "%s at %s:%d: width %d is not a power of two in [1, 32]", name, file, line,
               width);
        leave_block(w, f);
    }
    // Join the collective in progress with the same call site, operation and mask, or open
    // one. Lanes waiting in another collective that names this lane, while this one names
    // them, can never be released: that is a mismatch (e.g. half a warp at another shuffle).
    Collective* c = nullptr;
    for (unsigned k = 0; k < wp.n_open; ++k) {
        Collective& o = wp.open[k];
        if (o.op == op && o.mask == mask && same_site(o.file, o.line, file, line)) {
            c = &o;
        } else if ((o.mask & bit) && (o.arrived & mask)) {
            report(w, f,
                   "inconsistent warp collective: lane %u is at %s(mask 0x%08x) %s:%d while lane "
                   "%d waits for it at %s(mask 0x%08x) %s:%d",
                   lane, name, mask, file, line, std::countr_zero(o.arrived & mask),
                   kWarpOpNames[o.op], o.mask, o.file, o.line);
            leave_block(w, f);
        }
    }
    if (c == nullptr) {
        c = &wp.open[wp.n_open++];
        *c = Collective{op, mask, file, line, 0};
    }
    c->arrived |= bit;
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.param = param;
    f.width = width;
    f.file = file;
    f.line = line;
    if (c->arrived == mask) {
        *c = wp.open[--wp.n_open]; // close it
        if (op == WOP_SYNCWARP) check::syncwarp_done(f.linear / 32, mask, wp.present & ~wp.exited);
        return complete_warp_op(w, f);
    }
    f.state = State::Warp;
    wait_for_others(w, f);
    return f.result;
}

unsigned active_mask() {
    Worker& w = *t_worker;
    const Warp& wp = w.warps[current().linear / 32];
    return wp.present & ~wp.exited;
}

void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                      const char* file, int line) {
    MmaLane lane{d, a, b, c};
    warp_op(WOP_MMA_M16N8K8_TF32, 0xffffffffu, (std::uint64_t)(std::uintptr_t)&lane, 0, 32, file, line);
}

void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2], const float c[4],
                       const char* file, int line) {
    MmaLane lane{d, a, b, c};
    warp_op(WOP_MMA_M16N8K16_BF16, 0xffffffffu, (std::uint64_t)(std::uintptr_t)&lane, 0, 32, file, line);
}

void ldmatrix_x4(unsigned r[4], const void* row, bool trans, const char* file, int line) {
    // The row is read as this lane's own 16-byte access (bounds, alignment, races, pending
    // cp.async) before the warp meets: between the reads and the exchange nothing of the warp
    // runs, and another warp writing the rows meanwhile would be a race the check reports.
    check::instruction_access(row, 16, false, __builtin_return_address(0), true);
    LdmatrixLane lane{r, {}};
    std::memcpy(lane.row, row, 16);
    warp_op(trans ? WOP_LDMATRIX_X4_TRANS : WOP_LDMATRIX_X4, 0xffffffffu,
            (std::uint64_t)(std::uintptr_t)&lane, 0, 32, file, line);
}

void cp_async(void* smem, const void* gmem, int bytes) {
    Worker& w = *t_worker;
    const Fiber& f = current();
    const void* pc = __builtin_return_address(0);
    check::instruction_access(gmem, (std::size_t)bytes, false, pc, false);
    check::instruction_access(smem, (std::size_t)bytes, true, pc, true);
    AsyncCopies& mine = w.async[f.linear];
    AsyncCopy c{static_cast<unsigned char*>(smem), (unsigned)bytes, mine.committed, {}};
    std::memcpy(c.data, gmem, (std::size_t)bytes);
    // Until the copy lands the destination reads as NaN (f32, bf16) or -1, as the poisoned
    // dynamic shared memory does, so that reading it early gives a wrong result even without
    // the memory check, which reports the read itself.
    std::memset(smem, 0xff, (std::size_t)bytes);
    check::async_pending(smem, (std::size_t)bytes, true);
    mine.pending.push_back(c);
}

void cp_async_commit() { ++t_worker->async[current().linear].committed; }

void cp_async_wait(int n) {
    Worker& w = *t_worker;
    const unsigned t = current().linear, committed = w.async[t].committed;
    // cp.async.wait_group n: all but the newest n committed groups are complete; copies not
    // yet committed stay in flight.
    if (committed > (unsigned)n) complete_copies(w, t, committed - (unsigned)n);
}

void trap(const char* what, const char* file, int line) {
    Worker& w = *t_worker;
    report(w, current(), "%s at %s:%d", what, file, line);
    leave_block(w, current());
}

int bad_arguments(const char* kernel, const EmuLaunchConfig* cfg, std::size_t arity) {
    if (cfg == nullptr) return EMU_ERR_CONFIG;
    write_report(cfg->report, 0,
                 cfg->num_args != arity
                     ? format("`%s` takes %zu argument(s), %zu given", kernel, arity, cfg->num_args)
                     : std::string("the argument array is null"));
    return EMU_ERR_CONFIG;
}

int run_launch(const char* kernel, const EmuLaunchConfig* cfg, void (*invoke)(void*), void* ctx,
               std::size_t ctx_bytes) {
    if (cfg == nullptr) return EMU_ERR_CONFIG;
    EmuReport* rep = cfg->report;
    write_report(rep, 0, {});
    std::string bad = check_config(*cfg);
    if (!bad.empty()) {
        write_report(rep, 0, bad);
        return EMU_ERR_CONFIG;
    }
    try {
        std::lock_guard<std::mutex> lk(g_launch_mutex);
        static Pool* pool = new Pool(configured_threads() - 1); // never destroyed
        Launch j;
        j.kernel = kernel;
        j.invoke = invoke;
        j.ctx = ctx;
        j.grid = dim3(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
        j.block = dim3(cfg->block[0], cfg->block[1], cfg->block[2]);
        j.smem = cfg->shared_bytes;
        j.nblocks = (std::uint64_t)j.grid.x * j.grid.y * j.grid.z;
        j.nthreads = j.block.x * j.block.y * j.block.z;
        j.flags = cfg->checks;
        j.seed = cfg->seed;
        j.checks = check::begin_launch(kernel, *cfg, ctx, ctx_bytes);
        pool->run(j);
        std::uint64_t guard_errors = 0;
        std::string guards = check::end_launch(j.checks, guard_errors);
        if (guard_errors) {
            j.memory_errors += guard_errors;
            j.diagnostics += guard_errors;
            j.note(guards.substr(0, guards.size() - 1));
        }
        std::uint64_t count = j.diagnostics.load();
        if (j.stored > kMaxMessages)
            j.messages += format("(%u more message(s) not shown)\n", j.stored - kMaxMessages);
        write_report(rep, count, j.messages, j.races.load(), j.memory_errors.load());
        if (j.runtime_error.load()) return EMU_ERR_RUNTIME;
        return count ? EMU_ERR_DIAGNOSTICS : EMU_OK;
    } catch (const std::exception& e) {
        write_report(rep, 0, format("emulator failure: %s", e.what()));
        return EMU_ERR_RUNTIME;
    }
}

} // namespace emu
