//! Every op against an f64 reference: the oracle's ops (`crate::reference::ops`, through the
//! NHWC bridge in `super::oracle`) where it has one, plain loops where it has not (the
//! batch-norm backward pieces with given sums, the running-statistics formula, SGD).
//! Tolerance for f32 outputs: relative error ‖out − ref‖₂ / ‖ref‖₂ ≤ 1e-5 ([`TOL`]). The
//! batch-norm backward pieces are also checked, composed, against central finite
//! differences of f64 scalar losses.
use super::Bn;
use super::oracle::{
    affine_backward, bn_relu, bn_relu_backward, bn_sums, mat_to_tensor, nhwc_to_tensor, tensor_to_nhwc,
    to_f64,
};
use super::rows::*;
use crate::backend::{BN_EPS, BN_MOMENTUM, BnGradTarget, Mat, SgdParams, Spatial, View, ViewMut};
use crate::backend::{
    bn_backward::cpu::*, linear::cpu::*, loss::cpu::*, pool::cpu::*, sgd::cpu::*, stats::cpu::*,
};
use crate::config::conv_out;
use crate::reference::ops::{
    batchnorm_train_forward, global_avg_pool_backward, global_avg_pool_forward, linear_backward,
    linear_forward, maxpool3s2p1_backward, maxpool3s2p1_forward, maxpool3s2p1_window, relu_forward,
    softmax_xent_backward, softmax_xent_forward,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

const TOL: f64 = 1e-5;
/// Odd shapes: batch 3 of 7×5 (one piece of rows) and of 23×19 (several pieces, the last
/// one partial).
const SHAPES: [Spatial; 2] = [Spatial { n: 3, h: 7, w: 5 }, Spatial { n: 3, h: 23, w: 19 }];

fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn rel_err(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let diff: f64 = out.iter().zip(reference).map(|(&o, r)| (f64::from(o) - r).powi(2)).sum();
    let norm: f64 = reference.iter().map(|r| r * r).sum();
    assert!(norm > 0.0, "degenerate reference");
    (diff / norm).sqrt()
}

/// Asserts and reports the relative error (run with --nocapture to see it).
fn check(what: &str, out: &[f32], reference: &[f64]) {
    let e = rel_err(out, reference);
    println!("{what}: relative error {e:.2e}");
    assert!(e <= TOL, "{what}: relative error {e:.2e} > {TOL:e}");
}

/// A `rows × cols` matrix at offset 3 with pitch `cols + 4` in a buffer of random values,
/// the gaps included, so that touching a gap shows.
fn strided(rng: &mut ChaCha8Rng, rows: usize, cols: usize, lo: f32, hi: f32) -> (Vec<f32>, Mat) {
    let m = Mat { offset: 3, rows, cols, ld: cols + 4 };
    (uniform(rng, 3 + rows * m.ld + 2, lo, hi), m)
}

/// The elements of `m`, densely.
fn gather(buf: &[f32], m: Mat) -> Vec<f32> {
    (0..m.rows).flat_map(|p| row(buf, m, p).to_vec()).collect()
}

/// Fills the elements of `m` (an output that must be overwritten) with NaN.
fn poison(buf: &mut [f32], m: Mat) {
    (0..m.rows).for_each(|p| buf[m.at(p, 0)..][..m.cols].fill(f32::NAN));
}

/// Asserts that nothing outside `m` changed.
fn gaps_untouched(before: &[f32], after: &[f32], m: Mat) {
    let mut inside = vec![false; before.len()];
    (0..m.rows).for_each(|p| inside[m.at(p, 0)..][..m.cols].fill(true));
    for (i, ((b, a), inside)) in before.iter().zip(after).zip(inside).enumerate() {
        assert!(inside || b.to_bits() == a.to_bits(), "element {i} outside the matrix changed");
    }
}

/// A batch-norm as `Bn::resolve` builds it.
fn bn_from(mean: &[f32], var: &[f32], gamma: &[f32], beta: &[f32]) -> Bn {
    let invstd: Vec<f32> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    let a: Vec<f32> = gamma.iter().zip(&invstd).map(|(g, s)| g * s).collect();
    let b = beta.iter().zip(&a).zip(mean).map(|((be, a), m)| be - m * a).collect();
    Bn { a, b, mean: mean.to_vec(), invstd }
}

/// Random statistics and affine parameters (γ of both signs); on inputs in [−2, 2] about
/// half the pre-activations are positive.
fn random_bn(rng: &mut ChaCha8Rng, c: usize) -> Bn {
    let mean = uniform(rng, c, -0.5, 0.5);
    let var = uniform(rng, c, 0.5, 2.0);
    let gamma = uniform(rng, c, -1.5, 1.5);
    let beta = uniform(rng, c, -0.5, 0.5);
    bn_from(&mean, &var, &gamma, &beta)
}

fn xhat(bn: &Bn, c: usize, x: f32) -> f64 {
    (f64::from(x) - f64::from(bn.mean[c])) * f64::from(bn.invstd[c])
}

/// Central finite differences of `f` at `v`.
fn fd_grad(v: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    const H: f64 = 1e-4;
    let mut v = v.to_vec();
    (0..v.len())
        .map(|i| {
            let keep = v[i];
            v[i] = keep + H;
            let up = f(&v);
            v[i] = keep - H;
            let down = f(&v);
            v[i] = keep;
            (up - down) / (2.0 * H)
        })
        .collect()
}

// ---- statistics -------------------------------------------------------------------------

#[test]
fn channel_stats_matches_f64_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for shape in SHAPES {
        let (x, xm) = strided(&mut rng, shape.pixels(), 13, -3.0, 5.0);
        let (mean, var) = channel_stats(&x, xm);
        let (_, stats) = batchnorm_train_forward(&mat_to_tensor(&x, xm, shape), &[1.0; 13], &[0.0; 13]);
        check(&format!("channel_stats mean {shape:?}"), &mean, &stats.mean);
        check(&format!("channel_stats var {shape:?}"), &var, &stats.var);
    }
}

#[test]
fn channel_stats_is_exact_on_large_offset_data() {
    // 10⁶ pixels of mean 1000 and std 0.01: E[x²] − E[x]² would lose every digit.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let normal = Normal::new(1000.0f32, 0.01).unwrap();
    let xm = Mat { offset: 1, rows: 1_000_000, cols: 2, ld: 3 };
    let x: Vec<f32> = (0..1 + xm.rows * xm.ld).map(|_| normal.sample(&mut rng)).collect();
    let (mean, var) = channel_stats(&x, xm);
    let column = Spatial { n: 1, h: xm.rows, w: 1 };
    let (_, stats) = batchnorm_train_forward(&mat_to_tensor(&x, xm, column), &[1.0; 2], &[0.0; 2]);
    for c in 0..2 {
        let (m, v) = (stats.mean[c], stats.var[c]);
        let (em, ev) = ((f64::from(mean[c]) - m).abs() / m, (f64::from(var[c]) - v).abs() / v);
        println!("channel_stats 1e6 values (mean 1000, std 0.01), channel {c}: mean {em:.2e}, var {ev:.2e}");
        // Within one f32 rounding of the exact value.
        assert!(em <= f64::from(f32::EPSILON) && ev <= f64::from(f32::EPSILON), "{em:e} {ev:e}");
    }
}

#[test]
fn update_running_stats_matches_pytorch_formula() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (c, count) = (13, 105);
    let mean = uniform(&mut rng, c, -1.0, 1.0);
    let var = uniform(&mut rng, c, 0.1, 2.0);
    let mut running = uniform(&mut rng, 2 * c + 5, 0.1, 1.0);
    let before = running.clone();
    let (run_mean, run_var) = (2, 2 + c + 1);
    update_running_stats(&mean, &var, count, &mut running, run_mean, run_var);
    let m = f64::from(BN_MOMENTUM);
    let unbias = count as f64 / (count - 1) as f64;
    let old = |i: usize| f64::from(before[i]);
    let rm: Vec<f64> = (0..c).map(|i| (1.0 - m) * old(run_mean + i) + m * f64::from(mean[i])).collect();
    let rv: Vec<f64> =
        (0..c).map(|i| (1.0 - m) * old(run_var + i) + m * f64::from(var[i]) * unbias).collect();
    check("running mean", &running[run_mean..run_mean + c], &rm);
    check("running var", &running[run_var..run_var + c], &rv);
    for i in [0, 1, run_mean + c, 2 * c + 4] {
        assert_eq!(running[i], before[i]);
    }
}

// ---- batch-norm backward pieces -------------------------------------------------------

#[test]
fn bn_backward_elementwise_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for shape in SHAPES {
        let c = 13;
        let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
        let (mut g, gm) = strided(&mut rng, shape.pixels(), c, -1.0, 1.0);
        let bn = random_bn(&mut rng, c);
        let sums = uniform(&mut rng, 2 * c, -5.0, 5.0);
        let p = xm.rows as f64;
        let reference: Vec<f64> = (0..xm.rows * c)
            .map(|i| {
                let (r, ch) = (i / c, i % c);
                let (gv, xh) = (f64::from(g[gm.at(r, ch)]), xhat(&bn, ch, x[xm.at(r, ch)]));
                f64::from(bn.a[ch]) * (gv - f64::from(sums[ch]) / p - xh * f64::from(sums[c + ch]) / p)
            })
            .collect();
        let before = g.clone();
        bn_backward_elementwise(&mut g, gm, &x, xm, &bn, &sums);
        check(&format!("bn_backward_elementwise {shape:?}"), &gather(&g, gm), &reference);
        gaps_untouched(&before, &g, gm);
    }
}

#[test]
fn bn_grad_fold_accumulates_grads_and_corrections() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (c, count) = (5, 105);
    let bn = random_bn(&mut rng, c);
    let sums = uniform(&mut rng, 2 * c, -5.0, 5.0);
    for correction in [None, Some((1, 2 + c))] {
        let target = BnGradTarget { dgamma: 3, dbeta: 3 + c, correction };
        let mut grads = uniform(&mut rng, 2 * c + 4, -1.0, 1.0);
        let mut corr = uniform(&mut rng, 2 * c + 3, -1.0, 1.0);
        let (grads0, corr0) = (grads.clone(), corr.clone());
        bn_grad_fold(&sums, count, &bn, &mut grads, &mut corr, target);
        let dgamma: Vec<f64> = (0..c).map(|i| f64::from(grads0[3 + i]) + f64::from(sums[c + i])).collect();
        let dbeta: Vec<f64> = (0..c).map(|i| f64::from(grads0[3 + c + i]) + f64::from(sums[i])).collect();
        check("bn_grad_fold dgamma", &grads[3..3 + c], &dgamma);
        check("bn_grad_fold dbeta", &grads[3 + c..3 + 2 * c], &dbeta);
        assert_eq!(grads[..3], grads0[..3]);
        assert_eq!(grads[3 + 2 * c..], grads0[3 + 2 * c..]);
        match correction {
            None => assert_eq!(corr, corr0),
            Some((alpha, beta)) => {
                let term = |i: usize, s: usize| f64::from(bn.a[i]) * f64::from(sums[s]) / count as f64;
                let ra: Vec<f64> = (0..c).map(|i| f64::from(corr0[alpha + i]) + term(i, i)).collect();
                let rb: Vec<f64> = (0..c).map(|i| f64::from(corr0[beta + i]) + term(i, c + i)).collect();
                check("bn_grad_fold alpha", &corr[alpha..alpha + c], &ra);
                check("bn_grad_fold beta", &corr[beta..beta + c], &rb);
                assert_eq!(corr[0], corr0[0]);
                assert_eq!(corr[alpha + c], corr0[alpha + c]);
            }
        }
    }
}

#[test]
fn bn_correction_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    for shape in SHAPES {
        let c = 13;
        let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
        let (mut g, gm) = strided(&mut rng, shape.pixels(), c, -1.0, 1.0);
        let bn = random_bn(&mut rng, c);
        let alpha = uniform(&mut rng, c, -0.5, 0.5);
        let beta = uniform(&mut rng, c, -0.5, 0.5);
        let reference: Vec<f64> = (0..xm.rows * c)
            .map(|i| {
                let (r, ch) = (i / c, i % c);
                let xh = xhat(&bn, ch, x[xm.at(r, ch)]);
                f64::from(g[gm.at(r, ch)]) - f64::from(alpha[ch]) - xh * f64::from(beta[ch])
            })
            .collect();
        let before = g.clone();
        bn_correction(ViewMut::new(&mut g, gm), View::new(&x, xm), &bn.mean, &bn.invstd, &alpha, &beta);
        check(&format!("bn_correction {shape:?}"), &gather(&g, gm), &reference);
        gaps_untouched(&before, &g, gm);
    }
}

/// Statistics of x (as channel_stats gives them) and the BN built from them.
fn train_bn(x: &[f32], xm: Mat, gamma: &[f32], beta: &[f32]) -> Bn {
    let (mean, var) = channel_stats(x, xm);
    bn_from(&mean, &var, gamma, beta)
}

#[test]
fn bn_backward_matches_finite_differences() {
    // L = Σ w ⊙ BN_train(x): dL/dy = w, so g = w and the BN backward must give dL/dx,
    // both directly (bn_backward_elementwise) and deferred (a⊙g, then bn_grad_fold's
    // correction applied by bn_correction).
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (shape, c) = (SHAPES[0], 5);
    let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
    let w = uniform(&mut rng, xm.rows * c, -1.0, 1.0);
    let gamma = uniform(&mut rng, c, -1.5, 1.5);
    let beta = uniform(&mut rng, c, -0.5, 0.5);
    let (x64, w64, gamma64, beta64) = (to_f64(&gather(&x, xm)), to_f64(&w), to_f64(&gamma), to_f64(&beta));
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
        let (y, _) = batchnorm_train_forward(&nhwc_to_tensor(x, shape, c), gamma, beta);
        tensor_to_nhwc(&y).iter().zip(&w64).map(|(y, w)| y * w).sum()
    };
    let dx_fd = fd_grad(&x64, |x| loss(x, &gamma64, &beta64));
    let dgamma_fd = fd_grad(&gamma64, |g| loss(&x64, g, &beta64));
    let dbeta_fd = fd_grad(&beta64, |b| loss(&x64, &gamma64, b));

    let bn = train_bn(&x, xm, &gamma, &beta);
    let sums: Vec<f32> = bn_sums(&w64, &x, xm, &bn).iter().map(|&s| s as f32).collect();

    let (mut g, gm) = strided(&mut rng, xm.rows, c, 0.0, 1.0);
    (0..xm.rows).for_each(|p| g[gm.at(p, 0)..][..c].copy_from_slice(&w[p * c..][..c]));
    bn_backward_elementwise(&mut g, gm, &x, xm, &bn, &sums);
    check("bn_backward_elementwise vs finite differences", &gather(&g, gm), &dx_fd);

    let target = BnGradTarget { dgamma: 0, dbeta: c, correction: Some((0, c)) };
    let (mut grads, mut corr) = (vec![0.0; 2 * c], vec![0.0; 2 * c]);
    bn_grad_fold(&sums, xm.rows, &bn, &mut grads, &mut corr, target);
    check("bn_grad_fold dgamma vs finite differences", &grads[..c], &dgamma_fd);
    check("bn_grad_fold dbeta vs finite differences", &grads[c..], &dbeta_fd);
    let (mut dx, dxm) = strided(&mut rng, xm.rows, c, 0.0, 1.0);
    for p in 0..xm.rows {
        for ch in 0..c {
            dx[dxm.at(p, ch)] = bn.a[ch] * w[p * c + ch];
        }
    }
    bn_correction(
        ViewMut::new(&mut dx, dxm),
        View::new(&x, xm),
        &bn.mean,
        &bn.invstd,
        &corr[..c],
        &corr[c..],
    );
    check("deferred correction vs finite differences", &gather(&dx, dxm), &dx_fd);
}

// ---- stem max-pool ----------------------------------------------------------------------

/// Runs forward and backward of the max-pool on `t` and checks them against the f64
/// reference.
fn check_maxpool(rng: &mut ChaCha8Rng, what: &str, t: &[f32], tm: Mat, shape: Spatial, bn: &Bn) {
    let c = tm.cols;
    let (ref_y, arg) = maxpool3s2p1_forward(&bn_relu(&mat_to_tensor(t, tm, shape), bn));
    let q = ref_y.data.len() / c;
    let (mut y, ym) = strided(rng, q, c, 0.0, 1.0);
    poison(&mut y, ym);
    let before = y.clone();
    bn_relu_maxpool_fwd(t, tm, shape, bn, &mut y, ym);
    check(&format!("maxpool fwd {what}"), &gather(&y, ym), &tensor_to_nhwc(&ref_y));
    gaps_untouched(&before, &y, ym);

    let (dy, dym) = strided(rng, q, c, -1.0, 1.0);
    let pooled = Spatial { n: shape.n, h: ref_y.h, w: ref_y.w };
    let gpre = maxpool3s2p1_backward(&mat_to_tensor(&dy, dym, pooled), &arg, shape.h, shape.w);
    let (ref_g, ref_sums) = bn_relu_backward(&gpre, t, tm, bn);
    let (mut g, gm) = strided(rng, tm.rows, c, 0.0, 1.0);
    poison(&mut g, gm);
    let before = g.clone();
    let mut sums = vec![f32::NAN; 2 * c + 1];
    bn_relu_maxpool_bwd(
        View::new(&dy, dym),
        View::new(t, tm),
        shape,
        bn,
        ViewMut::new(&mut g, gm),
        &mut sums,
    );
    check(&format!("maxpool bwd g {what}"), &gather(&g, gm), &ref_g);
    check(&format!("maxpool bwd sums {what}"), &sums[..2 * c], &ref_sums);
    assert!(sums[2 * c].is_nan());
    gaps_untouched(&before, &g, gm);
}

#[test]
fn maxpool_fwd_bwd_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for (shape, c) in [(Spatial { n: 3, h: 7, w: 5 }, 13), (Spatial { n: 3, h: 9, w: 6 }, 5)] {
        let (t, tm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
        let bn = random_bn(&mut rng, c);
        check_maxpool(&mut rng, &format!("{shape:?}"), &t, tm, shape, &bn);
    }
}

#[test]
fn maxpool_picks_first_maximum_on_ties() {
    // Inputs on a coarse grid: many windows hold the same positive maximum several
    // times, and many are all ≤ 0 (a tie at 0 after the ReLU). The reference keeps the
    // first maximum in row-major window order; the scattered gradient shows which one
    // the op chose, so a different choice fails the comparison.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for (shape, c) in [(Spatial { n: 3, h: 7, w: 5 }, 13), (Spatial { n: 3, h: 9, w: 6 }, 5)] {
        let (mut t, tm) = strided(&mut rng, shape.pixels(), c, 0.0, 1.0);
        for p in 0..tm.rows {
            for ch in 0..c {
                t[tm.at(p, ch)] = rng.random_range(-2..=1) as f32 * 0.5;
            }
        }
        let bn = bn_from(&vec![0.0; c], &vec![1.0; c], &vec![1.0; c], &vec![-0.1; c]);
        check_maxpool(&mut rng, &format!("ties {shape:?}"), &t, tm, shape, &bn);
        // The data really has windows whose maximum occurs more than once, both at 0
        // and above.
        let act = bn_relu(&mat_to_tensor(&t, tm, shape), &bn);
        let (y, _) = maxpool3s2p1_forward(&act);
        let tied = |i: usize| {
            let [n, ch, oy, ox] = y.position(i);
            let (rows, cols) = maxpool3s2p1_window(shape.h, shape.w, oy, ox);
            let plane = act.plane(n, ch);
            let window = rows.flat_map(|iy| cols.clone().map(move |ix| plane[iy * shape.w + ix]));
            window.filter(|&v| v == y.data[i]).count() > 1
        };
        let y = &y.data;
        let zero_ties = (0..y.len()).filter(|&i| y[i] == 0.0 && tied(i)).count();
        let positive_ties = (0..y.len()).filter(|&i| y[i] > 0.0 && tied(i)).count();
        println!("ties {shape:?}: {zero_ties} windows tied at 0, {positive_ties} tied above 0");
        assert!(zero_ties > 10 && positive_ties > 10);
    }
}

#[test]
fn stem_maxpool_bn_backward_matches_finite_differences() {
    // L = Σ v ⊙ maxpool(relu(BN_train(t))): maxpool_bwd's g and sums, then
    // bn_backward_elementwise, must give dL/dt; bn_grad_fold dL/dγ and dL/dβ.
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (shape, c) = (Spatial { n: 3, h: 7, w: 5 }, 5);
    let (t, tm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
    let gamma = uniform(&mut rng, c, -1.5, 1.5);
    let beta = uniform(&mut rng, c, -0.5, 0.5);
    let q = conv_out(shape.h, 3, 2, 1) * conv_out(shape.w, 3, 2, 1) * shape.n;
    let (dy, dym) = strided(&mut rng, q, c, -1.0, 1.0);
    let (t64, v64) = (to_f64(&gather(&t, tm)), to_f64(&gather(&dy, dym)));
    let (gamma64, beta64) = (to_f64(&gamma), to_f64(&beta));
    let loss = |t: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
        let (y, _) = batchnorm_train_forward(&nhwc_to_tensor(t, shape, c), gamma, beta);
        let (pooled, _) = maxpool3s2p1_forward(&relu_forward(&y));
        tensor_to_nhwc(&pooled).iter().zip(&v64).map(|(y, v)| y * v).sum()
    };
    let dt_fd = fd_grad(&t64, |t| loss(t, &gamma64, &beta64));
    let dgamma_fd = fd_grad(&gamma64, |g| loss(&t64, g, &beta64));
    let dbeta_fd = fd_grad(&beta64, |b| loss(&t64, &gamma64, b));

    let bn = train_bn(&t, tm, &gamma, &beta);
    let (mut g, gm) = strided(&mut rng, tm.rows, c, 0.0, 1.0);
    let mut sums = vec![0.0; 2 * c];
    bn_relu_maxpool_bwd(
        View::new(&dy, dym),
        View::new(&t, tm),
        shape,
        &bn,
        ViewMut::new(&mut g, gm),
        &mut sums,
    );
    let target = BnGradTarget { dgamma: 0, dbeta: c, correction: None };
    let mut grads = vec![0.0; 2 * c];
    bn_grad_fold(&sums, tm.rows, &bn, &mut grads, &mut [], target);
    check("stem dgamma vs finite differences", &grads[..c], &dgamma_fd);
    check("stem dbeta vs finite differences", &grads[c..], &dbeta_fd);
    bn_backward_elementwise(&mut g, gm, &t, tm, &bn, &sums);
    check("stem dt vs finite differences", &gather(&g, gm), &dt_fd);
}

// ---- head -------------------------------------------------------------------------------

#[test]
fn global_pool_fwd_bwd_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for shape in SHAPES {
        let c = 13;
        let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
        let bn = random_bn(&mut rng, c);
        let ref_pooled = global_avg_pool_forward(&bn_relu(&mat_to_tensor(&x, xm, shape), &bn));
        let mut pooled = vec![f32::NAN; shape.n * c + 2];
        bn_relu_global_pool_fwd(&x, xm, shape, &bn, &mut pooled);
        check(&format!("global pool fwd {shape:?}"), &pooled[..shape.n * c], &ref_pooled);
        assert!(pooled[shape.n * c..].iter().all(|v| v.is_nan()));

        let dpooled = uniform(&mut rng, shape.n * c + 2, -1.0, 1.0);
        let dpooled64 = to_f64(&dpooled[..shape.n * c]);
        let gpre = global_avg_pool_backward(&dpooled64, shape.n, c, shape.h, shape.w);
        let (ref_g, ref_sums) = bn_relu_backward(&gpre, &x, xm, &bn);
        let ref_dx = affine_backward(&ref_g, &bn);
        let (mut dx, dxm) = strided(&mut rng, xm.rows, c, 0.0, 1.0);
        poison(&mut dx, dxm);
        let before = dx.clone();
        let mut sums = vec![f32::NAN; 2 * c];
        bn_relu_global_pool_bwd(
            &dpooled,
            View::new(&x, xm),
            shape,
            &bn,
            ViewMut::new(&mut dx, dxm),
            &mut sums,
        );
        check(&format!("global pool bwd dx {shape:?}"), &gather(&dx, dxm), &ref_dx);
        check(&format!("global pool bwd sums {shape:?}"), &sums, &ref_sums);
        gaps_untouched(&before, &dx, dxm);
    }
}

#[test]
fn head_global_pool_deferred_bn_backward_matches_finite_differences() {
    // L = Σ v ⊙ global_pool(relu(BN_train(x))): global_pool_bwd's a⊙g plus the deferred
    // correction (bn_grad_fold, then bn_correction) must give dL/dx.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (shape, c) = (SHAPES[0], 5);
    let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
    let gamma = uniform(&mut rng, c, -1.5, 1.5);
    let beta = uniform(&mut rng, c, -0.5, 0.5);
    let v = uniform(&mut rng, shape.n * c, -1.0, 1.0);
    let (x64, gamma64, beta64) = (to_f64(&gather(&x, xm)), to_f64(&gamma), to_f64(&beta));
    let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
        let (y, _) = batchnorm_train_forward(&nhwc_to_tensor(x, shape, c), gamma, beta);
        global_avg_pool_forward(&relu_forward(&y)).iter().zip(&v).map(|(y, &v)| y * f64::from(v)).sum()
    };
    let dx_fd = fd_grad(&x64, |x| loss(x, &gamma64, &beta64));
    let dgamma_fd = fd_grad(&gamma64, |g| loss(&x64, g, &beta64));
    let dbeta_fd = fd_grad(&beta64, |b| loss(&x64, &gamma64, b));

    let bn = train_bn(&x, xm, &gamma, &beta);
    let (mut dx, dxm) = strided(&mut rng, xm.rows, c, 0.0, 1.0);
    let mut sums = vec![0.0; 2 * c];
    bn_relu_global_pool_bwd(&v, View::new(&x, xm), shape, &bn, ViewMut::new(&mut dx, dxm), &mut sums);
    let target = BnGradTarget { dgamma: 0, dbeta: c, correction: Some((0, c)) };
    let (mut grads, mut corr) = (vec![0.0; 2 * c], vec![0.0; 2 * c]);
    bn_grad_fold(&sums, xm.rows, &bn, &mut grads, &mut corr, target);
    check("head dgamma vs finite differences", &grads[..c], &dgamma_fd);
    check("head dbeta vs finite differences", &grads[c..], &dbeta_fd);
    bn_correction(
        ViewMut::new(&mut dx, dxm),
        View::new(&x, xm),
        &bn.mean,
        &bn.invstd,
        &corr[..c],
        &corr[c..],
    );
    check("head dx vs finite differences", &gather(&dx, dxm), &dx_fd);
}

#[test]
fn linear_fwd_bwd_match_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let (n, k, out) = (3, 13, 5);
    let x = uniform(&mut rng, n * k + 3, -1.0, 1.0);
    let w = uniform(&mut rng, out * k, -1.0, 1.0);
    let bias = uniform(&mut rng, out, -1.0, 1.0);
    let mut y = vec![f32::NAN; n * out + 2];
    linear_fwd(&x, n, k, &w, &bias, &mut y);
    let (x64, w64) = (to_f64(&x[..n * k]), to_f64(&w));
    let ref_y = linear_forward(&x64, n, k, &w64, &to_f64(&bias), out);
    check("linear fwd", &y[..n * out], &ref_y);
    assert!(y[n * out..].iter().all(|v| v.is_nan()));

    let dy = uniform(&mut rng, n * out + 2, -1.0, 1.0);
    let (dw_off, dbias_off) = (7, 7 + out * k + 2);
    let mut grads = uniform(&mut rng, dbias_off + out + 1, -1.0, 1.0);
    let grads0 = grads.clone();
    let mut dx = vec![f32::NAN; n * k + 2];
    linear_bwd(&dy, &x, n, k, &w, &mut grads, dw_off, dbias_off, &mut dx);
    let (ref_dx, dw, db) = linear_backward(&to_f64(&dy[..n * out]), &x64, n, k, &w64, out);
    let ref_dw: Vec<f64> = dw.iter().zip(&grads0[dw_off..]).map(|(d, &g)| d + f64::from(g)).collect();
    let ref_db: Vec<f64> = db.iter().zip(&grads0[dbias_off..]).map(|(d, &g)| d + f64::from(g)).collect();
    check("linear bwd dW", &grads[dw_off..dw_off + out * k], &ref_dw);
    check("linear bwd dbias", &grads[dbias_off..dbias_off + out], &ref_db);
    check("linear bwd dx", &dx[..n * k], &ref_dx);
    assert!(dx[n * k..].iter().all(|v| v.is_nan()));
    for i in (0..dw_off).chain(dw_off + out * k..dbias_off).chain([dbias_off + out]) {
        assert_eq!(grads[i], grads0[i]);
    }
}

#[test]
fn softmax_xent_matches_reference_and_is_stable() {
    // Logits around +1000 and −1000: exp would overflow or underflow without the shift.
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let (n, classes) = (5, 7);
    let normal = Normal::new(0.0f32, 5.0).unwrap();
    let logits: Vec<f32> = (0..n * classes)
        .map(|i| if i / classes % 2 == 0 { 1000.0 } else { -1000.0 } + normal.sample(&mut rng))
        .collect();
    let labels: Vec<f32> = (0..n).map(|_| rng.random_range(0..classes) as f32).collect();
    let mut dlogits = vec![f32::NAN; n * classes];
    let loss = softmax_xent(&logits, &labels, classes, &mut dlogits);

    let (logits64, labels64): (Vec<f64>, Vec<usize>) =
        (to_f64(&logits), labels.iter().map(|&l| l as usize).collect());
    let ref_loss = softmax_xent_forward(&logits64, n, classes, &labels64);
    let ref_d = softmax_xent_backward(&logits64, n, classes, &labels64);
    assert!(loss.is_finite() && dlogits.iter().all(|d| d.is_finite()));
    check("softmax_xent loss", &[loss], &[ref_loss]);
    check("softmax_xent dlogits", &dlogits, &ref_d);
}

#[test]
fn sgd_matches_pytorch_three_steps() {
    // PyTorch's SGD, literally: d = g + wd·p; the momentum buffer is d on the first step
    // and μ·buf + d after (no buffer at all when μ = 0); Nesterov steps along d + μ·buf.
    for (momentum, nesterov) in [(0.9, true), (0.9, false), (0.0, false)] {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let len = 37;
        let hp = SgdParams { lr: 0.1, momentum, weight_decay: 0.05, nesterov };
        let mut params = uniform(&mut rng, len, -1.0, 1.0);
        let mut velocity = vec![0.0; len];
        let mut ref_p = to_f64(&params);
        let mut ref_buf: Option<Vec<f64>> = None;
        let (mu, wd, lr) = (f64::from(momentum), f64::from(hp.weight_decay), f64::from(hp.lr));
        for _ in 0..3 {
            let grads = uniform(&mut rng, len, -1.0, 1.0);
            sgd_update(&mut params, &grads, &mut velocity, hp);
            let mut d: Vec<f64> = grads.iter().zip(&ref_p).map(|(&g, p)| f64::from(g) + wd * p).collect();
            if momentum != 0.0 {
                let buf = match ref_buf.take() {
                    None => d.clone(),
                    Some(b) => b.iter().zip(&d).map(|(b, d)| mu * b + d).collect(),
                };
                if nesterov {
                    d.iter_mut().zip(&buf).for_each(|(d, b)| *d += mu * b);
                } else {
                    d = buf.clone();
                }
                ref_buf = Some(buf);
            }
            ref_p.iter_mut().zip(&d).for_each(|(p, d)| *p -= lr * d);
        }
        check(&format!("sgd params (momentum {momentum}, nesterov {nesterov})"), &params, &ref_p);
        if let Some(buf) = ref_buf {
            check(&format!("sgd velocity (momentum {momentum}, nesterov {nesterov})"), &velocity, &buf);
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let (shape, c) = (SHAPES[1], 13);
    let (x, xm) = strided(&mut rng, shape.pixels(), c, -2.0, 2.0);
    let bn = random_bn(&mut rng, c);
    let q = conv_out(shape.h, 3, 2, 1) * conv_out(shape.w, 3, 2, 1) * shape.n;
    let (dy, dym) = strided(&mut rng, q, c, -1.0, 1.0);
    let dpooled = uniform(&mut rng, shape.n * c, -1.0, 1.0);
    let run = || {
        let (mean, var) = channel_stats(&x, xm);
        let (mut g, mut sums) = (x.clone(), vec![0.0; 4 * c]);
        bn_relu_maxpool_bwd(
            View::new(&dy, dym),
            View::new(&x, xm),
            shape,
            &bn,
            ViewMut::new(&mut g, xm),
            &mut sums[..2 * c],
        );
        bn_backward_elementwise(&mut g, xm, &x, xm, &bn, &sums[..2 * c]);
        let mut dx = x.clone();
        bn_relu_global_pool_bwd(
            &dpooled,
            View::new(&x, xm),
            shape,
            &bn,
            ViewMut::new(&mut dx, xm),
            &mut sums[2 * c..],
        );
        [mean, var, g, dx, sums].concat()
    };
    let with = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run);
    let one = with(1);
    for threads in [2, 3, 8] {
        assert!(one.iter().zip(with(threads)).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
    }
}
