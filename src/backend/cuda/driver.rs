//! The CUDA driver as a [`Device`], through cudarc: one context, one non-default stream (so
//! launches and copies are ordered without events, and the whole step could be captured as a
//! CUDA graph), uploads staged through pinned host memory so they are truly asynchronous,
//! kernel modules loaded on first use and cached.

use super::KernelParams;
use super::device::{Device, LaunchCfg};
use crate::error::{Error, Result};
use crate::kernels::{GpuArch, KernelSource, MODULES, compile_nvrtc, module_of};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
    LaunchConfig, PinnedHostSlice, PushKernelArg, sys,
};
use cudarc::nvrtc::Ptx;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How many staging buffers (one per upload size in bytes) are kept: a training step uploads two
/// lengths (images, labels); more only occur in tests and at set-up.
const STAGING_BUFFERS: usize = 4;

/// A pinned host buffer that uploads of its length are copied through, with the event
/// recorded after the last copy out of it: the buffer is rewritten only once that event has
/// completed, so an upload in flight never reads the next upload's data.
struct Staging {
    host: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The pinned memory is freed right after this: the copy out of it must be done. An
        // error here leaves nothing to clean up, and the stream's next call reports it.
        let _ = self.copied.synchronize();
    }
}

/// [`Error::Driver`] from cudarc's error: the code, its constant's name and the driver's
/// description, so the public error type carries the information without cudarc's type.
fn driver_error(e: DriverError) -> Error {
    let message = e.error_string().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
    Error::Driver { code: e.0 as u32, name: format!("{:?}", e.0), message }
}

/// One GPU.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    modules: Mutex<Vec<Option<Arc<CudaModule>>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    staging: Mutex<BTreeMap<usize, Staging>>,
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
        let ctx = CudaContext::new(ordinal).map_err(driver_error)?;
        // SAFETY: everything runs on the one stream below, so its order is the only
        // synchronisation needed and per-buffer events would be pure overhead. Disabled before
        // the stream is created, so creating it does not synchronise the context either.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own rather than the legacy default stream, which synchronises with
        // every other blocking stream and cannot be captured into a CUDA graph.
        let stream = ctx.new_stream().map_err(driver_error)?;
        let name = format!("cuda:{ordinal} ({})", ctx.name().map_err(driver_error)?);
        Ok(CudaDevice {
            ctx,
            stream,
            name,
            modules: Mutex::new(vec![None; MODULES.len()]),
            functions: Mutex::new(HashMap::new()),
            staging: Mutex::new(BTreeMap::new()),
        })
    }

    /// The GPU's compute capability.
    fn arch(&self) -> Result<GpuArch> {
        let cc = |a| self.ctx.attribute(a).map(|v| v as u32).map_err(driver_error);
        Ok(GpuArch {
            major: cc(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            minor: cc(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
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
            KernelSource::Cuda(_) => Ptx::from_src(compile_nvrtc(spec, self.arch()?)?),
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
            driver_error(e)
        }
    }
}

impl Device for CudaDevice {
    type Mem = CudaSlice<u8>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn compute_capability(&self) -> Result<GpuArch> {
        self.arch()
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // A zero-length request still gets a (4-byte) allocation, so every buffer has a valid
        // address.
        self.stream.alloc_zeros::<u8>(bytes.max(4)).map_err(|e| self.out_of_memory(e, bytes))
    }

    fn alloc_uninit(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: bytes have no invalid bit patterns, and the callers' kernels write before
        // they read (the emulator's memory check tests exactly that).
        unsafe { self.stream.alloc::<u8>(bytes.max(4)) }.map_err(|e| self.out_of_memory(e, bytes))
    }

    fn address(&self, mem: &CudaSlice<u8>, offset: usize) -> u64 {
        let (ptr, _sync) = mem.device_ptr(&self.stream);
        ptr + offset as u64
    }

    /// Enqueues the copy and returns without waiting for it: `src` is first copied into a
    /// pinned staging buffer of its length (after the previous copy out of that buffer has
    /// completed), from which the DMA runs asynchronously.
    fn upload(&self, mem: &mut CudaSlice<u8>, offset: usize, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if !staging.contains_key(&src.len()) && staging.len() >= STAGING_BUFFERS {
            // Dropping one waits for its last copy (Staging's Drop).
            staging.pop_first();
        }
        let buf = match staging.entry(src.len()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                // SAFETY: the memory is uninitialised, and written below before any copy reads it.
                let host = unsafe { self.ctx.alloc_pinned::<u8>(src.len()) }.map_err(driver_error)?;
                let copied =
                    self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(driver_error)?;
                e.insert(Staging { host, copied })
            }
        };
        buf.copied.synchronize().map_err(driver_error)?;
        buf.host.as_mut_slice().map_err(driver_error)?.copy_from_slice(src);
        let mut dst = mem.slice_mut(offset..offset + src.len());
        self.stream.memcpy_htod(&buf.host, &mut dst).map_err(driver_error)?;
        buf.copied.record(&self.stream).map_err(driver_error)
    }

    fn download(&self, mem: &CudaSlice<u8>, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        self.stream.memcpy_dtoh(&mem.slice(offset..offset + len), &mut out).map_err(driver_error)?;
        self.stream.synchronize().map_err(driver_error)?;
        Ok(out)
    }

    fn zero(&self, mem: &mut CudaSlice<u8>, offset: usize, len: usize) -> Result<()> {
        self.stream.memset_zeros(&mut mem.slice_mut(offset..offset + len)).map_err(driver_error)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_error)
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
