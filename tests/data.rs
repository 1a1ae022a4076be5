//! Data: CIFAR binary files (layout, labels, the errors for wrong files), the synthetic data
//! set (deterministic, balanced, not separable by mean colour), normalisation, augmentation
//! and the background loader.

use densenet::data::{
    Augment, BatchStream, DataSource, Dataset, EpochPlan, Normalization, SyntheticSpec, fill_batch,
};
use densenet::error::Error;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;

/// A record: label bytes, then planar RGB where pixel p of channel c is `(p + 7c + seed) % 251`.
fn record(labels: &[u8], seed: usize) -> Vec<u8> {
    let mut r = labels.to_vec();
    for c in 0..3 {
        r.extend((0..1024).map(|p| ((p + 7 * c + seed) % 251) as u8));
    }
    r
}

fn write_cifar10(dir: &Path, per_file: usize) {
    for (f, name) in
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
            .iter()
            .enumerate()
    {
        let bytes: Vec<u8> =
            (0..per_file).flat_map(|i| record(&[((f + i) % 10) as u8], f * 100 + i)).collect();
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    match (DataSource::Cifar { dir: dir.to_path_buf() }).load() {
        Err(e @ Error::File { .. }) => e.to_string(),
        Err(e) => panic!("expected a file error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn cifar10_is_read_as_interleaved_rgb() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10(dir.path(), 3);
    let s = DataSource::Cifar { dir: dir.path().to_path_buf() }.load().unwrap();
    assert_eq!((s.train.len(), s.test.len(), s.train.classes), (15, 3, 10));
    assert_eq!((s.train.height, s.train.width), (32, 32));
    // Second record of data_batch_2: label (1 + 1) % 10, seed 101.
    assert_eq!(s.train.labels[4], 2);
    let img = s.train.image(4);
    for p in [0usize, 33, 1023] {
        for c in 0..3 {
            assert_eq!(img[p * 3 + c], ((p + 7 * c + 101) % 251) as u8);
        }
    }
}

#[test]
fn cifar100_uses_the_fine_label_and_finds_the_archive_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("cifar-100-binary");
    std::fs::create_dir(&sub).unwrap();
    let train: Vec<u8> = (0..4).flat_map(|i| record(&[3, 90 + i as u8], i)).collect();
    std::fs::write(sub.join("train.bin"), train).unwrap();
    std::fs::write(sub.join("test.bin"), record(&[19, 42], 9)).unwrap();
    let s = DataSource::Cifar { dir: dir.path().to_path_buf() }.load().unwrap();
    assert_eq!(s.train.classes, 100);
    assert_eq!(s.train.labels, vec![90, 91, 92, 93]);
    assert_eq!(s.test.labels, vec![42]);
}

#[test]
fn wrong_cifar_files_name_the_file_and_the_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("no CIFAR data found") && msg.contains("data_batch_1.bin"), "{msg}");

    write_cifar10(dir.path(), 2);
    let f = dir.path().join("data_batch_3.bin");
    std::fs::write(&f, vec![0u8; 1000]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("data_batch_3.bin"), "{msg}");
    assert!(msg.contains("has 1000 bytes, expected a positive multiple of 3073"), "{msg}");

    // Truncated: one byte short of two records.
    std::fs::write(&f, &record(&[1], 0).repeat(2)[..2 * 3073 - 1]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("has 6145 bytes"), "{msg}");

    std::fs::write(&f, record(&[12], 0)).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("data_batch_3.bin: record 0 has label 12, expected 0..9"), "{msg}");

    std::fs::remove_file(&f).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("data_batch_3.bin: does not exist"), "{msg}");

    // CIFAR-100 records are 3074 bytes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.bin"), vec![0u8; 3073]).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("train.bin: has 3073 bytes, expected a positive multiple of 3074"), "{msg}");
}

fn spec() -> SyntheticSpec {
    SyntheticSpec { seed: 5, size: 32, train: 2000, test: 500 }
}

#[test]
fn synthetic_data_is_deterministic_and_balanced() {
    let a = DataSource::Synthetic(spec()).load().unwrap();
    let b = DataSource::Synthetic(spec()).load().unwrap();
    assert_eq!(a.train.images, b.train.images);
    assert_eq!(a.test.images, b.test.images);
    assert_ne!(a.train.images[..3072], a.test.images[..3072]);
    for class in 0..10 {
        assert_eq!(a.train.labels.iter().filter(|&&l| l == class).count(), 200);
    }
    let other = DataSource::Synthetic(SyntheticSpec { seed: 6, ..spec() }).load().unwrap();
    assert_ne!(a.train.images, other.train.images);
    // The test split alone is the same as the test split of both.
    assert_eq!(DataSource::Synthetic(spec()).load_test().unwrap().images, a.test.images);
}

fn mean_colour(d: &Dataset, i: usize) -> [f64; 3] {
    let mut m = [0.0; 3];
    for px in d.image(i).chunks_exact(3) {
        for c in 0..3 {
            m[c] += f64::from(px[c]) / (d.height * d.width) as f64;
        }
    }
    m
}

#[test]
fn synthetic_classes_are_not_separable_by_mean_colour() {
    let s = DataSource::Synthetic(spec()).load().unwrap();
    let mut centroids = [[0.0f64; 3]; 10];
    let mut counts = [0.0f64; 10];
    for i in 0..s.train.len() {
        let l = s.train.labels[i] as usize;
        let m = mean_colour(&s.train, i);
        (0..3).for_each(|c| centroids[l][c] += m[c]);
        counts[l] += 1.0;
    }
    for l in 0..10 {
        (0..3).for_each(|c| centroids[l][c] /= counts[l]);
    }
    let dist = |m: &[f64; 3], k: usize| (0..3).map(|c| (m[c] - centroids[k][c]).powi(2)).sum::<f64>();
    let correct = (0..s.test.len())
        .filter(|&i| {
            let m = mean_colour(&s.test, i);
            let best = (0..10).min_by(|&a, &b| dist(&m, a).total_cmp(&dist(&m, b))).unwrap();
            best == s.test.labels[i] as usize
        })
        .count();
    let accuracy = correct as f64 / s.test.len() as f64;
    // Chance is 10%; 500 test images put the standard error at 1.3 points.
    assert!(accuracy < 0.16, "nearest class mean on mean colour: {accuracy}");
}

fn tiny(n: usize) -> Dataset {
    Dataset {
        name: "tiny".into(),
        images: (0..n * 4 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect(),
        labels: (0..n as u32).map(|i| i % 3).collect(),
        classes: 3,
        height: 4,
        width: 4,
    }
}

#[test]
fn normalization_is_per_channel_mean_and_std() {
    let mut d = tiny(1);
    for (i, px) in d.images.chunks_exact_mut(3).enumerate() {
        px.copy_from_slice(&[if i % 2 == 0 { 0 } else { 255 }, 51, 255]);
    }
    let n = Normalization::of(&d).unwrap();
    assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
    assert!((n.mean[1] - 0.2).abs() < 1e-6);
    // Constant channels are left unscaled rather than divided by zero.
    assert_eq!(n.std[1], 1.0);
    assert_eq!(n.std[2], 1.0);
    assert!(Normalization::of(&tiny(0)).is_err());
}

#[test]
fn augmentation_shifts_with_black_padding_and_flips() {
    let d = tiny(1);
    let norm = Normalization::new([0.5, 0.25, 0.0], [0.5, 1.0, 2.0]);
    let value = |y: usize, x: usize, c: usize| {
        (f32::from(d.image(0)[(y * 4 + x) * 3 + c]) / 255.0 - norm.mean[c]) / norm.std[c]
    };
    let mut plain = vec![0.0; 48];
    let mut labels = Vec::new();
    fill_batch(&d, &[0], &norm, None, &mut plain, &mut labels).unwrap();
    assert_eq!(labels, vec![0]);
    for (i, v) in plain.iter().enumerate() {
        assert!((v - value(i / 12, i / 3 % 4, i % 3)).abs() < 1e-6);
    }
    // Every augmented image is the plain one shifted by (dy, dx) ∈ [−2, 2]², maybe mirrored,
    // with padding equal to a black pixel after normalisation.
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (mut flips, mut shifts) = (0, 0);
    for _ in 0..50 {
        let mut out = vec![0.0; 48];
        fill_batch(&d, &[0], &norm, Some((Augment { pad: 2, flip: true }, &mut rng)), &mut out, &mut labels)
            .unwrap();
        let matches = |dy: i64, dx: i64, flip: bool| {
            (0..48).all(|i| {
                let (y, x, c) = ((i / 12) as i64, (i / 3 % 4) as i64, i % 3);
                let cx = if flip { 3 - x } else { x };
                let (sy, sx) = (y + dy, cx + dx);
                let want = if (0..4).contains(&sy) && (0..4).contains(&sx) {
                    value(sy as usize, sx as usize, c)
                } else {
                    -norm.mean[c] / norm.std[c]
                };
                (out[i] - want).abs() < 1e-6
            })
        };
        let found = (-2..=2)
            .flat_map(|dy| (-2..=2).flat_map(move |dx| [(dy, dx, false), (dy, dx, true)]))
            .find(|&(dy, dx, f)| matches(dy, dx, f))
            .expect("a shifted, possibly flipped copy");
        flips += usize::from(found.2);
        shifts += usize::from(found.0 != 0 || found.1 != 0);
    }
    assert!(flips > 10 && flips < 40, "{flips} flips of 50");
    assert!(shifts > 35, "{shifts} shifts of 50");
}

fn collect(data: &Arc<Dataset>, plan: EpochPlan) -> Vec<(Vec<f32>, Vec<u32>)> {
    let norm = Normalization::new([0.0; 3], [1.0; 3]);
    BatchStream::spawn(data.clone(), norm, plan).map(|b| b.map(|b| (b.images, b.labels)).unwrap()).collect()
}

#[test]
fn loader_shuffles_per_epoch_deterministically() {
    let data = Arc::new(tiny(10));
    let plan = |epoch, drop_last| EpochPlan {
        batch: 4,
        shuffle: Some((7, epoch)),
        augment: Some(Augment::default()),
        drop_last,
    };
    let a = collect(&data, plan(0, true));
    assert_eq!(a.len(), 2, "10 images in batches of 4, the last 2 dropped");
    assert_eq!(a, collect(&data, plan(0, true)), "same seed and epoch, same batches");
    assert_ne!(a, collect(&data, plan(1, true)), "another epoch, another order");

    // Without dropping, every image appears once and the last batch is zero-padded.
    let plain = EpochPlan { batch: 4, shuffle: Some((7, 3)), augment: None, drop_last: false };
    let batches = collect(&data, plain);
    assert_eq!(batches.iter().map(|b| b.1.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
    assert!(batches[2].0[2 * 48..].iter().all(|&v| v == 0.0));
    let mut seen: Vec<Vec<f32>> =
        batches.iter().flat_map(|(img, l)| img.chunks(48).take(l.len()).map(<[f32]>::to_vec)).collect();
    let mut all: Vec<Vec<f32>> = collect(&data, EpochPlan { shuffle: None, ..plain })
        .iter()
        .flat_map(|(img, _)| img.chunks(48).map(<[f32]>::to_vec))
        .take(10)
        .collect();
    seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(seen, all, "an epoch is a permutation of the data set");
}
