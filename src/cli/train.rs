//! `densenet train`: SGD training with per-epoch test evaluation, atomic checkpoints and a
//! JSONL log.

use super::Outcome;
use super::backend_choice::{BackendChoice, PrecisionChoice, run_on};
use super::model_args::ModelArgs;
use super::progress::Progress;
use super::train_dir::{Log, TrainDir};
use clap::{Args, ValueEnum};
use densenet::Precision;
use densenet::backend::{Backend, BackendTask, UnfusedOps};
use densenet::checkpoint::{Checkpoint, check_config, remove_stale_temps};
use densenet::config::DenseNetConfig;
use densenet::data::{BadImages, DataSource, ImageSplits, SyntheticSpec};
use densenet::error::Error;
use densenet::state_dict::load_state_dict;
use densenet::train::{Model, Schedule, TrainConfig, Trainer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

/// The model `train` uses when `--model` is not given: DenseNet-BC with depth 22 (three
/// blocks of 3 layers) and k = 12, 72 k parameters. It reaches ~99% on the synthetic test
/// set in 5 epochs, about two minutes on 2 CPU cores; DenseNet-BC-100 would take half an
/// hour for the same run.
const DEFAULT_MODEL: &str = "densenet-bc-22-k12";

/// `--model` of `train`: the shared flag with this command's default.
const MODEL_HELP: &str = "Preset: densenet-bc-<depth>-k<growth> (CIFAR, e.g. densenet-bc-100-k12) or \
    densenet121/169/201/161 (ImageNet stem); default densenet-bc-22-k12; the flags below override \
    it. The number of classes follows the data unless --classes is given. With --init-from the \
    network is the file's: --model and the flags below, where given, are checked against its \
    shapes (the flags alone modify the file's configuration)";

/// Name of the checkpoint file in `--checkpoint-dir`.
const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ScheduleArg {
    /// ÷10 at 50% and at 75% of the epochs (the DenseNet paper's schedule).
    Step,
    /// Cosine decay to zero over the run, updated every step (suits short runs).
    Cosine,
}

#[derive(Args, Debug)]
#[command(mut_arg("model", |a| a.help(MODEL_HELP)))]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory with the CIFAR-10 (data_batch_1..5.bin, test_batch.bin) or CIFAR-100
    /// (train.bin, test.bin) binary files, or else an image folder as torchvision's
    /// ImageFolder: DIR/train/<class>/*.{jpg,jpeg,png} and DIR/val/<class>/... (classes: the
    /// sorted sub-directories of train; val may lack some). Folders get torchvision's ImageNet
    /// transforms (train: random resized crop + flip; test: resize to size·256/224, centre
    /// crop) and ImageNet's mean and std.
    #[arg(long, value_name = "DIR", conflicts_with = "synthetic")]
    pub data: Option<PathBuf>,
    /// Side of the square network input of an image folder (default 224; CIFAR is 32x32).
    #[arg(long, value_name = "N", requires = "data")]
    pub size: Option<usize>,
    /// What to do with an image of a folder that cannot be read or decoded: fail (stop with
    /// its path, as torchvision does; the last checkpoint is kept) or skip (leave it out,
    /// with one warning per pass giving the count and the first file).
    #[arg(long, value_enum, default_value = "fail")]
    pub bad_images: BadImagesArg,
    /// Train on the embedded synthetic data set: 10 classes of 32x32 shapes and textures
    /// generated from a fixed seed (the default when --data is not given).
    #[arg(long)]
    pub synthetic: bool,
    /// Use this many training images (synthetic: generate them; CIFAR: the first ones; image
    /// folder: an even spread over the sorted files). Default: 5000 synthetic, all of the
    /// others.
    #[arg(long, value_name = "N")]
    pub train_images: Option<usize>,
    /// Use this many test images. Default: 1000 synthetic, all of the others.
    #[arg(long, value_name = "N")]
    pub test_images: Option<usize>,
    /// Number of epochs of the run (the schedule spans them all; with --resume, training
    /// continues up to this epoch).
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Images per batch (the last incomplete batch of an epoch is dropped).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Base learning rate of SGD (Nesterov momentum 0.9, weight decay 1e-4 on every
    /// parameter).
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "cosine")]
    schedule: ScheduleArg,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// How the convolutions multiply and activations are stored: fp32 (exact), tf32 (tensor
    /// cores) or bf16 (bf16 activations and tensor cores). Recorded in the checkpoint; --resume continues in the checkpoint's precision, which this must then match.
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionChoice>,
    /// Directory of the checkpoint (checkpoint.safetensors, rewritten atomically after every
    /// epoch; created if missing).
    #[arg(long, value_name = "D", default_value = "checkpoints")]
    pub checkpoint_dir: PathBuf,
    /// Continue from the checkpoint in --checkpoint-dir (model, momentum, epoch). Run the
    /// same command again with --resume to continue a stopped run exactly (the log loses
    /// any line past the checkpoint's epoch).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Start from the weights of FILE instead of a random initialisation (fresh optimiser
    /// state, epoch 0): a torchvision DenseNet state_dict saved as safetensors
    /// (`safetensors.torch.save_file(model.state_dict(), FILE)`; `module.` prefixes and the old
    /// `norm.1`/`conv.1` names are accepted; F32, F16 or BF16) or a densenet checkpoint. The
    /// configuration is inferred from the shapes. A classifier of another class count than
    /// the data's (or --classes) is re-initialised (fine-tuning). A state_dict's inputs are
    /// normalised with ImageNet's mean and std, a checkpoint's as it records.
    #[arg(long, value_name = "FILE", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Start a new run even though --checkpoint-dir holds a checkpoint, replacing it after
    /// the first epoch (without this flag such a run is refused).
    #[arg(long)]
    pub overwrite: bool,
    /// Append one JSON object per epoch to this file (truncated first unless --resume), each
    /// flushed to disk before its epoch's checkpoint replaces the previous one.
    #[arg(long, value_name = "FILE.jsonl")]
    pub log: Option<PathBuf>,
    /// Seed of the initial weights, the shuffling and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--bad-images`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BadImagesArg {
    Fail,
    Skip,
}

impl From<BadImagesArg> for BadImages {
    fn from(b: BadImagesArg) -> BadImages {
        match b {
            BadImagesArg::Fail => BadImages::Fail,
            BadImagesArg::Skip => BadImages::Skip,
        }
    }
}

impl TrainArgs {
    fn source(&self) -> densenet::Result<DataSource> {
        Ok(match &self.data {
            // Recorded in the checkpoint: an absolute path lets `eval` find it from anywhere.
            Some(dir) => {
                let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                DataSource::detect(&dir, self.size, false, None)?
            }
            None => {
                let d = SyntheticSpec::default();
                DataSource::Synthetic(SyntheticSpec {
                    train: self.train_images.unwrap_or(d.train),
                    test: self.test_images.unwrap_or(d.test),
                    ..d
                })
            }
        })
    }

    /// The data set, cut to --train-images / --test-images.
    fn data(&self) -> densenet::Result<(DataSource, ImageSplits)> {
        let source = self.source()?;
        let mut data = source.open(self.bad_images.into())?;
        if let Some(n) = self.train_images {
            data.train.truncate(n);
        }
        if let Some(n) = self.test_images {
            data.test.truncate(n);
        }
        Ok((source, data))
    }

    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            schedule: match self.schedule {
                ScheduleArg::Step => Schedule::Step,
                ScheduleArg::Cosine => Schedule::Cosine,
            },
            seed: self.seed,
            ..TrainConfig::default()
        }
    }
}

pub fn run(args: &TrainArgs) -> anyhow::Result<Outcome> {
    run_on(args.backend, precision(args), Run { args })
}

/// `--precision`, else (with --resume) the precision the checkpoint's run computed in, else
/// fp32. A checkpoint that cannot be read is left to the run, which reports it in context.
fn precision(args: &TrainArgs) -> Precision {
    if let Some(p) = args.precision {
        return p.into();
    }
    let path = args.checkpoint_dir.join(CHECKPOINT_FILE);
    if args.resume
        && let Ok(Checkpoint { training: Some(state), .. }) = Checkpoint::load(&path)
    {
        return state.precision;
    }
    Precision::Fp32
}

/// `train` on the chosen backend.
struct Run<'a> {
    args: &'a TrainArgs,
}

impl BackendTask for Run<'_> {
    type Output = Outcome;
    type Error = anyhow::Error;

    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<Outcome> {
        let args = self.args;
        let train = args.train_config();
        train.validate()?;
        let mut config = args.model.config_or(DEFAULT_MODEL)?;
        let path = args.checkpoint_dir.join(CHECKPOINT_FILE);
        // Every check comes before anything is created, so that a rejected run leaves
        // nothing behind. An existing directory is locked first: a second run on it is told
        // who holds it rather than anything about the checkpoint the first one is writing.
        let mut train_dir = TrainDir::lock_existing(&args.checkpoint_dir, &path)?;
        let has_checkpoint = std::fs::symlink_metadata(&path).is_ok();
        if has_checkpoint && !args.resume && !args.overwrite {
            return Err(Error::file(
                &path,
                "already holds a checkpoint: continue its run with --resume, or start a new one that \
                 replaces it with --overwrite",
            )
            .into());
        }
        if let Some(log) = &args.log {
            densenet::files::check_output_file(log, "--log")?;
        }
        let (source, data) = args.data()?;
        // The classifier follows the data unless --classes says otherwise.
        let classes = args.model.classes.unwrap_or(data.train.classes());
        config.classes = classes;
        let initial = args.init_from.as_ref().map(|f| initial_model(args, f, classes)).transpose()?;
        if let Some(m) = &initial {
            config = m.config.clone();
        }
        let description =
            format!("{} ({} train / {} test images)", source.describe(), data.train.len(), data.test.len());
        let (train_set, test_set) = (data.train, data.test);
        let (device, precision) = (backend.name(), backend.precision());
        let mut trainer = if args.resume {
            if !has_checkpoint {
                return Err(Error::file(
                    &path,
                    "no checkpoint to resume from (train without --resume first)",
                )
                .into());
            }
            let checkpoint = Checkpoint::load(&path)?;
            checkpoint.check_config(&config, &path)?;
            Trainer::resume(backend, checkpoint, train, train_set, test_set)?
        } else {
            let model = match initial {
                Some(m) => m,
                None => Model::new(&config, train_set.normalization()?, args.seed)?,
            };
            Trainer::new(backend, model, train, train_set, test_set)?
        }
        .with_data_source(source);

        let name = match &args.init_from {
            Some(f) => format!("the weights of {}", f.display()),
            None => args.model.preset_or(DEFAULT_MODEL).to_string(),
        };
        let t = trainer.config();
        println!(
            "training {name} ({} blocks {:?}, k={}, {} parameters) on {description}",
            config.blocks.len(),
            config.blocks,
            config.growth,
            densenet::info::thousands(densenet::params::ParamLayout::new(&config).num_params as u64)
        );
        println!(
            "{} epochs of {} batches of {}, SGD lr {} ({} schedule), Nesterov momentum {}, \
             weight decay {}, {device} ({precision})",
            t.epochs,
            trainer.batches_per_epoch(),
            t.batch,
            t.lr,
            t.schedule,
            t.momentum,
            t.weight_decay
        );
        if trainer.epoch() >= t.epochs {
            println!(
                "nothing to do: {} already holds {} of {} epochs",
                path.display(),
                trainer.epoch(),
                t.epochs
            );
            return Ok(Outcome::Success);
        }
        if trainer.epoch() > 0 {
            println!(
                "resuming after epoch {} (step {}) from {}",
                trainer.epoch(),
                trainer.step(),
                path.display()
            );
        }

        // From here on a signal stops training at the next safe point (a save in progress
        // completes), with the last checkpoint and no temporary file left — also before the
        // first step, so that a new directory is removed again rather than left with its lock
        // file. A second SIGINT or SIGTERM exits at once (status 130/143; a temporary file it
        // leaves is removed by the next start).
        let signal = Arc::new(AtomicUsize::new(0));
        let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Registered before the flag, so that the first signal finds it unset.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, signalled.clone())?;
            signal_hook::flag::register(sig, signalled.clone())?;
            signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
        }
        // Created only now, so that a run rejected above leaves nothing behind.
        let _train_dir = match train_dir.take() {
            Some(d) => d,
            None => TrainDir::create(&args.checkpoint_dir, &path)?,
        };
        // Safe under the lock: no other process saves into this directory.
        let removed = remove_stale_temps(&path)?;
        if removed > 0 {
            println!("removed {removed} temporary file(s) of interrupted saves");
        }
        // A resumed run's log keeps the epochs its checkpoint holds; a new run's starts empty.
        let log = args.log.as_ref().map(|p| Log::open(p, trainer.epoch())).transpose()?;
        let mut progress = Progress::new(log).with_stop(signal.clone());
        let start = Instant::now();
        let result = trainer.fit(Some(&path), &mut progress);
        progress.finish();
        let history = match result {
            Err(e @ Error::Interrupted(_)) => {
                eprintln!("error: {e}");
                // Only SIGINT or SIGTERM (2, 15) is ever stored.
                return Ok(Outcome::Signal(signal.load(std::sync::atomic::Ordering::SeqCst) as u8));
            }
            other => other?,
        };
        let Some(last) = history.last() else {
            return Err(anyhow::anyhow!("no epoch ran"));
        };
        println!(
            "done in {:.1} s: test accuracy {:.1}%, test loss {:.3}; checkpoint {}",
            start.elapsed().as_secs_f64(),
            100.0 * last.test_accuracy,
            last.test_loss,
            path.display()
        );
        Ok(Outcome::Success)
    }
}

/// The model `--init-from FILE` starts from: the file's weights, its configuration checked
/// against the model flags that were given, and a classifier for `classes` classes
/// (re-initialised from --seed when the file's has another count). Notes go to stderr.
fn initial_model(args: &TrainArgs, file: &Path, classes: usize) -> densenet::Result<Model> {
    let weights = load_state_dict(file, None)?;
    let mut model = weights.model;
    if args.model.shape_given() {
        // The flags given modify --model, or else the file's own configuration; the
        // classifier is the one part that may differ (see below).
        let base = match &args.model.model {
            Some(preset) => DenseNetConfig::preset(preset)?,
            None => model.config.clone(),
        };
        let expected = DenseNetConfig { classes: model.config.classes, ..args.model.override_config(base)? };
        check_config(&model.config, &expected, file)?;
    }
    eprintln!(
        "{}: {} ({})",
        file.display(),
        if weights.state_dict {
            "a state_dict"
        } else {
            "a densenet checkpoint (its optimiser state is not used)"
        },
        model.config.describe()
    );
    if weights.state_dict {
        eprintln!(
            "{}: normalising inputs with ImageNet's mean and std (a state_dict records none)",
            file.display()
        );
    }
    if classes != model.config.classes {
        eprintln!(
            "{}: its classifier has {} classes; re-initialising it for {classes} (fine-tuning)",
            file.display(),
            model.config.classes
        );
        model = model.with_classes(classes, args.seed)?;
    }
    Ok(model)
}
