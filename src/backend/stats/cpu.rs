//! The cpu backend's stats ops.

use super::StatsOps;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::rows::{reduce_rows, row};
use crate::backend::cpu::simd::multiversioned;
use crate::backend::cpu::{CpuBackend, CpuBuf};
use crate::backend::{BN_MOMENTUM, Mat, StatsMut, StatsRef, View, validate};
use crate::error::Result;

impl StatsOps for CpuBackend {
    fn channel_stats(&self, x: View<'_, CpuBuf>, out: StatsMut<'_, CpuBuf>) -> Result<()> {
        validate::channel_stats(&x, &out)?;
        let _timed = self.timed("stats", "channel_stats", 0);
        let View { buf: x, mat: xm } = x;
        let StatsMut { stats: out, mean, var } = out;
        let (m, v) = with_elems!({ channel_stats(x, xm) } x = x);
        let out = out.f32s_mut("channel statistics")?;
        out[mean..mean + xm.cols].copy_from_slice(&m);
        out[var..var + xm.cols].copy_from_slice(&v);
        Ok(())
    }

    fn update_running_stats(
        &self,
        batch: StatsRef<'_, CpuBuf>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, CpuBuf>,
    ) -> Result<()> {
        validate::update_running_stats(batch, channels, &running)?;
        let _timed = self.timed("stats", "update_running_stats", 0);
        let StatsMut { stats: running, mean: run_mean, var: run_var } = running;
        let s = batch.stats.f32s("batch statistics")?;
        update_running_stats(
            &s[batch.mean..batch.mean + channels],
            &s[batch.var..batch.var + channels],
            count,
            running.f32s_mut("running statistics")?,
            run_mean,
            run_var,
        );
        Ok(())
    }
}

pub(crate) fn channel_stats<T: Elem>(x: &[T], xm: Mat) -> (Vec<f32>, Vec<f32>) {
    let count = xm.rows as f64;
    // Two passes in f64: the variance is a sum of squared deviations from the exact mean,
    // so it keeps its precision when |mean| ≫ std (E[x²] − E[x]² would cancel it away).
    let sum = reduce_rows(xm.rows, xm.cols, |p, acc| add_row(acc, row(x, xm, p)));
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let squares = reduce_rows(xm.rows, xm.cols, |p, acc| add_squared_deviations(acc, row(x, xm, p), &mean));
    (mean.iter().map(|&m| m as f32).collect(), squares.iter().map(|s| (s / count) as f32).collect())
}

multiversioned! {
    /// `acc += x` in f64, for one pixel row.
    fn add_row<T: Elem>(acc: &mut [f64], x: &[T]) {
        let c = acc.len();
        let x = &x[..c];
        for j in 0..c {
            acc[j] += f64::from(x[j].get());
        }
    }
}

multiversioned! {
    /// `acc += (x − mean)²` in f64, for one pixel row.
    fn add_squared_deviations<T: Elem>(acc: &mut [f64], x: &[T], mean: &[f64]) {
        let c = acc.len();
        let (x, mean) = (&x[..c], &mean[..c]);
        for j in 0..c {
            let d = f64::from(x[j].get()) - mean[j];
            acc[j] += d * d;
        }
    }
}

pub(crate) fn update_running_stats(
    mean: &[f32],
    var: &[f32],
    count: usize,
    running: &mut [f32],
    run_mean: usize,
    run_var: usize,
) {
    let m = BN_MOMENTUM;
    // Running variance is the unbiased estimate, as PyTorch (count = 1 gives ∞, as there).
    let unbias = count as f64 / (count as f64 - 1.0);
    for (c, (&bm, &bv)) in mean.iter().zip(var).enumerate() {
        let rm = &mut running[run_mean + c];
        *rm = (1.0 - m) * *rm + m * bm;
        let rv = &mut running[run_var + c];
        *rv = (1.0 - m) * *rv + m * (f64::from(bv) * unbias) as f32;
    }
}
