//! `densenet verify`: one training step through the efficient path and through the f64
//! oracle, compared.

use super::model_args::{size_or_default, ModelArgs};
use super::Outcome;
use clap::{Args, ValueEnum};
use densenet::backend::cpu::CpuBackend;
use densenet::backend::cuda::CudaBackend;
use densenet::verify::{verify, VerifyReport, F32_TOLERANCE, KINK_MARGIN};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendChoice {
    /// Plain Rust on the CPU (f32).
    Cpu,
    /// Hand-written CUDA kernels on GPU 0.
    Cuda,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Input size HxW (default: 32x32 for the CIFAR stem, 224x224 for ImageNet).
    #[arg(long)]
    pub size: Option<String>,
    /// Backend running the efficient path.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendChoice,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (`max_rel_error`, `comparisons`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<Outcome> {
    let cfg = args.model.config()?;
    let (h, w) = size_or_default(&args.size, &cfg)?;
    let report = match args.backend {
        BackendChoice::Cpu => verify(&CpuBackend::new(), &cfg, args.batch, h, w, args.seed)?,
        BackendChoice::Cuda => {
            let gpu = CudaBackend::new(0)?;
            return Err(densenet::Error::BackendUnavailable(format!(
                "{} is present, but the CUDA backend does not run whole networks yet: its fused \
                 convolution kernels are still being written; use --backend cpu",
                gpu.name()
            ))
            .into());
        }
    };
    let passed = report.passed(F32_TOLERANCE);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report, passed);
    }
    Ok(if passed { Outcome::Success } else { Outcome::Failure })
}

fn print_table(r: &VerifyReport, passed: bool) {
    println!(
        "verify on {}: batch {}, {}x{}, seed {}; relative error ||efficient - oracle|| / ||oracle||",
        r.backend, r.batch, r.height, r.width, r.seed
    );
    for c in &r.comparisons {
        println!("  {:<28} {:.3e}", c.name, c.rel_error);
    }
    println!(
        "  ({} ReLU/max-pool decisions within {:.0e} of their kink taken as the backend took them)",
        r.kink_decisions, KINK_MARGIN
    );
    println!(
        "max relative error {:.3e} (tolerance {:.0e}): {}",
        r.max_rel_error,
        F32_TOLERANCE,
        if passed { "PASS" } else { "FAIL" }
    );
}
