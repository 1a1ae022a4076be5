//! The cpu backend's bn_backward ops.

use super::BnBackwardOps;
use crate::backend::cpu::elem::{Elem, with_elems};
use crate::backend::cpu::rows::{CHUNK_ROWS, chunk_bounds, normalized, par_blocks, row};
use crate::backend::cpu::simd::multiversioned;
use crate::backend::cpu::{Bn, CpuBackend, CpuBuf, resolve_stats};
use crate::backend::{BnGradTarget, BnRef, BnSums, Mat, StatsRef, View, ViewMut, validate};
use crate::error::Result;

impl BnBackwardOps for CpuBackend {
    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        bn: BnRef<'_, CpuBuf>,
        sums: &CpuBuf,
    ) -> Result<()> {
        validate::bn_backward_elementwise(&g, &x, bn, sums)?;
        let _timed = self.timed("bn_backward", "bn_backward_elementwise", 0);
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let bn = Bn::resolve(bn, xm.cols)?;
        let sums = &sums.f32s("BN sums")?[..2 * xm.cols];
        with_elems!({ bn_backward_elementwise(g, gm, x, xm, &bn, sums) } mut g = g, x = x);
        Ok(())
    }

    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, CpuBuf>,
        bn: BnRef<'_, CpuBuf>,
        grads: &mut CpuBuf,
        corr: &mut CpuBuf,
        target: BnGradTarget,
    ) -> Result<()> {
        validate::bn_grad_fold(&sums, bn, grads, corr, target)?;
        let _timed = self.timed("bn_backward", "bn_grad_fold", 0);
        let BnSums { sums, channels, count } = sums;
        let bn = Bn::resolve(bn, channels)?;
        bn_grad_fold(
            &sums.f32s("BN sums")?[..2 * channels],
            count,
            &bn,
            grads.f32s_mut("parameter gradients")?,
            corr.f32s_mut("BN correction")?,
            target,
        );
        Ok(())
    }

    fn bn_correction(
        &self,
        g: ViewMut<'_, CpuBuf>,
        x: View<'_, CpuBuf>,
        stats: StatsRef<'_, CpuBuf>,
        corr: &CpuBuf,
        alpha: usize,
        beta: usize,
    ) -> Result<()> {
        validate::bn_correction(&g, &x, stats, corr, alpha, beta)?;
        let _timed = self.timed("bn_backward", "bn_correction", 0);
        let ViewMut { buf: g, mat: gm } = g;
        let View { buf: x, mat: xm } = x;
        let (mean, invstd) = resolve_stats(stats, xm.cols)?;
        let corr = corr.f32s("BN correction")?;
        let (alpha, beta) = (&corr[alpha..alpha + xm.cols], &corr[beta..beta + xm.cols]);
        with_elems!({
            bn_correction(ViewMut::new(&mut g[..], gm), View::new(&x[..], xm), &mean, &invstd, alpha, beta)
        } mut g = g, x = x);
        Ok(())
    }
}

pub(crate) fn bn_backward_elementwise<G: Elem, X: Elem>(
    g: &mut [G],
    gm: Mat,
    x: &[X],
    xm: Mat,
    bn: &Bn,
    sums: &[f32],
) {
    let count = gm.rows as f32;
    let (sum_g, sum_gx) = sums.split_at(xm.cols);
    let mean_g: Vec<f32> = sum_g.iter().map(|s| s / count).collect();
    let mean_gx: Vec<f32> = sum_gx.iter().map(|s| s / count).collect();
    // Slices cut to one length, so that the inner loop has no bounds checks and vectorises.
    let c = xm.cols;
    let (a, mean, invstd) = (&bn.a[..c], &bn.mean[..c], &bn.invstd[..c]);
    let (mean_g, mean_gx) = (&mean_g[..c], &mean_gx[..c]);
    par_blocks(g, gm, &chunk_bounds(gm.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let (xr, gr) = (row(x, xm, piece.first + r), &mut piece.row(r)[..c]);
            for j in 0..c {
                let xh = normalized(mean[j], invstd[j], xr[j].get());
                gr[j] = G::put(a[j] * (gr[j].get() - mean_g[j] - xh * mean_gx[j]));
            }
        }
    });
}

pub(crate) fn bn_grad_fold(
    sums: &[f32],
    count: usize,
    bn: &Bn,
    grads: &mut [f32],
    corr: &mut [f32],
    target: BnGradTarget,
) {
    let (sum_g, sum_gx) = sums.split_at(sums.len() / 2);
    for (c, (&sg, &sgx)) in sum_g.iter().zip(sum_gx).enumerate() {
        grads[target.dgamma + c] += sgx;
        grads[target.dbeta + c] += sg;
    }
    if let Some((alpha, beta)) = target.correction {
        let count = count as f32;
        for (c, (&sg, &sgx)) in sum_g.iter().zip(sum_gx).enumerate() {
            corr[alpha + c] += bn.a[c] * sg / count;
            corr[beta + c] += bn.a[c] * sgx / count;
        }
    }
}

pub(crate) fn bn_correction<G: Elem, X: Elem>(
    g: ViewMut<'_, [G]>,
    x: View<'_, [X]>,
    mean: &[f32],
    invstd: &[f32],
    alpha: &[f32],
    beta: &[f32],
) {
    let ViewMut { buf: g, mat: gm } = g;
    let View { buf: x, mat: xm } = x;
    par_blocks(g, gm, &chunk_bounds(gm.rows, CHUNK_ROWS), |piece, _| {
        for r in 0..piece.rows {
            let xr = row(x, xm, piece.first + r);
            correct_row(piece.row(r), xr, mean, invstd, alpha, beta);
        }
    });
}

multiversioned! {
    /// `g −= α + x̂·β` for one pixel row.
    fn correct_row<G: Elem, X: Elem>(g: &mut [G], x: &[X], mean: &[f32], invstd: &[f32], alpha: &[f32], beta: &[f32]) {
        // Slices cut to one length, so that the loop has no bounds checks and vectorises.
        let c = g.len();
        let (x, mean, invstd, alpha, beta) = (&x[..c], &mean[..c], &invstd[..c], &alpha[..c], &beta[..c]);
        for j in 0..c {
            g[j] = G::put(g[j].get() - (alpha[j] + normalized(mean[j], invstd[j], x[j].get()) * beta[j]));
        }
    }
}
