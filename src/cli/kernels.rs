//! `densenet kernels`: the kernel modules built into the binary, and with `--compile` every
//! module compiled by NVRTC exactly as a GPU run would compile it (no GPU needed), so CI can
//! check the NVRTC path and feed the PTX to ptxas.

use super::Outcome;
use clap::Args;
use densenet::Error;
use densenet::kernels::{GpuArch, MODULES, PTX_FROM_NVCC, compile_nvrtc, kernels_of, nvrtc_version};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(long_about = "Lists the CUDA kernel modules built into this binary and the kernels each \
defines. Built without nvcc, the binary embeds the kernel sources and compiles them with NVRTC on \
the GPU at first use; --compile does that compilation here, for --arch, with the same options, \
and needs libnvrtc (LD_LIBRARY_PATH) but no GPU. Exit status 1 when a module fails to compile \
(NVRTC's log is printed), 2 for bad input or when the binary holds nvcc's PTX instead of sources.")]
pub struct KernelsArgs {
    /// Compile every module with NVRTC (as `CudaDevice` does on a GPU) and report failures.
    #[arg(long)]
    pub compile: bool,
    /// Target architecture of --compile: sm_<major><minor> (compiled as compute_<major><minor>).
    #[arg(long, default_value = "sm_90", requires = "compile")]
    pub arch: String,
    /// Write each compiled module to DIR/<module>.ptx (created if missing).
    #[arg(long, value_name = "DIR", requires = "compile")]
    pub ptx_dir: Option<PathBuf>,
}

pub fn run(args: &KernelsArgs) -> anyhow::Result<Outcome> {
    let arch: GpuArch = args.arch.parse()?;
    let shipped = if PTX_FROM_NVCC { "PTX from nvcc" } else { "CUDA sources for NVRTC" };
    println!("{} kernel modules ({shipped}):", MODULES.len());
    for (index, module) in MODULES.iter().enumerate() {
        println!("  {:<12} {}", module.name, kernels_of(index).collect::<Vec<_>>().join(" "));
    }
    if !args.compile {
        return Ok(Outcome::Success);
    }
    if PTX_FROM_NVCC {
        return Err(Error::Config(
            "this binary was built with nvcc and embeds its PTX, not CUDA sources, so there is nothing \
             for NVRTC to compile; build it without nvcc (NVCC, CUDA_PATH and CUDA_HOME unset, no nvcc \
             on PATH) to check the NVRTC path"
                .into(),
        )
        .into());
    }
    let (major, minor) = nvrtc_version()?;
    if let Some(dir) = &args.ptx_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e.to_string()))?;
    }
    let (mut failed, mut kernels) = (Vec::new(), 0);
    for (index, module) in MODULES.iter().enumerate() {
        match compile_nvrtc(module, arch) {
            Ok(ptx) => {
                let expected: Vec<&str> = kernels_of(index).collect();
                let mut entries = entry_names(&ptx);
                entries.sort_unstable();
                if entries != expected {
                    eprintln!(
                        "kernel module `{}`: NVRTC's PTX has entries {entries:?}, the kernel table {expected:?}",
                        module.name
                    );
                    failed.push(module.name);
                    continue;
                }
                kernels += expected.len();
                if let Some(dir) = &args.ptx_dir {
                    let path = dir.join(format!("{}.ptx", module.name));
                    std::fs::write(&path, ptx).map_err(|e| Error::file(&path, e.to_string()))?;
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(module.name);
            }
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "kernels: {} of {} modules failed to compile with NVRTC {major}.{minor} for {arch}: {}",
            failed.len(),
            MODULES.len(),
            failed.join(", ")
        );
        return Ok(Outcome::Failure);
    }
    println!(
        "kernels: {} modules, {kernels} kernels compiled by NVRTC {major}.{minor} for {arch}",
        MODULES.len()
    );
    Ok(Outcome::Success)
}

/// The `.entry` function names of a PTX text.
fn entry_names(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| l.split_once(".entry ").map(|(_, rest)| rest))
        .map(|rest| rest.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(rest))
        .collect()
}
