//! `densenet profile`: planned and measured peak memory of a training step of the efficient
//! path and of the baseline (and of an efficient inference pass), as a table, JSON, CSV
//! and an SVG plot against depth.

use super::Outcome;
use super::backend_choice::{BackendChoice, PrecisionChoice, run_on};
use super::model_args::{DEFAULT_PRESET, ModelArgs, size_or_default};
use clap::Args;
use densenet::Precision;
use densenet::backend::{Backend, BackendTask, UnfusedOps};
use densenet::config::DenseNetConfig;
use densenet::error::Error;
use densenet::profile::{self, ConfigProfile, PathKind, RunLimit, format_bytes};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

const AFTER_HELP: &str = "\
Each path is planned first, from the configuration alone. A path whose planned peak is at \
most the run limit is then run (one training step: forward, backward, SGD; or one \
inference forward; with --steps N > 1, an untimed warm-up step and N timed ones, for a median) \
on random data, and the backend allocator's peak is compared with the plan byte for byte. \
Larger ones are reported as planned only.

The run limit is half the memory the backend has available (MemAvailable in /proc/meminfo for \
cpu, free device memory for cuda: the rest is left \
for the host-side batch, op scratch and other processes), lowered by --max-run-bytes. Exit \
status 1 if a measured peak differs from its plan.

Examples:
  densenet profile --model densenet-bc-100-k12 --batch 64
  densenet profile --model densenet121 --batch 256 --max-run-bytes 0
  densenet profile --batch 64 --depths 40,100,160,250 --csv memory.csv --svg memory.svg";

#[derive(Args, Debug)]
#[command(after_long_help = AFTER_HELP)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per batch.
    #[arg(long)]
    pub batch: usize,
    /// Input size HxW (default: 32x32 for the CIFAR stem, 224x224 for ImageNet).
    #[arg(long)]
    pub size: Option<String>,
    /// Profile DenseNet-BC (CIFAR stem, three blocks, 2k initial features) of these depths
    /// instead of the model, at the model's (or --growth's) growth rate, e.g. 40,100,160,250
    /// (each depth is 6·n + 4). The other model flags do not apply.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with_all = ["blocks", "init_features", "bn_size", "compression", "stem", "classes"]
    )]
    pub depths: Option<Vec<usize>>,
    /// Where to run the steps.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendChoice,
    /// How the convolutions multiply and activations are stored: fp32 (exact), tf32 (tensor
    /// cores) or bf16 (bf16 activations and tensor cores).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionChoice,
    /// Run a path only if its planned peak is at most this many bytes, e.g. 4G, 500M, 2GiB
    /// (k/M/G/T: powers of 1000, Ki/Mi/Gi/Ti: of 1024); 0 plans only.
    #[arg(long, value_name = "BYTES")]
    pub max_run_bytes: Option<String>,
    /// Also write the table's rows as CSV to FILE.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Also write a plot of peak memory against depth (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print one JSON object (`run_limit`, `profiles`) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Time N steps of each path and report the median; for N > 1 an untimed warm-up step
    /// runs first (a GPU loads its kernels on first use). The peak covers every step. At most
    /// 10000: every step's time is kept for the median, and more steps add nothing to it.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub steps: u64,
    /// Instead of the memory table: time every op of the efficient training step on the cpu
    /// backend and print where the step spends its time, by op family and op, with each
    /// GEMM-shaped op's GFLOP/s against this CPU's measured FMA peak.
    #[arg(long)]
    pub ops: bool,
}

/// The JSON output.
#[derive(Serialize)]
struct Report<'a> {
    run_limit: &'a RunLimit,
    profiles: &'a [ConfigProfile],
}

pub fn run(args: &ProfileArgs) -> anyhow::Result<Outcome> {
    let precision: Precision = args.precision.into();
    // Output files are checked before minutes of measuring, not after.
    for (path, flag) in [(&args.csv, "--csv"), (&args.svg, "--svg")] {
        if let Some(path) = path {
            densenet::files::check_output_file(path, flag)?;
        }
    }
    if args.ops && !matches!(args.backend, BackendChoice::Cpu) {
        return Err(Error::Config("--ops times the cpu backend's ops: use --backend cpu".into()).into());
    }
    // Fails at once for a backend this build or machine lacks, before any planning.
    let (backend, available) = run_on(args.backend, args.precision.into(), BackendMemory)?;
    let limit = run_limit(&backend, available, args.max_run_bytes.as_deref())?;
    let mut profiles = Vec::new();
    for (name, cfg) in configurations(args)? {
        let (h, w) = size_or_default(&args.size, &cfg)?;
        profiles.push(profile::plan(&name, &cfg, args.batch, h, w, precision, &backend, &limit)?);
    }
    if args.ops {
        return op_profiles(args, &profiles);
    }
    run_steps(args.backend, precision, &mut profiles, args.steps as usize)?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&Report { run_limit: &limit, profiles: &profiles })?);
    } else {
        print!("{}", profile::table::render(&profiles, &limit));
    }
    if let Some(path) = &args.csv {
        write_file(path, &profile::csv::render(&profiles))?;
    }
    if let Some(path) = &args.svg {
        write_file(path, &profile::svg::render(&profiles))?;
    }
    let mismatch = profiles.iter().flat_map(|p| &p.paths).any(|x| x.matches() == Some(false));
    Ok(if mismatch { Outcome::Failure } else { Outcome::Success })
}

/// `--ops` (cpu backend): the op table of each configuration's efficient training step, which
/// must fit the run limit.
fn op_profiles(args: &ProfileArgs, profiles: &[ConfigProfile]) -> anyhow::Result<Outcome> {
    let mut reports = Vec::new();
    for p in profiles {
        if let Some(reason) = p.path(PathKind::EfficientTraining).and_then(|t| t.not_run.as_ref()) {
            return Err(Error::Config(format!("{}: the training step is not run: {reason}", p.name)).into());
        }
        reports.push(profile::ops::profile_ops(p, args.steps as usize)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        reports.iter().for_each(|r| print!("{}", profile::ops::render(r)));
    }
    Ok(Outcome::Success)
}

/// The model, or DenseNet-BC at each of `--depths` (sorted, duplicates dropped).
fn configurations(args: &ProfileArgs) -> densenet::Result<Vec<(String, DenseNetConfig)>> {
    let cfg = args.model.config()?;
    let Some(depths) = &args.depths else {
        let preset = args.model.preset_or(DEFAULT_PRESET);
        let unmodified = DenseNetConfig::preset(preset)? == cfg;
        let name = if unmodified { preset.to_string() } else { format!("{preset} (modified)") };
        return Ok(vec![(name, cfg)]);
    };
    let mut depths = depths.clone();
    depths.sort_unstable();
    depths.dedup();
    depths
        .into_iter()
        .map(|d| Ok((format!("densenet-bc-{d}-k{}", cfg.growth), DenseNetConfig::bc_cifar(d, cfg.growth)?)))
        .collect()
}

/// Half of what the backend has available (host memory for cpu, free device memory for a
/// GPU), lowered by `--max-run-bytes`.
fn run_limit(
    backend: &str,
    available: Option<usize>,
    max_run_bytes: Option<&str>,
) -> densenet::Result<RunLimit> {
    let available = available.map(|a| RunLimit {
        bytes: a / 2,
        reason: format!("half of the {} available on {backend}", format_bytes(a)),
    });
    let explicit = max_run_bytes
        .map(|s| parse_bytes(s).map(|bytes| RunLimit { bytes, reason: "--max-run-bytes".into() }))
        .transpose()?;
    match (available, explicit) {
        (Some(a), Some(e)) => Ok(if e.bytes < a.bytes { e } else { a }),
        (Some(limit), None) | (None, Some(limit)) => Ok(limit),
        (None, None) => {
            Err(Error::Config(format!("the memory available on {backend} is unknown: set --max-run-bytes")))
        }
    }
}

/// `4G`, `500M`, `2GiB`, `1.5e9`, `0`: a byte count with an optional decimal (k, M, G, T) or
/// binary (Ki, Mi, Gi, Ti) suffix and optional trailing `B`.
fn parse_bytes(s: &str) -> densenet::Result<usize> {
    let bad = || Error::Config(format!("--max-run-bytes `{s}` is not a byte count such as 4G, 500M or 2GiB"));
    let t = s.trim();
    let t = t.strip_suffix('B').unwrap_or(t);
    let split = t.find(|c: char| c.is_ascii_alphabetic() && c != 'e').unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let scale: f64 = match suffix {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        _ => return Err(bad()),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < usize::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as usize)
}

/// Runs every path that fits, with a progress bar (on stderr, hidden when it is not a
/// terminal). A step can take minutes on a CPU, so the bar ticks on its own.
fn run_steps(
    choice: BackendChoice,
    precision: Precision,
    profiles: &mut [ConfigProfile],
    steps: usize,
) -> anyhow::Result<()> {
    let todo: Vec<(usize, usize)> = profiles
        .iter()
        .enumerate()
        .flat_map(|(i, p)| {
            p.paths.iter().enumerate().filter(|(_, x)| x.not_run.is_none()).map(move |(j, _)| (i, j))
        })
        .collect();
    let style =
        ProgressStyle::with_template("{spinner} profiling [{bar:24}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
    let bar = ProgressBar::new(todo.len() as u64).with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    for (i, j) in todo {
        let path = profiles[i].paths[j].path;
        bar.set_message(format!("{}: {}", profiles[i].name, path.label()));
        let measured = run_on(choice, precision, Measure { profile: &profiles[i], path, steps });
        let slot = &mut profiles[i].paths[j];
        match measured {
            Ok(m) => slot.measured = Some(m),
            // Other processes may have taken the memory since the limit was computed: report
            // the path as not run rather than losing every other result.
            Err(e) if matches!(e.downcast_ref::<Error>(), Some(Error::OutOfMemory { .. })) => {
                slot.not_run = Some(format!("{e:#}"));
            }
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

fn write_file(path: &Path, contents: &str) -> densenet::Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::file(path, e.to_string()))
}

/// The backend's name and the bytes it has available.
struct BackendMemory;

impl BackendTask for BackendMemory {
    type Output = (String, Option<usize>);
    type Error = anyhow::Error;
    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<(String, Option<usize>)> {
        Ok((backend.name(), backend.available_bytes()))
    }
}

/// One measured step on a fresh backend (so its allocator counts nothing else).
struct Measure<'a> {
    profile: &'a ConfigProfile,
    path: PathKind,
    steps: usize,
}

impl BackendTask for Measure<'_> {
    type Output = profile::Measured;
    type Error = anyhow::Error;
    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<profile::Measured> {
        Ok(profile::measure(backend, self.profile, self.path, self.steps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_decimal_and_binary_suffixes() {
        let cases = [
            ("0", 0),
            ("4G", 4_000_000_000),
            ("500M", 500_000_000),
            ("1.5GB", 1_500_000_000),
            ("2GiB", 2 << 30),
            ("3k", 3000),
            ("1e9", 1_000_000_000),
            (" 12 ", 12),
        ];
        for (s, bytes) in cases {
            assert_eq!(parse_bytes(s).unwrap(), bytes, "{s}");
        }
        for s in ["", "G", "-1G", "4X", "lots", "1e400", "NaN"] {
            assert!(parse_bytes(s).is_err(), "{s}");
        }
    }
}
