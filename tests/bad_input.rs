//! Hostile input through every command of the release binary: absurd and overflowing numbers,
//! malformed sizes, models and block lists, data directories and checkpoints that are missing,
//! FIFOs, devices, link loops or of the wrong length, unwritable outputs. Each case must end
//! within 10 s and 500 MB of peak RSS with exit status 1 or 2 and a one-line `error:` (or
//! clap's usage error) naming the problem — never a panic, an abort, a hang or the OOM killer.
//!
//! `DENSENET_BAD_INPUT_BIN=PATH` runs the table against another build of the binary (e.g. one
//! from before a fix) and reports how many cases it passes instead of failing.

use densenet::checkpoint::Checkpoint;
use densenet::config::DenseNetConfig;
use densenet::data::Normalization;
use densenet::train::Model;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TIME_LIMIT: Duration = Duration::from_secs(10);
const RSS_LIMIT_KB: i64 = 500 * 1024;

/// `(arguments, substring stderr must contain)`; `{name}` in the arguments is a fixture path.
const CASES: &[(&str, &str)] = &[
    // ---- info: every model flag ----------------------------------------------------------
    ("info --growth=0", "growth rate must be at least 1"),
    ("info --growth=-1", "invalid value '-1'"),
    ("info --growth=1000000000", "growth rate 1000000000 is too large"),
    ("info --growth=4294967296", "growth rate 4294967296 is too large"),
    ("info --growth=18446744073709551616", "invalid value"),
    ("info --growth=1e9", "invalid value '1e9'"),
    ("info --growth=NaN", "invalid value 'NaN'"),
    ("info --growth=inf", "invalid value 'inf'"),
    ("info --growth=twelve", "invalid value 'twelve'"),
    ("info --blocks=1000000000", "layer count of dense block 1 1000000000 is too large"),
    ("info --blocks=6,1000000000", "layer count of dense block 2"),
    ("info --blocks=5000,5001", "total number of dense layers 10001"),
    ("info --blocks=18446744073709551615,1", "layer count of dense block 1"),
    ("info --blocks=0", "dense block 1 has no layers"),
    ("info --blocks=6,0,6", "dense block 2 has no layers"),
    ("info --blocks=,", "invalid value"),
    ("info --blocks=", "invalid value"),
    ("info --blocks=-1", "invalid value '-1'"),
    ("info --blocks=1e9", "invalid value '1e9'"),
    ("info --blocks=a,b", "invalid value 'a'"),
    ("info --init-features=0", "initial features must be at least 1"),
    ("info --init-features=1000000000", "initial features 1000000000 is too large"),
    ("info --init-features=-1", "invalid value '-1'"),
    ("info --bn-size=0", "bn-size must be at least 1"),
    ("info --bn-size=1000000000", "bn-size 1000000000 is too large"),
    ("info --bn-size=4294967296", "bn-size 4294967296 is too large"),
    ("info --bn-size=NaN", "invalid value 'NaN'"),
    ("info --compression=0", "compression must lie in (0, 1]"),
    ("info --compression=-1", "compression must lie in (0, 1]"),
    ("info --compression=1.5", "compression must lie in (0, 1]"),
    ("info --compression=NaN", "compression must lie in (0, 1]"),
    ("info --compression=inf", "compression must lie in (0, 1]"),
    ("info --compression=1e-300", "no output channels"),
    ("info --compression=half", "invalid value 'half'"),
    ("info --classes=0", "at least one class is needed"),
    ("info --classes=1000000000", "number of classes 1000000000 is too large"),
    ("info --classes=18446744073709551615", "number of classes"),
    ("info --classes=-1", "invalid value '-1'"),
    ("info --growth=4096 --bn-size=64", "parameters, more than the"),
    ("info --growth=4096 --blocks=2000", "channel count of dense block 1 8192024 is too large"),
    ("info --stem=resnet", "unknown stem `resnet`"),
    ("info --stem=", "unknown stem"),
    ("info --model=resnet50", "unknown model `resnet50`"),
    ("info --model=", "unknown model"),
    ("info --model=densenet-bc-7-k12", "depth must be 6·n + 4"),
    ("info --model=densenet-bc-0-k12", "depth must be 6·n + 4"),
    ("info --model=densenet-bc-100-k0", "growth rate must be at least 1"),
    ("info --model=densenet-bc-6000000004-k12", "layer count of dense block 1"),
    ("info --model=densenet-bc-100-k1000000000", "growth rate 1000000000 is too large"),
    ("info --model=densenet-bc-99999999999999999999-k12", "unknown model"),
    // ---- info: sizes ---------------------------------------------------------------------
    ("info --size=0x0", "image size 0x0 is empty"),
    ("info --size=0", "image size 0x0 is empty"),
    ("info --size=1x", "not of the form HxW"),
    ("info --size=x5", "not of the form HxW"),
    ("info --size=x", "not of the form HxW"),
    ("info --size=", "not of the form HxW"),
    ("info --size=-1x5", "not of the form HxW"),
    ("info --size=32x32x3", "not of the form HxW"),
    ("info --size=NaNxinf", "not of the form HxW"),
    ("info --size=4294967296x4294967296", "image size 4294967296x4294967296 is too large"),
    ("info --size=18446744073709551616x2", "not of the form HxW"),
    ("info --size=100000x100000", "is too large: at most 65536x65536"),
    ("info --size=2x2", "too small"),
    ("info --model=densenet121 --size=16x16", "too small"),
    ("info --model=densenet121 --size=65536x65536 --growth=4096", "parameters, more than the"),
    (
        "info --size=65536x65536 --growth=4096 --bn-size=16 --init-features=65536 --blocks=1",
        "the multiply-adds of denseblock1 exceed 2^64",
    ),
    // ---- verify ----------------------------------------------------------------------------
    ("verify --batch=0", "batch size must be at least 1"),
    ("verify --batch=-1", "invalid value '-1'"),
    ("verify --batch=1000000000", "needs"),
    ("verify --batch=4294967296", "needs"),
    ("verify --batch=18446744073709551615", "too large to address"),
    ("verify --batch=18446744073709551616", "invalid value"),
    ("verify --batch=1e9", "invalid value '1e9'"),
    ("verify --batch=NaN", "invalid value 'NaN'"),
    ("verify --batch=inf", "invalid value 'inf'"),
    ("verify --size=100000x100000", "is too large: at most 65536x65536"),
    ("verify --size=65536x65536", "needs"),
    ("verify --size=0x0", "is empty"),
    ("verify --size=1x", "not of the form HxW"),
    ("verify --size=4294967296x4294967296", "too large"),
    ("verify --batch=1 --size=4x4", "one value per channel"),
    ("verify --growth=1000000000", "growth rate 1000000000 is too large"),
    ("verify --blocks=1000000000", "layer count of dense block 1"),
    ("verify --seed=-1", "invalid value '-1'"),
    ("verify --seed=18446744073709551616", "invalid value"),
    ("verify --seed=garbage", "invalid value 'garbage'"),
    ("verify --backend=cuda", "cuda"),
    ("verify --backend=tpu", "invalid value 'tpu'"),
    ("verify --model=densenet-bc-10-k2 --size=8x8 --dump={file}", "plain.txt"),
    ("verify --model=densenet-bc-10-k2 --size=8x8 --dump=/dev/full", "/dev/full"),
    ("verify --model=densenet-bc-10-k2 --size=8x8 --dump={file}/sub", "plain.txt"),
    // ---- train (fails before any epoch runs) ------------------------------------------------
    ("train --growth=1000000000", "growth rate 1000000000 is too large"),
    ("train --blocks=1000000000", "layer count of dense block 1"),
    ("train --batch=0", "batch size must be at least 1"),
    ("train --batch=-1", "invalid value '-1'"),
    ("train --batch=18446744073709551616", "invalid value"),
    ("train --epochs=0", "at least one epoch is needed"),
    ("train --epochs=-1", "invalid value '-1'"),
    ("train --epochs=NaN", "invalid value 'NaN'"),
    ("train --lr=NaN", "learning rate must be positive and finite"),
    ("train --lr=inf", "learning rate must be positive and finite"),
    ("train --lr=-1", "learning rate must be positive and finite"),
    ("train --lr=0", "learning rate must be positive and finite"),
    ("train --lr=fast", "invalid value 'fast'"),
    ("train --seed=-1", "invalid value '-1'"),
    ("train --train-images=1000000000", "needs"),
    ("train --train-images=18446744073709551615", "too large to address"),
    ("train --train-images=-1", "invalid value '-1'"),
    ("train --test-images=1000000000", "needs"),
    ("train --test-images=1e9", "invalid value '1e9'"),
    ("train --train-images=0", "has no images"),
    ("train --schedule=linear", "invalid value 'linear'"),
    ("train --data={missing}", "missing: does not exist"),
    ("train --data={file}", "plain.txt: is a regular file, not a directory"),
    ("train --data={fifo}", "fifo: is a FIFO (named pipe), not a directory"),
    ("train --data={loop_a}", "is a symbolic link loop"),
    ("train --data={empty_dir}", "no CIFAR data found"),
    ("train --data={zero_dir}", "data_batch_1.bin: is a character device, not a regular file"),
    ("train --data={fifo_dir}", "data_batch_1.bin: is a FIFO (named pipe), not a regular file"),
    ("train --data={loop_dir}", "data_batch_1.bin: is a symbolic link loop"),
    (
        "train --data={truncated_dir}",
        "data_batch_1.bin: has 6246 bytes, expected a positive multiple of 3073",
    ),
    ("train --data={empty_file_dir}", "data_batch_1.bin: has 0 bytes"),
    ("train --data={missing_batch_dir}", "data_batch_2.bin: does not exist"),
    ("train --data={cifar100_wrong_dir}", "train.bin: has 3073 bytes, expected a positive multiple of 3074"),
    ("train --data={bad_label_dir}", "record 0 has label 200"),
    ("train --data={test_only_dir}", "no CIFAR data found"),
    ("train --data={test_only_dir} --synthetic", "cannot be used with"),
    ("train --resume --checkpoint-dir={empty_dir}", "no checkpoint to resume from"),
    ("train --backend=cuda", "cuda"),
    // ---- eval ----------------------------------------------------------------------------------
    ("eval", "--checkpoint"),
    ("eval --checkpoint={missing}", "missing"),
    ("eval --checkpoint={empty_dir}", "empty"),
    ("eval --checkpoint={loop_a}", "loop_a"),
    ("eval --checkpoint={file}", "plain.txt"),
    ("eval --checkpoint={fifo}", "fifo: is a FIFO (named pipe), not a regular file"),
    ("eval --checkpoint=/dev/zero", "/dev/zero: is a character device, not a regular file"),
    ("train --resume --checkpoint-dir={fifo_dir}", "fifo_dir"),
    ("eval --checkpoint={empty_file}", "empty.bin"),
    ("eval --checkpoint={good} --data={test_only_dir} --batch=0", "batch size must be at least 1"),
    ("eval --checkpoint={good} --batch=-1", "invalid value '-1'"),
    ("eval --checkpoint={good} --batch=1e9", "invalid value '1e9'"),
    ("eval --checkpoint={good}", "records no data set; pass --data DIR"),
    ("eval --checkpoint={good} --data={missing}", "missing: does not exist"),
    ("eval --checkpoint={good} --data={file}", "is a regular file, not a directory"),
    ("eval --checkpoint={good} --data={fifo}", "is a FIFO (named pipe), not a directory"),
    ("eval --checkpoint={good} --data={loop_a}", "symbolic link loop"),
    ("eval --checkpoint={good} --data={empty_dir}", "expected test_batch.bin (CIFAR-10) or test.bin"),
    ("eval --checkpoint={good} --data={zero_dir}", "test_batch.bin: is a character device"),
    ("eval --checkpoint={good} --data={fifo_dir}", "test_batch.bin: is a FIFO (named pipe)"),
    ("eval --checkpoint={good} --data={short_test_dir}", "test_batch.bin: has 10 bytes"),
    ("eval --checkpoint={good} --data={cifar100_wrong_dir}", "test.bin: has 3073 bytes"),
    ("eval --checkpoint={good} --data={bad_label_dir}", "record 0 has label 200"),
    ("eval --checkpoint={huge} --data={test_only_dir}", "the test loss is"),
    ("eval --checkpoint={good} --data={test_only_dir} --backend=cuda", "cuda"),
    // ---- --init-from: torchvision state_dicts and PyTorch pickles ------------------------------
    ("eval --init-from={fifo}", "fifo: is a FIFO (named pipe), not a regular file"),
    ("eval --init-from={empty_dir}", "empty: is a directory, not a regular file"),
    ("eval --init-from=/dev/zero", "/dev/zero: is a character device, not a regular file"),
    ("eval --init-from={loop_a}", "is a symbolic link loop"),
    ("eval --init-from={missing}", "missing: does not exist"),
    ("eval --init-from={empty_file}", "fewer than the 8 of the header length"),
    ("train --init-from={fifo}", "fifo: is a FIFO (named pipe), not a regular file"),
    ("train --init-from={empty_dir}", "empty: is a directory, not a regular file"),
    ("eval --init-from={sd_truncated} --data={test_only_dir}", "not a valid safetensors file"),
    ("train --init-from={sd_truncated}", "not a valid safetensors file"),
    ("eval --init-from={sd_huge_shape}", "not a valid safetensors file"),
    ("eval --init-from={sd_absurd}", "growth rate 1000000000000 is too large"),
    ("train --init-from={sd_absurd}", "growth rate 1000000000000 is too large"),
    ("eval --init-from={sd_wide}", "initial features 1000000000000 is too large"),
    (
        "eval --init-from={sd_resnet}",
        "is not a torchvision DenseNet state_dict: it has no `features.conv0.weight` (its keys begin `bn1.bias`",
    ),
    ("train --init-from={sd_resnet}", "is not a torchvision DenseNet state_dict"),
    ("eval --init-from={sd_stem5}", "expected [features, input channels, 3, 3] (CIFAR stem)"),
    ("eval --init-from={sd_bottleneck}", "not a multiple of the growth rate 2"),
    (
        "eval --init-from={sd_inconsistent}",
        "tensor `features.transition1.norm.weight` has shape [7], expected [6]",
    ),
    ("eval --init-from={sd_missing}", "missing keys `features.norm5.running_var`"),
    ("eval --init-from={sd_extra}", "unexpected keys `features.norm6.weight`"),
    (
        "eval --init-from={sd_nan} --data={test_only_dir}",
        "`features.conv0.weight` has the non-finite value NaN",
    ),
    ("train --init-from={sd_nan}", "`features.conv0.weight` has the non-finite value NaN"),
    ("eval --init-from={sd_negvar}", "`features.norm5.running_var` has the negative variance -1"),
    ("eval --init-from={sd_f64}", "`features.conv0.weight` has dtype F64, expected F32, F16 or BF16"),
    ("eval --init-from={sd_nbt_f32}", "num_batches_tracked` has dtype F32, expected I64"),
    ("eval --init-from={sd_dup}", "are both `classifier.bias`"),
    ("eval --init-from={sd}", "records no data set; pass --data DIR"),
    ("eval --init-from={sd} --data={test_only_dir} --batch=0", "batch size must be at least 1"),
    ("eval --init-from={sd} --checkpoint={good}", "cannot be used with"),
    ("train --init-from={good} --resume", "cannot be used with"),
    ("train --init-from={sd} --growth=3", "in the checkpoint but [12, 4, 1, 1] in the requested model"),
    ("train --init-from={sd} --stem=imagenet", "has shape [4, 3, 3, 3] in the checkpoint but [4, 3, 7, 7]"),
    ("train --init-from={sd} --model=densenet121", "in the checkpoint but [64, 3, 7, 7]"),
    ("eval --init-from={pickle_zip}", "is a PyTorch pickle (torch.save's zip format)"),
    ("eval --checkpoint={pickle_zip}", "save_file(torch.load("),
    ("eval --checkpoint={pickle_legacy}", "is a PyTorch pickle (torch.save's legacy format)"),
    ("train --init-from={pickle_legacy}", "is a PyTorch pickle"),
    ("train --resume --checkpoint-dir={pickle_dir}", "checkpoint.safetensors: is a PyTorch pickle"),
    // ---- predict -------------------------------------------------------------------------------
    ("predict --checkpoint={good}", "the following required arguments were not provided"),
    ("predict {png}", "the following required arguments were not provided"),
    ("predict --checkpoint={missing} {png}", "missing: does not exist"),
    ("predict --checkpoint={png} {png}", "image.png"),
    ("predict --init-from={pickle_zip} {png}", "is a PyTorch pickle"),
    ("predict --checkpoint={good} {missing}", "missing: does not exist"),
    ("predict --checkpoint={good} {fifo}", "fifo: is a FIFO"),
    ("predict --checkpoint={good} {loop_a}", "loop_a"),
    ("predict --checkpoint={good} /dev/zero", "/dev/zero: is a character device"),
    ("predict --checkpoint={good} {empty_dir}", "empty: holds no images"),
    ("predict --checkpoint={good} {file}", "plain.txt: is not a JPEG or PNG file"),
    ("predict --checkpoint={good} {empty_file}", "empty.bin"),
    ("predict --checkpoint={good} {corrupt_png}", "corrupt.png: is not a valid image"),
    ("predict --checkpoint={good} {png} {corrupt_png}", "corrupt.png"),
    ("predict --checkpoint={good} {bomb_png}", "bomb.png: is 100000x100000 pixels, more than"),
    (
        "predict --checkpoint={good} {bad_images_dir} --bad-images=skip",
        "none of the 1 images is readable; the first: ",
    ),
    ("predict --checkpoint={good} {png} --top=0", "--top must be at least 1"),
    ("predict --checkpoint={good} {png} --top=-1", "invalid value '-1'"),
    ("predict --checkpoint={good} {png} --top=18446744073709551616", "invalid value"),
    ("predict --checkpoint={good} {png} --batch=0", "batch size must be at least 1"),
    ("predict --checkpoint={good} {png} --batch=NaN", "invalid value 'NaN'"),
    ("predict --checkpoint={good} {png} --size=0", "image size"),
    ("predict --checkpoint={good} {png} --size=2", "too small"),
    ("predict --checkpoint={good} {png} --size=100000", "too large"),
    ("predict --checkpoint={good} {png} --size=65536", "needs"),
    ("predict --checkpoint={huge} {png}", "make its outputs overflow"),
    ("predict --checkpoint={good} {png} --backend=cuda", "cuda"),
    ("predict --checkpoint={good} {png} --backend=tpu", "invalid value 'tpu'"),
    ("predict --checkpoint={good} {png} --bad-images=maybe", "invalid value 'maybe'"),
    // ---- profile -------------------------------------------------------------------------------
    ("profile", "--batch"),
    ("profile --batch=0", "batch size must be at least 1"),
    ("profile --batch=-1", "invalid value '-1'"),
    ("profile --batch=18446744073709551615", "too large to address"),
    ("profile --batch=NaN", "invalid value 'NaN'"),
    ("profile --batch=2 --steps=0", "invalid value '0'"),
    ("profile --batch=2 --steps=1000000000", "invalid value '1000000000'"),
    ("profile --batch=2 --steps=18446744073709551616", "invalid value"),
    ("profile --batch=2 --steps=-1", "invalid value '-1'"),
    ("profile --batch=2 --max-run-bytes=garbage", "--max-run-bytes `garbage`"),
    ("profile --batch=2 --max-run-bytes=-1", "--max-run-bytes `-1`"),
    ("profile --batch=2 --max-run-bytes=NaN", "--max-run-bytes `NaN`"),
    ("profile --batch=2 --max-run-bytes=1e400", "--max-run-bytes `1e400`"),
    ("profile --batch=2 --max-run-bytes=18446744073709551616", "--max-run-bytes"),
    ("profile --batch=2 --depths=7", "depth must be 6·n + 4"),
    ("profile --batch=2 --depths=1000000001", "depth must be 6·n + 4"),
    ("profile --batch=2 --depths=1000000000", "layer count of dense block 1 166666666"),
    ("profile --batch=2 --depths=6000000004", "layer count of dense block 1"),
    ("profile --batch=2 --depths=,", "invalid value"),
    ("profile --batch=2 --depths=40 --blocks=6", "cannot be used with"),
    ("profile --batch=2 --growth=1000000000", "growth rate 1000000000 is too large"),
    ("profile --batch=2 --size=4294967296x4294967296", "too large"),
    ("profile --batch=2 --size=1x", "not of the form HxW"),
    ("profile --batch=2 --precision=f16", "invalid value 'f16'"),
    ("profile --batch=2 --backend=cuda", "cuda"),
    ("profile --batch=2 --max-run-bytes=0 --csv={empty_dir}", "empty"),
    ("profile --batch=2 --max-run-bytes=0 --csv={missing}/x.csv", "missing/x.csv"),
    ("profile --batch=2 --max-run-bytes=0 --csv=/dev/full", "/dev/full"),
    ("profile --batch=2 --max-run-bytes=0 --svg={empty_dir}", "empty"),
    ("profile --batch=2 --max-run-bytes=0 --svg={file}/x.svg", "plain.txt/x.svg"),
    ("profile --batch=2 --max-run-bytes=0 --svg=/dev/full", "/dev/full: is not a regular file (--svg)"),
    ("profile --batch=2 --csv=/sys/x.csv", "cannot create (--csv): /sys is not writable"),
    ("train --epochs=1 --log=/sys/x.jsonl", "cannot create (--log): /sys is not writable"),
    ("train --epochs=1 --log={empty_dir}", "is not a regular file (--log)"),
    // ---- kernels and the command line itself ---------------------------------------------------
    ("kernels --arch=sm_90", "--compile"),
    ("kernels --compile --arch=garbage", "garbage"),
    ("kernels --compile --arch=sm_", "sm_"),
    ("kernels --compile --arch=sm_99999999999999999999", "sm_99999999999999999999"),
    ("frobnicate", "unrecognized subcommand"),
    ("info --no-such-flag", "unexpected argument"),
];

/// Paths the cases refer to as `{name}`.
struct Fixtures {
    dir: tempfile::TempDir,
    names: Vec<(&'static str, PathBuf)>,
}

impl Fixtures {
    fn new() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut names = Vec::new();
        let mut add = |name: &'static str, path: PathBuf| {
            names.push((name, path.clone()));
            path
        };
        add("missing", root.join("missing"));
        std::fs::write(add("file", root.join("plain.txt")), "not data\n").unwrap();
        std::fs::write(add("empty_file", root.join("empty.bin")), "").unwrap();
        std::fs::create_dir(add("empty_dir", root.join("empty"))).unwrap();
        mkfifo(&add("fifo", root.join("fifo")));
        // Images for `predict`: a good PNG, a PNG whose data is garbage, one whose header
        // claims 100000 x 100000 pixels, and a folder holding only an unreadable image.
        let png = add("png", root.join("image.png"));
        image::RgbImage::from_pixel(9, 7, image::Rgb([10, 200, 30])).save(&png).unwrap();
        let header = std::fs::read(&png).unwrap()[..33].to_vec();
        std::fs::write(add("corrupt_png", root.join("corrupt.png")), [&header[..], &[0xAB; 64]].concat())
            .unwrap();
        std::fs::write(add("bomb_png", root.join("bomb.png")), png_claiming(100_000, 100_000)).unwrap();
        let bad_images = add("bad_images_dir", root.join("bad_images"));
        std::fs::create_dir(&bad_images).unwrap();
        std::fs::write(bad_images.join("x.jpg"), "not a JPEG").unwrap();
        let (a, b) = (add("loop_a", root.join("loop_a")), root.join("loop_b"));
        symlink(&b, &a);
        symlink(&a, &b);
        let cifar_dir = |name: &'static str, files: &[(&str, File)]| {
            let d = root.join(name);
            std::fs::create_dir(&d).unwrap();
            for (f, contents) in files {
                let path = d.join(f);
                match contents {
                    File::Bytes(bytes) => std::fs::write(&path, bytes).unwrap(),
                    File::Link(target) => symlink(Path::new(target), &path),
                    File::Fifo => mkfifo(&path),
                }
            }
            d
        };
        let records = |n: usize, label: u8, size: usize| {
            let mut v = vec![7u8; n * size];
            v.iter_mut().step_by(size).for_each(|b| *b = label);
            File::Bytes(v)
        };
        let loop_target = a.to_str().unwrap().to_string();
        let dirs = [
            (
                "zero_dir",
                vec![
                    ("data_batch_1.bin", File::Link("/dev/zero".into())),
                    ("test_batch.bin", File::Link("/dev/zero".into())),
                ],
            ),
            ("fifo_dir", vec![("data_batch_1.bin", File::Fifo), ("test_batch.bin", File::Fifo)]),
            ("loop_dir", vec![("data_batch_1.bin", File::Link(loop_target))]),
            ("truncated_dir", vec![("data_batch_1.bin", File::Bytes(vec![0; 2 * 3073 + 100]))]),
            ("empty_file_dir", vec![("data_batch_1.bin", File::Bytes(Vec::new()))]),
            ("missing_batch_dir", vec![("data_batch_1.bin", records(2, 3, 3073))]),
            (
                "cifar100_wrong_dir",
                vec![("train.bin", records(1, 3, 3073)), ("test.bin", records(1, 3, 3073))],
            ),
            (
                "bad_label_dir",
                vec![("data_batch_1.bin", records(1, 200, 3073)), ("test_batch.bin", records(1, 200, 3073))],
            ),
            ("short_test_dir", vec![("test_batch.bin", File::Bytes(vec![1; 10]))]),
            ("test_only_dir", vec![("test_batch.bin", records(3, 4, 3073))]),
        ];
        for (name, files) in dirs {
            let d = cifar_dir(name, &files);
            names.push((name, d));
        }
        let config = DenseNetConfig::bc_cifar(10, 2).unwrap();
        let identity = Normalization::new([0.0; 3], [1.0; 3]);
        let model = Model::new(&config, identity, 0).unwrap();
        let good = root.join("good.safetensors");
        Checkpoint::of_model(model.clone()).save(&good).unwrap();
        names.push(("good", good));
        // Finite weights so large that the activations overflow: the loss is not finite,
        // although the checkpoint loads (a NaN weight itself is refused on load).
        let huge = root.join("huge.safetensors");
        Checkpoint::of_model(Model { params: vec![1e30; model.params.len()], ..model.clone() })
            .save(&huge)
            .unwrap();
        names.push(("huge", huge));
        for (name, bytes) in state_dicts(&model) {
            let path = root.join(format!("{name}.safetensors"));
            std::fs::write(&path, bytes).unwrap();
            names.push((name, path));
        }
        // torch.save's formats: a zip archive, and before PyTorch 1.6 a protocol-2 pickle
        // (starting with its magic number, as torch.save wrote it).
        let zip = [b"PK\x03\x04".as_slice(), &[0; 60]].concat();
        std::fs::write(add_name(&mut names, "pickle_zip", root.join("weights.pth")), &zip).unwrap();
        let legacy = [b"\x80\x02\x8a\x0alZ\xfc\x9cF\xf9 j\xa8P\x19.".as_slice(), &[0; 40]].concat();
        std::fs::write(add_name(&mut names, "pickle_legacy", root.join("legacy.pt")), legacy).unwrap();
        let pickle_dir = add_name(&mut names, "pickle_dir", root.join("pickle_dir"));
        std::fs::create_dir(&pickle_dir).unwrap();
        std::fs::write(pickle_dir.join("checkpoint.safetensors"), &zip).unwrap();
        Fixtures { dir, names }
    }

    fn args(&self, case: &str) -> Vec<String> {
        case.split_whitespace()
            .map(|a| {
                self.names.iter().fold(a.to_string(), |a, (name, path)| {
                    a.replace(&format!("{{{name}}}"), path.to_str().unwrap())
                })
            })
            .collect()
    }
}

/// The signature and IHDR chunk of a `w × h` 8-bit RGB PNG (with its CRC), then an empty
/// IDAT: a header that claims the size, with no pixels behind it.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let body = [kind, data].concat();
        let crc = png_crc(&body);
        [&(data.len() as u32).to_be_bytes()[..], &body, &crc.to_be_bytes()].concat()
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &[]), &chunk(b"IEND", &[])].concat()
}

/// CRC-32 (IEEE, as PNG uses), bit by bit: a few dozen bytes only.
fn png_crc(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn add_name(names: &mut Vec<(&'static str, PathBuf)>, name: &'static str, path: PathBuf) -> PathBuf {
    names.push((name, path.clone()));
    path
}

/// A tensor of a state_dict: name, dtype, shape, data.
type Owned = (String, Dtype, Vec<usize>, Vec<u8>);

/// Plain `state_dict`s (no metadata, as `safetensors.torch.save_file` writes them) made from
/// `model` (DenseNet-BC-10, k = 2: 4 initial features, one layer per block), each broken in
/// one way, by fixture name; `sd` is the intact one.
fn state_dicts(model: &Model) -> Vec<(&'static str, Vec<u8>)> {
    let bytes = Checkpoint::of_model(model.clone()).to_bytes().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<Owned> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let write = |tensors: &[Owned]| {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None::<HashMap<String, String>>).unwrap()
    };
    let edit = |f: &dyn Fn(&mut Vec<Owned>)| {
        let mut t = owned.clone();
        f(&mut t);
        write(&t)
    };
    let tensor =
        |name: &str, shape: &[usize], data: Vec<u8>| (name.to_string(), Dtype::F32, shape.to_vec(), data);
    let set = |name: &'static str, new: (Dtype, Vec<usize>, Vec<u8>)| {
        move |t: &mut Vec<Owned>| {
            let e = t.iter_mut().find(|e| e.0 == name).unwrap();
            (e.1, e.2, e.3) = new.clone();
        }
    };
    let sd = write(&owned);
    let conv0 = owned.iter().find(|e| e.0 == "features.conv0.weight").unwrap().clone();
    let mut nan = conv0.3.clone();
    nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let f64s: Vec<u8> = conv0.3.chunks(4).flat_map(|_| 0.5f64.to_le_bytes()).collect();
    // A header declaring 10¹² × 27 values with 16 bytes of data.
    let header =
        br#"{"features.conv0.weight":{"dtype":"F32","shape":[1000000000000,3,3,3],"data_offsets":[0,16]}}"#;
    let huge_shape = [&(header.len() as u64).to_le_bytes()[..], header, &[0; 16]].concat();
    vec![
        ("sd_truncated", sd[..sd.len() - 100].to_vec()),
        ("sd_huge_shape", huge_shape),
        // Sizes that hold no values (a zero dimension) but name 10¹² channels.
        (
            "sd_absurd",
            write(&[
                conv0.clone(),
                tensor(
                    "features.denseblock1.denselayer1.conv1.weight",
                    &[2_000_000_000_000, 0, 1, 1],
                    vec![],
                ),
                tensor(
                    "features.denseblock1.denselayer1.conv2.weight",
                    &[1_000_000_000_000, 0, 3, 3],
                    vec![],
                ),
                tensor("classifier.weight", &[10, 0], vec![]),
            ]),
        ),
        (
            "sd_wide",
            edit(&set("features.conv0.weight", (Dtype::F32, vec![1_000_000_000_000, 0, 3, 3], vec![]))),
        ),
        (
            "sd_resnet",
            write(&[
                tensor("conv1.weight", &[4, 3, 7, 7], vec![0; 4 * 3 * 49 * 4]),
                tensor("bn1.weight", &[4], vec![0; 16]),
                tensor("bn1.bias", &[4], vec![0; 16]),
                tensor("fc.weight", &[10, 4], vec![0; 160]),
            ]),
        ),
        (
            "sd_stem5",
            edit(&set("features.conv0.weight", (Dtype::F32, vec![4, 3, 5, 5], vec![0; 4 * 3 * 25 * 4]))),
        ),
        (
            "sd_bottleneck",
            edit(&set(
                "features.denseblock1.denselayer1.conv1.weight",
                (Dtype::F32, vec![7, 4, 1, 1], vec![0; 112]),
            )),
        ),
        (
            "sd_inconsistent",
            edit(&set("features.transition1.norm.weight", (Dtype::F32, vec![7], vec![0; 28]))),
        ),
        ("sd_missing", edit(&|t| t.retain(|e| e.0 != "features.norm5.running_var"))),
        ("sd_extra", edit(&|t| t.push(tensor("features.norm6.weight", &[1], vec![0; 4])))),
        ("sd_nan", edit(&set("features.conv0.weight", (Dtype::F32, conv0.2.clone(), nan)))),
        (
            "sd_negvar",
            edit(&set(
                "features.norm5.running_var",
                (Dtype::F32, vec![4], [-1f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect()),
            )),
        ),
        ("sd_f64", edit(&set("features.conv0.weight", (Dtype::F64, conv0.2.clone(), f64s)))),
        ("sd_nbt_f32", edit(&set("features.norm5.num_batches_tracked", (Dtype::F32, vec![], vec![0; 4])))),
        (
            "sd_dup",
            edit(&|t| {
                let bias = t.iter().find(|e| e.0 == "classifier.bias").unwrap().clone();
                t.push(("module.classifier.bias".into(), bias.1, bias.2, bias.3));
            }),
        ),
        ("sd", sd),
    ]
}

enum File {
    Bytes(Vec<u8>),
    Link(String),
    Fifo,
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// How one run of the binary ended.
struct Run {
    /// Exit status, or `None` when killed by a signal (an abort, the OOM killer, our timeout).
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    seconds: f64,
    max_rss_kb: i64,
    stderr: String,
}

/// Runs the binary with `args` in `cwd`, killing it after [`TIME_LIMIT`], and measures its
/// peak resident set with `wait4`'s rusage.
// The child is reaped by `wait4`, not `Child::wait`, because only wait4 returns its rusage.
#[allow(clippy::zombie_processes)]
fn run(binary: &Path, args: &[String], cwd: &Path, out: &Path) -> Run {
    let stderr_path = out.with_extension("stderr");
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("the binary starts");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut timed_out = false;
    let (status, rusage) = loop {
        let mut status = 0;
        // SAFETY: plain libc call on our own child; an all-zero rusage is a valid value.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut rusage) };
        if done == pid {
            break (status, rusage);
        }
        assert_eq!(done, 0, "wait4 failed");
        if start.elapsed() > TIME_LIMIT && !timed_out {
            timed_out = true;
            child.kill().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = String::from_utf8_lossy(&std::fs::read(&stderr_path).unwrap()).into_owned();
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        timed_out,
        seconds: start.elapsed().as_secs_f64(),
        max_rss_kb: rusage.ru_maxrss,
        stderr,
    }
}

/// Why a run does not behave as a hostile case must, if it does not.
fn check(run: &Run, expected: &str) -> Result<(), String> {
    let text = run.stderr.trim_end();
    if run.timed_out {
        return Err(format!("still running after {TIME_LIMIT:?}, killed"));
    }
    if run.max_rss_kb > RSS_LIMIT_KB {
        return Err(format!("peak RSS {} MB", run.max_rss_kb / 1024));
    }
    if text.contains("panicked") || text.contains("RUST_BACKTRACE") {
        return Err(format!("panicked: {text}"));
    }
    match (run.code, run.signal) {
        (Some(1 | 2), _) => {}
        (Some(code), _) => return Err(format!("exit status {code}")),
        (None, signal) => return Err(format!("killed by signal {signal:?}")),
    }
    let first = text.lines().next().unwrap_or("");
    // clap's usage errors add a usage section after the message line.
    let clap = run.code == Some(2) && text.contains("For more information, try '--help'.");
    if !first.starts_with("error:") || (!clap && text.lines().count() != 1) {
        return Err("stderr is not one line starting with `error:`".into());
    }
    if !text.to_lowercase().contains(&expected.to_lowercase()) {
        return Err(format!("stderr does not mention `{expected}`"));
    }
    Ok(())
}

/// Runs every case of `cases` (a few at a time: most end in milliseconds, and threads keep
/// the slow ones from adding up) and returns a description of each that misbehaves.
fn run_table(fixtures: &Fixtures, binary: &Path, table: &str, cases: &[(&str, &str)]) -> Vec<String> {
    let work = fixtures.dir.path().join(table);
    std::fs::create_dir(&work).unwrap();
    let next = AtomicUsize::new(0);
    let results: Vec<(usize, Result<(), String>, Run)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((case, expected)) = cases.get(i) else { break mine };
                        // Each case in its own directory: train must not find another's checkpoint.
                        let cwd = work.join(i.to_string());
                        std::fs::create_dir(&cwd).unwrap();
                        let r = run(binary, &fixtures.args(case), &cwd, &cwd.join("stdout"));
                        mine.push((i, check(&r, expected), r));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(i, result, r)| {
            result.as_ref().err().map(|why| {
                format!(
                    "`densenet {}`: {why} ({:.1} s, {} MB, exit {:?}, signal {:?})\n    stderr: {}",
                    cases[*i].0,
                    r.seconds,
                    r.max_rss_kb / 1024,
                    r.code,
                    r.signal,
                    r.stderr.trim_end().replace('\n', "\n            ")
                )
            })
        })
        .collect();
    let worst_rss = results.iter().map(|(_, _, r)| r.max_rss_kb).max().unwrap_or(0);
    let slowest = results.iter().map(|(_, _, r)| r.seconds).fold(0.0, f64::max);
    eprintln!(
        "{table}: {} cases, {} behave, {} do not (largest RSS {} MB, slowest {slowest:.1} s)",
        cases.len(),
        cases.len() - failures.len(),
        failures.len(),
        worst_rss / 1024
    );
    failures
}

#[test]
fn hostile_input_fails_cleanly_fast_and_small() {
    assert!(CASES.len() >= 100, "only {} cases", CASES.len());
    let fixtures = Fixtures::new();
    let other = std::env::var_os("DENSENET_BAD_INPUT_BIN").map(PathBuf::from);
    let binary = other.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_densenet")));
    let failures = run_table(&fixtures, &binary, "hostile", CASES);
    if other.is_some() {
        eprintln!("{}", failures.join("\n"));
        return;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases misbehave:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

/// `eval --data` needs only the test file, and a batch larger than the test set allocates
/// for the test set: `--batch 100000` on 3 images peaks exactly as `--batch 3`.
#[test]
fn eval_sizes_its_network_by_the_test_set() {
    let fixtures = Fixtures::new();
    let peak = |batch: &str| {
        let args = fixtures
            .args(&format!("eval --checkpoint={{good}} --data={{test_only_dir}} --json --batch={batch}"));
        let out = Command::new(env!("CARGO_BIN_EXE_densenet")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["images"], 3);
        v["peak_memory_bytes"].as_u64().unwrap()
    };
    let (huge, exact, smaller) = (peak("100000"), peak("3"), peak("2"));
    assert_eq!(huge, exact);
    assert!(smaller < exact, "{smaller} < {exact}");
}
