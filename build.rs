//! Build script: the CUDA kernels as PTX (nvcc) or embedded sources (NVRTC), see
//! `build/ptx.rs`; with feature `cuda-emu` also compiled for the host CPU emulator, see
//! `build/emu.rs`.

#[path = "build/emu.rs"]
mod emu;
#[path = "build/emu_shared.rs"]
mod emu_shared;
#[path = "build/kernel_scan.rs"]
mod kernel_scan;
#[path = "build/ptx.rs"]
mod ptx;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build");
    ptx::build();
    if std::env::var_os("CARGO_FEATURE_CUDA_EMU").is_some() {
        emu::build();
    }
}
