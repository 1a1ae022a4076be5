//! Statistics, batch-norm backward pieces, loss and optimiser kernels.

use crate::{Bench, bn_cpu, bn_emu};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{BnGradTarget, Mat, SgdParams, StatsRef};
use densenet::backend::{BnSums, StatsMut, View, ViewMut};
use rand::Rng;

crate::kernel_cases! {
    channel_stats => ["channel_stats_f32", "channel_stats_finish_f32"],
    update_running_stats => ["update_running_stats_f32"],
    bn_backward_elementwise => ["bn_backward_elementwise_f32"],
    bn_grad_fold => ["bn_grad_fold_f32"],
    bn_correction => ["bn_correction_f32"],
    channel_stats @ bf16 => ["channel_stats_bf16", "channel_stats_finish_f32"],
    bn_backward_elementwise @ bf16 => ["bn_backward_elementwise_bf16"],
    bn_correction @ bf16 => ["bn_correction_bf16"],
    softmax_xent => ["softmax_xent_f32"],
    sgd_update => ["sgd_update_f32"],
}

fn channel_stats<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 1);
        // 105 rows (batch 3 of 7×5) and 4551 rows (3 × 37×41), 13 and 37 channels; the
        // second with values around 1000 ± 0.01, where E[x²] − E[x]² would lose every digit.
        for (rows, cols, lo, hi) in [(105, 13, -2.0, 2.0), (4551, 37, 999.99, 1000.01)] {
            let (x, xm) = b.matrix(rows, cols, lo, hi);
            let (mean, var) = (Mat::dense(1, 1, cols), Mat::dense(2 + cols, 1, cols));
            let mut out = b.poisoned(2 * cols + 4, &[mean, var], -1.0, 1.0);
            b.cpu.channel_stats(View::new(&x.cpu, xm), StatsMut::new(&mut out.cpu, 1, 2 + cols)).unwrap();
            b.emu.channel_stats(View::new(&x.emu, xm), StatsMut::new(&mut out.emu, 1, 2 + cols)).unwrap();
            b.check(&format!("channel_stats {rows}x{cols} [mean, var]"), &out, &[mean, var]);
        }
    }
}

fn update_running_stats<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 2);
        let c = 37;
        let (stats, _) = b.bn_buffers(c);
        let regions = [Mat::dense(2, 1, c), Mat::dense(4 + c, 1, c)];
        let mut running = b.poisoned(2 * c + 6, &regions, 0.1, 1.5);
        let cpu_stats = StatsRef { stats: &stats.cpu, mean: 0, var: c };
        let emu_stats = StatsRef { stats: &stats.emu, mean: 0, var: c };
        b.cpu.update_running_stats(cpu_stats, c, 105, StatsMut::new(&mut running.cpu, 2, 4 + c)).unwrap();
        b.emu.update_running_stats(emu_stats, c, 105, StatsMut::new(&mut running.emu, 2, 4 + c)).unwrap();
        b.check("update_running_stats", &running, &regions);
    }
}

fn bn_backward_elementwise<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 3);
        for (rows, c) in [(105, 13), (4551, 37)] {
            let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
            let (mut g, gm) = b.matrix(rows, c, -1.0, 1.0);
            let (stats, params) = b.bn_buffers(c);
            let sums = b.uniform(2 * c, -5.0, 5.0);
            let sums = b.pair(&sums);
            b.cpu
                .bn_backward_elementwise(
                    ViewMut::new(&mut g.cpu, gm),
                    View::new(&x.cpu, xm),
                    bn_cpu(&stats, &params, c),
                    &sums.cpu,
                )
                .unwrap();
            b.emu
                .bn_backward_elementwise(
                    ViewMut::new(&mut g.emu, gm),
                    View::new(&x.emu, xm),
                    bn_emu(&stats, &params, c),
                    &sums.emu,
                )
                .unwrap();
            b.check(&format!("bn_backward_elementwise {rows}x{c}"), &g, &[gm]);
        }
    }
}

fn bn_grad_fold<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 4);
        let c = 37;
        for correction in [None, Some((1, 3 + c))] {
            let (stats, params) = b.bn_buffers(c);
            let sums = b.uniform(2 * c, -5.0, 5.0);
            let sums = b.pair(&sums);
            // dγ, dβ and the accumulators start non-zero: the op adds to them.
            let grad_regions = [Mat::dense(4, 1, c), Mat::dense(5 + c, 1, c)];
            let mut grads = b.poisoned(2 * c + 9, &grad_regions, -1.0, 1.0);
            let corr_regions: Vec<Mat> = correction
                .into_iter()
                .flat_map(|(alpha, beta)| [Mat::dense(alpha, 1, c), Mat::dense(beta, 1, c)])
                .collect();
            let mut corr = b.poisoned(2 * c + 5, &corr_regions, -1.0, 1.0);
            let target = BnGradTarget { dgamma: 4, dbeta: 5 + c, correction };
            b.cpu
                .bn_grad_fold(
                    BnSums::new(&sums.cpu, c, 4551),
                    bn_cpu(&stats, &params, c),
                    &mut grads.cpu,
                    &mut corr.cpu,
                    target,
                )
                .unwrap();
            b.emu
                .bn_grad_fold(
                    BnSums::new(&sums.emu, c, 4551),
                    bn_emu(&stats, &params, c),
                    &mut grads.emu,
                    &mut corr.emu,
                    target,
                )
                .unwrap();
            b.check(&format!("bn_grad_fold grads, correction {correction:?}"), &grads, &grad_regions);
            b.check(&format!("bn_grad_fold corr, correction {correction:?}"), &corr, &corr_regions);
        }
    }
}

fn bn_correction<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 5);
        for (rows, c) in [(105, 13), (4551, 37)] {
            let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
            let (mut g, gm) = b.matrix(rows, c, -1.0, 1.0);
            let (stats, _) = b.bn_buffers(c);
            let corr = b.poisoned(2 * c + 3, &[Mat::dense(1, 1, c), Mat::dense(2 + c, 1, c)], -0.5, 0.5);
            let s_cpu = StatsRef { stats: &stats.cpu, mean: 0, var: c };
            let s_emu = StatsRef { stats: &stats.emu, mean: 0, var: c };
            b.cpu
                .bn_correction(
                    ViewMut::new(&mut g.cpu, gm),
                    View::new(&x.cpu, xm),
                    s_cpu,
                    &corr.cpu,
                    1,
                    2 + c,
                )
                .unwrap();
            b.emu
                .bn_correction(
                    ViewMut::new(&mut g.emu, gm),
                    View::new(&x.emu, xm),
                    s_emu,
                    &corr.emu,
                    1,
                    2 + c,
                )
                .unwrap();
            b.check(&format!("bn_correction {rows}x{c}"), &g, &[gm]);
        }
    }
}

fn softmax_xent<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 6);
        // 1000 classes: more classes than threads in the block; logits near ±1000 would
        // overflow exp without the max shift.
        for (n, classes, shift) in [(3, 10, 0.0), (7, 1000, 1000.0)] {
            let logits: Vec<f32> = (0..n * classes)
                .map(|i| b.rng.random_range(-5.0..5.0) + if i / classes % 2 == 0 { shift } else { -shift })
                .collect();
            let logits = b.pair(&logits);
            let labels: Vec<f32> = (0..n).map(|_| b.rng.random_range(0..classes) as f32).collect();
            let labels = b.pair(&labels);
            // The loss and dlogits at the start of buffers with poison after them.
            let (lm, dm) = (Mat::dense(0, 1, 1), Mat::dense(0, n, classes));
            let mut loss = b.poisoned(3, &[lm], 3.0, 4.0);
            let mut dlogits = b.poisoned(n * classes + 3, &[dm], 3.0, 4.0);
            b.cpu
                .softmax_xent(
                    View::new(&logits.cpu, Mat::dense(0, n, classes)),
                    &labels.cpu,
                    &mut loss.cpu,
                    ViewMut::new(&mut dlogits.cpu, Mat::dense(0, n, classes)),
                )
                .unwrap();
            b.emu
                .softmax_xent(
                    View::new(&logits.emu, Mat::dense(0, n, classes)),
                    &labels.emu,
                    &mut loss.emu,
                    ViewMut::new(&mut dlogits.emu, Mat::dense(0, n, classes)),
                )
                .unwrap();
            b.check(&format!("softmax_xent loss {n}x{classes}"), &loss, &[lm]);
            b.check(&format!("softmax_xent dlogits {n}x{classes}"), &dlogits, &[dm]);
        }
        // A label that is not a class index: NaN, not an out-of-bounds read.
        let logits = b.pair(&[0.5, -0.5, 1.0, 2.0]);
        let labels = b.pair(&[1.0, 7.0]);
        let (mut loss, mut dlogits) = (b.pair(&[0.0]), b.pair(&[0.0; 4]));
        b.emu
            .softmax_xent(
                View::new(&logits.emu, Mat::dense(0, 2, 2)),
                &labels.emu,
                &mut loss.emu,
                ViewMut::new(&mut dlogits.emu, Mat::dense(0, 2, 2)),
            )
            .unwrap();
        assert!(b.emu.download(&loss.emu, 0, 1).unwrap()[0].is_nan());
    }
}

fn sgd_update<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 7);
        // 10007 parameters: more than one grid-stride pass of 1024 blocks is not needed, but
        // the length is not a multiple of the block size.
        for nesterov in [true, false] {
            let len = 10_007;
            // Every buffer is a little longer than `len`: the elements after it stay untouched.
            let m = Mat::dense(0, 1, len);
            let mut params = b.poisoned(len + 3, &[m], -1.0, 1.0);
            let mut velocity = b.poisoned(len + 3, &[m], -0.1, 0.1);
            let hp = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov };
            for _ in 0..3 {
                let grads = b.poisoned(len + 3, &[m], -1.0, 1.0);
                b.cpu.sgd_update(&mut params.cpu, &grads.cpu, &mut velocity.cpu, len, hp).unwrap();
                b.emu.sgd_update(&mut params.emu, &grads.emu, &mut velocity.emu, len, hp).unwrap();
            }
            b.check(&format!("sgd params, nesterov {nesterov}"), &params, &[m]);
            b.check(&format!("sgd velocity, nesterov {nesterov}"), &velocity, &[m]);
        }
    }
}
