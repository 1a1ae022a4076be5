//! The classifier: a dense linear layer.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/linear.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::LinearParams;

use crate::backend::{At, Buffers, LinearGrads, View, ViewMut};
use crate::error::Result;

/// The classifier: a dense linear layer.
pub trait LinearOps: Buffers {
    /// `logits = x · Wᵀ + bias` with x `n×k` dense, W `[out][k]`.
    fn linear_fwd(
        &self,
        x: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        bias: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dyᵀ·x`, `dbias += Σ dy`, `dx = dy·W` (overwrites dx).
    fn linear_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        grads: LinearGrads<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
}
