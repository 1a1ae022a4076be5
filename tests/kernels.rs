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
use densenet::backend::{Backend, BnGradTarget, BnRef, Category, Mat, SgdParams, StatsRef};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

/// The same data on the cpu backend (`cpu`) and on the device under test (`emu`).
struct Pair<D: Device> {
    cpu: CpuBuf,
    emu: DeviceBuf<D>,
}

struct Bench<'d, D: Device> {
    cpu: CpuBackend,
    emu: &'d KernelBackend<D>,
    rng: ChaCha8Rng,
}

impl<'d, D: Device> Bench<'d, D> {
    fn new(device: &'d KernelBackend<D>, seed: u64) -> Self {
        Bench { cpu: CpuBackend::new(), emu: device, rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    fn pair(&mut self, values: &[f32]) -> Pair<D> {
        let mut cpu = self.cpu.alloc(values.len(), Category::Workspace).unwrap();
        self.cpu.upload(&mut cpu, 0, values).unwrap();
        let mut emu = self.emu.alloc(values.len(), Category::Workspace).unwrap();
        self.emu.upload(&mut emu, 0, values).unwrap();
        Pair { cpu, emu }
    }

    fn uniform(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// A random buffer holding a rows × cols matrix at offset 3 with pitch cols + 5.
    fn matrix(&mut self, rows: usize, cols: usize, lo: f32, hi: f32) -> (Pair<D>, Mat) {
        let m = Mat { offset: 3, rows, cols, ld: cols + 5 };
        let values = self.uniform(3 + rows * m.ld + 2, lo, hi);
        (self.pair(&values), m)
    }

    /// Per-channel [mean | var] and [γ | β] of a BN over `c` channels, γ of both signs.
    fn bn_buffers(&mut self, c: usize) -> (Pair<D>, Pair<D>) {
        let mut stats = self.uniform(c, -0.5, 0.5);
        stats.extend(self.uniform(c, 0.2, 2.0));
        let mut params: Vec<f32> =
            (0..c).map(|_| self.rng.random_range(0.5..1.5) * if self.rng.random_bool(0.2) { -1.0 } else { 1.0 }).collect();
        params.extend(self.uniform(c, -0.3, 0.3));
        (self.pair(&stats), self.pair(&params))
    }

    /// Relative error of an emu buffer range against the same cpu range.
    fn compare(&self, what: &str, p: &Pair<D>, offset: usize, len: usize) -> f64 {
        let a = self.emu.download(&p.emu, offset, len).unwrap();
        let b = self.cpu.download(&p.cpu, offset, len).unwrap();
        let err = rel_error(&a, &b);
        println!("{what}: relative error {err:.2e}");
        assert!(err <= TOL, "{what}: relative error {err:.3e} > {TOL:.0e}");
        err
    }

    /// Compares every element of two buffers, including those outside the op's outputs
    /// (which must be untouched on both).
    fn compare_all(&self, what: &str, p: &Pair<D>) -> f64 {
        self.compare(what, p, 0, p.cpu.len())
    }
}

fn rel_error(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        d += (f64::from(x) - f64::from(y)).powi(2);
        n += f64::from(y).powi(2);
    }
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

fn bn_cpu<'a, D: Device>(stats: &'a Pair<D>, params: &'a Pair<D>, c: usize) -> BnRef<'a, CpuBuf> {
    BnRef { stats: &stats.cpu, mean: 0, var: c, params: &params.cpu, gamma: 0, beta: c }
}

fn bn_emu<'a, D: Device>(stats: &'a Pair<D>, params: &'a Pair<D>, c: usize) -> BnRef<'a, DeviceBuf<D>> {
    BnRef { stats: &stats.emu, mean: 0, var: c, params: &params.emu, gamma: 0, beta: c }
}

fn channel_stats<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 1);
        // 105 rows (batch 3 of 7×5) and 4551 rows (3 × 37×41), 13 and 37 channels; the
        // second with values around 1000 ± 0.01, where E[x²] − E[x]² would lose every digit.
        for (rows, cols, lo, hi) in [(105, 13, -2.0, 2.0), (4551, 37, 999.99, 1000.01)] {
            let (x, xm) = b.matrix(rows, cols, lo, hi);
            let mut out = b.pair(&vec![7.0; 2 * cols + 4]);
            b.cpu.channel_stats(&x.cpu, xm, &mut out.cpu, 1, 2 + cols).unwrap();
            b.emu.channel_stats(&x.emu, xm, &mut out.emu, 1, 2 + cols).unwrap();
            b.compare(&format!("channel_stats mean {rows}x{cols}"), &out, 1, cols);
            b.compare(&format!("channel_stats var {rows}x{cols}"), &out, 2 + cols, cols);
            b.compare_all(&format!("channel_stats buffer {rows}x{cols}"), &out);
        }
    }
}

fn update_running_stats<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 2);
        let c = 37;
        let (stats, _) = b.bn_buffers(c);
        let running = b.uniform(2 * c + 6, 0.1, 1.5);
        let mut running = b.pair(&running);
        let cpu_stats = StatsRef { stats: &stats.cpu, mean: 0, var: c };
        let emu_stats = StatsRef { stats: &stats.emu, mean: 0, var: c };
        b.cpu.update_running_stats(cpu_stats, c, 105, &mut running.cpu, 2, 4 + c).unwrap();
        b.emu.update_running_stats(emu_stats, c, 105, &mut running.emu, 2, 4 + c).unwrap();
        b.compare_all("update_running_stats", &running);
    }
}

fn bn_backward_elementwise<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 3);
        for (rows, c) in [(105, 13), (4551, 37)] {
            let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
            let (mut g, gm) = b.matrix(rows, c, -1.0, 1.0);
            let (stats, params) = b.bn_buffers(c);
            let sums = b.uniform(2 * c, -5.0, 5.0);
            let sums = b.pair(&sums);
            b.cpu.bn_backward_elementwise(&mut g.cpu, gm, &x.cpu, xm, bn_cpu(&stats, &params, c), &sums.cpu).unwrap();
            b.emu.bn_backward_elementwise(&mut g.emu, gm, &x.emu, xm, bn_emu(&stats, &params, c), &sums.emu).unwrap();
            b.compare_all(&format!("bn_backward_elementwise {rows}x{c}"), &g);
        }
    }
}

fn bn_grad_fold<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 4);
        let c = 37;
        for correction in [None, Some((1, 3 + c))] {
            let (stats, params) = b.bn_buffers(c);
            let sums = b.uniform(2 * c, -5.0, 5.0);
            let sums = b.pair(&sums);
            let grads = b.uniform(2 * c + 9, -1.0, 1.0);
            let mut grads = b.pair(&grads);
            let corr = b.uniform(2 * c + 5, -1.0, 1.0);
            let mut corr = b.pair(&corr);
            let target = BnGradTarget { dgamma: 4, dbeta: 5 + c, correction };
            b.cpu.bn_grad_fold(&sums.cpu, c, 4551, bn_cpu(&stats, &params, c), &mut grads.cpu, &mut corr.cpu, target).unwrap();
            b.emu.bn_grad_fold(&sums.emu, c, 4551, bn_emu(&stats, &params, c), &mut grads.emu, &mut corr.emu, target).unwrap();
            b.compare_all(&format!("bn_grad_fold grads, correction {correction:?}"), &grads);
            b.compare_all(&format!("bn_grad_fold corr, correction {correction:?}"), &corr);
        }
    }
}

fn bn_correction<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 5);
        for (rows, c) in [(105, 13), (4551, 37)] {
            let (x, xm) = b.matrix(rows, c, -2.0, 2.0);
            let (mut g, gm) = b.matrix(rows, c, -1.0, 1.0);
            let (stats, _) = b.bn_buffers(c);
            let corr = b.uniform(2 * c + 3, -0.5, 0.5);
            let corr = b.pair(&corr);
            let s_cpu = StatsRef { stats: &stats.cpu, mean: 0, var: c };
            let s_emu = StatsRef { stats: &stats.emu, mean: 0, var: c };
            b.cpu.bn_correction(&mut g.cpu, gm, &x.cpu, xm, s_cpu, &corr.cpu, 1, 2 + c).unwrap();
            b.emu.bn_correction(&mut g.emu, gm, &x.emu, xm, s_emu, &corr.emu, 1, 2 + c).unwrap();
            b.compare_all(&format!("bn_correction {rows}x{c}"), &g);
        }
    }
}

fn softmax_xent<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 6);
        // 1000 classes: more classes than threads in the block; logits near ±1000 would
        // overflow exp without the max shift.
        for (n, classes, shift) in [(3, 10, 0.0), (7, 1000, 1000.0)] {
            let logits: Vec<f32> =
                (0..n * classes).map(|i| b.rng.random_range(-5.0..5.0) + if i / classes % 2 == 0 { shift } else { -shift }).collect();
            let logits = b.pair(&logits);
            let labels: Vec<f32> = (0..n).map(|_| b.rng.random_range(0..classes) as f32).collect();
            let labels = b.pair(&labels);
            let mut loss = b.pair(&[0.0]);
            let mut dlogits = b.pair(&vec![3.0; n * classes]);
            b.cpu.softmax_xent(&logits.cpu, &labels.cpu, n, classes, &mut loss.cpu, &mut dlogits.cpu).unwrap();
            b.emu.softmax_xent(&logits.emu, &labels.emu, n, classes, &mut loss.emu, &mut dlogits.emu).unwrap();
            b.compare_all(&format!("softmax_xent loss {n}x{classes}"), &loss);
            b.compare_all(&format!("softmax_xent dlogits {n}x{classes}"), &dlogits);
        }
        // A label that is not a class index: NaN, not an out-of-bounds read.
        let logits = b.pair(&[0.5, -0.5, 1.0, 2.0]);
        let labels = b.pair(&[1.0, 7.0]);
        let (mut loss, mut dlogits) = (b.pair(&[0.0]), b.pair(&[0.0; 4]));
        b.emu.softmax_xent(&logits.emu, &labels.emu, 2, 2, &mut loss.emu, &mut dlogits.emu).unwrap();
        assert!(b.emu.download(&loss.emu, 0, 1).unwrap()[0].is_nan());
    }
}

fn sgd_update<D: Device>(device: &KernelBackend<D>) {
    {
        let mut b = Bench::new(device, 7);
        // 10007 parameters: more than one grid-stride pass of 1024 blocks is not needed, but
        // the length is not a multiple of the block size.
        for nesterov in [true, false] {
            let len = 10_007;
            let params = b.uniform(len, -1.0, 1.0);
            let mut params = b.pair(&params);
            let velocity = b.uniform(len, -0.1, 0.1);
            let mut velocity = b.pair(&velocity);
            let hp = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov };
            for _ in 0..3 {
                let grads = b.uniform(len, -1.0, 1.0);
                let grads = b.pair(&grads);
                b.cpu.sgd_update(&mut params.cpu, &grads.cpu, &mut velocity.cpu, len, hp).unwrap();
                b.emu.sgd_update(&mut params.emu, &grads.emu, &mut velocity.emu, len, hp).unwrap();
            }
            b.compare_all(&format!("sgd params, nesterov {nesterov}"), &params);
            b.compare_all(&format!("sgd velocity, nesterov {nesterov}"), &velocity);
        }
    }
}

/// Declares each case with the kernels it covers, and instantiates it once per device.
macro_rules! kernel_cases {
    ($($case:ident => [$($kernel:literal),* $(,)?]),* $(,)?) => {
        /// Every kernel some case claims.
        #[cfg_attr(not(feature = "cuda-emu"), allow(dead_code))]
        const COVERED: &[&str] = &[$($($kernel,)*)*];

        #[cfg(feature = "cuda-emu")]
        mod emulated {
            use densenet::backend::cuda::EmuBackend;
            $(
                #[test]
                fn $case() {
                    super::on_emulator(&[$($kernel),*], |b: &EmuBackend| super::$case(b));
                }
            )*
        }

        mod gpu {
            $(
                #[test]
                fn $case() {
                    super::on_gpu(|b| super::$case(b));
                }
            )*
        }
    };
}

kernel_cases! {
    channel_stats => ["channel_stats_f32"],
    update_running_stats => ["update_running_stats_f32"],
    bn_backward_elementwise => ["bn_backward_elementwise_f32"],
    bn_grad_fold => ["bn_grad_fold_f32"],
    bn_correction => ["bn_correction_f32"],
    softmax_xent => ["softmax_xent_f32"],
    sgd_update => ["sgd_update_f32"],
}

/// Runs a case on the GPU, or says why it cannot.
fn on_gpu(case: impl FnOnce(&CudaBackend)) {
    match CudaBackend::new(0) {
        Ok(b) => case(&b),
        Err(e) => eprintln!("skipped: {e}"),
    }
}

/// Runs a case on the emulator and checks that no diagnostic was raised and that every
/// kernel the case claims was launched.
#[cfg(feature = "cuda-emu")]
fn on_emulator(kernels: &[&str], case: impl FnOnce(&densenet::backend::cuda::EmuBackend)) {
    use densenet::emu;
    emu::take_diagnostics();
    emu::take_launches();
    case(&densenet::backend::cuda::EmuBackend::new());
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
    let production: Vec<&str> = densenet::emu::kernel_names().filter(|k| !k.starts_with("selftest_")).collect();
    println!("kernels: {production:?}");
    assert!(!production.is_empty());
    for k in &production {
        assert!(COVERED.contains(k), "kernel `{k}` has no case in tests/kernels.rs");
    }
    for k in COVERED {
        assert!(production.contains(k), "`{k}` is claimed but is not a kernel");
    }
}

#[cfg(feature = "cuda-emu")]
#[test]
fn launch_wrappers_reject_out_of_range_buffers() {
    use densenet::emu;
    let b = densenet::backend::cuda::EmuBackend::new();
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
