//! Predicting classes of image files with the library alone: load a checkpoint, decode the
//! images, and let [`Model::predict`] apply torchvision's eval transform at the model's input
//! size and run an eval-mode network on the backend [`backend::auto`] picks.
//!
//! ```text
//! cargo run --release --example predict -- CHECKPOINT IMAGE...
//! cargo run --release --example predict     # a small random model on two generated images
//! ```

use densenet::backend::{self, Backend, BackendTask, UnfusedOps};
use densenet::checkpoint::Checkpoint;
use densenet::data::DataSource;
use densenet::data::folder::decode_image;
use densenet::data::{Normalization, SyntheticSpec};
use densenet::train::{Model, input_size};
use densenet::{DenseNetConfig, Result};
use std::path::PathBuf;

/// The prediction, generic over the backend.
struct Predict {
    checkpoint: Checkpoint,
    images: Vec<PathBuf>,
}

impl BackendTask for Predict {
    type Output = ();
    type Error = densenet::Error;

    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> Result<()> {
        let Checkpoint { model, data, .. } = self.checkpoint;
        let size = input_size(&model.config, data.as_ref());
        let names = data.as_ref().and_then(DataSource::class_names);
        let decoded = self.images.iter().map(|p| decode_image(p)).collect::<Result<Vec<_>>>()?;
        for (path, p) in self.images.iter().zip(model.predict(backend, &decoded, size, 32)?) {
            let top: Vec<String> = p
                .top(3)
                .into_iter()
                .map(|(c, prob)| {
                    let name = names.as_ref().map_or(format!("class {c}"), |n| n[c].clone());
                    format!("{name} {:.1}%", 100.0 * prob)
                })
                .collect();
            println!("{}: {}", path.display(), top.join(", "));
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let task = match args.split_first() {
        Some((checkpoint, images)) if !images.is_empty() => {
            Predict { checkpoint: Checkpoint::load(checkpoint)?, images: images.to_vec() }
        }
        _ => demo()?,
    };
    let backend = backend::auto();
    println!("backend: {}", backend.name());
    backend.run(task)
}

/// A random small model that records the synthetic data set (so it has class names and a
/// 32×32 input), and a JPEG and a PNG to classify.
fn demo() -> Result<Predict> {
    let dir = std::env::temp_dir().join(format!("densenet-predict-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let model = Model::new(&DenseNetConfig::bc_cifar(10, 4)?, Normalization::imagenet(), 0)?;
    let mut checkpoint = Checkpoint::of_model(model);
    checkpoint.data = Some(DataSource::Synthetic(SyntheticSpec::default()));
    let mut images = Vec::new();
    for (name, colour) in [("orange.jpg", [230u8, 140, 20]), ("teal.png", [20, 160, 150])] {
        let path = dir.join(name);
        image::RgbImage::from_fn(48, 40, |x, y| image::Rgb(colour.map(|c| c ^ ((x * y) as u8 & 16))))
            .save(&path)
            .map_err(|e| densenet::Error::file(&path, e.to_string()))?;
        images.push(path);
    }
    Ok(Predict { checkpoint, images })
}
