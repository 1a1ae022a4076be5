//! Test-only bridge from the cpu backend's layouts to the f64 oracle, [`crate::reference::ops`],
//! which the unit tests in `conv_tests.rs` and `pointwise_tests.rs` compute their expected values with.
//!
//! The backend stores activations as pixel-major matrices (`P × C`, pixel `p = (n·H + y)·W + x`,
//! i.e. NHWC), the oracle as NCHW [`Tensor`]s: [`nhwc_to_tensor`] and [`tensor_to_nhwc`] convert
//! between the two. Conv weights need no adapter: both sides use OHWI (`[c_out][kh][kw][c_in]`,
//! the layout of the crate's parameter buffer), so the oracle takes them as they are, in f64.
//!
//! The backend's resolved batch-norm [`Bn`] is the affine map `a·x + b` (statistics folded in);
//! [`bn_relu`] runs it as the oracle's eval-mode batch-norm with `γ = a`, `β = b`, `μ = 0` and
//! `σ² = 1 − ε`. What the oracle has no op for (the ReLU mask as the op computes it, in f32; the
//! per-channel `[Σg | Σg·x̂]` against the given statistics; the affine map's backward `a⊙g`)
//! is written here once.

use super::Bn;
use crate::backend::{Mat, Spatial};
use crate::reference::ops::{BN_EPS, Tensor, batchnorm_eval_forward, relu_backward, relu_forward};

/// Dense NHWC values (`s.pixels() × c`, pixel-major) as an NCHW tensor.
pub(super) fn nhwc_to_tensor(v: &[f64], s: Spatial, c: usize) -> Tensor {
    assert_eq!(v.len(), s.pixels() * c, "NHWC length");
    let mut t = Tensor::zeros(s.n, c, s.h, s.w);
    let hw = s.h * s.w;
    for (i, d) in t.data.iter_mut().enumerate() {
        let (n, ch, q) = (i / (c * hw), i / hw % c, i % hw);
        *d = v[(n * hw + q) * c + ch];
    }
    t
}

/// An NCHW tensor as dense NHWC values (`n·h·w × c`, pixel-major).
pub(super) fn tensor_to_nhwc(t: &Tensor) -> Vec<f64> {
    let hw = t.hw();
    (0..t.n * hw).flat_map(|p| (0..t.c).map(move |ch| t.plane(p / hw, ch)[p % hw])).collect()
}

/// The elements matrix `m` addresses in `buf` (one row per pixel of `s`) as an NCHW tensor.
pub(super) fn mat_to_tensor(buf: &[f32], m: Mat, s: Spatial) -> Tensor {
    assert_eq!(m.rows, s.pixels(), "matrix rows");
    let v: Vec<f64> =
        (0..m.rows).flat_map(|p| (0..m.cols).map(move |c| f64::from(buf[m.at(p, c)]))).collect();
    nhwc_to_tensor(&v, s, m.cols)
}

/// f32 values as f64.
pub(super) fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `relu(a⊙x + b)` through the oracle: eval-mode batch-norm with `γ = a`, `β = b`, `μ = 0`,
/// `σ² = 1 − ε` (so `1/√(σ² + ε) = 1`), then ReLU.
pub(super) fn bn_relu(x: &Tensor, bn: &Bn) -> Tensor {
    let zero = vec![0.0; x.c];
    let var = vec![1.0 - BN_EPS; x.c];
    relu_forward(&batchnorm_eval_forward(x, &to_f64(&bn.a), &to_f64(&bn.b), &zero, &var))
}

/// The BN-ReLU backward on the pre-activation gradient: `g = gpre` where the op's own f32 test
/// `a·x + b > 0` passes (the same test, so that no element near the kink flips), else 0,
/// through the oracle's ReLU backward. Returns `g` as dense NHWC and its [`bn_sums`].
/// `x`/`xm` is the forward input, one row per pixel of `gpre`.
pub(super) fn bn_relu_backward(gpre: &Tensor, x: &[f32], xm: Mat, bn: &Bn) -> (Vec<f64>, Vec<f64>) {
    let hw = gpre.hw();
    assert_eq!((xm.rows, xm.cols), (gpre.n * hw, gpre.c), "BN-ReLU input shape");
    let mask: Vec<bool> = (0..gpre.data.len())
        .map(|i| {
            let [n, c, y, w] = gpre.position(i);
            let xv = x[xm.at((n * gpre.h + y) * gpre.w + w, c)];
            bn.a[c] * xv + bn.b[c] > 0.0
        })
        .collect();
    let g = tensor_to_nhwc(&relu_backward(gpre, &mask));
    let sums = bn_sums(&g, x, xm, bn);
    (g, sums)
}

/// `[Σg | Σg·x̂]` per channel of dense NHWC `g` (`xm.rows × xm.cols`), with
/// `x̂ = (x − mean)·invstd` from `bn`'s statistics.
pub(super) fn bn_sums(g: &[f64], x: &[f32], xm: Mat, bn: &Bn) -> Vec<f64> {
    let c = xm.cols;
    let mut s = vec![0.0; 2 * c];
    for p in 0..xm.rows {
        for ch in 0..c {
            let xhat = (f64::from(x[xm.at(p, ch)]) - f64::from(bn.mean[ch])) * f64::from(bn.invstd[ch]);
            s[ch] += g[p * c + ch];
            s[c + ch] += g[p * c + ch] * xhat;
        }
    }
    s
}

/// The affine map's backward `a⊙g` per channel of dense NHWC `g`.
pub(super) fn affine_backward(g: &[f64], bn: &Bn) -> Vec<f64> {
    let c = bn.a.len();
    g.iter().enumerate().map(|(i, g)| f64::from(bn.a[i % c]) * g).collect()
}
