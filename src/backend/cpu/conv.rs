//! Convolution-family ops of the cpu backend (GEMM-based, chunked over pixels).
//!
//! Every op walks the pixel dimension in chunks of [`CHUNK`] rows. Per chunk it builds its
//! fused input tile (BN-ReLU'd, and pooled or im2col'd where the op needs it) in a
//! chunk-sized scratch buffer and multiplies it with `matrixmultiply::sgemm`, whose row and
//! column strides read and write the NHWC-with-pitch layout in place. No op ever holds more
//! than a chunk of its fused input: the cpu counterpart of the CUDA kernels' tiles.
//!
//! Parallelism without losing determinism: chunks whose outputs are disjoint pixel rows
//! (forward, data gradients) run in parallel. Reductions over pixels are split the same way
//! whatever the thread count and combined in a fixed order: a weight gradient is accumulated
//! per segment of [`SEGMENT_CHUNKS`] chunks and the segments are summed in order; the
//! per-channel BN sums are accumulated in f64 per chunk and summed in chunk order. Results
//! are therefore bit-identical for any number of threads.
#![allow(clippy::too_many_arguments)]

use super::Bn;
use crate::backend::{ConvGeom, Mat, Spatial, relu};
use rayon::prelude::*;

/// Pixels per chunk: the unit of parallel work and the height of every scratch tile.
const CHUNK: usize = 128;

/// Chunks per weight-gradient segment. Each segment accumulates its own partial dW, so a
/// wgrad holds ⌈P / (CHUNK·SEGMENT_CHUNKS)⌉ weight-sized partials (never a P-sized one).
const SEGMENT_CHUNKS: usize = 16;

// ---- ops ----------------------------------------------------------------------------------

pub(super) fn bn_relu_conv1x1_fwd(x: &[f32], xm: Mat, bn: &Bn, w: &[f32], z: &mut [f32], zm: Mat) {
    let (cin, cout) = (xm.cols, zm.cols);
    map_blocks(z, zm, &chunk_bounds(zm.rows), |blk, s| {
        let act = scratch(&mut s.a, blk.rows * cin);
        bn_relu_rows(x, xm, bn, blk.first, blk.rows, act);
        let wt = View::dense_t(cin);
        gemm(blk.rows, cin, cout, 1.0, act, View::dense(cin), w, wt, 0.0, blk.data, blk.view());
    });
}

pub(super) fn bn_relu_conv1x1_wgrad(x: &[f32], xm: Mat, bn: &Bn, dz: &[f32], dzm: Mat, dw: &mut [f32]) {
    let (cin, cout) = (xm.cols, dzm.cols);
    wgrad_in_segments(dzm.rows, &mut dw[..cout * cin], |p0, rows, s, partial| {
        let act = scratch(&mut s.a, rows * cin);
        bn_relu_rows(x, xm, bn, p0, rows, act);
        let dzt = View::rows_of_t(dzm, p0);
        let d = View::dense(cin);
        gemm(cout, rows, cin, 1.0, dz, dzt, act, d, 1.0, partial, d);
    });
}

pub(super) fn bn_relu_conv1x1_dgrad(
    dz: &[f32],
    dzm: Mat,
    w: &[f32],
    x: &[f32],
    xm: Mat,
    bn: &Bn,
    dx: &mut [f32],
    dxm: Mat,
    accumulate: bool,
    sums: &mut [f32],
) {
    let (cin, cout) = (xm.cols, dzm.cols);
    let store = if accumulate { Store::AddScaled } else { Store::Scaled };
    let partials = map_blocks(dx, dxm, &chunk_bounds(dxm.rows), |blk, s| {
        let g = scratch(&mut s.a, blk.rows * cin);
        let d = View::dense(cin);
        gemm(blk.rows, cout, cin, 1.0, dz, View::rows_of(dzm, blk.first), w, d, 0.0, g, d);
        masked_block(g, x, xm, bn, store, blk)
    });
    write_sums(&partials, &mut sums[..2 * cin]);
}

pub(super) fn bn_relu_conv3x3_fwd(
    z: &[f32],
    zm: Mat,
    shape: Spatial,
    bn: &Bn,
    w: &[f32],
    y: &mut [f32],
    ym: Mat,
) {
    conv_fwd_impl(z, zm, shape, CONV3X3, Some(bn), w, y, ym);
}

pub(super) fn bn_relu_conv3x3_wgrad(
    z: &[f32],
    zm: Mat,
    shape: Spatial,
    bn: &Bn,
    dy: &[f32],
    dym: Mat,
    dw: &mut [f32],
) {
    conv_wgrad_impl(z, zm, shape, CONV3X3, Some(bn), dy, dym, dw);
}

pub(super) fn bn_relu_conv3x3_dgrad(
    dy: &[f32],
    dym: Mat,
    shape: Spatial,
    w: &[f32],
    z: &[f32],
    zm: Mat,
    bn: &Bn,
    g: &mut [f32],
    gm: Mat,
    sums: &mut [f32],
) {
    let (cin, width) = (zm.cols, dym.cols * 9);
    let partials = map_blocks(g, gm, &chunk_bounds(gm.rows), |blk, s| {
        let taps = scratch(&mut s.a, blk.rows * width);
        im2col_dgrad(dy, dym, shape, CONV3X3, blk.first, blk.rows, taps);
        let gpre = scratch(&mut s.b, blk.rows * cin);
        let d = View::dense(cin);
        gemm(blk.rows, width, cin, 1.0, taps, View::dense(width), w, d, 0.0, gpre, d);
        masked_block(gpre, z, zm, bn, Store::Plain, blk)
    });
    write_sums(&partials, &mut sums[..2 * cin]);
}

pub(super) fn bn_relu_avgpool_conv1x1_fwd(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    w: &[f32],
    y: &mut [f32],
    ym: Mat,
) {
    let (cin, cout) = (xm.cols, ym.cols);
    map_blocks(y, ym, &chunk_bounds(ym.rows), |blk, s| {
        let act = scratch(&mut s.a, blk.rows * cin);
        pool_rows(x, xm, shape, bn, blk.first, blk.rows, act);
        let wt = View::dense_t(cin);
        gemm(blk.rows, cin, cout, 1.0, act, View::dense(cin), w, wt, 0.0, blk.data, blk.view());
    });
}

pub(super) fn bn_relu_avgpool_conv1x1_wgrad(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    dy: &[f32],
    dym: Mat,
    dw: &mut [f32],
) {
    let (cin, cout) = (xm.cols, dym.cols);
    wgrad_in_segments(dym.rows, &mut dw[..cout * cin], |p0, rows, s, partial| {
        let act = scratch(&mut s.a, rows * cin);
        pool_rows(x, xm, shape, bn, p0, rows, act);
        let d = View::dense(cin);
        gemm(cout, rows, cin, 1.0, dy, View::rows_of_t(dym, p0), act, d, 1.0, partial, d);
    });
}

pub(super) fn bn_relu_avgpool_conv1x1_dgrad(
    dy: &[f32],
    dym: Mat,
    w: &[f32],
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    bn: &Bn,
    dx: &mut [f32],
    dxm: Mat,
    sums: &mut [f32],
) {
    let (cin, cout) = (xm.cols, dym.cols);
    let out = pooled(shape);
    if out.pixels() == 0 {
        // Nothing survives the pool, so no input receives a gradient.
        for p in 0..dxm.rows {
            dx[dxm.at(p, 0)..][..dxm.cols].fill(0.0);
        }
        sums[..2 * cin].fill(0.0);
        return;
    }
    // Blocks of whole output rows. Output row R = n·OH + oy pools input rows 2oy and 2oy+1 of
    // image n; the last one also owns the row an odd height drops. So each block's input
    // gradient is a contiguous range of dx's pixel rows and the blocks can run in parallel.
    let out_rows = out.n * out.h;
    let rows_per_block = (CHUNK / out.w).max(1);
    let first_input_pixel = |r: usize| (r / out.h * shape.h + r % out.h * 2) * shape.w;
    let bounds: Vec<usize> = (0..out_rows)
        .step_by(rows_per_block)
        .map(first_input_pixel)
        .chain(std::iter::once(shape.pixels()))
        .collect();
    let partials = map_blocks(dx, dxm, &bounds, |blk, s| {
        let (n, iy, _) = pixel(blk.first, shape);
        let r0 = n * out.h + iy / 2;
        let out_pixels = rows_per_block.min(out_rows - r0) * out.w;
        // The gradient of each pooled pixel, already divided among its 4 inputs.
        let gpre = scratch(&mut s.a, out_pixels * cin);
        let d = View::dense(cin);
        gemm(out_pixels, cout, cin, 0.25, dy, View::rows_of(dym, r0 * out.w), w, d, 0.0, gpre, d);
        let mut sums = vec![0.0; 2 * cin];
        for p in blk.first..blk.first + blk.rows {
            let (n, iy, ix) = pixel(p, shape);
            let (oy, ox) = (iy / 2, ix / 2);
            if oy < out.h && ox < out.w {
                let q = (n * out.h + oy) * out.w + ox - r0 * out.w;
                let x_row = pixel_row(x, xm, p);
                masked_row(&gpre[q * cin..][..cin], x_row, bn, Store::Scaled, blk.row(p), &mut sums);
            } else {
                // Dropped by the pool: zero gradient, nothing to add to the sums.
                blk.row(p).fill(0.0);
            }
        }
        sums
    });
    write_sums(&partials, &mut sums[..2 * cin]);
}

pub(super) fn conv_fwd(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    w: &[f32],
    y: &mut [f32],
    ym: Mat,
) {
    conv_fwd_impl(x, xm, shape, geom, None, w, y, ym);
}

pub(super) fn conv_wgrad(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    dy: &[f32],
    dym: Mat,
    dw: &mut [f32],
) {
    conv_wgrad_impl(x, xm, shape, geom, None, dy, dym, dw);
}

pub(super) fn conv_dgrad(
    dy: &[f32],
    dym: Mat,
    shape: Spatial,
    geom: ConvGeom,
    w: &[f32],
    dx: &mut [f32],
    dxm: Mat,
) {
    let (cin, width) = (dxm.cols, dym.cols * geom.kernel * geom.kernel);
    map_blocks(dx, dxm, &chunk_bounds(dxm.rows), |blk, s| {
        let taps = scratch(&mut s.a, blk.rows * width);
        im2col_dgrad(dy, dym, shape, geom, blk.first, blk.rows, taps);
        let d = View::dense(cin);
        gemm(blk.rows, width, cin, 1.0, taps, View::dense(width), w, d, 0.0, blk.data, blk.view());
    });
}

// ---- shared convolution drivers -------------------------------------------------------------

/// The dense layer's 3×3 convolution.
const CONV3X3: ConvGeom = ConvGeom { kernel: 3, stride: 1, pad: 1 };

/// `y = conv(x', W)` with x' = relu(a⊙x + b) when `bn` is given, else x itself.
fn conv_fwd_impl(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    bn: Option<&Bn>,
    w: &[f32],
    y: &mut [f32],
    ym: Mat,
) {
    debug_assert_eq!(ym.rows, geom.out(shape).pixels());
    let width = geom.kernel * geom.kernel * xm.cols;
    map_blocks(y, ym, &chunk_bounds(ym.rows), |blk, s| {
        let cols = scratch(&mut s.a, blk.rows * width);
        im2col(x, xm, shape, geom, bn, blk.first, blk.rows, cols);
        let wt = View::dense_t(width);
        gemm(blk.rows, width, ym.cols, 1.0, cols, View::dense(width), w, wt, 0.0, blk.data, blk.view());
    });
}

/// `dW += wgrad(x', dy)` with x' as in [`conv_fwd_impl`].
fn conv_wgrad_impl(
    x: &[f32],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    bn: Option<&Bn>,
    dy: &[f32],
    dym: Mat,
    dw: &mut [f32],
) {
    debug_assert_eq!(dym.rows, geom.out(shape).pixels());
    let (width, cout) = (geom.kernel * geom.kernel * xm.cols, dym.cols);
    wgrad_in_segments(dym.rows, &mut dw[..cout * width], |p0, rows, s, partial| {
        let cols = scratch(&mut s.a, rows * width);
        im2col(x, xm, shape, geom, bn, p0, rows, cols);
        let d = View::dense(width);
        gemm(cout, rows, width, 1.0, dy, View::rows_of_t(dym, p0), cols, d, 1.0, partial, d);
    });
}

// ---- tile builders --------------------------------------------------------------------------

/// `dst = relu(a ⊙ src + b)` for one pixel row.
fn bn_relu_into(dst: &mut [f32], src: &[f32], bn: &Bn) {
    for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
        *d = relu(bn.a[j] * v + bn.b[j]);
    }
}

/// Fills `tile` (rows × c, dense) with the BN-ReLU'd pixel rows `[p0, p0 + rows)` of x.
fn bn_relu_rows(x: &[f32], xm: Mat, bn: &Bn, p0: usize, rows: usize, tile: &mut [f32]) {
    let c = xm.cols;
    for r in 0..rows {
        bn_relu_into(&mut tile[r * c..][..c], pixel_row(x, xm, p0 + r), bn);
    }
}

/// Spatial extent after AvgPool2d(2, 2), which drops an odd last row/column.
fn pooled(s: Spatial) -> Spatial {
    Spatial { n: s.n, h: s.h / 2, w: s.w / 2 }
}

/// Fills `tile` (rows × c, dense) with the 2×2 means of BN-ReLU'd x for the pooled pixels
/// `[p0, p0 + rows)`. Pooling before the 1×1 conv is exact (both are linear) and makes the
/// GEMM 4× smaller.
fn pool_rows(x: &[f32], xm: Mat, shape: Spatial, bn: &Bn, p0: usize, rows: usize, tile: &mut [f32]) {
    let (out, c) = (pooled(shape), xm.cols);
    for r in 0..rows {
        let (n, oy, ox) = pixel(p0 + r, out);
        let top_left = (n * shape.h + 2 * oy) * shape.w + 2 * ox;
        let dst = &mut tile[r * c..][..c];
        dst.fill(0.0);
        for q in [top_left, top_left + 1, top_left + shape.w, top_left + shape.w + 1] {
            for (j, (d, &v)) in dst.iter_mut().zip(pixel_row(x, xm, q)).enumerate() {
                *d += relu(bn.a[j] * v + bn.b[j]);
            }
        }
        dst.iter_mut().for_each(|d| *d *= 0.25);
    }
}

/// im2col for the output pixels `[p0, p0 + rows)`: fills `tile` (rows × k²·c, dense) with each
/// pixel's input window, column `(ky·k + kx)·c + ci` as in OHWI weights, so that
/// `y = tile · Wᵀ`. The input is BN-ReLU'd first when `bn` is given; padding taps are 0, i.e.
/// padding applies after the BN-ReLU, as a convolution of the ReLU output does.
fn im2col(
    src: &[f32],
    sm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    bn: Option<&Bn>,
    p0: usize,
    rows: usize,
    tile: &mut [f32],
) {
    let (k, c) = (geom.kernel, sm.cols);
    let (out, width) = (geom.out(shape), k * k * c);
    for r in 0..rows {
        let (n, oy, ox) = pixel(p0 + r, out);
        for ky in 0..k {
            let iy = input_coord(oy, ky, geom, shape.h);
            for kx in 0..k {
                let ix = input_coord(ox, kx, geom, shape.w);
                let dst = &mut tile[r * width + (ky * k + kx) * c..][..c];
                match (iy, ix, bn) {
                    (Some(iy), Some(ix), Some(bn)) => {
                        bn_relu_into(dst, pixel_row(src, sm, (n * shape.h + iy) * shape.w + ix), bn)
                    }
                    (Some(iy), Some(ix), None) => {
                        dst.copy_from_slice(pixel_row(src, sm, (n * shape.h + iy) * shape.w + ix))
                    }
                    _ => dst.fill(0.0),
                }
            }
        }
    }
}

/// The data-gradient counterpart of [`im2col`], a gather (so that chunks of input pixels are
/// independent): for the input pixels `[p0, p0 + rows)` (x has spatial `shape`), fills `tile`
/// (rows × c_out·k², dense) with, at column `co·k² + ky·k + kx`, dy[co] of the output pixel
/// that sees this input pixel at tap (ky, kx), or 0 if none does. Column `co·k² + tap` is then
/// row `co·k² + tap` of the OHWI weights read as a (c_out·k²) × c_in matrix: `dx = tile · W`.
fn im2col_dgrad(
    dy: &[f32],
    dym: Mat,
    shape: Spatial,
    geom: ConvGeom,
    p0: usize,
    rows: usize,
    tile: &mut [f32],
) {
    let (k, out) = (geom.kernel, geom.out(shape));
    let width = dym.cols * k * k;
    for r in 0..rows {
        let (n, iy, ix) = pixel(p0 + r, shape);
        let dst = &mut tile[r * width..][..width];
        dst.fill(0.0);
        for ky in 0..k {
            let Some(oy) = output_coord(iy, ky, geom, out.h) else {
                continue;
            };
            for kx in 0..k {
                let Some(ox) = output_coord(ix, kx, geom, out.w) else {
                    continue;
                };
                let grad = pixel_row(dy, dym, (n * out.h + oy) * out.w + ox);
                for (co, &v) in grad.iter().enumerate() {
                    dst[co * k * k + ky * k + kx] = v;
                }
            }
        }
    }
}

/// The input coordinate that output coordinate `o` reads at tap `t`, or `None` in the padding.
fn input_coord(o: usize, t: usize, geom: ConvGeom, size: usize) -> Option<usize> {
    (o * geom.stride + t).checked_sub(geom.pad).filter(|&i| i < size)
}

/// The output coordinate that reads input coordinate `i` at tap `t`, if any.
fn output_coord(i: usize, t: usize, geom: ConvGeom, size: usize) -> Option<usize> {
    let s = (i + geom.pad).checked_sub(t)?;
    (s % geom.stride == 0 && s / geom.stride < size).then_some(s / geom.stride)
}

/// (n, y, x) of pixel p in an NHWC activation of spatial extent `s`.
fn pixel(p: usize, s: Spatial) -> (usize, usize, usize) {
    (p / (s.h * s.w), p / s.w % s.h, p % s.w)
}

/// The `m.cols` channels of pixel p.
fn pixel_row(buf: &[f32], m: Mat, p: usize) -> &[f32] {
    &buf[m.at(p, 0)..][..m.cols]
}

// ---- BN-ReLU backward epilogue --------------------------------------------------------------

/// What the BN-ReLU backward epilogue stores for the masked gradient g.
#[derive(Clone, Copy)]
enum Store {
    /// `out = g`
    Plain,
    /// `out = a·g`
    Scaled,
    /// `out += a·g`
    AddScaled,
}

/// BN-ReLU backward of one pixel row: `g = gpre ⊙ [a·x + b > 0]` (the same f32 test as the
/// forward ReLU), stored into `out` as `store` says, and `[Σg | Σg·x̂]` accumulated into
/// `sums` in f64.
fn masked_row(gpre: &[f32], x: &[f32], bn: &Bn, store: Store, out: &mut [f32], sums: &mut [f64]) {
    let (sum_g, sum_gx) = sums.split_at_mut(x.len());
    for j in 0..x.len() {
        let g = if bn.a[j] * x[j] + bn.b[j] > 0.0 { gpre[j] } else { 0.0 };
        match store {
            Store::Plain => out[j] = g,
            Store::Scaled => out[j] = bn.a[j] * g,
            Store::AddScaled => out[j] += bn.a[j] * g,
        }
        let x_hat = (f64::from(x[j]) - f64::from(bn.mean[j])) * f64::from(bn.invstd[j]);
        sum_g[j] += f64::from(g);
        sum_gx[j] += f64::from(g) * x_hat;
    }
}

/// [`masked_row`] for every row of `blk`, `gpre` being the block's dense (rows × c) gradient
/// before the mask; returns the block's partial sums.
fn masked_block(gpre: &[f32], x: &[f32], xm: Mat, bn: &Bn, store: Store, blk: &mut RowBlock<'_>) -> Vec<f64> {
    let c = xm.cols;
    let mut sums = vec![0.0; 2 * c];
    for r in 0..blk.rows {
        let p = blk.first + r;
        masked_row(&gpre[r * c..][..c], pixel_row(x, xm, p), bn, store, blk.row(p), &mut sums);
    }
    sums
}

/// Adds up per-chunk partial sums in chunk order (the order fixes the result) into `sums`.
fn write_sums(partials: &[Vec<f64>], sums: &mut [f32]) {
    let mut total = vec![0.0f64; sums.len()];
    for partial in partials {
        total.iter_mut().zip(partial).for_each(|(t, v)| *t += v);
    }
    sums.iter_mut().zip(total).for_each(|(s, t)| *s = t as f32);
}

// ---- chunking and parallel drivers ----------------------------------------------------------

/// Reusable per-task scratch tiles.
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
}

/// The first `len` floats of a reusable scratch vector. Its contents are unspecified: callers
/// overwrite all of them.
fn scratch(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

/// `0, CHUNK, 2·CHUNK, …, rows`: the chunk boundaries of `rows` pixel rows.
fn chunk_bounds(rows: usize) -> Vec<usize> {
    (0..rows).step_by(CHUNK).chain(std::iter::once(rows)).collect()
}

/// Pixel rows `[first, first + rows)` of a [`Mat`], borrowed mutably: element (p, c) is at
/// `data[(p − first)·ld + c]`.
struct RowBlock<'a> {
    first: usize,
    rows: usize,
    cols: usize,
    ld: usize,
    data: &'a mut [f32],
}

impl RowBlock<'_> {
    /// The `cols` channels of pixel p.
    fn row(&mut self, p: usize) -> &mut [f32] {
        &mut self.data[(p - self.first) * self.ld..][..self.cols]
    }

    /// The block as a GEMM output.
    fn view(&self) -> View {
        View { off: 0, rs: self.ld, cs: 1 }
    }
}

/// Splits the rows of `m` inside `buf` at `bounds` (increasing pixel indices from 0 to
/// `m.rows`) into disjoint mutable blocks.
fn split_rows<'a>(buf: &'a mut [f32], m: Mat, bounds: &[usize]) -> Vec<RowBlock<'a>> {
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
/// and returns the results in block order.
fn map_blocks<R: Send>(
    out: &mut [f32],
    om: Mat,
    bounds: &[usize],
    f: impl Fn(&mut RowBlock<'_>, &mut Scratch) -> R + Sync + Send,
) -> Vec<R> {
    split_rows(out, om, bounds)
        .into_par_iter()
        .map_init(Scratch::default, |s, mut blk| f(&mut blk, s))
        .collect()
}

/// `dw += Σ over chunks` of what `chunk_wgrad(p0, rows, scratch, partial)` adds into its
/// (zero-initialised, dw-sized) `partial` for the pixel rows `[p0, p0 + rows)` of `0..rows`.
/// Segments of chunks run in parallel, each into its own partial; the partials are then
/// summed in segment order, so the result does not depend on the thread count.
fn wgrad_in_segments(
    rows: usize,
    dw: &mut [f32],
    chunk_wgrad: impl Fn(usize, usize, &mut Scratch, &mut [f32]) + Sync + Send,
) {
    let (segment, len) = (CHUNK * SEGMENT_CHUNKS, dw.len());
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(segment))
        .into_par_iter()
        .map_init(Scratch::default, |s, seg| {
            let mut partial = vec![0.0; len];
            let end = ((seg + 1) * segment).min(rows);
            for p0 in (seg * segment..end).step_by(CHUNK) {
                chunk_wgrad(p0, CHUNK.min(end - p0), s, &mut partial);
            }
            partial
        })
        .collect();
    let mut total = vec![0.0f64; len];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, &v)| *t += f64::from(v));
    }
    dw.iter_mut().zip(total).for_each(|(d, t)| *d = (f64::from(*d) + t) as f32);
}

// ---- GEMM -----------------------------------------------------------------------------------

/// A strided matrix inside a slice: element (i, j) at `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    off: usize,
    rs: usize,
    cs: usize,
}

impl View {
    /// A dense row-major matrix with `cols` columns.
    fn dense(cols: usize) -> Self {
        View { off: 0, rs: cols, cs: 1 }
    }

    /// The transpose of a dense row-major matrix with `cols` columns (e.g. Wᵀ).
    fn dense_t(cols: usize) -> Self {
        View { off: 0, rs: 1, cs: cols }
    }

    /// The rows of `m` from pixel p on (pixels × channels).
    fn rows_of(m: Mat, p: usize) -> Self {
        View { off: m.at(p, 0), rs: m.ld, cs: 1 }
    }

    /// The transpose of [`View::rows_of`] (channels × pixels).
    fn rows_of_t(m: Mat, p: usize) -> Self {
        View { off: m.at(p, 0), rs: 1, cs: m.ld }
    }

    /// Whether an r × c matrix seen through this view lies inside a slice of `len` floats.
    fn fits(&self, r: usize, c: usize, len: usize) -> bool {
        r == 0 || c == 0 || self.off + (r - 1) * self.rs + (c - 1) * self.cs < len
    }
}

/// `C ← alpha·A·B + beta·C` for A m×k, B k×n, C m×n (`matrixmultiply::sgemm`; with beta = 0
/// C's old contents are ignored). C must be row-major with non-overlapping rows.
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    beta: f32,
    c: &mut [f32],
    cv: View,
) {
    assert!(av.fits(m, k, a.len()) && bv.fits(k, n, b.len()) && cv.fits(m, n, c.len()));
    assert!(cv.cs == 1 && (m <= 1 || cv.rs >= n), "GEMM output rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts keep every element sgemm touches inside its slice (with k == 0 it
    // reads neither A nor B, so their offsets may point anywhere: `wrapping_add`), C's
    // elements are distinct, and C, a `&mut` borrow, aliases neither A nor B.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr().wrapping_add(av.off),
            av.rs as isize,
            av.cs as isize,
            b.as_ptr().wrapping_add(bv.off),
            bv.rs as isize,
            bv.cs as isize,
            beta,
            c.as_mut_ptr().add(cv.off),
            cv.rs as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::oracle::{
        affine_backward, bn_relu, bn_relu_backward, mat_to_tensor, tensor_to_nhwc, to_f64,
    };
    use super::*;
    use crate::reference::ops::{
        ConvShape, avgpool2_backward, avgpool2_forward, conv2d_backward_data, conv2d_backward_weight,
        conv2d_forward,
    };
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every comparison with the f64 reference requires ‖out − ref‖₂ / ‖ref‖₂ below this.
    const TOL: f64 = 1e-5;

    /// Batch 3, 7×5 images: one chunk, odd sizes.
    const SMALL: Spatial = Spatial { n: 3, h: 7, w: 5 };
    /// 3034 pixels: many chunks and two weight-gradient segments, the last ones partial.
    const LARGE: Spatial = Spatial { n: 2, h: 37, w: 41 };

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(lo..hi)).collect()
    }

    /// A random BN with some negative scales `a`.
    fn random_bn(rng: &mut ChaCha8Rng, c: usize) -> Bn {
        Bn {
            a: uniform(rng, c, -1.5, 1.5),
            b: uniform(rng, c, -0.5, 0.5),
            mean: uniform(rng, c, -0.5, 0.5),
            invstd: uniform(rng, c, 0.5, 2.0),
        }
    }

    /// A storage of `rows` pixels with pitch `cols + extra`, random everywhere, and the Mat of
    /// its columns `[col0, col0 + cols)`.
    fn strided(rng: &mut ChaCha8Rng, rows: usize, cols: usize, col0: usize, extra: usize) -> (Vec<f32>, Mat) {
        let ld = cols + extra;
        (uniform(rng, rows * ld, -1.0, 1.0), Mat { offset: col0, rows, cols, ld })
    }

    /// An input activation: columns [3, 3 + cols) of a (cols + 10)-wide storage.
    fn input(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Vec<f32>, Mat) {
        strided(rng, rows, cols, 3, 10)
    }

    /// An output activation: columns [5, 5 + cols) of a (cols + 6)-wide storage.
    fn output(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> (Vec<f32>, Mat) {
        strided(rng, rows, cols, 5, 6)
    }

    /// The elements a Mat addresses, row-major, in f64.
    fn dense(buf: &[f32], m: Mat) -> Vec<f64> {
        (0..m.rows).flat_map(|p| (0..m.cols).map(move |c| f64::from(buf[m.at(p, c)]))).collect()
    }

    /// Asserts that every element of `after` outside `m` still equals `before`, bit for bit.
    fn assert_outside_untouched(before: &[f32], after: &[f32], m: Mat) {
        let mut inside = vec![false; before.len()];
        for p in 0..m.rows {
            inside[m.at(p, 0)..m.at(p, 0) + m.cols].fill(true);
        }
        for (i, (b, a)) in before.iter().zip(after).enumerate() {
            assert!(inside[i] || b.to_bits() == a.to_bits(), "element {i} outside the output changed");
        }
    }

    /// Checks ‖got − want‖/‖want‖ < TOL and returns the relative error.
    fn assert_close(what: &str, got: &[f64], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let diff: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
        let err = diff / norm;
        println!("{what}: relative error {err:.2e}");
        assert!(err < TOL, "{what}: relative error {err:e} (tolerance {TOL:e})");
        err
    }

    // ---- the f64 oracle (crate::reference::ops), through the shared NHWC bridge ----

    /// The oracle's description of a convolution geometry.
    fn conv_shape(g: ConvGeom) -> ConvShape {
        ConvShape { kernel: g.kernel, stride: g.stride, pad: g.pad }
    }

    const ONE_BY_ONE: ConvShape = ConvShape { kernel: 1, stride: 1, pad: 0 };

    /// `P` pixels as a batch of 1×1 images, for 1×1 convolutions.
    fn flat(p: usize) -> Spatial {
        Spatial { n: p, h: 1, w: 1 }
    }

    // ---- dense layer 1×1 ----

    #[test]
    fn conv1x1_fwd_matches_reference() {
        for (seed, p, cin, cout) in [(1, SMALL.pixels(), 13, 20), (2, LARGE.pixels(), 37, 5), (3, 1, 5, 13)] {
            let mut r = rng(seed);
            let (x, xm) = input(&mut r, p, cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * cin, -1.0, 1.0);
            let (mut z, zm) = output(&mut r, p, cout);
            let before = z.clone();
            bn_relu_conv1x1_fwd(&x, xm, &bn, &w, &mut z, zm);
            let act = bn_relu(&mat_to_tensor(&x, xm, flat(p)), &bn);
            let want = tensor_to_nhwc(&conv2d_forward(&act, &to_f64(&w), cout, ONE_BY_ONE));
            assert_close(&format!("conv1x1 fwd P={p} {cin}->{cout}"), &dense(&z, zm), &want);
            assert_outside_untouched(&before, &z, zm);
        }
    }

    #[test]
    fn conv1x1_wgrad_accumulates_reference() {
        for (seed, p, cin, cout) in [(4, SMALL.pixels(), 13, 20), (5, LARGE.pixels(), 37, 5)] {
            let mut r = rng(seed);
            let (x, xm) = input(&mut r, p, cin);
            let bn = random_bn(&mut r, cin);
            let (dz, dzm) = input(&mut r, p, cout);
            // dW starts non-zero, and the slice runs past the tensor (3 floats must survive).
            let mut dw = uniform(&mut r, cout * cin + 3, -1.0, 1.0);
            let before = dw.clone();
            bn_relu_conv1x1_wgrad(&x, xm, &bn, &dz, dzm, &mut dw);
            let act = bn_relu(&mat_to_tensor(&x, xm, flat(p)), &bn);
            let grad = conv2d_backward_weight(&act, &mat_to_tensor(&dz, dzm, flat(p)), ONE_BY_ONE);
            let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
            assert_close(&format!("conv1x1 wgrad P={p} {cin}->{cout}"), &to_f64(&dw[..cout * cin]), &want);
            assert_eq!(dw[cout * cin..], before[cout * cin..]);
        }
    }

    #[test]
    fn conv1x1_dgrad_matches_reference_overwrite_and_accumulate() {
        for (seed, p, cin, cout) in [(6, SMALL.pixels(), 13, 20), (7, LARGE.pixels(), 37, 5)] {
            for accumulate in [false, true] {
                let mut r = rng(seed);
                let (x, xm) = input(&mut r, p, cin);
                let bn = random_bn(&mut r, cin);
                let w = uniform(&mut r, cout * cin, -1.0, 1.0);
                let (dz, dzm) = input(&mut r, p, cout);
                let (mut dx, dxm) = output(&mut r, p, cin);
                let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
                let (dx0, sums0) = (dx.clone(), sums.clone());
                bn_relu_conv1x1_dgrad(&dz, dzm, &w, &x, xm, &bn, &mut dx, dxm, accumulate, &mut sums);

                // dz · W is the transposed 1×1 conv.
                let dz = mat_to_tensor(&dz, dzm, flat(p));
                let gpre = conv2d_backward_data(&dz, &to_f64(&w), cin, 1, 1, ONE_BY_ONE);
                let (g, want_sums) = bn_relu_backward(&gpre, &x, xm, &bn);
                let mut want_dx = affine_backward(&g, &bn);
                if accumulate {
                    want_dx.iter_mut().zip(dense(&dx0, dxm)).for_each(|(d, b)| *d += b);
                }
                let what = format!("conv1x1 dgrad P={p} {cout}->{cin} accumulate={accumulate}");
                assert_close(&format!("{what} dx"), &dense(&dx, dxm), &want_dx);
                assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
                assert_outside_untouched(&dx0, &dx, dxm);
                assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
            }
        }
    }

    // ---- dense layer 3×3 ----

    /// (seed, shape, c_in, c_out) for the 3×3 tests: odd sizes, 1×1 and 1-wide images, many chunks.
    const CASES_3X3: [(u64, Spatial, usize, usize); 4] = [
        (10, SMALL, 13, 5),
        (11, Spatial { n: 3, h: 1, w: 1 }, 20, 13),
        (12, Spatial { n: 2, h: 1, w: 6 }, 5, 7),
        (13, LARGE, 13, 5),
    ];

    #[test]
    fn conv3x3_fwd_matches_reference() {
        for (seed, s, cin, cout) in CASES_3X3 {
            let mut r = rng(seed);
            let (z, zm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
            let (mut y, ym) = output(&mut r, s.pixels(), cout);
            let before = y.clone();
            bn_relu_conv3x3_fwd(&z, zm, s, &bn, &w, &mut y, ym);
            let act = bn_relu(&mat_to_tensor(&z, zm, s), &bn);
            let want = tensor_to_nhwc(&conv2d_forward(&act, &to_f64(&w), cout, conv_shape(CONV3X3)));
            assert_close(&format!("conv3x3 fwd {s:?} {cin}->{cout}"), &dense(&y, ym), &want);
            assert_outside_untouched(&before, &y, ym);
        }
    }

    #[test]
    fn conv3x3_wgrad_accumulates_reference() {
        for (seed, s, cin, cout) in CASES_3X3 {
            let mut r = rng(seed);
            let (z, zm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let (dy, dym) = input(&mut r, s.pixels(), cout);
            let len = cout * 9 * cin;
            let mut dw = uniform(&mut r, len + 3, -1.0, 1.0);
            let before = dw.clone();
            bn_relu_conv3x3_wgrad(&z, zm, s, &bn, &dy, dym, &mut dw);
            let act = bn_relu(&mat_to_tensor(&z, zm, s), &bn);
            let grad = conv2d_backward_weight(&act, &mat_to_tensor(&dy, dym, s), conv_shape(CONV3X3));
            let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
            assert_close(&format!("conv3x3 wgrad {s:?} {cin}->{cout}"), &to_f64(&dw[..len]), &want);
            assert_eq!(dw[len..], before[len..]);
        }
    }

    #[test]
    fn conv3x3_dgrad_matches_reference() {
        for (seed, s, cin, cout) in CASES_3X3 {
            let mut r = rng(seed);
            let (z, zm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
            let (dy, dym) = input(&mut r, s.pixels(), cout);
            let (mut g, gm) = output(&mut r, s.pixels(), cin);
            let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
            let (g0, sums0) = (g.clone(), sums.clone());
            bn_relu_conv3x3_dgrad(&dy, dym, s, &w, &z, zm, &bn, &mut g, gm, &mut sums);
            let dy = mat_to_tensor(&dy, dym, s);
            let gpre = conv2d_backward_data(&dy, &to_f64(&w), cin, s.h, s.w, conv_shape(CONV3X3));
            let (want_g, want_sums) = bn_relu_backward(&gpre, &z, zm, &bn);
            let what = format!("conv3x3 dgrad {s:?} {cout}->{cin}");
            assert_close(&format!("{what} g"), &dense(&g, gm), &want_g);
            assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
            assert_outside_untouched(&g0, &g, gm);
            assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
        }
    }

    // ---- transition ----

    /// (seed, input shape, c_in, c_out): odd heights/widths that the pool crops, and enough
    /// pooled pixels (2325) for several chunks and weight-gradient segments.
    const CASES_TRANSITION: [(u64, Spatial, usize, usize); 4] = [
        (20, SMALL, 13, 5),
        (21, Spatial { n: 3, h: 5, w: 9 }, 20, 13),
        (22, Spatial { n: 2, h: 6, w: 7 }, 37, 20),
        (23, Spatial { n: 3, h: 63, w: 51 }, 13, 5),
    ];

    fn pooled_shape(s: Spatial) -> Spatial {
        Spatial { n: s.n, h: s.h / 2, w: s.w / 2 }
    }

    #[test]
    fn transition_fwd_matches_reference() {
        for (seed, s, cin, cout) in CASES_TRANSITION {
            let mut r = rng(seed);
            let o = pooled_shape(s);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * cin, -1.0, 1.0);
            let (mut y, ym) = output(&mut r, o.pixels(), cout);
            let before = y.clone();
            bn_relu_avgpool_conv1x1_fwd(&x, xm, s, &bn, &w, &mut y, ym);
            let pooled = avgpool2_forward(&bn_relu(&mat_to_tensor(&x, xm, s), &bn));
            let want = tensor_to_nhwc(&conv2d_forward(&pooled, &to_f64(&w), cout, ONE_BY_ONE));
            assert_close(&format!("transition fwd {s:?} {cin}->{cout}"), &dense(&y, ym), &want);
            assert_outside_untouched(&before, &y, ym);
        }
    }

    #[test]
    fn transition_wgrad_accumulates_reference() {
        for (seed, s, cin, cout) in CASES_TRANSITION {
            let mut r = rng(seed);
            let o = pooled_shape(s);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let (dy, dym) = input(&mut r, o.pixels(), cout);
            let mut dw = uniform(&mut r, cout * cin + 3, -1.0, 1.0);
            let before = dw.clone();
            bn_relu_avgpool_conv1x1_wgrad(&x, xm, s, &bn, &dy, dym, &mut dw);
            let pooled = avgpool2_forward(&bn_relu(&mat_to_tensor(&x, xm, s), &bn));
            let grad = conv2d_backward_weight(&pooled, &mat_to_tensor(&dy, dym, o), ONE_BY_ONE);
            let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
            assert_close(&format!("transition wgrad {s:?} {cin}->{cout}"), &to_f64(&dw[..cout * cin]), &want);
            assert_eq!(dw[cout * cin..], before[cout * cin..]);
        }
    }

    #[test]
    fn transition_dgrad_matches_reference() {
        for (seed, s, cin, cout) in CASES_TRANSITION {
            let mut r = rng(seed);
            let o = pooled_shape(s);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let bn = random_bn(&mut r, cin);
            let w = uniform(&mut r, cout * cin, -1.0, 1.0);
            let (dy, dym) = input(&mut r, o.pixels(), cout);
            // dx starts as random garbage: every element of dxm must be overwritten.
            let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
            let mut sums = uniform(&mut r, 2 * cin + 2, -1.0, 1.0);
            let (dx0, sums0) = (dx.clone(), sums.clone());
            bn_relu_avgpool_conv1x1_dgrad(&dy, dym, &w, &x, xm, s, &bn, &mut dx, dxm, &mut sums);
            let dy = mat_to_tensor(&dy, dym, o);
            let dpooled = conv2d_backward_data(&dy, &to_f64(&w), cin, o.h, o.w, ONE_BY_ONE);
            let (g, want_sums) = bn_relu_backward(&avgpool2_backward(&dpooled, s.h, s.w), &x, xm, &bn);
            let what = format!("transition dgrad {s:?} {cout}->{cin}");
            let got = dense(&dx, dxm);
            assert_close(&format!("{what} dx"), &got, &affine_backward(&g, &bn));
            assert_close(&format!("{what} sums"), &to_f64(&sums[..2 * cin]), &want_sums);
            // The cropped last row/column gets exactly zero.
            for p in 0..s.pixels() {
                let (_, y, x) = pixel(p, s);
                if y >= 2 * o.h || x >= 2 * o.w {
                    assert!(got[p * cin..][..cin].iter().all(|&v| v == 0.0), "dropped pixel {p} not zeroed");
                }
            }
            assert_outside_untouched(&dx0, &dx, dxm);
            assert_eq!(sums[2 * cin..], sums0[2 * cin..]);
        }
    }

    #[test]
    fn transition_on_images_too_small_to_pool_zeroes_the_gradient() {
        let mut r = rng(24);
        let (s, cin, cout) = (Spatial { n: 2, h: 1, w: 3 }, 5, 4);
        let (x, xm) = input(&mut r, s.pixels(), cin);
        let bn = random_bn(&mut r, cin);
        let w = uniform(&mut r, cout * cin, -1.0, 1.0);
        let (dy, dym) = input(&mut r, 0, cout);
        let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
        let mut sums = uniform(&mut r, 2 * cin, -1.0, 1.0);
        let dx0 = dx.clone();
        bn_relu_avgpool_conv1x1_dgrad(&dy, dym, &w, &x, xm, s, &bn, &mut dx, dxm, &mut sums);
        assert!(dense(&dx, dxm).iter().all(|&v| v == 0.0));
        assert!(sums.iter().all(|&v| v == 0.0));
        assert_outside_untouched(&dx0, &dx, dxm);
    }

    // ---- plain convolution ----

    /// (seed, shape, geometry, c_in, c_out) for the plain-conv tests.
    const CASES_CONV: [(u64, Spatial, ConvGeom, usize, usize); 5] = [
        (30, SMALL, CONV3X3, 5, 13),
        (31, SMALL, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 20),
        (32, Spatial { n: 2, h: 6, w: 9 }, ConvGeom { kernel: 2, stride: 2, pad: 0 }, 13, 5),
        (33, Spatial { n: 2, h: 1, w: 1 }, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 5),
        (34, Spatial { n: 2, h: 45, w: 39 }, ConvGeom { kernel: 7, stride: 2, pad: 3 }, 3, 13),
    ];

    #[test]
    fn conv_fwd_matches_reference() {
        for (seed, s, g, cin, cout) in CASES_CONV {
            let mut r = rng(seed);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
            let (mut y, ym) = output(&mut r, g.out(s).pixels(), cout);
            let before = y.clone();
            conv_fwd(&x, xm, s, g, &w, &mut y, ym);
            let want =
                tensor_to_nhwc(&conv2d_forward(&mat_to_tensor(&x, xm, s), &to_f64(&w), cout, conv_shape(g)));
            assert_close(&format!("conv fwd {s:?} {g:?} {cin}->{cout}"), &dense(&y, ym), &want);
            assert_outside_untouched(&before, &y, ym);
        }
    }

    #[test]
    fn conv_wgrad_accumulates_reference() {
        for (seed, s, g, cin, cout) in CASES_CONV {
            let mut r = rng(seed);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
            let len = cout * g.kernel * g.kernel * cin;
            let mut dw = uniform(&mut r, len + 3, -1.0, 1.0);
            let before = dw.clone();
            conv_wgrad(&x, xm, s, g, &dy, dym, &mut dw);
            let (x, dy) = (mat_to_tensor(&x, xm, s), mat_to_tensor(&dy, dym, g.out(s)));
            let grad = conv2d_backward_weight(&x, &dy, conv_shape(g));
            let want: Vec<f64> = grad.iter().zip(&before).map(|(g, &b)| g + f64::from(b)).collect();
            assert_close(&format!("conv wgrad {s:?} {g:?} {cin}->{cout}"), &to_f64(&dw[..len]), &want);
            assert_eq!(dw[len..], before[len..]);
        }
    }

    #[test]
    fn conv_dgrad_matches_reference() {
        for (seed, s, g, cin, cout) in CASES_CONV {
            let mut r = rng(seed);
            let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
            let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
            let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
            let before = dx.clone();
            conv_dgrad(&dy, dym, s, g, &w, &mut dx, dxm);
            let dy = mat_to_tensor(&dy, dym, g.out(s));
            let want = tensor_to_nhwc(&conv2d_backward_data(&dy, &to_f64(&w), cin, s.h, s.w, conv_shape(g)));
            assert_close(&format!("conv dgrad {s:?} {g:?} {cout}->{cin}"), &dense(&dx, dxm), &want);
            assert_outside_untouched(&before, &dx, dxm);
        }
    }

    #[test]
    fn conv_dgrad_is_adjoint_of_conv_fwd() {
        for (seed, s, g, cin, cout) in CASES_CONV {
            let mut r = rng(seed + 100);
            let (x, xm) = input(&mut r, s.pixels(), cin);
            let w = uniform(&mut r, cout * g.kernel * g.kernel * cin, -1.0, 1.0);
            let (dy, dym) = input(&mut r, g.out(s).pixels(), cout);
            let (mut y, ym) = output(&mut r, g.out(s).pixels(), cout);
            let (mut dx, dxm) = output(&mut r, s.pixels(), cin);
            conv_fwd(&x, xm, s, g, &w, &mut y, ym);
            conv_dgrad(&dy, dym, s, g, &w, &mut dx, dxm);
            // ⟨conv(x), dy⟩ = ⟨x, dgrad(dy)⟩, relative to Σ|y·dy| (the scale of the rounding).
            let (y, dy, x, dx) = (dense(&y, ym), dense(&dy, dym), dense(&x, xm), dense(&dx, dxm));
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            let scale: f64 = y.iter().zip(&dy).map(|(a, b)| (a * b).abs()).sum();
            let err = (lhs - rhs).abs() / scale;
            println!("conv adjoint {s:?} {g:?}: ⟨y,dy⟩={lhs:.6} ⟨x,dx⟩={rhs:.6} relative gap {err:.2e}");
            assert!(err < TOL, "adjoint gap {err:e} (tolerance {TOL:e})");
        }
    }

    // ---- determinism ----

    /// Runs every op on fixed inputs large enough for many chunks and segments and returns all
    /// outputs.
    fn run_all_ops() -> Vec<Vec<f32>> {
        let mut r = rng(40);
        let (s, cin, cout) = (LARGE, 13, 7);
        let p = s.pixels();
        let (x, xm) = input(&mut r, p, cin);
        let bn = random_bn(&mut r, cin);
        let (d, dm) = input(&mut r, p, cout);
        let w1 = uniform(&mut r, cout * cin, -1.0, 1.0);
        let w3 = uniform(&mut r, cout * 9 * cin, -1.0, 1.0);
        let ts = Spatial { n: 3, h: 63, w: 51 };
        let (tx, txm) = input(&mut r, ts.pixels(), cin);
        let (td, tdm) = input(&mut r, pooled_shape(ts).pixels(), cout);
        let stem = ConvGeom { kernel: 7, stride: 2, pad: 3 };
        let (sd, sdm) = input(&mut r, stem.out(s).pixels(), cout);
        let ws = uniform(&mut r, cout * 49 * cin, -1.0, 1.0);

        let mut outs = Vec::new();
        let mut out = |len: usize, f: &mut dyn FnMut(&mut [f32])| {
            let mut v = vec![0.5; len];
            f(&mut v);
            outs.push(v);
        };
        let dm_out = Mat::dense(0, p, cout);
        let xm_out = Mat::dense(0, p, cin);
        out(p * cout, &mut |o| bn_relu_conv1x1_fwd(&x, xm, &bn, &w1, o, dm_out));
        out(cout * cin, &mut |o| bn_relu_conv1x1_wgrad(&x, xm, &bn, &d, dm, o));
        out(p * cin + 2 * cin, &mut |o| {
            let (dx, sums) = o.split_at_mut(p * cin);
            bn_relu_conv1x1_dgrad(&d, dm, &w1, &x, xm, &bn, dx, xm_out, true, sums)
        });
        out(p * cout, &mut |o| bn_relu_conv3x3_fwd(&x, xm, s, &bn, &w3, o, dm_out));
        out(cout * 9 * cin, &mut |o| bn_relu_conv3x3_wgrad(&x, xm, s, &bn, &d, dm, o));
        out(p * cin + 2 * cin, &mut |o| {
            let (g, sums) = o.split_at_mut(p * cin);
            bn_relu_conv3x3_dgrad(&d, dm, s, &w3, &x, xm, &bn, g, xm_out, sums)
        });
        let (tp, tq) = (pooled_shape(ts).pixels(), ts.pixels());
        out(tp * cout, &mut |o| {
            bn_relu_avgpool_conv1x1_fwd(&tx, txm, ts, &bn, &w1, o, Mat::dense(0, tp, cout))
        });
        out(cout * cin, &mut |o| bn_relu_avgpool_conv1x1_wgrad(&tx, txm, ts, &bn, &td, tdm, o));
        out(tq * cin + 2 * cin, &mut |o| {
            let (dx, sums) = o.split_at_mut(tq * cin);
            bn_relu_avgpool_conv1x1_dgrad(&td, tdm, &w1, &tx, txm, ts, &bn, dx, Mat::dense(0, tq, cin), sums)
        });
        let sp = stem.out(s).pixels();
        out(sp * cout, &mut |o| conv_fwd(&x, xm, s, stem, &ws, o, Mat::dense(0, sp, cout)));
        out(cout * 49 * cin, &mut |o| conv_wgrad(&x, xm, s, stem, &sd, sdm, o));
        out(p * cin, &mut |o| conv_dgrad(&sd, sdm, s, stem, &ws, o, xm_out));
        outs
    }

    #[test]
    fn results_are_identical_for_any_thread_count() {
        let in_pool = |threads: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run_all_ops)
        };
        let bits = |outs: Vec<Vec<f32>>| -> Vec<Vec<u32>> {
            outs.into_iter().map(|v| v.into_iter().map(f32::to_bits).collect()).collect()
        };
        let reference = bits(in_pool(1));
        assert_eq!(bits(run_all_ops()), reference, "default pool differs from 1 thread");
        assert_eq!(bits(in_pool(3)), reference, "3 threads differ from 1 thread");
    }
}
