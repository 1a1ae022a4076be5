//! `--init-from` with torchvision-style `state_dict`s built here from models of ours (the keys
//! renamed as DataParallel and torchvision's published weights name them, with and without
//! `num_batches_tracked`): `eval` of each gives exactly the loss and accuracy of the original
//! checkpoint, the configuration is inferred for a CIFAR-stem DenseNet-BC and a small
//! ImageNet-stem net, and `train` starts a fresh run from them, re-initialising a classifier
//! of another class count. Hostile files are in `tests/bad_input.rs`.

use densenet::checkpoint::Checkpoint;
use densenet::config::{DenseNetConfig, Stem};
use densenet::data::Normalization;
use densenet::params::ParamLayout;
use densenet::state_dict::load_state_dict;
use densenet::train::Model;
use rand::{Rng, SeedableRng};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A model with random weights and running statistics (so no renaming slip can hide behind
/// γ = 1 or a zero mean), normalised as a state_dict is run.
fn model(config: &DenseNetConfig, seed: u64) -> Model {
    let (params, running) = ParamLayout::new(config).init_random(seed);
    Model {
        config: config.clone(),
        normalization: Normalization::imagenet(),
        params,
        running,
        batches_tracked: 5,
    }
}

/// `model`'s `state_dict` as `safetensors.torch.save_file` writes it (no metadata), each key
/// passed through `rename`, the keys `keep` refuses left out.
fn state_dict(model: &Model, rename: impl Fn(&str) -> String, keep: impl Fn(&str) -> bool) -> Vec<u8> {
    let bytes = Checkpoint::of_model(model.clone()).to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| keep(n)).map(|(n, v)| (rename(&n), v)).collect();
    safetensors::serialize(tensors, None::<HashMap<String, String>>).unwrap()
}

/// torchvision's published names: `denselayerN.norm.1.weight` for `denselayerN.norm1.weight`.
fn old_names(name: &str) -> String {
    ["norm1", "norm2", "conv1", "conv2"]
        .iter()
        .fold(name.to_string(), |n, m| n.replace(&format!(".{m}."), &format!(".{}.{}.", &m[..4], &m[4..])))
}

/// A CIFAR-10 directory holding only a test file of `n` random images.
fn cifar_test_dir(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|_| rng.random::<u8>()));
    }
    std::fs::write(dir.join("test_batch.bin"), bytes).unwrap();
}

/// `eval --json` with `args`: (loss, accuracy, stderr).
fn eval(args: &[&str]) -> (f64, f64, String) {
    let out = densenet(&[&["eval", "--json", "--backend", "cpu"], args].concat());
    assert!(out.status.success(), "eval {args:?}: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["loss"].as_f64().unwrap(), v["accuracy"].as_f64().unwrap(), text(&out.stderr))
}

#[test]
fn renamed_state_dicts_evaluate_exactly_as_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    cifar_test_dir(&data, 40);
    let data = data.to_str().unwrap();
    let small_imagenet = DenseNetConfig {
        growth: 4,
        blocks: vec![2, 3],
        init_features: 8,
        bn_size: 2,
        compression: 0.5,
        stem: Stem::Imagenet,
        classes: 10,
        in_channels: 3,
    };
    let configs = [("cifar", DenseNetConfig::bc_cifar(16, 6).unwrap()), ("imagenet", small_imagenet)];
    for (name, config) in configs {
        let m = model(&config, 3);
        let original = dir.path().join(format!("{name}.safetensors"));
        Checkpoint::of_model(m.clone()).save(&original).unwrap();
        let expected = eval(&["--checkpoint", original.to_str().unwrap(), "--data", data]);
        assert!(expected.0.is_finite() && expected.0 > 0.0, "{expected:?}");
        let not_counted = |n: &str| !n.ends_with("num_batches_tracked");
        let variants: [(&str, Vec<u8>); 4] = [
            ("plain", state_dict(&m, |n| n.to_string(), |_| true)),
            ("module", state_dict(&m, |n| format!("module.{n}"), |_| true)),
            ("old-names", state_dict(&m, old_names, not_counted)),
            ("module-old-names", state_dict(&m, |n| format!("module.{}", old_names(n)), not_counted)),
        ];
        for (variant, bytes) in variants {
            let file = dir.path().join(format!("{name}-{variant}.safetensors"));
            std::fs::write(&file, bytes).unwrap();
            // The library infers the configuration and takes every value bit for bit.
            let weights = load_state_dict(&file, None).unwrap();
            assert!(weights.state_dict);
            assert_eq!(weights.model.config, config, "{name} {variant}");
            assert!(
                weights.model.params == m.params && weights.model.running == m.running,
                "{name} {variant}"
            );
            let (loss, accuracy, stderr) = eval(&["--init-from", file.to_str().unwrap(), "--data", data]);
            assert_eq!((loss, accuracy), (expected.0, expected.1), "{name} {variant}");
            assert!(stderr.contains(&config.describe()), "{stderr}");
            assert!(stderr.contains("ImageNet's mean and std"), "{stderr}");
        }
        // Our own checkpoint through --init-from: the same model.
        let (loss, accuracy, _) = eval(&["--init-from", original.to_str().unwrap(), "--data", data]);
        assert_eq!((loss, accuracy), (expected.0, expected.1), "{name} checkpoint");
    }
}

#[test]
fn train_starts_fresh_from_a_state_dict_and_fits_the_classifier_to_the_data() {
    let dir = tempfile::tempdir().unwrap();
    // Seven classes in the file, ten in the synthetic data.
    let config = DenseNetConfig { classes: 7, ..DenseNetConfig::bc_cifar(10, 4).unwrap() };
    let file = dir.path().join("seven.safetensors");
    std::fs::write(&file, state_dict(&model(&config, 4), |n| format!("module.{n}"), |_| true)).unwrap();
    let file = file.to_str().unwrap();
    let run = |out: &str, extra: &[&str]| {
        let out_dir = dir.path().join(out);
        let base = [
            "train",
            "--backend=cpu",
            "--epochs=1",
            "--train-images=64",
            "--test-images=32",
            "--batch=32",
            "--checkpoint-dir",
            out_dir.to_str().unwrap(),
        ];
        (densenet(&[&base[..], extra].concat()), out_dir.join("checkpoint.safetensors"))
    };
    let (out, saved) = run("fine-tuned", &["--init-from", file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("its classifier has 7 classes; re-initialising it for 10 (fine-tuning)"),
        "{stderr}"
    );
    let checkpoint = Checkpoint::load(&saved).unwrap();
    assert_eq!(checkpoint.model.config, DenseNetConfig { classes: 10, ..config.clone() });
    assert_eq!(checkpoint.model.normalization, Normalization::imagenet());
    let state = checkpoint.training.unwrap();
    assert_eq!((state.epoch, state.step), (1, 2), "a fresh run: one epoch of two batches");

    // Our training checkpoint as --init-from: its weights, a new run (epoch 0 again).
    let (out, again) = run("again", &["--init-from", saved.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("its optimiser state is not used"), "{}", text(&out.stderr));
    let state = Checkpoint::load(&again).unwrap().training.unwrap();
    assert_eq!((state.epoch, state.step), (1, 2));

    // Model flags given are checked against the file's shapes; a mismatch names the key.
    let (out, _) = run("checked", &["--init-from", file, "--growth=6"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "tensor `features.denseblock1.denselayer1.conv1.weight` has shape [16, 8, 1, 1] in the \
             checkpoint but [24, 8, 1, 1]"
        ),
        "{stderr}"
    );
    let (out, _) = run("matching", &["--init-from", file, "--model=densenet-bc-10-k4", "--classes=10"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
