//! `--backend auto|cpu|cuda` for the commands that run a network: the flag's values, mapped
//! onto the library's [`BackendKind`].

use clap::ValueEnum;
use densenet::backend::{BackendKind, BackendTask};

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

impl From<BackendChoice> for BackendKind {
    fn from(choice: BackendChoice) -> BackendKind {
        match choice {
            BackendChoice::Auto => BackendKind::Auto,
            BackendChoice::Cpu => BackendKind::Cpu,
            BackendChoice::Cuda => BackendKind::Cuda,
            #[cfg(feature = "cuda-emu")]
            BackendChoice::CudaEmu => BackendKind::CudaEmu,
        }
    }
}

/// Runs `task` on the chosen backend.
pub fn run_on<T: BackendTask>(choice: BackendChoice, task: T) -> Result<T::Output, T::Error> {
    densenet::backend::run_on(choice.into(), task)
}
