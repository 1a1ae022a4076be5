//! Speed of the memory-efficient path (`efficient::Network`) against the baseline
//! (`baseline::BaselineNetwork`, a fresh concatenation per layer, stored BN and ReLU outputs) on
//! the same backend, in images/s:
//!
//! * `dense_block`: forward + backward of a network with one dense block — block 1 of
//!   DenseNet-BC-100 (16 layers, k = 12, 24 input channels, 32×32), between the CIFAR stem
//!   (one 3×3 conv) and the head, whose cost is small next to the block's;
//! * `train_step`: a whole training step (forward, backward, SGD with Nesterov momentum) of
//!   DenseNet-BC-40 (k = 12) at 32×32.
//!
//! Batch 8 on the cpu backend (`cargo bench --bench dense_block` takes about a minute on two
//! cores), 64 on the cuda backend, which runs only when `CudaBackend::new(0)` finds a GPU.
//! `DENSENET_BENCH_PRECISION=fp32,tf32` runs each precision (group ids `<case>/<backend>/<precision>`;
//! default fp32). Criterion's throughput, in elem/s, is images/s. Each iteration ends by synchronising the
//! backend inside the timed region, so queued GPU work is counted; one untimed step before
//! each benchmark loads the kernels and touches every buffer.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use densenet::Precision;
use densenet::backend::UnfusedOps;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::cuda::CudaBackend;
use densenet::backend::{Backend, SgdParams};
use densenet::baseline::BaselineNetwork;
use densenet::config::DenseNetConfig;
use densenet::efficient::{Network, Options};
use densenet::error::Result;
use densenet::params::ParamLayout;
use densenet::verify::{nchw_to_nhwc, random_batch};
use std::time::{Duration, Instant};

/// The paper's optimiser settings.
const SGD: SgdParams = SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true };
/// Images are 32×32 in every case (CIFAR stem).
const SIZE: usize = 32;

/// What one timed iteration runs.
#[derive(Clone, Copy)]
enum Work {
    ForwardBackward,
    /// Forward, backward and the SGD update.
    TrainStep,
}

struct Case {
    name: &'static str,
    cfg: DenseNetConfig,
    work: Work,
}

fn cases() -> Vec<Case> {
    let mut block = DenseNetConfig::bc_cifar(100, 12).expect("a valid preset");
    block.blocks = vec![16];
    vec![
        Case { name: "dense_block", cfg: block, work: Work::ForwardBackward },
        Case {
            name: "train_step",
            cfg: DenseNetConfig::bc_cifar(40, 12).expect("a valid preset"),
            work: Work::TrainStep,
        },
    ]
}

/// The two networks' common surface (they share no trait in the library).
trait Step {
    fn load(&mut self, params: &[f32], running: &[f32], images: &[f32], labels: &[u32]) -> Result<()>;
    fn step(&mut self, work: Work) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
}

// Both networks have the same inherent methods; one impl text serves them.
macro_rules! impl_step {
    ($net:ident) => {
        impl<B: Backend + UnfusedOps> Step for $net<B> {
            fn load(
                &mut self,
                params: &[f32],
                running: &[f32],
                images: &[f32],
                labels: &[u32],
            ) -> Result<()> {
                self.set_params(params, running)?;
                self.set_batch(images, labels)
            }
            fn step(&mut self, work: Work) -> Result<()> {
                self.forward()?;
                self.backward()?;
                match work {
                    Work::ForwardBackward => Ok(()),
                    Work::TrainStep => self.sgd_step(SGD),
                }
            }
            fn synchronize(&self) -> Result<()> {
                self.backend().synchronize()
            }
        }
    };
}
impl_step!(Network);
impl_step!(BaselineNetwork);

/// Benchmarks `net` as `id`: one untimed step, then `iters` steps per sample, the backend
/// synchronised before the clock stops.
fn bench_net(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    case: &Case,
    batch: usize,
    mut net: impl Step,
) {
    let layout = ParamLayout::new(&case.cfg);
    let (images, labels) = random_batch(&case.cfg, batch, SIZE, SIZE, 0);
    let images = nchw_to_nhwc(&images, batch, case.cfg.in_channels, SIZE, SIZE);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    net.load(&layout.init(0), &layout.init_running(), &images, &labels).expect("load the network");
    net.step(case.work).expect("warm-up step");
    net.synchronize().expect("synchronize");
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                net.step(case.work).expect("training step");
            }
            net.synchronize().expect("synchronize");
            start.elapsed()
        })
    });
}

/// Every case, efficient then baseline, on `backend` (one network alive at a time).
fn bench_backend<B: Backend + UnfusedOps + Clone>(c: &mut Criterion, label: &str, backend: B, batch: usize) {
    for case in cases() {
        let mut group = c.benchmark_group(format!("{}/{label}", case.name));
        group.throughput(Throughput::Elements(batch as u64));
        // A step takes tens of milliseconds to seconds: equal-sized samples, not criterion's
        // linearly growing ones, keep the run short.
        group.sampling_mode(SamplingMode::Flat);
        let optimizer = matches!(case.work, Work::TrainStep);
        let opts = if optimizer { Options::train().with_optimizer() } else { Options::train() };
        let efficient =
            Network::new(backend.clone(), &case.cfg, batch, SIZE, SIZE, opts).expect("efficient network");
        bench_net(&mut group, "efficient", &case, batch, efficient);
        let baseline = BaselineNetwork::new(backend.clone(), &case.cfg, batch, SIZE, SIZE, optimizer)
            .expect("baseline network");
        bench_net(&mut group, "baseline", &case, batch, baseline);
        group.finish();
    }
}

/// The precisions of `DENSENET_BENCH_PRECISION` (comma-separated, as for benches/kernels.rs;
/// default fp32). The baseline's unfused kernels are f32 at either precision.
fn precisions() -> Vec<Precision> {
    let Ok(list) = std::env::var("DENSENET_BENCH_PRECISION") else {
        return vec![Precision::Fp32];
    };
    list.split(',')
        .map(|p| {
            p.trim().parse().unwrap_or_else(|e| {
                eprintln!("DENSENET_BENCH_PRECISION: {e}");
                std::process::exit(2)
            })
        })
        .collect()
}

fn cpu(c: &mut Criterion) {
    for p in precisions() {
        bench_backend(c, &format!("cpu/{p}"), CpuBackend::new().with_precision(p), 8);
    }
}

fn cuda(c: &mut Criterion) {
    for p in precisions() {
        match CudaBackend::new(0).and_then(|gpu| gpu.with_precision(p)) {
            Ok(gpu) => bench_backend(c, &format!("cuda/{p}"), gpu, 64),
            Err(e) => println!("skipped cuda benchmarks: {e}"),
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    targets = cpu, cuda
}
criterion_main!(benches);
