//! The CUDA driver as a [`Device`], through cudarc: one context, one stream (so launches and
//! copies are ordered without events), kernel modules loaded on first use and cached.

use super::device::{Device, LaunchCfg};
use super::params::KernelParams;
use crate::error::{Error, Result};
use crate::kernels::{GpuArch, KernelSource, MODULES, compile_nvrtc, module_of};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig,
    PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One GPU.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    modules: Mutex<Vec<Option<Arc<CudaModule>>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Fails with a clear error (instead of cudarc's panic) when no CUDA
    /// driver is installed.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to load the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::BackendUnavailable(
                "no CUDA driver found (libcuda could not be loaded); use --backend cpu".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: everything runs on the one stream below, so its order is the only
        // synchronisation needed and per-buffer events would be pure overhead.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = format!("cuda:{ordinal} ({})", ctx.name()?);
        Ok(CudaDevice {
            ctx,
            stream,
            name,
            modules: Mutex::new(vec![None; MODULES.len()]),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Module `index` of [`MODULES`], compiled (NVRTC sources) and loaded on first use. A module
    /// that fails is not cached, names itself in the error and leaves every other module usable.
    fn module(&self, index: usize) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = &modules[index] {
            return Ok(m.clone());
        }
        let spec = &MODULES[index];
        let ptx = match spec.source {
            KernelSource::Ptx(text) => Ptx::from_src(text),
            KernelSource::Cuda(_) => {
                let cc = |a| self.ctx.attribute(a).map(|v| v as u32);
                let arch = GpuArch {
                    major: cc(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                    minor: cc(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                };
                Ptx::from_src(compile_nvrtc(spec, arch)?)
            }
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| Error::KernelLoad { module: spec.name.into(), message: e.to_string() })?;
        modules[index] = Some(module.clone());
        Ok(module)
    }

    /// The function named `kernel`, from the module the build-time table says defines it.
    fn function(&self, kernel: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(kernel) {
            return Ok(f.clone());
        }
        let index = module_of(kernel).ok_or_else(|| Error::Launch {
            kernel: kernel.into(),
            message: "no kernel module defines it (it is not in the build's kernel table)".into(),
        })?;
        let f = self.module(index)?.load_function(kernel).map_err(|e| Error::Launch {
            kernel: kernel.into(),
            message: format!("not found in its module `{}`: {e}", MODULES[index].name),
        })?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel, f.clone());
        Ok(f)
    }

    fn out_of_memory(&self, e: DriverError, bytes: usize) -> Error {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let free = self.ctx.mem_get_info().map(|(free, _)| free).unwrap_or(0);
            Error::OutOfMemory { device: self.name.clone(), requested: bytes, free }
        } else {
            e.into()
        }
    }
}

impl Device for CudaDevice {
    type Mem = CudaSlice<f32>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc_zeroed(&self, len: usize) -> Result<CudaSlice<f32>> {
        // A zero-length request still gets a (one-element) allocation, so every buffer has
        // a valid address.
        self.stream.alloc_zeros::<f32>(len.max(1)).map_err(|e| self.out_of_memory(e, len * 4))
    }

    fn address(&self, mem: &CudaSlice<f32>, offset: usize) -> u64 {
        let (ptr, _sync) = mem.device_ptr(&self.stream);
        ptr + (offset * size_of::<f32>()) as u64
    }

    fn upload(&self, mem: &mut CudaSlice<f32>, offset: usize, src: &[f32]) -> Result<()> {
        let mut dst = mem.slice_mut(offset..offset + src.len());
        Ok(self.stream.memcpy_htod(src, &mut dst)?)
    }

    fn download(&self, mem: &CudaSlice<f32>, offset: usize, len: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; len];
        self.stream.memcpy_dtoh(&mem.slice(offset..offset + len), &mut out)?;
        self.stream.synchronize()?;
        Ok(out)
    }

    fn zero(&self, mem: &mut CudaSlice<f32>, offset: usize, len: usize) -> Result<()> {
        Ok(self.stream.memset_zeros(&mut mem.slice_mut(offset..offset + len))?)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn free_bytes(&self) -> Option<usize> {
        self.ctx.mem_get_info().ok().map(|(free, _total)| free)
    }

    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &'static str,
        cfg: LaunchCfg,
        params: &P,
        addresses: &[u64],
    ) -> Result<()> {
        let f = self.function(kernel)?;
        let mut args = self.stream.launch_builder(&f);
        args.arg(params);
        for a in addresses {
            args.arg(a);
        }
        let config = LaunchConfig {
            grid_dim: (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
            block_dim: (cfg.block[0], cfg.block[1], cfg.block[2]),
            shared_mem_bytes: cfg.shared_bytes,
        };
        // SAFETY: the caller guarantees the arguments match the kernel and its accesses.
        unsafe { args.launch(config) }
            .map(|_| ())
            .map_err(|e| Error::Launch { kernel: kernel.into(), message: e.to_string() })
    }
}
