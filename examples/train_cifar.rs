//! Training from Rust with the library API: DenseNet-BC on CIFAR-10/100, or on the embedded
//! synthetic data set when no directory is given.
//!
//! ```text
//! cargo run --release --example train_cifar                          # synthetic, 3 epochs
//! cargo run --release --example train_cifar -- ~/data/cifar-10-batches-bin 300
//! ```
//!
//! The second form is the DenseNet paper's CIFAR recipe with DenseNet-BC-100 (k = 12): 300
//! epochs of batch 64, SGD with Nesterov momentum 0.9 and weight decay 1e-4, learning rate
//! 0.1 divided by 10 at 50% and 75% of training, crops from 4-pixel padding and flips.

use densenet::backend::cpu::CpuBackend;
use densenet::data::{DataSource, Normalization, SyntheticSpec};
use densenet::train::{EpochMetrics, Model, Observer, TrainConfig, Trainer};
use densenet::{DenseNetConfig, Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prints one line per epoch.
struct PrintEpochs;

impl Observer for PrintEpochs {
    fn epoch_end(&mut self, m: &EpochMetrics) -> Result<()> {
        println!(
            "epoch {}/{}: train loss {:.3}, test accuracy {:.2}% ({:.0} images/s)",
            m.epoch,
            m.epochs,
            m.train_loss,
            100.0 * m.test_accuracy,
            m.images_per_second
        );
        Ok(())
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (source, mut config, epochs) = match args.next() {
        Some(dir) => {
            let epochs = match args.next() {
                None => 300,
                Some(e) => e.parse().map_err(|_| Error::Config(format!("epochs `{e}` is not a number")))?,
            };
            (
                DataSource::Cifar { dir: PathBuf::from(dir) },
                DenseNetConfig::preset("densenet-bc-100-k12")?,
                epochs,
            )
        }
        None => (DataSource::Synthetic(SyntheticSpec::default()), DenseNetConfig::bc_cifar(22, 12)?, 3),
    };
    let data = source.load()?;
    config.classes = data.train.classes;

    // Inputs are normalised with the training set's per-channel statistics, which the
    // checkpoint keeps for evaluation.
    let normalization = Normalization::of(&data.train)?;
    let model = Model::new(&config, normalization, 0)?;
    let train = TrainConfig { epochs, ..TrainConfig::default() };
    let mut trainer =
        Trainer::new(CpuBackend::new(), model, train, Arc::new(data.train), Arc::new(data.test))?
            .with_data_source(source);

    // One checkpoint, rewritten atomically after every epoch; run again after a crash with
    // `Trainer::resume(.., Checkpoint::load(path)?, ..)` to continue exactly.
    let checkpoint = Path::new("train_cifar.safetensors");
    trainer.fit(Some(checkpoint), &mut PrintEpochs)?;
    println!("checkpoint: {} (a torchvision state_dict plus optimiser state)", checkpoint.display());
    Ok(())
}
