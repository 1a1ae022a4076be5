//! Launch wrappers of `kernels/linear.cu`.

use crate::backend::At;
use crate::backend::cuda::device::{Device, LaunchCfg};
use crate::backend::cuda::params::head::LinearParams;
use crate::backend::cuda::{DeviceBuf, KernelBackend, u32_of};
use crate::backend::validate;
use crate::error::Result;

/// Threads of a warp: `linear_fwd_f32` runs one warp per output.
const WARP: usize = 32;

fn linear_params(n: usize, k: usize, out_features: usize) -> Result<LinearParams> {
    Ok(LinearParams {
        n: u32_of(n, "batch")?,
        k: u32_of(k, "features")?,
        out: u32_of(out_features, "outputs")?,
    })
}

impl<D: Device> KernelBackend<D> {
    /// See `Backend::linear_fwd`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_fwd(
        &self,
        x: &DeviceBuf<D>,
        n: usize,
        k: usize,
        w: At<'_, DeviceBuf<D>>,
        bias: At<'_, DeviceBuf<D>>,
        out_features: usize,
        y: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::linear_fwd(x, n, k, w, bias, out_features, y)?;
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

    /// See `Backend::linear_bwd`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_bwd(
        &self,
        dy: &DeviceBuf<D>,
        x: &DeviceBuf<D>,
        n: usize,
        k: usize,
        w: At<'_, DeviceBuf<D>>,
        out_features: usize,
        grads: &mut DeviceBuf<D>,
        dw_off: usize,
        dbias_off: usize,
        dx: &mut DeviceBuf<D>,
    ) -> Result<()> {
        validate::linear_bwd(dy, x, n, k, w, out_features, grads, dw_off, dbias_off, dx)?;
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
