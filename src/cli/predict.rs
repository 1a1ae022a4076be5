//! `densenet predict`: the most probable classes of image files under a checkpoint or a
//! torchvision state_dict, with an eval-mode network.

use super::backend_choice::{BackendChoice, PrecisionChoice, run_on};
use super::train::BadImagesArg;
use clap::{ArgGroup, Args};
use densenet::backend::{Backend, BackendTask, UnfusedOps};
use densenet::checkpoint::Checkpoint;
use densenet::data::folder::{decode_image, image_files};
use densenet::data::{BadImages, DataSource};
use densenet::error::Error;
use densenet::state_dict::load_state_dict;
use densenet::train::{Model, Prediction, input_size};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("weights").required(true).args(["checkpoint", "init_from"])))]
pub struct PredictArgs {
    /// JPEG or PNG files, or directories: every *.jpg, *.jpeg and *.png below one (any depth),
    /// sorted by path.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Checkpoint written by `densenet train` (configuration, normalisation, class names and
    /// input size are read from it).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// A torchvision DenseNet state_dict saved as safetensors (configuration inferred from its
    /// shapes, ImageNet's mean and std, classes named `class <i>`), or a densenet checkpoint.
    #[arg(long, value_name = "FILE")]
    pub init_from: Option<PathBuf>,
    /// How many of the most probable classes to print per image (at most the class count).
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Side of the square network input: each image's shorter side is resized to
    /// size·256/224, then the central size×size is taken (default: the size the checkpoint
    /// was trained at; a state_dict: 224, or 32 for a CIFAR stem).
    #[arg(long, value_name = "N")]
    pub size: Option<usize>,
    /// Images per network batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// What to do with an image that cannot be read or decoded: fail (stop with its path) or
    /// skip (leave it out, with one warning giving the count and the first file).
    #[arg(long, value_enum, default_value = "fail")]
    pub bad_images: BadImagesArg,
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// How the convolutions multiply and activations are stored: fp32 (exact), tf32 (tensor
    /// cores) or bf16 (bf16 activations and tensor cores).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionChoice,
    /// Print one JSON object per image (`file`, `logits`, `top`: class, name, probability)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Line<'a> {
    file: String,
    logits: &'a [f32],
    top: Vec<Ranked<'a>>,
}

#[derive(Serialize)]
struct Ranked<'a> {
    class: usize,
    name: &'a str,
    probability: f32,
}

pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    if args.top == 0 {
        return Err(Error::Config("--top must be at least 1".into()).into());
    }
    // Every argument is checked and expanded before the model is loaded or anything is built.
    let mut files = Vec::new();
    for path in &args.images {
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            files.extend(image_files(path)?);
        } else {
            files.push(path.clone());
        }
    }
    let (model, data) = match (&args.checkpoint, &args.init_from) {
        (Some(path), _) => {
            let c = Checkpoint::load(path)?;
            (c.model, c.data)
        }
        (None, Some(path)) => {
            let w = load_state_dict(path, None)?;
            (w.model, w.data)
        }
        // clap requires one of the two.
        (None, None) => anyhow::bail!("--checkpoint or --init-from is needed"),
    };
    let size = args.size.unwrap_or_else(|| input_size(&model.config, data.as_ref()));
    let names = class_names(&model, data.as_ref());
    run_on(
        args.backend,
        args.precision.into(),
        Predict { args, model: &model, files: &files, names: &names, size },
    )
}

/// The class names: the checkpoint's data set's when it has one name per output, else
/// `class <i>`.
fn class_names(model: &Model, data: Option<&DataSource>) -> Vec<String> {
    match data.and_then(DataSource::class_names) {
        Some(names) if names.len() == model.config.classes => names,
        _ => (0..model.config.classes).map(|i| format!("class {i}")).collect(),
    }
}

/// `predict` on the chosen backend.
struct Predict<'a> {
    args: &'a PredictArgs,
    model: &'a Model,
    files: &'a [PathBuf],
    names: &'a [String],
    size: usize,
}

impl BackendTask for Predict<'_> {
    type Output = ();
    type Error = anyhow::Error;

    fn run<B: Backend + UnfusedOps + Clone>(self, backend: B) -> anyhow::Result<()> {
        let args = self.args;
        let bad: BadImages = args.bad_images.into();
        // Buffers for more images than there are would only be padding.
        let batch = args.batch.min(self.files.len());
        let mut predictor = self.model.predictor(backend, batch, self.size)?;
        let mut skipped: Vec<(PathBuf, String)> = Vec::new();
        for chunk in self.files.chunks(predictor.batch()) {
            // Decoded a batch at a time (in parallel), so a folder of any size fits in memory.
            let decoded: Vec<_> = chunk.par_iter().map(|f| decode_image(f)).collect();
            let (mut paths, mut images) = (Vec::new(), Vec::new());
            for (file, image) in chunk.iter().zip(decoded) {
                match image {
                    Ok(img) => {
                        paths.push(file);
                        images.push(img);
                    }
                    Err(e) if bad == BadImages::Skip => skipped.push((file.clone(), e.to_string())),
                    Err(e) => return Err(e.into()),
                }
            }
            for (file, p) in paths.into_iter().zip(predictor.predict(&images)?) {
                self.print(file, &p)?;
            }
        }
        if let Some((_, first)) = skipped.first() {
            if skipped.len() == self.files.len() {
                anyhow::bail!("none of the {} images is readable; the first: {first}", skipped.len());
            }
            eprintln!("warning: skipped {} unreadable image(s); the first: {first}", skipped.len());
        }
        Ok(())
    }
}

impl Predict<'_> {
    fn print(&self, file: &std::path::Path, p: &Prediction) -> anyhow::Result<()> {
        let top = p.top(self.args.top);
        if self.args.json {
            let top = top
                .iter()
                .map(|&(class, probability)| Ranked { class, name: &self.names[class], probability })
                .collect();
            let line = Line { file: file.display().to_string(), logits: &p.logits, top };
            println!("{}", serde_json::to_string(&line)?);
        } else {
            println!("{}", file.display());
            for (class, probability) in top {
                println!("  {probability:.4}  {}", self.names[class]);
            }
        }
        Ok(())
    }
}
