//! The tensor-core primitives of `kernels/mma.cuh` as the emulator runs them
//! (`emu/selftest/selftest_mma.cu`). The fragment layouts are written out here from the PTX
//! ISA, independently of the emulator's (`emu/runtime.cpp`), so a layout mistake on either side
//! shows as a wrong element.

use super::*;

/// groupID and threadID_in_group of a lane.
fn group(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

// PTX ISA, "Matrix Fragments for mma.m16n8k8" (.tf32) and "... for mma.m16n8k16 with floating
// point type" (.bf16): (row, column) of element i of lane `lane`'s fragment.

fn tf32_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (if i == 0 || i == 2 { g } else { g + 8 }, if i < 2 { t } else { t + 4 })
}
fn tf32_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (if i == 0 { t } else { t + 4 }, g)
}
fn bf16_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    let row = if i < 2 || (4..6).contains(&i) { g } else { g + 8 };
    (row, t * 2 + (i & 1) + if i < 4 { 0 } else { 8 })
}
fn bf16_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (t * 2 + (i & 1) + if i < 2 { 0 } else { 8 }, g)
}
/// C and D, both shapes.
fn acc(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

/// Quantum of a tf32 (and of the top 19 bits of an f32): 2^(e - 10) for an f32 of exponent e,
/// the subnormals sharing the smallest normal exponent.
fn tf32_quantum(x: f32) -> f64 {
    let e = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
    2f64.powi(e.max(-126) - 10)
}
/// cvt.rna.tf32.f32 of a finite value: to the nearest multiple of the quantum, ties away from
/// zero (`f64::round`), overflowing to infinity.
fn tf32_rna(x: f32) -> f32 {
    let q = tf32_quantum(x);
    let r = (x.abs() as f64 / q).round() * q;
    let r = if r >= 2f64.powi(128) { f64::INFINITY } else { r };
    (r as f32).copysign(x)
}
/// What the tensor core reads from an f32 that was not rounded: the value truncated to tf32.
fn tf32_trunc(x: f32) -> f32 {
    let q = tf32_quantum(x);
    (((x.abs() as f64 / q).trunc() * q) as f32).copysign(x)
}

/// A value with a full 24-bit significand, neither 0 nor ±1 nor a power of two, of either
/// sign and magnitude in [1/8, 16).
fn odd(rng: &mut Lcg) -> f32 {
    let scale = 2f32.powi((rng.next_u32() % 7) as i32 - 3);
    let sign = if rng.next_u32() & 1 == 1 { -1.0 } else { 1.0 };
    sign * (1.0 + rng.next_f32().max(f32::EPSILON)) * scale
}

/// D = C + A·B in f64 from the given (already rounded) f32 elements, and Σ|terms| per element.
fn mma_reference(a: &[f32], b: &[f32], c: &[f32], k: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut d, mut s) = (vec![0.0; 16 * 8], vec![0.0; 16 * 8]);
    for r in 0..16 {
        for n in 0..8 {
            let terms = (0..k).map(|p| a[r * k + p] as f64 * b[p * 8 + n] as f64);
            d[r * 8 + n] = c[r * 8 + n] as f64 + terms.clone().sum::<f64>();
            s[r * 8 + n] = (c[r * 8 + n] as f64).abs() + terms.map(f64::abs).sum::<f64>();
        }
    }
    (d, s)
}

/// Bound on the error of the tensor core's f32 accumulation of C and K exact products, for any
/// order: K additions, each off by less than one f32 ulp of a partial sum (truncation, 2^-23
/// relative, rather than rounding's 2^-24, as the hardware may truncate when it aligns),
/// and every partial sum at most Σ|terms|; one more ulp for slack. The emulator itself rounds
/// the exact sum once (within 2^-24 relative).
fn accumulation_bound(k: usize, sum_abs: f64) -> f64 {
    (k + 1) as f64 * 2f64.powi(-23) * sum_abs
}

/// Bound on |D - (C + A·B)| against the unrounded f32 inputs when A and B were rounded to a
/// format of unit roundoff u (2^-11 for tf32, 2^-8 for bf16): a' = a(1 + α), b' = b(1 + β) with
/// |α|, |β| <= u, so |a'b' - ab| <= (2u + u²)|ab|, summed over K; plus the accumulation bound
/// (with Σ|a'b'| <= (1 + u)² Σ|ab|, absorbed by its slack).
fn rounding_bound(u: f64, k: usize, sum_abs_products: f64, sum_abs: f64) -> f64 {
    (2.0 * u + u * u) * sum_abs_products + accumulation_bound(k, sum_abs)
}

/// The largest error in units of its bound, over all elements.
fn worst(got: &[f32], want: &[f64], bound: impl Fn(usize) -> f64) -> f64 {
    (0..got.len()).map(|i| (got[i] as f64 - want[i]).abs() / bound(i)).fold(0.0, f64::max)
}

struct Tf32Tile {
    a: Vec<f32>, // 16x8
    b: Vec<f32>, // 8x8
    c: Vec<f32>, // 16x8
}

/// Runs `selftest_mma_tf32` on the tile, returns D (16x8, row-major).
fn run_tf32(tile: &Tf32Tile, convert: bool) -> Vec<f32> {
    let mut fa = vec![0.0f32; 32 * 4];
    let mut fb = vec![0.0f32; 32 * 2];
    let mut fc = vec![0.0f32; 32 * 4];
    for l in 0..32 {
        for i in 0..4 {
            let (r, k) = tf32_a(l, i);
            fa[4 * l + i] = tile.a[r * 8 + k];
            let (r, n) = acc(l, i);
            fc[4 * l + i] = tile.c[r * 8 + n];
        }
        for i in 0..2 {
            let (k, n) = tf32_b(l, i);
            fb[2 * l + i] = tile.b[k * 8 + n];
        }
    }
    let mut fd = vec![f32::NAN; 32 * 4];
    let args = Args::new()
        .arg(fa.as_ptr())
        .arg(fb.as_ptr())
        .arg(fc.as_ptr())
        .arg(fd.as_mut_ptr())
        .arg(convert as i32);
    launch("selftest_mma_tf32", [1, 1, 1], [32, 1, 1], 0, args).unwrap();
    let mut d = vec![f32::NAN; 16 * 8];
    for l in 0..32 {
        for i in 0..4 {
            let (r, n) = acc(l, i);
            d[r * 8 + n] = fd[4 * l + i];
        }
    }
    d
}

#[test]
fn tf32_mma_follows_the_isa_layout_and_rounds_like_the_tensor_core() {
    let mut rng = Lcg(11);
    let mut odds = |len: usize| (0..len).map(|_| odd(&mut rng)).collect::<Vec<f32>>();
    let tile = Tf32Tile { a: odds(16 * 8), b: odds(8 * 8), c: odds(16 * 8) };
    let round = |v: &[f32], f: fn(f32) -> f32| v.iter().map(|&x| f(x)).collect::<Vec<f32>>();

    // With dn_cvt_tf32: against the rounded inputs (tight) and the unrounded ones.
    let got = run_tf32(&tile, true);
    let (want, sum_abs) = mma_reference(&round(&tile.a, tf32_rna), &round(&tile.b, tf32_rna), &tile.c, 8);
    let tight = worst(&got, &want, |i| accumulation_bound(8, sum_abs[i]));
    assert!(tight <= 1.0, "{tight} x the accumulation bound");
    let (exact, exact_abs) = mma_reference(&tile.a, &tile.b, &tile.c, 8);
    let products: Vec<f64> = (0..128).map(|i| exact_abs[i] - (tile.c[i] as f64).abs()).collect();
    let loose = worst(&got, &exact, |i| rounding_bound(2f64.powi(-11), 8, products[i], sum_abs[i]));
    assert!(loose <= 1.0, "{loose} x the tf32 rounding bound");

    // Without: the tensor core ignores the low 13 bits, so the result is that of truncated
    // inputs, which differs from the rounded one by far more than the accumulation error.
    let raw = run_tf32(&tile, false);
    let (want_trunc, sum_trunc) =
        mma_reference(&round(&tile.a, tf32_trunc), &round(&tile.b, tf32_trunc), &tile.c, 8);
    let trunc = worst(&raw, &want_trunc, |i| accumulation_bound(8, sum_trunc[i]));
    assert!(trunc <= 1.0, "{trunc} x the accumulation bound (truncated inputs)");
    let apart = worst(&raw, &want, |i| accumulation_bound(8, sum_abs[i]));
    assert!(apart > 10.0, "truncation indistinguishable from rounding: {apart}");
    println!("tf32 mma: {tight:.3} of the accumulation bound, {loose:.3} of the rounding bound");
    assert_no_diagnostics();
}

struct Bf16Tile {
    a: Vec<f32>, // 16x16, bf16 values
    b: Vec<f32>, // 16x8
    c: Vec<f32>, // 16x8
}

fn bf16_pair(lo: f32, hi: f32) -> u32 {
    bf16::from_f32(lo).to_bits() as u32 | (bf16::from_f32(hi).to_bits() as u32) << 16
}

/// Runs a bf16 single-tile kernel (`selftest_mma_bf16` or a planted bug) and returns D.
fn run_bf16(kernel: &str, tile: &Bf16Tile) -> Result<Vec<f32>, EmuError> {
    let mut fa = vec![0u32; 32 * 4];
    let mut fb = vec![0u32; 32 * 2];
    let mut fc = vec![0.0f32; 32 * 4];
    for l in 0..32 {
        for j in 0..4 {
            let at = |i: usize| {
                let (r, k) = bf16_a(l, i);
                tile.a[r * 16 + k]
            };
            fa[4 * l + j] = bf16_pair(at(2 * j), at(2 * j + 1));
            let (r, n) = acc(l, j);
            fc[4 * l + j] = tile.c[r * 8 + n];
        }
        for j in 0..2 {
            let at = |i: usize| {
                let (k, n) = bf16_b(l, i);
                tile.b[k * 8 + n]
            };
            fb[2 * l + j] = bf16_pair(at(2 * j), at(2 * j + 1));
        }
    }
    let mut fd = vec![f32::NAN; 32 * 4];
    let args = Args::new().arg(fa.as_ptr()).arg(fb.as_ptr()).arg(fc.as_ptr()).arg(fd.as_mut_ptr());
    launch(kernel, [1, 1, 1], [32, 1, 1], 0, args)?;
    let mut d = vec![f32::NAN; 16 * 8];
    for l in 0..32 {
        for i in 0..4 {
            let (r, n) = acc(l, i);
            d[r * 8 + n] = fd[4 * l + i];
        }
    }
    Ok(d)
}

#[test]
fn bf16_mma_follows_the_isa_layout_and_a_swapped_fragment_is_far_off() {
    let mut rng = Lcg(12);
    let unrounded_a: Vec<f32> = (0..16 * 16).map(|_| odd(&mut rng)).collect();
    let unrounded_b: Vec<f32> = (0..16 * 8).map(|_| odd(&mut rng)).collect();
    let to_bf16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let tile = Bf16Tile {
        a: to_bf16(&unrounded_a),
        b: to_bf16(&unrounded_b),
        c: (0..16 * 8).map(|_| odd(&mut rng)).collect(),
    };
    let got = run_bf16("selftest_mma_bf16", &tile).unwrap();
    let (want, sum_abs) = mma_reference(&tile.a, &tile.b, &tile.c, 16);
    let tight = worst(&got, &want, |i| accumulation_bound(16, sum_abs[i]));
    assert!(tight <= 1.0, "{tight} x the accumulation bound");
    let (exact, exact_abs) = mma_reference(&unrounded_a, &unrounded_b, &tile.c, 16);
    let products: Vec<f64> = (0..128).map(|i| exact_abs[i] - (tile.c[i] as f64).abs()).collect();
    let loose = worst(&got, &exact, |i| rounding_bound(2f64.powi(-8), 16, products[i], sum_abs[i]));
    assert!(loose <= 1.0, "{loose} x the bf16 rounding bound");
    println!("bf16 mma: {tight:.3} of the accumulation bound, {loose:.3} of the rounding bound");
    assert_no_diagnostics();

    // a[1] <-> a[2]: rows g+8 and g swap halves of columns; nothing like rounding error.
    let swapped = run_bf16("selftest_mma_bf16_swapped_a", &tile).unwrap();
    let off = worst(&swapped, &want, |i| accumulation_bound(16, sum_abs[i]));
    assert!(off > 1e4, "the swapped fragment went unnoticed: {off}");
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let max_err = (0..128).map(|i| (swapped[i] as f64 - want[i]).abs()).fold(0.0, f64::max);
    assert!(max_err > 0.1 * scale, "{max_err} vs results up to {scale}");
    assert_no_diagnostics();
}

/// `emu/selftest/selftest_mma.cu:LINE` of the line marked `BUG: {marker}`.
fn mma_site(marker: &str) -> String {
    let src = include_str!("../../emu/selftest/selftest_mma.cu");
    let tag = format!("BUG: {marker}");
    let line = src.lines().position(|l| l.contains(&tag)).expect("marker") + 1;
    format!("emu/selftest/selftest_mma.cu:{line}")
}

#[test]
fn mma_reached_by_half_the_warp_is_reported() {
    let tile = Bf16Tile { a: vec![0.5; 256], b: vec![0.25; 128], c: vec![0.0; 128] };
    let err = run_bf16("selftest_mma_half_warp", &tile).expect_err("half-warp mma unreported");
    let EmuError::Diagnostics { messages, .. } = err else { panic!("unexpected error {err}") };
    assert_eq!(emu::take_diagnostics().messages, messages);
    assert_mentions(
        &messages,
        &[
            "thread (16,0,0): exits while lane 0 waits for it in \
             mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32(mask 0xffffffff)",
            &mma_site("half-warp-mma"),
        ],
    );
}

/// A row-major 16x16 tile of distinct 16-bit values.
fn b16_tile() -> Vec<u16> {
    (0..256u32).map(|i| (i * 0x9e37 + 0x1234) as u16).collect()
}

/// A device buffer holding `values`.
fn buffer_of_u16(values: &[u16]) -> emu::Buffer {
    let mut b = emu::Buffer::uninit(values.len() * 2).unwrap();
    b.write(0, bytemuck::cast_slice(values));
    b
}

#[test]
fn ldmatrix_x4_and_trans_give_every_lane_its_isa_fragment() {
    let tile = b16_tile();
    let t = |r: usize, c: usize| tile[r * 16 + c] as u32;
    let x = buffer_of_u16(&tile);
    let out = buffer_of(&[0.0; 32 * 8]);
    let args = Args::new().arg(x.ptr()).arg(out.ptr()).arg(0i32).arg(0i32);
    launch_checked("selftest_ldmatrix", [1, 1, 1], [32, 1, 1], 0, args, &[&x, &out]).unwrap();
    let got: Vec<u32> = bytemuck::cast_slice(out.bytes()).to_vec();
    // Lanes 8i..8i+7 pass rows 0..7 of matrix i, which is rows 8(i%2).., columns 8(i/2).. of
    // the tile. Register i of lane l: row l>>2, columns 2(l%4), +1 of matrix i; with .trans
    // column l>>2, rows 2(l%4), +1 (PTX ISA, ldmatrix).
    for l in 0..32 {
        let (g, q) = group(l);
        for i in 0..4 {
            let (r0, c0) = (8 * (i % 2), 8 * (i / 2));
            let plain = t(r0 + g, c0 + 2 * q) | t(r0 + g, c0 + 2 * q + 1) << 16;
            let trans = t(r0 + 2 * q, c0 + g) | t(r0 + 2 * q + 1, c0 + g) << 16;
            assert_eq!(got[8 * l + i], plain, "lane {l} register {i}");
            assert_eq!(got[8 * l + 4 + i], trans, "lane {l} register {i} (.trans)");
        }
    }
    assert_no_diagnostics();

    // Row addresses one element off: not 16-byte aligned, which the hardware faults on.
    let args = Args::new().arg(x.ptr()).arg(out.ptr()).arg(1i32).arg(0i32);
    let d = expect_findings("selftest_ldmatrix", [32, 1, 1], 0, args, &[&x, &out]);
    assert!(d.memory_errors >= 1 && d.races == 0, "{:#?}", d.messages);
    assert_mentions(&d.messages, &["misaligned 16-byte read", &mma_site("bad-ldmatrix-row")]);

    // Rows in global memory: ldmatrix reads shared memory only.
    let args = Args::new().arg(x.ptr()).arg(out.ptr()).arg(0i32).arg(1i32);
    let d = expect_findings("selftest_ldmatrix", [32, 1, 1], 0, args, &[&x, &out]);
    assert!(d.memory_errors >= 1 && d.races == 0, "{:#?}", d.messages);
    assert_mentions(
        &d.messages,
        &["not in shared memory, which the instruction requires", &mma_site("bad-ldmatrix-row")],
    );
}

#[test]
fn cp_async_lands_at_wait_group_and_not_at_syncthreads() {
    let mut rng = Lcg(13);
    let input: Vec<f32> = (0..4 * 32).map(|_| odd(&mut rng)).collect();
    let mut out = vec![0.0f32; 12 * 32];
    let mut sum = vec![0.0f32; 4 * 32];
    let args = Args::new().arg(input.as_ptr()).arg(out.as_mut_ptr()).arg(sum.as_mut_ptr());
    launch("selftest_cp_async_groups", [1, 1, 1], [32, 1, 1], 0, args).unwrap();
    for t in 0..32 {
        for i in 0..4 {
            let x = input[4 * t + i];
            assert_eq!(out[12 * t + i].to_bits(), x.to_bits(), "thread {t}: the waited-for group");
            for g in 1..3 {
                assert_eq!(out[12 * t + 4 * g + i].to_bits(), u32::MAX, "thread {t}: group {g} in flight");
            }
            assert_eq!(sum[4 * t + i], x + x + x, "thread {t}: after wait_group 0");
        }
    }
    assert_no_diagnostics();

    // The memory check reports the early read itself, at the line that reads.
    let (x, o, s) = (buffer_of(&input), buffer_of(&out), buffer_of(&sum));
    let args = Args::new().arg(x.ptr()).arg(o.ptr()).arg(s.ptr());
    let d = expect_findings("selftest_cp_async_groups", [32, 1, 1], 0, args, &[&x, &o, &s]);
    assert!(d.memory_errors >= 1 && d.races == 0, "{:#?}", d.messages);
    assert_mentions(
        &d.messages,
        &[
            "read of shared memory a cp.async has not completed (missing cp.async.wait_group?)",
            &mma_site("early-read"),
        ],
    );
}

/// A random `rows` x `cols` matrix of bf16 values (as f32) and its bits.
fn bf16_matrix(rng: &mut Lcg, rows: usize, cols: usize) -> (Vec<f32>, Vec<u16>) {
    let v: Vec<bf16> = (0..rows * cols).map(|_| bf16::from_f32(odd(rng) / 4.0)).collect();
    (v.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_bits()).collect())
}

#[test]
fn tiled_bf16_gemm_with_cp_async_ldmatrix_and_mma_matches_f64() {
    let (m, n, k) = (128usize, 192usize, 96usize);
    let mut rng = Lcg(14);
    let (a, a_bits) = bf16_matrix(&mut rng, m, k);
    let (b, b_bits) = bf16_matrix(&mut rng, k, n);
    let (xa, xb, c) = (buffer_of_u16(&a_bits), buffer_of_u16(&b_bits), buffer_of(&vec![0.0; m * n]));
    let args = Args::new().arg(xa.ptr()).arg(xb.ptr()).arg(c.ptr()).arg(n as i32).arg(k as i32);
    let grid = [(n / 64) as u32, (m / 64) as u32, 1];
    let start = Instant::now();
    launch_checked("selftest_gemm_bf16", grid, [128, 1, 1], 0, args, &[&xa, &xb, &c]).unwrap();
    let elapsed = start.elapsed();
    let got = floats(&c);
    let mut worst_ratio = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64);
            let (want, sum_abs) = (terms.clone().sum::<f64>(), terms.map(f64::abs).sum::<f64>());
            let ratio = (got[i * n + j] as f64 - want).abs() / accumulation_bound(k, sum_abs);
            assert!(ratio <= 1.0, "C[{i}][{j}] = {} want {want}", got[i * n + j]);
            worst_ratio = worst_ratio.max(ratio);
        }
    }
    eprintln!(
        "emulator: bf16 tensor-core GEMM {m}x{k} . {k}x{n} under memcheck and racecheck: {:.1} ms, \
         {worst_ratio:.3} of the accumulation bound",
        elapsed.as_secs_f64() * 1e3
    );
    assert_no_diagnostics();
}

#[test]
fn gemm_reading_a_stage_before_its_cp_async_wait_is_reported() {
    let (m, n, k) = (64usize, 64usize, 64usize);
    let mut rng = Lcg(15);
    let (_, a_bits) = bf16_matrix(&mut rng, m, k);
    let (_, b_bits) = bf16_matrix(&mut rng, k, n);
    let (xa, xb, c) = (buffer_of_u16(&a_bits), buffer_of_u16(&b_bits), buffer_of(&vec![0.0; m * n]));
    let args = Args::new().arg(xa.ptr()).arg(xb.ptr()).arg(c.ptr()).arg(n as i32).arg(k as i32);
    let d = expect_findings("selftest_gemm_bf16_no_wait", [128, 1, 1], 0, args, &[&xa, &xb, &c]);
    assert!(d.memory_errors >= 1 && d.races == 0, "{:#?}", d.messages);
    assert_mentions(
        &d.messages,
        &[
            "read of shared memory a cp.async has not completed (missing cp.async.wait_group?)",
            &mma_site("read-before-wait"),
        ],
    );
    // Without the check the poison shows in the result.
    let args = Args::new().arg(xa.ptr()).arg(xb.ptr()).arg(c.ptr()).arg(n as i32).arg(k as i32);
    launch("selftest_gemm_bf16_no_wait", [1, 1, 1], [128, 1, 1], 0, args).unwrap();
    assert!(floats(&c).iter().any(|v| v.is_nan()), "the early read went unnoticed in the result");
}

#[test]
fn tf32_and_bf16x2_conversions_round_edge_cases_like_the_instructions() {
    let p = |e: i32| 2f32.powi(e);
    let bits = f32::from_bits;
    // (input, cvt.rna.tf32.f32 bits)
    let tf32_cases: &[(f32, u32)] = &[
        (1.0 + p(-11), 0x3f80_2000),          // tie: away from zero
        (-(1.0 + p(-11)), 0xbf80_2000),       // tie, negative: away from zero
        (1.0 + 3.0 * p(-11), 0x3f80_4000),    // tie: away, here also to even
        (1.0 + 5.0 * p(-11), 0x3f80_6000),    // tie: away, where even would round down
        (1.0 + p(-11) - p(-23), 0x3f80_0000), // just below the tie
        (bits(0x7f7f_e000), 0x7f7f_e000),     // largest finite tf32
        (bits(0x7f7f_efff), 0x7f7f_e000),     // below the tie with 2^128
        (bits(0x7f7f_f000), 0x7f80_0000),     // the tie: to infinity
        (f32::MAX, 0x7f80_0000),              // largest finite f32
        (bits(0x0000_1000), 0x0000_2000),     // subnormal tie: away
        (bits(0x0000_0fff), 0x0000_0000),     // subnormal below the tie
        (bits(0x007f_f000), 0x0080_0000),     // largest subnormals round up to the smallest normal
        (f32::INFINITY, 0x7f80_0000),
        (f32::NEG_INFINITY, 0xff80_0000),
        (bits(0x7fc0_0000), 0x7fc0_0000), // quiet NaN
        (bits(0xffc0_1234), 0xffc0_0000), // NaN: sign and upper payload kept
        // A NaN whose payload lies in the low 13 bits only stays a NaN (made quiet), never
        // the infinity its truncated bits would spell, as `Precision::round_operand` keeps it
        // on the cpu: the PTX ISA does not give the instruction's NaN bits, and a NaN must
        // reach the loss as one.
        (bits(0x7f80_0001), 0x7fc0_0000),
        (-0.0, 0x8000_0000),
    ];
    // (input, cvt.rn.bf16x2.f32 bits of it)
    let bf16_cases: &[(f32, u16)] = &[
        (1.0 + p(-8), 0x3f80),          // tie: to even (down)
        (1.0 + 3.0 * p(-8), 0x3f82),    // tie: to even (up)
        (1.0 + p(-8) + p(-20), 0x3f81), // above the tie
        (bits(0x7f7f_0000), 0x7f7f),    // largest finite bf16
        (bits(0x7f7f_8000), 0x7f80),    // the tie with 2^128: to even, infinity
        (f32::MAX, 0x7f80),
        (bits(0x0000_8000), 0x0000), // subnormal tie: to even (zero)
        (bits(0x0001_8000), 0x0002), // subnormal tie: to even (up)
        (bits(0x0000_8001), 0x0001), // above the tie
        (f32::NEG_INFINITY, 0xff80),
        (f32::NAN, 0x7fff), // canonical NaN
        (bits(0xffc0_1234), 0x7fff),
    ];
    let mut inputs: Vec<f32> = tf32_cases.iter().map(|c| c.0).collect();
    inputs.extend(bf16_cases.iter().map(|c| c.0));
    inputs.extend((0..=u32::MAX).step_by(7919).map(f32::from_bits));
    let n = inputs.len();
    let mut out = vec![0u32; 2 * n];
    let args = Args::new().arg(inputs.as_ptr()).arg(out.as_mut_ptr()).arg(n as i32);
    launch("selftest_mma_conversions", [16, 1, 1], [256, 1, 1], 0, args).unwrap();
    for (i, &(x, want)) in tf32_cases.iter().enumerate() {
        assert_eq!(out[i], want, "tf32({x:e}) [{:#010x}]", x.to_bits());
    }
    for (i, &(x, want)) in bf16_cases.iter().enumerate() {
        assert_eq!(
            out[n + tf32_cases.len() + i] & 0xffff,
            want as u32,
            "bf16({x:e}) [{:#010x}]",
            x.to_bits()
        );
    }
    for (i, &x) in inputs.iter().enumerate() {
        let (tf, pair) = (out[i], out[n + i]);
        if x.is_finite() {
            assert_eq!(tf, tf32_rna(x).to_bits(), "tf32({x:e}) [{:#010x}]", x.to_bits());
        }
        // cvt.rn.bf16x2.f32: round to nearest even (the half crate), NaN -> canonical 0x7fff.
        let rn = |v: f32| if v.is_nan() { 0x7fff } else { bf16::from_f32(v).to_bits() as u32 };
        assert_eq!(pair, rn(x) | rn(-x) << 16, "bf16x2({x:e}, {:e})", -x);
    }
    assert_no_diagnostics();
}
