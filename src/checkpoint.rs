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
//! * `format`: `densenet-checkpoint-v2` (v1 files, without checksums, still load);
//! * `config`: the [`DenseNetConfig`] — so a checkpoint needs no model flags to be used;
//! * `normalization`: per-channel mean and std of the input ([`Normalization`]);
//! * `data` (optional): the [`DataSource`] trained on, so `densenet eval` finds the test set;
//! * `training` (training checkpoints): `{"config": TrainConfig, "epoch": completed epochs,
//!   "step": optimiser steps}`;
//! * `checksums`: `{tensor name: CRC-32C of its bytes, 8 hex digits}`, verified on load.
//!
//! The header is written by this module (not by the safetensors crate, whose metadata map
//! has no stable order): keys in sorted order, tensor data in `state_dict` order, so that
//! identical runs write identical bytes.
//!
//! **Reading** trusts nothing: only a regular file is opened (a FIFO would block forever);
//! the header length is bounded and the data length must be what the header declares
//! before the data is read; the configuration in the metadata is validated and bounded by
//! the tensors the file holds before anything is sized from it; every tensor's checksum,
//! finiteness and (running variances) sign are checked, and the normalisation must have a
//! finite std > 0. A `torch.save` file (zip or pickle) is recognised by its first bytes and
//! told how to convert it. Plain torchvision `state_dict`s are read by [`crate::state_dict`].
//!
//! Files are written atomically ([`write_atomic`], or [`Checkpoint::prepare_save`] +
//! [`PendingWrite::commit`]): a crash leaves either the old checkpoint or the new one, never
//! a mix, and at worst a temporary file that [`remove_stale_temps`] deletes.

use crate::Precision;
use crate::config::DenseNetConfig;
use crate::data::{DataSource, Normalization};
use crate::error::{Error, Result};
use crate::params::{BnLayout, ParamLayout, TensorKind, ohwi_to_oihw, oihw_to_ohwi};
use crate::train::{Model, TrainConfig, TrainingState};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "densenet-checkpoint-v2";
/// The previous format: the same tensors and metadata without `checksums`.
const FORMAT_V1: &str = "densenet-checkpoint-v1";
/// Largest header accepted. densenet201's training checkpoint has about 0.5 MB of header;
/// the bound keeps a damaged length field from sizing a huge read.
const MAX_HEADER: u64 = 16 << 20;
/// Prefix of the optimiser-state tensors.
pub const OPTIMIZER_PREFIX: &str = "optimizer.momentum_buffer.";

/// Whether `format` (the `format` metadata entry) names a checkpoint this module reads.
pub(crate) fn is_checkpoint_format(format: &str) -> bool {
    format == FORMAT || format == FORMAT_V1
}

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
    /// Absent from checkpoints written before precisions existed, which were all fp32.
    #[serde(default)]
    precision: Precision,
    epoch: usize,
    step: u64,
}

/// Where an entry of the `state_dict` comes from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    /// `ParamLayout::tensors[i]`.
    Param(usize),
    RunningMean(BnLayout),
    RunningVar(BnLayout),
    BatchesTracked,
}

/// One `state_dict` entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) source: Source,
}

/// torchvision's `state_dict` of a configuration, in order: each module's parameters, then
/// (for batch-norms) its `running_mean`, `running_var`, `num_batches_tracked` buffers.
pub(crate) fn state_dict(layout: &ParamLayout) -> Vec<Entry> {
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

pub(crate) fn from_torch(values: &[f32], kind: TensorKind) -> Vec<f32> {
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
        let mut meta = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("config".to_string(), json(&model.config)?),
            ("normalization".to_string(), json(&model.normalization)?),
        ]);
        if let Some(d) = &self.data {
            meta.insert("data".into(), json(d)?);
        }
        if let Some(t) = &self.training {
            let m = TrainingMeta {
                config: t.config.clone(),
                precision: t.precision,
                epoch: t.epoch,
                step: t.step,
            };
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
        let checksums: BTreeMap<&str, String> =
            tensors.iter().map(|(name, _, _, bytes)| (name.as_str(), checksum(bytes))).collect();
        meta.insert("checksums".into(), json(&checksums)?);
        serialize(&tensors, meta)
    }

    /// Writes the checkpoint to a temporary file next to `path` and flushes it to disk,
    /// without replacing `path` yet: [`PendingWrite::commit`] does that (dropping it removes
    /// the temporary file). Lets a caller make something else durable (a log line) between
    /// the two, so that a crash never leaves the checkpoint ahead of it.
    pub fn prepare_save(&self, path: &Path) -> Result<PendingWrite> {
        let bytes = self.to_bytes()?;
        prepare_atomic(path, |f| f.write_all(&bytes))
    }

    /// Writes the checkpoint to `path` atomically (see [`write_atomic`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, |f| f.write_all(&bytes))
    }

    /// Reads a checkpoint, checking every tensor against the configuration in its metadata.
    /// Errors name the file and what is wrong with it. Only a regular file is read, and the
    /// data only once the header has been checked (see the module documentation).
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let (bytes, header) = read_checked(path, |head, len| Header::parse(head, len, path))?;
        header.decode(&bytes, path)
    }

    /// Parses checkpoint bytes; `path` only names the file in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        Header::parse(bytes, bytes.len() as u64, path)?.decode(bytes, path)
    }

    /// Checks that this checkpoint fits a network of configuration `expected`. The error
    /// names `path`, the first `state_dict` entry whose shape differs (or that only one side
    /// has) and both shapes.
    pub fn check_config(&self, expected: &DenseNetConfig, path: &Path) -> Result<()> {
        check_config(&self.model.config, expected, path)
    }
}

/// Checks that weights of configuration `found` (read from `path`) fit a network of
/// configuration `expected`; the error is [`Checkpoint::check_config`]'s.
pub fn check_config(found: &DenseNetConfig, expected: &DenseNetConfig, path: &Path) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let mine = state_dict(&ParamLayout::new(found));
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
            return Err(Error::file(path, message(&e.name, found, Some(e.shape.clone()))));
        }
    }
    if let Some(extra) = mine.iter().find(|e| shape_of(&theirs, &e.name).is_none()) {
        return Err(Error::file(path, message(&extra.name, Some(extra.shape.clone()), None)));
    }
    // Same tensors, different hyper-parameters (none today changes no shape, but the
    // config is compared, not assumed).
    Err(Error::file(
        path,
        format!("was made for another configuration ({found:?}) than the requested one ({expected:?})"),
    ))
}

/// What a checkpoint's header says, checked against the file length before any data is read.
struct Header {
    meta: HashMap<String, String>,
    config: DenseNetConfig,
    normalization: Normalization,
    /// `None` for a v1 file (written before checksums).
    checksums: Option<HashMap<String, String>>,
}

/// End of the header (8 + its declared length), checked against the bound and `len`, the
/// file's length, from the first 8 bytes of `bytes`.
pub(crate) fn header_end(bytes: &[u8], len: u64, path: &Path) -> Result<usize> {
    let invalid = |m: String| Error::file(path, format!("not a valid safetensors file ({m})"));
    let Some(prefix) = bytes.first_chunk::<8>() else {
        return Err(invalid(format!("{len} bytes, fewer than the 8 of the header length")));
    };
    let n = u64::from_le_bytes(*prefix);
    if n > MAX_HEADER || 8 + n > len {
        // Only an unusable length is examined further: a valid safetensors header length can
        // begin with the bytes of a pickle's protocol mark.
        if let Some(kind) = pytorch_pickle(prefix) {
            return Err(Error::file(path, pickle_advice(path, kind)));
        }
    }
    if n > MAX_HEADER {
        return Err(invalid(format!("header length {n} exceeds the limit of {MAX_HEADER} bytes")));
    }
    if 8 + n > len {
        return Err(invalid(format!("header length {n} runs past the end of the {len}-byte file")));
    }
    Ok(8 + n as usize)
}

/// What kind of `torch.save` file starts with `prefix`, if one does: since PyTorch 1.6 a zip
/// archive (`PK\x03\x04`), before it a protocol-2 pickle (`\x80\x02`) whose first object is
/// torch's magic number, a 10-byte long (`\x8a\x0a`).
fn pytorch_pickle(prefix: &[u8; 8]) -> Option<&'static str> {
    match prefix {
        [b'P', b'K', 3, 4, ..] => Some("zip"),
        [0x80, 2, 0x8a, 10, ..] => Some("legacy"),
        _ => None,
    }
}

/// One line telling how to turn the `torch.save` file `path` into safetensors.
fn pickle_advice(path: &Path, kind: &str) -> String {
    let (name, out) = (path.display(), path.with_extension("safetensors"));
    let out = out.display();
    format!(
        "is a PyTorch pickle (torch.save's {kind} format), not a safetensors file; convert it in \
         Python with `import torch; from safetensors.torch import save_file; \
         save_file(torch.load(\"{name}\", map_location=\"cpu\"), \"{out}\")` (if it \
         holds a whole model, save `torch.load(..., weights_only=False).state_dict()`; if a \
         dict with a \"state_dict\" entry, save `torch.load(...)[\"state_dict\"]`), then \
         pass the .safetensors file"
    )
}

/// Reads the safetensors file `path`: opens it as a regular file, reads and bounds the header,
/// lets `check` examine it (`check(header bytes, file length)`) before any data is read, then
/// reads the rest. Returns the whole file and what `check` returned.
pub(crate) fn read_checked<T>(
    path: &Path,
    check: impl FnOnce(&[u8], u64) -> Result<T>,
) -> Result<(Vec<u8>, T)> {
    let read_err = |e: std::io::Error| Error::file(path, format!("cannot read: {e}"));
    let input = crate::files::InputFile::open(path)?;
    let (file, len) = (input.file, input.len);
    // Read through `take(len)`: a file that grows meanwhile cannot make us read more.
    let mut file = file.take(len);
    let mut bytes = vec![0u8; usize::try_from(len.min(8)).unwrap_or(8)];
    file.read_exact(&mut bytes).map_err(read_err)?;
    let header_end = header_end(&bytes, len, path)?;
    bytes.resize(header_end, 0);
    file.read_exact(&mut bytes[8..]).map_err(read_err)?;
    let checked = check(&bytes, len)?;
    // The whole length is now known to be what the header declares.
    let rest = usize::try_from(len).map_err(|_| Error::file(path, "is too large"))? - header_end;
    bytes.try_reserve_exact(rest).map_err(|_| Error::file(path, format!("cannot hold {rest} bytes")))?;
    file.read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 != len {
        return Err(Error::file(path, "changed while it was being read"));
    }
    Ok((bytes, checked))
}

/// The tensor index and metadata of a safetensors header (at the start of `bytes`, of a file
/// of `len` bytes), checked to declare exactly the data the file holds.
pub(crate) fn parse_index(bytes: &[u8], len: u64, path: &Path) -> Result<Metadata> {
    let err = |m: String| Error::file(path, m);
    let end = header_end(bytes, len, path)?;
    let index: Metadata = serde_json::from_slice(&bytes[8..end])
        .map_err(|e| err(format!("not a valid safetensors file ({e}); the file is damaged or truncated")))?;
    // Offsets were checked to be contiguous from 0: the data ends at the largest one.
    let declared = index.tensors().values().map(|t| t.data_offsets.1).max().unwrap_or(0) as u64;
    if len - end as u64 != declared {
        return Err(err(format!(
            "not a valid safetensors file (the header declares {declared} bytes of data, the \
             file holds {}); the file is damaged or truncated",
            len - end as u64
        )));
    }
    Ok(index)
}

impl Header {
    /// Parses and checks the header at the start of `bytes` (which need hold only the header)
    /// of a file of `len` bytes.
    fn parse(bytes: &[u8], len: u64, path: &Path) -> Result<Header> {
        let err = |m: String| Error::file(path, m);
        let tensors = parse_index(bytes, len, path)?;
        let infos = tensors.tensors();
        let declared = infos.values().map(|t| t.data_offsets.1).max().unwrap_or(0) as u64;
        let meta = tensors.metadata().clone().unwrap_or_default();
        let get = |key: &str| -> Result<&str> {
            meta.get(key).map(String::as_str).ok_or_else(|| {
                err(format!("has no `{key}` metadata: it is not a checkpoint written by densenet ({FORMAT})"))
            })
        };
        let format = get("format")?;
        let checksums = match format {
            FORMAT => Some(parse(get("checksums")?, "checksums", path)?),
            FORMAT_V1 => None,
            _ => return Err(err(format!("has format `{format}`, expected `{FORMAT}` or `{FORMAT_V1}`"))),
        };
        let config: DenseNetConfig = parse(get("config")?, "config", path)?;
        config.validate().map_err(|e| err(format!("metadata `config`: {e}")))?;
        check_fits(&config, infos.len(), declared / 4).map_err(|m| err(format!("metadata `config`: {m}")))?;
        let normalization: Normalization = parse(get("normalization")?, "normalization", path)?;
        if let Some(problem) = normalization.problem(config.in_channels) {
            return Err(err(format!("metadata `normalization`: {problem}")));
        }
        Ok(Header { meta, config, normalization, checksums })
    }

    /// Reads the tensors of the whole file `bytes` that this header describes.
    fn decode(self, bytes: &[u8], path: &Path) -> Result<Checkpoint> {
        let err = |m: String| Error::file(path, m);
        let Header { meta, config, normalization, checksums } = self;
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            err(format!("not a valid safetensors file ({e}); the file is damaged or truncated"))
        })?;
        let data = meta.get("data").map(|d| parse(d, "data", path)).transpose()?;
        let training =
            meta.get("training").map(|t| parse::<TrainingMeta>(t, "training", path)).transpose()?;
        let layout = ParamLayout::new(&config);
        let entries = state_dict(&layout);
        let momentum = |spec: &crate::params::TensorSpec| format!("{OPTIMIZER_PREFIX}{}", spec.name);
        // Every tensor is looked up and checked (shape, dtype, checksum, values) before the
        // buffers sized from the configuration are allocated: a file that passes holds them.
        let mut wanted: Vec<(String, &[usize], Dtype)> = entries
            .iter()
            .map(|e| {
                let dtype = if matches!(e.source, Source::BatchesTracked) { Dtype::I64 } else { Dtype::F32 };
                (e.name.clone(), e.shape.as_slice(), dtype)
            })
            .collect();
        if training.is_some() {
            wanted.extend(layout.tensors.iter().map(|t| (momentum(t), t.shape.as_slice(), Dtype::F32)));
        }
        let mut views = HashMap::with_capacity(wanted.len());
        for (name, shape, dtype) in wanted {
            let view = tensor(&st, &name, shape, dtype, path)?;
            if let Some(sums) = &checksums {
                let stored =
                    sums.get(&name).ok_or_else(|| err(format!("tensor `{name}` has no checksum")))?;
                if *stored != checksum(view.data()) {
                    return Err(err(format!("tensor `{name}`: checksum mismatch: the file is damaged")));
                }
            }
            if dtype == Dtype::F32 {
                check_values(&name, &f32s(view.data())).map_err(err)?;
            }
            views.insert(name, view);
        }

        let mut params = vec![0.0f32; layout.num_params];
        let mut running = vec![0.0f32; layout.num_running];
        let mut batches_tracked = None;
        for e in &entries {
            let data = views[&e.name].data();
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
                    let v = data.first_chunk::<8>().map_or(-1, |b| i64::from_le_bytes(*b));
                    let count = u64::try_from(v)
                        .map_err(|_| err(format!("tensor `{}` is {v}, expected a count ≥ 0", e.name)))?;
                    batches_tracked = Some(count);
                }
                Source::BatchesTracked => {}
            }
        }
        let model =
            Model { config, normalization, params, running, batches_tracked: batches_tracked.unwrap_or(0) };
        let training = training.map(|t| {
            let mut velocity = vec![0.0f32; layout.num_params];
            for spec in &layout.tensors {
                velocity[spec.offset..spec.offset + spec.len]
                    .copy_from_slice(&from_torch(&f32s(views[&momentum(spec)].data()), spec.kind));
            }
            TrainingState { config: t.config, precision: t.precision, epoch: t.epoch, step: t.step, velocity }
        });
        Ok(Checkpoint { model, data, training })
    }
}

/// Rejects a configuration that cannot describe the file's `tensors` tensors and `elements`
/// 4-byte values, before anything is sized from it (a growth of 10⁹ would otherwise size
/// buffers of exabytes). Each test is a tensor every such network has: a layer contributes 12
/// `state_dict` entries and a 3×3 conv of growth × bottleneck channels; the first layer a 1×1
/// conv from the initial features; the stem a conv from the input channels; the classifier
/// a bias per class. Checked arithmetic throughout.
fn check_fits(config: &DenseNetConfig, tensors: usize, elements: u64) -> std::result::Result<(), String> {
    let layers = config.blocks.iter().try_fold(0usize, |a, &b| a.checked_add(b));
    if layers.and_then(|l| l.checked_mul(12)).is_none_or(|n| n > tensors) {
        return Err(format!("{:?} layers need more tensors than the file's {tensors}", config.blocks));
    }
    let bottleneck = config.growth.checked_mul(config.bn_size);
    let sizes = [
        (
            "the growth rate and bn-size",
            bottleneck.and_then(|b| b.checked_mul(config.growth)?.checked_mul(9)),
        ),
        ("the initial features", bottleneck.and_then(|b| b.checked_mul(config.init_features))),
        ("the input channels", config.in_channels.checked_mul(config.init_features)),
        ("the classes", Some(config.classes)),
    ];
    match sizes.iter().find(|(_, n)| n.is_none_or(|n| n as u64 > elements)) {
        Some((what, _)) => Err(format!("{what} need more values than the file's {elements}")),
        None => Ok(()),
    }
}

/// Non-finite values are damage (or a diverged run), and so is a negative running variance.
pub(crate) fn check_values(name: &str, values: &[f32]) -> std::result::Result<(), String> {
    let variance = name.ends_with(".running_var");
    match values.iter().copied().enumerate().find(|(_, v)| !v.is_finite() || (variance && *v < 0.0)) {
        Some((i, v)) if v.is_finite() => {
            Err(format!("tensor `{name}` has the negative variance {v} at index {i}"))
        }
        Some((i, v)) => Err(format!("tensor `{name}` has the non-finite value {v} at index {i}")),
        None => Ok(()),
    }
}

/// CRC-32C of a tensor's bytes, as stored in the `checksums` metadata.
fn checksum(bytes: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(bytes))
}

/// The safetensors bytes of `tensors` (data in this order) with `meta`: header keys sorted,
/// so equal inputs give equal bytes. The header is padded with spaces to a multiple of 8
/// bytes, as the safetensors crate does, so the data stays aligned.
fn serialize(
    tensors: &[(String, Vec<usize>, Dtype, Vec<u8>)],
    meta: BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header = BTreeMap::new();
    header.insert("__metadata__".to_string(), serde_json::to_value(meta).map_err(meta_err)?);
    let mut offset = 0usize;
    for (name, shape, dtype, bytes) in tensors {
        let info = serde_json::json!({
            "dtype": dtype.to_string(),
            "shape": shape,
            "data_offsets": [offset, offset + bytes.len()],
        });
        header.insert(name.clone(), info);
        offset += bytes.len();
    }
    let mut head = serde_json::to_vec(&header).map_err(meta_err)?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn meta_err(e: serde_json::Error) -> Error {
    Error::Config(format!("cannot encode checkpoint metadata: {e}"))
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
        Error::file(
            path,
            format!(
                "has no tensor `{name}` (expected shape {shape:?} for the configuration in its metadata)"
            ),
        )
    })?;
    if view.shape() != shape {
        return Err(Error::file(
            path,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} for the configuration in its metadata",
                view.shape()
            ),
        ));
    }
    if view.dtype() != dtype {
        return Err(Error::file(
            path,
            format!("tensor `{name}` has dtype {:?}, expected {dtype:?}", view.dtype()),
        ));
    }
    Ok(view)
}

/// Little-endian f32 values (the data need not be 4-byte aligned).
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(meta_err)
}

fn parse<T: for<'de> Deserialize<'de>>(text: &str, key: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::file(path, format!("metadata `{key}` is malformed: {e}")))
}

/// Replaces `path` with what `write` writes, atomically: the data goes to a temporary file
/// in the same directory (so the rename cannot cross file systems), which is flushed to disk
/// (`fsync`), renamed over `path`, and the directory is flushed so the rename itself is
/// durable. If `write` or any step fails, the temporary file is removed and `path` is left
/// exactly as it was; a crash at any point leaves `path` either old or new, never partial.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> std::io::Result<()>) -> Result<()> {
    prepare_atomic(path, write)?.commit()
}

/// A temporary file written and flushed, waiting to be renamed over its target by
/// [`PendingWrite::commit`]; dropped uncommitted, it is removed.
pub struct PendingWrite {
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl PendingWrite {
    /// Renames the temporary file over the target and makes the rename durable.
    pub fn commit(mut self) -> Result<()> {
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))?;
        self.committed = true;
        sync_dir(&self.dir).map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: nothing else can be done about a file we cannot remove; the next
            // run's `remove_stale_temps` tries again.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The directory of `path` and the prefix of its temporary files' names.
fn temp_names(path: &Path) -> Result<(PathBuf, String)> {
    let name = path.file_name().ok_or_else(|| Error::file(path, "is not a file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, format!(".{}.tmp-", name.to_string_lossy())))
}

/// The first half of [`write_atomic`]: everything but the rename.
pub fn prepare_atomic(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<PendingWrite> {
    let (dir, prefix) = temp_names(path)?;
    let tmp = dir.join(format!("{prefix}{}", std::process::id()));
    // From here on, dropping `pending` removes the temporary file.
    let pending = PendingWrite { tmp, path: path.to_path_buf(), dir, committed: false };
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&pending.tmp)?;
        write(&mut f)?;
        f.sync_all()
    })();
    written.map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
    Ok(pending)
}

/// Removes the temporary files that saves of `path` killed before their rename left behind
/// (the caller must make sure no other process is saving it); returns how many.
pub fn remove_stale_temps(path: &Path) -> Result<usize> {
    let (dir, prefix) = temp_names(path)?;
    let entries = std::fs::read_dir(&dir).map_err(|e| Error::file(&dir, format!("cannot list: {e}")))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(&dir, format!("cannot list: {e}")))?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path())
                .map_err(|e| Error::file(&entry.path(), format!("cannot remove: {e}")))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes a rename in `dir` durable (a no-op where directories cannot be opened, Windows).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickles_are_told_apart_from_valid_header_lengths() {
        let path = Path::new("w.pth");
        let zip = *b"PK\x03\x04\0\0\0\0";
        let e = header_end(&zip, 1000, path).unwrap_err().to_string();
        assert!(e.contains("is a PyTorch pickle (torch.save's zip format)"), "{e}");
        assert!(e.contains(r#"save_file(torch.load("w.pth", map_location="cpu"), "w.safetensors")"#), "{e}");
        let legacy = *b"\x80\x02\x8a\x0alZ\xfc\x9c";
        assert!(header_end(&legacy, 1000, path).unwrap_err().to_string().contains("legacy format"));
        // The same two bytes begin the valid length 640 of a safetensors header.
        let valid = [0x80, 0x02, 0, 0, 0, 0, 0, 0];
        assert_eq!(header_end(&valid, 648, path).unwrap(), 648);
        let e = header_end(&valid, 100, path).unwrap_err().to_string();
        assert!(e.contains("header length 640 runs past the end of the 100-byte file"), "{e}");
    }
}
