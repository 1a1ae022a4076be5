//! Checkpoints: safetensors files that PyTorch loads as a torchvision DenseNet `state_dict`.
//!
//! **Tensors.** Every entry of torchvision's `state_dict`, under its name and in its order:
//! `features.conv0.weight`, `features.norm0.{weight,bias,running_mean,running_var,
//! num_batches_tracked}` (ImageNet stem), `features.denseblockN.denselayerM.{norm1,conv1,
//! norm2,conv2}.*`, `features.transitionN.{norm,conv}.*`, `features.norm5.*`,
//! `classifier.{weight,bias}`. Parameters and running statistics are `F32`, convolution
//! weights in PyTorch's OIHW layout (converted from the internal OHWI);
//! `num_batches_tracked` is an `I64` scalar.
//!
//! A training checkpoint adds the SGD momentum buffer of every parameter as
//! `optimizer.momentum_buffer.<parameter name>` (same shape and layout as the parameter:
//! PyTorch's `momentum_buffer`). In Python, load the model with
//! `model.load_state_dict({k: v for k, v in load_file(f).items() if not k.startswith("optimizer.")})`.
//!
//! **Metadata** (the safetensors header's string map; values are JSON):
//! * `format`: `densenet-checkpoint-v1`;
//! * `config`: the [`DenseNetConfig`] — so a checkpoint needs no model flags to be used;
//! * `normalization`: per-channel mean and std of the input ([`Normalization`]);
//! * `data` (optional): the [`DataSource`] trained on, so `densenet eval` finds the test set;
//! * `training` (training checkpoints): `{"config": TrainConfig, "epoch": completed epochs,
//!   "step": optimiser steps}`.
//!
//! Files are written atomically ([`write_atomic`]): a crash leaves either the old checkpoint
//! or the new one, never a mix.

use crate::config::DenseNetConfig;
use crate::data::{DataSource, Normalization};
use crate::error::{Error, Result};
use crate::params::{BnLayout, ParamLayout, TensorKind, ohwi_to_oihw, oihw_to_ohwi};
use crate::train::{Model, TrainConfig, TrainingState};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "densenet-checkpoint-v1";
/// Prefix of the optimiser-state tensors.
pub const OPTIMIZER_PREFIX: &str = "optimizer.momentum_buffer.";

/// A model, where its data came from, and (for a training checkpoint) where the run stands.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub model: Model,
    pub data: Option<DataSource>,
    pub training: Option<TrainingState>,
}

/// The `training` metadata entry.
#[derive(Serialize, Deserialize)]
struct TrainingMeta {
    config: TrainConfig,
    epoch: usize,
    step: u64,
}

/// Where an entry of the `state_dict` comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// `ParamLayout::tensors[i]`.
    Param(usize),
    RunningMean(BnLayout),
    RunningVar(BnLayout),
    BatchesTracked,
}

/// One `state_dict` entry.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    source: Source,
}

/// torchvision's `state_dict` of a configuration, in order: each module's parameters, then
/// (for batch-norms) its `running_mean`, `running_var`, `num_batches_tracked` buffers.
fn state_dict(layout: &ParamLayout) -> Vec<Entry> {
    let norms: HashMap<&str, BnLayout> = layout.norms.iter().map(|(p, n)| (p.as_str(), *n)).collect();
    let mut out = Vec::with_capacity(layout.tensors.len() + 3 * norms.len());
    for (i, t) in layout.tensors.iter().enumerate() {
        out.push(Entry { name: t.name.clone(), shape: t.shape.clone(), source: Source::Param(i) });
        // A batch-norm's buffers follow its bias.
        if t.kind == TensorKind::BnBias {
            let prefix = t.name.strip_suffix(".bias").unwrap_or(&t.name);
            if let Some(&n) = norms.get(prefix) {
                let c = vec![n.channels];
                out.push(Entry {
                    name: format!("{prefix}.running_mean"),
                    shape: c.clone(),
                    source: Source::RunningMean(n),
                });
                out.push(Entry {
                    name: format!("{prefix}.running_var"),
                    shape: c,
                    source: Source::RunningVar(n),
                });
                out.push(Entry {
                    name: format!("{prefix}.num_batches_tracked"),
                    shape: vec![],
                    source: Source::BatchesTracked,
                });
            }
        }
    }
    out
}

/// The names of a configuration's `state_dict`, in torchvision's order (727 for densenet121).
pub fn state_dict_names(config: &DenseNetConfig) -> Vec<String> {
    state_dict(&ParamLayout::new(config)).into_iter().map(|e| e.name).collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A parameter tensor in PyTorch's layout.
fn to_torch(values: &[f32], kind: TensorKind) -> Vec<f32> {
    match kind {
        TensorKind::ConvWeight { c_out, kernel, c_in } => ohwi_to_oihw(values, c_out, kernel, c_in),
        _ => values.to_vec(),
    }
}

fn from_torch(values: &[f32], kind: TensorKind) -> Vec<f32> {
    match kind {
        TensorKind::ConvWeight { c_out, kernel, c_in } => oihw_to_ohwi(values, c_out, kernel, c_in),
        _ => values.to_vec(),
    }
}

impl Checkpoint {
    /// A checkpoint of a model alone (no optimiser state): exactly torchvision's keys.
    pub fn of_model(model: Model) -> Checkpoint {
        Checkpoint { model, data: None, training: None }
    }

    /// The safetensors bytes of this checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let model = &self.model;
        let layout = model.layout();
        let shape_err = |what: &str, got: usize, want: usize| {
            Error::Shape(format!("checkpoint {what}: got {got} values, expected {want}"))
        };
        if model.params.len() != layout.num_params {
            return Err(shape_err("parameters", model.params.len(), layout.num_params));
        }
        if model.running.len() != layout.num_running {
            return Err(shape_err("running statistics", model.running.len(), layout.num_running));
        }
        if let Some(t) = &self.training
            && t.velocity.len() != layout.num_params
        {
            return Err(shape_err("momentum", t.velocity.len(), layout.num_params));
        }
        let tracked = i64::try_from(model.batches_tracked).unwrap_or(i64::MAX).to_le_bytes().to_vec();
        let mut tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = Vec::new();
        for e in state_dict(&layout) {
            let (dtype, bytes) = match e.source {
                Source::Param(i) => {
                    let t = &layout.tensors[i];
                    (Dtype::F32, f32_bytes(&to_torch(&model.params[t.offset..t.offset + t.len], t.kind)))
                }
                Source::RunningMean(n) => {
                    (Dtype::F32, f32_bytes(&model.running[n.running_mean..n.running_mean + n.channels]))
                }
                Source::RunningVar(n) => {
                    (Dtype::F32, f32_bytes(&model.running[n.running_var..n.running_var + n.channels]))
                }
                Source::BatchesTracked => (Dtype::I64, tracked.clone()),
            };
            tensors.push((e.name, e.shape, dtype, bytes));
        }
        let mut meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), json(&model.config)?),
            ("normalization".to_string(), json(&model.normalization)?),
        ]);
        if let Some(d) = &self.data {
            meta.insert("data".into(), json(d)?);
        }
        if let Some(t) = &self.training {
            let m = TrainingMeta { config: t.config.clone(), epoch: t.epoch, step: t.step };
            meta.insert("training".into(), json(&m)?);
            for spec in &layout.tensors {
                let v = to_torch(&t.velocity[spec.offset..spec.offset + spec.len], spec.kind);
                tensors.push((
                    format!("{OPTIMIZER_PREFIX}{}", spec.name),
                    spec.shape.clone(),
                    Dtype::F32,
                    f32_bytes(&v),
                ));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, dtype, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Shape(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Shape(format!("cannot serialise the checkpoint: {e}")))
    }

    /// Writes the checkpoint to `path` atomically (see [`write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, |f| f.write_all(&bytes))
    }

    /// Reads a checkpoint, checking every tensor against the configuration in its metadata.
    /// Errors name the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// Parses checkpoint bytes; `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let err = |m: String| file_err(path, m);
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            err(format!("not a valid safetensors file ({e}); the file is damaged or truncated"))
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a valid safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| -> Result<&str> {
            meta.get(key).map(String::as_str).ok_or_else(|| {
                err(format!("has no `{key}` metadata: it is not a checkpoint written by densenet ({FORMAT})"))
            })
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(err(format!("has format `{format}`, expected `{FORMAT}`")));
        }
        let config: DenseNetConfig = parse(get("config")?, "config", path)?;
        config.validate().map_err(|e| err(format!("metadata `config`: {e}")))?;
        let normalization: Normalization = parse(get("normalization")?, "normalization", path)?;
        let data = meta.get("data").map(|d| parse(d, "data", path)).transpose()?;
        let layout = ParamLayout::new(&config);

        let mut params = vec![0.0f32; layout.num_params];
        let mut running = vec![0.0f32; layout.num_running];
        let mut batches_tracked = None;
        for e in state_dict(&layout) {
            let dtype = match e.source {
                Source::BatchesTracked => Dtype::I64,
                _ => Dtype::F32,
            };
            let data = tensor(&st, &e.name, &e.shape, dtype, path)?.data();
            match e.source {
                Source::Param(i) => {
                    let t = &layout.tensors[i];
                    params[t.offset..t.offset + t.len].copy_from_slice(&from_torch(&f32s(data), t.kind));
                }
                Source::RunningMean(n) => {
                    running[n.running_mean..n.running_mean + n.channels].copy_from_slice(&f32s(data));
                }
                Source::RunningVar(n) => {
                    running[n.running_var..n.running_var + n.channels].copy_from_slice(&f32s(data));
                }
                // Every layer counts the same forwards; the first one speaks for all.
                Source::BatchesTracked if batches_tracked.is_none() => {
                    let v = i64::from_le_bytes(data.try_into().expect("an I64 scalar is 8 bytes"));
                    let count = u64::try_from(v)
                        .map_err(|_| err(format!("tensor `{}` is {v}, expected a count ≥ 0", e.name)))?;
                    batches_tracked = Some(count);
                }
                Source::BatchesTracked => {}
            }
        }
        let model =
            Model { config, normalization, params, running, batches_tracked: batches_tracked.unwrap_or(0) };

        let training = match meta.get("training") {
            None => None,
            Some(t) => {
                let t: TrainingMeta = parse(t, "training", path)?;
                let mut velocity = vec![0.0f32; layout.num_params];
                for spec in &layout.tensors {
                    let name = format!("{OPTIMIZER_PREFIX}{}", spec.name);
                    let view = tensor(&st, &name, &spec.shape, Dtype::F32, path)?;
                    velocity[spec.offset..spec.offset + spec.len]
                        .copy_from_slice(&from_torch(&f32s(view.data()), spec.kind));
                }
                Some(TrainingState { config: t.config, epoch: t.epoch, step: t.step, velocity })
            }
        };
        Ok(Checkpoint { model, data, training })
    }

    /// Checks that this checkpoint fits a network of configuration `expected`. The error
    /// names `path`, the first `state_dict` entry whose shape differs (or that only one side
    /// has) and both shapes.
    pub fn check_config(&self, expected: &DenseNetConfig, path: &Path) -> Result<()> {
        if &self.model.config == expected {
            return Ok(());
        }
        let mine = state_dict(&self.model.layout());
        let theirs = state_dict(&ParamLayout::new(expected));
        let shape_of =
            |entries: &[Entry], name: &str| entries.iter().find(|e| e.name == name).map(|e| e.shape.clone());
        let message = |name: &str, found: Option<Vec<usize>>, want: Option<Vec<usize>>| {
            let show = |s: Option<Vec<usize>>| s.map_or("absent".to_string(), |s| format!("{s:?}"));
            format!(
                "was made for another configuration: tensor `{name}` has shape {} in the \
                 checkpoint but {} in the requested model",
                show(found),
                show(want)
            )
        };
        for e in &theirs {
            let found = shape_of(&mine, &e.name);
            if found.as_ref() != Some(&e.shape) {
                return Err(file_err(path, message(&e.name, found, Some(e.shape.clone()))));
            }
        }
        if let Some(extra) = mine.iter().find(|e| shape_of(&theirs, &e.name).is_none()) {
            return Err(file_err(path, message(&extra.name, Some(extra.shape.clone()), None)));
        }
        // Same tensors, different hyper-parameters (none today changes no shape, but the
        // config is compared, not assumed).
        Err(file_err(
            path,
            format!(
                "was made for another configuration ({:?}) than the requested one ({:?})",
                self.model.config, expected
            ),
        ))
    }
}

/// Looks up `name` and checks its dtype and shape.
fn tensor<'a>(
    st: &SafeTensors<'a>,
    name: &str,
    shape: &[usize],
    dtype: Dtype,
    path: &Path,
) -> Result<TensorView<'a>> {
    let view = st.tensor(name).map_err(|_| {
        file_err(
            path,
            format!(
                "has no tensor `{name}` (expected shape {shape:?} for the configuration in its metadata)"
            ),
        )
    })?;
    if view.shape() != shape {
        return Err(file_err(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} for the configuration in its metadata",
                view.shape()
            ),
        ));
    }
    if view.dtype() != dtype {
        return Err(file_err(
            path,
            format!("tensor `{name}` has dtype {:?}, expected {dtype:?}", view.dtype()),
        ));
    }
    Ok(view)
}

/// Little-endian f32 values (the data need not be 4-byte aligned).
fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Config(format!("cannot encode checkpoint metadata: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(text: &str, key: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| file_err(path, format!("metadata `{key}` is malformed: {e}")))
}

fn file_err(path: &Path, message: String) -> Error {
    Error::File { path: path.display().to_string(), message }
}

/// Replaces `path` with what `write` writes, atomically: the data goes to a temporary file
/// in the same directory (so the rename cannot cross file systems), which is flushed to disk
/// (`fsync`), renamed over `path`, and the directory is flushed so the rename itself is
/// durable. If `write` or any step fails, the temporary file is removed and `path` is left
/// exactly as it was; a crash at any point leaves `path` either old or new, never partial.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| file_err(path, "is not a file name".into()))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist (open failed) or be gone (renamed).
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| file_err(path, format!("cannot write: {e}")))
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened, Windows).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
