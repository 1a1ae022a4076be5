//! The transition: BN-ReLU-avgpool2-conv1×1, pooled before the convolution.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/transition.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::TransitionParams;

use crate::backend::{At, AtMut, BnReluView, Buffers, Spatial, View, ViewMut};
use crate::error::Result;

/// The transition: BN-ReLU-avgpool2-conv1×1, pooled before the convolution.
pub trait TransitionOps: Buffers {
    /// `y = avgpool2(relu(a⊙x + b)) · Wᵀ` (pool first: pool and 1×1 conv commute). x has
    /// spatial `shape`, y has `⌊h/2⌋×⌊w/2⌋`. Overwrites y.
    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dyᵀ · avgpool2(relu(a⊙x + b))`.
    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = unpool2(dy · W)/4 ⊙ [a⊙x + b > 0]`; `dx ← a⊙g` (overwrites, every element of
    /// dx, zero where the pool dropped an odd row/column); `sums ← [Σg | Σg·x̂]`.
    fn bn_relu_avgpool_conv1x1_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;
}
