//! `densenet verify`: one training step through the efficient path and through the f64
//! oracle, compared.

use super::Outcome;
use super::backend_choice::{BackendChoice, PrecisionChoice, run_on};
use super::dump;
use super::model_args::{ModelArgs, size_or_default};
use clap::Args;
use densenet::backend::{Backend, BackendTask, UnfusedOps};
use densenet::config::DenseNetConfig;
use densenet::verify::{VerifyReport, verify_with_step};
use std::path::{Path, PathBuf};

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
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// How the convolutions multiply and activations are stored: fp32 (exact), tf32 (tensor
    /// cores) or bf16 (bf16 activations and tensor cores).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionChoice,
    /// Seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (`max_rel_error`, `comparisons`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write the weights (a checkpoint), the batch and the efficient path's logits,
    /// loss, parameter and input gradients and updated running statistics to DIR, as
    /// safetensors files with torchvision's names (for scripts/torch-compare.py).
    #[arg(long, value_name = "DIR")]
    pub dump: Option<PathBuf>,
}

pub fn run(args: &VerifyArgs) -> anyhow::Result<Outcome> {
    let cfg = args.model.config()?;
    let (h, w) = size_or_default(&args.size, &cfg)?;
    let task = Verify { cfg: &cfg, batch: args.batch, h, w, seed: args.seed, dump: args.dump.as_deref() };
    let report = run_on(args.backend, args.precision.into(), task)?;
    let passed = report.passed();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report, passed);
    }
    Ok(if passed { Outcome::Success } else { Outcome::Failure })
}

fn print_table(r: &VerifyReport, passed: bool) {
    println!(
        "verify on {} ({}): batch {}, {}x{}, seed {}; relative error ||efficient - oracle|| / ||oracle||",
        r.backend, r.precision, r.batch, r.height, r.width, r.seed
    );
    for c in &r.comparisons {
        println!("  {:<28} {:.3e}", c.name, c.rel_error);
    }
    println!(
        "  ({} ReLU/max-pool decisions within {:.0e} of their kink taken as the backend took them)",
        r.kink_decisions, r.kink_margin
    );
    println!("  (efficient path {:.2} s, f64 oracle {:.2} s)", r.backend_seconds, r.oracle_seconds);
    println!(
        "max relative error {:.3e} (tolerance {:.0e} for {}): {}",
        r.max_rel_error,
        r.tolerance,
        r.precision,
        if passed { "PASS" } else { "FAIL" }
    );
}

/// One verification on whichever backend was chosen.
struct Verify<'a> {
    cfg: &'a DenseNetConfig,
    batch: usize,
    h: usize,
    w: usize,
    seed: u64,
    dump: Option<&'a Path>,
}

impl BackendTask for Verify<'_> {
    type Output = VerifyReport;
    type Error = anyhow::Error;
    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<VerifyReport> {
        let (report, step) = verify_with_step(&backend, self.cfg, self.batch, self.h, self.w, self.seed)?;
        if let Some(dir) = self.dump {
            dump::write(self.cfg, &step, self.h, self.w, dir)?;
        }
        Ok(report)
    }
}
