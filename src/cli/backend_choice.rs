//! `--backend auto|cpu|cuda` for the commands that run a network.

use clap::ValueEnum;
use densenet::backend::Backend;
use densenet::backend::cpu::CpuBackend;
use densenet::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest backend available: CUDA when built in and a GPU is present, else cpu.
    Auto,
    /// Plain Rust on the CPU (f32, bit-reproducible across thread counts).
    Cpu,
    /// Hand-written CUDA kernels on an NVIDIA GPU.
    Cuda,
}

/// Work to run on whichever backend the user picked (a trait, because the work is generic
/// over the backend type and closures cannot be).
pub trait BackendTask {
    type Output;
    fn run<B: Backend>(self, backend: B) -> anyhow::Result<Self::Output>;
}

/// Runs `task` on the chosen backend.
pub fn run_on<T: BackendTask>(choice: BackendChoice, task: T) -> anyhow::Result<T::Output> {
    match choice {
        // This build has no CUDA backend, so `auto` is the cpu backend.
        BackendChoice::Auto | BackendChoice::Cpu => task.run(CpuBackend::new()),
        BackendChoice::Cuda => {
            Err(Error::BackendUnavailable("the CUDA backend is not available in this build".into()).into())
        }
    }
}
