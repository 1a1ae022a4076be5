//! Where an op's tensors are: a buffer and the geometry of the tensor inside it.
//!
//! Tensors are described by offsets and shapes rather than by borrowed sub-slices, because
//! the ops read one column range of a feature storage while another op writes a different
//! range of the same storage, and because a CUDA kernel receives exactly these numbers in its
//! params struct. A [`View`] pairs a buffer with a [`Mat`] (an input); a [`ViewMut`] does the
//! same for an output, so an op's inputs and outputs can never be the same buffer object.

/// A matrix of `rows` pixels × `cols` channels at `offset` with leading dimension `ld`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mat {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl Mat {
    /// A dense matrix (ld = cols) at `offset`.
    pub fn dense(offset: usize, rows: usize, cols: usize) -> Self {
        Mat { offset, rows, cols, ld: cols }
    }
    /// Columns `[start, start + cols)` of this matrix.
    pub fn columns(&self, start: usize, cols: usize) -> Self {
        debug_assert!(start + cols <= self.cols);
        Mat { offset: self.offset + start, rows: self.rows, cols, ld: self.ld }
    }
    /// Index of element (p, c).
    #[inline]
    pub fn at(&self, p: usize, c: usize) -> usize {
        self.offset + p * self.ld + c
    }
}

/// An input matrix: `mat` inside `buf`.
pub struct View<'a, B: ?Sized> {
    pub buf: &'a B,
    pub mat: Mat,
}

impl<B: ?Sized> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for View<'_, B> {}

impl<'a, B: ?Sized> View<'a, B> {
    pub fn new(buf: &'a B, mat: Mat) -> Self {
        View { buf, mat }
    }
    /// This input read through a batch-norm and ReLU: `relu(a⊙x + b)`, the prologue of every
    /// fused op.
    pub fn bn_relu(self, bn: BnRef<'a, B>) -> BnReluView<'a, B> {
        BnReluView { x: self, bn }
    }
}

/// An output matrix: `mat` inside `buf`.
pub struct ViewMut<'a, B: ?Sized> {
    pub buf: &'a mut B,
    pub mat: Mat,
}

impl<'a, B: ?Sized> ViewMut<'a, B> {
    pub fn new(buf: &'a mut B, mat: Mat) -> Self {
        ViewMut { buf, mat }
    }
    /// The same output, borrowed for one more call.
    pub fn reborrow(&mut self) -> ViewMut<'_, B> {
        ViewMut { buf: self.buf, mat: self.mat }
    }
    /// The output's geometry with its buffer read-only (for argument checks).
    pub fn as_view(&self) -> View<'_, B> {
        View { buf: self.buf, mat: self.mat }
    }
}

/// An input `x` as a fused op reads it: `relu(a⊙x + b)` with the per-channel affine of `bn`.
pub struct BnReluView<'a, B: ?Sized> {
    pub x: View<'a, B>,
    pub bn: BnRef<'a, B>,
}

impl<B: ?Sized> Clone for BnReluView<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for BnReluView<'_, B> {}

/// Where a batch-norm finds its statistics and affine parameters.
pub struct BnRef<'a, B: ?Sized> {
    /// Buffer holding the per-channel mean and (biased) variance.
    pub stats: &'a B,
    pub mean: usize,
    pub var: usize,
    /// Buffer holding γ and β (the parameter buffer).
    pub params: &'a B,
    pub gamma: usize,
    pub beta: usize,
}

impl<B: ?Sized> Clone for BnRef<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for BnRef<'_, B> {}

/// Where a batch-norm's statistics live, without the affine parameters (for passes that
/// only need x̂ = (x − μ)/√(σ²+ε)).
pub struct StatsRef<'a, B: ?Sized> {
    pub stats: &'a B,
    pub mean: usize,
    pub var: usize,
}

impl<B: ?Sized> Clone for StatsRef<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for StatsRef<'_, B> {}

/// A tensor inside a buffer, by offset.
pub struct At<'a, B: ?Sized> {
    pub buf: &'a B,
    pub offset: usize,
}

impl<B: ?Sized> Clone for At<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for At<'_, B> {}

/// An output tensor inside a buffer, by offset (a weight gradient).
pub struct AtMut<'a, B: ?Sized> {
    pub buf: &'a mut B,
    pub offset: usize,
}

impl<'a, B: ?Sized> AtMut<'a, B> {
    pub fn new(buf: &'a mut B, offset: usize) -> Self {
        AtMut { buf, offset }
    }
}

/// Where per-channel mean and variance are written: `stats[mean..]`, `stats[var..]`.
pub struct StatsMut<'a, B: ?Sized> {
    pub stats: &'a mut B,
    pub mean: usize,
    pub var: usize,
}

impl<'a, B: ?Sized> StatsMut<'a, B> {
    pub fn new(stats: &'a mut B, mean: usize, var: usize) -> Self {
        StatsMut { stats, mean, var }
    }
}

/// The per-channel reductions of a batch-norm backward, `[Σg (channels values) | Σg·x̂
/// (channels values)]` at the start of `sums`, each over `count` values.
pub struct BnSums<'a, B: ?Sized> {
    pub sums: &'a B,
    pub channels: usize,
    pub count: usize,
}

impl<'a, B: ?Sized> BnSums<'a, B> {
    pub fn new(sums: &'a B, channels: usize, count: usize) -> Self {
        BnSums { sums, channels, count }
    }
}

/// Where a linear layer's parameter gradients accumulate: dW at `grads[dw..]`, dbias at
/// `grads[dbias..]`.
pub struct LinearGrads<'a, B: ?Sized> {
    pub grads: &'a mut B,
    pub dw: usize,
    pub dbias: usize,
}

impl<'a, B: ?Sized> LinearGrads<'a, B> {
    pub fn new(grads: &'a mut B, dw: usize, dbias: usize) -> Self {
        LinearGrads { grads, dw, dbias }
    }
}
