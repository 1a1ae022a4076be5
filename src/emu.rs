//! Running CUDA kernels on the CPU (feature `cuda-emu`).
//!
//! build.rs compiles every `kernels/*.cu` (and the emulator's own self-test kernels in
//! `emu/selftest/`) as C++ for the host against the shim `emu/cuda_emu.h`, whose header comment
//! describes how threads, shared memory, barriers and warp collectives are emulated and what is
//! not. This module launches those kernels by name with the same argument array that
//! `cuLaunchKernel` takes, so machines without a GPU run every kernel and compare it with the
//! cpu backend.
//!
//! Misuse that a GPU may forgive or hang on — a `__syncthreads` not reached by the whole block,
//! a thread exiting before a barrier, a warp collective whose mask names lanes that never
//! arrive, a deadlock — is reported as a diagnostic: the launch returns
//! [`EmuError::Diagnostics`], and the diagnostics are also kept for [`take_diagnostics`].
//! One launch runs at a time (launches from several threads queue up); each launch spreads
//! its blocks over `DENSENET_EMU_THREADS` OS threads (default: one per core).
//!
//! [`Checks`] adds, per launch, what compute-sanitizer does on a GPU (`emu/checker.cpp`):
//! a memory check (accesses outside the [`Buffer`]s handed to the launch, its shared variables
//! and the thread's stack; reads of device memory never written; misaligned accesses) and a
//! shared-memory race check, plus a seeded shuffled order of a block's threads. Findings are
//! diagnostics too, with the file:line of each access involved.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_ulonglong, c_void};

use thiserror::Error;

/// Most threads a block may have.
pub const MAX_THREADS_PER_BLOCK: u32 = 1024;
/// Most dynamic shared memory a block may ask for (the H100/H200 per-block opt-in limit).
pub const MAX_DYNAMIC_SHARED_BYTES: usize = 227 * 1024;

const REPORT_BYTES: usize = 8192;

/// `EmuReport` in `emu/cuda_emu.h`.
#[repr(C)]
struct Report {
    diagnostics: c_ulonglong,
    races: c_ulonglong,
    memory_errors: c_ulonglong,
    len: c_ulonglong,
    messages: [c_char; REPORT_BYTES],
}

/// `EmuLaunchConfig` in `emu/cuda_emu.h`.
#[repr(C)]
struct LaunchConfig {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    num_args: usize,
    report: *mut Report,
    checks: u32,
    seed: c_ulonglong,
    buffers: *const c_ulonglong,
    num_buffers: usize,
}

/// `extern "C" int emu_launch_NAME(const EmuLaunchConfig*, void** args)`.
type LaunchFn = unsafe extern "C" fn(*const LaunchConfig, *mut *mut c_void) -> c_int;

// Status codes of the launch functions (`EMU_OK`, ... in cuda_emu.h).
const EMU_OK: c_int = 0;
const EMU_ERR_DIAGNOSTICS: c_int = 1;
const EMU_ERR_CONFIG: c_int = 2;

// `EMU_CHECK_*` in cuda_emu.h.
const EMU_CHECK_MEMORY: u32 = 1;
const EMU_CHECK_RACES: u32 = 2;
const EMU_CHECK_SHUFFLE: u32 = 4;

unsafe extern "C" {
    fn emu_mem_register(base: *mut c_void, bytes: usize, guard: usize, initialised: c_int);
    fn emu_mem_unregister(base: *mut c_void);
    fn emu_mem_mark(p: *mut c_void, bytes: usize, initialised: c_int);
}

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

/// Why an emulated launch failed.
#[derive(Debug, Error)]
pub enum EmuError {
    /// No `extern "C" __global__` function of that name was compiled into the emulator.
    #[error("no emulated kernel named `{0}`")]
    UnknownKernel(String),
    /// The grid, block, shared-memory size or argument count is not launchable.
    #[error("kernel `{kernel}`: invalid launch: {reason}")]
    InvalidLaunch { kernel: String, reason: String },
    /// The kernel ran, but broke a CUDA rule (see the module docs); blocks that did were
    /// abandoned, so outputs are incomplete.
    #[error("kernel `{kernel}`: {count} diagnostic(s):\n{}", messages.join("\n"))]
    Diagnostics { kernel: String, count: u64, messages: Vec<String> },
    /// The emulator itself failed (e.g. it could not allocate fiber stacks).
    #[error("kernel `{kernel}`: emulator failure: {reason}")]
    Runtime { kernel: String, reason: String },
}

/// Diagnostics raised by launches from one thread (see [`take_diagnostics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// How many diagnostics were raised (of every kind).
    pub count: u64,
    /// Of which shared-memory races found by [`Checks::races`] (one per pair of sites).
    pub races: u64,
    /// Of which invalid accesses found by [`Checks::memory`] (one per site and kind).
    pub memory_errors: u64,
    /// The first messages of each launch that raised any (kernel, block, thread, file:line).
    pub messages: Vec<String>,
}

/// What the emulator checks while a kernel runs, beyond the synchronisation rules it always
/// enforces. Set per thread with [`set_checks`]; the default comes from the environment
/// variable `DENSENET_EMU_CHECK`, a comma-separated list of `memcheck`, `racecheck`,
/// `shuffle` or `shuffle=SEED` (`all`: the three, seed 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Every access inside a buffer handed to the launch, a shared variable the block
    /// declared (or the dynamic shared memory asked for) or the thread's own stack; no read
    /// of device memory that was never written; natural alignment. Device memory must be
    /// [`Buffer`]s.
    pub memory: bool,
    /// Shared-memory accesses of different threads ordered by barriers (`__syncwarp` within
    /// a warp).
    pub races: bool,
    /// Run the threads of each block in a random order between synchronisation points, from
    /// this seed.
    pub shuffle: Option<u64>,
}

impl Checks {
    /// No checks.
    pub const NONE: Checks = Checks { memory: false, races: false, shuffle: None };
    /// Memory and race checks, and the threads shuffled with `seed`.
    pub fn all(seed: u64) -> Checks {
        Checks { memory: true, races: true, shuffle: Some(seed) }
    }

    /// Parses the `DENSENET_EMU_CHECK` syntax.
    pub fn parse(text: &str) -> Result<Checks, String> {
        let mut c = Checks::NONE;
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => c = Checks::all(0),
                "memcheck" => c.memory = true,
                "racecheck" => c.races = true,
                "shuffle" => c.shuffle = Some(0),
                _ => match word.strip_prefix("shuffle=").map(str::parse::<u64>) {
                    Some(Ok(seed)) => c.shuffle = Some(seed),
                    _ => {
                        return Err(format!(
                            "`{word}`: expected memcheck, racecheck, shuffle, shuffle=SEED or all"
                        ));
                    }
                },
            }
        }
        Ok(c)
    }

    fn flags(self) -> u32 {
        (if self.memory { EMU_CHECK_MEMORY } else { 0 })
            | (if self.races { EMU_CHECK_RACES } else { 0 })
            | (if self.shuffle.is_some() { EMU_CHECK_SHUFFLE } else { 0 })
    }
}

/// The checks `DENSENET_EMU_CHECK` asks for; a value that does not parse is a launch error
/// rather than silently unchecked kernels.
fn default_checks() -> Result<Checks, String> {
    static DEFAULT: std::sync::OnceLock<Result<Checks, String>> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| match std::env::var("DENSENET_EMU_CHECK") {
            Ok(v) => Checks::parse(&v).map_err(|e| format!("DENSENET_EMU_CHECK: {e}")),
            Err(_) => Ok(Checks::NONE),
        })
        .clone()
}

thread_local! {
    static DIAGNOSTICS: RefCell<Diagnostics> = RefCell::default();
    static LAUNCHES: RefCell<Vec<&'static str>> = RefCell::default();
    static CHECKS: std::cell::Cell<Option<Checks>> = const { std::cell::Cell::new(None) };
}

/// Sets the checks of the launches the calling thread makes (see [`Checks`]).
pub fn set_checks(checks: Checks) {
    CHECKS.with(|c| c.set(Some(checks)));
}

/// Returns and resets the names of the kernels launched successfully from the calling thread,
/// in launch order — how tests prove that they exercised the kernels they claim to.
pub fn take_launches() -> Vec<&'static str> {
    LAUNCHES.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// Returns and resets the diagnostics raised by launches made from the calling thread.
///
/// They are kept per thread so that tests running in parallel do not see each other's.
pub fn take_diagnostics() -> Diagnostics {
    DIAGNOSTICS.with(|d| std::mem::take(&mut *d.borrow_mut()))
}

/// Names of all emulated kernels, sorted.
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    EMU_KERNELS.iter().map(|(name, _)| *name)
}

/// Runs kernel `name` on the CPU and returns when every block has finished.
///
/// `args` is the array `cuLaunchKernel` takes: `args[i]` points at the value of the kernel's
/// i-th parameter (for a pointer parameter, at a variable holding the pointer). Only the
/// number of entries can be checked. `buffers` are the device addresses the launch hands to
/// the kernel (its pointer arguments): with [`Checks::memory`], the kernel may access the
/// [`Buffer`]s they point into and no other.
///
/// # Safety
/// Each `args[i]` must point at a live, properly aligned value of exactly the type of the
/// kernel's i-th parameter, and every pointer passed to the kernel must be valid for all the
/// accesses the kernel makes through it (emulated device memory is host memory), with no
/// other thread accessing that memory during the launch.
pub unsafe fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    args: &mut [*mut c_void],
    buffers: &[u64],
) -> Result<(), EmuError> {
    let Ok(index) = EMU_KERNELS.binary_search_by(|(n, _)| (*n).cmp(name)) else {
        return Err(EmuError::UnknownKernel(name.to_owned()));
    };
    let launch_fn = EMU_KERNELS[index].1;
    let checks = match CHECKS.with(|c| c.get()) {
        Some(c) => c,
        None => {
            default_checks().map_err(|reason| EmuError::InvalidLaunch { kernel: name.to_owned(), reason })?
        }
    };
    let mut report =
        Box::new(Report { diagnostics: 0, races: 0, memory_errors: 0, len: 0, messages: [0; REPORT_BYTES] });
    let cfg = LaunchConfig {
        grid,
        block,
        shared_bytes,
        num_args: args.len(),
        report: &mut *report,
        checks: checks.flags(),
        seed: checks.shuffle.unwrap_or(0),
        buffers: buffers.as_ptr(),
        num_buffers: buffers.len(),
    };
    // SAFETY: `cfg` and `report` outlive the call; the arguments are the caller's contract.
    let status = unsafe { launch_fn(&cfg, args.as_mut_ptr()) };
    let len = (report.len as usize).min(REPORT_BYTES);
    let text: Vec<u8> = report.messages[..len].iter().map(|&c| c as u8).collect();
    let text = String::from_utf8_lossy(&text).into_owned();
    let kernel = name.to_owned();
    match status {
        EMU_OK => {
            LAUNCHES.with(|l| l.borrow_mut().push(EMU_KERNELS[index].0));
            Ok(())
        }
        EMU_ERR_DIAGNOSTICS => {
            let messages: Vec<String> = text.lines().map(resolve_sites).collect();
            let count = report.diagnostics;
            DIAGNOSTICS.with(|d| {
                let mut d = d.borrow_mut();
                d.count += count;
                d.races += report.races;
                d.memory_errors += report.memory_errors;
                d.messages.extend(messages.iter().cloned());
            });
            Err(EmuError::Diagnostics { kernel, count, messages })
        }
        EMU_ERR_CONFIG => Err(EmuError::InvalidLaunch { kernel, reason: text }),
        _ => Err(EmuError::Runtime { kernel, reason: text }),
    }
}

/// `line` with every `{pc:0x...}` site of the checks replaced by the file:line the program's
/// line tables give for it (the emulated kernels are compiled with `-g1`), or the function's
/// name when the binary has no line tables.
fn resolve_sites(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("{pc:0x") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else {
            rest = &rest[start..];
            break;
        };
        match usize::from_str_radix(&after[..end], 16) {
            Ok(pc) => out.push_str(&describe_pc(pc)),
            Err(_) => out.push_str(&rest[start..start + 7 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn describe_pc(pc: usize) -> String {
    let mut innermost: Option<String> = None;
    let mut kernel_source: Option<String> = None;
    let mut name: Option<String> = None;
    // The return address follows the hook's call: look up the call instruction itself. Its
    // frames go from the innermost inlined function outwards; name the first in a kernel
    // source rather than, say, the libstdc++ header of an inlined atomic. Each wrapper of
    // `kernels/mma.cuh` stands for one instruction, so an access of an emulated ldmatrix or
    // cp.async is named by the kernel line that uses it.
    backtrace::resolve((pc - 1) as *mut c_void, |symbol| {
        if let (Some(file), Some(line)) = (symbol.filename(), symbol.lineno()) {
            let (path, ours) = short_path(file);
            let at = format!("{path}:{line}");
            if ours && kernel_source.is_none() && path != "kernels/mma.cuh" {
                kernel_source = Some(at.clone());
            }
            innermost.get_or_insert(at);
        }
        if name.is_none() {
            name = symbol.name().map(|n| n.to_string());
        }
    });
    kernel_source.or(innermost).unwrap_or_else(|| match name {
        Some(n) => format!("{n} (pc {pc:#x}; no line tables)"),
        None => format!("pc {pc:#x}"),
    })
}

/// `kernels/x.cu` rather than whatever form the line tables hold, and whether the file is a
/// kernel source (of the crate or of the emulator's self-tests).
fn short_path(file: &std::path::Path) -> (String, bool) {
    let text = file.to_string_lossy();
    for dir in ["kernels/", "emu/selftest/"] {
        if let Some(i) = text.rfind(dir) {
            return (text[i..].to_owned(), true);
        }
    }
    (text.into_owned(), false)
}

/// Bytes of guard zone on each side of a [`Buffer`]: a cudaMalloc-like 256-byte alignment
/// unit, so an access slightly past either end lands in it.
pub const GUARD_BYTES: usize = 256;
/// What guard zones are filled with (`kGuardFill` in emu/checker.cpp).
const GUARD_FILL: u8 = 0xfd;
/// What fresh, uninitialised buffers hold: 0xff bytes, a NaN as f32/f64/f16/bf16 and -1 as an
/// integer, so a kernel that reads them shows it even without the memory check.
const POISON: u8 = 0xff;

/// Emulated device memory: host memory aligned to 256 bytes like `cuMemAlloc`'s, with guard
/// zones on both sides, registered with the memory check. Contents start poisoned and count
/// as uninitialised until the host writes them or a kernel does.
pub struct Buffer {
    /// Start of the whole allocation (the front guard zone).
    block: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    bytes: usize,
}

// SAFETY: a Buffer owns its allocation; access goes through &/&mut (host) or through kernels,
// whose launches the caller orders.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    /// `bytes` of uninitialised (poisoned) device memory; None when the host cannot allocate it.
    pub fn uninit(bytes: usize) -> Option<Buffer> {
        Self::filled(bytes, POISON, false)
    }

    /// `bytes` of zeroed device memory.
    pub fn zeroed(bytes: usize) -> Option<Buffer> {
        Self::filled(bytes, 0, true)
    }

    /// `bytes` set to `fill`, registered as written or not, between filled guard zones.
    fn filled(bytes: usize, fill: u8, initialised: bool) -> Option<Buffer> {
        let total = GUARD_BYTES
            .checked_add(bytes.checked_next_multiple_of(GUARD_BYTES)?)?
            .checked_add(GUARD_BYTES)?;
        let layout = std::alloc::Layout::from_size_align(total, GUARD_BYTES).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let block = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        // SAFETY: the allocation is `total` bytes.
        unsafe {
            std::ptr::write_bytes(block.as_ptr(), GUARD_FILL, GUARD_BYTES);
            std::ptr::write_bytes(block.as_ptr().add(GUARD_BYTES), fill, bytes);
            std::ptr::write_bytes(
                block.as_ptr().add(GUARD_BYTES + bytes),
                GUARD_FILL,
                total - GUARD_BYTES - bytes,
            );
        }
        let b = Buffer { block, layout, bytes };
        // SAFETY: registers memory this Buffer owns until drop unregisters it.
        unsafe { emu_mem_register(b.ptr().cast(), bytes, GUARD_BYTES, c_int::from(initialised)) };
        Some(b)
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The device address of byte 0 (what a kernel's pointer argument holds).
    pub fn ptr(&self) -> *mut u8 {
        // SAFETY: within the allocation.
        unsafe { self.block.as_ptr().add(GUARD_BYTES) }
    }

    /// Device address of byte `offset` (which may be out of range: kernels are what the memory
    /// check is for).
    pub fn addr(&self, offset: usize) -> u64 {
        self.ptr().wrapping_add(offset) as u64
    }

    /// The bytes as host memory.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `bytes` bytes at ptr() belong to this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.bytes) }
    }

    /// Writes `src` at byte `offset` (which must fit) and marks it initialised.
    pub fn write(&mut self, offset: usize, src: &[u8]) {
        let dst = &mut self.bytes_mut()[offset..offset + src.len()];
        dst.copy_from_slice(src);
        // SAFETY: the range lies in this registered buffer.
        unsafe { emu_mem_mark(dst.as_mut_ptr().cast(), dst.len(), 1) };
    }

    /// Sets `len` bytes at `offset` to `value` and marks them initialised.
    pub fn fill(&mut self, offset: usize, len: usize, value: u8) {
        let dst = &mut self.bytes_mut()[offset..offset + len];
        dst.fill(value);
        // SAFETY: the range lies in this registered buffer.
        unsafe { emu_mem_mark(dst.as_mut_ptr().cast(), dst.len(), 1) };
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `bytes` bytes at ptr() belong to this buffer, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.bytes) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: registered in `uninit`, allocated with `layout`.
        unsafe {
            emu_mem_unregister(self.ptr().cast());
            std::alloc::dealloc(self.block.as_ptr(), self.layout);
        }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} bytes at {:p})", self.bytes, self.ptr())
    }
}
