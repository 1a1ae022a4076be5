//! Plain convolution (the stems' first layer; also the baseline's).
//!
//! The trait states each op's maths; `cpu.rs` is the cpu backend's version, `cuda.rs` the
//! params and launch of `kernels/conv.cu` for the kernel backends.

pub(in crate::backend) mod cpu;
pub(in crate::backend) mod cuda;

pub use cuda::ConvParams;

use crate::backend::{At, AtMut, Buffers, ConvGeom, Spatial, View, ViewMut};
use crate::error::Result;

/// Plain convolution (the stems' first layer; also the baseline's).
pub trait ConvOps: Buffers {
    /// Plain convolution `y = conv(x, W)`, W OHWI `[y.cols][k][k][x.cols]`. Overwrites y.
    fn conv_fwd(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += wgrad(x, dy)` of a plain convolution.
    fn conv_wgrad(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dx = dgrad(dy, W)` of a plain convolution (overwrites dx). `shape` is x's.
    fn conv_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
}
