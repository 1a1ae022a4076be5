//! The classifier's fully connected layer (`kernels/linear.cu`). Tolerance: the harness's 1e-5;
//! the dot products have at most 342 terms (forward, weight gradient over 17 images, input
//! gradient over 1000 classes), summed in another order than the host's only in the forward.

use crate::{Bench, W_OFF};
use densenet::backend::cuda::{Device, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{At, Mat};
use densenet::backend::{LinearGrads, View, ViewMut};

crate::kernel_cases! {
    linear_fwd => ["linear_fwd_f32"],
    linear_bwd => ["linear_bwd_f32"],
}

/// (n, k, out): a tiny head, and 17 images × 342 features → 1000 classes (more classes than a
/// block has threads, k not a multiple of the warp).
const SHAPES: [(usize, usize, usize); 2] = [(3, 13, 10), (17, 342, 1000)];

fn linear_fwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 31);
    for (n, k, out) in SHAPES {
        let x = b.poisoned(n * k, &[Mat::dense(0, n, k)], -1.0, 1.0);
        let w = b.weights(out * k);
        let bias = b.weights(out);
        // y starts random and a little longer than n × out: overwritten, the rest untouched.
        let ym = Mat::dense(0, n, out);
        let mut y = b.poisoned(n * out + 3, &[ym], -5.0, 5.0);
        let (w_cpu, bias_cpu) = (At { buf: &w.cpu, offset: W_OFF }, At { buf: &bias.cpu, offset: W_OFF });
        let (w_emu, bias_emu) = (At { buf: &w.emu, offset: W_OFF }, At { buf: &bias.emu, offset: W_OFF });
        b.cpu
            .linear_fwd(
                View::new(&x.cpu, Mat::dense(0, n, k)),
                w_cpu,
                bias_cpu,
                ViewMut::new(&mut y.cpu, Mat::dense(0, n, out)),
            )
            .unwrap();
        b.emu
            .linear_fwd(
                View::new(&x.emu, Mat::dense(0, n, k)),
                w_emu,
                bias_emu,
                ViewMut::new(&mut y.emu, Mat::dense(0, n, out)),
            )
            .unwrap();
        b.check(&format!("linear fwd {n}x{k}->{out}"), &y, &[ym]);
    }
}

fn linear_bwd<D: Device>(device: &KernelBackend<D>) {
    let mut b = Bench::new(device, 32);
    for (n, k, out) in SHAPES {
        let dy = b.poisoned(n * out, &[Mat::dense(0, n, out)], -1.0, 1.0);
        let x = b.poisoned(n * k, &[Mat::dense(0, n, k)], -1.0, 1.0);
        let w = b.weights(out * k);
        // dW and dbias start non-zero (they accumulate) inside one gradient buffer; dx starts
        // random (it is overwritten).
        let (dw_off, dbias_off) = (5, 7 + out * k);
        let (dwm, dbm, dxm) =
            (Mat::dense(dw_off, 1, out * k), Mat::dense(dbias_off, 1, out), Mat::dense(0, n, k));
        let mut grads = b.poisoned(dbias_off + out + 4, &[dwm, dbm], -1.0, 1.0);
        let mut dx = b.poisoned(n * k + 3, &[dxm], -5.0, 5.0);
        let (w_cpu, w_emu) = (At { buf: &w.cpu, offset: W_OFF }, At { buf: &w.emu, offset: W_OFF });
        b.cpu
            .linear_bwd(
                View::new(&dy.cpu, Mat::dense(0, n, out)),
                View::new(&x.cpu, Mat::dense(0, n, k)),
                w_cpu,
                LinearGrads::new(&mut grads.cpu, dw_off, dbias_off),
                ViewMut::new(&mut dx.cpu, Mat::dense(0, n, k)),
            )
            .unwrap();
        b.emu
            .linear_bwd(
                View::new(&dy.emu, Mat::dense(0, n, out)),
                View::new(&x.emu, Mat::dense(0, n, k)),
                w_emu,
                LinearGrads::new(&mut grads.emu, dw_off, dbias_off),
                ViewMut::new(&mut dx.emu, Mat::dense(0, n, k)),
            )
            .unwrap();
        let what = format!("linear bwd {n}x{k}->{out}");
        b.check(&format!("{what} [dW, dbias]"), &grads, &[dwm, dbm]);
        b.check(&format!("{what} dx"), &dx, &[dxm]);
    }
}
