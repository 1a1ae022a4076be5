//! Every CUDA kernel of `kernels/*.cu` against the cpu backend on random inputs of awkward
//! sizes (batch 3, 7×5 and 37×41 images, channel counts 13 and 37 — not multiples of 8 or of
//! a 32-channel tile — matrices at an offset with a pitch wider than their columns), through
//! the launch wrappers every device shares. Each case runs twice: on the CPU emulator
//! (feature `cuda-emu`, `<module>::emulated::<case>`) and on a GPU (`<module>::gpu::<case>`).
//!
//! Own harness (`harness = false`, libtest-mimic, libtest's output and filters): whether a GPU
//! is usable is only known at run time, and libtest cannot ignore a test then. Without one the
//! GPU cases are reported as ignored, with the reason printed once, so that no GPU test passes
//! without having run; with `DENSENET_REQUIRE_GPU=1` they run anyway and fail. Plain
//! `#[test]` functions are not collected here: every test is a [`Trial`] listed in `main`
//! (libtest-mimic turns a panic into a failure with its message).
//!
//! Output checks ([`Bench::check`]): every buffer starts with random values where an op reads
//! or writes and NaN patterns with distinct payloads (mixed with random finite values)
//! everywhere else — padding, pitch columns, neighbouring columns. Inside an op's output the
//! device must agree with the cpu backend to a relative error ‖emu − cpu‖/‖cpu‖ ≤ [`TOL`] =
//! 1e-5 for every kernel here (summation orders differ, so bit-equality is not expected), or
//! [`TOL_BF16`] for an output stored as bf16; a kernel that reads padding turns its output into
//! NaN and fails that.
//!
//! Precisions: a case runs at fp32 unless declared `<case> @ tf32` or `@ bf16`; at bf16 the
//! activation buffers ([`Bench::matrix`], [`Bench::storage`]) are bf16 on both backends and
//! everything else f32, as the network allocates them. Every element outside
//! the output must still hold its initial bits, on both backends: a stray write is caught bit
//! for bit even where it would store a plausible value.
//!
//! Coverage (emulator): every production kernel must be claimed by a case, and each case
//! checks that it really launched the kernels it claims; emulator diagnostics must be zero.

use densenet::backend::cpu::{CpuBackend, CpuBuf};
use densenet::backend::cuda::{CudaBackend, Device, DeviceBuf, KernelBackend};
use densenet::backend::prelude::*;
use densenet::backend::{BnRef, Category, Mat};
use densenet::precision::{bf16_bits, bf16_value};
use densenet::{Dtype, Precision};
use libtest_mimic::{Arguments, Trial};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::process::ExitCode;

/// Default tolerance: relative error of a kernel against the cpu backend.
pub const TOL: f64 = 1e-5;

/// Tolerance of an output stored as bf16 (8 significant bits). Both backends compute it in f32
/// from the same bf16 inputs and bf16-rounded GEMM operands, so their f32 values agree to the
/// accumulation order (≤ K·2⁻²⁴ relative over a depth K, ~√K·2⁻²⁴ typically) and round to the
/// same bf16 value unless a rounding boundary lies between them; such an element then differs
/// by one bf16 ulp, at most 2⁻⁷ of its value. The share of elements that straddle a boundary is
/// about that f32 disagreement over the bf16 ulp, ≤ K·2⁻¹⁶ (7% for the deepest GEMM here,
/// K = 4551; ≤ 0.1% typically), so ‖emu − cpu‖/‖cpu‖ ≲ 2⁻⁷·√(K·2⁻¹⁶) ≤ 2⁻⁸ = 3.9e-3, which
/// is the bound: a quarter of all elements one ulp apart. A wrong product (fragment layout,
/// tile, mask) moves outputs by O(1).
pub const TOL_BF16: f64 = 1.0 / 256.0;

/// Set to 1 to make GPU cases fail, instead of being ignored, when no GPU is usable.
const REQUIRE_GPU: &str = "DENSENET_REQUIRE_GPU";

/// Bit patterns of the NaNs that fill memory no op may touch: a quiet NaN with a payload and a
/// negative one with another, so that a kernel copying one of them to a wrong place, or
/// producing a NaN of its own there, differs from the expected bits.
const POISON: [u32; 2] = [0x7fc0_1234, 0xffc0_5678];

/// The same data on the cpu backend (`cpu`) and on the device under test (`emu`), and the
/// values both were created with (what every element outside an op's output must keep).
pub struct Pair<D: Device> {
    pub cpu: CpuBuf,
    pub emu: DeviceBuf<D>,
    pub init: Vec<f32>,
}

pub struct Bench<'d, D: Device> {
    pub cpu: CpuBackend,
    pub emu: &'d KernelBackend<D>,
    pub rng: ChaCha8Rng,
    /// The dtype of activation buffers: the precision's storage.
    pub activations: Dtype,
    /// Whether [`matrix`](Self::matrix), [`storage`](Self::storage) and
    /// [`weights`](Self::weights) start on 4-element boundaries with pitches that are
    /// multiples of 4, which the fused GEMMs read with vector loads, instead of at odd offsets
    /// with odd pitches, which they read element by element.
    pub aligned: bool,
}

impl<'d, D: Device> Bench<'d, D> {
    /// The device under test against a cpu backend of the same precision (so that a tf32
    /// kernel is compared with the cpu's products of the same rounded operands); each
    /// precision draws its own inputs.
    pub fn new(device: &'d KernelBackend<D>, seed: u64) -> Self {
        let precision = device.precision();
        let seed = seed ^ (precision as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Bench {
            cpu: CpuBackend::new().with_precision(precision),
            emu: device,
            rng: ChaCha8Rng::seed_from_u64(seed),
            activations: precision.storage(),
            aligned: false,
        }
    }

    /// `values` on both backends, in f32 buffers.
    pub fn pair(&mut self, values: &[f32]) -> Pair<D> {
        self.pair_as(values, Dtype::F32)
    }

    /// `values` on both backends, in buffers of `dtype` (`init` holds them as stored).
    pub fn pair_as(&mut self, values: &[f32], dtype: Dtype) -> Pair<D> {
        let mut cpu = self.cpu.alloc_as(values.len(), dtype, Category::Workspace).unwrap();
        self.cpu.upload(&mut cpu, 0, values).unwrap();
        let mut emu = self.emu.alloc_as(values.len(), dtype, Category::Workspace).unwrap();
        self.emu.upload(&mut emu, 0, values).unwrap();
        let init = match dtype {
            Dtype::F32 => values.to_vec(),
            Dtype::Bf16 => values.iter().map(|&v| bf16_value(bf16_bits(v))).collect(),
        };
        Pair { cpu, emu, init }
    }

    pub fn uniform(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// A `len`-element buffer of `dtype` holding `value(rng, i)` at every element `i` inside
    /// `regions` and poison (see [`POISON`]; at bf16 every NaN is stored as 0x7fff) everywhere
    /// else.
    pub fn fill(
        &mut self,
        len: usize,
        regions: &[Mat],
        dtype: Dtype,
        mut value: impl FnMut(&mut ChaCha8Rng, usize) -> f32,
    ) -> Pair<D> {
        let inside = mask(len, regions);
        let values: Vec<f32> = (0..len)
            .map(|i| match (inside[i], self.rng.random_range(0..4)) {
                (true, _) => value(&mut self.rng, i),
                (false, k @ 0..2) => f32::from_bits(POISON[k]),
                (false, _) => self.rng.random_range(-4.0..4.0),
            })
            .collect();
        self.pair_as(&values, dtype)
    }

    /// A `len`-float buffer uniform in [lo, hi) inside `regions`, poison elsewhere.
    pub fn poisoned(&mut self, len: usize, regions: &[Mat], lo: f32, hi: f32) -> Pair<D> {
        self.fill(len, regions, Dtype::F32, |rng, _| rng.random_range(lo..hi))
    }

    /// A random rows × cols activation matrix (of the [`activations`](Self::activations)
    /// dtype) at offset 3 with pitch cols + 5, poison around it.
    /// (At offset 4 with pitch cols + 5 rounded up to a multiple of 4 when `aligned`.)
    pub fn matrix(&mut self, rows: usize, cols: usize, lo: f32, hi: f32) -> (Pair<D>, Mat) {
        let m = if self.aligned {
            Mat { offset: 4, rows, cols, ld: (cols + 5).next_multiple_of(4) }
        } else {
            Mat { offset: 3, rows, cols, ld: cols + 5 }
        };
        (self.fill(m.offset + rows * m.ld + 2, &[m], self.activations, |rng, _| rng.random_range(lo..hi)), m)
    }

    /// An op's activation output (of the [`activations`](Self::activations) dtype): columns
    /// [4, 4 + cols) of a rows × (cols + 9) storage at offset 2, with 5 more elements after it
    /// (so that the buffer exists with 0 rows too). The output starts random (an op that
    /// accumulates adds to it, one that overwrites must not read it), its neighbours are poison.
    /// (At offset 4 + 4 with pitch cols + 9 rounded up to a multiple of 4 when `aligned`.)
    pub fn storage(&mut self, rows: usize, cols: usize) -> (Pair<D>, Mat) {
        let m = if self.aligned {
            Mat { offset: 4 + 4, rows, cols, ld: (cols + 9).next_multiple_of(4) }
        } else {
            Mat { offset: 2 + 4, rows, cols, ld: cols + 9 }
        };
        (
            self.fill(m.offset - 4 + rows * m.ld + 5, &[m], self.activations, |rng, _| {
                rng.random_range(-1.0..1.0)
            }),
            m,
        )
    }

    /// A random `len`-float weight at [`w_off`](Self::w_off) of a slightly larger buffer,
    /// poison around it.
    pub fn weights(&mut self, len: usize) -> Pair<D> {
        let off = self.w_off();
        self.poisoned(off + len + 3, &[Mat::dense(off, 1, len)], -1.0, 1.0)
    }

    /// Where [`weights`](Self::weights) start: [`W_OFF`], or 4 when `aligned`.
    pub fn w_off(&self) -> usize {
        if self.aligned { 4 } else { W_OFF }
    }

    /// Per-channel [mean | var] and [γ | β] of a BN over `c` channels, γ of both signs.
    pub fn bn_buffers(&mut self, c: usize) -> (Pair<D>, Pair<D>) {
        let mut stats = self.uniform(c, -0.5, 0.5);
        stats.extend(self.uniform(c, 0.2, 2.0));
        let mut params: Vec<f32> = (0..c)
            .map(|_| self.rng.random_range(0.5..1.5) * if self.rng.random_bool(0.2) { -1.0 } else { 1.0 })
            .collect();
        params.extend(self.uniform(c, -0.3, 0.3));
        (self.pair(&stats), self.pair(&params))
    }

    /// The output check of every case. `regions` are the op's outputs in `p`: inside each the
    /// device's values against the cpu's, relative error ≤ [`TOL`], or [`TOL_BF16`] when `p` is
    /// bf16 (per region, printed; the largest is returned); every other element must still hold
    /// its initial bits on both backends.
    pub fn check(&self, what: &str, p: &Pair<D>, regions: &[Mat]) -> f64 {
        let tol = match p.emu.dtype() {
            Dtype::F32 => TOL,
            Dtype::Bf16 => TOL_BF16,
        };
        let emu = self.emu.download(&p.emu, 0, p.init.len()).unwrap();
        let cpu = self.cpu.download(&p.cpu, 0, p.init.len()).unwrap();
        let inside = mask(p.init.len(), regions);
        for (side, got) in [("device", &emu), ("cpu backend", &cpu)] {
            let changed: Vec<usize> =
                (0..got.len()).filter(|&i| !inside[i] && got[i].to_bits() != p.init[i].to_bits()).collect();
            if let Some(&i) = changed.first() {
                panic!(
                    "{what}: the {side} changed {} elements outside the output, the first at {i}: \
                     {:#010x} ({}) became {:#010x} ({})",
                    changed.len(),
                    p.init[i].to_bits(),
                    p.init[i],
                    got[i].to_bits(),
                    got[i]
                );
            }
        }
        let mut worst_err = 0.0f64;
        for (k, &m) in regions.iter().enumerate() {
            let name = if regions.len() > 1 { format!("{what} [output {k}]") } else { what.to_string() };
            let all: Vec<usize> = (0..m.rows).flat_map(|r| m.at(r, 0)..m.at(r, 0) + m.cols).collect();
            // NaN where the cpu backend has NaN (NaN passes through ReLU and pooling as in
            // PyTorch), and the relative error over the other elements.
            if let Some(&i) = all.iter().find(|&&i| emu[i].is_nan() != cpu[i].is_nan()) {
                panic!("{name}: element {i}: device {} cpu {}", emu[i], cpu[i]);
            }
            let index: Vec<usize> = all.into_iter().filter(|&i| !cpu[i].is_nan()).collect();
            let got: Vec<f32> = index.iter().map(|&i| emu[i]).collect();
            let want: Vec<f32> = index.iter().map(|&i| cpu[i]).collect();
            let err = rel_error(&got, &want);
            println!("{name}: relative error {err:.2e}");
            if err.is_nan() || err > tol {
                // The first element furthest off (a NaN first), to point at the bug.
                let off = |j: usize| {
                    let d = (f64::from(got[j]) - f64::from(want[j])).abs();
                    if d.is_nan() { f64::INFINITY } else { d }
                };
                let j = (0..got.len()).rev().max_by(|&a, &b| off(a).total_cmp(&off(b))).unwrap_or(0);
                panic!(
                    "{name}: relative error {err:.3e} > {tol:.1e}; worst: element {} (row {}, column {}): \
                     device {} cpu {}",
                    index[j],
                    j / m.cols.max(1),
                    j % m.cols.max(1),
                    got[j],
                    want[j]
                );
            }
            worst_err = worst_err.max(err);
        }
        worst_err
    }
}

/// Offset of a weight inside its buffer ([`Bench::weights`]).
pub const W_OFF: usize = 2;

/// Which of `len` elements lie inside one of `regions`.
fn mask(len: usize, regions: &[Mat]) -> Vec<bool> {
    let mut inside = vec![false; len];
    for m in regions {
        (0..m.rows).for_each(|r| inside[m.at(r, 0)..][..m.cols].fill(true));
    }
    inside
}

pub fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (f64::from(x) - f64::from(y)).powi(2);
        n += f64::from(y).powi(2);
    }
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

pub fn bn_cpu<'a, D: Device>(stats: &'a Pair<D>, params: &'a Pair<D>, c: usize) -> BnRef<'a, CpuBuf> {
    BnRef { stats: &stats.cpu, mean: 0, var: c, params: &params.cpu, gamma: 0, beta: c }
}

pub fn bn_emu<'a, D: Device>(stats: &'a Pair<D>, params: &'a Pair<D>, c: usize) -> BnRef<'a, DeviceBuf<D>> {
    BnRef { stats: &stats.emu, mean: 0, var: c, params: &params.emu, gamma: 0, beta: c }
}

/// One case of a kernel family, instantiated for each device.
pub struct Case {
    pub name: &'static str,
    /// The precision the device (and the cpu backend it is compared with) computes in.
    pub precision: Precision,
    /// The kernels the case claims to launch (checked on the emulator).
    #[cfg_attr(not(feature = "cuda-emu"), allow(dead_code))]
    pub kernels: &'static [&'static str],
    pub gpu: fn(&CudaBackend),
    #[cfg(feature = "cuda-emu")]
    pub emulated: fn(&densenet::backend::cuda::EmuBackend),
}

/// The precision a case names after its `@` (fp32 when it names none).
pub fn case_precision(named: &[&str]) -> Precision {
    named.first().map_or(Precision::Fp32, |p| p.parse().expect("a precision"))
}

/// Declares a module's cases with the kernels each covers: `pub const COVERED` and `pub fn
/// cases()`, from which `main` makes `<module>::emulated::<case>` and `<module>::gpu::<case>`.
/// A case is `fn <case><D: Device>(device: &KernelBackend<D>)`; `<case> @ tf32 => [...]` runs
/// the same function on a device computing in tf32, as the case `<case>_tf32` (likewise
/// `@ bf16`).
#[macro_export]
macro_rules! kernel_cases {
    ($($case:ident $(@ $precision:ident)? => [$($kernel:literal),* $(,)?]),* $(,)?) => {
        /// Every kernel some case of this module claims.
        #[cfg_attr(not(feature = "cuda-emu"), allow(dead_code))]
        pub const COVERED: &[&str] = &[$($($kernel,)*)*];

        /// The cases of this module.
        pub fn cases() -> Vec<$crate::Case> {
            vec![$(
                $crate::Case {
                    name: concat!(stringify!($case) $(, "_", stringify!($precision))?),
                    precision: $crate::case_precision(&[$(stringify!($precision))?]),
                    kernels: &[$($kernel),*],
                    gpu: |b| $case(b),
                    #[cfg(feature = "cuda-emu")]
                    emulated: |b| $case(b),
                },
            )*]
        }
    };
}

mod conv;
mod conv1x1;
mod conv3x3;
mod dtypes;
/// One module per kernel family.
mod elementwise;
mod head;
mod pool;
mod roundoff;
mod transition;
mod unfused;

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let families: [(&str, Vec<Case>); 10] = [
        ("elementwise", elementwise::cases()),
        ("conv1x1", conv1x1::cases()),
        ("conv3x3", conv3x3::cases()),
        ("conv", conv::cases()),
        ("transition", transition::cases()),
        ("pool", pool::cases()),
        ("head", head::cases()),
        ("unfused", unfused::cases()),
        ("roundoff", roundoff::cases()),
        ("dtypes", dtypes::cases()),
    ];
    let require = std::env::var(REQUIRE_GPU).is_ok_and(|v| v == "1");
    // Probed once so that the reason is printed once; each case opens its own backend.
    let unusable = CudaBackend::new(0).err().map(|e| e.to_string());
    let ignore_gpu = unusable.is_some() && !require;
    // On stderr: `--list` output on stdout is parsed by tools (cargo nextest).
    if let (Some(reason), true, false) = (&unusable, ignore_gpu, args.list) {
        eprintln!("GPU cases ignored: {reason} (set {REQUIRE_GPU}=1 to make them fail)");
    }
    let mut trials = Vec::new();
    for (family, cases) in families {
        for case in cases {
            #[cfg(feature = "cuda-emu")]
            trials.push(Trial::test(format!("{family}::emulated::{}", case.name), move || {
                on_emulator(case.kernels, case.precision, case.emulated);
                Ok(())
            }));
            trials.push(
                Trial::test(format!("{family}::gpu::{}", case.name), move || {
                    on_gpu(case.precision, case.gpu);
                    Ok(())
                })
                .with_ignored_flag(ignore_gpu),
            );
        }
    }
    #[cfg(feature = "cuda-emu")]
    {
        // (The wrappers' rejection of bad shapes is tests/backend_contract.rs's, on every backend.)
        let plain: [(&str, fn()); 2] = [
            ("every_kernel_has_an_emulated_test", every_kernel_has_an_emulated_test),
            (
                "the_kernel_table_lists_exactly_the_emulated_kernels",
                the_kernel_table_lists_exactly_the_emulated_kernels,
            ),
        ];
        trials.extend(plain.map(|(name, test)| {
            Trial::test(name, move || {
                test();
                Ok(())
            })
        }));
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Runs a case on the GPU; without a usable one (only reached with `DENSENET_REQUIRE_GPU=1`,
/// or when the GPU failed after the probe) the case fails.
fn on_gpu(precision: Precision, case: fn(&CudaBackend)) {
    match CudaBackend::new(0).and_then(|b| b.with_precision(precision)) {
        Ok(b) => case(&b),
        Err(e) => panic!("no usable GPU: {e}"),
    }
}

/// Runs a case on the emulator under its memory and race checks, with the threads of every
/// block in a shuffled order, and checks that no diagnostic was raised and that every kernel
/// the case claims was launched.
#[cfg(feature = "cuda-emu")]
pub fn on_emulator(
    kernels: &[&str],
    precision: Precision,
    case: impl FnOnce(&densenet::backend::cuda::EmuBackend),
) {
    use densenet::emu;
    let checks = emu::Checks::all(SHUFFLE_SEED);
    emu::set_checks(checks);
    emu::take_diagnostics();
    emu::take_launches();
    case(&densenet::backend::cuda::EmuBackend::new().unwrap().with_precision(precision).unwrap());
    let diagnostics = emu::take_diagnostics();
    assert_eq!(diagnostics.count, 0, "with {checks:?}: {:#?}", diagnostics.messages);
    let launched: std::collections::BTreeSet<&str> = emu::take_launches().into_iter().collect();
    for k in kernels {
        assert!(launched.contains(k), "case claims `{k}` but launched {launched:?}");
    }
}

/// Seed of the shuffled thread order of the emulated cases (fixed, so that a failure repeats).
#[cfg(feature = "cuda-emu")]
const SHUFFLE_SEED: u64 = 0x5eed;

#[cfg(feature = "cuda-emu")]
fn every_kernel_has_an_emulated_test() {
    let production: Vec<&str> =
        densenet::emu::kernel_names().filter(|k| !k.starts_with("selftest_")).collect();
    println!("kernels: {production:?}");
    assert!(!production.is_empty());
    let covered: Vec<&str> = [
        elementwise::COVERED,
        conv1x1::COVERED,
        conv3x3::COVERED,
        conv::COVERED,
        transition::COVERED,
        pool::COVERED,
        head::COVERED,
        unfused::COVERED,
        roundoff::COVERED,
        dtypes::COVERED,
    ]
    .concat();
    for k in &production {
        assert!(covered.contains(k), "kernel `{k}` has no case in tests/kernels/");
    }
    for k in &covered {
        assert!(production.contains(k), "`{k}` is claimed but is not a kernel");
    }
}

/// The build-time kernel table that `CudaDevice` loads kernels by (read from the sources by
/// `build/kernel_scan.rs`, without a preprocessor) names exactly the kernels the emulator build
/// found through the real preprocessor.
#[cfg(feature = "cuda-emu")]
fn the_kernel_table_lists_exactly_the_emulated_kernels() {
    let emulated: Vec<&str> = densenet::emu::kernel_names().filter(|k| !k.starts_with("selftest_")).collect();
    let table: Vec<&str> = densenet::kernels::KERNELS.iter().map(|(k, _)| *k).collect();
    assert_eq!(table, emulated, "both are sorted by name");
}
