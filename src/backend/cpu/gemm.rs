//! Convolution-family ops of the cpu backend (GEMM-based, chunked over pixels).
//!
//! Every op walks the pixel dimension in chunks of at most [`CHUNK`] rows ([`gemm_chunks`]).
//! Per chunk it builds its fused input tile (BN-ReLU'd, and pooled or im2col'd where the op
//! needs it) in a chunk-sized scratch buffer and multiplies it with [`gemm`], whose row and
//! column strides read and write the NHWC-with-pitch layout in place. No op ever holds more
//! than a chunk of its fused input: the cpu counterpart of the CUDA kernels' tiles.
//!
//! Parallelism without losing determinism: chunks whose outputs are disjoint pixel rows
//! (forward, data gradients) run in parallel. Reductions over pixels are split the same way
//! whatever the thread count and combined in a fixed order: a weight gradient is accumulated
//! per segment of chunks and the segments are summed in order; the per-channel BN sums are
//! accumulated in f64 per chunk and summed in chunk order. Chunk and segment sizes depend on
//! the shape alone, so results are bit-identical for any number of threads.

use super::Bn;
use super::elem::Elem;
use super::rows::{RowBlock, Scratch, chunk_bounds, par_blocks, row, scratch};
use super::simd::multiversioned;
use crate::Precision;
use crate::backend::{ConvGeom, Mat, Spatial, relu};
use rayon::prelude::*;

/// Most pixels per chunk: the unit of parallel work and the height of every scratch tile.
pub(crate) const CHUNK: usize = 128;

/// Fewest chunks an op is cut into where the pixels allow: smaller images (densenet121's last
/// blocks have 7×7 and 14×14 pixels per image) get smaller chunks, so that the threads share
/// the work evenly instead of one finishing the last of three or four big chunks alone.
const MIN_CHUNKS: usize = 16;

/// Most chunks per weight-gradient segment. Each segment accumulates its own partial dW, so a
/// wgrad holds at most ⌈P / (16·chunk)⌉ weight-sized partials (never a P-sized one)…
const SEGMENT_CHUNKS: usize = 16;

/// …and, where the pixels allow, at least this many segments, so that even a small image's
/// weight gradient runs on every thread.
const MIN_SEGMENTS: usize = 8;

/// Pixels per chunk of an op over `rows` pixels: a multiple of 8 (the GEMM's row tile), at
/// most [`CHUNK`], small enough for [`MIN_CHUNKS`] chunks. A function of the shape alone.
pub(crate) fn chunk_rows(rows: usize) -> usize {
    rows.div_ceil(MIN_CHUNKS).next_multiple_of(8).clamp(8, CHUNK)
}

/// The chunk boundaries of an op over `rows` pixels (see [`chunk_rows`]).
pub(crate) fn gemm_chunks(rows: usize) -> Vec<usize> {
    chunk_bounds(rows, chunk_rows(rows))
}

/// Pixels per weight-gradient segment of an op over `rows` pixels: whole chunks, at most
/// [`SEGMENT_CHUNKS`] of them, small enough for [`MIN_SEGMENTS`] segments.
fn segment_rows(rows: usize) -> usize {
    let chunk = chunk_rows(rows);
    rows.div_ceil(MIN_SEGMENTS).next_multiple_of(chunk).clamp(chunk, chunk * SEGMENT_CHUNKS)
}

// ---- shared convolution drivers -------------------------------------------------------------

/// `y = conv(x', W)` with x' = relu(a⊙x + b) when `bn` is given, else x itself.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_fwd_impl<X: Elem, Y: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    bn: Option<&Bn>,
    w: &[f32],
    y: &mut [Y],
    ym: Mat,
) {
    debug_assert_eq!(ym.rows, geom.out(shape).pixels());
    let width = geom.kernel * geom.kernel * xm.cols;
    par_blocks(y, ym, &gemm_chunks(ym.rows), |blk, s| {
        let cols = scratch(&mut s.a, blk.rows * width);
        im2col(x, xm, shape, geom, bn, blk.first, blk.rows, cols);
        let wt = Operand::dense_t(width);
        gemm(
            precision,
            blk.rows,
            width,
            ym.cols,
            1.0,
            cols,
            Operand::dense(width),
            w,
            wt,
            0.0,
            blk.data,
            blk.operand(),
        );
    });
}

/// `dW += wgrad(x', dy)` with x' as in [`conv_fwd_impl`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_wgrad_impl<X: Elem, D: Elem>(
    precision: Precision,
    x: &[X],
    xm: Mat,
    shape: Spatial,
    geom: ConvGeom,
    bn: Option<&Bn>,
    dy: &[D],
    dym: Mat,
    dw: &mut [f32],
) {
    debug_assert_eq!(dym.rows, geom.out(shape).pixels());
    let width = geom.kernel * geom.kernel * xm.cols;
    wgrad_in_segments(precision, dy, dym, width, dw, |p0, rows, cols| {
        im2col(x, xm, shape, geom, bn, p0, rows, cols)
    });
}

// ---- tile builders --------------------------------------------------------------------------

/// `dst = relu(a ⊙ src + b)` for one pixel row.
#[inline(always)]
pub(crate) fn bn_relu_into<T: Elem>(dst: &mut [f32], src: &[T], bn: &Bn) {
    // Slices cut to one length: no bounds checks in the loop, which then vectorises.
    let c = dst.len();
    let (src, a, b) = (&src[..c], &bn.a[..c], &bn.b[..c]);
    for j in 0..c {
        dst[j] = relu(a[j] * src[j].get() + b[j]);
    }
}

/// `dst = src` widened to f32, for one pixel row.
#[inline(always)]
pub(crate) fn widen_into<T: Elem>(dst: &mut [f32], src: &[T]) {
    dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v.get());
}

multiversioned! {
    /// Fills `tile` (rows × c, dense) with the BN-ReLU'd pixel rows `[p0, p0 + rows)` of x.
    pub(crate) fn bn_relu_rows<T: Elem>(x: &[T], xm: Mat, bn: &Bn, p0: usize, rows: usize, tile: &mut [f32]) {
        let c = xm.cols;
        for r in 0..rows {
            bn_relu_into(&mut tile[r * c..][..c], row(x, xm, p0 + r), bn);
        }
    }
}

multiversioned! {
    /// im2col for the output pixels `[p0, p0 + rows)`: fills `tile` (rows × k²·c, dense) with each
    /// pixel's input window, column `(ky·k + kx)·c + ci` as in OHWI weights, so that
    /// `y = tile · Wᵀ`. The input is BN-ReLU'd first when `bn` is given; padding taps are 0, i.e.
    /// padding applies after the BN-ReLU, as a convolution of the ReLU output does.
    pub(crate) fn im2col<T: Elem>(
        src: &[T],
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
                            bn_relu_into(dst, row(src, sm, (n * shape.h + iy) * shape.w + ix), bn)
                        }
                        (Some(iy), Some(ix), None) => {
                            widen_into(dst, row(src, sm, (n * shape.h + iy) * shape.w + ix))
                        }
                        _ => dst.fill(0.0),
                    }
                }
            }
        }
    }
}

multiversioned! {
    /// The data-gradient counterpart of [`im2col`], a gather (so that chunks of input pixels are
    /// independent): for the input pixels `[p0, p0 + rows)` (x has spatial `shape`), fills `tile`
    /// (rows × c_out·k², dense) with, at column `co·k² + ky·k + kx`, dy[co] of the output pixel
    /// that sees this input pixel at tap (ky, kx), or 0 if none does. Column `co·k² + tap` is then
    /// row `co·k² + tap` of the OHWI weights read as a (c_out·k²) × c_in matrix: `dx = tile · W`.
    pub(crate) fn im2col_dgrad<T: Elem>(
        dy: &[T],
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
                    let grad = row(dy, dym, (n * out.h + oy) * out.w + ox);
                    for (co, &v) in grad.iter().enumerate() {
                        dst[co * k * k + ky * k + kx] = v.get();
                    }
                }
            }
        }
    }
}

/// The input coordinate that output coordinate `o` reads at tap `t`, or `None` in the padding.
pub(crate) fn input_coord(o: usize, t: usize, geom: ConvGeom, size: usize) -> Option<usize> {
    (o * geom.stride + t).checked_sub(geom.pad).filter(|&i| i < size)
}

/// The output coordinate that reads input coordinate `i` at tap `t`, if any.
pub(crate) fn output_coord(i: usize, t: usize, geom: ConvGeom, size: usize) -> Option<usize> {
    let s = (i + geom.pad).checked_sub(t)?;
    (s % geom.stride == 0 && s / geom.stride < size).then_some(s / geom.stride)
}

/// (n, y, x) of pixel p in an NHWC activation of spatial extent `s`.
pub(crate) fn pixel(p: usize, s: Spatial) -> (usize, usize, usize) {
    (p / (s.h * s.w), p / s.w % s.h, p % s.w)
}

/// `dW += dyᵀ·act` (dW c_out × `width`, OHWI) over the pixel rows `0..dym.rows`, where
/// `act(p0, rows, tile)` fills `tile` (rows × width, dense) with the layer input's fused rows
/// `[p0, p0 + rows)` (BN-ReLU'd, pooled or im2col'd). Each chunk adds `actᵀ·dy` into a
/// transposed partial (width × c_out): that way the tile, the large operand, is the GEMM's A,
/// read in place, and dy's rows the small B. Segments of chunks run in parallel, each into its
/// own partial; the partials are then summed in segment order, so the result does not depend
/// on the thread count.
pub(crate) fn wgrad_in_segments<D: Elem>(
    precision: Precision,
    dy: &[D],
    dym: Mat,
    width: usize,
    dw: &mut [f32],
    act: impl Fn(usize, usize, &mut [f32]) + Sync + Send,
) {
    let (rows, cout) = (dym.rows, dym.cols);
    let (chunk, segment, len) = (chunk_rows(rows), segment_rows(rows), cout * width);
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(segment))
        .into_par_iter()
        .map_init(Scratch::default, |s, seg| {
            let mut partial = vec![0.0; len];
            let end = ((seg + 1) * segment).min(rows);
            for p0 in (seg * segment..end).step_by(chunk) {
                let rows = chunk.min(end - p0);
                let tile = scratch(&mut s.a, rows * width);
                act(p0, rows, tile);
                let (tile_t, dy_rows) = (Operand::dense_t(width), Operand::rows_of(dym, p0));
                gemm(
                    precision,
                    width,
                    rows,
                    cout,
                    1.0,
                    tile,
                    tile_t,
                    dy,
                    dy_rows,
                    1.0,
                    &mut partial,
                    Operand::dense(cout),
                );
            }
            partial
        })
        .collect();
    let mut total = vec![0.0f64; len];
    for partial in &partials {
        total.iter_mut().zip(partial).for_each(|(t, &v)| *t += f64::from(v));
    }
    // total is dWᵀ: element (i, co) at i·cout + co.
    for (co, dw_row) in dw[..len].chunks_exact_mut(width.max(1)).enumerate() {
        dw_row.iter_mut().enumerate().for_each(|(i, d)| *d = (f64::from(*d) + total[i * cout + co]) as f32);
    }
}

// ---- GEMM -----------------------------------------------------------------------------------

/// A strided matrix inside a slice: element (i, j) at `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub(crate) off: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl Operand {
    /// A dense row-major matrix with `cols` columns.
    pub(crate) fn dense(cols: usize) -> Self {
        Operand { off: 0, rs: cols, cs: 1 }
    }

    /// The transpose of a dense row-major matrix with `cols` columns (e.g. Wᵀ).
    pub(crate) fn dense_t(cols: usize) -> Self {
        Operand { off: 0, rs: 1, cs: cols }
    }

    /// The rows of `m` from pixel p on (pixels × channels).
    pub(crate) fn rows_of(m: Mat, p: usize) -> Self {
        Operand { off: m.at(p, 0), rs: m.ld, cs: 1 }
    }

    /// Whether an r × c matrix seen through this view lies inside a slice of `len` floats.
    pub(crate) fn fits(&self, r: usize, c: usize, len: usize) -> bool {
        r == 0 || c == 0 || self.off + (r - 1) * self.rs + (c - 1) * self.cs < len
    }
}

/// `C ← alpha·A·B + beta·C` for A m×k, B k×n, C m×n (`matrixmultiply::sgemm`; with beta = 0
/// C's old contents are ignored). C must be row-major with non-overlapping rows. f32 operands
/// under [`Precision::Fp32`] are read in place; otherwise an operand is first copied (per
/// thread, reused call to call) widened to f32 and rounded to the precision's operand format —
/// the products the tensor-core kernels form — and a bf16 C is computed in an f32 copy and
/// rounded once when stored.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<A: Elem, B: Elem, C: Elem>(
    precision: Precision,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[A],
    av: Operand,
    b: &[B],
    bv: Operand,
    beta: f32,
    c: &mut [C],
    cv: Operand,
) {
    assert!(av.fits(m, k, a.len()) && bv.fits(k, n, b.len()) && cv.fits(m, n, c.len()));
    assert!(cv.cs == 1 && (m <= 1 || cv.rs >= n), "GEMM output rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    COPIES.with_borrow_mut(|(ra, rb, rc)| {
        let (a, av) = operand(precision, a, av, m, k, ra);
        let (b, bv) = operand(precision, b, bv, k, n, rb);
        match C::as_f32_mut(c) {
            // SAFETY: the asserts above; a copied operand is dense.
            Some(c) => unsafe { sgemm(m, k, n, alpha, a, av, b, bv, beta, c, cv) },
            None => {
                let dense = Operand::dense(n);
                rc.clear();
                if beta == 0.0 {
                    rc.resize(m * n, 0.0);
                } else {
                    (0..m).for_each(|i| rc.extend(c[cv.off + i * cv.rs..][..n].iter().map(|v| v.get())));
                }
                // SAFETY: as above; the copy of C is dense m×n.
                unsafe { sgemm(m, k, n, alpha, a, av, b, bv, beta, rc, dense) };
                for i in 0..m {
                    let dst = &mut c[cv.off + i * cv.rs..][..n];
                    dst.iter_mut().zip(&rc[i * n..][..n]).for_each(|(d, &v)| *d = C::put(v));
                }
            }
        }
    });
}

thread_local! {
    /// The operand copies of [`gemm`] (A, B, C), reused call to call.
    static COPIES: std::cell::RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The r × c operand `v` of `src` as the multiply reads it: in place when it is f32 and
/// needs no rounding, else a dense copy in `dst`.
fn operand<'a, T: Elem>(
    precision: Precision,
    src: &'a [T],
    v: Operand,
    r: usize,
    c: usize,
    dst: &'a mut Vec<f32>,
) -> (&'a [f32], Operand) {
    match T::as_f32(src) {
        Some(src) if precision == Precision::Fp32 => (src, v),
        _ => (rounded_copy(precision, src, v, r, c, dst), Operand::dense(c)),
    }
}

/// The r × c matrix `v` of `src`, dense, each element widened to f32 and rounded to
/// `precision`'s operand format.
fn rounded_copy<'a, T: Elem>(
    precision: Precision,
    src: &[T],
    v: Operand,
    r: usize,
    c: usize,
    dst: &'a mut Vec<f32>,
) -> &'a [f32] {
    dst.clear();
    dst.reserve(r * c);
    for i in 0..r {
        let row = v.off + i * v.rs;
        if v.cs == 1 {
            // Contiguous rows (every operand but a transposed view): slices, not index arithmetic.
            dst.extend(src[row..row + c].iter().map(|&x| precision.round_operand(x.get())));
        } else {
            dst.extend((0..c).map(|j| precision.round_operand(src[row + j * v.cs].get())));
        }
    }
    dst
}

/// `C ← alpha·A·B + beta·C` on strided operands: our AVX-512 kernel where the CPU has it
/// (`avx512_gemm`, which does not copy A), else `matrixmultiply::sgemm`.
///
/// # Safety
/// `av`, `bv` and `cv` must fit their slices for m×k, k×n and m×n (as [`gemm`] asserts) and
/// C's rows must not overlap.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    av: Operand,
    b: &[f32],
    bv: Operand,
    beta: f32,
    c: &mut [f32],
    cv: Operand,
) {
    // SAFETY: the caller keeps every element either GEMM touches inside its slice (with k == 0
    // neither reads A nor B, so their offsets may point anywhere: `wrapping_add`), C's
    // elements are distinct, and C, a `&mut` borrow, aliases neither A nor B.
    unsafe {
        let (a, b, c) =
            (a.as_ptr().wrapping_add(av.off), b.as_ptr().wrapping_add(bv.off), c.as_mut_ptr().add(cv.off));
        #[cfg(target_arch = "x86_64")]
        if super::avx512_gemm::available() {
            return super::avx512_gemm::sgemm(
                m,
                k,
                n,
                alpha,
                a,
                (av.rs, av.cs),
                b,
                (bv.rs, bv.cs),
                beta,
                c,
                cv.rs,
            );
        }
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a,
            av.rs as isize,
            av.cs as isize,
            b,
            bv.rs as isize,
            bv.cs as isize,
            beta,
            c,
            cv.rs as isize,
            1,
        );
    }
}

impl<T> RowBlock<'_, T> {
    /// The block as a GEMM output.
    pub(crate) fn operand(&self) -> Operand {
        Operand { off: 0, rs: self.ld, cs: 1 }
    }
}
