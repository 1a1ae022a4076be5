//! The cpu backend's linear ops.

use super::LinearOps;
use crate::backend::cpu::{CpuBackend, CpuBuf};
use crate::backend::{At, LinearGrads, View, ViewMut, validate};
use crate::error::Result;
use rayon::prelude::*;

impl LinearOps for CpuBackend {
    fn linear_fwd(
        &self,
        x: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        bias: At<'_, CpuBuf>,
        y: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, k, out_features) = validate::linear_fwd(x, w, bias, y.as_view())?;
        let _timed = self.timed("linear", "linear_fwd", 2 * n * k * out_features);
        let (x, y) = (x.buf, y.buf);
        linear_fwd(
            x.f32s("activations")?,
            n,
            k,
            &w.buf.f32s("weights")?[w.offset..w.offset + out_features * k],
            &bias.buf.f32s("biases")?[bias.offset..bias.offset + out_features],
            y.f32s_mut("outputs")?,
        );
        Ok(())
    }

    fn linear_bwd(
        &self,
        dy: View<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        w: At<'_, CpuBuf>,
        grads: LinearGrads<'_, CpuBuf>,
        dx: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, k, out_features) =
            validate::linear_bwd(dy, x, w, grads.grads, grads.dw, grads.dbias, dx.as_view())?;
        let _timed = self.timed("linear", "linear_bwd", 4 * n * k * out_features);
        let LinearGrads { grads, dw: dw_off, dbias: dbias_off } = grads;
        let (dy, x, dx) = (dy.buf, x.buf, dx.buf);
        linear_bwd(
            dy.f32s("output gradients")?,
            x.f32s("activations")?,
            n,
            k,
            &w.buf.f32s("weights")?[w.offset..w.offset + out_features * k],
            grads.f32s_mut("parameter gradients")?,
            dw_off,
            dbias_off,
            dx.f32s_mut("input gradients")?,
        );
        Ok(())
    }
}

pub(crate) fn linear_fwd(x: &[f32], n: usize, k: usize, w: &[f32], bias: &[f32], y: &mut [f32]) {
    let out = bias.len();
    y[..n * out].par_chunks_mut(out.max(1)).enumerate().for_each(|(i, yi)| {
        let xi = &x[i * k..][..k];
        for (o, (yo, &b)) in yi.iter_mut().zip(bias).enumerate() {
            *yo = b + xi.iter().zip(&w[o * k..][..k]).map(|(a, b)| a * b).sum::<f32>();
        }
    });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_bwd(
    dy: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    w: &[f32],
    grads: &mut [f32],
    dw_off: usize,
    dbias_off: usize,
    dx: &mut [f32],
) {
    // With k = 0 the weight is empty and says nothing of the output width; nothing to do.
    let Some(out) = w.len().checked_div(k) else { return };
    grads[dw_off..dw_off + out * k].par_chunks_mut(k).enumerate().for_each(|(o, dwo)| {
        for i in 0..n {
            let d = dy[i * out + o];
            dwo.iter_mut().zip(&x[i * k..][..k]).for_each(|(g, &xv)| *g += d * xv);
        }
    });
    for (o, db) in grads[dbias_off..dbias_off + out].iter_mut().enumerate() {
        *db += (0..n).map(|i| dy[i * out + o]).sum::<f32>();
    }
    dx[..n * k].par_chunks_mut(k).enumerate().for_each(|(i, dxi)| {
        dxi.fill(0.0);
        for (&d, wo) in dy[i * out..][..out].iter().zip(w.chunks_exact(k)) {
            dxi.iter_mut().zip(wo).for_each(|(g, &wv)| *g += d * wv);
        }
    });
}
