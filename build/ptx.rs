//! The CUDA part of the build script: every `kernels/*.cu` becomes PTX with nvcc when one is
//! found (`NVCC`, then `$CUDA_PATH/bin`, `$CUDA_HOME/bin`, then `PATH`), for `CUDA_ARCH`
//! (default sm_90). Without nvcc the sources are embedded, local `#include "…"` files
//! inlined, for NVRTC at run time. A kernel nvcc rejects fails the build, with nvcc's output:
//! there is no silent fallback. `$OUT_DIR/kernels.rs` lists the modules and, for every kernel
//! entry point, its module, for `src/kernels.rs`: the names come from `kernel_scan.rs` (there is
//! no preprocessor without nvcc), and with nvcc the build also checks them against the `.entry`
//! names of each PTX.

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
    let mut kernels_of: Vec<(String, usize)> = Vec::new();
    for (index, file) in cu.into_iter().enumerate() {
        let name = file.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8");
        // What NVRTC compiles, and what the scanner reads (its line numbers refer to this file).
        let src = out.join(format!("{name}.cu"));
        let inlined = inline_includes(file, &kernels, &mut Vec::new());
        fs::write(&src, &inlined).expect("write kernel source");
        let entries = crate::kernel_scan::scan(&inlined).unwrap_or_else(|e| {
            panic!(
                "kernel scanner: {} (includes inlined: {}): {e}\nsee build/kernel_scan.rs for the forms it reads",
                file.display(),
                src.display()
            )
        });
        let source = match &nvcc {
            Some(nvcc) => {
                let ptx = out.join(format!("{name}.ptx"));
                compile_ptx(nvcc, &arch, &kernels, file, &ptx);
                check_entries(&ptx, &entries);
                format!("KernelSource::Ptx(include_str!({:?}))", ptx.display().to_string())
            }
            None => format!("KernelSource::Cuda(include_str!({:?}))", src.display().to_string()),
        };
        writeln!(table, "    KernelModule {{ name: {name:?}, source: {source} }},").unwrap();
        kernels_of.extend(entries.into_iter().map(|k| (k, index)));
    }
    table.push_str("];\n");
    kernels_of.sort();
    if let Some(w) = kernels_of.windows(2).find(|w| w[0].0 == w[1].0) {
        panic!("kernel `{}` is defined in modules {} and {}", w[0].0, w[0].1, w[1].1);
    }
    table.push_str(
        "/// Every kernel entry point with the index of its module in [`MODULES`], sorted by name.\n\
         pub const KERNELS: &[(&str, usize)] = &[\n",
    );
    for (kernel, index) in &kernels_of {
        writeln!(table, "    ({kernel:?}, {index}),").unwrap();
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

/// Fails the build unless the `.entry` functions of `ptx` are exactly the scanned `entries`:
/// the table built from the scan is what the runtime trusts.
fn check_entries(ptx: &Path, entries: &[String]) {
    let text = fs::read_to_string(ptx).unwrap_or_else(|e| panic!("read {}: {e}", ptx.display()));
    let mut in_ptx: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(".entry ")?;
            Some(rest.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(rest))
        })
        .collect();
    in_ptx.sort_unstable();
    let mut scanned: Vec<&str> = entries.iter().map(String::as_str).collect();
    scanned.sort_unstable();
    if in_ptx != scanned {
        let missing: Vec<&&str> = in_ptx.iter().filter(|k| !scanned.contains(k)).collect();
        let extra: Vec<&&str> = scanned.iter().filter(|k| !in_ptx.contains(k)).collect();
        panic!(
            "kernel scanner disagrees with nvcc for {}: in the PTX only {missing:?}, scanned only {extra:?}\n\
             see build/kernel_scan.rs for the forms it reads",
            ptx.display()
        );
    }
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
