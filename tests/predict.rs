//! `densenet predict` and `Model::predict`: a small model trained here on generated JPEG and
//! PNG images ranks classes by probability, names them from the checkpoint, prints the same
//! logits as the library, and gives an image the same logits whatever its batch.

use densenet::backend::cpu::CpuBackend;
use densenet::checkpoint::Checkpoint;
use densenet::config::DenseNetConfig;
use densenet::data::Normalization;
use densenet::data::folder::decode_image;
use densenet::data::transform::eval_input;
use densenet::train::{Model, Prediction, input_size};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A noisy image of colour `base`, `w × h`, saved in the format of its extension.
fn save(path: &Path, w: u32, h: u32, base: [u8; 3], seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| {
        let n = ((x * 31 + y * 17 + seed * 13) % 41) as u8;
        image::Rgb(base.map(|c| c.saturating_add(n)))
    })
    .save(path)
    .unwrap();
}

const CLASSES: [(&str, [u8; 3]); 3] =
    [("blue", [40, 60, 190]), ("green", [40, 180, 60]), ("red", [190, 40, 50])];

/// Trains a 2-block network for a few epochs on `train/{blue,green,red}` at 24×24.
fn trained_checkpoint(root: &Path) -> PathBuf {
    for (class, base) in CLASSES {
        for i in 0..24 {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            save(&root.join(format!("data/train/{class}/{i}.{ext}")), 30 + i % 7, 26 + i % 5, base, i);
            save(&root.join(format!("data/val/{class}/{i}.{ext}")), 28, 28, base, i + 100);
        }
    }
    let (data, ckpt) = (root.join("data"), root.join("ckpt"));
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "24",
        "--blocks",
        "1,1",
        "--growth",
        "4",
        "--epochs",
        "3",
        "--batch",
        "12",
        "--lr",
        "0.05",
        "--backend",
        "cpu",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
    ];
    ok(&densenet(&args));
    ckpt.join("checkpoint.safetensors")
}

#[test]
fn predict_ranks_names_and_matches_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained_checkpoint(dir.path());
    // New images: two copies of one red image (one as a second file), a green PNG, a grey PNG
    // and an RGBA PNG.
    let new = dir.path().join("new");
    save(&new.join("a_red.jpg"), 50, 40, CLASSES[2].1, 7);
    std::fs::copy(new.join("a_red.jpg"), new.join("b_red_again.jpg")).unwrap();
    save(&new.join("c_green.png"), 33, 61, CLASSES[1].1, 3);
    image::GrayImage::from_pixel(20, 20, image::Luma([90])).save(new.join("d_grey.png")).unwrap();
    image::RgbaImage::from_pixel(21, 19, image::Rgba([40, 60, 190, 3])).save(new.join("e_rgba.png")).unwrap();

    let out = ok(&densenet(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--json",
        "--top",
        "10",
        "--batch",
        "2",
        "--backend",
        "cpu",
        new.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let files: Vec<&str> = lines.iter().map(|l| l["file"].as_str().unwrap()).collect();
    let expected = ["a_red.jpg", "b_red_again.jpg", "c_green.png", "d_grey.png", "e_rgba.png"];
    assert_eq!(files, expected.map(|f| new.join(f).to_str().unwrap().to_string()));

    // The library on the same decoded images, in one batch of 5 instead of batches of 2.
    let checkpoint = Checkpoint::load(&ckpt).unwrap();
    let size = input_size(&checkpoint.model.config, checkpoint.data.as_ref());
    assert_eq!(size, 24);
    let images: Vec<_> = expected.iter().map(|f| decode_image(&new.join(f)).unwrap()).collect();
    let library = checkpoint.model.predict(CpuBackend::new(), &images, size, 100).unwrap();
    for (line, lib) in lines.iter().zip(&library) {
        let logits: Vec<f32> =
            line["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(logits, lib.logits, "{line}");
        // --top 10 is bounded by the 3 classes; most probable first, names from the checkpoint.
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["probability"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]), "{probs:?}");
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{probs:?}");
        for t in top {
            let class = t["class"].as_u64().unwrap() as usize;
            assert_eq!(t["name"], CLASSES[class].0);
            assert_eq!(t["probability"].as_f64().unwrap() as f32, lib.probabilities[class]);
        }
    }
    assert_eq!(library[0].logits, library[1].logits, "the same image twice");
    assert_eq!(lines[0]["top"][0]["name"], "red");
    assert_eq!(lines[2]["top"][0]["name"], "green");

    // Text output: the file, then `--top` lines of probability and name; a batch larger than
    // the images allocates for the images only.
    let text = ok(&densenet(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--top",
        "2",
        "--batch",
        "1000000000",
        "--backend",
        "cpu",
        new.join("a_red.jpg").to_str().unwrap(),
    ]));
    let text: Vec<&str> = text.lines().collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].ends_with("a_red.jpg") && text[1].ends_with("  red"), "{text:?}");
    let p: f32 = text[1].split_whitespace().next().unwrap().parse().unwrap();
    assert!((p - library[0].probabilities[2]).abs() < 1e-4);
}

#[test]
fn a_model_without_class_names_runs_at_its_stem_size_and_numbers_its_classes() {
    // A CIFAR-stem checkpoint that records no data set (as a state_dict): 32×32 inputs,
    // classes `class <i>`.
    let dir = tempfile::tempdir().unwrap();
    let config = DenseNetConfig::bc_cifar(10, 2).unwrap();
    let model = Model::new(&config, Normalization::imagenet(), 5).unwrap();
    let ckpt = dir.path().join("m.safetensors");
    Checkpoint::of_model(model.clone()).save(&ckpt).unwrap();
    assert_eq!(input_size(&model.config, None), 32);
    let img = dir.path().join("x.png");
    save(&img, 64, 48, [120, 130, 140], 1);
    let out = ok(&densenet(&[
        "predict",
        "--init-from",
        ckpt.to_str().unwrap(),
        "--json",
        "--backend",
        "cpu",
        img.to_str().unwrap(),
    ]));
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["top"].as_array().unwrap().len(), 5);
    let class = line["top"][0]["class"].as_u64().unwrap();
    assert_eq!(line["top"][0]["name"], format!("class {class}"));
    // The library from prepared inputs: the same numbers as from the decoded image.
    let decoded = decode_image(&img).unwrap();
    let input = eval_input(&decoded, 32, &model.normalization).unwrap();
    let mut predictor = model.predictor(CpuBackend::new(), 1, 32).unwrap();
    let from_input = predictor.predict_inputs(&input).unwrap();
    assert_eq!(from_input, predictor.predict(&[decoded]).unwrap());
    let logits: Vec<f32> =
        line["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(logits, from_input[0].logits);
    // A partial input and a wrong channel count are shape errors, not panics.
    assert!(predictor.predict_inputs(&input[1..]).is_err());
    let grey = Model { normalization: Normalization::new([0.5], [0.5]), ..model.clone() };
    assert!(grey.predict(CpuBackend::new(), &[decode_image(&img).unwrap()], 32, 1).is_err());
    assert!(Model::new(&config, Normalization::new([0.5], [0.5]), 0).is_err());
}

#[test]
fn top_k_orders_by_logit_and_probabilities_sum_to_one() {
    let p = Prediction::from_logits(vec![0.5, 3.0, -1.0, 3.0, 2.0]).unwrap();
    assert_eq!(p.top(3).iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3, 4]);
    assert_eq!(p.top(99).len(), 5);
    assert!((p.probabilities.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-6);
    assert!(Prediction::from_logits(vec![1.0, f32::NAN]).is_err());
    assert!(Prediction::from_logits(vec![f32::INFINITY]).is_err());
}
