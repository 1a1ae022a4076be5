//! Command-line interface of the `densenet` binary.

pub mod backend_choice;
pub mod dump;
pub mod eval;
pub mod info;
pub mod kernels;
pub mod model_args;
pub mod predict;
pub mod profile;
pub mod progress;
pub mod train;
pub mod train_dir;
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
    /// Train a DenseNet-BC with SGD (Nesterov momentum 0.9, weight decay 1e-4), evaluating
    /// the test set after every epoch and checkpointing atomically. With no flags: a small
    /// DenseNet-BC on the embedded synthetic data set, in a few minutes on a CPU.
    Train(train::TrainArgs),
    /// Evaluate a checkpoint, or a torchvision state_dict (--init-from), on a test set with
    /// running statistics (no model flags needed: the configuration is stored in the
    /// checkpoint or inferred from the state_dict's shapes).
    Eval(eval::EvalArgs),
    /// Print the most probable classes of JPEG or PNG images (files or folders) with softmax
    /// probabilities, under a checkpoint or a torchvision state_dict (eval transform at the
    /// model's input size, running statistics).
    Predict(predict::PredictArgs),
    /// Planned and measured peak memory of one training step, efficient path vs the
    /// baseline (and of efficient inference), by category; optionally over depths, with CSV
    /// and an SVG plot. Paths too large for the run limit are planned only.
    Profile(profile::ProfileArgs),
    /// List the CUDA kernel modules and kernels built in; with --compile, compile every module
    /// with NVRTC for --arch (no GPU needed), optionally writing <module>.ptx files.
    Kernels(kernels::KernelsArgs),
}

/// How a command that ran to completion ended.
pub enum Outcome {
    Success,
    /// The command ran but its check failed (exit status 1).
    Failure,
    /// A signal stopped the command at a safe point: exit status 128 + the signal's number,
    /// as a shell reports a process the signal killed.
    Signal(u8),
}
