//! `densenet train` and `densenet eval`: logs, checkpoints, resume, and one-line errors with
//! status 2 for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("binary runs")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// A tiny run: 16x16 synthetic images, a two-block DenseNet-BC.
fn train(dir: &Path, extra: &[&str]) -> Output {
    let ckpt = dir.join("ckpt");
    let log = dir.join("log.jsonl");
    let mut args = vec![
        "train",
        "--blocks",
        "1,1",
        "--growth",
        "4",
        "--train-images",
        "96",
        "--test-images",
        "40",
        "--batch",
        "32",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    densenet(&args)
}

fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn train_logs_checkpoints_resumes_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&train(dir.path(), &["--epochs", "2"]));
    assert!(out.contains("epoch 1/2") && out.contains("epoch 2/2"), "{out}");
    assert!(out.contains("test accuracy"), "{out}");
    let log = log_lines(dir.path());
    assert_eq!(log.len(), 2);
    for key in [
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "images_per_second",
        "peak_memory_bytes",
    ] {
        assert!(log[1].get(key).is_some(), "{key} missing from {}", log[1]);
    }
    assert_eq!(log[1]["step"], 6, "96 images in batches of 32, 2 epochs");

    // Continue the same run to 3 epochs: the log is appended to.
    let out = ok(&train(dir.path(), &["--epochs", "3", "--resume"]));
    assert!(out.contains("resuming after epoch 2 (step 6)") && out.contains("epoch 3/3"), "{out}");
    assert!(!out.contains("epoch 1/3"), "{out}");
    let log = log_lines(dir.path());
    assert_eq!(log.len(), 3);
    assert_eq!(log[2]["epoch"], 3);
    // Nothing left to do.
    let out = ok(&train(dir.path(), &["--epochs", "3", "--resume"]));
    assert!(out.contains("nothing to do"), "{out}");

    // eval needs no model flags: the configuration and the data set are in the checkpoint.
    let ckpt = dir.path().join("ckpt/checkpoint.safetensors");
    let out = ok(&densenet(&["eval", "--checkpoint", ckpt.to_str().unwrap(), "--batch", "7", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The synthetic test split is regenerated from its recorded spec (40 images here, as the
    // run used --test-images 40).
    assert_eq!(v["images"], 40);
    assert_eq!(v["accuracy"], log[2]["test_accuracy"]);
    let train_peak = log[2]["peak_memory_bytes"].as_u64().unwrap();
    let eval_peak = v["peak_memory_bytes"].as_u64().unwrap();
    assert!(eval_peak < train_peak, "eval {eval_peak} bytes, training {train_peak}");
    let out = ok(&densenet(&["eval", "--checkpoint", ckpt.to_str().unwrap()]));
    assert!(out.contains("test accuracy") && out.contains("eval-mode peak memory"), "{out}");
}

fn fails_with_status_2(args: &[&str], needle: &str) {
    let out = densenet(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{args:?}: {stderr}");
}

#[test]
fn bad_input_gets_one_line_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |p: &str| d.join(p).to_str().unwrap().to_string();

    // Without a CUDA driver, asking for the cuda backend is a clear one-line error.
    if densenet::backend::cuda::CudaBackend::new(0).is_err() {
        fails_with_status_2(&["train", "--backend", "cuda"], "no CUDA driver found");
        fails_with_status_2(&["eval", "--checkpoint", "x", "--backend", "cuda"], "no CUDA driver found");
    }
    fails_with_status_2(&["train", "--epochs", "0"], "at least one epoch");
    fails_with_status_2(&["train", "--batch", "0"], "batch size");
    fails_with_status_2(&["train", "--lr=-1"], "learning rate");
    fails_with_status_2(&["train", "--model", "densenet-bc-23-k12"], "depth must be 6·n + 4");
    let unused = path("unused");
    fails_with_status_2(
        &["train", "--train-images", "10", "--checkpoint-dir", &unused],
        "fewer than one batch of 64",
    );
    assert!(!d.join("unused").exists(), "a rejected run creates no checkpoint directory");
    fails_with_status_2(&["train", "--data", &path("nothing-here")], "nothing-here: does not exist");

    std::fs::write(d.join("data_batch_1.bin"), vec![0u8; 1000]).unwrap();
    fails_with_status_2(
        &["train", "--data", &path("")],
        "data_batch_1.bin: has 1000 bytes, expected a positive multiple of 3073",
    );

    fails_with_status_2(
        &["train", "--resume", "--checkpoint-dir", &path("empty")],
        "no checkpoint to resume from",
    );
    fails_with_status_2(
        &["eval", "--checkpoint", &path("missing.safetensors")],
        "missing.safetensors: does not exist",
    );
    std::fs::write(d.join("bad.safetensors"), b"\x10\0\0\0\0\0\0\0{\"a\":").unwrap();
    fails_with_status_2(&["eval", "--checkpoint", &path("bad.safetensors")], "not a valid safetensors file");
    // clap's own errors (unknown values) are status 2 as well.
    assert_eq!(densenet(&["train", "--schedule", "linear"]).status.code(), Some(2));
    assert_eq!(densenet(&["train", "--data", "x", "--synthetic"]).status.code(), Some(2));
}

#[test]
fn resuming_with_another_model_names_the_mismatched_tensor() {
    let dir = tempfile::tempdir().unwrap();
    ok(&train(dir.path(), &["--epochs", "1"]));
    let out = train(dir.path(), &["--epochs", "2", "--resume", "--bn-size", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("checkpoint.safetensors: was made for another configuration: tensor `features.denseblock1.denselayer1.conv1.weight` has shape [16, 24, 1, 1] in the checkpoint but [8, 24, 1, 1]"), "{stderr}");
}

#[test]
fn a_tf32_run_resumes_in_tf32_and_refuses_another_precision() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&train(dir.path(), &["--epochs", "1", "--backend", "cpu", "--precision", "tf32"]));
    assert!(out.contains("cpu (tf32)"), "{out}");
    // Without --precision a resumed run continues in the checkpoint's.
    let out = ok(&train(dir.path(), &["--epochs", "2", "--resume", "--backend", "cpu"]));
    assert!(out.contains("cpu (tf32)") && out.contains("resuming after epoch 1"), "{out}");
    let out = train(dir.path(), &["--epochs", "3", "--resume", "--backend", "cpu", "--precision", "fp32"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("the checkpoint's run computed in tf32, this backend in fp32"), "{stderr}");
}

/// One run per checkpoint directory, no silent overwrite, and a rejected run creates nothing.
#[cfg(unix)]
#[test]
fn train_refuses_shared_overwritten_and_unusable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    ok(&train(dir.path(), &["--epochs", "1"]));
    let out = train(dir.path(), &["--epochs", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a checkpoint") && err.contains("--overwrite"), "{err}");
    ok(&train(dir.path(), &["--epochs", "1", "--overwrite"]));

    // A second run while the first holds the directory.
    let ckpt = dir.path().join("ckpt");
    let mut first = Command::new(env!("CARGO_BIN_EXE_densenet"))
        .args(["train", "--blocks", "1,1", "--growth", "4", "--train-images", "96", "--test-images", "40"])
        .args(["--batch", "32", "--epochs", "1000", "--resume", "--checkpoint-dir"])
        .arg(&ckpt)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pid = first.id().to_string();
    while std::fs::read_to_string(ckpt.join(".lock")).unwrap_or_default().trim() != pid
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = train(dir.path(), &["--epochs", "1000", "--resume"]);
    first.kill().unwrap();
    first.wait().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("is locked by process {pid}")), "{err}");

    // Unusable outputs are reported by name before anything is created.
    let fresh = dir.path().join("fresh");
    let out = densenet(&["train", "--checkpoint-dir", fresh.to_str().unwrap(), "--log", "/dev/full"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/full: is not a regular file"), "{err}");
    assert!(!fresh.exists(), "a rejected run creates nothing");
}

/// The main job (`densenet train` with its defaults: DenseNet-BC-22 on 5000 synthetic images,
/// 5 epochs) on the cpu backend in bf16 ends within 1 point (10 of the 1000 test images) of
/// the same run in fp32, with a smaller peak: bf16 storage costs no accuracy here.
#[test]
fn the_main_job_in_bf16_ends_within_a_point_of_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let run = |precision: &str| {
        let log = dir.path().join(format!("{precision}.jsonl"));
        let ckpt = dir.path().join(precision);
        let args = ["train", "--backend", "cpu", "--precision", precision, "--checkpoint-dir"];
        ok(&densenet(&[&args[..], &[ckpt.to_str().unwrap(), "--log", log.to_str().unwrap()]].concat()));
        let last: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
        assert_eq!(last["epoch"], 5);
        (last["test_accuracy"].as_f64().unwrap(), last["peak_memory_bytes"].as_u64().unwrap())
    };
    let ((fp32, fp32_peak), (bf16, bf16_peak)) = (run("fp32"), run("bf16"));
    println!("test accuracy fp32 {fp32} bf16 {bf16}; peak fp32 {fp32_peak} B, bf16 {bf16_peak} B");
    assert!((fp32 - bf16).abs() <= 0.01, "fp32 {fp32}, bf16 {bf16}");
    assert!(bf16_peak < fp32_peak * 6 / 10, "fp32 {fp32_peak} B, bf16 {bf16_peak} B");
}
