//! The CPU emulator as a [`Device`] (feature `cuda-emu`): device memory is host memory and
//! each launch runs the kernel's C++ build (see `emu/cuda_emu.h`) with the same argument
//! array the driver would get.

use super::device::{Device, LaunchCfg};
use super::params::KernelParams;
use crate::error::{Error, Result};
use std::ffi::c_void;

/// The emulated GPU.
#[derive(Debug, Default)]
pub struct EmuDevice;

impl Device for EmuDevice {
    /// Boxed so that a buffer's address never moves.
    type Mem = Box<[f32]>;

    fn name(&self) -> String {
        "cuda-emu".into()
    }

    fn alloc_zeroed(&self, len: usize) -> Result<Box<[f32]>> {
        let mut v = Vec::new();
        v.try_reserve_exact(len.max(1)).map_err(|_| Error::OutOfMemory {
            device: self.name(),
            requested: len * 4,
            free: 0,
        })?;
        v.resize(len.max(1), 0.0);
        Ok(v.into_boxed_slice())
    }

    fn address(&self, mem: &Box<[f32]>, offset: usize) -> u64 {
        mem.as_ptr().wrapping_add(offset) as u64
    }

    fn upload(&self, mem: &mut Box<[f32]>, offset: usize, src: &[f32]) -> Result<()> {
        mem[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&self, mem: &Box<[f32]>, offset: usize, len: usize) -> Result<Vec<f32>> {
        Ok(mem[offset..offset + len].to_vec())
    }

    fn zero(&self, mem: &mut Box<[f32]>, offset: usize, len: usize) -> Result<()> {
        mem[offset..offset + len].fill(0.0);
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
        unsafe { crate::emu::launch(kernel, cfg.grid, cfg.block, cfg.shared_bytes as usize, &mut args) }
            .map_err(|e| Error::Launch { kernel: kernel.into(), message: e.to_string() })
    }
}
