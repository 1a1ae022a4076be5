//! `--backend auto|cpu|cuda` and `--precision fp32|tf32|bf16` for the commands that run a network:
//! the flags' values, mapped onto the library's [`BackendKind`] and [`Precision`].

use clap::ValueEnum;
use densenet::Precision;
use densenet::backend::{BackendKind, BackendTask};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest backend available: CUDA when built in and a GPU is present, else cpu.
    Auto,
    /// Plain Rust on the CPU (any precision, bit-reproducible across thread counts).
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

/// `--precision`: how the convolutions multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PrecisionChoice {
    /// f32 operands and arithmetic: the exact path.
    Fp32,
    /// f32 storage, GEMM operands rounded to TF32 (10-bit mantissa) and multiplied on tensor
    /// cores with f32 accumulation (GPUs of compute capability 8.0+; the cpu backend rounds
    /// the same way, for testing).
    Tf32,
    /// bf16 storage of activations and their gradients (half the memory), GEMM operands in
    /// bf16 on tensor cores with f32 accumulation; statistics, BN sums and parameters in f32.
    Bf16,
}

impl From<PrecisionChoice> for Precision {
    fn from(choice: PrecisionChoice) -> Precision {
        match choice {
            PrecisionChoice::Fp32 => Precision::Fp32,
            PrecisionChoice::Tf32 => Precision::Tf32,
            PrecisionChoice::Bf16 => Precision::Bf16,
        }
    }
}

/// Runs `task` on the chosen backend, computing in `precision`.
pub fn run_on<T: BackendTask>(
    choice: BackendChoice,
    precision: Precision,
    task: T,
) -> Result<T::Output, T::Error> {
    densenet::backend::run_on(choice.into(), precision, task)
}
