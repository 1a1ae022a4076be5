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
}

/// `extern "C" int emu_launch_NAME(const EmuLaunchConfig*, void** args)`.
type LaunchFn = unsafe extern "C" fn(*const LaunchConfig, *mut *mut c_void) -> c_int;

// Status codes of the launch functions (`EMU_OK`, ... in cuda_emu.h).
const EMU_OK: c_int = 0;
const EMU_ERR_DIAGNOSTICS: c_int = 1;
const EMU_ERR_CONFIG: c_int = 2;

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
    /// How many diagnostics were raised.
    pub count: u64,
    /// The first messages of each launch that raised any (kernel, block, thread, file:line).
    pub messages: Vec<String>,
}

thread_local! {
    static DIAGNOSTICS: RefCell<Diagnostics> = RefCell::default();
    static LAUNCHES: RefCell<Vec<&'static str>> = RefCell::default();
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
/// number of entries can be checked.
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
) -> Result<(), EmuError> {
    let Ok(index) = EMU_KERNELS.binary_search_by(|(n, _)| (*n).cmp(name)) else {
        return Err(EmuError::UnknownKernel(name.to_owned()));
    };
    let launch_fn = EMU_KERNELS[index].1;
    let mut report = Box::new(Report { diagnostics: 0, len: 0, messages: [0; REPORT_BYTES] });
    let cfg = LaunchConfig { grid, block, shared_bytes, num_args: args.len(), report: &mut *report };
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
            let messages: Vec<String> = text.lines().map(str::to_owned).collect();
            let count = report.diagnostics;
            DIAGNOSTICS.with(|d| {
                let mut d = d.borrow_mut();
                d.count += count;
                d.messages.extend(messages.iter().cloned());
            });
            Err(EmuError::Diagnostics { kernel, count, messages })
        }
        EMU_ERR_CONFIG => Err(EmuError::InvalidLaunch { kernel, reason: text }),
        _ => Err(EmuError::Runtime { kernel, reason: text }),
    }
}
