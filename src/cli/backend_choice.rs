//! `--backend auto|cpu|cuda` for the commands that run a network.

use clap::ValueEnum;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::cuda::CudaBackend;
use densenet::backend::{Backend, UnfusedOps};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest backend available: CUDA when built in and a GPU is present, else cpu.
    Auto,
    /// Plain Rust on the CPU (f32, bit-reproducible across thread counts).
    Cpu,
    /// Hand-written CUDA kernels on an NVIDIA GPU (GPU 0).
    Cuda,
    /// The same CUDA kernels executed on the CPU by the emulator (slow; for testing).
    #[cfg(feature = "cuda-emu")]
    CudaEmu,
}

/// Work to run on whichever backend the user picked (a trait, because the work is generic
/// over the backend type and closures cannot be).
pub trait BackendTask {
    type Output;
    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<Self::Output>;
}

/// Runs `task` on the chosen backend.
pub fn run_on<T: BackendTask>(choice: BackendChoice, task: T) -> anyhow::Result<T::Output> {
    match choice {
        BackendChoice::Cpu => task.run(CpuBackend::new()),
        BackendChoice::Cuda => task.run(CudaBackend::new(0)?),
        // No driver or no GPU: the cpu backend.
        BackendChoice::Auto => match CudaBackend::new(0) {
            Ok(gpu) => task.run(gpu),
            Err(_) => task.run(CpuBackend::new()),
        },
        #[cfg(feature = "cuda-emu")]
        BackendChoice::CudaEmu => task.run(densenet::backend::cuda::EmuBackend::new()?),
    }
}
