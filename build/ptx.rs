//! The CUDA part of the build script: every `kernels/*.cu` becomes PTX with nvcc when one is
//! found (`NVCC`, then `$CUDA_PATH/bin`, `$CUDA_HOME/bin`, then `PATH`), for `CUDA_ARCH`
//! (default sm_90). Without nvcc the sources are embedded, local `#include "…"` files
//! inlined, for NVRTC at run time. A kernel nvcc rejects fails the build, with nvcc's output:
//! there is no silent fallback. `$OUT_DIR/kernels.rs` lists the modules for `src/kernels.rs`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn build() {
    for var in ["NVCC", "CUDA_PATH", "CUDA_HOME", "PATH", "CUDA_ARCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());
    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    sources.sort();
    for f in &sources {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let cu: Vec<&PathBuf> = sources.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();

    let arch = std::env::var("CUDA_ARCH").unwrap_or_else(|_| "sm_90".into());
    let nvcc = find_nvcc();
    let mut table = String::from(
        "/// Every kernel module, in file-name order.\npub const MODULES: &[KernelModule] = &[\n",
    );
    for file in cu {
        let name = file.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        let source = match &nvcc {
            Some(nvcc) => {
                let ptx = out.join(format!("{name}.ptx"));
                compile_ptx(nvcc, &arch, &kernels, file, &ptx);
                format!("KernelSource::Ptx(include_str!({:?}))", ptx.display().to_string())
            }
            None => {
                let src = out.join(format!("{name}.cu"));
                fs::write(&src, inline_includes(file, &kernels, &mut Vec::new()))
                    .expect("write kernel source");
                format!("KernelSource::Cuda(include_str!({:?}))", src.display().to_string())
            }
        };
        writeln!(table, "    KernelModule {{ name: {name:?}, source: {source} }},").unwrap();
    }
    table.push_str("];\n");
    writeln!(
        table,
        "/// Whether the modules are PTX from nvcc (else CUDA sources for NVRTC).\npub const PTX_FROM_NVCC: bool = {};",
        nvcc.is_some()
    )
    .unwrap();
    fs::write(out.join("kernels.rs"), table).expect("write kernels.rs");
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        // An explicit NVCC that does not exist is a mistake worth stopping for.
        assert!(p.is_file(), "NVCC={} does not exist", p.display());
        return Some(p);
    }
    let homes = ["CUDA_PATH", "CUDA_HOME"].into_iter().filter_map(std::env::var_os);
    let from_home = homes.map(|h| PathBuf::from(h).join("bin").join("nvcc")).find(|p| p.is_file());
    from_home.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).map(|d| d.join("nvcc")).find(|p| p.is_file())
    })
}

fn compile_ptx(nvcc: &Path, arch: &str, include: &Path, cu: &Path, ptx: &Path) {
    let output = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "-lineinfo", &format!("-arch={arch}")])
        .arg("-I")
        .arg(include)
        .arg(cu)
        .arg("-o")
        .arg(ptx)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc failed on {}:\n{}{}",
            cu.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The file with each `#include "local.cuh"` replaced by that file's text (once each, as
/// `#pragma once` would), so NVRTC needs no include path.
fn inline_includes(file: &Path, dir: &Path, seen: &mut Vec<PathBuf>) -> String {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let mut out = String::new();
    for line in text.lines() {
        let include = line.trim().strip_prefix("#include \"").and_then(|r| r.strip_suffix('"'));
        match include {
            Some(name) => {
                let path = dir.join(name);
                if !seen.contains(&path) {
                    seen.push(path.clone());
                    out.push_str(&inline_includes(&path, dir, seen));
                }
            }
            None if line.trim() == "#pragma once" => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}
