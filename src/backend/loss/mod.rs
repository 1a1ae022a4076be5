//! Softmax cross-entropy.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/loss.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::SoftmaxXentParams;

use crate::backend::{Buffers, View, ViewMut};
use crate::error::Result;

/// Softmax cross-entropy.
pub trait LossOps: Buffers {
    /// Mean softmax cross-entropy of `logits` (n × classes) against `labels` (n class indices
    /// stored as exact small integers in f32): `loss[0]` ← the mean loss,
    /// `dlogits ← (softmax − onehot)/n`. Numerically stable (max subtracted).
    fn softmax_xent(
        &self,
        logits: View<'_, Self::Buf>,
        labels: &Self::Buf,
        loss: &mut Self::Buf,
        dlogits: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
}
