//! The op contract: [`Buffers`] (buffer management through a byte-counting allocator) and one
//! trait per op family of the memory-efficient DenseNet (see "Why it is built this way" in
//! `docs/ARCHITECTURE.md`), each in its own module beside its kernels; [`Backend`] is their
//! sum. A family's module holds the trait (the maths of each op), `cpu.rs` (the cpu backend's
//! version) and `cuda.rs` (params and launches of `kernels/<family>.cu`).
//!
//! A buffer holds `f32`, or bf16 for the activation-shaped buffers of a `Precision::Bf16`
//! network ([`Dtype`]): an op's activation arguments (its [`View`]s, [`ViewMut`]s and
//! [`BnReluView`]s) are read as f32 and rounded to their buffer's type when written; every
//! other argument (weights, statistics, sums, parameters and their gradients) is f32.
//! Tensors inside buffers are described by plain offsets and
//! shapes ([`Mat`], [`Spatial`]) rather than by borrowed sub-slices, because the ops read one
//! column range of a feature storage while another op writes a different range of the same
//! storage, and because a CUDA kernel receives exactly these numbers in its params struct.
//!
//! Conventions shared by all ops:
//! * activations are NHWC with a channel pitch: element (pixel p, channel c) of a [`Mat`] is at
//!   `offset + p·ld + c`, pixel p = (n·H + y)·W + x;
//! * conv weights are OHWI (`[c_out][kh][kw][c_in]`), linear weights `[out][in]`;
//! * batch-norm is applied as the per-channel affine `a = γ/√(σ²+ε)`, `b = β − μ·a` computed
//!   from a [`BnRef`] (batch statistics in training, running statistics in eval);
//! * parameter-gradient outputs always **accumulate** (`+=`); activation-gradient outputs
//!   overwrite or accumulate as the `accumulate` flag says;
//! * per-channel reductions used by BN backward are written to a `sums` buffer as
//!   `[Σg (c values) | Σg·x̂ (c values)]`.

pub mod bn_backward;
pub mod conv;
pub mod conv1x1;
pub mod conv3x3;
pub mod cpu;
pub mod cuda;
pub mod linear;
pub mod loss;
pub mod memory;
pub mod pool;
mod select;
pub mod sgd;
pub mod stats;
pub mod transition;
pub mod unfused;
mod validate;
mod view;

pub use bn_backward::BnBackwardOps;
pub use conv::ConvOps;
pub use conv1x1::Conv1x1Ops;
pub use conv3x3::Conv3x3Ops;
pub use linear::LinearOps;
pub use loss::LossOps;
pub use pool::PoolOps;
pub use select::{AnyBackend, BackendKind, BackendTask, auto, run_on};
pub use sgd::SgdOps;
pub use stats::StatsOps;
pub use transition::TransitionOps;
pub use unfused::UnfusedOps;

/// Every op-family trait, for code that calls ops on a concrete backend (`CpuBackend`,
/// `CudaBackend`) rather than through a `B: Backend` bound: `use densenet::backend::prelude::*;`.
pub mod prelude {
    pub use super::{
        Backend, BnBackwardOps, Buffers, Conv1x1Ops, Conv3x3Ops, ConvOps, LinearOps, LossOps, PoolOps,
        SgdOps, StatsOps, TransitionOps, UnfusedOps,
    };
}

pub use memory::{Category, MemoryReport, MemoryTracker};
pub use view::{At, AtMut, BnRef, BnReluView, BnSums, LinearGrads, Mat, StatsMut, StatsRef, View, ViewMut};

use crate::error::Result;
use crate::{Dtype, Precision};

/// Batch-norm ε, as PyTorch.
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum, as PyTorch.
pub const BN_MOMENTUM: f32 = 0.1;

/// The per-channel affine `y = a·x + b` of a batch-norm with statistics (mean, biased var):
/// `a = γ/√(var + ε)`, `b = β − mean·a`, evaluated in this order in f32 by every backend, so
/// that ReLU decisions `a·x + b > 0` agree bit for bit wherever the inputs do.
pub fn bn_affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(var).map(|(g, v)| g * (1.0 / (v + BN_EPS).sqrt())).collect();
    let b = beta.iter().zip(&a).zip(mean).map(|((be, a), m)| be - m * a).collect();
    (a, b)
}

/// ReLU as PyTorch computes it: `max(v, 0)`, except that a NaN passes through (so a NaN
/// anywhere upstream reaches the loss instead of turning into a harmless 0). Every backend
/// and kernel uses this definition (`dn_relu` in kernels/common.cuh).
#[inline]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() { v } else { 0.0 }
}

/// Whether `v` replaces `best` as the maximum of a max-pool window: larger, or the window's
/// first NaN, which then stays: a window holding a NaN yields NaN, as PyTorch's max-pool.
/// (PyTorch's arg-max is the window's last NaN; only a window with a NaN, whose gradient is
/// NaN anyway, can tell the difference.)
#[inline]
pub fn max_pool_takes(v: f32, best: f32) -> bool {
    (v > best || v.is_nan()) && !best.is_nan()
}

/// Batch and spatial extent of an NHWC activation (pixels = n·h·w).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spatial {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Spatial {
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Geometry of a plain (non-fused) convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out(&self, s: Spatial) -> Spatial {
        let o = |x| crate::config::conv_out(x, self.kernel, self.stride, self.pad);
        Spatial { n: s.n, h: o(s.h), w: o(s.w) }
    }
}

/// Window of a non-overlapping average pool (the stride equals the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    pub h: usize,
    pub w: usize,
}

impl PoolWindow {
    /// Output extent: ⌊h/kh⌋ × ⌊w/kw⌋ per image.
    pub fn out(&self, s: Spatial) -> Spatial {
        Spatial { n: s.n, h: s.h / self.h.max(1), w: s.w / self.w.max(1) }
    }
}

/// Offsets of one BN layer's gradients and of the per-channel deferred-correction
/// accumulators it contributes to.
#[derive(Clone, Copy, Debug)]
pub struct BnGradTarget {
    /// Offsets of dγ and dβ in the gradient buffer.
    pub dgamma: usize,
    pub dbeta: usize,
    /// Offsets of the α and β accumulators of the deferred BN correction in the correction
    /// buffer, or `None` when the correction is applied right away (bottleneck BN).
    pub correction: Option<(usize, usize)>,
}

/// Hyper-parameters of one SGD step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// A device's buffers: allocation through the byte-counting allocator, copies to and from the
/// host, and synchronisation. Every op family builds on it.
pub trait Buffers: sealed::Sealed {
    /// A device buffer of `f32` or bf16 elements. Dropping it returns its bytes to the
    /// allocator.
    type Buf;

    /// Human-readable device name, for messages.
    fn name(&self) -> String;
    /// How this backend's convolutions multiply (set when it is made, e.g.
    /// `CpuBackend::with_precision`).
    fn precision(&self) -> Precision;

    /// A zero-filled buffer of `len` f32s, counted under `category`.
    fn alloc(&self, len: usize, category: Category) -> Result<Self::Buf> {
        self.alloc_as(len, Dtype::F32, category)
    }
    /// A zero-filled buffer of `len` elements of `dtype`, counted under `category`.
    fn alloc_as(&self, len: usize, dtype: Dtype, category: Category) -> Result<Self::Buf>;
    /// Bytes currently allocated and the peak since creation or the last reset.
    fn memory(&self) -> MemoryReport;
    /// Forget the peak: it becomes the current allocation.
    fn reset_peak(&self);
    /// Bytes the device could still hand out (host memory for the cpu backend, free device
    /// memory for a GPU), if it can tell: what decides whether a planned run is attempted.
    fn available_bytes(&self) -> Option<usize>;
    /// Refuses `needed` bytes for `what` beyond [`Buffers::available_bytes`] (see
    /// [`memory::ensure_fits`]).
    fn ensure_fits(&self, what: &str, needed: usize) -> Result<()> {
        memory::ensure_fits(what, needed, &self.name(), self.available_bytes())
    }
    /// Copies host data into `dst[offset..offset + src.len()]`, rounded to nearest even
    /// where `dst` holds bf16.
    fn upload(&self, dst: &mut Self::Buf, offset: usize, src: &[f32]) -> Result<()>;
    /// Copies `src[offset..offset + len]` to the host (widened to f32 from bf16).
    fn download(&self, src: &Self::Buf, offset: usize, len: usize) -> Result<Vec<f32>>;
    /// Sets `buf[offset..offset + len]` to zero.
    fn fill_zero(&self, buf: &mut Self::Buf, offset: usize, len: usize) -> Result<()>;
    /// Waits for queued work to finish.
    fn synchronize(&self) -> Result<()>;
}

/// A compute device with every op of the memory-efficient DenseNet: the sum of the op
/// families, each a trait in its own module beside its kernels (`stats`, `bn_backward`,
/// `conv1x1`, `conv3x3`, `transition`, `conv`, `pool`, `linear`, `loss`, `sgd`). The unfused ops
/// that only the baseline needs are [`UnfusedOps`], not part of it.
///
/// Implemented by the cpu backend and the kernel backends (GPU, emulator) only: the traits are
/// sealed, so that every implementation is one this crate tests against the reference.
pub trait Backend:
    Buffers
    + StatsOps
    + BnBackwardOps
    + Conv1x1Ops
    + Conv3x3Ops
    + TransitionOps
    + ConvOps
    + PoolOps
    + LinearOps
    + LossOps
    + SgdOps
{
}

impl<T> Backend for T where
    T: Buffers
        + StatsOps
        + BnBackwardOps
        + Conv1x1Ops
        + Conv3x3Ops
        + TransitionOps
        + ConvOps
        + PoolOps
        + LinearOps
        + LossOps
        + SgdOps
{
}

mod sealed {
    /// Only this crate's backends implement [`super::Buffers`].
    pub trait Sealed {}
    impl Sealed for super::cpu::CpuBackend {}
    impl<D: super::cuda::Device> Sealed for super::cuda::KernelBackend<D> {}
}
