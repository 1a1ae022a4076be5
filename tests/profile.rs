//! `densenet profile` end to end: planned = measured for every path it runs, paths over the
//! run limit planned only, CSV and SVG written, the two targets, and one-line errors
//! (exit status 2) for bad input.

use std::process::{Command, Output};

fn densenet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_densenet")).args(args).output().expect("binary runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn runs_every_path_and_measures_exactly_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, svg) = (dir.path().join("m.csv"), dir.path().join("m.svg"));
    let out = densenet(&[
        "profile",
        "--batch",
        "2",
        "--depths",
        "52,40",
        "--size",
        "8x8",
        "--json",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    let v = json(&out);
    let profiles = v["profiles"].as_array().unwrap();
    let depths: Vec<u64> = profiles.iter().map(|p| p["depth"].as_u64().unwrap()).collect();
    assert_eq!(depths, vec![40, 52], "sorted by depth");
    for p in profiles {
        for path in p["paths"].as_array().unwrap() {
            let planned = path["planned_bytes"].as_u64().unwrap();
            assert_eq!(path["measured"]["peak_bytes"].as_u64(), Some(planned), "{path}");
            assert_eq!(path["measured"]["peak_by_category"], path["planned_by_category"], "{path}");
        }
    }
    let csv = std::fs::read_to_string(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with(
        "model,depth,growth,batch,height,width,precision,backend,path,planned_bytes,measured_bytes"
    ));
    assert_eq!(lines.len(), 1 + 2 * 3);
    assert!(lines[1..].iter().all(|l| l.contains(",true,true,")), "{csv}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3);
    for text in
        ["depth (layers with weights)", "peak memory (log scale", "baseline training", "efficient training"]
    {
        assert!(svg.contains(text), "{text}");
    }
}

#[test]
fn the_table_says_what_was_measured() {
    let out = densenet(&[
        "profile",
        "--model",
        "densenet121",
        "--growth",
        "8",
        "--blocks",
        "2,2",
        "--batch",
        "2",
        "--size",
        "40x40",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "densenet121 (modified)",
        "planned peak",
        "measured peak",
        "yes, to the byte",
        "gradient buffers",
        "baseline activations",
        "baseline / efficient training peak",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

#[test]
fn paths_over_the_run_limit_are_planned_only() {
    let v = json(&densenet(&["profile", "--batch", "64", "--max-run-bytes", "0", "--json"]));
    let paths = v["profiles"][0]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 3);
    for path in paths {
        assert!(path["measured"].is_null());
        assert!(path["not_run"].as_str().unwrap().contains("--max-run-bytes"), "{path}");
    }
    // DenseNet-BC-100 at batch 64: efficient ≤ 300 MB, baseline over ten times that.
    let planned = |i: usize| paths[i]["planned_bytes"].as_u64().unwrap();
    assert!(planned(0) <= 300_000_000, "{}", planned(0));
    assert!(planned(2) >= 10 * planned(0));
    let out = densenet(&["profile", "--batch", "64", "--max-run-bytes", "200M"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("baseline training not run: planned 3.42 GB > run limit 200 MB (--max-run-bytes)"),
        "{text}"
    );
}

#[test]
fn densenet121_at_batch_256_is_planned_under_6_gb() {
    let v = json(&densenet(&[
        "profile",
        "--model",
        "densenet121",
        "--batch",
        "256",
        "--max-run-bytes",
        "0",
        "--json",
    ]));
    let p = &v["profiles"][0];
    assert_eq!((p["height"].as_u64(), p["depth"].as_u64()), (Some(224), Some(121)));
    assert!(p["paths"][0]["planned_bytes"].as_u64().unwrap() < 6_000_000_000);
}

#[test]
fn bad_input_gets_one_line_and_status_2() {
    let no_gpu = densenet::backend::cuda::CudaBackend::new(0).is_err();
    let ours: &[&[&str]] = &[
        &["profile", "--batch", "0"],
        &["profile", "--batch", "2", "--depths", "41"],
        &["profile", "--batch", "2", "--max-run-bytes", "lots"],
        &["profile", "--batch", "2", "--size", "2x2"],
        &["profile", "--batch", "2", "--model", "resnet50"],
        &["profile", "--batch", "2", "--max-run-bytes", "0", "--svg", "/nonexistent-dir/m.svg"],
    ];
    // Rejected by the argument parser, whose message adds a usage line.
    let parser: &[&[&str]] = &[
        &["profile"],
        &["profile", "--batch", "2", "--precision", "f16"],
        &["profile", "--batch", "2", "--depths", "40", "--blocks", "2,2"],
        &["profile", "--batch", "2", "--depths", "40", "--bn-size", "2"],
    ];
    for args in ours.iter().chain(parser) {
        let out = densenet(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        if ours.contains(args) {
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        }
    }
    // Without a CUDA driver, asking for the cuda backend is a clear one-line error.
    if no_gpu {
        let cuda = densenet(&["profile", "--batch", "2", "--backend", "cuda"]);
        let stderr = String::from_utf8_lossy(&cuda.stderr);
        assert_eq!(cuda.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("no CUDA driver found"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[test]
fn ops_times_every_op_family_of_a_training_step() {
    let out = densenet(&[
        "profile",
        "--model",
        "densenet-bc-40-k12",
        "--batch",
        "3",
        "--size",
        "7x5",
        "--ops",
        "--json",
    ]);
    let v = json(&out);
    let report = &v.as_array().unwrap()[0];
    let step = report["step_seconds"].as_f64().unwrap();
    assert!(step > 0.0);
    assert!(report["peak"]["gflops"].as_f64().unwrap() > 0.0);
    let ops = report["ops"].as_array().unwrap();
    let families: std::collections::BTreeSet<&str> =
        ops.iter().map(|o| o["family"].as_str().unwrap()).collect();
    // Every family of a CIFAR-stem training step (no max-pool stem, no unfused ops).
    let expected =
        ["bn_backward", "conv", "conv1x1", "conv3x3", "linear", "loss", "pool", "sgd", "stats", "transition"];
    assert_eq!(families, expected.into_iter().collect());
    // BC-40: 3 blocks of 6 layers; each layer's bottleneck runs forward twice (the backward
    // recomputes it), and its 1×1 weight and data gradients once.
    let calls = |op: &str| ops.iter().find(|o| o["op"] == op).unwrap()["calls"].as_f64().unwrap();
    assert_eq!(calls("bn_relu_conv1x1_fwd"), 36.0);
    assert_eq!(calls("bn_relu_conv1x1_dgrad"), 18.0);
    assert_eq!(calls("bn_relu_conv3x3_fwd"), 18.0);
    let total: f64 = ops.iter().map(|o| o["seconds"].as_f64().unwrap()).sum();
    assert!(total <= step * 1.5, "ops {total} s in a {step} s step");
    for o in ops {
        let gemm =
            ["conv", "conv1x1", "conv3x3", "transition", "linear"].contains(&o["family"].as_str().unwrap());
        assert_eq!(o["gflops"].is_f64(), gemm, "{o}");
    }
    let refused = densenet(&["profile", "--batch", "2", "--ops", "--backend", "cuda"]);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--ops times the cpu backend"));
}
