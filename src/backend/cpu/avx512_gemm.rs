//! The cpu backend's f32 GEMM on CPUs with AVX-512: `C ← α·A·B + β·C` without copying A.
//!
//! The convolutions' GEMMs are tall and narrow: a chunk of 128 pixel rows, k = 64…1152 input
//! columns, n = 12…1152 outputs. A general GEMM (`matrixmultiply`) packs both operands into
//! panels on every call; with n as small as 32 the A panel holds one element per 32
//! multiply-adds, and packing took a fifth of a densenet121 training step. Here A is never
//! copied: the micro-kernel broadcasts its elements straight from the strided source (any row
//! and column stride — pixel rows with a pitch, a transposed gradient), and only B (the
//! weights, or the small side of a weight gradient) is packed, once per `KC`-deep block, into
//! slivers of `16·NV` columns that stay in L1 while the kernel sweeps down A.
//!
//! The micro-kernel holds `MR` = 8 rows × `NV` zmm registers of accumulators, NV = 1, 2 or 3
//! chosen per call to pad the fewest columns (n = 12 takes one vector, 32 and 128 two, 48 and
//! 1152 three). Partial tiles clamp their row pointers and mask their stores. Each element of
//! C is one fixed chain of FMAs per k block, so results are the same run to run and whatever
//! the thread count (a call runs on one thread); they differ in rounding from
//! `matrixmultiply`'s, which CPUs without AVX-512 use.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps,
};
use std::cell::RefCell;

/// Rows of C per micro-tile: eight A-row pointers live in general-purpose registers.
const MR: usize = 8;

/// Depth of a k block: a packed sliver of B (KC × 16·NV floats, ≤ 48 KiB) stays in L1/L2
/// while the kernel sweeps all of A's rows against it.
const KC: usize = 256;

/// Whether this CPU runs [`sgemm`] (and this thread has not been told to use the portable path).
pub(crate) fn available() -> bool {
    #[cfg(test)]
    if PORTABLE.get() {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(test)]
thread_local! {
    /// Set on the threads of [`portable_pool`].
    static PORTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A thread pool whose threads take the portable GEMM (matrixmultiply) even on a CPU with
/// AVX-512: what tests run to check that path on such a CPU.
#[cfg(test)]
pub(crate) fn portable_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).start_handler(|_| PORTABLE.set(true)).build().unwrap()
}

thread_local! {
    /// The packed B of the current k block, reused call to call.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Zmm registers per micro-tile row for n columns: the fewest padded columns, ties to the
/// wider tile (more multiply-adds per broadcast of A).
fn vectors_per_row(n: usize) -> usize {
    (1..=3).rev().min_by_key(|&nv| n.div_ceil(16 * nv) * 16 * nv).unwrap_or(1)
}

/// `C ← alpha·A·B + beta·C` for A m×k (element (i, l) at `a[i·rsa + l·csa]`), B k×n (at
/// `b[l·rsb + j·csb]`) and row-major C m×n (at `c[i·rsc + j]`); with beta = 0, C's old
/// contents are not read.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); every element addressed above for i < m, l < k,
/// j < n lies inside its allocation; C's rows do not overlap each other, A or B.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    (rsa, csa): (usize, usize),
    b: *const f32,
    (rsb, csb): (usize, usize),
    beta: f32,
    c: *mut f32,
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let args = Gemm { m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc };
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match vectors_per_row(n) {
            1 => driver::<1>(&args),
            2 => driver::<2>(&args),
            _ => driver::<3>(&args),
        }
    }
}

/// [`sgemm`]'s arguments.
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    rsb: usize,
    csb: usize,
    beta: f32,
    c: *mut f32,
    rsc: usize,
}

/// The k blocks, each packing B's block and running every micro-tile against it: column tiles
/// outside (a sliver of B reused by all row tiles), row tiles inside (A's block from L2).
#[target_feature(enable = "avx512f")]
unsafe fn driver<const NV: usize>(g: &Gemm) {
    let nr = 16 * NV;
    let col_tiles = g.n.div_ceil(nr);
    if g.k == 0 {
        // No products: C ← beta·C (and exactly 0 for beta = 0, whatever C held).
        for i in 0..g.m {
            // SAFETY: row i of C, n elements, inside C (the caller's contract).
            let row = unsafe { std::slice::from_raw_parts_mut(g.c.add(i * g.rsc), g.n) };
            row.iter_mut().for_each(|v| *v = if g.beta == 0.0 { 0.0 } else { g.beta * *v });
        }
        return;
    }
    PACKED.with_borrow_mut(|packed| {
        packed.resize(KC.min(g.k) * col_tiles * nr, 0.0);
        for pc in (0..g.k).step_by(KC) {
            let kc = KC.min(g.k - pc);
            // SAFETY: B's rows pc..pc + kc, inside B.
            unsafe { pack_b(kc, g.n, nr, g.b.add(pc * g.rsb), g.rsb, g.csb, packed) };
            // The first block applies beta; the later ones add to what it stored.
            let beta = (pc == 0).then_some(g.beta);
            for jt in 0..col_tiles {
                let j0 = jt * nr;
                let masks = column_masks::<NV>(g.n - j0);
                let sliver = packed[jt * kc * nr..].as_ptr();
                for i0 in (0..g.m).step_by(MR) {
                    let rows = MR.min(g.m - i0);
                    // Rows past m read row m − 1 again; their results are not stored.
                    // SAFETY: rows < m and columns pc.. of A exist.
                    let a_rows: [*const f32; MR] = std::array::from_fn(|r| unsafe {
                        g.a.add((i0 + r.min(rows - 1)) * g.rsa + pc * g.csa)
                    });
                    // SAFETY: kc elements down each A row pointer (stride csa) and kc rows of
                    // the sliver; C's tile rows < m, columns < n (masked).
                    unsafe {
                        let acc = micro_tile::<NV>(kc, &a_rows, g.csa, sliver);
                        store_tile::<NV>(&acc, rows, g.c.add(i0 * g.rsc + j0), g.rsc, masks, g.alpha, beta);
                    }
                }
            }
        }
    });
}

/// Packs rows `0..kc` of B (at `b[l·rsb + j·csb]`, n columns) into `packed` as column tiles
/// of `nr` columns, each `kc × nr` row-major, the columns past n zero.
///
/// # Safety
/// Every B element addressed lies inside its allocation.
#[inline(always)]
unsafe fn pack_b(kc: usize, n: usize, nr: usize, b: *const f32, rsb: usize, csb: usize, packed: &mut [f32]) {
    for (jt, tile) in packed.chunks_exact_mut(kc * nr).take(n.div_ceil(nr)).enumerate() {
        let (j0, width) = (jt * nr, nr.min(n - jt * nr));
        for (l, dst) in tile.chunks_exact_mut(nr).enumerate() {
            let (dst, pad) = dst.split_at_mut(width);
            // SAFETY: row l < kc, columns j0..j0 + width ≤ n of B.
            unsafe {
                if csb == 1 {
                    dst.copy_from_slice(std::slice::from_raw_parts(b.add(l * rsb + j0), width));
                } else {
                    dst.iter_mut().enumerate().for_each(|(j, d)| *d = *b.add(l * rsb + (j0 + j) * csb));
                }
            }
            pad.fill(0.0);
        }
    }
}

/// The store masks of a column tile with `cols` columns of C left (possibly more than it holds).
fn column_masks<const NV: usize>(cols: usize) -> [__mmask16; NV] {
    std::array::from_fn(|v| {
        let lanes = cols.saturating_sub(16 * v).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    })
}

/// The MR × 16·NV products of the k block: `acc[r][v]` lanes = Σ_l A(r, l)·sliver(l, 16v + lane).
///
/// # Safety
/// `a[r]` has kc elements at stride `csa`, `sliver` kc rows of 16·NV floats; AVX-512F.
#[inline(always)]
unsafe fn micro_tile<const NV: usize>(
    kc: usize,
    a: &[*const f32; MR],
    csa: usize,
    sliver: *const f32,
) -> [[__m512; NV]; MR] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for l in 0..kc {
            let b: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(sliver.add(l * 16 * NV + 16 * v)));
            let off = l * csa;
            for r in 0..MR {
                let ar = _mm512_set1_ps(*a[r].add(off));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(ar, b[v], acc[r][v]);
                }
            }
        }
        acc
    }
}

/// Stores the first `rows` rows of a micro-tile into C at `c` (row stride `rsc`), lanes as
/// `masks` allow: `alpha·acc + beta·C` for the first k block (`beta = Some`, C unread when it
/// is 0), `C + alpha·acc` for the later ones.
///
/// # Safety
/// The masked lanes of the first `rows` rows lie inside C; AVX-512F.
#[inline(always)]
unsafe fn store_tile<const NV: usize>(
    acc: &[[__m512; NV]; MR],
    rows: usize,
    c: *mut f32,
    rsc: usize,
    masks: [__mmask16; NV],
    alpha: f32,
    beta: Option<f32>,
) {
    // SAFETY: the caller's contract; masked-off lanes are neither read nor written.
    unsafe {
        let va = _mm512_set1_ps(alpha);
        for (r, acc_row) in acc.iter().enumerate().take(rows) {
            for v in 0..NV {
                if masks[v] == 0 {
                    continue;
                }
                let p = c.add(r * rsc + 16 * v);
                let product = _mm512_mul_ps(va, acc_row[v]);
                let out = match beta {
                    Some(0.0) => product,
                    Some(beta) => {
                        _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(masks[v], p), product)
                    }
                    None => _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], p), product),
                };
                _mm512_mask_storeu_ps(p, masks[v], out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::vectors_per_row;

    #[test]
    fn tiles_pad_the_fewest_columns() {
        let picks: Vec<usize> =
            [12, 16, 32, 48, 64, 128, 1152, 1].iter().map(|&n| vectors_per_row(n)).collect();
        assert_eq!(picks, [1, 1, 2, 3, 2, 2, 3, 1]);
    }
}
