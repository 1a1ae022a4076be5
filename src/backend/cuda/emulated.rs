//! The CPU emulator as a [`Device`] (feature `cuda-emu`): device memory is host memory (an
//! [`emu::Buffer`] per allocation: guard zones, poisoned until written, known to the
//! emulator's memory check) and each launch runs the kernel's C++ build (see
//! `emu/cuda_emu.h`) with the same argument array the driver would get.

use super::KernelParams;
use super::device::{Device, LaunchCfg};
use crate::emu::{self, Buffer};
use crate::error::{Error, Result};
use crate::kernels::GpuArch;
use std::ffi::c_void;

/// The emulated GPU.
#[derive(Debug, Default)]
pub struct EmuDevice;

impl EmuDevice {
    fn out_of_memory(&self, bytes: usize) -> Error {
        Error::OutOfMemory { device: self.name(), requested: bytes, free: self.free_bytes().unwrap_or(0) }
    }
}

impl Device for EmuDevice {
    type Mem = Buffer;

    fn name(&self) -> String {
        "cuda-emu".into()
    }

    /// The emulator runs every instruction the kernels use, tensor-core ones included, as an
    /// sm_90 GPU would.
    fn compute_capability(&self) -> Result<GpuArch> {
        Ok(GpuArch { major: 9, minor: 0 })
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<Buffer> {
        Buffer::zeroed(bytes).ok_or_else(|| self.out_of_memory(bytes))
    }

    fn alloc_uninit(&self, bytes: usize) -> Result<Buffer> {
        Buffer::uninit(bytes).ok_or_else(|| self.out_of_memory(bytes))
    }

    fn address(&self, mem: &Buffer, offset: usize) -> u64 {
        mem.addr(offset)
    }

    fn upload(&self, mem: &mut Buffer, offset: usize, src: &[u8]) -> Result<()> {
        mem.write(offset, src);
        Ok(())
    }

    fn download(&self, mem: &Buffer, offset: usize, len: usize) -> Result<Vec<u8>> {
        Ok(mem.bytes()[offset..offset + len].to_vec())
    }

    fn zero(&self, mem: &mut Buffer, offset: usize, len: usize) -> Result<()> {
        mem.fill(offset, len, 0);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn free_bytes(&self) -> Option<usize> {
        crate::backend::memory::host_available_bytes()
    }

    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &'static str,
        cfg: LaunchCfg,
        params: &P,
        addresses: &[u64],
    ) -> Result<()> {
        let mut args: Vec<*mut c_void> = Vec::with_capacity(1 + addresses.len());
        args.push(params as *const P as *mut c_void);
        args.extend(addresses.iter().map(|a| a as *const u64 as *mut c_void));
        // SAFETY: the caller guarantees params and addresses match the kernel's signature
        // and accesses; `args` points at values that outlive the (synchronous) launch.
        unsafe { emu::launch(kernel, cfg.grid, cfg.block, cfg.shared_bytes as usize, &mut args, addresses) }
            .map_err(|e| Error::Launch { kernel: kernel.into(), message: e.to_string() })
    }
}
