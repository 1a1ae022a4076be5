//! The unfused ops only the baseline needs.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/unfused.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::{UnfusedParams, UnfusedPoolParams};

use crate::backend::{BnRef, Buffers, PoolWindow, Spatial, StatsRef, View, ViewMut};
use crate::error::Result;

/// The unfused ops only the baseline needs.
pub trait UnfusedOps: Buffers {
    /// `dst ← src` (or `dst += src` with `accumulate`), element by element, for two matrices
    /// of the same shape: builds a concatenation column range by column range, and splits
    /// its gradient back onto the concatenated tensors.
    fn copy_columns(
        &self,
        src: View<'_, Self::Buf>,
        dst: ViewMut<'_, Self::Buf>,
        accumulate: bool,
    ) -> Result<()>;

    /// `y = a⊙x + b`: a batch-norm's output, stored (same f32 formula as the fused ops'
    /// pre-activation, so a ReLU of it makes the same decisions). Overwrites y.
    fn bn_apply(
        &self,
        x: View<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `y = max(x, 0)`. Overwrites y.
    fn relu_fwd(&self, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;

    /// ReLU backward in place: `g ← g ⊙ [x > 0]`, x being the ReLU's input.
    fn relu_bwd(&self, g: ViewMut<'_, Self::Buf>, x: View<'_, Self::Buf>) -> Result<()>;

    /// The reductions of a batch-norm backward: `sums ← [Σg | Σg·x̂]` per channel, g being the
    /// gradient of the BN output and x̂ = (x − mean)/√(var + ε) of its input. Feeds
    /// [`BnBackwardOps::bn_grad_fold`](crate::backend::BnBackwardOps::bn_grad_fold) (dγ, dβ) and [`BnBackwardOps::bn_backward_elementwise`](crate::backend::BnBackwardOps::bn_backward_elementwise) (dx).
    fn bn_grad_sums(
        &self,
        g: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        stats: StatsRef<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    /// Average pooling over non-overlapping `window`s (stride = window, no padding; a last
    /// partial row or column of windows is dropped, as PyTorch's `AvgPool2d(k)`): y has
    /// ⌊h/kh⌋×⌊w/kw⌋ pixels per image. `window = (2, 2)` is the transition's pool,
    /// `window = (h, w)` the head's global pool. Overwrites y.
    fn avg_pool_fwd(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// Backward of [`UnfusedOps::avg_pool_fwd`]: `dx = dy/(kh·kw)` on every pixel of a window,
    /// 0 on dropped pixels. `shape` is x's. Overwrites dx.
    fn avg_pool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// The ImageNet stem's max-pool 3×3, stride 2, padding 1 (padding never wins).
    /// Overwrites y.
    fn max_pool_fwd(&self, x: View<'_, Self::Buf>, shape: Spatial, y: ViewMut<'_, Self::Buf>) -> Result<()>;

    /// Backward of [`UnfusedOps::max_pool_fwd`]: each dy goes to its window's first maximum in
    /// row-major window order (recomputed from x; PyTorch's choice), summed where windows
    /// overlap. `shape` is x's. Overwrites dx.
    fn max_pool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
}
