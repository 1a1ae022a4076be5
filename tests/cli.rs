//! The `densenet` binary: exact figures from `info`, verification exit status, and clear
//! one-line errors (exit status 2, never a panic) for bad input.

use std::process::{Command, Output};

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("binary runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn info_reports_exact_parameters_and_macs() {
    let expected = [
        ("densenet121", 7_978_856u64, 2_834_161_664u64),
        ("densenet169", 14_149_480, 3_359_843_328),
        ("densenet201", 20_013_928, 4_291_365_888),
        ("densenet161", 28_681_000, 7_727_907_072),
        ("densenet-bc-100-k12", 769_162, 287_929_692),
    ];
    for (model, params, macs) in expected {
        let v = json(&densenet(&["info", "--model", model, "--json"]));
        assert_eq!(v["parameters"], params, "{model}");
        assert_eq!(v["macs"], macs, "{model}");
    }
    let table = densenet(&["info", "--model", "densenet121"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("parameters: 7,978,856"), "{text}");
    assert!(text.contains("transition3"), "{text}");
}

#[test]
fn flags_override_the_preset() {
    let v = json(&densenet(&[
        "info",
        "--model",
        "densenet121",
        "--growth",
        "12",
        "--blocks",
        "2,3",
        "--stem",
        "cifar",
        "--classes",
        "7",
        "--size",
        "9x11",
        "--json",
    ]));
    assert_eq!(v["config"]["growth"], 12);
    assert_eq!(v["config"]["blocks"], serde_json::json!([2, 3]));
    assert_eq!(v["config"]["classes"], 7);
    assert_eq!(v["height"], 9);
    assert_eq!(v["width"], 11);
}

#[test]
fn verify_passes_on_a_small_imagenet_network() {
    let out = densenet(&[
        "verify",
        "--model",
        "densenet121",
        "--growth",
        "6",
        "--blocks",
        "2,2",
        "--init-features",
        "10",
        "--classes",
        "5",
        "--batch",
        "3",
        "--size",
        "37x29",
        "--seed",
        "7",
        "--json",
    ]);
    let v = json(&out);
    let err = v["max_rel_error"].as_f64().unwrap();
    assert!(err < 1e-4, "max relative error {err}");
    assert!(v["comparisons"].as_array().unwrap().len() > 10);
}

#[test]
fn bad_input_gets_one_line_and_status_2() {
    let cases: &[&[&str]] = &[
        &["info", "--model", "resnet50"],
        &["info", "--growth", "0"],
        &["info", "--blocks", "4,0,4"],
        &["info", "--compression", "1.5"],
        &["info", "--compression", "0"],
        &["info", "--bn-size", "0"],
        &["info", "--stem", "tiny"],
        &["info", "--size", "big"],
        &["info", "--model", "densenet121", "--size", "20x20"],
        &["verify", "--batch", "0", "--blocks", "1,1", "--size", "8x8"],
        &["verify", "--batch", "1", "--blocks", "1,1", "--size", "3x3"],
    ];
    for args in cases {
        let out = densenet(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    // An empty block list cannot even be spelled as a number list: clap rejects it (status 2).
    let out = densenet(&["info", "--blocks", ""]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn verify_dump_writes_a_loadable_checkpoint_and_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = densenet(&[
        "verify",
        "--backend",
        "cpu",
        "--blocks",
        "2,2",
        "--growth",
        "5",
        "--size",
        "9x7",
        "--batch",
        "3",
        "--dump",
        d,
        "--json",
    ]);
    let v = json(&out);
    assert!(v["max_rel_error"].as_f64().unwrap() < 1e-4);
    let ckpt = densenet::checkpoint::Checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert_eq!(ckpt.model.config.blocks, vec![2, 2]);
    for f in ["gradients.safetensors", "outputs.safetensors"] {
        assert!(dir.path().join(f).metadata().unwrap().len() > 0, "{f}");
    }
}

#[test]
fn profile_reports_the_median_of_several_steps() {
    let v = json(&densenet(&[
        "profile", "--blocks", "2,2", "--batch", "2", "--size", "8x8", "--steps", "3", "--json",
    ]));
    let text = v.to_string();
    assert!(text.contains("\"steps\":3"), "{text}");
    let out = densenet(&["profile", "--blocks", "2,2", "--batch", "2", "--steps", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn kernels_lists_every_module_and_rejects_a_bad_architecture() {
    let out = densenet(&["kernels"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let modules = densenet::kernels::MODULES.len();
    assert!(text.starts_with(&format!("{modules} kernel modules")), "{text}");
    assert!(text.contains("loss") && text.contains("softmax_xent_f32"), "{text}");

    let bad = densenet(&["kernels", "--compile", "--arch", "sm_9x"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("sm_9x") && err.lines().count() == 1, "{err}");
}
