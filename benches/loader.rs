//! Speed of the image-folder loader on one core: read + decode a 500×375 JPEG (ImageNet's
//! typical size, quality 90) and transform it to a normalised 224×224 input, with the train
//! transform (random resized crop + flip) and the eval transform (resize to 256 + centre
//! crop). Criterion's throughput, in elem/s, is images/s per core: the loader runs one image
//! per thread of rayon's pool, so `n` free cores prepare about `n` times as many.
//!
//! `cargo bench --bench loader` takes about half a minute. The JPEG is encoded here, from a
//! smooth image with texture and noise (roughly the entropy of a photograph), and read from
//! the page cache.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use densenet::data::Normalization;
use densenet::data::folder::decode_image;
use densenet::data::transform::{Transform, transform_image};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

fn photo_like(path: &std::path::Path) {
    let mut s = 12345u64;
    let img = image::RgbImage::from_fn(500, 375, |x, y| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let noise = ((s >> 33) % 40) as f32 - 20.0;
        let (fx, fy) = (x as f32 / 500.0, y as f32 / 375.0);
        let r = 128.0 + 100.0 * (fx * 9.0).sin() * (fy * 5.0).cos() + noise;
        let g = 128.0 + 90.0 * (fx * 3.0 + fy * 7.0).sin() + noise;
        let b = if (x / 37 + y / 23) % 2 == 0 { 60.0 } else { 190.0 } + noise;
        image::Rgb([r.clamp(0.0, 255.0) as u8, g.clamp(0.0, 255.0) as u8, b.clamp(0.0, 255.0) as u8])
    });
    let mut file = std::fs::File::create(path).unwrap();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 90).encode_image(&img).unwrap();
}

fn loader(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("photo.jpg");
    photo_like(&path);
    // One core: the benchmark thread, no rayon.
    let mut group = c.benchmark_group("loader_500x375_jpeg_to_224");
    group.throughput(Throughput::Elements(1));
    let mut out = vec![0f32; 224 * 224 * 3];
    let norm = Normalization::imagenet();
    group.bench_function("decode", |b| b.iter(|| decode_image(&path).unwrap().pixels.len()));
    for (name, transform) in
        [("train", Transform::Train { size: 224 }), ("eval", Transform::Eval { size: 224 })]
    {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        group.bench_function(name, |b| {
            b.iter(|| {
                let img = decode_image(&path).unwrap();
                transform_image(&img, transform, &mut rng, &norm, &mut out).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    targets = loader
}
criterion_main!(benches);
