//! The CPU emulator of CUDA kernels (`emu/`, `src/emu.rs`), tested with its own kernels in
//! `emu/selftest/*.cu`: results against plain Rust, planted synchronisation bugs against the
//! diagnostics they must raise; the tensor-core primitives in `emulator/mma.rs`. Run with `cargo test --release --features cuda-emu --test
//! emulator` (`-- --nocapture` shows the timings).
#![cfg(feature = "cuda-emu")]

use std::ffi::c_void;
use std::time::Instant;

use densenet::emu::{self, EmuError};
use half::{bf16, f16};

#[path = "emulator/mma.rs"]
mod mma;

/// Kernel arguments, each value in its own 8-byte slot (pointers and scalars).
#[derive(Default)]
struct Args(Vec<u64>);

impl Args {
    fn new() -> Self {
        Self::default()
    }
    fn arg<T: Copy>(mut self, value: T) -> Self {
        assert!(size_of::<T>() <= 8 && align_of::<T>() <= 8);
        let mut slot = 0u64;
        // SAFETY: T fits in and is no more aligned than the u64 slot.
        unsafe { (&mut slot as *mut u64).cast::<T>().write(value) };
        self.0.push(slot);
        self
    }
}

/// Launches `name` with `checks`; `buffers` are the device addresses handed to it.
fn launch_with(
    checks: emu::Checks,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    args: Args,
    buffers: &[u64],
) -> Result<(), EmuError> {
    let mut slots = args.0;
    let mut ptrs: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast::<c_void>()).collect();
    emu::set_checks(checks);
    // SAFETY: every test passes arguments of the kernel's parameter types, and buffers large
    // enough for what the kernel touches (which the memory check verifies where it is on).
    let result = unsafe { emu::launch(name, grid, block, shared_bytes, &mut ptrs, buffers) };
    emu::set_checks(emu::Checks::NONE);
    result
}

/// Launches `name` with the race check on; the caller's buffers behind pointer arguments
/// (plain host memory, so no memory check) must fit the kernel.
fn launch(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    args: Args,
) -> Result<(), EmuError> {
    let races = emu::Checks { races: true, ..emu::Checks::NONE };
    launch_with(races, name, grid, block, shared_bytes, args, &[])
}

/// Launches `name` with the emulator's memory and race checks on `buffers` (the kernel's
/// pointer arguments, which `args` must also hold).
fn launch_checked(
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: usize,
    args: Args,
    buffers: &[&emu::Buffer],
) -> Result<(), EmuError> {
    let addresses: Vec<u64> = buffers.iter().map(|b| b.addr(0)).collect();
    let checks = emu::Checks { memory: true, races: true, shuffle: None };
    launch_with(checks, name, grid, block, shared_bytes, args, &addresses)
}

fn assert_no_diagnostics() {
    let d = emu::take_diagnostics();
    assert_eq!(d.count, 0, "unexpected diagnostics: {:#?}", d.messages);
}

/// Deterministic pseudo-random numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next_u32(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 23) as f32
    }
}

fn matmul_cpu(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    c
}

/// C = A·B (m×k by k×n) by a tiled matmul kernel with `checks`, and the launch's outcome.
fn matmul_with(
    checks: emu::Checks,
    kernel: &str,
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f32>, Result<(), EmuError>) {
    let mut c = vec![f32::NAN; m * n];
    let grid = [n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1];
    let args = Args::new()
        .arg(a.as_ptr())
        .arg(b.as_ptr())
        .arg(c.as_mut_ptr())
        .arg(m as i32)
        .arg(n as i32)
        .arg(k as i32);
    let result = launch_with(checks, kernel, grid, [16, 16, 1], 0, args, &[]);
    (c, result)
}

/// The same with the race check, which must find nothing.
fn matmul_emu(kernel: &str, a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let (c, result) = matmul_with(emu::Checks { races: true, ..emu::Checks::NONE }, kernel, a, b, m, n, k);
    result.unwrap();
    c
}

fn random_matrix(rng: &mut Lcg, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}

fn max_abs_diff(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn kernel_names_list_the_self_tests_sorted() {
    let names: Vec<&str> = emu::kernel_names().collect();
    assert!(names.contains(&"selftest_matmul"));
    assert!(names.contains(&"selftest_warp_ops"));
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
}

#[test]
fn tiled_matmul_with_odd_sizes_matches_cpu() {
    let (m, k, n) = (37, 53, 29);
    let mut rng = Lcg(1);
    let a = random_matrix(&mut rng, m * k);
    let b = random_matrix(&mut rng, k * n);
    let got = matmul_emu("selftest_matmul", &a, &b, m, n, k);
    let want = matmul_cpu(&a, &b, m, n, k);
    assert!(max_abs_diff(&got, &want) < 1e-4, "max diff {}", max_abs_diff(&got, &want));
    assert_no_diagnostics();
}

#[test]
fn missing_trailing_syncthreads_is_a_race_and_gives_a_wrong_result() {
    let (m, k, n) = (37, 53, 29);
    let mut rng = Lcg(2);
    let a = random_matrix(&mut rng, m * k);
    let b = random_matrix(&mut rng, k * n);
    let want = matmul_cpu(&a, &b, m, n, k);
    // Every thread reaches the same barriers, so the synchronisation rules see nothing, but
    // fast threads overwrite the tiles before slow ones have read them — every time.
    let races = emu::Checks { races: true, ..emu::Checks::NONE };
    let (c, result) = matmul_with(races, "selftest_matmul_missing_sync", &a, &b, m, n, k);
    let err = result.expect_err("race unreported");
    assert!(max_abs_diff(&c, &want) > 0.1, "the race changed nothing");
    let d = emu::take_diagnostics();
    assert!(d.races >= 1 && d.count == d.races, "{d:#?}");
    assert_mentions(&d.messages, &["shared-memory race", "selftest_basic.cu"]);
    println!("{err}");
}

#[test]
fn block_reduction_with_warp_shuffles_equals_the_sum() {
    let n = 100_003usize; // not a multiple of the block size
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect(); // exact in f32
    let blocks = 7;
    let mut partial = vec![f32::NAN; blocks];
    let args = Args::new().arg(x.as_ptr()).arg(partial.as_mut_ptr()).arg(n as i32);
    launch("selftest_block_sum", [blocks as u32, 1, 1], [256, 1, 1], 0, args).unwrap();
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert_eq!(partial.iter().map(|&v| v as f64).sum::<f64>(), want);
    assert_no_diagnostics();
}

fn histogram_input(n: usize) -> Vec<u32> {
    let mut rng = Lcg(3);
    (0..n).map(|_| rng.next_u32()).collect()
}

fn histogram_cpu(x: &[u32], bins: u32) -> Vec<u32> {
    let mut h = vec![0u32; bins as usize];
    for &v in x {
        h[(v % bins) as usize] += 1;
    }
    h
}

#[test]
fn atomic_add_histogram_matches_cpu() {
    let (n, bins) = (50_000usize, 37u32);
    let x = histogram_input(n);
    let mut hist = vec![0u32; bins as usize];
    let args = Args::new().arg(x.as_ptr()).arg(hist.as_mut_ptr()).arg(n as i32).arg(bins as i32);
    launch("selftest_histogram", [13, 1, 1], [128, 1, 1], 0, args).unwrap();
    assert_eq!(hist, histogram_cpu(&x, bins));
    assert_no_diagnostics();
}

#[test]
fn dynamic_shared_memory_histogram_matches_cpu() {
    let (n, bins) = (50_000usize, 37u32);
    let x = histogram_input(n);
    let mut hist = vec![0u32; bins as usize];
    let args = Args::new().arg(x.as_ptr()).arg(hist.as_mut_ptr()).arg(n as i32).arg(bins as i32);
    let smem = bins as usize * size_of::<u32>();
    launch("selftest_histogram_shared", [9, 1, 1], [96, 1, 1], smem, args).unwrap();
    assert_eq!(hist, histogram_cpu(&x, bins));
    assert_no_diagnostics();
}

#[test]
fn atomics_from_many_blocks_are_exact() {
    let (blocks, threads) = (64u32, 128u32);
    let total = (blocks * threads) as i64;
    let mut ints = [0i32, i32::MIN, i32::MAX, 0, 0, 0, 0];
    let mut uints = [0u32, u32::MAX];
    let mut ull = 0u64;
    let mut f = 0.0f32;
    let mut d = 0.0f64;
    let args = Args::new()
        .arg(ints.as_mut_ptr())
        .arg(uints.as_mut_ptr())
        .arg(&mut ull as *mut u64)
        .arg(&mut f as *mut f32)
        .arg(&mut d as *mut f64);
    launch("selftest_atomics", [blocks, 1, 1], [threads, 1, 1], 0, args).unwrap();
    assert_eq!(
        ints,
        [
            total as i32,
            total as i32 - 1,
            1 - total as i32,
            -2 * total as i32,
            3 * total as i32,
            0x7fff_ffff,
            7
        ]
    );
    assert_eq!(uints, [(total % 1000) as u32, 0]);
    assert_eq!(ull, (total * (total - 1) / 2) as u64);
    assert_eq!(f, total as f32);
    assert_eq!(d, total as f64 * 0.5);
    assert_no_diagnostics();
}

#[test]
fn extern_shared_arrays_alias_one_dynamic_buffer() {
    let (rows, n) = (3usize, 50usize);
    let mut data: Vec<f32> = (0..rows * n).map(|i| i as f32).collect();
    let args = Args::new().arg(data.as_mut_ptr()).arg(n as i32);
    launch("selftest_reverse", [rows as u32, 1, 1], [64, 1, 1], n * 4, args).unwrap();
    for r in 0..rows {
        let want: Vec<f32> = (0..n).rev().map(|i| (r * n + i) as f32).collect();
        assert_eq!(&data[r * n..(r + 1) * n], &want[..], "row {r}");
    }
    assert_no_diagnostics();
}

#[test]
fn dynamic_shared_memory_starts_poisoned() {
    let mut out = vec![0u32; 64];
    let args = Args::new().arg(out.as_mut_ptr());
    launch("selftest_read_unwritten_shared", [1, 1, 1], [64, 1, 1], 64 * 4, args).unwrap();
    assert!(out.iter().all(|&v| v == u32::MAX), "{out:x?}");
    assert_no_diagnostics();
}

#[test]
fn thread_and_block_indices_cover_a_3d_launch() {
    let (grid, block) = ([3u32, 2, 2], [5u32, 3, 2]);
    let threads = (block[0] * block[1] * block[2]) as usize;
    let blocks = (grid[0] * grid[1] * grid[2]) as usize;
    let mut out = vec![u32::MAX; 8 * threads * blocks];
    launch("selftest_indices", grid, block, 0, Args::new().arg(out.as_mut_ptr())).unwrap();
    let mut i = 0;
    for (bz, by, bx) in zyx(grid[2], grid[1], grid[0]) {
        for (tz, ty, tx) in zyx(block[2], block[1], block[0]) {
            let want = [tx, ty, tz, bx, by, bz, 50302, 30202];
            assert_eq!(out[8 * i..8 * i + 8], want, "thread {i}");
            i += 1;
        }
    }
    assert_no_diagnostics();
}

/// (z, y, x) in row-major order with x fastest.
fn zyx(nz: u32, ny: u32, nx: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..nz).flat_map(move |z| (0..ny).flat_map(move |y| (0..nx).map(move |x| (z, y, x))))
}

#[test]
fn warp_collectives_match_their_definitions() {
    const OPS: usize = 19;
    let threads = 64usize;
    let input: Vec<i32> = (0..threads as i32).map(|t| (t * 37 + 11) % 100).collect();
    assert!(input.contains(&17) && input.contains(&5));
    let mut out = vec![i32::MIN; threads * OPS];
    let args = Args::new().arg(input.as_ptr()).arg(out.as_mut_ptr());
    launch("selftest_warp_ops", [1, 1, 1], [threads as u32, 1, 1], 0, args).unwrap();
    for t in 0..threads {
        let lane = t % 32;
        let warp = &input[t - lane..t - lane + 32];
        let v = |l: usize| warp[l];
        let bits =
            |p: &dyn Fn(i32) -> bool| (0..32).filter(|&l| p(v(l))).fold(0u32, |m, l| m | 1 << l) as i32;
        let want: [i32; OPS] = [
            v(lane * 7 % 32),
            if lane >= 3 { v(lane - 3) } else { v(lane) },
            if lane + 5 < 32 { v(lane + 5) } else { v(lane) },
            v(lane ^ 9),
            v(lane ^ 1),
            if lane % 16 + 2 < 16 { v(lane + 2) } else { v(lane) },
            bits(&|x| x & 1 == 1),
            warp.contains(&17) as i32,
            1,
            bits(&|x| x % 4 == v(lane) % 4),
            warp.iter().sum(),
            *warp.iter().min().unwrap(),
            *warp.iter().max().unwrap(),
            input.iter().filter(|&&x| x & 1 == 1).count() as i32,
            1,
            1,
            v(lane ^ 1),
            -1,
            v(lane ^ 2),
        ];
        assert_eq!(out[t * OPS..(t + 1) * OPS], want, "thread {t}");
    }
    assert_no_diagnostics();
}

#[test]
fn syncwarp_waits_only_for_lanes_that_have_not_exited() {
    let active = 45;
    let mut out = vec![-1i32; 48];
    let args = Args::new().arg(out.as_mut_ptr()).arg(active);
    launch("selftest_syncwarp_after_exit", [1, 1, 1], [48, 1, 1], 0, args).unwrap();
    let want: Vec<i32> = (0..48)
        .map(|t| {
            if t >= active {
                -1
            } else if t ^ 1 < active {
                t ^ 1
            } else {
                t
            }
        })
        .collect();
    assert_eq!(out, want);
    assert_no_diagnostics();
}

// ---- half / bfloat16 --------------------------------------------------------------------------

fn convert<T: Copy, U: Copy + Default>(kernel: &str, input: &[T]) -> Vec<U> {
    let mut out = vec![U::default(); input.len()];
    let args = Args::new().arg(input.as_ptr()).arg(out.as_mut_ptr()).arg(input.len() as i32);
    let blocks = input.len().div_ceil(256).min(64) as u32;
    launch(kernel, [blocks, 1, 1], [256, 1, 1], 0, args).unwrap();
    out
}

#[test]
fn half_and_bfloat16_conversions_round_known_patterns_to_nearest_even() {
    let p = |e: i32| 2f32.powi(e);
    let f16_cases: &[(f32, u16)] = &[
        (1.0, 0x3c00),
        (1.0 + p(-11), 0x3c00),          // tie -> even
        (1.0 + 3.0 * p(-11), 0x3c02),    // tie -> even (up)
        (1.0 + p(-11) + p(-20), 0x3c01), // just above the tie
        (0.1, 0x2e66),
        (-2.0, 0xc000),
        (65504.0, 0x7bff), // largest finite
        (65519.996, 0x7bff),
        (65520.0, 0x7c00), // tie with 2^16 -> inf
        (1e10, 0x7c00),
        (-1e10, 0xfc00),
        (f32::INFINITY, 0x7c00),
        (f32::NEG_INFINITY, 0xfc00),
        (f32::NAN, 0x7fff),
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (p(-14), 0x0400),          // smallest normal
        (p(-14) - p(-25), 0x0400), // tie between largest subnormal and it -> even
        (p(-24), 0x0001),          // smallest subnormal
        (-p(-24), 0x8001),
        (p(-25), 0x0000), // tie -> even (zero)
        (1.5 * p(-25), 0x0001),
        (3.0 * p(-25), 0x0002), // 1.5 ulp: tie -> even
        (5.0 * p(-25), 0x0002), // 2.5 ulp: tie -> even
        (p(-26), 0x0000),
    ];
    let (inputs, want): (Vec<f32>, Vec<u16>) = f16_cases.iter().copied().unzip();
    let got: Vec<u16> = convert("selftest_f32_to_f16", &inputs);
    for ((x, w), g) in inputs.iter().zip(&want).zip(&got) {
        assert_eq!(g, w, "f16({x:e}) = {g:#06x}, want {w:#06x}");
    }

    let bf16_cases: &[(f32, u16)] = &[
        (1.0, 0x3f80),
        (1.0 + p(-8), 0x3f80),       // tie -> even
        (1.0 + 3.0 * p(-8), 0x3f82), // tie -> even (up)
        (1.0 + p(-8) + p(-20), 0x3f81),
        (f32::MAX, 0x7f80),                    // rounds up to inf
        (f32::from_bits(0x7f7f_0000), 0x7f7f), // largest finite bf16
        (f32::NAN, 0x7fff),
        (f32::NEG_INFINITY, 0xff80),
        (-0.0, 0x8000),
        (f32::from_bits(0x0000_0001), 0x0000), // subnormal, rounds to zero
        (f32::from_bits(0x0000_8000), 0x0000), // tie -> even
        (f32::from_bits(0x0001_8000), 0x0002), // tie -> even (up)
        (f32::from_bits(0x0001_0000), 0x0001), // smallest bf16 subnormal
    ];
    let (inputs, want): (Vec<f32>, Vec<u16>) = bf16_cases.iter().copied().unzip();
    let got: Vec<u16> = convert("selftest_f32_to_bf16", &inputs);
    for ((x, w), g) in inputs.iter().zip(&want).zip(&got) {
        assert_eq!(g, w, "bf16({x:e}) = {g:#06x}, want {w:#06x}");
    }

    // From f64, rounded once (through f32 the first three would be rounded twice, wrongly).
    let q = |e: i32| 2f64.powi(e);
    let f64_cases: &[(f64, u16, u16)] = &[
        (1.0 + q(-11) + q(-40), 0x3c01, 0x3f80),
        (q(-25) + q(-60), 0x0001, 0x3300),
        (1.0 + q(-8) + q(-40), 0x3c04, 0x3f81),
        (1.0 + q(-11), 0x3c00, 0x3f80),
        (65520.0, 0x7c00, 0x4780),
        (65519.99, 0x7bff, 0x4780),
        (q(-133), 0x0000, 0x0001),
        (1e300, 0x7c00, 0x7f80),
        (-0.0, 0x8000, 0x8000),
        (f64::NAN, 0x7fff, 0x7fff),
    ];
    let inputs: Vec<f64> = f64_cases.iter().map(|c| c.0).collect();
    let mut out = vec![0u16; 2 * inputs.len()];
    let args = Args::new().arg(inputs.as_ptr()).arg(out.as_mut_ptr()).arg(inputs.len() as i32);
    launch("selftest_f64_to_small", [1, 1, 1], [32, 1, 1], 0, args).unwrap();
    for (i, &(x, h, b)) in f64_cases.iter().enumerate() {
        assert_eq!((out[2 * i], out[2 * i + 1]), (h, b), "f64 {x:e}");
    }

    let back: Vec<f32> = convert("selftest_f16_to_f32", &[0x0001u16, 0x03ff, 0x7c00, 0x8000, 0x3555]);
    assert_eq!(back[0], p(-24));
    assert_eq!(back[1], 1023.0 * p(-24));
    assert_eq!(back[2], f32::INFINITY);
    assert_eq!(back[3].to_bits(), 0x8000_0000);
    assert_eq!(back[4], 0.333_251_95);
    assert_no_diagnostics();
}

#[test]
fn half_and_bfloat16_conversions_match_the_half_crate() {
    // A sweep over all f32 bit patterns, plus every tie: the midpoint between each pair of
    // neighbouring 16-bit values (exact in f32).
    let mut x: Vec<f32> = (0..=u32::MAX).step_by(4099).map(f32::from_bits).collect();
    for b in 0..0x7c00u16 {
        let (lo, hi) = (f16::from_bits(b).to_f32(), f16::from_bits(b + 1).to_f32());
        x.extend([(lo + hi) / 2.0, -(lo + hi) / 2.0]);
    }
    for b in 0..0x7f80u16 {
        let (lo, hi) = (bf16::from_bits(b).to_f32(), bf16::from_bits(b + 1).to_f32());
        x.push(f32::from_bits(((lo.to_bits() as u64 + hi.to_bits() as u64) / 2) as u32));
    }
    let halves: Vec<u16> = convert("selftest_f32_to_f16", &x);
    let bhalves: Vec<u16> = convert("selftest_f32_to_bf16", &x);
    for ((&v, &h), &b) in x.iter().zip(&halves).zip(&bhalves) {
        if v.is_nan() {
            assert_eq!((h, b), (0x7fff, 0x7fff));
            continue;
        }
        assert_eq!(h, f16::from_f32(v).to_bits(), "f16({v:e}) [{:#010x}]", v.to_bits());
        assert_eq!(b, bf16::from_f32(v).to_bits(), "bf16({v:e}) [{:#010x}]", v.to_bits());
    }
    // From f64: a sweep over f64 bit patterns in the range where f16/bf16 are interesting.
    let mut rng = Lcg(6);
    let wide: Vec<f64> = (0..200_000)
        .map(|_| {
            let e = (rng.next_u32() % 300) as i32 - 150; // beyond both formats' ranges
            let m = 1.0 + (((rng.next_u32() as u64) << 20) ^ rng.next_u32() as u64) as f64 / 2f64.powi(52);
            let sign = if rng.next_u32() & 1 == 1 { -1.0 } else { 1.0 };
            sign * m * 2f64.powi(e)
        })
        .collect();
    let mut small = vec![0u16; 2 * wide.len()];
    let args = Args::new().arg(wide.as_ptr()).arg(small.as_mut_ptr()).arg(wide.len() as i32);
    launch("selftest_f64_to_small", [32, 1, 1], [256, 1, 1], 0, args).unwrap();
    for (i, &v) in wide.iter().enumerate() {
        let odd = round_to_odd_f32(v);
        let want = (f16::from_f32(odd).to_bits(), bf16::from_f32(odd).to_bits());
        assert_eq!((small[2 * i], small[2 * i + 1]), want, "f64 {v:e}");
    }
    // Back to f32: every 16-bit pattern.
    let all: Vec<u16> = (0..=u16::MAX).collect();
    let from_half: Vec<f32> = convert("selftest_f16_to_f32", &all);
    let from_bhalf: Vec<f32> = convert("selftest_bf16_to_f32", &all);
    for (&b, (&h, &bh)) in all.iter().zip(from_half.iter().zip(&from_bhalf)) {
        let (wh, wb) = (f16::from_bits(b).to_f32(), bf16::from_bits(b).to_f32());
        assert!(h.to_bits() == wh.to_bits() || (h.is_nan() && wh.is_nan()), "f16 {b:#06x}");
        assert!(bh.to_bits() == wb.to_bits() || (bh.is_nan() && wb.is_nan()), "bf16 {b:#06x}");
    }
    assert_no_diagnostics();
}

/// `x` rounded to f32 by rounding to odd, which makes a second rounding to f16 or bf16
/// correctly rounded (`half`'s own `from_f64` drops low mantissa bits before rounding).
fn round_to_odd_f32(x: f64) -> f32 {
    let t = x as f32;
    if t as f64 == x || !x.is_finite() {
        return t;
    }
    let mut magnitude = t.to_bits() & 0x7fff_ffff;
    if (t as f64).abs() > x.abs() {
        magnitude -= 1; // truncate toward zero
    }
    magnitude |= 1; // the odd one of the two neighbours
    f32::from_bits(magnitude | (x.is_sign_negative() as u32) << 31)
}

/// x*y + z in f64 if that is exact (x, y with at most 24 significant bits), else None.
fn exact_fma(x: f64, y: f64, z: f64) -> Option<f64> {
    let p = x * y; // exact
    let s = p + z;
    let bb = s - p;
    let err = (p - (s - bb)) + (z - bb); // TwoSum: p + z == s + err
    (err == 0.0 && s.is_finite()).then_some(s)
}

/// a+b, a*b, fma(a,b,c), a/b of the kernel `name` for 16-bit operands.
fn arith(name: &str, a: &[u16], b: &[u16], c: &[u16]) -> Vec<[u16; 4]> {
    let mut out = vec![0u16; 4 * a.len()];
    let args =
        Args::new().arg(a.as_ptr()).arg(b.as_ptr()).arg(c.as_ptr()).arg(out.as_mut_ptr()).arg(a.len() as i32);
    launch(name, [8, 1, 1], [128, 1, 1], 0, args).unwrap();
    out.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect()
}

#[test]
fn half_and_bfloat16_arithmetic_rounds_once() {
    let mut rng = Lcg(4);
    let n = 20_000;
    let finite16 = |rng: &mut Lcg, inf: u16| loop {
        let b = rng.next_u32() as u16;
        if b & 0x7fff < inf {
            break b;
        }
    };
    // f16: random operands, then a fused multiply-add whose exact result lies just above a tie
    // (3 * 683*2^-11 = 1 + 2^-11, + 2^-24): rounding through f32 would lose the 2^-24.
    let mut a: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7c00)).collect();
    let mut b: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7c00)).collect();
    let mut c: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7c00)).collect();
    a.push(f16::from_f32(3.0).to_bits());
    b.push(f16::from_f32(683.0 / 2048.0).to_bits());
    c.push(0x0001);
    let got = arith("selftest_f16_arith", &a, &b, &c);
    for i in 0..n {
        let [x, y, z] = [a[i], b[i], c[i]].map(|v| f16::from_bits(v).to_f64());
        let (xf, yf) = (x as f32, y as f32);
        let want = [
            Some(f16::from_f32(xf + yf)),
            Some(f16::from_f32(xf * yf)),
            exact_fma(x, y, z).map(|v| f16::from_f32(round_to_odd_f32(v))),
            Some(f16::from_f32(xf / yf)),
        ];
        for (j, w) in want.iter().enumerate() {
            if let Some(w) = w.filter(|w| !w.is_nan()) {
                assert_eq!(got[i][j], w.to_bits(), "f16 op {j} of {x} {y} {z}");
            }
        }
    }
    assert_eq!(got[n][2], 0x3c01, "fused multiply-add rounded twice");

    // bf16: 7 * 37 = 259 is a tie between 258 and 260; minus a tiny c must round down.
    let mut a: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7f80)).collect();
    let mut b: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7f80)).collect();
    let mut c: Vec<u16> = (0..n).map(|_| finite16(&mut rng, 0x7f80)).collect();
    a.push(bf16::from_f32(7.0).to_bits());
    b.push(bf16::from_f32(37.0).to_bits());
    c.push(bf16::from_f32(-(2f32.powi(-100))).to_bits());
    let got = arith("selftest_bf16_arith", &a, &b, &c);
    for i in 0..n {
        let [x, y, z] = [a[i], b[i], c[i]].map(|v| bf16::from_bits(v).to_f64());
        let (xf, yf) = (x as f32, y as f32);
        let want = [
            Some(bf16::from_f32(xf + yf)),
            Some(bf16::from_f32(xf * yf)),
            exact_fma(x, y, z).map(|v| bf16::from_f32(round_to_odd_f32(v))),
            Some(bf16::from_f32(xf / yf)),
        ];
        for (j, w) in want.iter().enumerate() {
            if let Some(w) = w.filter(|w| !w.is_nan()) {
                assert_eq!(got[i][j], w.to_bits(), "bf16 op {j} of {x} {y} {z}");
            }
        }
    }
    assert_eq!(got[n][2], 0x4381, "fused multiply-add rounded twice"); // 258
    assert_no_diagnostics();
}

// ---- planted bugs -----------------------------------------------------------------------------

/// `emu/selftest/selftest_bugs.cu:LINE` of the line marked `BUG: {marker}`.
fn bug_site(marker: &str) -> String {
    let src = include_str!("../emu/selftest/selftest_bugs.cu");
    let tag = format!("BUG: {marker}");
    let line = src.lines().position(|l| l.contains(&tag)).expect("marker") + 1;
    format!("emu/selftest/selftest_bugs.cu:{line}")
}

/// Launches a buggy kernel and returns its diagnostics, checking that the error and
/// `take_diagnostics` agree.
fn expect_diagnostics(name: &str, grid: [u32; 3], block: [u32; 3], args: Args) -> Vec<String> {
    let start = Instant::now();
    let err = launch(name, grid, block, 0, args).expect_err("the bug went unreported");
    assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    let EmuError::Diagnostics { kernel, count, messages } = err else { panic!("unexpected error {err}") };
    assert_eq!(kernel, name);
    let taken = emu::take_diagnostics();
    assert_eq!((taken.count, &taken.messages), (count, &messages));
    assert!(count >= 1 && !messages.is_empty());
    messages
}

fn assert_mentions(messages: &[String], needles: &[&str]) {
    let all = messages.join("\n");
    for needle in needles {
        assert!(all.contains(needle), "`{needle}` not in:\n{all}");
    }
}

#[test]
fn syncthreads_inside_if_is_reported() {
    let mut out = vec![0.0f32; 256];
    let msgs = expect_diagnostics(
        "selftest_bug_barrier_in_if",
        [1, 1, 1],
        [256, 1, 1],
        Args::new().arg(out.as_mut_ptr()),
    );
    assert_mentions(
        &msgs,
        &["block (0,0,0) thread (128,0,0)", "exits while 128 thread(s)", &bug_site("barrier-in-if")],
    );
}

#[test]
fn early_return_before_a_barrier_is_reported() {
    let n = 1000; // the 4th block of 256 has 232 threads past the end
    let x = vec![1.0f32; n];
    let mut out = vec![0.0f32; n];
    let args = Args::new().arg(x.as_ptr()).arg(out.as_mut_ptr()).arg(n as i32);
    let msgs = expect_diagnostics("selftest_bug_early_return", [4, 1, 1], [256, 1, 1], args);
    assert_eq!(msgs.len(), 1, "only the last block is wrong: {msgs:#?}");
    assert_mentions(
        &msgs,
        &["block (3,0,0) thread (232,0,0)", "exits while 232 thread(s)", &bug_site("barrier-after-return")],
    );
    assert!(out[..768].iter().all(|&v| v == 1.0), "the correct blocks completed");
}

#[test]
fn full_mask_shuffle_skipped_by_half_the_warp_is_reported() {
    let mut out = vec![0.0f32; 64];
    let msgs = expect_diagnostics(
        "selftest_bug_partial_shuffle",
        [1, 1, 1],
        [64, 1, 1],
        Args::new().arg(out.as_mut_ptr()),
    );
    assert_mentions(
        &msgs,
        &["thread (16,0,0)", "__shfl_xor_sync(mask 0xffffffff)", &bug_site("partial-shuffle")],
    );
}

#[test]
fn deadlock_is_reported_instead_of_hanging() {
    let mut out = vec![0.0f32; 64];
    let msgs =
        expect_diagnostics("selftest_bug_deadlock", [2, 1, 1], [64, 1, 1], Args::new().arg(out.as_mut_ptr()));
    assert_eq!(msgs.len(), 2, "one per block: {msgs:#?}");
    assert_mentions(
        &msgs,
        &[
            "deadlock",
            &format!(
                "threads 0-15 wait in __shfl_xor_sync(mask 0xffffffff) at {}",
                bug_site("deadlock-shuffle")
            ),
            &format!("threads 16-63 wait at __syncthreads {}", bug_site("deadlock-barrier")),
        ],
    );
}

#[test]
fn barriers_at_different_call_sites_are_reported() {
    let mut out = vec![0.0f32; 128];
    let msgs = expect_diagnostics(
        "selftest_bug_divergent_barriers",
        [1, 1, 1],
        [128, 1, 1],
        Args::new().arg(out.as_mut_ptr()),
    );
    assert_mentions(&msgs, &["divergent barrier", &bug_site("divergent-a"), &bug_site("divergent-b")]);
}

#[test]
fn trap_is_reported_and_other_blocks_finish() {
    let mut out = vec![0.0f32; 3 * 32];
    let msgs =
        expect_diagnostics("selftest_bug_trap", [3, 1, 1], [32, 1, 1], Args::new().arg(out.as_mut_ptr()));
    assert_mentions(&msgs, &["block (1,0,0) thread (3,0,0): __trap()", &bug_site("trap")]);
    assert!(out[..32].iter().chain(&out[64..]).all(|&v| v == 1.0));
}

// ---- launch API -------------------------------------------------------------------------------

#[test]
fn invalid_launches_are_refused() {
    let mut out = vec![0.0f32; 2048];
    let p = out.as_mut_ptr();
    let err = launch("no_such_kernel", [1, 1, 1], [1, 1, 1], 0, Args::new()).unwrap_err();
    assert!(matches!(err, EmuError::UnknownKernel(ref n) if n == "no_such_kernel"), "{err}");
    let refused = |grid: [u32; 3], block: [u32; 3], smem: usize, args: Args, why: &str| match launch(
        "selftest_bug_trap",
        grid,
        block,
        smem,
        args,
    ) {
        Err(EmuError::InvalidLaunch { kernel, reason }) => {
            assert_eq!(kernel, "selftest_bug_trap");
            assert!(reason.contains(why), "`{why}` not in `{reason}`");
        }
        other => panic!("{grid:?} {block:?} {smem}: {other:?}"),
    };
    let one = || Args::new().arg(p);
    refused([1, 1, 1], [1025, 1, 1], 0, one(), "exceeds (1024, 1024, 64)");
    refused([1, 1, 1], [64, 4, 8], 0, one(), "2048 threads per block exceed 1024");
    refused([0, 1, 1], [32, 1, 1], 0, one(), "must be >= 1");
    refused([1, 1, 1], [32, 1, 1], 300 * 1024, one(), "dynamic shared memory exceed");
    refused([1, 1, 1], [32, 1, 1], 0, Args::new(), "takes 1 argument(s), 0 given");
    assert!(out.iter().all(|&v| v == 0.0), "a refused launch ran");
    assert_no_diagnostics();
}

#[test]
fn concurrent_launches_from_several_threads_do_not_interfere() {
    let (m, k, n) = (33, 40, 21);
    std::thread::scope(|s| {
        for seed in 0..4 {
            s.spawn(move || {
                let mut rng = Lcg(100 + seed);
                for _ in 0..5 {
                    let a = random_matrix(&mut rng, m * k);
                    let b = random_matrix(&mut rng, k * n);
                    let got = matmul_emu("selftest_matmul", &a, &b, m, n, k);
                    assert!(max_abs_diff(&got, &matmul_cpu(&a, &b, m, n, k)) < 1e-4);
                }
                assert_no_diagnostics();
            });
        }
    });
}

// ---- timings ----------------------------------------------------------------------------------

/// Best wall time of `reps` runs of `f`, in seconds.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn timings_of_barriers_shuffles_and_matmul() {
    let (threads, iterations) = (256u32, 2000i32);
    let mut out = vec![0i32; threads as usize];
    let barrier = best_of(3, || {
        let args = Args::new().arg(iterations).arg(out.as_mut_ptr());
        launch("selftest_barrier_loop", [1, 1, 1], [threads, 1, 1], 0, args).unwrap();
    });
    assert_eq!(out[0], iterations);
    let shuffle = best_of(3, || {
        let args = Args::new().arg(iterations).arg(out.as_mut_ptr());
        launch("selftest_shuffle_loop", [1, 1, 1], [threads, 1, 1], 0, args).unwrap();
    });
    let per = |t: f64| t * 1e9 / (threads as f64 * iterations as f64);
    eprintln!(
        "emulator: {:.1} ns per thread per __syncthreads, {:.1} ns per thread per \
         __shfl_xor_sync (1 block of {threads} threads, {iterations} iterations)",
        per(barrier),
        per(shuffle)
    );

    let mut rng = Lcg(5);
    for (m, k, n) in [(37, 53, 29), (64, 64, 64)] {
        let a = random_matrix(&mut rng, m * k);
        let b = random_matrix(&mut rng, k * n);
        let t = best_of(5, || {
            matmul_emu("selftest_matmul", &a, &b, m, n, k);
        });
        eprintln!("emulator: tiled matmul {m}x{k} . {k}x{n} (16x16 blocks): {:.3} ms", t * 1e3);
    }
    assert_no_diagnostics();
}

// ---- memory and race checks -------------------------------------------------------------------

/// `emu/selftest/selftest_checks.cu:LINE` of the line marked `BUG: {marker}`.
fn check_site(marker: &str) -> String {
    let src = include_str!("../emu/selftest/selftest_checks.cu");
    let tag = format!("BUG: {marker}");
    let line = src.lines().position(|l| l.contains(&tag)).expect("marker") + 1;
    format!("emu/selftest/selftest_checks.cu:{line}")
}

/// A device buffer holding `values`.
fn buffer_of(values: &[f32]) -> emu::Buffer {
    let mut b = emu::Buffer::uninit(values.len() * 4).unwrap();
    b.write(0, bytemuck::cast_slice(values));
    b
}

fn floats(b: &emu::Buffer) -> Vec<f32> {
    bytemuck::cast_slice(b.bytes()).to_vec()
}

/// Runs a planted bug in one block under the checks and returns its findings, printed for the
/// record.
fn expect_findings(
    name: &str,
    block: [u32; 3],
    shared_bytes: usize,
    args: Args,
    buffers: &[&emu::Buffer],
) -> emu::Diagnostics {
    let err = launch_checked(name, [1, 1, 1], block, shared_bytes, args, buffers)
        .expect_err("the bug went unreported");
    let EmuError::Diagnostics { messages, .. } = err else { panic!("unexpected error {err}") };
    let d = emu::take_diagnostics();
    assert_eq!(d.messages, messages);
    assert_eq!(d.count, d.races + d.memory_errors, "only findings of the checks: {messages:#?}");
    for m in &messages {
        println!("{m}");
    }
    d
}

/// One memory error and nothing else.
fn expect_memory_error(
    name: &str,
    block: [u32; 3],
    shared_bytes: usize,
    args: Args,
    buffers: &[&emu::Buffer],
) -> Vec<String> {
    let d = expect_findings(name, block, shared_bytes, args, buffers);
    assert_eq!((d.memory_errors, d.races), (1, 0), "{:#?}", d.messages);
    d.messages
}

#[test]
fn missing_barrier_between_shared_write_and_read_is_a_race() {
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let (x, out) = (buffer_of(&input), buffer_of(&[0.0; 64]));
    let args = Args::new().arg(x.ptr()).arg(out.ptr());
    let d = expect_findings("selftest_race_missing_barrier", [64, 1, 1], 0, args, &[&x, &out]);
    assert_eq!((d.races, d.memory_errors), (1, 0), "one pair of sites: {:#?}", d.messages);
    assert_mentions(
        &d.messages,
        &[
            "shared-memory race",
            "`s` (256 bytes, declared at",
            &check_site("race-write"),
            &check_site("race-read"),
        ],
    );
    // With the barrier: clean, and the mirror is right.
    let args = Args::new().arg(x.ptr()).arg(out.ptr());
    launch_checked("selftest_race_with_barrier", [1, 1, 1], [64, 1, 1], 0, args, &[&x, &out]).unwrap();
    assert_eq!(floats(&out), input.iter().rev().copied().collect::<Vec<_>>());
}

#[test]
fn warp_synchronous_reduction_without_syncwarp_is_a_race() {
    let input: Vec<f32> = (0..64).map(|i| (i % 7) as f32).collect();
    let (x, out) = (buffer_of(&input), buffer_of(&[0.0]));
    let args = Args::new().arg(x.ptr()).arg(out.ptr());
    let d = expect_findings("selftest_race_warp_synchronous", [64, 1, 1], 0, args, &[&x, &out]);
    // One per pair of sites: the unrolled loop has several.
    assert!(d.races >= 1 && d.memory_errors == 0, "{:#?}", d.messages);
    assert_mentions(
        &d.messages,
        &["shared-memory race", "with no barrier in between", &check_site("warp-synchronous")],
    );
    let args = Args::new().arg(x.ptr()).arg(out.ptr());
    launch_checked("selftest_warp_reduction_with_syncwarp", [1, 1, 1], [64, 1, 1], 0, args, &[&x, &out])
        .unwrap();
    assert_eq!(floats(&out), vec![input.iter().sum::<f32>()]);
}

#[test]
fn one_past_the_end_global_write_is_reported() {
    let out = buffer_of(&[0.0; 37]);
    let args = Args::new().arg(out.ptr()).arg(37i32);
    let msgs = expect_memory_error("selftest_oob_global_write", [64, 1, 1], 0, args, &[&out]);
    assert_mentions(
        &msgs,
        &["out of bounds", "byte 148 of a 148-byte buffer", &check_site("one-past-the-end")],
    );
}

#[test]
fn negative_shared_index_is_reported() {
    let out = buffer_of(&[0.0; 32]);
    let msgs = expect_memory_error(
        "selftest_negative_shared_index",
        [32, 1, 1],
        0,
        Args::new().arg(out.ptr()),
        &[&out],
    );
    assert_mentions(&msgs, &["4-byte read", "before `s`", &check_site("negative-shared-index")]);
}

#[test]
fn read_of_never_written_device_memory_is_reported() {
    let x = emu::Buffer::uninit(40 * 4).unwrap();
    let out = buffer_of(&[0.0; 40]);
    let args = Args::new().arg(x.ptr()).arg(out.ptr()).arg(40i32);
    let msgs = expect_memory_error("selftest_copy", [64, 1, 1], 0, args, &[&x, &out]);
    assert_mentions(&msgs, &["uninitialised device memory", &check_site("uninitialised-read")]);
    assert!(floats(&out).iter().all(|v| v.is_nan()), "fresh buffers are poisoned with NaN");
}

#[test]
fn read_beyond_the_dynamic_shared_memory_is_reported() {
    let out = buffer_of(&[0.0; 16]);
    let msgs = expect_memory_error(
        "selftest_dynamic_shared_overrun",
        [16, 1, 1],
        16 * 4,
        Args::new().arg(out.ptr()),
        &[&out],
    );
    assert_mentions(&msgs, &["beyond the 64 bytes", &check_site("dynamic-overrun")]);
}

#[test]
fn buffer_not_handed_to_the_launch_is_reported() {
    let out = buffer_of(&[0.0; 37]);
    let args = Args::new().arg(out.ptr()).arg(36i32);
    let msgs = expect_memory_error("selftest_oob_global_write", [64, 1, 1], 0, args, &[]);
    assert_mentions(&msgs, &["not handed to the launch"]);
}

#[test]
fn write_the_instrumentation_cannot_see_is_caught_by_the_guard_zone() {
    let (out, x) = (buffer_of(&[0.0; 5]), buffer_of(&[1.0]));
    let args = Args::new().arg(out.ptr()).arg(x.ptr()).arg(5i32).arg(4i32);
    let msgs = expect_memory_error("selftest_oob_memcpy", [32, 1, 1], 0, args, &[&out, &x]);
    assert_mentions(&msgs, &["4 byte(s) of the guard zone after a 20-byte buffer were overwritten"]);
    // The guard zone is restored: the next clean launch finds nothing.
    let args = Args::new().arg(out.ptr()).arg(4i32);
    launch_checked("selftest_oob_global_write", [1, 1, 1], [4, 1, 1], 0, args, &[&out]).unwrap();
}

/// The order in which the threads of one 64-thread block run, with `checks`.
fn arrival_order(checks: emu::Checks) -> Vec<u32> {
    let (mut counter, mut ticket) = (vec![0u32], vec![0u32; 64]);
    let args = Args::new().arg(counter.as_mut_ptr()).arg(ticket.as_mut_ptr());
    launch_with(checks, "selftest_arrival_order", [1, 1, 1], [64, 1, 1], 0, args, &[]).unwrap();
    ticket
}

#[test]
fn shuffled_order_is_random_per_seed_and_results_of_correct_kernels_do_not_change() {
    let fifo = arrival_order(emu::Checks::NONE);
    assert_eq!(fifo, (0..64).collect::<Vec<u32>>(), "without shuffling threads run in order");
    let shuffled = |seed| arrival_order(emu::Checks { shuffle: Some(seed), ..emu::Checks::NONE });
    let (a, b) = (shuffled(1), shuffled(2));
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, fifo, "a permutation");
    assert_ne!(a, fifo);
    assert_ne!(a, b, "another seed, another order");
    assert_eq!(a, shuffled(1), "the same seed, the same order");

    let (m, k, n) = (37, 53, 29);
    let mut rng = Lcg(3);
    let (x, y) = (random_matrix(&mut rng, m * k), random_matrix(&mut rng, k * n));
    let plain = matmul_emu("selftest_matmul", &x, &y, m, n, k);
    for seed in [5, 6] {
        let checks = emu::Checks { shuffle: Some(seed), races: true, memory: false };
        let (c, result) = matmul_with(checks, "selftest_matmul", &x, &y, m, n, k);
        result.unwrap();
        assert_eq!(c, plain, "seed {seed}");
    }
    assert_no_diagnostics();
}
