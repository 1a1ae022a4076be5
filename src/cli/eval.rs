//! `densenet eval`: test-set accuracy of a checkpoint with an eval-mode network (running
//! statistics, no gradient buffers).

use super::backend_choice::{BackendChoice, PrecisionChoice, run_on};
use super::progress::{Progress, megabytes};
use super::train::BadImagesArg;
use clap::{ArgGroup, Args};
use densenet::backend::{Backend, BackendTask, UnfusedOps};
use densenet::checkpoint::Checkpoint;
use densenet::data::DataSource;
use densenet::efficient::Options;
use densenet::error::Error;
use densenet::state_dict::load_state_dict;
use densenet::train::evaluate;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("weights").required(true).args(["checkpoint", "init_from"])))]
pub struct EvalArgs {
    /// Checkpoint written by `densenet train` (the model configuration is read from it).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate the weights of FILE: a torchvision DenseNet state_dict saved as safetensors
    /// (`safetensors.torch.save_file(model.state_dict(), FILE)`; `module.` prefixes and the
    /// old `norm.1`/`conv.1` names are accepted; F32, F16 or BF16), whose configuration is
    /// inferred from its shapes and whose inputs are normalised with ImageNet's mean and std;
    /// or a densenet checkpoint (as --checkpoint). A state_dict names no data set: pass --data.
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,
    /// CIFAR directory or image folder (its DIR/val/<class>/*.{jpg,jpeg,png}) whose test split
    /// to evaluate (default: the data set recorded in the checkpoint). An image folder's class
    /// names are the checkpoint's when it records a folder, else those of DIR/train (or of
    /// DIR/val when there is no train).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Side of the square network input of an image folder (default: the checkpoint's, else
    /// 224).
    #[arg(long, value_name = "N")]
    pub size: Option<usize>,
    /// What to do with an image of a folder that cannot be read or decoded: fail (stop with
    /// its path) or skip (leave it out of the accuracy, with one warning giving the count).
    #[arg(long, value_enum, default_value = "fail")]
    pub bad_images: BadImagesArg,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// How the convolutions multiply and activations are stored: fp32 (exact), tf32 (tensor
    /// cores) or bf16 (bf16 activations and tensor cores).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionChoice,
    /// Print one JSON object (`accuracy`, `loss`, `images`, `skipped_images`,
    /// `peak_memory_bytes`) instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    images: usize,
    skipped_images: usize,
    loss: f64,
    accuracy: f64,
    peak_memory_bytes: usize,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    run_on(args.backend, args.precision.into(), Eval { args })
}

/// `eval` on the chosen backend.
struct Eval<'a> {
    args: &'a EvalArgs,
}

impl BackendTask for Eval<'_> {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<()> {
        let args = self.args;
        // Printed once the network is built: a failed run's stderr is its one error line.
        let mut note = None;
        let (path, model, recorded) = match (&args.checkpoint, &args.init_from) {
            (Some(path), _) => {
                let checkpoint = Checkpoint::load(path)?;
                (path, checkpoint.model, checkpoint.data)
            }
            (None, Some(path)) => {
                let weights = load_state_dict(path, None)?;
                if weights.state_dict {
                    note = Some(format!(
                        "{}: a state_dict ({}); normalising inputs with ImageNet's mean and std",
                        path.display(),
                        weights.model.config.describe()
                    ));
                }
                (path, weights.model, weights.data)
            }
            // clap requires one of the two.
            (None, None) => anyhow::bail!("--checkpoint or --init-from is needed"),
        };
        let source = match (&args.data, recorded) {
            (Some(dir), recorded) => {
                // A folder's labels are the recorded class order, and its size the trained one.
                let (known, size) = match recorded {
                    Some(DataSource::Folder { size, classes, .. }) => {
                        (Some(classes), args.size.or(Some(size)))
                    }
                    _ => (None, args.size),
                };
                DataSource::detect(dir, size, true, known.as_deref())?
            }
            (None, Some(DataSource::Folder { dir, size, classes })) => {
                DataSource::Folder { dir, size: args.size.unwrap_or(size), classes }
            }
            (None, Some(source)) => source,
            (None, None) => {
                return Err(Error::file(path, "records no data set; pass --data DIR").into());
            }
        };
        let test = source.open_test(args.bad_images.into())?;
        if test.is_empty() {
            return Err(Error::Config(format!("{} has no images", test.name())).into());
        }
        // Buffers for more images than the test set holds would only be padding.
        let batch = args.batch.min(test.len());
        let (height, width) = test.shape();
        let mut net = model.network(backend, batch, height, width, Options::eval())?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let mut progress = Progress::new(None);
        let result = evaluate(&mut net, test.clone(), &model.normalization, &mut progress);
        progress.finish();
        let e = result?;
        if !e.loss.is_finite() {
            // A checkpoint holding NaN or infinite weights or statistics: a failure, not a result.
            anyhow::bail!(
                "{}: the test loss is {} (accuracy {:.2}%): the checkpoint's parameters or running \
                 statistics are not finite",
                path.display(),
                e.loss,
                100.0 * e.accuracy
            );
        }
        let peak_memory_bytes = net.backend().memory().peak;
        let report = Report {
            images: e.images,
            skipped_images: e.skipped,
            loss: e.loss,
            accuracy: e.accuracy,
            peak_memory_bytes,
        };
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{}: test accuracy {:.2}% on {} images of {}, loss {:.4}; eval-mode peak memory {}",
                path.display(),
                100.0 * report.accuracy,
                report.images,
                test.name(),
                report.loss,
                megabytes(report.peak_memory_bytes)
            );
        }
        Ok(())
    }
}
