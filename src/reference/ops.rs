//! Layer primitives of the reference (the f64 oracle), each with its hand-written backward.
//!
//! Everything is `f64`, activations are NCHW [`Tensor`]s, conv weights are OHWI
//! (`[c_out][kh][kw][c_in]`) and linear weights `[out][in]`, exactly as in the crate's flat
//! parameter buffer. Every function allocates and returns fresh outputs: nothing is fused,
//! nothing is reused, so that each function can be read against its textbook formula.
//!
//! Shapes are checked with `assert!`: these functions are internal building blocks whose
//! callers (the network of [`crate::reference`]) validate user input first, so a failed
//! assertion here is a bug in the oracle, not bad input.

use crate::config::conv_out;
use rayon::prelude::*;
use std::ops::Range;

/// Batch-norm ε, as PyTorch.
pub const BN_EPS: f64 = 1e-5;
/// Running-statistics momentum, as PyTorch: `r ← (1 − m)·r + m·batch_stat`.
pub const BN_MOMENTUM: f64 = 0.1;

/// A dense NCHW tensor: element `(n, c, y, x)` is at `((n·C + c)·H + y)·W + x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(n: usize, c: usize, h: usize, w: usize) -> Self {
        Tensor { n, c, h, w, data: vec![0.0; n * c * h * w] }
    }

    /// Wraps `data` (which must hold `n·c·h·w` values) as a tensor.
    pub fn from_vec(n: usize, c: usize, h: usize, w: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), n * c * h * w, "tensor data length");
        Tensor { n, c, h, w, data }
    }

    /// Pixels per channel plane, `h·w`.
    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    /// `[n, c, y, x]` of the element at flat index `i`.
    pub fn position(&self, i: usize) -> [usize; 4] {
        let hw = self.hw();
        let (nc, p) = (i / hw, i % hw);
        [nc / self.c, nc % self.c, p / self.w, p % self.w]
    }

    /// The `h·w` plane of image `n`, channel `c`.
    pub fn plane(&self, n: usize, c: usize) -> &[f64] {
        let hw = self.hw();
        let start = (n * self.c + c) * hw;
        &self.data[start..start + hw]
    }

    /// The `h·w` plane of image `n`, channel `c`, mutably.
    pub fn plane_mut(&mut self, n: usize, c: usize) -> &mut [f64] {
        let hw = self.hw();
        let start = (n * self.c + c) * hw;
        &mut self.data[start..start + hw]
    }

    /// Element-wise `self += other` (same shape).
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!((self.n, self.c, self.h, self.w), (other.n, other.c, other.h, other.w));
        self.data.iter_mut().zip(&other.data).for_each(|(a, b)| *a += b);
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// Square kernel size, stride and zero padding of a convolution (no bias, no groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    /// Output `(height, width)` for an input of `h × w`.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (conv_out(h, self.kernel, self.stride, self.pad), conv_out(w, self.kernel, self.stride, self.pad))
    }
}

/// Output positions `o` (along one axis) whose input position `o·stride + k − pad` for
/// kernel offset `k` lies inside `[0, inp)`; all other taps read zero padding.
fn valid_outputs(out: usize, inp: usize, k: usize, stride: usize, pad: usize) -> Range<usize> {
    let lo = if pad > k { (pad - k).div_ceil(stride) } else { 0 };
    let hi = if inp + pad > k { ((inp + pad - k - 1) / stride + 1).min(out) } else { 0 };
    lo.min(hi)..hi
}

/// A run of output pixels `out_start + j` (j < len) that, for one kernel tap, read input
/// pixels `in_start + j·stride` of the same channel plane.
#[derive(Clone, Copy, Debug)]
struct Segment {
    out_start: usize,
    in_start: usize,
    len: usize,
}

/// For every kernel tap `ky·k + kx`, the runs of (output, input) pixel pairs it connects,
/// padding excluded. One run per output row, except that when stride is 1, input and output
/// have the same width and the tap is the centre column (`kx = pad`: all 1×1 convs), whole
/// rows follow each other contiguously in both planes and form a single run.
fn tap_segments(s: ConvShape, ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<Vec<Segment>> {
    let k = s.kernel;
    let mut taps = Vec::with_capacity(k * k);
    for ky in 0..k {
        let ys = valid_outputs(oh, ih, ky, s.stride, s.pad);
        for kx in 0..k {
            let xs = valid_outputs(ow, iw, kx, s.stride, s.pad);
            let mut segs = Vec::new();
            if !ys.is_empty() && !xs.is_empty() {
                if s.stride == 1 && iw == ow && kx == s.pad {
                    // Input row oy + ky − pad, whole width: contiguous over all valid rows.
                    segs.push(Segment {
                        out_start: ys.start * ow,
                        in_start: (ys.start + ky - s.pad) * iw,
                        len: ys.len() * ow,
                    });
                } else {
                    for oy in ys.clone() {
                        let iy = oy * s.stride + ky - s.pad;
                        segs.push(Segment {
                            out_start: oy * ow + xs.start,
                            in_start: iy * iw + xs.start * s.stride + kx - s.pad,
                            len: xs.len(),
                        });
                    }
                }
            }
            taps.push(segs);
        }
    }
    taps
}

/// Convolution forward: `y[n,o,oy,ox] = Σ_{ky,kx,i} w[o,ky,kx,i] · x[n,i,oy·s+ky−p,ox·s+kx−p]`
/// with zero padding. `w` is OHWI, `c_out × k × k × x.c`.
///
/// The three convolutions run their output planes (or weight rows) in parallel; each element
/// is summed by one thread in the serial order, so the result is the same bits whatever the
/// number of threads.
pub fn conv2d_forward(x: &Tensor, w: &[f64], c_out: usize, s: ConvShape) -> Tensor {
    let (k, c_in) = (s.kernel, x.c);
    assert_eq!(w.len(), c_out * k * k * c_in, "conv weight length");
    let (oh, ow) = s.out_size(x.h, x.w);
    let taps = tap_segments(s, x.h, x.w, oh, ow);
    let mut y = Tensor::zeros(x.n, c_out, oh, ow);
    // One task per output plane (n, o); `max(1)`: chunks may not be empty (nor is there
    // anything to do then).
    y.data.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(plane, out)| {
        let (n, o) = (plane / c_out, plane % c_out);
        for (t, segs) in taps.iter().enumerate() {
            for i in 0..c_in {
                let wv = w[(o * k * k + t) * c_in + i];
                let inp = x.plane(n, i);
                for seg in segs {
                    let dst = &mut out[seg.out_start..seg.out_start + seg.len];
                    if s.stride == 1 {
                        let src = &inp[seg.in_start..seg.in_start + seg.len];
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += wv * v);
                    } else {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d += wv * inp[seg.in_start + j * s.stride];
                        }
                    }
                }
            }
        }
    });
    y
}

/// Convolution backward with respect to the input (the transposed convolution):
/// `dx[n,i,iy,ix] = Σ w[o,ky,kx,i] · dy[n,o,oy,ox]` over all `(o, ky, kx, oy, ox)` with
/// `oy·s+ky−p = iy`, `ox·s+kx−p = ix`. `(in_h, in_w)` is the forward input's size.
pub fn conv2d_backward_data(
    dy: &Tensor,
    w: &[f64],
    c_in: usize,
    in_h: usize,
    in_w: usize,
    s: ConvShape,
) -> Tensor {
    let (k, c_out) = (s.kernel, dy.c);
    assert_eq!(w.len(), c_out * k * k * c_in, "conv weight length");
    assert_eq!(s.out_size(in_h, in_w), (dy.h, dy.w), "conv output size");
    let taps = tap_segments(s, in_h, in_w, dy.h, dy.w);
    let mut dx = Tensor::zeros(dy.n, c_in, in_h, in_w);
    // One task per input-gradient plane (n, i), adding over (o, tap) in a fixed order.
    dx.data.par_chunks_mut((in_h * in_w).max(1)).enumerate().for_each(|(plane, dst)| {
        let (n, i) = (plane / c_in, plane % c_in);
        for o in 0..c_out {
            let g = dy.plane(n, o);
            for (t, segs) in taps.iter().enumerate() {
                let wv = w[(o * k * k + t) * c_in + i];
                for seg in segs {
                    let src = &g[seg.out_start..seg.out_start + seg.len];
                    if s.stride == 1 {
                        let d = &mut dst[seg.in_start..seg.in_start + seg.len];
                        d.iter_mut().zip(src).for_each(|(d, v)| *d += wv * v);
                    } else {
                        for (j, v) in src.iter().enumerate() {
                            dst[seg.in_start + j * s.stride] += wv * v;
                        }
                    }
                }
            }
        }
    });
    dx
}

/// Convolution backward with respect to the weight:
/// `dw[o,ky,kx,i] = Σ_{n,oy,ox} dy[n,o,oy,ox] · x[n,i,oy·s+ky−p,ox·s+kx−p]` (OHWI).
pub fn conv2d_backward_weight(x: &Tensor, dy: &Tensor, s: ConvShape) -> Vec<f64> {
    let (k, c_in, c_out) = (s.kernel, x.c, dy.c);
    assert_eq!(x.n, dy.n, "conv batch");
    assert_eq!(s.out_size(x.h, x.w), (dy.h, dy.w), "conv output size");
    let taps = tap_segments(s, x.h, x.w, dy.h, dy.w);
    let mut dw = vec![0.0; c_out * k * k * c_in];
    // One task per weight row (o, tap) of c_in values, each summed over the images in order.
    dw.par_chunks_mut(c_in.max(1)).enumerate().for_each(|(row, dw)| {
        let (o, t) = (row / (k * k), row % (k * k));
        let segs = &taps[t];
        for n in 0..x.n {
            let g = dy.plane(n, o);
            for (i, dw) in dw.iter_mut().enumerate() {
                let inp = x.plane(n, i);
                let mut acc = 0.0;
                for seg in segs {
                    let gs = &g[seg.out_start..seg.out_start + seg.len];
                    if s.stride == 1 {
                        let xs = &inp[seg.in_start..seg.in_start + seg.len];
                        acc += gs.iter().zip(xs).map(|(a, b)| a * b).sum::<f64>();
                    } else {
                        for (j, a) in gs.iter().enumerate() {
                            acc += a * inp[seg.in_start + j * s.stride];
                        }
                    }
                }
                *dw += acc;
            }
        }
    });
    dw
}

// ---------------------------------------------------------------------------------------------
// Batch normalisation
// ---------------------------------------------------------------------------------------------

/// What training-mode batch-norm keeps for its backward and for the running statistics.
#[derive(Clone, Debug)]
pub struct BnCache {
    /// Normalised input `x̂ = (x − μ)/√(σ² + ε)`.
    pub xhat: Tensor,
    /// Batch mean μ per channel.
    pub mean: Vec<f64>,
    /// Biased batch variance σ² per channel (divided by `N·H·W`).
    pub var: Vec<f64>,
    /// `1/√(σ² + ε)` per channel.
    pub inv_std: Vec<f64>,
}

/// Batch-norm forward in training mode: per channel, mean and **biased** variance over all
/// `N·H·W` values (two-pass), `y = γ·x̂ + β`.
///
/// The batch-norm functions, like the convolutions, run channels (statistics) and planes
/// (elementwise parts) on rayon's threads, each value computed by one thread in the serial
/// order: the same bits for any thread count.
pub fn batchnorm_train_forward(x: &Tensor, gamma: &[f64], beta: &[f64]) -> (Tensor, BnCache) {
    assert!(gamma.len() == x.c && beta.len() == x.c, "batch-norm parameter length");
    let count = (x.n * x.hw()) as f64;
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..x.c)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = (0..x.n).map(|n| x.plane(n, c).iter().sum::<f64>()).sum();
            let mean = sum / count;
            let sq: f64 =
                (0..x.n).map(|n| x.plane(n, c).iter().map(|v| (v - mean).powi(2)).sum::<f64>()).sum();
            (mean, sq / count)
        })
        .unzip();
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + BN_EPS).sqrt()).collect();
    let mut xhat = Tensor::zeros(x.n, x.c, x.h, x.w);
    let mut y = Tensor::zeros(x.n, x.c, x.h, x.w);
    let hw = x.hw().max(1);
    xhat.data
        .par_chunks_mut(hw)
        .zip(y.data.par_chunks_mut(hw))
        .zip(x.data.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, ((xh, y), src))| {
            let c = plane % x.c;
            xh.iter_mut().zip(src).for_each(|(d, v)| *d = (v - mean[c]) * inv_std[c]);
            y.iter_mut().zip(xh.iter()).for_each(|(d, v)| *d = gamma[c] * v + beta[c]);
        });
    (y, BnCache { xhat, mean, var, inv_std })
}

/// Batch-norm backward (training mode, statistics depend on x). With `g = dy·γ` and
/// `M = N·H·W`, per channel:
/// `dx = (1/√(σ²+ε))·(g − mean(g) − x̂·mean(g·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
/// Returns `(dx, dγ, dβ)`.
pub fn batchnorm_backward(dy: &Tensor, cache: &BnCache, gamma: &[f64]) -> (Tensor, Vec<f64>, Vec<f64>) {
    let xhat = &cache.xhat;
    assert_eq!((dy.n, dy.c, dy.h, dy.w), (xhat.n, xhat.c, xhat.h, xhat.w), "batch-norm grad shape");
    let count = (dy.n * dy.hw()) as f64;
    let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = (0..dy.c)
        .into_par_iter()
        .map(|c| {
            let (mut dgamma, mut dbeta) = (0.0, 0.0);
            for n in 0..dy.n {
                let (g, xh) = (dy.plane(n, c), xhat.plane(n, c));
                dbeta += g.iter().sum::<f64>();
                dgamma += g.iter().zip(xh).map(|(a, b)| a * b).sum::<f64>();
            }
            (dgamma, dbeta)
        })
        .unzip();
    let mut dx = Tensor::zeros(dy.n, dy.c, dy.h, dy.w);
    let hw = dy.hw().max(1);
    dx.data
        .par_chunks_mut(hw)
        .zip(dy.data.par_chunks(hw))
        .zip(xhat.data.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, ((d, g), xh))| {
            let c = plane % dy.c;
            // mean(g) = γ·dβ/M and mean(g·x̂) = γ·dγ/M.
            let (mg, mgx) = (gamma[c] * dbeta[c] / count, gamma[c] * dgamma[c] / count);
            let scale = cache.inv_std[c];
            for ((d, gv), xv) in d.iter_mut().zip(g).zip(xh) {
                *d = scale * (gamma[c] * gv - mg - xv * mgx);
            }
        });
    (dx, dgamma, dbeta)
}

/// Batch-norm in eval mode: `y = γ·(x − μ_run)/√(σ²_run + ε) + β`, no statistics computed.
pub fn batchnorm_eval_forward(x: &Tensor, gamma: &[f64], beta: &[f64], mean: &[f64], var: &[f64]) -> Tensor {
    assert!(gamma.len() == x.c && beta.len() == x.c && mean.len() == x.c && var.len() == x.c);
    let mut y = Tensor::zeros(x.n, x.c, x.h, x.w);
    let hw = x.hw().max(1);
    y.data.par_chunks_mut(hw).zip(x.data.par_chunks(hw)).enumerate().for_each(|(plane, (y, src))| {
        let c = plane % x.c;
        let inv_std = 1.0 / (var[c] + BN_EPS).sqrt();
        y.iter_mut().zip(src).for_each(|(d, v)| *d = gamma[c] * (v - mean[c]) * inv_std + beta[c]);
    });
    y
}

/// PyTorch's running-statistics update after a training-mode forward over `count = N·H·W`
/// values per channel: `μ_run ← (1−m)·μ_run + m·μ`,
/// `σ²_run ← (1−m)·σ²_run + m·σ²·count/(count−1)` (the **unbiased** variance), m = 0.1.
/// (`count = 1` is refused by the network before any BN runs; here it keeps σ² as is.)
pub fn batchnorm_update_running(running_mean: &mut [f64], running_var: &mut [f64], cache: &BnCache) {
    let x = &cache.xhat;
    assert!(running_mean.len() == x.c && running_var.len() == x.c);
    let count = x.n * x.hw();
    let unbias = if count > 1 { count as f64 / (count - 1) as f64 } else { 1.0 };
    for c in 0..x.c {
        running_mean[c] = (1.0 - BN_MOMENTUM) * running_mean[c] + BN_MOMENTUM * cache.mean[c];
        running_var[c] = (1.0 - BN_MOMENTUM) * running_var[c] + BN_MOMENTUM * cache.var[c] * unbias;
    }
}

// ---------------------------------------------------------------------------------------------
// ReLU
// ---------------------------------------------------------------------------------------------

/// `y = max(x, 0)`, NaN passing through as in PyTorch.
pub fn relu_forward(x: &Tensor) -> Tensor {
    let data = x.data.iter().map(|&v| if v > 0.0 || v.is_nan() { v } else { 0.0 }).collect();
    Tensor::from_vec(x.n, x.c, x.h, x.w, data)
}

/// ReLU backward: `dx = dy · mask`, where `mask` says which inputs the ReLU passed
/// (`x > 0`, see [`relu_mask`]).
pub fn relu_backward(dy: &Tensor, mask: &[bool]) -> Tensor {
    assert_eq!(dy.data.len(), mask.len(), "relu grad shape");
    let data = dy.data.iter().zip(mask).map(|(&g, &m)| if m { g } else { 0.0 }).collect();
    Tensor::from_vec(dy.n, dy.c, dy.h, dy.w, data)
}

/// The ReLU's pass mask `x > 0`.
pub fn relu_mask(x: &Tensor) -> Vec<bool> {
    x.data.iter().map(|&v| v > 0.0).collect()
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

/// 2×2 average pool, stride 2, no padding: output `⌊H/2⌋ × ⌊W/2⌋` (an odd last row/column is
/// dropped), `y = (x₀₀ + x₀₁ + x₁₀ + x₁₁)/4`.
pub fn avgpool2_forward(x: &Tensor) -> Tensor {
    let (oh, ow) = (x.h / 2, x.w / 2);
    let mut y = Tensor::zeros(x.n, x.c, oh, ow);
    for n in 0..x.n {
        for c in 0..x.c {
            let src = x.plane(n, c);
            let dst = y.plane_mut(n, c);
            for oy in 0..oh {
                for ox in 0..ow {
                    let at = |dy: usize, dx: usize| src[(2 * oy + dy) * x.w + 2 * ox + dx];
                    dst[oy * ow + ox] = 0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
                }
            }
        }
    }
    y
}

/// 2×2 average pool backward: each output gradient is spread as `dy/4` over its window;
/// dropped odd rows/columns get zero. `(in_h, in_w)` is the forward input's size.
pub fn avgpool2_backward(dy: &Tensor, in_h: usize, in_w: usize) -> Tensor {
    assert_eq!((dy.h, dy.w), (in_h / 2, in_w / 2), "avgpool grad shape");
    let mut dx = Tensor::zeros(dy.n, dy.c, in_h, in_w);
    for n in 0..dy.n {
        for c in 0..dy.c {
            let g = dy.plane(n, c);
            let dst = dx.plane_mut(n, c);
            for oy in 0..dy.h {
                for ox in 0..dy.w {
                    let v = 0.25 * g[oy * dy.w + ox];
                    for (ty, tx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        dst[(2 * oy + ty) * in_w + 2 * ox + tx] += v;
                    }
                }
            }
        }
    }
    dx
}

/// 3×3 max pool, stride 2, padding 1 (padding acts as −∞). Returns the output and, per output
/// element, the index within its input plane of the maximum: the **first** maximum in
/// row-major window order (a later value wins only if strictly greater, or NaN), as PyTorch.
pub fn maxpool3s2p1_forward(x: &Tensor) -> (Tensor, Vec<usize>) {
    let (oh, ow) = (conv_out(x.h, 3, 2, 1), conv_out(x.w, 3, 2, 1));
    let mut y = Tensor::zeros(x.n, x.c, oh, ow);
    let mut argmax = vec![0usize; x.n * x.c * oh * ow];
    for n in 0..x.n {
        for c in 0..x.c {
            let src = x.plane(n, c);
            let base = (n * x.c + c) * oh * ow;
            let dst = y.plane_mut(n, c);
            for oy in 0..oh {
                for ox in 0..ow {
                    let (rows, cols) = maxpool3s2p1_window(x.h, x.w, oy, ox);
                    let mut best = f64::NEG_INFINITY;
                    let mut best_idx = rows.start * x.w + cols.start;
                    for iy in rows {
                        for ix in cols.clone() {
                            let v = src[iy * x.w + ix];
                            if v > best || v.is_nan() {
                                best = v;
                                best_idx = iy * x.w + ix;
                            }
                        }
                    }
                    dst[oy * ow + ox] = best;
                    argmax[base + oy * ow + ox] = best_idx;
                }
            }
        }
    }
    (y, argmax)
}

/// Input rows and columns of output (oy, ox)'s 3×3/2 max-pool window, clipped to the
/// `h × w` image (padding never wins against −∞, so it is simply left out).
pub fn maxpool3s2p1_window(h: usize, w: usize, oy: usize, ox: usize) -> (Range<usize>, Range<usize>) {
    ((2 * oy).saturating_sub(1)..(2 * oy + 2).min(h), (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w))
}

/// 3×3/2 max pool backward: each output gradient goes to its window's argmax (accumulating
/// where windows overlap). `(in_h, in_w)` is the forward input's size.
pub fn maxpool3s2p1_backward(dy: &Tensor, argmax: &[usize], in_h: usize, in_w: usize) -> Tensor {
    assert_eq!(argmax.len(), dy.data.len(), "maxpool argmax length");
    let mut dx = Tensor::zeros(dy.n, dy.c, in_h, in_w);
    let ohw = dy.hw();
    for n in 0..dy.n {
        for c in 0..dy.c {
            let base = (n * dy.c + c) * ohw;
            let g = dy.plane(n, c);
            let dst = dx.plane_mut(n, c);
            for (j, &v) in g.iter().enumerate() {
                dst[argmax[base + j]] += v;
            }
        }
    }
    dx
}

/// Global average pool: `y[n][c] = mean over the H·W plane of x[n,c]`. Output `n × c`.
pub fn global_avg_pool_forward(x: &Tensor) -> Vec<f64> {
    let hw = x.hw() as f64;
    let mut y = vec![0.0; x.n * x.c];
    for n in 0..x.n {
        for c in 0..x.c {
            y[n * x.c + c] = x.plane(n, c).iter().sum::<f64>() / hw;
        }
    }
    y
}

/// Global average pool backward: `dx[n,c,·,·] = dy[n][c] / (H·W)`.
pub fn global_avg_pool_backward(dy: &[f64], n: usize, c: usize, h: usize, w: usize) -> Tensor {
    assert_eq!(dy.len(), n * c, "global pool grad length");
    let mut dx = Tensor::zeros(n, c, h, w);
    let hw = (h * w) as f64;
    for i in 0..n {
        for ch in 0..c {
            dx.plane_mut(i, ch).fill(dy[i * c + ch] / hw);
        }
    }
    dx
}

// ---------------------------------------------------------------------------------------------
// Classifier and loss
// ---------------------------------------------------------------------------------------------

/// Fully connected layer: `y[n][o] = b[o] + Σ_i w[o][i]·x[n][i]`; `x` is `n × inp`, `w` is
/// `out × inp`, output `n × out`.
pub fn linear_forward(x: &[f64], n: usize, inp: usize, w: &[f64], b: &[f64], out: usize) -> Vec<f64> {
    assert!(x.len() == n * inp && w.len() == out * inp && b.len() == out, "linear shapes");
    let mut y = vec![0.0; n * out];
    for i in 0..n {
        let xr = &x[i * inp..(i + 1) * inp];
        for o in 0..out {
            let wr = &w[o * inp..(o + 1) * inp];
            y[i * out + o] = b[o] + wr.iter().zip(xr).map(|(a, c)| a * c).sum::<f64>();
        }
    }
    y
}

/// Fully connected backward: `dx = dy·W`, `dW = dyᵀ·x`, `db = Σ_n dy`. Returns `(dx, dW, db)`.
pub fn linear_backward(
    dy: &[f64],
    x: &[f64],
    n: usize,
    inp: usize,
    w: &[f64],
    out: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert!(dy.len() == n * out && x.len() == n * inp && w.len() == out * inp, "linear shapes");
    let mut dx = vec![0.0; n * inp];
    let mut dw = vec![0.0; out * inp];
    let mut db = vec![0.0; out];
    for i in 0..n {
        for o in 0..out {
            let g = dy[i * out + o];
            db[o] += g;
            for j in 0..inp {
                dx[i * inp + j] += g * w[o * inp + j];
                dw[o * inp + j] += g * x[i * inp + j];
            }
        }
    }
    (dx, dw, db)
}

/// Mean softmax cross-entropy over the batch, computed stably:
/// `L = (1/N) Σ_n [log Σ_j exp(z[n][j]) − z[n][label_n]]`. Labels must be `< classes`.
pub fn softmax_xent_forward(logits: &[f64], n: usize, classes: usize, labels: &[usize]) -> f64 {
    assert!(logits.len() == n * classes && labels.len() == n, "loss shapes");
    let mut total = 0.0;
    for i in 0..n {
        let z = &logits[i * classes..(i + 1) * classes];
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - z[labels[i]];
    }
    total / n as f64
}

/// Gradient of [`softmax_xent_forward`] with respect to the logits:
/// `dz[n][j] = (softmax(z[n])[j] − [j = label_n]) / N`.
pub fn softmax_xent_backward(logits: &[f64], n: usize, classes: usize, labels: &[usize]) -> Vec<f64> {
    assert!(logits.len() == n * classes && labels.len() == n, "loss shapes");
    let mut dz = vec![0.0; n * classes];
    for i in 0..n {
        let z = &logits[i * classes..(i + 1) * classes];
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
        for j in 0..classes {
            let p = (z[j] - m).exp() / sum;
            let onehot = if j == labels[i] { 1.0 } else { 0.0 };
            dz[i * classes + j] = (p - onehot) / n as f64;
        }
    }
    dz
}

// ---------------------------------------------------------------------------------------------
// Channel concatenation
// ---------------------------------------------------------------------------------------------

/// Concatenates tensors of equal `n, h, w` along channels, in order (a real copy, as in the
/// textbook DenseNet).
pub fn concat_channels(parts: &[&Tensor]) -> Tensor {
    assert!(!parts.is_empty(), "concat of nothing");
    let (n, h, w) = (parts[0].n, parts[0].h, parts[0].w);
    assert!(parts.iter().all(|p| (p.n, p.h, p.w) == (n, h, w)), "concat shapes");
    let c: usize = parts.iter().map(|p| p.c).sum();
    let mut y = Tensor::zeros(n, c, h, w);
    for i in 0..n {
        let mut ch = 0;
        for p in parts {
            for pc in 0..p.c {
                y.plane_mut(i, ch).copy_from_slice(p.plane(i, pc));
                ch += 1;
            }
        }
    }
    y
}

/// Splits a tensor along channels into consecutive parts of `sizes` channels (the backward
/// of [`concat_channels`]).
pub fn split_channels(x: &Tensor, sizes: &[usize]) -> Vec<Tensor> {
    assert_eq!(sizes.iter().sum::<usize>(), x.c, "split sizes");
    let mut start = 0;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        let mut part = Tensor::zeros(x.n, s, x.h, x.w);
        for i in 0..x.n {
            for pc in 0..s {
                part.plane_mut(i, pc).copy_from_slice(x.plane(i, start + pc));
            }
        }
        out.push(part);
        start += s;
    }
    out
}
