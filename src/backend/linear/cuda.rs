//! Launch wrappers of `kernels/linear.cu`.
//! Params of `kernels/linear.cu`.

use super::LinearOps;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::{DeviceBuf, KernelBackend, kernel_params, u32_of};
use crate::backend::{At, LinearGrads, View, ViewMut, validate};
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// `kernels/linear.cu`: x is `n × k`, W `out × k`, y and dy `n × out`, all dense.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct LinearParams {
    pub n: u32,
    pub k: u32,
    pub out: u32,
}

kernel_params!(LinearParams);

/// Threads of a warp: `linear_fwd_f32` runs one warp per output.
const WARP: usize = 32;

fn linear_params(n: usize, k: usize, out_features: usize) -> Result<LinearParams> {
    Ok(LinearParams {
        n: u32_of(n, "batch")?,
        k: u32_of(k, "features")?,
        out: u32_of(out_features, "outputs")?,
    })
}

impl<D: Device> LinearOps for KernelBackend<D> {
    fn linear_fwd(
        &self,
        x: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        bias: At<'_, DeviceBuf<D>>,
        y: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        let (n, k, out_features) = validate::linear_fwd(x, w, bias, y.as_view())?;
        self.dtypes(&[], &[("x", x.buf), ("w", w.buf), ("bias", bias.buf), ("y", &*y.buf)])?;
        let (x, y) = (x.buf, y.buf);
        if n * out_features == 0 {
            return Ok(());
        }
        let p = linear_params(n, k, out_features)?;
        let addrs =
            [self.addr(x, 0), self.addr(w.buf, w.offset), self.addr(bias.buf, bias.offset), self.addr(y, 0)];
        let cfg = LaunchCfg::per_element::<256>(n * out_features * WARP);
        // SAFETY: x covers n × k floats, W out × k, bias out, y n × out (checked above).
        unsafe { self.device.launch("linear_fwd_f32", cfg, &p, &addrs) }
    }

    fn linear_bwd(
        &self,
        dy: View<'_, DeviceBuf<D>>,
        x: View<'_, DeviceBuf<D>>,
        w: At<'_, DeviceBuf<D>>,
        grads: LinearGrads<'_, DeviceBuf<D>>,
        dx: ViewMut<'_, DeviceBuf<D>>,
    ) -> Result<()> {
        let (n, k, out_features) =
            validate::linear_bwd(dy, x, w, grads.grads, grads.dw, grads.dbias, dx.as_view())?;
        self.dtypes(
            &[],
            &[("dy", dy.buf), ("x", x.buf), ("w", w.buf), ("grads", &*grads.grads), ("dx", &*dx.buf)],
        )?;
        let LinearGrads { grads, dw: dw_off, dbias: dbias_off } = grads;
        let (dy, x, dx) = (dy.buf, x.buf, dx.buf);
        // One thread per element of [dW | dbias] (out × (k + 1)), then one per element of dx.
        let threads = out_features * (k + 1) + n * k;
        if threads == 0 {
            return Ok(());
        }
        let p = linear_params(n, k, out_features)?;
        let addrs = [
            self.addr(dy, 0),
            self.addr(x, 0),
            self.addr(w.buf, w.offset),
            self.addr(grads, dw_off),
            self.addr(grads, dbias_off),
            self.addr(dx, 0),
        ];
        // SAFETY: dy covers n × out floats, x and dx n × k, W and dW out × k, dbias out
        // (checked above).
        unsafe { self.device.launch("linear_bwd_f32", LaunchCfg::per_element::<256>(threads), &p, &addrs) }
    }
}
