//! The dense layer's 3×3 convolution (stride 1, pad 1) with its BN-ReLU prologue.
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/conv3x3.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::Conv3x3Params;

use crate::backend::{At, AtMut, BnReluView, Buffers, Spatial, View, ViewMut};
use crate::error::Result;

/// The dense layer's 3×3 convolution (stride 1, pad 1) with its BN-ReLU prologue.
pub trait Conv3x3Ops: Buffers {
    /// `y = conv3x3(relu(a⊙z + b), W)`, W = `[y.cols][3][3][z.cols]`. Overwrites y.
    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += wgrad3x3(relu(a⊙z + b), dy)`.
    fn bn_relu_conv3x3_wgrad(
        &self,
        z: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = dgrad3x3(dy, W) ⊙ [a⊙z + b > 0]` into `g` (overwrites), and
    /// `sums ← [Σg | Σg·ẑ]` per channel of z.
    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        z: BnReluView<'_, Self::Buf>,
        g: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;
}
