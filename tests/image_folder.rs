//! Image folders (`--data DIR` in torchvision's `ImageFolder` layout): class discovery, the
//! ImageNet transforms, unreadable and hostile files, and a short training run. Every image is
//! encoded here, at test time.

use densenet::data::folder::{MAX_PIXELS, decode_image};
use densenet::data::transform::{
    CROP_RATIO, CROP_SCALE, RgbImage, Transform, eval_resize, random_resized_crop, transform_image,
};
use densenet::data::{
    BadImages, BatchStream, DataSource, EpochPlan, IMAGENET_MEAN, IMAGENET_STD, Images, Normalization,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// An RGB image whose pixel (x, y) is `f(x, y)`, saved in the format of its extension.
fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y))).save(path).unwrap();
}

/// A folder `train/{a,b}` + `val/{a,b}` of small JPEGs and PNGs of odd sizes, grey and RGBA
/// among them.
fn small_folder(root: &Path) {
    for split in ["train", "val"] {
        for (class, colour) in [("a", [200u8, 30, 30]), ("b", [30, 30, 200])] {
            let dir = root.join(split).join(class);
            save_rgb(&dir.join("x1.jpg"), 37, 23, |_, _| colour);
            save_rgb(&dir.join("x2.PNG"), 23, 37, |x, _| [colour[0], (x * 7) as u8, colour[2]]);
            std::fs::create_dir_all(dir.join("deeper")).unwrap();
            image::GrayImage::from_pixel(17, 9, image::Luma([colour[0]]))
                .save(dir.join("deeper/grey.png"))
                .unwrap();
            image::RgbaImage::from_pixel(9, 17, image::Rgba([colour[0], colour[1], colour[2], 7]))
                .save(dir.join("rgba.png"))
                .unwrap();
            std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
        }
    }
}

fn open(root: &Path, size: usize, bad: BadImages) -> (DataSource, Images, Images) {
    let source = DataSource::detect(root, Some(size), false, None).unwrap();
    let splits = source.open(bad).unwrap();
    (source, splits.train, splits.test)
}

fn files(images: &Images) -> &densenet::data::ImageFiles {
    match images {
        Images::Files(f) => f,
        Images::Memory(_) => panic!("an image folder is read as files"),
    }
}

fn stream(images: &Images, plan: EpochPlan) -> Vec<densenet::Result<densenet::data::Batch>> {
    BatchStream::spawn(images.clone(), Normalization::imagenet(), plan).collect()
}

const EVAL: EpochPlan = EpochPlan { batch: 3, shuffle: None, augment: None, drop_last: false };

#[test]
fn classes_are_the_sorted_subdirectories_and_images_any_case_any_depth() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_folder(root);
    // Not classes: a hidden directory and a plain file; "C" sorts before "a" (byte order, as
    // Python's sorted()).
    save_rgb(&root.join("train/C/one.JpEg"), 5, 5, |_, _| [0, 0, 0]);
    save_rgb(&root.join("train/.ipynb_checkpoints/x.jpg"), 5, 5, |_, _| [0, 0, 0]);
    std::fs::write(root.join("train/README"), "").unwrap();
    let (source, train, test) = open(root, 16, BadImages::Fail);
    let DataSource::Folder { classes, size, .. } = &source else { panic!("{source:?}") };
    assert_eq!(classes, &["C", "a", "b"]);
    assert_eq!(*size, 16);
    let t = files(&train);
    assert_eq!(t.labels, vec![0, 1, 1, 1, 1, 2, 2, 2, 2]);
    let names: Vec<_> =
        t.files[1..5].iter().map(|p| p.strip_prefix(root).unwrap().to_str().unwrap()).collect();
    assert_eq!(names, ["train/a/deeper/grey.png", "train/a/rgba.png", "train/a/x1.jpg", "train/a/x2.PNG"]);
    // val holds a subset of the classes: labels are the training indices.
    assert_eq!(files(&test).labels, vec![1, 1, 1, 1, 2, 2, 2, 2]);
    assert_eq!(test.shape(), (16, 16));
    // Every image, grey and RGBA included, decodes and fills its slot.
    let batches: Vec<_> = stream(&test, EVAL).into_iter().map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 8);
    assert!(batches.iter().all(|b| b.images.len() == 3 * 16 * 16 * 3 && b.skipped.is_empty()));
    // The checkpoint's record: a class list that eval reuses.
    let json = serde_json::to_string(&source).unwrap();
    assert!(json.contains(r#""kind":"folder""#) && json.contains(r#""classes":["C","a","b"]"#), "{json}");
}

#[test]
fn grey_and_rgba_decode_to_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let grey = dir.path().join("g.png");
    image::GrayImage::from_fn(37, 23, |x, _| image::Luma([x as u8 * 5])).save(&grey).unwrap();
    let img = decode_image(&grey).unwrap();
    assert_eq!((img.width, img.height), (37, 23));
    assert_eq!(&img.pixels[3 * 4..3 * 5], &[20, 20, 20]);
    let rgba = dir.path().join("a.png");
    image::RgbaImage::from_pixel(3, 2, image::Rgba([1, 2, 3, 0])).save(&rgba).unwrap();
    assert_eq!(decode_image(&rgba).unwrap().pixels, [1, 2, 3].repeat(6));
    // The content decides, not the name: a PNG called .jpg.
    let disguised = dir.path().join("png.jpg");
    std::fs::copy(&rgba, &disguised).unwrap();
    assert_eq!(decode_image(&disguised).unwrap().width, 3);
}

/// The value the network sees for byte value `v` in channel `c`.
fn normalised(v: f32, c: usize) -> f32 {
    (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
}

#[test]
fn eval_transform_matches_a_hand_computed_bilinear_resize_and_centre_crop() {
    // 28 → shorter side 32 (28 · 256/224), centre crop 28 at offset 2. Upscaling, PIL's
    // bilinear filter is linear interpolation between the pixel centres, so a horizontal
    // gradient v(x) = 4x + 20 gives v(u) at source coordinate u = (x + 2 + ½) · 28/32 − ½,
    // inside the image for every output column (no edge clamping).
    assert_eq!(eval_resize(28), 32);
    assert_eq!(eval_resize(224), 256);
    let image = RgbImage {
        width: 28,
        height: 20,
        pixels: (0..20 * 28).flat_map(|i| [(4 * (i % 28) + 20) as u8, 9, 200]).collect(),
    };
    let mut out = vec![0.0; 28 * 28 * 3];
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    transform_image(&image, Transform::Eval { size: 28 }, &mut rng, &Normalization::imagenet(), &mut out)
        .unwrap();
    // Height 20 is the shorter side here: 20 → 32, width 28 → int(32 · 28/20) = 44, centre
    // crop left = round((44 − 28)/2) = 8, source step 28/44.
    for y in 0..28 {
        for x in 0..28 {
            let u = (x as f32 + 8.0 + 0.5) * 28.0 / 44.0 - 0.5;
            let want = [(4.0 * u + 20.0).round(), 9.0, 200.0];
            for c in 0..3 {
                let got = out[(y * 28 + x) * 3 + c];
                assert!((got - normalised(want[c], c)).abs() < 1e-4, "({y}, {x}, {c}): {got} vs {want:?}");
            }
        }
    }
    let empty = RgbImage { width: 0, height: 3, pixels: vec![] };
    assert!(
        transform_image(&empty, Transform::Eval { size: 28 }, &mut rng, &Normalization::imagenet(), &mut out)
            .is_err()
    );
    assert!(
        transform_image(&image, Transform::Eval { size: 27 }, &mut rng, &Normalization::imagenet(), &mut out)
            .is_err()
    );
    // Shrinking a constant image keeps it constant (the filter's weights sum to one).
    let flat = RgbImage { width: 500, height: 375, pixels: [10, 128, 250].repeat(500 * 375) };
    let mut out = vec![0.0; 7 * 7 * 3];
    transform_image(&flat, Transform::Eval { size: 7 }, &mut rng, &Normalization::imagenet(), &mut out)
        .unwrap();
    for (i, v) in out.iter().enumerate() {
        assert!((v - normalised([10.0, 128.0, 250.0][i % 3], i % 3)).abs() < 1e-4);
    }
}

#[test]
fn random_resized_crops_stay_within_torchvision_bounds() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (h, w) = (375, 500);
    let mut fallbacks = 0;
    for _ in 0..5000 {
        let c = random_resized_crop(h, w, &mut rng);
        assert!(c.height >= 1 && c.width >= 1 && c.top + c.height <= h && c.left + c.width <= w, "{c:?}");
        let scale = (c.height * c.width) as f64 / (h * w) as f64;
        let ratio = c.width as f64 / c.height as f64;
        // Rounding the sides to pixels moves area and ratio by at most a pixel's worth.
        let slack = 2.0 / c.height.min(c.width) as f64;
        assert!(scale >= CROP_SCALE.0 * (1.0 - 2.0 * slack) && scale <= 1.0, "{c:?}: scale {scale}");
        assert!(
            ratio >= CROP_RATIO.0 * (1.0 - slack) && ratio <= CROP_RATIO.1 * (1.0 + slack),
            "{c:?}: ratio {ratio}"
        );
        fallbacks += usize::from(c.height == h && c.width == w);
    }
    // A 4:3 image rarely needs the fallback; a full-image draw is as unlikely.
    assert!(fallbacks < 50, "{fallbacks}");
    // A 10:1 strip never fits a crop of ratio ≤ 4/3 covering ≥ 8%...: the fallback is the
    // central crop of ratio 4/3.
    let c = random_resized_crop(10, 1000, &mut rng);
    assert_eq!((c.height, c.width, c.top, c.left), (10, 13, 0, 493));
}

#[test]
fn train_transform_is_deterministic_sized_and_flips_half_the_time() {
    // Brightness increases to the right: any crop too, so a flip shows as decreasing values.
    let image = RgbImage {
        width: 120,
        height: 90,
        pixels: (0..90 * 120).flat_map(|i| [(2 * (i % 120)) as u8, 0, 0]).collect(),
    };
    let size = 12;
    let run = |seed: u64| {
        let mut out = vec![f32::NAN; size * size * 3];
        transform_image(
            &image,
            Transform::Train { size },
            &mut ChaCha8Rng::seed_from_u64(seed),
            &Normalization::imagenet(),
            &mut out,
        )
        .unwrap();
        out
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
    let mut flips = 0;
    for seed in 0..400 {
        let out = run(seed);
        assert!(out.iter().all(|v| v.is_finite()), "every value of the 12x12 output is written");
        let (first, last) = (out[0], out[(size - 1) * 3]);
        assert_ne!(first, last);
        flips += usize::from(first > last);
    }
    // Binomial(400, ½): ±5σ is ±50.
    assert!((150..=250).contains(&flips), "{flips} flips of 400");
}

#[test]
fn streams_depend_on_seed_epoch_and_position_only() {
    let dir = tempfile::tempdir().unwrap();
    small_folder(dir.path());
    let (_, train, _) = open(dir.path(), 8, BadImages::Fail);
    let plan = |batch| EpochPlan {
        batch,
        shuffle: Some((5, 1)),
        augment: Some(Default::default()),
        drop_last: true,
    };
    let images = |batch| -> Vec<f32> {
        stream(&train, plan(batch)).into_iter().flat_map(|b| b.unwrap().images).collect()
    };
    // Batches of 2 and of 3 cover the first 6 positions of the same order with the same draws.
    let (two, three) = (images(2), images(3));
    assert_eq!(two[..6 * 8 * 8 * 3], three[..6 * 8 * 8 * 3]);
    assert_eq!(two, images(2));
    let other_epoch: Vec<f32> = stream(&train, EpochPlan { shuffle: Some((5, 2)), ..plan(2) })
        .into_iter()
        .flat_map(|b| b.unwrap().images)
        .collect();
    assert_ne!(two, other_epoch);
}

#[test]
fn unreadable_images_fail_with_their_path_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    small_folder(root);
    let bad = root.join("val/a/broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not a JPEG").unwrap();
    let truncated = root.join("train/b/truncated.png");
    let good = std::fs::read(root.join("train/b/x2.PNG")).unwrap();
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();

    let (_, train, test) = open(root, 8, BadImages::Fail);
    let err = stream(&test, EVAL).into_iter().find_map(Result::err).expect("an error");
    assert!(err.to_string().starts_with(&bad.display().to_string()), "{err}");
    let err = stream(&train, EVAL).into_iter().find_map(Result::err).expect("an error");
    assert!(err.to_string().contains("truncated.png"), "{err}");

    let (_, train, test) = open(root, 8, BadImages::Skip);
    // Evaluation leaves it out: 8 of 9 images, the path named once.
    let batches: Vec<_> = stream(&test, EVAL).into_iter().map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 8);
    let skipped: Vec<_> = batches.iter().flat_map(|b| b.skipped.clone()).collect();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].1.contains("broken.jpg"), "{skipped:?}");
    // Training keeps every batch full: the slot takes the next image of the order.
    let plan =
        EpochPlan { batch: 3, shuffle: Some((0, 0)), augment: Some(Default::default()), drop_last: true };
    let batches: Vec<_> = stream(&train, plan).into_iter().map(Result::unwrap).collect();
    assert_eq!(batches.len(), 3);
    assert!(batches.iter().all(|b| b.len() == 3));
    assert_eq!(batches.iter().map(|b| b.skipped.len()).sum::<usize>(), 1);
}

/// A PNG whose header claims `w × h` pixels (CRC-checked), with one tiny IDAT chunk.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // An empty zlib stream.
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, idat] {
        png.extend_from_slice(&(chunk.len() as u32 - 4).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn dimension_bombs_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    for (w, h) in [(100_000, 100_000), (1 << 31, 1), (8193, 8193)] {
        let path = dir.path().join(format!("bomb-{w}x{h}.png"));
        std::fs::write(&path, png_header(w, h)).unwrap();
        let start = Instant::now();
        let err = decode_image(&path).unwrap_err().to_string();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("{MAX_PIXELS}")) && err.contains("pixels"), "{err}");
    }
    const { assert!(8193 * 8193 > MAX_PIXELS) };
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn detect_err(root: &Path) -> String {
    match DataSource::detect(root, None, false, None).and_then(|s| s.open(BadImages::Fail)) {
        Ok(_) => panic!("{} opened", root.display()),
        Err(e) => e.to_string(),
    }
}

#[cfg(unix)]
#[test]
fn hostile_folders_are_clear_errors_never_hangs() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert!(
        detect_err(root).contains("no CIFAR data found: expected data_batch_1.bin")
            && detect_err(root).contains("nor an image folder (train/<class>/"),
        "{}",
        detect_err(root)
    );
    std::fs::create_dir_all(root.join("train")).unwrap();
    assert!(detect_err(root).contains("has no class directories"), "{}", detect_err(root));
    std::fs::create_dir_all(root.join("train/empty")).unwrap();
    assert!(detect_err(root).contains("train/empty: holds no images"), "{}", detect_err(root));
    std::fs::remove_dir(root.join("train/empty")).unwrap();
    small_folder(root);
    // A class of val that train lacks.
    save_rgb(&root.join("val/zebra/z.jpg"), 4, 4, |_, _| [0, 0, 0]);
    assert!(
        detect_err(root).contains("val/zebra: is a class the training split does not have"),
        "{}",
        detect_err(root)
    );
    std::fs::remove_dir_all(root.join("val/zebra")).unwrap();
    // Non-UTF-8: a file name is fine, a class name (stored as text) is not.
    let odd = root.join("train/a").join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::copy(root.join("train/a/x1.jpg"), &odd).unwrap();
    let (_, train, _) = open(root, 8, BadImages::Fail);
    assert_eq!(train.len(), 9);
    let odd_class = root.join("train").join(std::ffi::OsStr::from_bytes(b"\xff"));
    std::fs::create_dir(&odd_class).unwrap();
    assert!(detect_err(root).contains("class directory names must be UTF-8"), "{}", detect_err(root));
    std::fs::remove_dir(&odd_class).unwrap();
    // A directory link loop is walked once; a FIFO that is not named like an image is
    // ignored.
    std::os::unix::fs::symlink(root.join("train/a"), root.join("train/a/loop")).unwrap();
    mkfifo(&root.join("train/a/pipe"));
    let (_, train, _) = open(root, 8, BadImages::Fail);
    assert_eq!(train.len(), 9);
    // Named like images: a FIFO and a link loop are unreadable images, named, never waited on.
    mkfifo(&root.join("train/b/pipe.jpg"));
    std::os::unix::fs::symlink(root.join("train/b/l2.png"), root.join("train/b/l1.png")).unwrap();
    std::os::unix::fs::symlink(root.join("train/b/l1.png"), root.join("train/b/l2.png")).unwrap();
    let (_, train, _) = open(root, 8, BadImages::Fail);
    let start = Instant::now();
    let errors: Vec<String> = stream(&train, EpochPlan { batch: 1, ..EVAL })
        .into_iter()
        .filter_map(|b| b.err().map(|e| e.to_string()))
        .collect();
    assert!(errors.len() == 1 && errors[0].contains("symbolic link loop"), "{errors:?}");
    let (_, train, _) = open(root, 8, BadImages::Skip);
    let skipped: Vec<String> =
        stream(&train, EVAL).into_iter().flat_map(|b| b.unwrap().skipped).map(|(_, m)| m).collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped.iter().any(|m| m.contains("pipe.jpg: is a FIFO")), "{skipped:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("binary runs")
}

/// Red and blue images of assorted sizes and formats, with noise.
fn red_vs_blue(root: &Path, per_class: u32, split: &str) {
    for (class, base) in [("red", [190u8, 40, 50]), ("blue", [40u8, 60, 190])] {
        for i in 0..per_class {
            let (w, h) = (30 + i % 17, 24 + (i * 7) % 19);
            let ext = if i % 3 == 0 { "png" } else { "jpg" };
            let path = root.join(split).join(class).join(format!("{i}.{ext}"));
            save_rgb(&path, w, h, |x, y| {
                let n = ((x * 31 + y * 17 + i * 13) % 41) as u8;
                [base[0].saturating_add(n), base[1].saturating_add(n), base[2].saturating_add(n)]
            });
        }
    }
}

#[test]
fn a_small_model_learns_red_from_blue_and_eval_names_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    red_vs_blue(&data, 48, "train");
    red_vs_blue(&data, 16, "val");
    let ckpt = dir.path().join("ckpt");
    let start = Instant::now();
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "32",
        "--blocks",
        "1,1",
        "--growth",
        "4",
        "--epochs",
        "3",
        "--batch",
        "16",
        "--lr",
        "0.05",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
    ];
    let out = densenet(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("image folder") && stdout.contains("2 classes, 32x32"), "{stdout}");
    let checkpoint = densenet::checkpoint::Checkpoint::load(&ckpt.join("checkpoint.safetensors")).unwrap();
    let Some(DataSource::Folder { classes, size: 32, .. }) = &checkpoint.data else {
        panic!("{:?}", checkpoint.data)
    };
    assert_eq!(classes, &["blue", "red"]);
    let ckpt_file: PathBuf = ckpt.join("checkpoint.safetensors");
    let out = densenet(&["eval", "--checkpoint", ckpt_file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["images"], 32);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "test accuracy {accuracy} (chance 0.5)");
    assert!(start.elapsed() < Duration::from_secs(60), "{:?}", start.elapsed());
}

#[test]
fn cli_reports_bad_folders_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    red_vs_blue(&data, 4, "train");
    red_vs_blue(&data, 2, "val");
    std::fs::write(data.join("val/red/0.png"), b"garbage").unwrap();
    let ckpt = dir.path().join("ckpt");
    let base = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "16",
        "--blocks",
        "1",
        "--growth",
        "2",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
    ];
    let out = densenet(&base);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("val/red/0.png: is not a JPEG or PNG file"), "{stderr}");
    let out = densenet(&[&base[..], &["--bad-images", "skip"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: test: skipped 1 unreadable image(s); the first: ")
            && stderr.contains("0.png"),
        "{stderr}"
    );
    let other = dir.path().join("other");
    let out = densenet(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "0",
        "--checkpoint-dir",
        other.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(2) && stderr.contains("image size must lie in 1..="), "{stderr}");
}
