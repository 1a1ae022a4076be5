//! The `Backend` trait: one method per fused op of the memory-efficient DenseNet (see "Why it
//! is built this way" in `docs/ARCHITECTURE.md`), plus buffer management through a
//! byte-counting allocator.
//!
//! Every buffer holds `f32`. Tensors inside buffers are described by plain offsets and
//! shapes ([`Mat`], [`Spatial`]) rather than by borrowed sub-slices, because the ops read one
//! column range of a feature storage while another op writes a different range of the same
//! storage, and because a CUDA kernel receives exactly these numbers in its params struct.
//!
//! Conventions shared by all ops:
//! * activations are NHWC with a channel pitch: element (pixel p, channel c) of a [`Mat`] is at
//!   `offset + p·ld + c`, pixel p = (n·H + y)·W + x;
//! * conv weights are OHWI (`[c_out][kh][kw][c_in]`), linear weights `[out][in]`;
//! * batch-norm is applied as the per-channel affine `a = γ/√(σ²+ε)`, `b = β − μ·a` computed
//!   from a [`BnRef`] (batch statistics in training, running statistics in eval);
//! * parameter-gradient outputs always **accumulate** (`+=`); activation-gradient outputs
//!   overwrite or accumulate as the `accumulate` flag says;
//! * per-channel reductions used by BN backward are written to a `sums` buffer as
//!   `[Σg (c values) | Σg·x̂ (c values)]`.

pub mod cpu;
pub mod cuda;
pub mod memory;
mod validate;
mod view;

pub use memory::{Category, MemoryReport, MemoryTracker};
pub use view::{At, AtMut, BnRef, BnReluView, BnSums, LinearGrads, Mat, StatsMut, StatsRef, View, ViewMut};

use crate::error::Result;

/// Batch-norm ε, as PyTorch.
pub const BN_EPS: f32 = 1e-5;
/// Running-statistics momentum, as PyTorch.
pub const BN_MOMENTUM: f32 = 0.1;

/// The per-channel affine `y = a·x + b` of a batch-norm with statistics (mean, biased var):
/// `a = γ/√(var + ε)`, `b = β − mean·a`, evaluated in this order in f32 by every backend, so
/// that ReLU decisions `a·x + b > 0` agree bit for bit wherever the inputs do.
pub fn bn_affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(var).map(|(g, v)| g * (1.0 / (v + BN_EPS).sqrt())).collect();
    let b = beta.iter().zip(&a).zip(mean).map(|((be, a), m)| be - m * a).collect();
    (a, b)
}

/// ReLU as PyTorch computes it: `max(v, 0)`, except that a NaN passes through (so a NaN
/// anywhere upstream reaches the loss instead of turning into a harmless 0). Every backend
/// and kernel uses this definition (`dn_relu` in kernels/common.cuh).
pub fn relu(v: f32) -> f32 {
    if v > 0.0 || v.is_nan() { v } else { 0.0 }
}

/// Whether `v` replaces `best` as the maximum of a max-pool window: larger, or the window's
/// first NaN, which then stays: a window holding a NaN yields NaN, as PyTorch's max-pool.
/// (PyTorch's arg-max is the window's last NaN; only a window with a NaN, whose gradient is
/// NaN anyway, can tell the difference.)
pub fn max_pool_takes(v: f32, best: f32) -> bool {
    (v > best || v.is_nan()) && !best.is_nan()
}

/// Batch and spatial extent of an NHWC activation (pixels = n·h·w).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spatial {
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl Spatial {
    pub fn pixels(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// Geometry of a plain (non-fused) convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn out(&self, s: Spatial) -> Spatial {
        let o = |x| crate::config::conv_out(x, self.kernel, self.stride, self.pad);
        Spatial { n: s.n, h: o(s.h), w: o(s.w) }
    }
}

/// Window of a non-overlapping average pool (the stride equals the window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    pub h: usize,
    pub w: usize,
}

impl PoolWindow {
    /// Output extent: ⌊h/kh⌋ × ⌊w/kw⌋ per image.
    pub fn out(&self, s: Spatial) -> Spatial {
        Spatial { n: s.n, h: s.h / self.h.max(1), w: s.w / self.w.max(1) }
    }
}

/// Offsets of one BN layer's gradients and of the per-channel deferred-correction
/// accumulators it contributes to.
#[derive(Clone, Copy, Debug)]
pub struct BnGradTarget {
    /// Offsets of dγ and dβ in the gradient buffer.
    pub dgamma: usize,
    pub dbeta: usize,
    /// Offsets of the α and β accumulators of the deferred BN correction in the correction
    /// buffer, or `None` when the correction is applied right away (bottleneck BN).
    pub correction: Option<(usize, usize)>,
}

/// Hyper-parameters of one SGD step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// A compute device with the fused DenseNet ops.
pub trait Backend {
    /// A device buffer of `f32`. Dropping it returns its bytes to the allocator.
    type Buf;

    /// Human-readable device name, for messages.
    fn name(&self) -> String;

    // ---- memory -----------------------------------------------------------------------

    /// A zero-filled buffer of `len` floats, counted under `category`.
    fn alloc(&self, len: usize, category: Category) -> Result<Self::Buf>;
    /// Bytes currently allocated and the peak since creation or the last reset.
    fn memory(&self) -> MemoryReport;
    /// Forget the peak: it becomes the current allocation.
    fn reset_peak(&self);
    /// Bytes the device could still hand out (host memory for the cpu backend, free device
    /// memory for a GPU), if it can tell: what decides whether a planned run is attempted.
    fn available_bytes(&self) -> Option<usize>;
    /// Refuses `needed` bytes for `what` beyond [`Backend::available_bytes`] (see
    /// [`memory::ensure_fits`]).
    fn ensure_fits(&self, what: &str, needed: usize) -> Result<()> {
        memory::ensure_fits(what, needed, &self.name(), self.available_bytes())
    }
    /// Copies host data into `dst[offset..offset + src.len()]`.
    fn upload(&self, dst: &mut Self::Buf, offset: usize, src: &[f32]) -> Result<()>;
    /// Copies `src[offset..offset + len]` to the host.
    fn download(&self, src: &Self::Buf, offset: usize, len: usize) -> Result<Vec<f32>>;
    /// Sets `buf[offset..offset + len]` to zero.
    fn fill_zero(&self, buf: &mut Self::Buf, offset: usize, len: usize) -> Result<()>;
    /// Waits for queued work to finish.
    fn synchronize(&self) -> Result<()>;

    // ---- statistics ---------------------------------------------------------------------

    /// Per-channel batch mean and biased variance of the columns of `x` (two-pass or
    /// Welford; never E[x²]−E[x]²), written to `out[mean..mean+cols]`, `out[var..var+cols]`.
    fn channel_stats(&self, x: View<'_, Self::Buf>, out: StatsMut<'_, Self::Buf>) -> Result<()>;

    /// `running ← (1−m)·running + m·batch`, the variance term unbiased by `count/(count−1)`.
    /// Running mean at `running[run_mean..]`, variance at `running[run_var..]`.
    fn update_running_stats(
        &self,
        batch: StatsRef<'_, Self::Buf>,
        channels: usize,
        count: usize,
        running: StatsMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- dense layer: bottleneck 1×1 ----------------------------------------------------

    /// `z = relu(a⊙x + b) · Wᵀ`, W = `[z.cols][x.cols]` at `w`. Overwrites z.
    fn bn_relu_conv1x1_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        z: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dzᵀ · relu(a⊙x + b)`, dW = `[dz.cols][x.cols]` at `dw`.
    fn bn_relu_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, Self::Buf>,
        dz: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = (dz · W) ⊙ [a⊙x + b > 0]` is never stored: `dx (+)= a ⊙ g` is written to `dx`
    /// (which may be the storage `x` reads from, another buffer in practice: the gradient
    /// storage) and `sums ← [Σg | Σg·x̂]` per channel of x.
    fn bn_relu_conv1x1_dgrad(
        &self,
        dz: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        x: BnReluView<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
        accumulate: bool,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    // ---- dense layer: 3×3 (stride 1, pad 1) ---------------------------------------------

    /// `y = conv3x3(relu(a⊙z + b), W)`, W = `[y.cols][3][3][z.cols]`. Overwrites y.
    fn bn_relu_conv3x3_fwd(
        &self,
        z: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += wgrad3x3(relu(a⊙z + b), dy)`.
    fn bn_relu_conv3x3_wgrad(
        &self,
        z: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = dgrad3x3(dy, W) ⊙ [a⊙z + b > 0]` into `g` (overwrites), and
    /// `sums ← [Σg | Σg·ẑ]` per channel of z.
    fn bn_relu_conv3x3_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        z: BnReluView<'_, Self::Buf>,
        g: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    // ---- batch-norm backward pieces -----------------------------------------------------

    /// In place `g ← a·(g − Σg/P − x̂·Σ(g·x̂)/P)`: the full BN backward of an input x whose
    /// gradient `g` (already masked by the ReLU) and sums are given. P = `gm.rows`.
    fn bn_backward_elementwise(
        &self,
        g: ViewMut<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        sums: &Self::Buf,
    ) -> Result<()>;

    /// Turns `sums = [Σg | Σg·x̂]` (c channels, over `count` values each) into dγ += Σg·x̂,
    /// dβ += Σg in `grads`, and, if `target.correction` is set, the deferred-correction
    /// accumulators `α += a·Σg/P`, `β += a·Σ(g·x̂)/P` in `corr`.
    fn bn_grad_fold(
        &self,
        sums: BnSums<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        grads: &mut Self::Buf,
        corr: &mut Self::Buf,
        target: BnGradTarget,
    ) -> Result<()>;

    /// The deferred BN correction, applied once per channel:
    /// `g[:, c] −= α_c + x̂_c·β_c` with α at `corr[alpha + c]`, β at `corr[beta + c]`.
    fn bn_correction(
        &self,
        g: ViewMut<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        stats: StatsRef<'_, Self::Buf>,
        corr: &Self::Buf,
        alpha: usize,
        beta: usize,
    ) -> Result<()>;

    // ---- transition: BN-ReLU-avgpool2-conv1x1 -------------------------------------------

    /// `y = avgpool2(relu(a⊙x + b)) · Wᵀ` (pool first: pool and 1×1 conv commute). x has
    /// spatial `shape`, y has `⌊h/2⌋×⌊w/2⌋`. Overwrites y.
    fn bn_relu_avgpool_conv1x1_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dyᵀ · avgpool2(relu(a⊙x + b))`.
    fn bn_relu_avgpool_conv1x1_wgrad(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `g = unpool2(dy · W)/4 ⊙ [a⊙x + b > 0]`; `dx ← a⊙g` (overwrites, every element of
    /// dx, zero where the pool dropped an odd row/column); `sums ← [Σg | Σg·x̂]`.
    fn bn_relu_avgpool_conv1x1_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    // ---- stems ----------------------------------------------------------------------------

    /// Plain convolution `y = conv(x, W)`, W OHWI `[y.cols][k][k][x.cols]`. Overwrites y.
    fn conv_fwd(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += wgrad(x, dy)` of a plain convolution.
    fn conv_wgrad(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        dy: View<'_, Self::Buf>,
        dw: AtMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dx = dgrad(dy, W)` of a plain convolution (overwrites dx). `shape` is x's.
    fn conv_dgrad(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        geom: ConvGeom,
        w: At<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// ImageNet stem tail: `y = maxpool3x3/2,pad1(relu(a⊙t + b))`. Overwrites y.
    fn bn_relu_maxpool_fwd(
        &self,
        t: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// Backward of [`Backend::bn_relu_maxpool_fwd`] up to the BN: the window's arg-max
    /// (first maximum in row-major window order, as PyTorch) is recomputed from t; writes
    /// `g = scatter(dy) ⊙ [a⊙t + b > 0]` into g (overwrites) and `sums ← [Σg | Σg·t̂]`.
    fn bn_relu_maxpool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        t: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        g: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    // ---- head -----------------------------------------------------------------------------

    /// `pooled[n, c] = mean over pixels of image n of relu(a⊙x + b)`; pooled is N×C dense.
    fn bn_relu_global_pool_fwd(
        &self,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        pooled: &mut Self::Buf,
    ) -> Result<()>;

    /// `g = dpooled/(h·w) broadcast ⊙ [a⊙x + b > 0]`; `dx ← a⊙g` (overwrites);
    /// `sums ← [Σg | Σg·x̂]`.
    fn bn_relu_global_pool_bwd(
        &self,
        dpooled: &Self::Buf,
        x: BnReluView<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    /// `logits = x · Wᵀ + bias` with x `n×k` dense, W `[out][k]`.
    fn linear_fwd(
        &self,
        x: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        bias: At<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `dW += dyᵀ·x`, `dbias += Σ dy`, `dx = dy·W` (overwrites dx).
    fn linear_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        w: At<'_, Self::Buf>,
        grads: LinearGrads<'_, Self::Buf>,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// Mean softmax cross-entropy of `logits` (n × classes) against `labels` (n class indices
    /// stored as exact small integers in f32): `loss[0]` ← the mean loss,
    /// `dlogits ← (softmax − onehot)/n`. Numerically stable (max subtracted).
    fn softmax_xent(
        &self,
        logits: View<'_, Self::Buf>,
        labels: &Self::Buf,
        loss: &mut Self::Buf,
        dlogits: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    // ---- optimiser ------------------------------------------------------------------------

    /// One fused SGD step over `len` parameters: `d = g + wd·p`, `v = μ·v + d`,
    /// `p −= lr·(d + μ·v)` (Nesterov) or `p −= lr·v`.
    fn sgd_update(
        &self,
        params: &mut Self::Buf,
        grads: &Self::Buf,
        velocity: &mut Self::Buf,
        len: usize,
        hp: SgdParams,
    ) -> Result<()>;

    // ---- unfused ops of the baseline (`crate::baseline`) ----------------------------
    //
    // The textbook DenseNet materialises what the fused ops above keep in registers: the
    // concatenation, the BN output and the ReLU output of every layer. These ops exist so
    // that baseline runs on the same backend, through the same allocator, as the efficient
    // path; combined with `channel_stats`, `conv_*`, `bn_grad_fold`, `bn_backward_elementwise`
    // and the head ops they make a complete unfused training step.

    /// `dst ← src` (or `dst += src` with `accumulate`), element by element, for two matrices
    /// of the same shape: builds a concatenation column range by column range, and splits
    /// its gradient back onto the concatenated tensors.
    fn copy_columns(
        &self,
        src: View<'_, Self::Buf>,
        dst: ViewMut<'_, Self::Buf>,
        accumulate: bool,
    ) -> Result<()>;

    /// `y = a⊙x + b`: a batch-norm's output, stored (same f32 formula as the fused ops'
    /// pre-activation, so a ReLU of it makes the same decisions). Overwrites y.
    fn bn_apply(
        &self,
        x: View<'_, Self::Buf>,
        bn: BnRef<'_, Self::Buf>,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// `y = max(x, 0)`. Overwrites y.
    fn relu_fwd(&self, x: View<'_, Self::Buf>, y: ViewMut<'_, Self::Buf>) -> Result<()>;

    /// ReLU backward in place: `g ← g ⊙ [x > 0]`, x being the ReLU's input.
    fn relu_bwd(&self, g: ViewMut<'_, Self::Buf>, x: View<'_, Self::Buf>) -> Result<()>;

    /// The reductions of a batch-norm backward: `sums ← [Σg | Σg·x̂]` per channel, g being the
    /// gradient of the BN output and x̂ = (x − mean)/√(var + ε) of its input. Feeds
    /// [`Backend::bn_grad_fold`] (dγ, dβ) and [`Backend::bn_backward_elementwise`] (dx).
    fn bn_grad_sums(
        &self,
        g: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        stats: StatsRef<'_, Self::Buf>,
        sums: &mut Self::Buf,
    ) -> Result<()>;

    /// Average pooling over non-overlapping `window`s (stride = window, no padding; a last
    /// partial row or column of windows is dropped, as PyTorch's `AvgPool2d(k)`): y has
    /// ⌊h/kh⌋×⌊w/kw⌋ pixels per image. `window = (2, 2)` is the transition's pool,
    /// `window = (h, w)` the head's global pool. Overwrites y.
    fn avg_pool_fwd(
        &self,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        window: PoolWindow,
        y: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// Backward of [`Backend::avg_pool_fwd`]: `dx = dy/(kh·kw)` on every pixel of a window,
    /// 0 on dropped pixels. `shape` is x's. Overwrites dx.
    fn avg_pool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        shape: Spatial,
        window: PoolWindow,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;

    /// The ImageNet stem's max-pool 3×3, stride 2, padding 1 (padding never wins).
    /// Overwrites y.
    fn max_pool_fwd(&self, x: View<'_, Self::Buf>, shape: Spatial, y: ViewMut<'_, Self::Buf>) -> Result<()>;

    /// Backward of [`Backend::max_pool_fwd`]: each dy goes to its window's first maximum in
    /// row-major window order (recomputed from x; PyTorch's choice), summed where windows
    /// overlap. `shape` is x's. Overwrites dx.
    fn max_pool_bwd(
        &self,
        dy: View<'_, Self::Buf>,
        x: View<'_, Self::Buf>,
        shape: Spatial,
        dx: ViewMut<'_, Self::Buf>,
    ) -> Result<()>;
}
