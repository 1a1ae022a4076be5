//! Backends that run the hand-written kernels of `kernels/*.cu`: [`CudaBackend`] on a GPU
//! through the CUDA driver and, with feature `cuda-emu`, `EmuBackend` on the CPU emulator.
//! Both are [`KernelBackend`] over a [`Device`]: the launch wrappers (params structs, grids,
//! blocks) are written once, so CI exercises the Rust side of every launch; their argument
//! checks are `backend::validate`, shared with the cpu backend.
//!
//! `KernelBackend` implements [`Buffers`] here and every op family in that family's
//! `cuda.rs` (`backend::<family>::cuda`): its `#[repr(C)]` params struct, mirrored in
//! `kernels/<family>.cu`, and its launches — statistics, batch-norm backward pieces, the fused
//! 1×1 / 3×3 / transition GEMMs with their BN-ReLU prologues and BN-backward epilogues, stem
//! convolutions and pooling, the head, loss, optimiser, and the unfused ops of the baseline. Reductions that span many blocks write per-split
//! partials into the backend's scratch and a second kernel adds them in a fixed order, so
//! every result is deterministic.

pub(crate) mod device;
mod driver;
#[cfg(feature = "cuda-emu")]
mod emulated;
pub(crate) mod launch;

pub use device::{Device, LaunchCfg};
pub use driver::CudaDevice;
#[cfg(feature = "cuda-emu")]
pub use emulated::EmuDevice;
pub use launch::{SplitSumParams, TileSumsParams};

use super::{Buffers, Category, MemoryReport, MemoryTracker, validate};
use crate::error::{Error, Result};
use crate::precision::{bf16_bits, bf16_value};
use crate::{Dtype, Precision};
use bytemuck::Pod;
use cudarc::driver::DeviceRepr;
use std::sync::{Arc, Mutex};

/// A device buffer of `len` elements of `dtype` (f32 or bf16) whose bytes are counted while it
/// lives.
pub struct DeviceBuf<D: Device> {
    mem: D::Mem,
    len: usize,
    dtype: Dtype,
    category: Category,
    tracker: Arc<MemoryTracker>,
}

impl<D: Device> DeviceBuf<D> {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
    /// Size in bytes.
    fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
}

impl<D: Device> Drop for DeviceBuf<D> {
    fn drop(&mut self) {
        self.tracker.freed(self.bytes(), self.category);
    }
}

/// Floats of device scratch a kernel backend reserves when it is created (16 MiB, counted
/// under [`Category::Workspace`]): room for the per-split partial results of deterministic
/// split reductions (split-K weight gradients, per-channel sums over many pixel tiles), which
/// a second kernel combines in a fixed order instead of racing float atomics.
pub const SCRATCH_FLOATS: usize = 1 << 22;

/// Kernel launches on a device, with a byte-counting allocator.
pub struct KernelBackend<D: Device> {
    pub(crate) device: Arc<D>,
    tracker: Arc<MemoryTracker>,
    /// Shared by clones. The lock is held while a wrapper enqueues the kernels that use the
    /// scratch; later launches on the device's one stream run after them, so the next user
    /// cannot overwrite partials that are still to be read.
    scratch: Arc<Mutex<DeviceBuf<D>>>,
    pub(crate) precision: Precision,
}

impl<D: Device> Clone for KernelBackend<D> {
    fn clone(&self) -> Self {
        KernelBackend {
            device: self.device.clone(),
            tracker: self.tracker.clone(),
            scratch: self.scratch.clone(),
            precision: self.precision,
        }
    }
}

/// The GPU backend.
pub type CudaBackend = KernelBackend<CudaDevice>;
/// The same kernels on the CPU emulator.
#[cfg(feature = "cuda-emu")]
pub type EmuBackend = KernelBackend<EmuDevice>;

impl CudaBackend {
    /// Opens GPU `ordinal`; a clear error when there is no CUDA driver or no such GPU.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::on(CudaDevice::new(ordinal)?)
    }
}

#[cfg(feature = "cuda-emu")]
impl EmuBackend {
    pub fn new() -> Result<Self> {
        Self::on(EmuDevice)
    }
}

impl<D: Device> KernelBackend<D> {
    /// A backend on `device`; reserves the [`SCRATCH_FLOATS`] scratch.
    pub fn on(device: D) -> Result<Self> {
        let tracker = Arc::new(MemoryTracker::new());
        // Split partials are written before they are read, which the emulator's memory check
        // verifies on uninitialised memory.
        let mem = device.alloc_uninit(SCRATCH_FLOATS * Dtype::F32.size())?;
        tracker.allocated(SCRATCH_FLOATS * Dtype::F32.size(), Category::Workspace);
        let scratch = DeviceBuf {
            mem,
            len: SCRATCH_FLOATS,
            dtype: Dtype::F32,
            category: Category::Workspace,
            tracker: tracker.clone(),
        };
        Ok(KernelBackend {
            device: Arc::new(device),
            tracker,
            scratch: Arc::new(Mutex::new(scratch)),
            precision: Precision::Fp32,
        })
    }

    /// This backend running its convolutions in `precision` ([`Precision`]): tf32 and bf16
    /// take the tensor-core kernels, which need compute capability 8.0 or newer; bf16 also
    /// runs every op on bf16 activations (`precision.storage()`).
    pub fn with_precision(self, precision: Precision) -> Result<Self> {
        if precision != Precision::Fp32 {
            let arch = self.device.compute_capability()?;
            if arch.major < 8 {
                return Err(Error::Config(format!(
                    "precision {precision} needs tensor cores of compute capability 8.0 or newer; {} is {}.{}",
                    self.device.name(),
                    arch.major,
                    arch.minor
                )));
            }
        }
        Ok(KernelBackend { precision, ..self })
    }

    /// Runs `enqueue` with the device address of `floats` floats of scratch (see
    /// [`SCRATCH_FLOATS`]); errors if more is asked for.
    pub(crate) fn with_scratch<R>(&self, floats: usize, enqueue: impl FnOnce(u64) -> Result<R>) -> Result<R> {
        if floats > SCRATCH_FLOATS {
            return Err(Error::Shape(format!(
                "{floats} floats of kernel scratch requested, {SCRATCH_FLOATS} reserved"
            )));
        }
        let scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        enqueue(self.device.address(&scratch.mem, 0))
    }

    /// Address of element `offset` of `buf`, for a kernel argument.
    pub(crate) fn addr(&self, buf: &DeviceBuf<D>, offset: usize) -> u64 {
        self.device.address(&buf.mem, offset * buf.dtype.size())
    }
}

/// `v` as a 32-bit kernel field (callers have bounded it by a buffer length check).
pub(crate) fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape(format!("{what} = {v} exceeds the kernels' 32-bit extents")))
}

impl<D: Device> Buffers for KernelBackend<D> {
    type Buf = DeviceBuf<D>;

    fn name(&self) -> String {
        self.device.name()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc_as(&self, len: usize, dtype: Dtype, category: Category) -> Result<DeviceBuf<D>> {
        let bytes = len.checked_mul(dtype.size()).ok_or_else(|| Error::OutOfMemory {
            device: self.name(),
            requested: len.saturating_mul(dtype.size()),
            free: self.available_bytes().unwrap_or(0),
        })?;
        let mem = self.device.alloc_zeroed(bytes)?;
        self.tracker.allocated(bytes, category);
        Ok(DeviceBuf { mem, len, dtype, category, tracker: self.tracker.clone() })
    }

    fn memory(&self) -> MemoryReport {
        self.tracker.report()
    }

    fn reset_peak(&self) {
        self.tracker.reset_peak()
    }

    /// Free device memory (host memory for the emulator), if the device can tell.
    fn available_bytes(&self) -> Option<usize> {
        self.device.free_bytes()
    }

    fn upload(&self, dst: &mut DeviceBuf<D>, offset: usize, src: &[f32]) -> Result<()> {
        validate::range(dst, offset, src.len(), "upload")?;
        let at = offset * dst.dtype.size();
        match dst.dtype {
            Dtype::F32 => self.device.upload(&mut dst.mem, at, bytemuck::cast_slice(src)),
            Dtype::Bf16 => {
                let bits: Vec<u16> = src.iter().map(|&x| bf16_bits(x)).collect();
                self.device.upload(&mut dst.mem, at, bytemuck::cast_slice(&bits))
            }
        }
    }

    fn download(&self, src: &DeviceBuf<D>, offset: usize, len: usize) -> Result<Vec<f32>> {
        validate::range(src, offset, len, "download")?;
        let size = src.dtype.size();
        let bytes = self.device.download(&src.mem, offset * size, len * size)?;
        // Element by element: the downloaded bytes need not be aligned for a cast.
        Ok(match src.dtype {
            Dtype::F32 => {
                bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Dtype::Bf16 => {
                bytes.chunks_exact(2).map(|b| bf16_value(u16::from_ne_bytes([b[0], b[1]]))).collect()
            }
        })
    }

    fn fill_zero(&self, buf: &mut DeviceBuf<D>, offset: usize, len: usize) -> Result<()> {
        validate::range(buf, offset, len, "fill_zero")?;
        let size = buf.dtype.size();
        self.device.zero(&mut buf.mem, offset * size, len * size)
    }

    fn synchronize(&self) -> Result<()> {
        self.device.synchronize()
    }
}

/// A params struct a kernel takes by value: `#[repr(C)]`, mirrored field for field by the
/// struct of the same name in its family's `.cu` file. `tests/kernel_params.rs` compares the
/// two (fields, types, offsets, size) and the `.cu` side `static_assert`s the size, so a
/// one-sided edit is caught.
pub trait KernelParams: Pod + DeviceRepr {}

/// Implements cudarc's `DeviceRepr` and [`KernelParams`] for params structs.
macro_rules! kernel_params {
    ($($name:ident),* $(,)?) => {
        $(
            // SAFETY: plain-old-data `#[repr(C)]` structs laid out as their CUDA mirrors.
            unsafe impl cudarc::driver::DeviceRepr for $name {}
            impl $crate::backend::cuda::KernelParams for $name {}
        )*
    };
}
pub(crate) use kernel_params;

/// The entry point of a convolution op for the backend's precision: `<op>_f32` (SIMT f32),
/// `<op>_tf32` or `<op>_bf16` (tensor cores; bf16 also on bf16 activations), as a
/// `&'static str` for the launch.
macro_rules! conv_kernel {
    ($backend:expr, $op:literal) => {
        match $backend.precision {
            $crate::Precision::Fp32 => concat!($op, "_f32"),
            $crate::Precision::Tf32 => concat!($op, "_tf32"),
            $crate::Precision::Bf16 => concat!($op, "_bf16"),
        }
    };
}
pub(crate) use conv_kernel;

/// The entry point of an op whose kernels differ only in the activation element type (the
/// statistics, batch-norm backward and pooling families): `<op>_f32` or `<op>_bf16` by the
/// backend's storage dtype, which `KernelBackend::dtypes` has checked the activations against.
macro_rules! storage_kernel {
    ($backend:expr, $op:literal) => {
        match $backend.precision.storage() {
            $crate::Dtype::F32 => concat!($op, "_f32"),
            $crate::Dtype::Bf16 => concat!($op, "_bf16"),
        }
    };
}
pub(crate) use storage_kernel;
