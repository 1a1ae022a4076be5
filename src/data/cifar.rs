//! CIFAR-10 and CIFAR-100 in their binary distributions.
//!
//! * CIFAR-10 (`cifar-10-batches-bin`): `data_batch_1.bin` … `data_batch_5.bin` and
//!   `test_batch.bin`, records of 1 label byte + 3072 pixel bytes.
//! * CIFAR-100 (`cifar-100-binary`): `train.bin` and `test.bin`, records of 1 coarse label
//!   byte + 1 fine label byte + 3072 pixel bytes; the fine label (100 classes) is used.
//!
//! The 3072 pixel bytes are planar: 1024 red (row-major 32×32), 1024 green, 1024 blue.

use super::{CHANNELS, Dataset, Splits};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const PIXELS: usize = SIDE * SIDE * CHANNELS;

/// Which of the two distributions a directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Cifar10 => "CIFAR-10",
            Variant::Cifar100 => "CIFAR-100",
        }
    }
    /// Label bytes before the pixels of each record.
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    fn train_files(self) -> Vec<String> {
        match self {
            Variant::Cifar10 => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Variant::Cifar100 => vec!["train.bin".into()],
        }
    }
    fn test_file(self) -> &'static str {
        match self {
            Variant::Cifar10 => "test_batch.bin",
            Variant::Cifar100 => "test.bin",
        }
    }
}

/// Finds the files in `dir` or in the sub-directory the official archives unpack to.
fn locate(dir: &Path) -> Result<(PathBuf, Variant)> {
    let candidates = [dir.to_path_buf(), dir.join("cifar-10-batches-bin"), dir.join("cifar-100-binary")];
    for d in &candidates {
        if d.join("data_batch_1.bin").is_file() {
            return Ok((d.clone(), Variant::Cifar10));
        }
        if d.join("train.bin").is_file() {
            return Ok((d.clone(), Variant::Cifar100));
        }
    }
    Err(Error::File {
        path: dir.display().to_string(),
        message: "no CIFAR data found: expected data_batch_1.bin … data_batch_5.bin and \
                  test_batch.bin (CIFAR-10) or train.bin and test.bin (CIFAR-100)"
            .into(),
    })
}

/// Both splits of the CIFAR data set in `dir`.
pub(super) fn load(dir: &Path) -> Result<Splits> {
    let (dir, variant) = locate(dir)?;
    let mut train = empty(variant, "train");
    for f in variant.train_files() {
        read_file(&dir.join(f), variant, &mut train)?;
    }
    Ok(Splits { train, test: test_split(&dir, variant)? })
}

/// The test split of the CIFAR data set in `dir`.
pub(super) fn load_test(dir: &Path) -> Result<Dataset> {
    let (dir, variant) = locate(dir)?;
    test_split(&dir, variant)
}

fn test_split(dir: &Path, variant: Variant) -> Result<Dataset> {
    let mut test = empty(variant, "test");
    read_file(&dir.join(variant.test_file()), variant, &mut test)?;
    Ok(test)
}

fn empty(variant: Variant, split: &str) -> Dataset {
    Dataset {
        name: format!("{} {split}", variant.name()),
        images: Vec::new(),
        labels: Vec::new(),
        classes: variant.classes(),
        height: SIDE,
        width: SIDE,
    }
}

/// Appends the records of one file to `out`, checking its size and every label.
fn read_file(path: &Path, variant: Variant, out: &mut Dataset) -> Result<()> {
    let file_err = |message: String| Error::File { path: path.display().to_string(), message };
    let bytes = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let record = variant.label_bytes() + PIXELS;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(file_err(format!(
            "has {} bytes, expected a positive multiple of {record} ({} records of {} label \
             byte(s) + {PIXELS} pixel bytes)",
            bytes.len(),
            variant.name(),
            variant.label_bytes()
        )));
    }
    let count = bytes.len() / record;
    out.labels.reserve(count);
    out.images.reserve(count * PIXELS);
    for (i, rec) in bytes.chunks_exact(record).enumerate() {
        // CIFAR-100 records start with the coarse label; the fine label follows.
        let label = rec[variant.label_bytes() - 1];
        if usize::from(label) >= variant.classes() {
            return Err(file_err(format!(
                "record {i} has label {label}, expected 0..{} for {}",
                variant.classes() - 1,
                variant.name()
            )));
        }
        out.labels.push(u32::from(label));
        let planes = &rec[variant.label_bytes()..];
        // Planar RGB → interleaved HWC.
        for p in 0..SIDE * SIDE {
            for c in 0..CHANNELS {
                out.images.push(planes[c * SIDE * SIDE + p]);
            }
        }
    }
    Ok(())
}
