//! What a kernel backend needs from a device: memory, copies and kernel launches. Two
//! devices implement it — the CUDA driver (`driver.rs`) and, with feature `cuda-emu`, the CPU
//! emulator (`emulated.rs`) — so every launch wrapper (params struct, grid and block) is
//! shared and the emulator exercises the Rust side of each launch too.

use super::KernelParams;
use crate::error::Result;
use crate::kernels::GpuArch;

/// Grid and block of a launch, and its dynamic shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// One thread per element of `n`, in blocks of `THREADS`.
    pub fn per_element<const THREADS: u32>(n: usize) -> Self {
        LaunchCfg { grid: [blocks_for(n, THREADS), 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }
    }

    /// A grid-stride loop over `n` elements: blocks of `THREADS`, at most `max_blocks` of them.
    pub fn grid_stride<const THREADS: u32>(n: usize, max_blocks: u32) -> Self {
        let blocks = blocks_for(n, THREADS).min(max_blocks);
        LaunchCfg { grid: [blocks, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }
    }

    /// Blocks of `COLS × ROWS` threads, one block column per `COLS` channels and
    /// `row_blocks` blocks along the rows.
    pub fn channel_tiles<const COLS: u32, const ROWS: u32>(cols: usize, row_blocks: u32) -> Self {
        LaunchCfg {
            grid: [blocks_for(cols, COLS), row_blocks.max(1), 1],
            block: [COLS, ROWS, 1],
            shared_bytes: 0,
        }
    }

    /// A single block of `THREADS`.
    pub fn single_block<const THREADS: u32>() -> Self {
        LaunchCfg { grid: [1, 1, 1], block: [THREADS, 1, 1], shared_bytes: 0 }
    }
}

/// ⌈n / per⌉ as a grid dimension (at least 1, so an empty launch is still well formed).
fn blocks_for(n: usize, per: u32) -> u32 {
    u32::try_from(n.div_ceil(per as usize)).unwrap_or(u32::MAX).max(1)
}

/// Memory and launches of one device. Memory is counted in bytes: a buffer's elements are f32
/// or bf16 (`DeviceBuf::dtype`), which the kernel backend converts to and from on the host.
pub trait Device: Send + Sync + 'static {
    /// An allocation of bytes.
    type Mem: Send + Sync;

    fn name(&self) -> String;
    /// The compute capability the device runs kernels as.
    fn compute_capability(&self) -> Result<GpuArch>;
    /// `bytes` zeroed bytes.
    fn alloc_zeroed(&self, bytes: usize) -> Result<Self::Mem>;
    /// `bytes` bytes of unspecified contents, for memory kernels write before they read (the
    /// emulator poisons it and its memory check reports reads of bytes never written).
    fn alloc_uninit(&self, bytes: usize) -> Result<Self::Mem>;
    /// Device address of byte `offset` of `mem` (what a kernel's pointer argument holds).
    fn address(&self, mem: &Self::Mem, offset: usize) -> u64;
    /// Copies `src` to bytes `offset..` of `mem`.
    fn upload(&self, mem: &mut Self::Mem, offset: usize, src: &[u8]) -> Result<()>;
    /// Bytes `offset..offset + len` of `mem`.
    fn download(&self, mem: &Self::Mem, offset: usize, len: usize) -> Result<Vec<u8>>;
    /// Zeroes bytes `offset..offset + len` of `mem`.
    fn zero(&self, mem: &mut Self::Mem, offset: usize, len: usize) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    /// Bytes the device could still allocate, if it can tell.
    fn free_bytes(&self) -> Option<usize>;

    /// Launches `kernel(params, addresses...)`.
    ///
    /// # Safety
    /// `params` and `addresses` must match the kernel's signature, and every address must
    /// point into a live allocation of this device large enough for all the accesses the
    /// kernel makes through it for these params.
    unsafe fn launch<P: KernelParams>(
        &self,
        kernel: &'static str,
        cfg: LaunchCfg,
        params: &P,
        addresses: &[u64],
    ) -> Result<()>;
}
