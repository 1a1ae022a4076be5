//! The CUDA kernels of `kernels/*.cu`, as build.rs prepared them: PTX compiled by nvcc when
//! the build found one, otherwise the CUDA sources (local includes inlined) for NVRTC to
//! compile at run time.

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
