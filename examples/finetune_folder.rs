//! Fine-tuning from a torchvision-style `state_dict` on an image folder, with the library
//! alone: load the weights (configuration inferred from their shapes), give the network a
//! classifier for the folder's classes, train, and save a checkpoint that records the class
//! names (so `densenet predict` and `examples/predict.rs` name them).
//!
//! ```text
//! cargo run --release --example finetune_folder                           # generated, seconds
//! cargo run --release --example finetune_folder -- densenet121.safetensors ~/data/flowers 224
//! ```
//!
//! Without arguments it writes, in a temporary directory, a small CIFAR-stem "pretrained"
//! `state_dict` (1000 classes, as `safetensors.torch.save_file` writes one: no metadata) and a
//! folder of red, green and blue JPEG/PNG images, so it runs anywhere in seconds.

use densenet::backend::{self, Backend, BackendTask, UnfusedOps};
use densenet::checkpoint::Checkpoint;
use densenet::data::{BadImages, DataSource, Normalization};
use densenet::state_dict::load_state_dict;
use densenet::train::{EpochMetrics, Model, Observer, TrainConfig, Trainer};
use densenet::{DenseNetConfig, Result};
use std::path::{Path, PathBuf};

/// Prints one line per epoch.
struct PrintEpochs;

impl Observer for PrintEpochs {
    fn epoch_end(&mut self, m: &EpochMetrics) -> Result<()> {
        println!(
            "epoch {}/{}: train loss {:.3}, test accuracy {:.1}%",
            m.epoch,
            m.epochs,
            m.train_loss,
            100.0 * m.test_accuracy
        );
        Ok(())
    }
}

/// The fine-tuning run, generic over the backend [`backend::auto`] picks.
struct FineTune {
    weights: PathBuf,
    data: PathBuf,
    size: usize,
    out: PathBuf,
}

impl BackendTask for FineTune {
    type Output = ();
    type Error = densenet::Error;

    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> Result<()> {
        let weights = load_state_dict(&self.weights, None)?;
        println!("{}: {}", self.weights.display(), weights.model.config.describe());
        // Classes: the sorted sub-directories of DIR/train.
        let source = DataSource::detect(&self.data, Some(self.size), false, None)?;
        let splits = source.open(BadImages::Fail)?;
        let classes = splits.train.classes();
        // A new classifier for the folder's classes; every other weight is the state_dict's.
        let model: Model = weights.model.with_classes(classes, 0)?;
        let config = TrainConfig { epochs: 3, batch: 16, lr: 0.05, ..TrainConfig::default() };
        let mut trainer =
            Trainer::new(backend, model, config, splits.train, splits.test)?.with_data_source(source);
        trainer.fit(Some(&self.out), &mut PrintEpochs)?;
        let saved = Checkpoint::load(&self.out)?;
        let names = saved.data.as_ref().and_then(DataSource::class_names).unwrap_or_default();
        println!("saved {} (classes {names:?})", self.out.display());
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scratch = std::env::temp_dir().join(format!("densenet-finetune-{}", std::process::id()));
    let task = match args.as_slice() {
        [weights, data, size] => FineTune {
            weights: weights.into(),
            data: data.into(),
            size: size.parse().map_err(|_| densenet::Error::Config(format!("size `{size}`")))?,
            out: "finetuned.safetensors".into(),
        },
        [] => {
            std::fs::create_dir_all(&scratch)?;
            let weights = scratch.join("pretrained.safetensors");
            write_pretend_state_dict(&weights)?;
            write_colour_folder(&scratch.join("data"))?;
            FineTune {
                weights,
                data: scratch.join("data"),
                size: 32,
                out: scratch.join("finetuned.safetensors"),
            }
        }
        _ => {
            return Err(densenet::Error::Config(
                "usage: finetune_folder [STATE_DICT.safetensors IMAGE_DIR SIZE]".into(),
            ));
        }
    };
    let backend = backend::auto();
    println!("backend: {}", backend.name());
    backend.run(task)
}

/// A DenseNet-BC (depth 10, k = 8, 1000 classes) with random weights, written with torchvision
/// names and no metadata, as `safetensors.torch.save_file(model.state_dict(), path)` would.
fn write_pretend_state_dict(path: &Path) -> Result<()> {
    let config = DenseNetConfig { classes: 1000, ..DenseNetConfig::bc_cifar(10, 8)? };
    let model = Model::new(&config, Normalization::imagenet(), 1)?;
    let ours = Checkpoint::of_model(model).to_bytes()?;
    let parsed = safetensors::SafeTensors::deserialize(&ours)
        .map_err(|e| densenet::Error::file(path, e.to_string()))?;
    // Only the state_dict's tensors: no optimiser state, no metadata.
    let tensors: Vec<_> =
        parsed.tensors().into_iter().filter(|(n, _)| !n.starts_with("optimizer.")).collect();
    let bytes = safetensors::serialize(tensors, None::<std::collections::HashMap<String, String>>)
        .map_err(|e| densenet::Error::file(path, e.to_string()))?;
    Ok(std::fs::write(path, bytes)?)
}

/// `train/` and `val/` of three classes of noisy single-colour images, JPEG and PNG.
fn write_colour_folder(root: &Path) -> Result<()> {
    for (class, base) in [("blue", [40u8, 60, 190]), ("green", [40, 180, 60]), ("red", [190, 40, 50])] {
        for (split, count) in [("train", 32u32), ("val", 8)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir)?;
            for i in 0..count {
                let ext = if i % 2 == 0 { "png" } else { "jpg" };
                let path = dir.join(format!("{i}.{ext}"));
                image::RgbImage::from_fn(36 + i % 9, 30 + i % 7, |x, y| {
                    let n = ((x * 31 + y * 17 + i * 13) % 41) as u8;
                    image::Rgb(base.map(|c| c.saturating_add(n)))
                })
                .save(&path)
                .map_err(|e| densenet::Error::file(&path, e.to_string()))?;
            }
        }
    }
    Ok(())
}
