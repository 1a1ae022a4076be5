//! CIFAR-10 and CIFAR-100 in their binary distributions.
//!
//! * CIFAR-10 (`cifar-10-batches-bin`): `data_batch_1.bin` … `data_batch_5.bin` and
//!   `test_batch.bin`, records of 1 label byte + 3072 pixel bytes.
//! * CIFAR-100 (`cifar-100-binary`): `train.bin` and `test.bin`, records of 1 coarse label
//!   byte + 1 fine label byte + 3072 pixel bytes; the fine label (100 classes) is used.
//!
//! The 3072 pixel bytes are planar: 1024 red (row-major 32×32), 1024 green, 1024 blue.

use super::{CHANNELS, Dataset, Splits};
use crate::backend::memory::ensure_host_fits;
use crate::error::{Error, Result};
use crate::files::{InputFile, require_dir};
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

/// Finds the files in `dir` or in the sub-directory the official archives unpack to. The first
/// training file decides the variant, or the test file when only the test split is wanted
/// (`densenet eval --data` needs nothing else).
fn locate(dir: &Path, test_only: bool) -> Result<(PathBuf, Variant)> {
    require_dir(dir)?;
    let candidates = [dir.to_path_buf(), dir.join("cifar-10-batches-bin"), dir.join("cifar-100-binary")];
    for d in &candidates {
        for variant in [Variant::Cifar10, Variant::Cifar100] {
            let marker = if test_only { variant.test_file().into() } else { variant.train_files().remove(0) };
            // Anything by that name counts, a FIFO or a link loop too: reading it then says
            // what it is, rather than "no CIFAR data found".
            if d.join(marker).symlink_metadata().is_ok() {
                return Ok((d.clone(), variant));
            }
        }
    }
    let expected = if test_only {
        "test_batch.bin (CIFAR-10) or test.bin (CIFAR-100)"
    } else {
        "data_batch_1.bin … data_batch_5.bin and test_batch.bin (CIFAR-10) or train.bin and test.bin \
         (CIFAR-100)"
    };
    Err(Error::file(dir, format!("no CIFAR data found: expected {expected}")))
}

/// Whether `dir` holds CIFAR files (the training ones, or the test file for `test_only`):
/// the error says which files were expected otherwise.
pub(super) fn present(dir: &Path, test_only: bool) -> Result<()> {
    locate(dir, test_only).map(drop)
}

/// Both splits of the CIFAR data set in `dir`.
pub(super) fn load(dir: &Path) -> Result<Splits> {
    let (dir, variant) = locate(dir, false)?;
    let mut train = empty(variant, "train");
    for f in variant.train_files() {
        read_file(&dir.join(f), variant, &mut train)?;
    }
    Ok(Splits { train, test: test_split(&dir, variant)? })
}

/// The test split of the CIFAR data set in `dir`.
pub(super) fn load_test(dir: &Path) -> Result<Dataset> {
    let (dir, variant) = locate(dir, true)?;
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

/// Appends the records of one file to `out`, checking its size (before reading it) and every
/// label.
fn read_file(path: &Path, variant: Variant, out: &mut Dataset) -> Result<()> {
    let file = InputFile::open(path)?;
    let record = variant.label_bytes() + PIXELS;
    if file.len == 0 || file.len % record as u64 != 0 {
        return Err(file.error(format!(
            "has {} bytes, expected a positive multiple of {record} ({} records of {} label \
             byte(s) + {PIXELS} pixel bytes)",
            file.len,
            variant.name(),
            variant.label_bytes()
        )));
    }
    // The file, and the pixels and labels it becomes, must fit before any of it is read.
    let count = usize::try_from(file.len / record as u64).map_err(|_| file.error("is too large"))?;
    let needed = count.checked_mul(2 * PIXELS + 4).ok_or_else(|| file.error("is too large"))?;
    ensure_host_fits(&format!("{} ({count} records)", path.display()), needed)?;
    let reserve_error = |_| file.error(format!("cannot allocate memory for its {count} records"));
    out.labels.try_reserve_exact(count).map_err(reserve_error)?;
    out.images.try_reserve_exact(count * PIXELS).map_err(reserve_error)?;
    let file_err = |message: String| Error::file(path, message);
    let bytes = file.read_all()?;
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
