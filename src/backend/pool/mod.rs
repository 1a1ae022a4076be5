//! The fused pooling ops: the ImageNet stem's BN-ReLU-maxpool and the head's BN-ReLU-global-
//! average-pool.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/pool.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::{GlobalPoolParams, MaxPoolParams};

use crate::backend::{BnReluView, Buffers, Spatial, View, ViewMut};
use crate::error::Result;

/// The fused pooling ops: the ImageNet stem's BN-ReLU-maxpool and the head's BN-ReLU-global-
/// average-pool.
pub trait PoolOps: Buffers {
    /// ImageNet stem tail: `y = maxpool3x3/2,pad1(relu(a⊙t + b))`. Overwrites y.
    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// Backward of [`PoolOps::bn_relu_maxpool_fwd`] up to the BN: the window's arg-max
    /// (first maximum in row-major window order, as PyTorch) is recomputed from t; writes
    /// `g = scatter(dy) ⊙ [a⊙t + b > 0]` into g (overwrites) and `sums ← [Σg | Σg·t̂]`.
    fn bn_relu_maxpool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        t: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        g: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    /// `pooled[n, c] = mean over pixels of image n of relu(a⊙x + b)`; pooled is N×C dense.
    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        pooled: &mut Self::Buf,
    ) -> Result<()>;

    /// `g = dpooled/(h·w) broadcast ⊙ [a⊙x + b > 0]`; `dx ← a⊙g` (overwrites);
    /// `sums ← [Σg | Σg·x̂]`.
    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &Self::Buf,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;
}
