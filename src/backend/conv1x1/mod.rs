//! The dense layer's bottleneck: BN-ReLU-conv1×1 forward, weight gradient and data gradient with
//! the BN-ReLU backward epilogue.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/conv1x1.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::Conv1x1Params;

use crate::backend::{At, AtMut, BnReluView, Buffers, View, ViewMut};
use crate::error::Result;

/// The dense layer's bottleneck: BN-ReLU-conv1×1 forward, weight gradient and data gradient with
/// the BN-ReLU backward epilogue.
pub trait Conv1x1Ops: Buffers {
    /// `z = relu(a⊙x + b) · Wᵀ`, W = `[z.cols][x.cols]` at `w`. Overwrites z.
    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        z: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dzᵀ · relu(a⊙x + b)`, dW = `[dz.cols][x.cols]` at `dw`.
    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, Self::Buf>,
        dz: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = (dz · W) ⊙ [a⊙x + b > 0]` is never stored: `dx (+)= a ⊙ g` is written to `dx`
    /// (which may be the storage `x` reads from, another buffer in practice: the gradient
    /// storage) and `sums ← [Σg | Σg·x̂]` per channel of x.
    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        x: BnReluView<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
        accumulate: bool,
        sums: &mut Self::Buf,
    ) -> Result<()>;
}
