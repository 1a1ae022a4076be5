//! The memory planner: its prediction equals the allocator's measured peak of a real step,
//! byte for byte and per category; it reproduces the memory model of `docs/ARCHITECTURE.md`;
//! and activation memory grows linearly with depth on the efficient path, quadratically on
//! the baseline.

use densenet::Precision;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::prelude::*;
use densenet::backend::{Category, SgdParams};
use densenet::config::DenseNetConfig;
use densenet::efficient::{Mode, Network, Options};
use densenet::params::ParamLayout;
use densenet::plan::{BaselinePlan, Dtype, EfficientPlan};
use densenet::verify::{nchw_to_nhwc, random_batch};

const MB: usize = 1_000_000;

fn configs() -> Vec<(&'static str, DenseNetConfig, usize, usize, usize)> {
    let mut small = DenseNetConfig::bc_cifar(40, 5).unwrap();
    small.blocks = vec![3, 2, 2];
    let mut imagenet = DenseNetConfig::preset("densenet121").unwrap();
    imagenet.growth = 6;
    imagenet.blocks = vec![2, 3];
    imagenet.init_features = 10;
    imagenet.classes = 5;
    // A stem output larger than every block: the gradient buffers are sized by the stem.
    let mut wide_stem = imagenet.clone();
    wide_stem.init_features = 40;
    wide_stem.blocks = vec![1, 1];
    let mut odd = small.clone();
    odd.blocks = vec![4];
    odd.bn_size = 3;
    odd.compression = 1.0;
    vec![
        ("cifar 3,2,2 k5", small, 3, 9, 7),
        ("imagenet stem", imagenet, 3, 37, 29),
        ("imagenet, wide stem", wide_stem, 2, 33, 35),
        ("one block, bn-size 3", odd, 2, 7, 5),
        ("densenet-bc-40 k12", DenseNetConfig::bc_cifar(40, 12).unwrap(), 4, 16, 16),
    ]
}

/// Builds the network on a fresh backend, runs one step as `opts` says (training: forward,
/// backward, and an SGD step with the optimiser; eval: an inference forward), and returns
/// the allocator's peak, in total and per category.
fn measured_peak(
    cfg: &DenseNetConfig,
    n: usize,
    h: usize,
    w: usize,
    opts: Options,
    precision: Precision,
) -> (usize, Vec<(Category, usize)>) {
    let backend = CpuBackend::new().with_precision(precision);
    let mut net = Network::new(backend.clone(), cfg, n, h, w, opts).unwrap();
    let layout = ParamLayout::new(cfg);
    net.set_params(&layout.init(2), &layout.init_running()).unwrap();
    let (images, labels) = random_batch(cfg, n, h, w, 2);
    let images = nchw_to_nhwc(&images, n, cfg.in_channels, h, w);
    let labels: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    if opts.mode == Mode::Train {
        net.set_batch(&images, &labels).unwrap();
        net.forward().unwrap();
        net.backward().unwrap();
        if opts.optimizer {
            net.sgd_step(SgdParams { lr: 0.1, momentum: 0.9, weight_decay: 1e-4, nesterov: true }).unwrap();
        }
    } else {
        net.set_batch(&images, &[]).unwrap();
        net.forward().unwrap();
    }
    let m = backend.memory();
    let by = Category::ALL.iter().map(|&c| (c, m.peak_category(c))).filter(|(_, b)| *b > 0).collect();
    (m.peak, by)
}

#[test]
fn predicted_equals_measured_for_training_inference_and_optimizer() {
    let train_input_grad = Options { input_grad: true, ..Options::train() };
    let all = [Options::train(), Options::train().with_optimizer(), Options::eval(), train_input_grad];
    for (name, cfg, n, h, w) in configs() {
        for opts in all {
            for precision in [Precision::Fp32, Precision::Bf16] {
                let plan = EfficientPlan::new(&cfg, n, h, w, precision.storage(), opts).unwrap();
                let (peak, by) = measured_peak(&cfg, n, h, w, opts, precision);
                assert_eq!(plan.total_bytes, peak, "{name} {opts:?} {precision}");
                let planned: Vec<(Category, usize)> = plan.by_category().into_iter().collect();
                assert_eq!(planned, by, "{name} {opts:?} {precision}");
                let listed: usize = plan.buffers().iter().map(|b| b.bytes).sum();
                assert_eq!(listed, plan.total_bytes);
            }
        }
    }
}

/// bf16 storage halves every activation-shaped buffer and nothing else: the targets
/// (DenseNet-BC-100 batch 64 at most 110 MB, densenet121 batch 256 at most 2.6 GB) hold, and
/// parameters, statistics and the head keep their f32 bytes.
#[test]
fn bf16_storage_halves_the_activations_only() {
    let cases = [("densenet-bc-100-k12", 64, 32, 110 * MB), ("densenet121", 256, 224, 2_600 * MB)];
    for (name, batch, size, target) in cases {
        let cfg = DenseNetConfig::preset(name).unwrap();
        let plan =
            |dtype| EfficientPlan::new(&cfg, batch, size, size, dtype, Options::train().with_optimizer());
        let (f32_plan, bf16_plan) = (plan(Dtype::F32).unwrap(), plan(Dtype::Bf16).unwrap());
        println!("{name} batch {batch}: fp32 {} B, bf16 {} B", f32_plan.total_bytes, bf16_plan.total_bytes);
        assert!(bf16_plan.total_bytes <= target, "{name}: {} B", bf16_plan.total_bytes);
        for (a, b) in f32_plan.buffers().iter().zip(bf16_plan.buffers()) {
            assert_eq!((&a.name, a.len), (&b.name, b.len));
            let expected = if b.dtype == Dtype::Bf16 { a.bytes / 2 } else { a.bytes };
            assert_eq!(b.bytes, expected, "{name}: {}", b.name);
        }
        let by = bf16_plan.by_category();
        assert_eq!(by[&Category::Parameters], f32_plan.by_category()[&Category::Parameters]);
        assert!(by[&Category::FeatureStorage] < f32_plan.by_category()[&Category::FeatureStorage] * 51 / 100);
    }
}

#[test]
fn inference_needs_no_gradient_buffers_and_optimizer_adds_one_parameter_copy() {
    let cfg = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
    let plan = |opts| EfficientPlan::new(&cfg, 64, 32, 32, Dtype::F32, opts).unwrap();
    let (train, sgd, eval) =
        (plan(Options::train()), plan(Options::train().with_optimizer()), plan(Options::eval()));
    assert!(!eval.by_category().contains_key(&Category::GradientBuffers));
    // Training adds at least its gradient buffers (and the statistics, dZ, …) to inference.
    let gradient_buffers = train.by_category()[&Category::GradientBuffers];
    assert!(
        train.total_bytes - eval.total_bytes > gradient_buffers,
        "{} vs {}",
        train.total_bytes,
        eval.total_bytes
    );
    let params = 4 * ParamLayout::new(&cfg).num_params;
    assert_eq!(sgd.total_bytes - train.total_bytes, params);
}

#[test]
fn densenet_bc_100_matches_the_documented_memory_model() {
    // "Buffers of a training step" in docs/ARCHITECTURE.md: S per block 56.6, 19.7, 5.6 MB;
    // G0 56.6 MB (blocks 0 and 2), G1 19.7 MB (block 1); workspace 25.2 MB.
    let cfg = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
    let plan = EfficientPlan::new(&cfg, 64, 32, 32, Dtype::F32, Options::train().with_optimizer()).unwrap();
    let storage: Vec<usize> = plan.storages.iter().map(|s| 4 * s.data.len).collect();
    assert_eq!(storage, vec![64 * 32 * 32 * 216 * 4, 64 * 16 * 16 * 300 * 4, 64 * 8 * 8 * 342 * 4]);
    assert_eq!(storage.iter().map(|b| b / (MB / 10)).collect::<Vec<_>>(), vec![566, 196, 56]);
    let train = plan.train.as_ref().unwrap();
    assert_eq!([4 * train.g[0].len, 4 * train.g[1].len], [storage[0], storage[1]]);
    assert_eq!(4 * (plan.z.len + train.dz.len), 2 * 64 * 32 * 32 * 48 * 4);
    let by = plan.by_category();
    assert_eq!(by[&Category::GradientBuffers] / MB, 76);
    assert_eq!(by[&Category::Workspace] / (MB / 10), 251);
    assert!(plan.total_bytes <= 300 * MB, "{} bytes", plan.total_bytes);
    // The baseline of the same network: over ten times more.
    let baseline = BaselinePlan::new(&cfg, 64, 32, 32, Dtype::F32, true).unwrap();
    assert!(baseline.peak_bytes >= 10 * plan.total_bytes, "{} vs {}", baseline.peak_bytes, plan.total_bytes);
}

#[test]
fn densenet121_at_batch_256_plans_under_6_gb() {
    let cfg = DenseNetConfig::preset("densenet121").unwrap();
    let plan =
        EfficientPlan::new(&cfg, 256, 224, 224, Dtype::F32, Options::train().with_optimizer()).unwrap();
    assert!(plan.total_bytes < 6_000 * MB, "{} bytes", plan.total_bytes);
}

/// Planned bytes for DenseNet-BC of each depth (k = 12, batch 64, 32×32).
fn over_depths<T>(depths: &[usize], f: impl Fn(&DenseNetConfig) -> T) -> Vec<T> {
    depths.iter().map(|&d| f(&DenseNetConfig::bc_cifar(d, 12).unwrap())).collect()
}

/// Differences of consecutive values.
fn diffs(v: &[i128]) -> Vec<i128> {
    v.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn efficient_activations_grow_linearly_baseline_quadratically() {
    // Equally spaced depths (6·n + 4 with n = 6, 16, 26, 36), so second differences of a
    // linear sequence are zero and third differences of a quadratic one are zero.
    let depths = [40, 100, 160, 220];
    let train = Options::train().with_optimizer();
    let plans = over_depths(&depths, |c| EfficientPlan::new(c, 64, 32, 32, Dtype::F32, train).unwrap());
    let category = |c: Category| -> Vec<i128> {
        plans.iter().map(|p| p.by_category().get(&c).copied().unwrap_or(0) as i128).collect()
    };
    let activations: Vec<i128> = plans.iter().map(|p| p.activation_bytes() as i128).collect();
    for (what, series) in [
        ("activations", activations.clone()),
        ("feature storage", category(Category::FeatureStorage)),
        ("gradient buffers", category(Category::GradientBuffers)),
    ] {
        let d1 = diffs(&series);
        assert!(d1.iter().all(|&d| d > 0), "{what} grows: {series:?}");
        assert!(diffs(&d1).iter().all(|&d| d == 0), "{what} is linear in depth: {series:?}");
    }
    // Depth 250 lies on the same line: (A(250) − A(40))·60 = (A(100) − A(40))·210.
    let a250 = EfficientPlan::new(&DenseNetConfig::bc_cifar(250, 12).unwrap(), 64, 32, 32, Dtype::F32, train)
        .unwrap()
        .activation_bytes() as i128;
    assert_eq!((a250 - activations[0]) * 60, (activations[1] - activations[0]) * 210);
    // Parameters (Σ_l c_l·4k) are quadratic even here, but small.
    let params = category(Category::Parameters);
    assert!(diffs(&diffs(&params)).iter().all(|&d| d > 0));

    let baseline = over_depths(&depths, |c| BaselinePlan::new(c, 64, 32, 32, Dtype::F32, true).unwrap());
    let tape: Vec<i128> = baseline.iter().map(|p| p.tape_bytes as i128).collect();
    let d2 = diffs(&diffs(&tape));
    assert!(d2.iter().all(|&d| d > 0), "baseline storage is superlinear: {tape:?}");
    assert!(diffs(&d2).iter().all(|&d| d == 0), "baseline storage is quadratic: {tape:?}");
    let peaks: Vec<i128> = baseline.iter().map(|p| p.peak_bytes as i128).collect();
    assert!(diffs(&diffs(&peaks)).iter().all(|&d| d > 0), "baseline peak is superlinear: {peaks:?}");
}

#[test]
fn impossible_requests_are_errors_not_panics() {
    let cfg = DenseNetConfig::preset("densenet-bc-100-k12").unwrap();
    let plan = |n, h, w, opts| EfficientPlan::new(&cfg, n, h, w, Dtype::F32, opts);
    assert!(plan(0, 32, 32, Options::train()).is_err());
    assert!(plan(0, 32, 32, Options::eval()).is_err());
    assert!(plan(1, 3, 3, Options::train()).is_err());
    assert!(plan(usize::MAX, 32, 32, Options::train()).is_err());
    assert!(plan(1 << 40, 1 << 20, 1 << 20, Options::eval()).is_err());
    let imagenet = DenseNetConfig::preset("densenet121").unwrap();
    assert!(EfficientPlan::new(&imagenet, 1, usize::MAX, 224, Dtype::F32, Options::eval()).is_err());
    assert!(BaselinePlan::new(&cfg, usize::MAX, 32, 32, Dtype::F32, false).is_err());
    assert!(BaselinePlan::new(&imagenet, 1, usize::MAX, 224, Dtype::F32, false).is_err());
    assert!(BaselinePlan::new(&cfg, 1, 1, 1, Dtype::F32, false).is_err());
}
