//! Statistics, batch-norm backward pieces, pooling, head, loss and optimiser ops of the cpu
//! backend.
//!
//! Parallel work is cut into pieces of a fixed number of pixels (never one piece per thread),
//! and per-piece partial reductions, accumulated in f64, are added in piece order: every
//! result is bit-identical whatever the number of threads.

use super::Bn;
use crate::backend::{Mat, relu};
use rayon::prelude::*;

/// Pixels per parallel work item. A constant, so that the reduction order is fixed.
pub(crate) const CHUNK_ROWS: usize = 512;

/// Row `p` (its `m.cols` channels) of matrix `m` in `buf`.
pub(crate) fn row(buf: &[f32], m: Mat, p: usize) -> &[f32] {
    &buf[m.at(p, 0)..][..m.cols]
}

/// `relu(a·x + b)` for channel `c`; positive exactly where [`active`] is true.
pub(crate) fn bn_relu(bn: &Bn, c: usize, x: f32) -> f32 {
    relu(bn.a[c] * x + bn.b[c])
}

/// The ReLU mask `a·x + b > 0` for channel `c`.
pub(crate) fn active(bn: &Bn, c: usize, x: f32) -> bool {
    bn.a[c] * x + bn.b[c] > 0.0
}

/// `x̂ = (x − mean)·invstd`.
pub(crate) fn normalized(mean: f32, invstd: f32, x: f32) -> f32 {
    (x - mean) * invstd
}

/// Rows `first..first + rows` of a matrix, handed to one parallel work item.
pub(crate) struct RowsMut<'a> {
    pub(crate) first: usize,
    pub(crate) rows: usize,
    pub(crate) ld: usize,
    pub(crate) cols: usize,
    pub(crate) data: &'a mut [f32],
}

impl RowsMut<'_> {
    /// Row `first + r`.
    pub(crate) fn row(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.ld..][..self.cols]
    }
}

/// Runs `f` in parallel on the rows that `m` addresses in `buf`, cut into pieces of
/// `chunk_rows` rows (each piece is a disjoint sub-slice, so the writes need no
/// synchronisation), and returns the results in row order.
pub(crate) fn par_row_chunks<R: Send>(
    buf: &mut [f32],
    m: Mat,
    chunk_rows: usize,
    f: impl Fn(RowsMut<'_>) -> R + Sync,
) -> Vec<R> {
    if m.rows == 0 || m.cols == 0 {
        return Vec::new();
    }
    debug_assert!(chunk_rows > 0);
    // A single row may come with any pitch; otherwise the pitch is at least `cols`.
    let pitch = if m.rows == 1 { m.cols } else { m.ld };
    let span = (m.rows - 1) * m.ld + m.cols;
    buf[m.offset..m.offset + span]
        .par_chunks_mut(chunk_rows * pitch)
        .enumerate()
        .map(|(i, data)| {
            let first = i * chunk_rows;
            f(RowsMut { first, rows: chunk_rows.min(m.rows - first), ld: m.ld, cols: m.cols, data })
        })
        .collect()
}

/// Adds per-piece partial sums in piece order.
pub(crate) fn add_in_order(partials: Vec<Vec<f64>>, width: usize) -> Vec<f64> {
    partials.into_iter().fold(vec![0.0; width], |mut total, part| {
        total.iter_mut().zip(part).for_each(|(t, v)| *t += v);
        total
    })
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
    add_in_order(partials, width)
}

/// `g ← g ⊙ [a·x + b > 0]` for one pixel, adding `Σg` and `Σg·x̂` into `acc = [Σg | Σg·x̂]`.
pub(crate) fn mask_and_sum(g: &mut [f32], x: &[f32], bn: &Bn, acc: &mut [f64]) {
    let (sum_g, sum_gx) = acc.split_at_mut(g.len());
    for (c, gv) in g.iter_mut().enumerate() {
        if !active(bn, c, x[c]) {
            *gv = 0.0;
        }
        sum_g[c] += f64::from(*gv);
        sum_gx[c] += f64::from(*gv) * f64::from(normalized(bn.mean[c], bn.invstd[c], x[c]));
    }
}

/// Stores f64 totals into the f32 `sums` buffer.
pub(crate) fn write_sums(sums: &mut [f32], totals: &[f64]) {
    sums.iter_mut().zip(totals).for_each(|(s, &t)| *s = t as f32);
}

// The head's GEMMs are tiny next to the convolutions, so they are plain loops parallel over
// independent output rows (each row's sum in a fixed order).
