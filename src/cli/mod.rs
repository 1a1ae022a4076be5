//! Command-line interface of the `densenet` binary.

pub mod info;
pub mod model_args;
pub mod verify;

use clap::{Parser, Subcommand};

/// Memory-efficient DenseNet-BC: shared feature storage, fused BN-ReLU-conv ops and a
/// deferred batch-norm correction, on the CPU or with hand-written CUDA kernels.
#[derive(Parser, Debug)]
#[command(name = "densenet", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a network's stages, exact parameter count and forward multiply-adds.
    Info(info::InfoArgs),
    /// Check one training step of the efficient path against the f64 reference network
    /// (relative errors of logits, loss, every gradient); exit status 1 above tolerance.
    Verify(verify::VerifyArgs),
}

/// How a command that ran to completion ended.
pub enum Outcome {
    Success,
    /// The command ran but its check failed (exit status 1).
    Failure,
}
