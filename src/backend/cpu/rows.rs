//! What the cpu ops share for parallel work over pixel rows, and their fixed-order reductions.
//!
//! Work is cut into blocks of pixel rows at boundaries that depend on the shape only, never on
//! the number of threads ([`chunk_bounds`]); blocks run in parallel on rayon ([`par_blocks`]),
//! each writing its own disjoint rows of the output and returning its partial per-channel
//! sums, accumulated in f64, which are then added in block order ([`sum_in_order`]): every
//! result is bit-identical whatever the number of threads. The BN-ReLU backward epilogue of
//! every fused op ([`masked_row`]) is here too: the ReLU mask, what is stored, and the
//! `[Σg | Σg·x̂]` sums.

use super::Bn;
use super::elem::Elem;
use super::simd::multiversioned;
use crate::backend::{Mat, relu};
use rayon::prelude::*;

/// Pixels per parallel block of the elementwise and pooling ops. A constant, so that the
/// reduction order is fixed.
pub(crate) const CHUNK_ROWS: usize = 512;

/// Row `p` (its `m.cols` channels) of matrix `m` in `buf`.
#[inline]
pub(crate) fn row<T>(buf: &[T], m: Mat, p: usize) -> &[T] {
    &buf[m.at(p, 0)..][..m.cols]
}

/// `relu(a·x + b)` for channel `c`; positive exactly where [`active`] is true.
#[inline]
pub(crate) fn bn_relu(bn: &Bn, c: usize, x: f32) -> f32 {
    relu(bn.a[c] * x + bn.b[c])
}

/// The ReLU mask `a·x + b > 0` of a channel with affine (a, b).
#[inline]
pub(crate) fn active(a: f32, b: f32, x: f32) -> bool {
    a * x + b > 0.0
}

/// `x̂ = (x − mean)·invstd`.
#[inline]
pub(crate) fn normalized(mean: f32, invstd: f32, x: f32) -> f32 {
    (x - mean) * invstd
}

/// Adds per-block partial sums in block order (the order fixes the result).
pub(crate) fn sum_in_order(partials: Vec<Vec<f64>>, width: usize) -> Vec<f64> {
    partials.into_iter().fold(vec![0.0; width], |mut total, part| {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
        total
    })
}

/// Stores f64 totals into f32 `sums`.
pub(crate) fn store_sums(sums: &mut [f32], totals: &[f64]) {
    sums.iter_mut().zip(totals).for_each(|(s, &t)| *s = t as f32);
}

/// `width` f64 accumulators, `f(p, acc)` applied to every row `p < rows`: each piece of
/// [`CHUNK_ROWS`] rows sums into its own accumulators, then the pieces are added in order.
pub(crate) fn reduce_rows(rows: usize, width: usize, f: impl Fn(usize, &mut [f64]) + Sync) -> Vec<f64> {
    // No accumulator, nothing to add: a zero-width view may claim any number of rows (it
    // addresses no element), and its pieces would cost time and memory for nothing.
    if width == 0 {
        return Vec::new();
    }
    let partials = (0..rows.div_ceil(CHUNK_ROWS))
        .into_par_iter()
        .map(|i| {
            let mut acc = vec![0.0; width];
            (i * CHUNK_ROWS..((i + 1) * CHUNK_ROWS).min(rows)).for_each(|p| f(p, &mut acc));
            acc
        })
        .collect();
    sum_in_order(partials, width)
}

// The head's GEMMs are tiny next to the convolutions, so they are plain loops parallel over
// independent output rows (each row's sum in a fixed order).

/// Reusable per-task scratch tiles.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) a: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

/// The first `len` floats of a reusable scratch vector. Its contents are unspecified: callers
/// overwrite all of them.
pub(crate) fn scratch(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `0, chunk, 2·chunk, …, rows`: the boundaries of blocks of `chunk` rows (not 0) over `rows`
/// pixel rows.
pub(crate) fn chunk_bounds(rows: usize, chunk: usize) -> Vec<usize> {
    (0..rows).step_by(chunk).chain(std::iter::once(rows)).collect()
}

/// Pixel rows `[first, first + rows)` of a [`Mat`], borrowed mutably: element (p, c) is at
/// `data[(p − first)·ld + c]`.
pub(crate) struct RowBlock<'a, T = f32> {
    pub(crate) first: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) ld: usize,
    pub(crate) data: &'a mut [T],
}

impl<T> RowBlock<'_, T> {
    /// The `cols` channels of row `first + r`.
    pub(crate) fn row(&mut self, r: usize) -> &mut [T] {
        &mut self.data[r * self.ld..][..self.cols]
    }
}

/// Splits the rows of `m` inside `buf` at `bounds` (increasing pixel indices from 0 to
/// `m.rows`) into disjoint mutable blocks.
pub(crate) fn split_rows<'a, T>(buf: &'a mut [T], m: Mat, bounds: &[usize]) -> Vec<RowBlock<'a, T>> {
    // A single-row Mat may have a pitch smaller than its width.
    let ld = if m.rows > 1 { m.ld } else { m.cols };
    let mut rest = &mut buf[m.offset..];
    let mut blocks = Vec::with_capacity(bounds.len().saturating_sub(1));
    for pair in bounds.windows(2) {
        let (first, end) = (pair[0], pair[1]);
        // The last row ends at its last column; the pitch after it may lie past the buffer.
        let len = if end == m.rows { (end - first - 1) * ld + m.cols } else { (end - first) * ld };
        let (data, tail) = std::mem::take(&mut rest).split_at_mut(len);
        blocks.push(RowBlock { first, rows: end - first, cols: m.cols, ld, data });
        rest = tail;
    }
    blocks
}

/// Runs `f` on the blocks of `out`'s rows split at `bounds`, in parallel (they are disjoint),
/// with a scratch per task, and returns the results in block order. A matrix without rows or
/// columns has no blocks (a zero-width view may claim any number of rows: it addresses no
/// element, and blocks of it would cost time and memory for nothing).
pub(crate) fn par_blocks<T: Send, R: Send>(
    out: &mut [T],
    om: Mat,
    bounds: &[usize],
    f: impl Fn(&mut RowBlock<'_, T>, &mut Scratch) -> R + Sync + Send,
) -> Vec<R> {
    if om.rows == 0 || om.cols == 0 {
        return Vec::new();
    }
    split_rows(out, om, bounds)
        .into_par_iter()
        .map_init(Scratch::default, |s, mut blk| f(&mut blk, s))
        .collect()
}

/// What the BN-ReLU backward epilogue stores for the masked gradient g.
#[derive(Clone, Copy)]
pub(crate) enum Store {
    /// `out = g`
    Plain,
    /// `out = a·g`
    Scaled,
    /// `out += a·g`
    AddScaled,
}

multiversioned! {
    /// BN-ReLU backward of one pixel row: `g = gpre ⊙ [a·x + b > 0]` (the same f32 test as the
    /// forward ReLU), stored into `out` as `store` says, and `[Σg | Σg·x̂]` accumulated into
    /// `sums` in f64.
    pub(crate) fn masked_row<X: Elem, O: Elem>(
        gpre: &[f32],
        x: &[X],
        bn: &Bn,
        store: Store,
        out: &mut [O],
        sums: &mut [f64],
    ) {
        match store {
            Store::Plain => masked_row_with(gpre, x, bn, out, sums, |o, _, g| *o = O::put(g)),
            Store::Scaled => masked_row_with(gpre, x, bn, out, sums, |o, a, g| *o = O::put(a * g)),
            Store::AddScaled => {
                masked_row_with(gpre, x, bn, out, sums, |o, a, g| *o = O::put(o.get() + a * g))
            }
        }
    }
}

/// [`masked_row`] for one store mode `put(out, a, g)`: one loop per mode over slices cut to
/// one length, so that the compiler drops the bounds checks and the per-element branch on
/// the mode and vectorises the loop. The arithmetic is the same, element for element.
#[inline(always)]
fn masked_row_with<X: Elem, O: Elem>(
    gpre: &[f32],
    x: &[X],
    bn: &Bn,
    out: &mut [O],
    sums: &mut [f64],
    put: impl Fn(&mut O, f32, f32),
) {
    let c = x.len();
    let (sum_g, sum_gx) = sums[..2 * c].split_at_mut(c);
    let (gpre, out) = (&gpre[..c], &mut out[..c]);
    let (a, b, mean, invstd) = (&bn.a[..c], &bn.b[..c], &bn.mean[..c], &bn.invstd[..c]);
    for j in 0..c {
        let xj = x[j].get();
        let g = if active(a[j], b[j], xj) { gpre[j] } else { 0.0 };
        put(&mut out[j], a[j], g);
        // x̂ rounded to f32 as the kernels' epilogues compute it, then summed in f64.
        let x_hat = f64::from(normalized(mean[j], invstd[j], xj));
        sum_g[j] += f64::from(g);
        sum_gx[j] += f64::from(g) * x_hat;
    }
}

/// [`masked_row`] for every row of `blk`, `gpre` being the block's dense (rows × c) gradient
/// before the mask; returns the block's partial sums.
pub(crate) fn masked_block<X: Elem, O: Elem>(
    gpre: &[f32],
    x: &[X],
    xm: Mat,
    bn: &Bn,
    store: Store,
    blk: &mut RowBlock<'_, O>,
) -> Vec<f64> {
    let c = xm.cols;
    let mut sums = vec![0.0; 2 * c];
    for r in 0..blk.rows {
        masked_row(&gpre[r * c..][..c], row(x, xm, blk.first + r), bn, store, blk.row(r), &mut sums);
    }
    sums
}
