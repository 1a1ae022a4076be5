//! The pieces of a batch-norm backward: the elementwise backward, the fold into dγ, dβ and the
//! deferred correction, and that correction.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/bn_backward.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::{BnElementwiseParams, BnFoldParams};

use crate::backend::{BnGradTarget, BnRef, BnSums, Buffers, StatsRef, View, ViewMut};
use crate::error::Result;

/// The pieces of a batch-norm backward: the elementwise backward, the fold into dγ, dβ and the
/// deferred correction, and that correction.
pub trait BnBackwardOps: Buffers {
    /// In place `g ← a·(g − Σg/P − x̂·Σ(g·x̂)/P)`: the full BN backward of an input x whose
    /// gradient `g` (already masked by the ReLU) and sums are given. P = `gm.rows`.
    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        sums: &Self::Buf,
    ) -> Result<()>;

    /// Turns `sums = [Σg | Σg·x̂]` (c channels, over `count` values each) into dγ += Σg·x̂,
    /// dβ += Σg in `grads`, and, if `target.correction` is set, the deferred-correction
    /// accumulators `α += a·Σg/P`, `β += a·Σ(g·x̂)/P` in `corr`.
    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        grads: &mut Self::Buf,
        corr: &mut Self::Buf,
        target: BnGradTarget,
    ) -> Result<()>;

    /// The deferred BN correction, applied once per channel:
    /// `g[:, c] −= α_c + x̂_c·β_c` with α at `corr[alpha + c]`, β at `corr[beta + c]`.
    fn bn_correction(
        &self,
        g: ViewMut<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        stats: StatsRef<'_, Self::Buf>,
        corr: &Self::Buf,
        alpha: usize,
        beta: usize,
    ) -> Result<()>;
}
