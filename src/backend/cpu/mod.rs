//! The `cpu` backend: plain Rust computing in f32 (on activations stored in f32 or bf16, see
//! `elem`), the executable specification of every fused op and the CPU fallback. GEMMs run
//! on row chunks of the pixel dimension — through our AVX-512 kernel (`avx512_gemm`) where the
//! CPU has it, else `matrixmultiply` — so no op materialises more than a chunk of its fused
//! (BN-ReLU'd, im2col'd) input: the same working-set discipline as the CUDA kernels'
//! shared-memory tiles.
//!
//! Results do not depend on the number of threads (they do on whether the CPU has AVX-512:
//! the two GEMMs round differently): work is split into fixed chunks and
//! per-chunk partial reductions are combined in chunk order.
//!
//! This module holds the buffers and what the op families share: the GEMM and im2col
//! machinery (`gemm`) and the row-chunking drivers (`rows`). Each op lives with its family
//! (`backend::<family>::cpu`) and first checks its arguments against the contract all
//! backends share (`backend::validate`); the slicing relies on it and cannot go out of bounds.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512_gemm;
#[cfg(test)]
mod conv_tests;
pub(crate) mod elem;
pub(crate) mod gemm;
mod op_times;
#[cfg(test)]
mod oracle;
#[cfg(test)]
mod pointwise_tests;
pub(crate) mod rows;
pub(crate) mod simd;

use super::{BN_EPS, BnRef, Buffers, Category, MemoryReport, MemoryTracker, StatsRef, bn_affine, validate};
use crate::error::{Error, Result};
use crate::{Dtype, Precision};
use elem::{CpuData, Elem, with_elems};
pub use op_times::OpTime;
use op_times::{OpTimer, OpTimes};
use std::sync::Arc;

/// A host buffer of f32 or bf16 elements whose bytes are counted by the backend's tracker
/// while it lives.
#[derive(Debug)]
pub struct CpuBuf {
    pub(crate) data: CpuData,
    category: Category,
    tracker: Arc<MemoryTracker>,
}

impl CpuBuf {
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.len() == 0
    }
    pub fn dtype(&self) -> Dtype {
        self.data.dtype()
    }
    fn bytes(&self) -> usize {
        self.len() * self.dtype().size()
    }

    /// The elements of an f32 buffer (parameters, statistics, sums, the head); an error naming
    /// `what` for a bf16 one.
    pub(crate) fn f32s(&self, what: &str) -> Result<&[f32]> {
        match &self.data {
            CpuData::F32(v) => Ok(v),
            CpuData::Bf16(_) => Err(not_f32(what)),
        }
    }

    pub(crate) fn f32s_mut(&mut self, what: &str) -> Result<&mut [f32]> {
        match &mut self.data {
            CpuData::F32(v) => Ok(v),
            CpuData::Bf16(_) => Err(not_f32(what)),
        }
    }
}

fn not_f32(what: &str) -> Error {
    Error::Shape(format!("{what}: a bf16 buffer where the op needs f32"))
}

impl Drop for CpuBuf {
    fn drop(&mut self) {
        self.tracker.freed(self.bytes(), self.category);
    }
}

/// The CPU backend. Cloning shares the allocation counter (and the op times).
#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    tracker: Arc<MemoryTracker>,
    times: Option<Arc<OpTimes>>,
    pub(crate) precision: Precision,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// This backend computing its convolutions in `precision`: for tf32, every GEMM operand
    /// is rounded as the tensor-core kernels round it (see [`Precision::Tf32`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        CpuBackend { precision, ..self }
    }

    /// A backend that records the wall time of every op it runs ([`CpuBackend::op_times`]).
    pub fn with_op_times() -> Self {
        CpuBackend { times: Some(Arc::default()), ..Self::default() }
    }

    /// Time, calls and multiply-add flops of every op run since creation or the last
    /// [`CpuBackend::clear_op_times`], by family and op; empty unless made
    /// [`CpuBackend::with_op_times`].
    pub fn op_times(&self) -> Vec<OpTime> {
        self.times.as_ref().map(|t| t.rows()).unwrap_or_default()
    }

    pub fn clear_op_times(&self) {
        if let Some(t) = &self.times {
            t.clear();
        }
    }

    /// Times the op running until the returned guard drops, if op times are on.
    pub(crate) fn timed(&self, family: &'static str, op: &'static str, flops: usize) -> Option<OpTimer<'_>> {
        self.times.as_deref().map(|t| OpTimer::start(t, family, op, flops as u64))
    }
}

/// A batch-norm resolved to per-channel host vectors: `y = a·x + b`, `x̂ = (x − mean)·invstd`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bn {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
}

impl Bn {
    pub(crate) fn resolve(bn: BnRef<'_, CpuBuf>, channels: usize) -> Result<Bn> {
        let stats = StatsRef { stats: bn.stats, mean: bn.mean, var: bn.var };
        let (mean, invstd) = resolve_stats(stats, channels)?;
        let s = bn.stats.f32s("batch-norm statistics")?;
        let p = bn.params.f32s("batch-norm parameters")?;
        let (a, b) = bn_affine(
            &p[bn.gamma..bn.gamma + channels],
            &p[bn.beta..bn.beta + channels],
            &mean,
            &s[bn.var..bn.var + channels],
        );
        Ok(Bn { a, b, mean, invstd })
    }
}

pub(crate) fn resolve_stats(s: StatsRef<'_, CpuBuf>, channels: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let d = s.stats.f32s("batch-norm statistics")?;
    let mean = d[s.mean..s.mean + channels].to_vec();
    let invstd = d[s.var..s.var + channels].iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    Ok((mean, invstd))
}

impl Buffers for CpuBackend {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn alloc_as(&self, len: usize, dtype: Dtype, category: Category) -> Result<CpuBuf> {
        fn zeroed<T: Clone + Default>(len: usize, dtype: Dtype) -> Result<Vec<T>> {
            let mut data = Vec::new();
            data.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
                device: "cpu".into(),
                requested: len.saturating_mul(dtype.size()),
                free: super::memory::host_available_bytes().unwrap_or(0),
            })?;
            data.resize(len, T::default());
            Ok(data)
        }
        let data = match dtype {
            Dtype::F32 => CpuData::F32(zeroed(len, dtype)?),
            Dtype::Bf16 => CpuData::Bf16(zeroed(len, dtype)?),
        };
        let buf = CpuBuf { data, category, tracker: self.tracker.clone() };
        self.tracker.allocated(buf.bytes(), category);
        Ok(buf)
    }

    fn memory(&self) -> MemoryReport {
        self.tracker.report()
    }

    fn reset_peak(&self) {
        self.tracker.reset_peak()
    }

    fn available_bytes(&self) -> Option<usize> {
        super::memory::host_available_bytes()
    }

    fn upload(&self, dst: &mut CpuBuf, offset: usize, src: &[f32]) -> Result<()> {
        validate::range(dst, offset, src.len(), "upload")?;
        with_elems!({
            d[offset..offset + src.len()].iter_mut().zip(src).for_each(|(d, &v)| *d = Elem::put(v))
        } mut d = dst);
        Ok(())
    }

    fn download(&self, src: &CpuBuf, offset: usize, len: usize) -> Result<Vec<f32>> {
        validate::range(src, offset, len, "download")?;
        Ok(with_elems!({ s[offset..offset + len].iter().map(|v| v.get()).collect() } s = src))
    }

    fn fill_zero(&self, buf: &mut CpuBuf, offset: usize, len: usize) -> Result<()> {
        validate::range(buf, offset, len, "fill_zero")?;
        with_elems!({ b[offset..offset + len].fill(Default::default()) } mut b = buf);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
