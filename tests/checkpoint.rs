//! Checkpoints: torchvision's state_dict names and layouts, exact round trips (bit-identical
//! logits), clear errors for damaged files and other configurations, and atomic saves.

use densenet::backend::cpu::CpuBackend;
use densenet::checkpoint::{Checkpoint, OPTIMIZER_PREFIX, state_dict_names, write_atomic};
use densenet::config::DenseNetConfig;
use densenet::data::{DataSource, Normalization, SyntheticSpec};
use densenet::efficient::Options;
use densenet::error::Error;
use densenet::params::{ParamLayout, ohwi_to_oihw};
use densenet::train::{Model, Schedule, TrainConfig, TrainingState};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use std::io::Write;
use std::path::Path;

/// torchvision's `DenseNet.state_dict()` keys, written out from its module structure:
/// `features` = conv0, norm0, relu0, pool0, then denseblock i (denselayer j: norm1, relu1,
/// conv1, norm2, relu2, conv2) and transition i (norm, relu, conv, pool), then norm5;
/// `classifier`. Convs have no bias; a BatchNorm2d contributes weight, bias, running_mean,
/// running_var, num_batches_tracked.
fn torchvision_keys(blocks: &[usize]) -> Vec<String> {
    let bn = |p: &str| {
        ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map(|s| format!("{p}.{s}"))
    };
    let mut keys = vec!["features.conv0.weight".to_string()];
    keys.extend(bn("features.norm0"));
    for (i, &layers) in blocks.iter().enumerate() {
        for j in 1..=layers {
            let p = format!("features.denseblock{}.denselayer{j}", i + 1);
            keys.extend(bn(&format!("{p}.norm1")));
            keys.push(format!("{p}.conv1.weight"));
            keys.extend(bn(&format!("{p}.norm2")));
            keys.push(format!("{p}.conv2.weight"));
        }
        if i + 1 < blocks.len() {
            keys.extend(bn(&format!("features.transition{}.norm", i + 1)));
            keys.push(format!("features.transition{}.conv.weight", i + 1));
        }
    }
    keys.extend(bn("features.norm5"));
    keys.extend(["classifier.weight".to_string(), "classifier.bias".to_string()]);
    keys
}

#[test]
fn densenet121_has_torchvisions_727_state_dict_keys() {
    let names = state_dict_names(&DenseNetConfig::preset("densenet121").unwrap());
    assert_eq!(names.len(), 727);
    assert_eq!(names, torchvision_keys(&[6, 12, 24, 16]));
    assert_eq!(names[0], "features.conv0.weight");
    assert_eq!(names[5], "features.norm0.num_batches_tracked");
    assert_eq!(names[6], "features.denseblock1.denselayer1.norm1.weight");
    assert!(names.contains(&"features.denseblock3.denselayer24.conv2.weight".to_string()));
    assert!(names.contains(&"features.transition3.norm.running_var".to_string()));
    assert_eq!(names[726], "classifier.bias");
    assert_eq!(state_dict_names(&DenseNetConfig::preset("densenet161").unwrap()).len(), 967);
}

fn small() -> DenseNetConfig {
    let mut c = DenseNetConfig::bc_cifar(10, 6).unwrap();
    c.blocks = vec![2, 3];
    c.classes = 7;
    c
}

fn imagenet_small() -> DenseNetConfig {
    let mut c = DenseNetConfig::preset("densenet121").unwrap();
    c.blocks = vec![2, 1];
    c.growth = 4;
    c.init_features = 8;
    c.classes = 5;
    c
}

fn random_model(cfg: &DenseNetConfig, seed: u64) -> Model {
    let (params, running) = ParamLayout::new(cfg).init_random(seed);
    Model {
        config: cfg.clone(),
        normalization: Normalization { mean: [0.1, 0.2, 0.3], std: [0.4, 0.5, 0.6] },
        params,
        running,
        batches_tracked: 1234,
    }
}

fn training_checkpoint(cfg: &DenseNetConfig) -> Checkpoint {
    let model = random_model(cfg, 3);
    let velocity = (0..model.params.len()).map(|i| (i as f32 * 0.37).sin()).collect();
    Checkpoint {
        model,
        data: Some(DataSource::Synthetic(SyntheticSpec { seed: 2, size: 16, train: 10, test: 5 })),
        training: Some(TrainingState {
            config: TrainConfig { epochs: 9, schedule: Schedule::Cosine, seed: 11, ..TrainConfig::default() },
            epoch: 4,
            step: 321,
            velocity,
        }),
    }
}

fn logits(model: &Model, images: &[f32], h: usize, w: usize) -> Vec<u32> {
    let mut net = model.network(CpuBackend::new(), 2, h, w, Options::eval()).unwrap();
    net.set_batch(images, &[]).unwrap();
    net.forward_eval().unwrap();
    net.logits().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn save_then_load_gives_bit_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, h, w) in [(small(), 8, 8), (imagenet_small(), 29, 31)] {
        let ckpt = training_checkpoint(&cfg);
        let path = dir.path().join("c.safetensors");
        ckpt.save(&path).unwrap();
        let loaded = Checkpoint::load(&path).unwrap();
        assert_eq!(loaded, ckpt, "every field survives the round trip");
        let images: Vec<f32> = (0..2 * h * w * 3).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        assert_eq!(logits(&loaded.model, &images, h, w), logits(&ckpt.model, &images, h, w));
    }
}

#[test]
fn tensors_are_stored_as_pytorch_lays_them_out() {
    let cfg = imagenet_small();
    let model = random_model(&cfg, 4);
    let bytes = Checkpoint::of_model(model.clone()).to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    // A model checkpoint holds exactly the state_dict.
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    let mut want = state_dict_names(&cfg);
    names.sort();
    want.sort();
    assert_eq!(names, want);

    let layout = model.layout();
    let conv0 = &layout.tensors[0];
    let t = st.tensor("features.conv0.weight").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::F32, &[8usize, 3, 7, 7][..]));
    let oihw = ohwi_to_oihw(&model.params[conv0.offset..conv0.offset + conv0.len], 8, 7, 3);
    let stored: Vec<f32> =
        t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(stored, oihw);

    let t = st.tensor("features.denseblock2.denselayer1.norm2.num_batches_tracked").unwrap();
    assert_eq!((t.dtype(), t.shape()), (Dtype::I64, &[][..]));
    assert_eq!(i64::from_le_bytes(t.data().try_into().unwrap()), 1234);
    let t = st.tensor("features.norm0.running_var").unwrap();
    assert_eq!(t.shape(), &[8]);

    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["format"], "densenet-checkpoint-v1");
    let cfg_json: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    assert_eq!(cfg_json["growth"], 4);
    assert_eq!(cfg_json["stem"], "imagenet");

    // A training checkpoint adds one momentum buffer per parameter, in the same layout.
    let bytes = training_checkpoint(&cfg).to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), want.len() + layout.tensors.len());
    let t = st.tensor(&format!("{OPTIMIZER_PREFIX}features.conv0.weight")).unwrap();
    assert_eq!(t.shape(), &[8, 3, 7, 7]);
}

fn file_error(result: densenet::Result<Checkpoint>) -> String {
    match result {
        Err(e @ Error::File { .. }) => e.to_string(),
        Err(e) => panic!("expected a file error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn damaged_checkpoints_are_reported_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let bytes = training_checkpoint(&small()).to_bytes().unwrap();
    let name = path.display().to_string();

    for cut in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = file_error(Checkpoint::load(&path));
        assert!(msg.starts_with(&name) && msg.contains("not a valid safetensors file"), "{cut}: {msg}");
    }
    let mut garbled = bytes.clone();
    garbled[10] = b'#';
    std::fs::write(&path, &garbled).unwrap();
    assert!(file_error(Checkpoint::load(&path)).contains("not a valid safetensors file"));

    let msg = file_error(Checkpoint::load(&dir.path().join("missing.safetensors")));
    assert!(msg.contains("missing.safetensors: cannot read"), "{msg}");

    // A valid safetensors file that densenet did not write.
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &data).unwrap();
    let foreign = safetensors::serialize([("x", view)], None).unwrap();
    std::fs::write(&path, foreign).unwrap();
    let msg = file_error(Checkpoint::load(&path));
    assert!(msg.contains("has no `format` metadata"), "{msg}");
}

/// Rewrites one metadata entry of a checkpoint (the header is JSON; tensors are untouched).
fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.insert(key.into(), value.into());
    safetensors::serialize(st.tensors(), Some(meta)).unwrap()
}

#[test]
fn a_checkpoint_for_another_configuration_names_the_first_mismatched_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let ckpt = training_checkpoint(&small());
    ckpt.save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    loaded.check_config(&small(), &path).unwrap();

    let mut other = small();
    other.classes = 10;
    let msg = loaded.check_config(&other, &path).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("`classifier.weight` has shape [7, 30] in the checkpoint but [10, 30]"), "{msg}");

    let mut other = small();
    other.growth = 8;
    let msg = loaded.check_config(&other, &path).unwrap_err().to_string();
    let want = "`features.denseblock1.denselayer1.conv1.weight` has shape [24, 12, 1, 1] in the checkpoint but [32, 12, 1, 1]";
    assert!(msg.contains(want), "{msg}");

    let mut other = small();
    other.blocks = vec![2, 2];
    let msg = loaded.check_config(&other, &path).unwrap_err().to_string();
    assert!(msg.contains("`features.norm5.weight` has shape [30] in the checkpoint but [24]"), "{msg}");

    // Metadata that disagrees with the tensors is caught at load time.
    let mut lying = small();
    lying.blocks = vec![2, 4];
    let bytes =
        with_metadata(&std::fs::read(&path).unwrap(), "config", &serde_json::to_string(&lying).unwrap());
    std::fs::write(&path, bytes).unwrap();
    let msg = file_error(Checkpoint::load(&path));
    assert!(msg.contains("has no tensor `features.denseblock2.denselayer4.norm1.weight`"), "{msg}");
}

#[test]
fn a_save_that_fails_midway_leaves_the_old_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let old = training_checkpoint(&small());
    old.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();

    // Simulate a crash while the new checkpoint is being written: half the bytes reach the
    // temporary file, then the write fails.
    let mut newer = training_checkpoint(&small());
    newer.training.as_mut().unwrap().epoch = 5;
    let new_bytes = newer.to_bytes().unwrap();
    let result = write_atomic(&path, |f| {
        f.write_all(&new_bytes[..new_bytes.len() / 2])?;
        Err(std::io::Error::other("simulated crash"))
    });
    let msg = result.unwrap_err().to_string();
    assert!(msg.contains("checkpoint.safetensors: cannot write: simulated crash"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the old file is unchanged");
    assert_eq!(Checkpoint::load(&path).unwrap(), old);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("checkpoint.safetensors")],
        "no temporary file is left"
    );

    // A process killed mid-write leaves its temporary file behind; that neither disturbs
    // loading nor the next save.
    std::fs::write(dir.path().join(".checkpoint.safetensors.tmp-1"), &new_bytes[..100]).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), old);
    newer.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), newer);

    // Saving into a directory that does not exist fails cleanly.
    let missing = dir.path().join("no/such/dir/c.safetensors");
    assert!(matches!(newer.save(&missing), Err(Error::File { .. })));
    assert!(!Path::new(&missing).exists());
}
