//! The cpu backend's loss ops.

use super::LossOps;
use crate::backend::cpu::{CpuBackend, CpuBuf};
use crate::backend::{View, ViewMut, validate};
use crate::error::{Error, Result};
use rayon::prelude::*;

impl LossOps for CpuBackend {
    fn softmax_xent(
        &self,
        logits: View<'_, CpuBuf>,
        labels: &CpuBuf,
        loss: &mut CpuBuf,
        dlogits: ViewMut<'_, CpuBuf>,
    ) -> Result<()> {
        let (n, classes) = validate::softmax_xent(logits, labels, loss, dlogits.as_view())?;
        let _timed = self.timed("loss", "softmax_xent", 0);
        let (logits, dlogits) = (logits.buf, dlogits.buf);
        // A value check, the cpu backend's own: the kernels cannot refuse a label without a
        // copy to the host, and give a NaN loss instead.
        let labels = &labels.f32s("labels")?[..n];
        if let Some(bad) = labels.iter().find(|&&l| !(l >= 0.0 && (l as usize) < classes && l.fract() == 0.0))
        {
            return Err(Error::Shape(format!("label {bad} is not a class index below {classes}")));
        }
        let logits = &logits.f32s("logits")?[..n * classes];
        let dlogits = &mut dlogits.f32s_mut("logit gradients")?[..n * classes];
        loss.f32s_mut("loss")?[0] = softmax_xent(logits, labels, classes, dlogits);
        Ok(())
    }
}

/// Returns the mean loss; writes `(softmax − onehot)/n` into dlogits.
pub(crate) fn softmax_xent(logits: &[f32], labels: &[f32], classes: usize, dlogits: &mut [f32]) -> f32 {
    let n = labels.len();
    let width = classes.max(1);
    // Per-row losses are collected, then added in row order (a parallel sum would not be
    // deterministic).
    let losses: Vec<f64> = dlogits
        .par_chunks_mut(width)
        .zip(logits.par_chunks(width))
        .zip(labels.par_iter())
        .map(|((d, l), &label)| {
            // Shifting by the row maximum keeps every exponent ≤ 0: no overflow however
            // large the logits; the shifted differences are exact in f64.
            let max = f64::from(l.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)));
            let shifted = |v: f32| f64::from(v) - max;
            let sum: f64 = l.iter().map(|&v| shifted(v).exp()).sum();
            let label = label as usize;
            for (j, (dj, &v)) in d.iter_mut().zip(l).enumerate() {
                let onehot = if j == label { 1.0 } else { 0.0 };
                *dj = ((shifted(v).exp() / sum - onehot) / n as f64) as f32;
            }
            sum.ln() - shifted(l[label])
        })
        .collect();
    (losses.iter().sum::<f64>() / n as f64) as f32
}
