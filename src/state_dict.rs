//! Weights to start from (`--init-from`): a plain torchvision DenseNet `state_dict` saved with
//! `safetensors.torch.save_file(model.state_dict(), f)`, or one of our own checkpoints (its
//! weights, running statistics and normalisation; the optimiser state and run position are
//! dropped).
//!
//! **Keys** are taken as torchvision's `DenseNet.load_state_dict` takes them, strictly: with
//! or without DataParallel's `module.` prefix, under the current names or the names of
//! torchvision's published weights (`denselayer1.norm.1.weight` for
//! `denselayer1.norm1.weight`, likewise `conv.1`, `norm.2`, `conv.2`), with or without
//! `num_batches_tracked`. Any other key missing or left over is an error naming it.
//!
//! **Values**: F32, or F16/BF16 widened to f32 (exactly); `num_batches_tracked` I64. They are
//! checked as a checkpoint's are: finite, running variances ≥ 0. Conv weights are OIHW in the
//! file and converted to the internal OHWI.
//!
//! **Configuration.** A `state_dict` carries none, so it is inferred from the shapes:
//! `features.conv0.weight` `[init features, input channels, k, k]` gives the stem (k = 7:
//! ImageNet, with `norm0`; k = 3: CIFAR); the number of `denselayerM` of each `denseblockN`
//! the block sizes; the first layer's conv2 output channels the growth rate and its conv1
//! output channels bn-size · growth; the transition convs the compression (the simplest θ
//! that gives every transition's width: ½, torchvision's, then tenths, hundredths, the first
//! transition's ratio);
//! `classifier.weight` the classes. The result is validated (so absurd sizes are refused
//! before anything is sized from them), then every tensor's dtype and shape is checked
//! against it before any buffer is allocated: shapes that disagree between layers are an
//! error naming the key and both shapes. With an expected configuration, the file is checked
//! against that one instead.
//!
//! A `state_dict` records no input normalisation: it runs with ImageNet's
//! ([`Normalization::imagenet`]), which torchvision's weights expect.

use crate::backend::memory::ensure_host_fits;
use crate::checkpoint::{
    Checkpoint, Source, check_values, f32s, from_torch, is_checkpoint_format, parse_index, read_checked,
    state_dict,
};
use crate::config::{DenseNetConfig, Stem};
use crate::data::{DataSource, Normalization};
use crate::error::{Error, Result};
use crate::params::ParamLayout;
use crate::train::Model;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Weights read by [`load_state_dict`].
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub model: Model,
    /// The data set a densenet checkpoint records (`None` for a `state_dict`).
    pub data: Option<DataSource>,
    /// Whether the file was a plain `state_dict` (so the normalisation is ImageNet's and the
    /// configuration was inferred or checked) rather than a densenet checkpoint.
    pub state_dict: bool,
}

/// Reads the weights of `path`: a densenet checkpoint (recognised by its `format` metadata)
/// or a plain torchvision `state_dict`, whose configuration is inferred from its shapes when
/// `expected` is `None` and checked against `expected` otherwise. Only a regular file is read,
/// its header is bounded before the data is read, and errors name the file (a PyTorch pickle
/// is told how to convert it).
pub fn load_state_dict(path: &Path, expected: Option<&DenseNetConfig>) -> Result<Weights> {
    let (bytes, ours) = read_checked(path, |head, len| {
        let index = parse_index(head, len, path)?;
        Ok(index.metadata().as_ref().and_then(|m| m.get("format")).is_some_and(|f| is_checkpoint_format(f)))
    })?;
    if ours {
        let checkpoint = Checkpoint::from_bytes(&bytes, path)?;
        if let Some(expected) = expected {
            checkpoint.check_config(expected, path)?;
        }
        return Ok(Weights { model: checkpoint.model, data: checkpoint.data, state_dict: false });
    }
    let model = from_bytes(&bytes, path, expected)?;
    Ok(Weights { model, data: None, state_dict: true })
}

/// A tensor of the file under its canonical name.
struct Found<'a> {
    /// The name in the file (for messages).
    name: String,
    view: TensorView<'a>,
}

/// Parses the bytes of a plain `state_dict` file (see [`load_state_dict`]); `path` only names
/// the file in errors.
pub fn from_bytes(bytes: &[u8], path: &Path, expected: Option<&DenseNetConfig>) -> Result<Model> {
    let err = |m: String| Error::file(path, m);
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| err(format!("not a valid safetensors file ({e}); the file is damaged or truncated")))?;
    let tensors = canonical_tensors(&st).map_err(err)?;
    let config = match expected {
        Some(c) => {
            c.validate()?;
            c.clone()
        }
        None => infer_config(&tensors).map_err(err)?,
    };
    let whose = match expected {
        Some(_) => format!("the requested configuration ({})", config.describe()),
        None => format!("the configuration inferred from its shapes ({})", config.describe()),
    };
    let layout = ParamLayout::new(&config);
    let entries = state_dict(&layout);
    check_keys(&tensors, &entries, &whose).map_err(err)?;
    // Every dtype and shape is checked before the buffers sized from the configuration are
    // allocated: a file that passes holds their values.
    for e in &entries {
        let Some(f) = tensors.get(&e.name) else { continue };
        if f.view.shape() != e.shape {
            return Err(err(format!(
                "tensor `{}` has shape {:?}, expected {:?} for {whose}",
                f.name,
                f.view.shape(),
                e.shape
            )));
        }
        let ok = match e.source {
            Source::BatchesTracked => f.view.dtype() == Dtype::I64,
            _ => matches!(f.view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16),
        };
        if !ok {
            let want = if matches!(e.source, Source::BatchesTracked) { "I64" } else { "F32, F16 or BF16" };
            return Err(err(format!("tensor `{}` has dtype {:?}, expected {want}", f.name, f.view.dtype())));
        }
    }
    let floats = layout.num_params.saturating_add(layout.num_running);
    ensure_host_fits("the model's parameters", floats.saturating_mul(size_of::<f32>()))?;
    let mut params = vec![0.0f32; layout.num_params];
    let mut running = vec![0.0f32; layout.num_running];
    let mut batches_tracked = None;
    for e in &entries {
        let Some(f) = tensors.get(&e.name) else { continue };
        let data = f.view.data();
        let values = || -> Result<Vec<f32>> {
            let v = widen(data, f.view.dtype());
            check_values(&f.name, &v).map_err(err)?;
            Ok(v)
        };
        match e.source {
            Source::Param(i) => {
                let t = &layout.tensors[i];
                params[t.offset..t.offset + t.len].copy_from_slice(&from_torch(&values()?, t.kind));
            }
            Source::RunningMean(n) => {
                running[n.running_mean..n.running_mean + n.channels].copy_from_slice(&values()?);
            }
            Source::RunningVar(n) => {
                running[n.running_var..n.running_var + n.channels].copy_from_slice(&values()?);
            }
            // Every layer counts the same forwards; the first one present speaks for all.
            Source::BatchesTracked if batches_tracked.is_none() => {
                let v = data.first_chunk::<8>().map_or(-1, |b| i64::from_le_bytes(*b));
                let count = u64::try_from(v)
                    .map_err(|_| err(format!("tensor `{}` is {v}, expected a count ≥ 0", f.name)))?;
                batches_tracked = Some(count);
            }
            Source::BatchesTracked => {}
        }
    }
    Ok(Model {
        config,
        normalization: Normalization::imagenet(),
        params,
        running,
        batches_tracked: batches_tracked.unwrap_or(0),
    })
}

/// f32 values of a tensor of a float dtype checked by the caller (F32, F16 or BF16; both
/// halves widen exactly).
fn widen(data: &[u8], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        _ => f32s(data),
    }
}

/// The name torchvision's DenseNet gives the tensor stored as `name`: DataParallel's `module.`
/// prefix removed, and the key names of its published weights updated as its
/// `_load_state_dict` does (`…denselayerN.norm.1.weight` → `…denselayerN.norm1.weight`, for
/// `norm`, `relu`, `conv` and `1`, `2`; here also for `num_batches_tracked`).
fn canonical(name: &str) -> String {
    let name = name.strip_prefix("module.").unwrap_or(name);
    let parts: Vec<&str> = name.split('.').collect();
    let is_layer = |p: &str| {
        p.strip_prefix("denselayer").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    // Only the form `…denselayerN.<module>.<1|2>.<tensor>`, at the end of the name.
    if let [.., layer, module, index, _] = parts.as_slice()
        && is_layer(layer)
        && matches!(*module, "norm" | "relu" | "conv")
        && matches!(*index, "1" | "2")
    {
        let n = parts.len();
        let mut out: Vec<String> = parts[..n - 3].iter().map(|p| p.to_string()).collect();
        out.push(format!("{module}{index}"));
        out.push(parts[n - 1].to_string());
        return out.join(".");
    }
    name.to_string()
}

/// The file's tensors by canonical name; two tensors with one canonical name are an error.
fn canonical_tensors<'a>(st: &SafeTensors<'a>) -> std::result::Result<BTreeMap<String, Found<'a>>, String> {
    let mut tensors = st.tensors();
    // Sorted, so that any message about them is the same on every run.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = BTreeMap::new();
    for (name, view) in tensors {
        let key = canonical(&name);
        if let Some(first) = out.get(&key) {
            let first: &Found = first;
            return Err(format!("tensors `{}` and `{name}` are both `{key}`", first.name));
        }
        out.insert(key, Found { name, view });
    }
    Ok(out)
}

/// Missing and unexpected keys (as PyTorch's `strict=True`), each list cut to a few names.
fn check_keys(
    tensors: &BTreeMap<String, Found>,
    entries: &[crate::checkpoint::Entry],
    whose: &str,
) -> std::result::Result<(), String> {
    let wanted: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let missing: Vec<&str> = entries
        .iter()
        .filter(|e| !matches!(e.source, Source::BatchesTracked) && !tensors.contains_key(&e.name))
        .map(|e| e.name.as_str())
        .collect();
    let unexpected: Vec<&str> =
        tensors.iter().filter(|(k, _)| !wanted.contains(k.as_str())).map(|(_, f)| f.name.as_str()).collect();
    let list = |what: &str, names: &[&str]| {
        const SHOWN: usize = 4;
        let shown: Vec<String> = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect();
        let more =
            if names.len() > SHOWN { format!(" and {} more", names.len() - SHOWN) } else { String::new() };
        format!("{what} {}{more}", shown.join(", "))
    };
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(list("missing keys", &missing));
    }
    if !unexpected.is_empty() {
        problems.push(list("unexpected keys", &unexpected));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!("does not match {whose}: {}", problems.join("; ")))
}

/// The configuration whose `state_dict` has the shapes of `tensors` (see the module
/// documentation), validated.
fn infer_config(tensors: &BTreeMap<String, Found>) -> std::result::Result<DenseNetConfig, String> {
    let Some(stem_conv) = tensors.get("features.conv0.weight") else {
        let first: Vec<String> = tensors.values().take(3).map(|f| format!("`{}`", f.name)).collect();
        let holds = if first.is_empty() {
            "it holds no tensors".to_string()
        } else {
            format!("its keys begin {}", first.join(", "))
        };
        return Err(format!(
            "is not a torchvision DenseNet state_dict: it has no `features.conv0.weight` ({holds})"
        ));
    };
    let (init_features, in_channels, stem) = match *stem_conv.view.shape() {
        [out, inp, 3, 3] => (out, inp, Stem::Cifar),
        [out, inp, 7, 7] => (out, inp, Stem::Imagenet),
        ref s => {
            return Err(format!(
                "tensor `{}` has shape {s:?}, expected [features, input channels, 3, 3] (CIFAR stem) \
                 or [features, input channels, 7, 7] (ImageNet stem)",
                stem_conv.name
            ));
        }
    };
    // [out, in] of the conv `key` with a k×k kernel.
    let conv = |key: &str, k: usize| -> std::result::Result<(usize, usize, &str), String> {
        let f = tensors
            .get(key)
            .ok_or_else(|| format!("is not a torchvision DenseNet state_dict: it has no `{key}`"))?;
        match *f.view.shape() {
            [out, inp, kh, kw] if (kh, kw) == (k, k) => Ok((out, inp, f.name.as_str())),
            ref s => Err(format!("tensor `{}` has shape {s:?}, expected [out, in, {k}, {k}]", f.name)),
        }
    };
    let mut blocks = Vec::new();
    loop {
        let b = blocks.len() + 1;
        // Ends: every layer counted is a distinct key of the file.
        let layers = (1..)
            .take_while(|l| {
                tensors.contains_key(&format!("features.denseblock{b}.denselayer{l}.conv1.weight"))
            })
            .count();
        if layers == 0 {
            break;
        }
        blocks.push(layers);
    }
    let (bottleneck, _, conv1) = conv("features.denseblock1.denselayer1.conv1.weight", 1)?;
    let (growth, _, conv2) = conv("features.denseblock1.denselayer1.conv2.weight", 3)?;
    if growth == 0 || bottleneck % growth != 0 {
        return Err(format!(
            "tensor `{conv1}` has {bottleneck} output channels, not a multiple of the growth rate \
             {growth} (the output channels of `{conv2}`): no bn-size fits"
        ));
    }
    let classes = match tensors.get("classifier.weight").map(|f| f.view.shape()) {
        Some(&[classes, _]) => classes,
        Some(s) => {
            return Err(format!("tensor `classifier.weight` has shape {s:?}, expected [classes, features]"));
        }
        None => return Err("is not a torchvision DenseNet state_dict: it has no `classifier.weight`".into()),
    };
    let transitions = (1..blocks.len())
        .map(|b| conv(&format!("features.transition{b}.conv.weight"), 1).map(|(out, inp, _)| (out, inp)))
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let mut config = DenseNetConfig {
        growth,
        blocks,
        init_features,
        bn_size: bottleneck / growth,
        compression: 0.5,
        stem,
        classes,
        in_channels,
    };
    // The simplest θ that gives every transition's width: ½ (torchvision's), tenths,
    // hundredths, then the first transition's own ratio; if none does, ½, and the shape check
    // names the transition that disagrees.
    let tenths = (1..=10).map(|k| f64::from(k) / 10.0);
    let hundredths = (1..=100).map(|k| f64::from(k) / 100.0);
    let ratio = transitions.first().map(|&(out, inp)| out as f64 / inp as f64);
    let candidates = std::iter::once(0.5).chain(tenths).chain(hundredths).chain(ratio);
    let mut chosen = 0.5;
    for theta in candidates.filter(|t| *t > 0.0 && *t <= 1.0) {
        config.compression = theta;
        if transitions_fit(&config, &transitions) {
            chosen = theta;
            break;
        }
    }
    config.compression = chosen;
    config.validate().map_err(|e| {
        format!("the configuration inferred from its shapes ({}) is unusable: {e}", config.describe())
    })?;
    Ok(config)
}

/// Whether `config`'s transitions give the output widths `transitions` (`(out, in)` of each
/// transition conv), each block starting from the previous transition's width in the file.
fn transitions_fit(config: &DenseNetConfig, transitions: &[(usize, usize)]) -> bool {
    let mut channels = config.init_features;
    for (i, &layers) in config.blocks.iter().enumerate() {
        // Unvalidated sizes from the file: an overflow fits nothing.
        match layers.checked_mul(config.growth).and_then(|n| n.checked_add(channels)) {
            Some(n) => channels = n,
            None => return false,
        }
        if let Some(&(out, _)) = transitions.get(i) {
            if config.transition_out(channels) != out {
                return false;
            }
            channels = out;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    fn path() -> &'static Path {
        Path::new("sd.safetensors")
    }

    /// The plain `state_dict` of `model` (no metadata), keys passed through `rename`, with
    /// entries `drop` says to leave out, as `safetensors.torch.save_file` would write it.
    fn plain(model: &Model, rename: impl Fn(&str) -> String, drop: impl Fn(&str) -> bool) -> Vec<u8> {
        let bytes = Checkpoint::of_model(model.clone()).to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors: Vec<(String, TensorView)> =
            st.tensors().into_iter().filter(|(n, _)| !drop(n)).map(|(n, v)| (rename(&n), v)).collect();
        safetensors::serialize(tensors, None::<HashMap<String, String>>).unwrap()
    }

    fn model(config: &DenseNetConfig) -> Model {
        let layout = ParamLayout::new(config);
        let (params, running) = layout.init_random(7);
        Model {
            config: config.clone(),
            normalization: Normalization::imagenet(),
            params,
            running,
            batches_tracked: 3,
        }
    }

    fn small_imagenet() -> DenseNetConfig {
        DenseNetConfig {
            growth: 4,
            blocks: vec![2, 3, 1],
            init_features: 6,
            bn_size: 2,
            compression: 0.5,
            stem: Stem::Imagenet,
            classes: 5,
            in_channels: 3,
        }
    }

    #[test]
    fn old_and_prefixed_names_are_canonical() {
        assert_eq!(canonical("module.features.conv0.weight"), "features.conv0.weight");
        assert_eq!(
            canonical("features.denseblock2.denselayer11.norm.1.running_var"),
            "features.denseblock2.denselayer11.norm1.running_var"
        );
        assert_eq!(
            canonical("module.features.denseblock1.denselayer1.conv.2.weight"),
            "features.denseblock1.denselayer1.conv2.weight"
        );
        // Transitions keep `norm` and `conv` as they are; so does anything not of that form.
        assert_eq!(canonical("features.transition1.norm.weight"), "features.transition1.norm.weight");
        assert_eq!(canonical("features.denselayer.norm.1.weight"), "features.denselayer.norm.1.weight");
        assert_eq!(canonical("features.denselayer1.norm.3.weight"), "features.denselayer1.norm.3.weight");
    }

    #[test]
    fn configurations_are_inferred_and_weights_kept_bit_for_bit() {
        let configs = [
            DenseNetConfig::bc_cifar(16, 6).unwrap(),
            small_imagenet(),
            DenseNetConfig { compression: 0.4, ..small_imagenet() },
            DenseNetConfig { blocks: vec![3], ..DenseNetConfig::bc_cifar(16, 6).unwrap() },
        ];
        for config in configs {
            let m = model(&config);
            let bytes = plain(&m, |n| n.to_string(), |_| false);
            let loaded = from_bytes(&bytes, path(), None).unwrap();
            assert_eq!(loaded.config, config);
            // Not assert_eq: a failure would print every parameter.
            assert!(loaded == m, "{}", config.describe());
            assert!(from_bytes(&bytes, path(), Some(&config)).unwrap() == m);
        }
        // torchvision's own networks, from their shapes alone.
        for name in ["densenet121", "densenet161"] {
            let config = DenseNetConfig::preset(name).unwrap();
            let entries = state_dict(&ParamLayout::new(&config));
            let zeros: Vec<Vec<u8>> =
                entries.iter().map(|e| vec![0u8; e.shape.iter().product::<usize>() * 4]).collect();
            let views: Vec<(String, TensorView)> = entries
                .iter()
                .zip(&zeros)
                .filter(|(e, _)| !matches!(e.source, Source::BatchesTracked))
                .map(|(e, z)| (e.name.clone(), TensorView::new(Dtype::F32, e.shape.clone(), z).unwrap()))
                .collect();
            let bytes = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
            assert_eq!(from_bytes(&bytes, path(), None).unwrap().config, config, "{name}");
        }
    }

    #[test]
    fn renamed_keys_load_the_same_weights() {
        let m = model(&DenseNetConfig::bc_cifar(16, 6).unwrap());
        let old = |n: &str| {
            ["norm1", "norm2", "conv1", "conv2"].iter().fold(n.to_string(), |n, m| {
                n.replace(&format!(".{m}."), &format!(".{}.{}.", &m[..4], &m[4..]))
            })
        };
        let variants = [
            plain(&m, |n| format!("module.{n}"), |_| false),
            plain(&m, old, |_| false),
            plain(&m, |n| format!("module.{}", old(n)), |n| n.ends_with("num_batches_tracked")),
        ];
        for (i, bytes) in variants.iter().enumerate() {
            let loaded = from_bytes(bytes, path(), None).unwrap();
            let batches = if i == 2 { 0 } else { m.batches_tracked };
            assert!(loaded == Model { batches_tracked: batches, ..m.clone() }, "variant {i}");
        }
    }

    #[test]
    fn halves_widen_exactly() {
        let m = model(&DenseNetConfig::bc_cifar(10, 2).unwrap());
        let bytes = Checkpoint::of_model(m.clone()).to_bytes().unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for dtype in [Dtype::F16, Dtype::BF16] {
            let mut halves = Vec::new();
            for (name, v) in st.tensors() {
                let data = if v.dtype() == Dtype::F32 {
                    let f = f32s(v.data());
                    match dtype {
                        Dtype::F16 => f.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                        _ => f.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                    }
                } else {
                    v.data().to_vec()
                };
                let dt = if v.dtype() == Dtype::F32 { dtype } else { v.dtype() };
                halves.push((name, dt, v.shape().to_vec(), data));
            }
            let views: Vec<(String, TensorView)> = halves
                .iter()
                .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let file = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
            let loaded = from_bytes(&file, path(), None).unwrap();
            // Each value is the half's own, widened: rounding to the half again gives it back.
            let round = |x: f32| match dtype {
                Dtype::F16 => half::f16::from_f32(x).to_f32(),
                _ => half::bf16::from_f32(x).to_f32(),
            };
            assert_eq!(loaded.running, m.running.iter().map(|x| round(*x)).collect::<Vec<_>>());
            assert_eq!(loaded.params.iter().map(|x| round(*x)).collect::<Vec<_>>(), loaded.params);
            let diff = loaded.params.iter().zip(&m.params).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff > 0.0 && diff < 0.05, "{dtype:?}: {diff}");
        }
    }

    #[test]
    fn mismatches_name_the_key_and_both_shapes() {
        let config = small_imagenet();
        let m = model(&config);
        let message = |bytes: &[u8], expected: Option<&DenseNetConfig>| {
            from_bytes(bytes, path(), expected).unwrap_err().to_string()
        };
        // An explicit configuration that the shapes contradict.
        let other = DenseNetConfig { growth: 8, ..config.clone() };
        let e = message(&plain(&m, |n| n.to_string(), |_| false), Some(&other));
        let want = "tensor `features.denseblock1.denselayer1.conv1.weight` has shape [8, 6, 1, 1], \
                    expected [16, 6, 1, 1] for the requested configuration";
        assert!(e.contains(want), "{e}");
        // A key missing, one left over.
        let e = message(&plain(&m, |n| n.replace("norm5", "norm6"), |_| false), None);
        assert!(e.contains("missing keys `features.norm5.weight`"), "{e}");
        assert!(e.contains("unexpected keys `features.norm6.bias`"), "{e}");
        let e = message(&plain(&m, |n| n.to_string(), |n| n == "features.norm0.running_var"), None);
        assert!(e.contains("missing keys `features.norm0.running_var`") && !e.contains("unexpected"), "{e}");
        // Both spellings of one key.
        let bytes = plain(&m, |n| n.to_string(), |_| false);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut both = st.tensors();
        both.push(("module.classifier.bias".into(), st.tensor("classifier.bias").unwrap()));
        let e = message(&safetensors::serialize(both, None::<HashMap<String, String>>).unwrap(), None);
        assert!(
            e.contains("tensors `classifier.bias` and `module.classifier.bias` are both `classifier.bias`"),
            "{e}"
        );
    }
}
