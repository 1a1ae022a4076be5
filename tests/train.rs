//! Training: resuming is exact, divergence keeps the last good checkpoint, eval mode uses
//! running statistics without gradient buffers, and a small network learns the synthetic
//! data.

use densenet::Precision;
use densenet::backend::cpu::CpuBackend;
use densenet::backend::prelude::*;
use densenet::backend::{Backend, Category};
use densenet::checkpoint::Checkpoint;
use densenet::config::DenseNetConfig;
use densenet::data::{DataSource, Dataset, Normalization, SyntheticSpec};
use densenet::efficient::Options;
use densenet::error::Error;
use densenet::train::{BatchProgress, Model, Observer, Schedule, TrainConfig, Trainer};
use std::sync::Arc;

fn config() -> DenseNetConfig {
    let mut c = DenseNetConfig::bc_cifar(10, 4).unwrap();
    c.blocks = vec![2, 1];
    c
}

fn data(train: usize) -> (Arc<Dataset>, Arc<Dataset>) {
    let s = DataSource::Synthetic(SyntheticSpec { seed: 1, size: 12, train, test: 70 }).load().unwrap();
    (Arc::new(s.train), Arc::new(s.test))
}

fn train_config(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, batch: 32, lr: 0.1, schedule: Schedule::Step, seed: 9, ..TrainConfig::default() }
}

fn trainer(epochs: usize) -> Trainer<CpuBackend> {
    let (train, test) = data(200);
    let model = Model::new(&config(), Normalization::of(&train).unwrap(), 4).unwrap();
    Trainer::new(CpuBackend::new(), model, train_config(epochs), train, test).unwrap()
}

/// Records the bits of every batch loss.
#[derive(Default)]
struct Losses(Vec<u32>);

impl Observer for Losses {
    fn train_batch(&mut self, p: &BatchProgress) {
        self.0.push(p.loss.to_bits());
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn two_epochs_equal_one_epoch_then_resume_bit_for_bit() {
    let mut straight = trainer(2);
    let mut a = Losses::default();
    let history_a = straight.fit(None, &mut a).unwrap();
    assert_eq!(a.0.len(), 2 * 6, "200 images in batches of 32: 6 batches per epoch");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut first = trainer(2);
    let mut b = Losses::default();
    first.train_epoch(&mut b).unwrap();
    first.checkpoint().unwrap().save(&path).unwrap();
    drop(first);

    // Resume in a single-threaded pool: the cpu backend's results do not depend on it.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (history_b, resumed) = pool.install(|| {
        let (train, test) = data(200);
        let checkpoint = Checkpoint::load(&path).unwrap();
        let mut resumed =
            Trainer::resume(CpuBackend::new(), checkpoint, train_config(2), train, test).unwrap();
        assert_eq!((resumed.epoch(), resumed.step()), (1, 6));
        (resumed.fit(None, &mut b).unwrap(), resumed)
    });
    assert_eq!(a.0, b.0, "every batch loss is identical");
    let (ma, mb) = (straight.model().unwrap(), resumed.model().unwrap());
    assert_eq!(bits(&ma.params), bits(&mb.params));
    assert_eq!(bits(&ma.running), bits(&mb.running));
    assert_eq!(ma.batches_tracked, 12);
    assert_eq!(mb.batches_tracked, 12);
    assert_eq!(bits(&straight.network().velocity().unwrap()), bits(&resumed.network().velocity().unwrap()));
    let (ea, eb) = (&history_a[1], &history_b[0]);
    assert_eq!((ea.epoch, ea.step, ea.lr), (eb.epoch, eb.step, eb.lr));
    assert_eq!(ea.test_loss.to_bits(), eb.test_loss.to_bits());
    assert_eq!(ea.train_loss.to_bits(), eb.train_loss.to_bits());
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut t = trainer(1);
    t.fit(Some(&path), &mut ()).unwrap();
    let good = std::fs::read(&path).unwrap();

    let (train, test) = data(200);
    let exploding = TrainConfig { epochs: 2, lr: 1e30, ..train_config(2) };
    let mut t =
        Trainer::resume(CpuBackend::new(), Checkpoint::load(&path).unwrap(), exploding, train, test).unwrap();
    match t.fit(Some(&path), &mut ()) {
        Err(Error::Diverged(msg)) => {
            let what = msg.contains("the loss is") || msg.contains("the parameters are not finite");
            assert!(what && msg.contains("at epoch 2, batch"), "{msg}");
            assert!(
                msg.contains("the last good checkpoint") && msg.contains("checkpoint.safetensors"),
                "{msg}"
            );
        }
        other => panic!("expected divergence, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), good, "the checkpoint of epoch 1 is untouched");
    assert_eq!(t.epoch(), 1);
    // The diverged step's SGD update was enqueued before its loss was read: the trainer hands
    // out nothing that could contain it.
    assert!(matches!(t.checkpoint(), Err(Error::Diverged(_))));
    assert!(matches!(t.model(), Err(Error::Diverged(_))));
    assert!(matches!(t.train_epoch(&mut ()), Err(Error::Diverged(_))));
}

/// NaN or infinity where the loss does not see it (the momentum buffer, a running variance)
/// still stops training at the first step: the updated parameters and running statistics are
/// checked with the loss.
#[test]
fn non_finite_parameters_or_running_statistics_stop_training_at_once() {
    stops_at_once_on(CpuBackend::new);
}

/// The same check on the kernels (its reductions over the parameters and the running
/// statistics are `channel_stats` launches), through the emulator.
#[cfg(feature = "cuda-emu")]
#[test]
fn non_finite_state_stops_training_on_the_emulated_kernels() {
    stops_at_once_on(|| densenet::backend::cuda::EmuBackend::new().unwrap());
}

fn stops_at_once_on<B: Backend + Clone + Send + Sync + 'static>(backend: impl Fn() -> B) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut t = trainer(1);
    t.fit(Some(&path), &mut ()).unwrap();
    let good = Checkpoint::load(&path).unwrap();
    let running_var = good.model.layout().norms[0].1.running_var;
    type Poison = fn(&mut Checkpoint, usize);
    let poison: [(&str, Poison); 2] = [
        ("the parameters are not finite", |c, _| c.training.as_mut().unwrap().velocity[5] = f32::NAN),
        ("the running statistics are not finite", |c, i| c.model.running[i] = f32::INFINITY),
    ];
    for (want, poison) in poison {
        let mut bad = good.clone();
        poison(&mut bad, running_var);
        let (train, test) = data(200);
        let mut t = Trainer::resume(backend(), bad, train_config(2), train, test).unwrap();
        match t.fit(Some(&path), &mut ()) {
            Err(Error::Diverged(msg)) => {
                assert!(msg.contains(&format!("{want} after the update at epoch 2, batch 1")), "{msg}")
            }
            other => panic!("expected divergence, got {other:?}"),
        }
        assert_eq!(Checkpoint::load(&path).unwrap(), good, "the last good checkpoint is kept");
    }
}

#[test]
fn eval_mode_matches_the_training_networks_eval_pass_without_gradient_buffers() {
    let mut t = trainer(1);
    t.fit(None, &mut ()).unwrap();
    let on_training_net = t.evaluate(&mut ()).unwrap();
    let model = t.model().unwrap();
    let (_, test) = data(200);

    let backend = CpuBackend::new();
    let net = model.network(backend.clone(), 25, 12, 12, Options::eval()).unwrap();
    assert_eq!(backend.memory().category(Category::GradientBuffers), 0);
    let eval_bytes = backend.memory().current;
    drop(net);
    assert!(eval_bytes < t.network().backend().memory().current / 2);

    // Another batch size (so another padding of the last batch) and an eval-mode network.
    let separate = model.evaluate(CpuBackend::new(), test, 25, &mut ()).unwrap();
    assert_eq!(separate.images, 70);
    assert_eq!(separate.accuracy, on_training_net.accuracy);
    assert!((separate.loss - on_training_net.loss).abs() < 1e-5 * on_training_net.loss.max(1.0));
}

/// Six epochs of a small DenseNet-BC on synthetic 16×16 data on the cpu backend at `precision`.
fn small_run(precision: Precision) -> Vec<densenet::train::EpochMetrics> {
    let s =
        DataSource::Synthetic(SyntheticSpec { seed: 0, size: 16, train: 1600, test: 200 }).load().unwrap();
    let (train, test) = (Arc::new(s.train), Arc::new(s.test));
    let mut cfg = DenseNetConfig::bc_cifar(10, 12).unwrap();
    cfg.blocks = vec![3, 3];
    let model = Model::new(&cfg, Normalization::of(&train).unwrap(), 0).unwrap();
    let tc = TrainConfig { epochs: 6, batch: 32, schedule: Schedule::Cosine, ..TrainConfig::default() };
    let backend = CpuBackend::new().with_precision(precision);
    Trainer::new(backend, model, tc, train, test).unwrap().fit(None, &mut ()).unwrap()
}

#[test]
fn a_small_densenet_learns_the_synthetic_data() {
    let history = small_run(Precision::Fp32);
    let last = history.last().unwrap();
    assert!(last.test_accuracy > 0.3, "test accuracy {} after 6 epochs (chance 0.1)", last.test_accuracy);
    assert!(last.train_loss < history[0].train_loss);
}

/// The same run in tf32 learns as well: test accuracy within 2 points (4 of the 200 images)
/// of fp32's and a final training loss within 5% of it.
#[test]
fn tf32_training_matches_fp32() {
    let (fp32, tf32) = (small_run(Precision::Fp32), small_run(Precision::Tf32));
    let (f, t) = (fp32.last().unwrap(), tf32.last().unwrap());
    println!(
        "fp32: accuracy {} loss {}; tf32: accuracy {} loss {}",
        f.test_accuracy, f.train_loss, t.test_accuracy, t.train_loss
    );
    assert!(
        (f.test_accuracy - t.test_accuracy).abs() <= 0.02,
        "fp32 {} tf32 {}",
        f.test_accuracy,
        t.test_accuracy
    );
    assert!(
        (f.train_loss - t.train_loss).abs() <= 0.05 * f.train_loss,
        "fp32 {} tf32 {}",
        f.train_loss,
        t.train_loss
    );
    assert_ne!(f.train_loss, t.train_loss, "tf32 trained exactly as fp32: were the operands rounded?");
}

#[test]
fn bad_training_setups_are_rejected() {
    let (train, test) = data(40);
    let model = Model::new(&config(), Normalization::of(&train).unwrap(), 0).unwrap();
    let new = |tc: TrainConfig, model: Model| {
        Trainer::new(CpuBackend::new(), model, tc, train.clone(), test.clone())
    };
    for tc in [
        TrainConfig { epochs: 0, ..train_config(1) },
        TrainConfig { batch: 0, ..train_config(1) },
        TrainConfig { lr: f32::NAN, ..train_config(1) },
        TrainConfig { lr: -0.1, ..train_config(1) },
        TrainConfig { momentum: 1.0, ..train_config(1) },
        TrainConfig { momentum: 0.0, nesterov: true, ..train_config(1) },
        TrainConfig { batch: 41, ..train_config(1) },
    ] {
        assert!(matches!(new(tc.clone(), model.clone()), Err(Error::Config(_))), "{tc:?}");
    }
    let mut seven = config();
    seven.classes = 7;
    let wrong_classes = Model::new(&seven, model.normalization.clone(), 0).unwrap();
    let msg = new(train_config(1), wrong_classes).err().unwrap().to_string();
    assert!(msg.contains("synthetic train has 10 classes but the model has 7 outputs"), "{msg}");

    // A model-only checkpoint cannot be resumed.
    let r = Trainer::resume(
        CpuBackend::new(),
        Checkpoint::of_model(model),
        train_config(1),
        train.clone(),
        test.clone(),
    );
    assert!(matches!(r, Err(Error::Config(m)) if m.contains("cannot be resumed")));
}

#[test]
fn cifar_densenet_bc_names_parse_as_presets() {
    assert_eq!(
        DenseNetConfig::preset("densenet-bc-22-k12").unwrap(),
        DenseNetConfig::bc_cifar(22, 12).unwrap()
    );
    assert_eq!(DenseNetConfig::preset("densenet-bc-190-k40").unwrap().blocks, vec![31, 31, 31]);
    for bad in ["densenet-bc-23-k12", "densenet-bc-22-k", "densenet-bc--k12", "densenet-bc-22-k12x"] {
        assert!(matches!(DenseNetConfig::preset(bad), Err(Error::Config(_))), "{bad}");
    }
}
