//! Every CUDA kernel of `kernels/*.cu` against the cpu backend on random inputs of awkward
//! sizes (batch 3, 7×5 and 37×41 images, channel counts 13 and 37 — not multiples of 8 or of
//! a 32-channel tile — matrices at an offset with a pitch wider than their columns), through
//! the launch wrappers every device shares. Each case runs twice: on the CPU emulator
//! (feature `cuda-emu`, module `emulated`) and on a GPU (module `gpu`, skipped with a printed
//! reason when there is no CUDA driver or GPU).
//!
//! Tolerances (relative error ‖emu − cpu‖/‖cpu‖): 1e-5 for every kernel here (elementwise
//! maps, per-channel statistics, the loss); summation orders differ between the two, so
//! bit-equality is not expected.
//!
//! Coverage (emulator): every production kernel must be claimed by a case, and each case
//! checks that it really launched the kernels it claims; emulator diagnostics must be zero.

use densenet::backend::cpu::{CpuBackend, CpuBuf};
use densenet::backend::cuda::{CudaBackend, Device, DeviceBuf, KernelBackend};
use densenet::backend::{Backend, BnRef, Category, Mat};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Default tolerance: relative error of a kernel against the cpu backend.
pub const TOL: f64 = 1e-5;

/// The same data on the cpu backend (`cpu`) and on the device under test (`emu`).
pub struct Pair<D: Device> {
    pub cpu: CpuBuf,
    pub emu: DeviceBuf<D>,
}

pub struct Bench<'d, D: Device> {
    pub cpu: CpuBackend,
    pub emu: &'d KernelBackend<D>,
    pub rng: ChaCha8Rng,
}

impl<'d, D: Device> Bench<'d, D> {
    pub fn new(device: &'d KernelBackend<D>, seed: u64) -> Self {
        Bench { cpu: CpuBackend::new(), emu: device, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    pub fn pair(&mut self, values: &[f32]) -> Pair<D> {
        let mut cpu = self.cpu.alloc(values.len(), Category::Workspace).unwrap();
        self.cpu.upload(&mut cpu, 0, values).unwrap();
        let mut emu = self.emu.alloc(values.len(), Category::Workspace).unwrap();
        self.emu.upload(&mut emu, 0, values).unwrap();
        Pair { cpu, emu }
    }

    pub fn uniform(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// A random buffer holding a rows × cols matrix at offset 3 with pitch cols + 5.
    pub fn matrix(&mut self, rows: usize, cols: usize, lo: f32, hi: f32) -> (Pair<D>, Mat) {
        let m = Mat { offset: 3, rows, cols, ld: cols + 5 };
        let values = self.uniform(3 + rows * m.ld + 2, lo, hi);
        (self.pair(&values), m)
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

    /// Relative error of an emu buffer range against the same cpu range.
    pub fn compare(&self, what: &str, p: &Pair<D>, offset: usize, len: usize) -> f64 {
        let a = self.emu.download(&p.emu, offset, len).unwrap();
        let b = self.cpu.download(&p.cpu, offset, len).unwrap();
        let err = rel_error(&a, &b);
        println!("{what}: relative error {err:.2e}");
        assert!(err <= TOL, "{what}: relative error {err:.3e} > {TOL:.0e}");
        err
    }

    /// Compares every element of two buffers, including those outside the op's outputs
    /// (which must be untouched on both).
    pub fn compare_all(&self, what: &str, p: &Pair<D>) -> f64 {
        self.compare(what, p, 0, p.cpu.len())
    }
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

/// Declares a module's cases with the kernels each covers (`pub const COVERED`), and
/// instantiates each case once per device: `<module>::emulated::<case>` and
/// `<module>::gpu::<case>`. A case is `fn <case><D: Device>(device: &KernelBackend<D>)`.
#[macro_export]
macro_rules! kernel_cases {
    ($($case:ident => [$($kernel:literal),* $(,)?]),* $(,)?) => {
        /// Every kernel some case of this module claims.
        #[cfg_attr(not(feature = "cuda-emu"), allow(dead_code))]
        pub const COVERED: &[&str] = &[$($($kernel,)*)*];

        #[cfg(feature = "cuda-emu")]
        mod emulated {
            use densenet::backend::cuda::EmuBackend;
            $(
                #[test]
                fn $case() {
                    $crate::on_emulator(&[$($kernel),*], |b: &EmuBackend| super::$case(b));
                }
            )*
        }

        mod gpu {
            $(
                #[test]
                fn $case() {
                    $crate::on_gpu(|b| super::$case(b));
                }
            )*
        }
    };
}

mod conv;
mod conv1x1;
mod conv3x3;
/// One module per kernel family.
mod elementwise;
mod head;
mod pool;
mod transition;
mod unfused;

/// Runs a case on the GPU, or says why it cannot.
pub fn on_gpu(case: impl FnOnce(&CudaBackend)) {
    match CudaBackend::new(0) {
        Ok(b) => case(&b),
        Err(e) => eprintln!("skipped: {e}"),
    }
}

/// Runs a case on the emulator and checks that no diagnostic was raised and that every
/// kernel the case claims was launched.
#[cfg(feature = "cuda-emu")]
pub fn on_emulator(kernels: &[&str], case: impl FnOnce(&densenet::backend::cuda::EmuBackend)) {
    use densenet::emu;
    emu::take_diagnostics();
    emu::take_launches();
    case(&densenet::backend::cuda::EmuBackend::new().unwrap());
    let diagnostics = emu::take_diagnostics();
    assert_eq!(diagnostics.count, 0, "{:?}", diagnostics.messages);
    let launched: std::collections::BTreeSet<&str> = emu::take_launches().into_iter().collect();
    for k in kernels {
        assert!(launched.contains(k), "case claims `{k}` but launched {launched:?}");
    }
}

#[cfg(feature = "cuda-emu")]
#[test]
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
#[test]
fn the_kernel_table_lists_exactly_the_emulated_kernels() {
    let emulated: Vec<&str> = densenet::emu::kernel_names().filter(|k| !k.starts_with("selftest_")).collect();
    let table: Vec<&str> = densenet::kernels::KERNELS.iter().map(|(k, _)| *k).collect();
    assert_eq!(table, emulated, "both are sorted by name");
}

#[cfg(feature = "cuda-emu")]
#[test]
fn launch_wrappers_reject_out_of_range_buffers() {
    use densenet::emu;
    let b = densenet::backend::cuda::EmuBackend::new().unwrap();
    let x = b.alloc(10, Category::Workspace).unwrap();
    let mut out = b.alloc(4, Category::Workspace).unwrap();
    let too_big = Mat { offset: 0, rows: 4, cols: 3, ld: 3 };
    assert!(b.channel_stats(&x, too_big, &mut out, 0, 2).is_err());
    let bad_pitch = Mat { offset: 0, rows: 2, cols: 3, ld: 2 };
    assert!(b.channel_stats(&x, bad_pitch, &mut out, 0, 2).is_err());
    emu::take_launches();
    let ok = Mat { offset: 0, rows: 5, cols: 2, ld: 2 };
    b.channel_stats(&x, ok, &mut out, 0, 2).unwrap();
    assert_eq!(emu::take_launches(), vec!["channel_stats_f32"]);
}
