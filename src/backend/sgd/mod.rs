//! The optimiser: a fused SGD step with momentum and weight decay.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/sgd.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::SgdKernelParams;

use crate::backend::{Buffers, SgdParams};
use crate::error::Result;

/// The optimiser: a fused SGD step with momentum and weight decay.
pub trait SgdOps: Buffers {
    /// One fused SGD step over `len` parameters: `d = g + wd·p`, `v = μ·v + d`,
    /// `p −= lr·(d + μ·v)` (Nesterov) or `p −= lr·v`.
    fn sgd_update(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        velocity: &mut Self::Buf,
        len: usize,
        hp: SgdParams,
    ) -> Result<()>;
}
