//! Choosing a backend at run time: everything that runs a network is generic over
//! `B: Backend`, so the choice is a value ([`BackendKind`], [`AnyBackend`]) that hands a
//! concrete backend to a [`BackendTask`] (a trait because the work is generic over the
//! backend's type, which a closure cannot be).
//!
//! ```no_run
//! use densenet::backend::{Backend, BackendTask, UnfusedOps};
//!
//! struct Name;
//! impl BackendTask for Name {
//!     type Output = String;
//!     type Error = densenet::Error;
//!     fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> densenet::Result<String> {
//!         Ok(backend.name())
//!     }
//! }
//! // CUDA when a GPU is usable, else the cpu backend.
//! println!("{}", densenet::backend::auto().run(Name)?);
//! # Ok::<(), densenet::Error>(())
//! ```

use super::cpu::CpuBackend;
use super::cuda::CudaBackend;
use super::{Backend, Buffers, UnfusedOps};
use crate::Precision;
use crate::error::{Error, Result};

/// Which backend to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// CUDA when a driver and a GPU are usable ([`auto`]), else cpu.
    #[default]
    Auto,
    /// Plain Rust on the CPU (any precision, bit-reproducible across thread counts).
    Cpu,
    /// Hand-written CUDA kernels on GPU 0; an error when there is no usable GPU.
    Cuda,
    /// The CUDA kernels executed on the CPU by the emulator (slow; for testing).
    #[cfg(feature = "cuda-emu")]
    CudaEmu,
}

impl BackendKind {
    /// The backend itself: [`Error::BackendUnavailable`] (or the driver's error) when a
    /// `Cuda` backend cannot be opened; `Auto` never fails.
    pub fn open(self) -> Result<AnyBackend> {
        Ok(match self {
            BackendKind::Auto => auto(),
            BackendKind::Cpu => AnyBackend::Cpu(CpuBackend::new()),
            BackendKind::Cuda => AnyBackend::Cuda(CudaBackend::new(0)?),
            #[cfg(feature = "cuda-emu")]
            BackendKind::CudaEmu => AnyBackend::CudaEmu(super::cuda::EmuBackend::new()?),
        })
    }
}

/// One of this crate's backends, chosen at run time.
#[derive(Clone)]
pub enum AnyBackend {
    Cpu(CpuBackend),
    Cuda(CudaBackend),
    #[cfg(feature = "cuda-emu")]
    CudaEmu(super::cuda::EmuBackend),
}

/// The fastest backend this machine has: GPU 0 when the CUDA driver loads and the GPU opens,
/// else the cpu backend (no driver, no GPU, or a GPU that fails to open).
pub fn auto() -> AnyBackend {
    match CudaBackend::new(0) {
        Ok(gpu) => AnyBackend::Cuda(gpu),
        Err(_) => AnyBackend::Cpu(CpuBackend::new()),
    }
}

impl AnyBackend {
    /// The device's name, for messages (`cpu`, `cuda:0 (…)`).
    pub fn name(&self) -> String {
        match self {
            AnyBackend::Cpu(b) => b.name(),
            AnyBackend::Cuda(b) => b.name(),
            #[cfg(feature = "cuda-emu")]
            AnyBackend::CudaEmu(b) => b.name(),
        }
    }

    /// This backend computing its convolutions in `precision`; an error when the device cannot
    /// (tf32 on a GPU older than compute capability 8.0).
    pub fn with_precision(self, precision: Precision) -> Result<AnyBackend> {
        Ok(match self {
            AnyBackend::Cpu(b) => AnyBackend::Cpu(b.with_precision(precision)),
            AnyBackend::Cuda(b) => AnyBackend::Cuda(b.with_precision(precision)?),
            #[cfg(feature = "cuda-emu")]
            AnyBackend::CudaEmu(b) => AnyBackend::CudaEmu(b.with_precision(precision)?),
        })
    }

    /// Runs `task` on this backend.
    pub fn run<T: BackendTask>(self, task: T) -> Result<T::Output, T::Error> {
        match self {
            AnyBackend::Cpu(b) => task.run(b),
            AnyBackend::Cuda(b) => task.run(b),
            #[cfg(feature = "cuda-emu")]
            AnyBackend::CudaEmu(b) => task.run(b),
        }
    }
}

/// Work to run on whichever backend was chosen. `Error` lets a task keep its own error type
/// (an application's `anyhow::Error`, say) as long as this crate's errors convert into it.
pub trait BackendTask {
    type Output;
    type Error: From<Error>;
    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> Result<Self::Output, Self::Error>;
}

/// Opens the backend of `kind`, computing in `precision`, and runs `task` on it.
pub fn run_on<T: BackendTask>(
    kind: BackendKind,
    precision: Precision,
    task: T,
) -> Result<T::Output, T::Error> {
    kind.open()?.with_precision(precision)?.run(task)
}
