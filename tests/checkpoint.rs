//! Checkpoints: torchvision's state_dict names and layouts, exact round trips (bit-identical
//! logits), clear errors for damaged files and other configurations, and atomic saves.

use densenet::Precision;
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
        normalization: Normalization::new([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]),
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
            // Not the default, so that a round trip shows it is recorded.
            precision: Precision::Tf32,
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
    assert_eq!(meta["format"], "densenet-checkpoint-v2");
    let sums: std::collections::HashMap<String, String> = serde_json::from_str(&meta["checksums"]).unwrap();
    assert_eq!(sums.len(), st.len(), "one checksum per tensor");
    assert_eq!(sums["features.norm0.running_var"], format!("{:08x}", crc32c::crc32c(t.data())));
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
    assert!(msg.contains("missing.safetensors: does not exist"), "{msg}");

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
    edit_metadata(bytes, |meta| {
        meta.insert(key.into(), value.into());
    })
}

fn edit_metadata(bytes: &[u8], edit: impl FnOnce(&mut std::collections::HashMap<String, String>)) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    edit(&mut meta);
    safetensors::serialize(st.tensors(), Some(meta)).unwrap()
}

#[test]
fn identical_checkpoints_are_identical_bytes_and_damage_is_named_by_tensor() {
    let cp = training_checkpoint(&small());
    let bytes = cp.to_bytes().unwrap();
    // The metadata map used to be serialised in hash order, different for every map.
    for _ in 0..4 {
        assert_eq!(cp.clone().to_bytes().unwrap(), bytes);
    }
    let path = Path::new("c.safetensors");
    assert_eq!(Checkpoint::from_bytes(&bytes, path).unwrap(), cp);

    // One flipped bit in the data of a tensor.
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let data_start = bytes.len() - st.tensors().iter().map(|(_, v)| v.data().len()).sum::<usize>();
    let mut flipped = bytes.clone();
    flipped[data_start + 1] ^= 0x10;
    let msg = file_error(Checkpoint::from_bytes(&flipped, path));
    assert!(msg.contains("tensor `features.conv0.weight`: checksum mismatch: the file is damaged"), "{msg}");

    // A file of the previous format (no checksums) still loads.
    let v1 = edit_metadata(&bytes, |m| {
        m.remove("checksums");
        m.insert("format".into(), "densenet-checkpoint-v1".into());
    });
    assert_eq!(Checkpoint::from_bytes(&v1, path).unwrap(), cp);
    let unsummed = edit_metadata(&bytes, |m| {
        m.remove("checksums");
    });
    assert!(file_error(Checkpoint::from_bytes(&unsummed, path)).contains("has no `checksums` metadata"));

    // The data must be exactly what the header declares.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 8]);
    let msg = file_error(Checkpoint::from_bytes(&longer, path));
    assert!(msg.contains(&format!("declares {} bytes of data", bytes.len() - data_start)), "{msg}");
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(file_error(Checkpoint::from_bytes(&huge, path)).contains("exceeds the limit"));
}

#[test]
fn absurd_configurations_and_values_in_a_checkpoint_are_rejected_before_use() {
    let cp = training_checkpoint(&small());
    let bytes = cp.to_bytes().unwrap();
    let path = Path::new("c.safetensors");
    // Each of these used to size buffers from the metadata ("capacity overflow").
    for (field, value) in [
        ("growth", serde_json::json!(1_000_000_000u64)),
        ("growth", serde_json::json!(u64::MAX)),
        ("blocks", serde_json::json!([1_000_000_000u64, 1_000_000_000u64])),
        ("bn_size", serde_json::json!(1u64 << 40)),
        ("init_features", serde_json::json!(1u64 << 33)),
        ("classes", serde_json::json!(1u64 << 40)),
    ] {
        let mut cfg = serde_json::to_value(&cp.model.config).unwrap();
        cfg[field] = value;
        let msg =
            file_error(Checkpoint::from_bytes(&with_metadata(&bytes, "config", &cfg.to_string()), path));
        assert!(msg.contains("metadata `config`"), "{field}: {msg}");
    }

    let mut norm = cp.clone();
    norm.model.normalization.std[1] = 0.0;
    let msg = file_error(Checkpoint::from_bytes(&norm.to_bytes().unwrap(), path));
    assert!(msg.contains("metadata `normalization`: channel 1 has mean 0.2 and std 0"), "{msg}");

    let layout = cp.model.layout();
    let mut nan = cp.clone();
    nan.model.params[layout.tensors[0].offset + 2] = f32::NAN;
    let msg = file_error(Checkpoint::from_bytes(&nan.to_bytes().unwrap(), path));
    assert!(msg.contains("tensor `features.conv0.weight` has the non-finite value NaN"), "{msg}");
    let mut inf = cp.clone();
    inf.training.as_mut().unwrap().velocity[0] = f32::INFINITY;
    let msg = file_error(Checkpoint::from_bytes(&inf.to_bytes().unwrap(), path));
    assert!(
        msg.contains("optimizer.momentum_buffer.features.conv0.weight` has the non-finite value inf"),
        "{msg}"
    );
    let mut negative = cp.clone();
    let (norm_name, bn) = &layout.norms[0];
    negative.model.running[bn.running_var + 1] = -0.5;
    let msg = file_error(Checkpoint::from_bytes(&negative.to_bytes().unwrap(), path));
    assert!(
        msg.contains(&format!("tensor `{norm_name}.running_var` has the negative variance -0.5 at index 1")),
        "{msg}"
    );
}

#[cfg(unix)]
#[test]
fn only_regular_files_are_read_and_a_fifo_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.safetensors");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let msg = file_error(Checkpoint::load(&fifo));
    assert!(msg.ends_with("fifo.safetensors: is a FIFO (named pipe), not a regular file"), "{msg}");
    let msg = file_error(Checkpoint::load(dir.path()));
    assert!(msg.ends_with("is a directory, not a regular file"), "{msg}");
    let msg = file_error(Checkpoint::load(Path::new("/dev/null")));
    assert!(msg.contains("/dev/null: is a character device"), "{msg}");
    let link = dir.path().join("loop");
    std::os::unix::fs::symlink(&link, &link).unwrap();
    let msg = file_error(Checkpoint::load(&link));
    assert!(msg.contains("loop: is a symbolic link loop"), "{msg}");
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
