//! The CUDA kernels of `kernels/*.cu`, as build.rs prepared them: PTX compiled by nvcc when
//! the build found one, otherwise the CUDA sources (local includes inlined) for NVRTC to
//! compile at run time — by [`compile_nvrtc`], which both `CudaDevice` and `densenet kernels
//! --compile` call, so CI compiles exactly what a GPU run would. [`KERNELS`] maps every entry
//! point to its module (read from the sources at build time, see `build/kernel_scan.rs`), so a
//! kernel is loaded from its own module only.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How a kernel module is shipped in the binary.
#[derive(Clone, Copy, Debug)]
pub enum KernelSource {
    /// PTX for the architecture build.rs targeted (`CUDA_ARCH`, default sm_90).
    Ptx(&'static str),
    /// CUDA C++ source, self-contained, for NVRTC.
    Cuda(&'static str),
}

/// One `kernels/<name>.cu`.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    pub name: &'static str,
    pub source: KernelSource,
}

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// Index into [`MODULES`] of the module that defines `kernel`.
pub fn module_of(kernel: &str) -> Option<usize> {
    KERNELS.binary_search_by(|(k, _)| (*k).cmp(kernel)).ok().map(|i| KERNELS[i].1)
}

/// The kernels module `index` defines, sorted by name.
pub fn kernels_of(index: usize) -> impl Iterator<Item = &'static str> {
    KERNELS.iter().filter(move |(_, m)| *m == index).map(|(k, _)| *k)
}

/// A GPU architecture to compile for, as a compute capability (`sm_90` → 9.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuArch {
    pub major: u32,
    pub minor: u32,
}

impl FromStr for GpuArch {
    type Err = Error;

    /// `sm_90`, `compute_90` or `90`.
    fn from_str(s: &str) -> Result<Self> {
        let digits = s.strip_prefix("sm_").or_else(|| s.strip_prefix("compute_")).unwrap_or(s);
        let bad = || Error::Config(format!("architecture `{s}`: expected sm_<major><minor>, e.g. sm_90"));
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (major, minor) = digits.split_at(digits.len() - 1);
        Ok(GpuArch { major: major.parse().map_err(|_| bad())?, minor: minor.parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for GpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// The NVRTC options every kernel module is compiled with.
fn nvrtc_options(arch: GpuArch) -> Vec<String> {
    vec![format!("--gpu-architecture=compute_{}{}", arch.major, arch.minor), "-std=c++17".into()]
}

/// Fails with [`Error::MissingLibrary`] unless libnvrtc can be loaded: cudarc panics on the
/// first NVRTC call when it cannot.
fn require_nvrtc() -> Result<()> {
    // SAFETY: only tries to load the library.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Ok(());
    }
    Err(Error::MissingLibrary {
        library: "NVRTC (libnvrtc)".into(),
        searched: {
            let mut names = cudarc::get_lib_name_candidates("nvrtc");
            names.dedup();
            names
        },
        hint: "set LD_LIBRARY_PATH to the directory holding libnvrtc.so.13 (and libnvrtc-builtins.so.13.0), \
               e.g. the lib/ of the CUDA 13.0 toolkit or of the nvidia-cuda-nvrtc wheel"
            .into(),
    })
}

/// The version of the NVRTC library that [`compile_nvrtc`] uses, as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call only writes the two integers.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().map_err(|e| Error::KernelLoad {
        module: "(none)".into(),
        message: format!("nvrtcVersion: {e:?}"),
    })?;
    Ok((major, minor))
}

/// Compiles `module`'s embedded CUDA source with NVRTC for `arch` and returns the PTX, exactly
/// as `CudaDevice` does before loading it (it passes the GPU's compute capability). No GPU is
/// needed. A compile error carries NVRTC's log, whose line numbers refer to the source with
/// its includes inlined (`$OUT_DIR/<module>.cu` of the build).
pub fn compile_nvrtc(module: &KernelModule, arch: GpuArch) -> Result<String> {
    let KernelSource::Cuda(src) = module.source else {
        return Err(Error::Config(format!(
            "kernel module `{}` is PTX from nvcc in this build, not CUDA source: NVRTC has nothing to \
             compile (build without nvcc — NVCC, CUDA_PATH, CUDA_HOME unset and no nvcc on PATH — to \
             embed the sources)",
            module.name
        )));
    };
    require_nvrtc()?;
    let err = |message: String| Error::KernelLoad { module: module.name.into(), message };
    if src.contains('\0') {
        // cudarc would panic on the interior NUL when it makes the C string.
        return Err(err("the source contains a NUL byte".into()));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: nvrtc_options(arch),
        name: Some(format!("{}.cu", module.name)),
        ..Default::default()
    };
    match cudarc::nvrtc::compile_ptx_with_opts(src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(cudarc::nvrtc::CompileError::CompileError { nvrtc, options, log }) => Err(err(format!(
            "NVRTC {nvrtc:?} with options {}:\n{}",
            options.join(" "),
            log.to_string_lossy().trim_end()
        ))),
        Err(e) => Err(err(format!("NVRTC: {e:?}"))),
    }
}

#[cfg(test)]
#[path = "../build/kernel_scan.rs"]
mod kernel_scan;

#[cfg(test)]
mod tests {
    use super::kernel_scan::scan;
    use super::*;

    #[test]
    fn direct_and_macro_kernels_are_found_in_source_order() {
        let src = r#"
// extern "C" __global__ void in_a_comment(
/* extern "C" __global__ void in_a_block_comment( */
#include "common.cuh"
#define DN_BN_EPS 1e-5f
extern "C" __global__ void direct_f32(const P p, float* x) { }
#define DN_X_KERNELS(T, SUFFIX)                                      \
    extern "C" __global__ void __launch_bounds__(kThreads * 2)        \
        fwd_##SUFFIX(const P p, const T* x) { fwd<T>(p, x); }         \
    extern "C" __global__ void bwd_##SUFFIX##_v2(const P p, T* g) { } \
    extern "C" __global__ void SUFFIX(const P p) { }
DN_X_KERNELS(float, f32)
DN_X_KERNELS( double , f64 )
extern "C" __global__ void __launch_bounds__(256) last(const P p) {}
"#;
        let names = scan(src).unwrap();
        assert_eq!(
            names,
            ["direct_f32", "fwd_f32", "bwd_f32_v2", "f32", "fwd_f64", "bwd_f64_v2", "f64", "last"]
        );
    }

    #[test]
    fn a_line_comment_continued_by_a_backslash_hides_the_next_line() {
        let src = "#define K(S) extern \"C\" __global__ void k_##S() {} // note \\\n\
                   extern \"C\" __global__ void hidden() {}\nK(f32)\n";
        assert_eq!(scan(src).unwrap(), ["k_f32"]);
    }

    #[test]
    fn conditional_code_around_no_kernel_is_read_through() {
        let src = "#if defined(X)\n#define W 1\n__device__ int f() { return 1; }\n#elif Y\n#else\n#endif\n\
                   extern \"C\" __global__ void k() {}\n";
        assert_eq!(scan(src).unwrap(), ["k"]);
    }

    #[test]
    fn unreadable_sources_are_rejected_with_the_reason() {
        let cases = [
            ("__global__ void k(int x) {}", "without `extern \"C\"`"),
            ("extern \"C\" { __global__ void k(int x) {} }", "without `extern \"C\"`"),
            ("extern \"C\" __global__ int k(int x) {}", "expected `extern"),
            ("extern \"C\" __global__ void __launch_bounds__(256 k(int x) {}", "unbalanced"),
            ("extern \"C\" __global__ void* k(int x) {}", "kernel name expected, found `*`"),
            ("extern \"C\" __global__ void k<float>(int x) {}", "`(` expected after kernel `k`"),
            ("#if 1\nextern \"C\" __global__ void k() {}\n#endif", "conditional compilation"),
            ("#if 1\n#define K(S) extern \"C\" __global__ void k_##S() {}\n#endif\nK(f32)", "conditional"),
            ("#define K(S) extern \"C\" __global__ void k_##S() {}\n#ifdef X\nK(f32)\n#endif", "conditional"),
            ("#if 1\nint x;\n", "never closed"),
            ("int x;\n#endif\n", "without an open `#if`"),
            ("#define K(S) extern \"C\" __global__ void k_##S() {}\nK(f32, f64)", "takes 1 arguments, got 2"),
            (
                "#define K(S) extern \"C\" __global__ void k_##S() {}\nK(unsigned int)",
                "not a single identifier",
            ),
            ("#define K(S) extern \"C\" __global__ void k_##S() {}", "never instantiated"),
            ("#define K extern \"C\" __global__ void k() {}\nK", "object-like macro"),
            (
                "#define K(S) extern \"C\" __global__ void k_##S() {}\n#define L(S) K(S)\nL(f32)",
                "nested kernel macros",
            ),
            ("#define K(S) extern \"C\" __global__ void k_##S() {}\nK(f32)\n#undef K", "#undef K"),
            ("extern \"C\" __global__ void k() {}\nextern \"C\" __global__ void k() {}", "defined twice"),
            ("/* extern \"C\" __global__ void k() {}", "unterminated comment"),
        ];
        for (src, why) in cases {
            match scan(src) {
                Err(e) => assert!(e.contains(why), "{src:?}: {e:?} does not say {why:?}"),
                Ok(names) => panic!("{src:?} was accepted as {names:?}"),
            }
        }
    }

    #[test]
    fn every_module_is_scanned_and_every_kernel_has_one_module() {
        assert!(!MODULES.is_empty());
        for (index, module) in MODULES.iter().enumerate() {
            assert!(kernels_of(index).next().is_some(), "module {} defines no kernel", module.name);
        }
        assert!(KERNELS.windows(2).all(|w| w[0].0 < w[1].0), "sorted and unique");
        let loss = MODULES.iter().position(|m| m.name == "loss").unwrap();
        assert_eq!(module_of("softmax_xent_f32"), Some(loss));
        assert_eq!(module_of("no_such_kernel"), None);
    }

    #[test]
    fn nvrtc_failures_name_the_module_with_its_log_or_the_missing_library() {
        let broken = KernelModule {
            name: "broken",
            source: KernelSource::Cuda("extern \"C\" __global__ void k() { no_such_name = 1; }"),
        };
        match compile_nvrtc(&broken, GpuArch { major: 9, minor: 0 }) {
            Err(Error::KernelLoad { module, message }) => {
                assert_eq!(module, "broken");
                assert!(message.contains("broken.cu") && message.contains("no_such_name"), "{message}");
            }
            // Without libnvrtc on the loader's path: the error says what was looked for.
            Err(e @ Error::MissingLibrary { .. }) => {
                let text = e.to_string();
                assert!(text.contains("libnvrtc.so.13") && text.contains("LD_LIBRARY_PATH"), "{text}");
            }
            other => panic!("expected a compile error, got {other:?}"),
        }
        let ptx = KernelModule { name: "nvcc", source: KernelSource::Ptx(".version 9.0") };
        assert!(matches!(compile_nvrtc(&ptx, GpuArch { major: 9, minor: 0 }), Err(Error::Config(_))));
    }

    #[test]
    fn architectures_parse_from_sm_compute_or_digits() {
        assert_eq!("sm_90".parse::<GpuArch>().unwrap(), GpuArch { major: 9, minor: 0 });
        assert_eq!("compute_86".parse::<GpuArch>().unwrap(), GpuArch { major: 8, minor: 6 });
        assert_eq!("120".parse::<GpuArch>().unwrap(), GpuArch { major: 12, minor: 0 });
        assert_eq!(GpuArch { major: 9, minor: 0 }.to_string(), "sm_90");
        for bad in ["sm_9", "sm_9x", "", "gfx90a"] {
            assert!(matches!(bad.parse::<GpuArch>(), Err(Error::Config(_))), "{bad}");
        }
    }
}
