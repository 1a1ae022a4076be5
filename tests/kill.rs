//! `densenet train` killed at random instants: SIGKILL anywhere (some timed to land while a
//! checkpoint is being saved) and SIGINT/SIGTERM. After every kill the checkpoint loads, the
//! log agrees with it, the next start removes leftover temporary files, and the run resumed
//! to the end is byte-identical to an uninterrupted one.

#![cfg(unix)]

use densenet::checkpoint::Checkpoint;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EPOCHS: &str = "150";
const TEMP_PREFIX: &str = ".checkpoint.safetensors.tmp-";

/// A tiny run with many short epochs, so that saves are frequent.
fn spawn(dir: &Path, resume: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_densenet"));
    cmd.args(["train", "--blocks", "1,1", "--growth", "3", "--init-features", "4"]);
    cmd.args([
        "--train-images",
        "16",
        "--test-images",
        "8",
        "--batch",
        "8",
        "--epochs",
        EPOCHS,
        "--seed",
        "5",
    ]);
    cmd.arg("--checkpoint-dir").arg(dir.join("ckpt")).arg("--log").arg(dir.join("log.jsonl"));
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("the binary starts")
}

fn temps(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("ckpt")) {
        Err(_) => vec![],
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect(),
    }
}

/// Complete JSON lines of the log.
fn log(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| serde_json::from_str(l).expect("complete log lines are JSON")).collect()
}

/// The epoch the checkpoint holds (0 without one); it must load.
fn checkpoint_epoch(dir: &Path) -> usize {
    let path = dir.join("ckpt/checkpoint.safetensors");
    if !path.exists() {
        return 0;
    }
    let cp = Checkpoint::load(&path).unwrap_or_else(|e| panic!("the checkpoint must load: {e}"));
    cp.training.expect("a training checkpoint").epoch
}

/// The fields of a log line that do not depend on timing.
fn deterministic(line: &serde_json::Value) -> Vec<serde_json::Value> {
    ["epoch", "step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
        .iter()
        .map(|k| line[*k].clone())
        .collect()
}

#[test]
fn killed_runs_keep_a_loadable_checkpoint_an_agreeing_log_and_resume_bit_identically() {
    let started = Instant::now();
    let reference = tempfile::tempdir().unwrap();
    let status = spawn(reference.path(), false).wait().unwrap();
    assert!(status.success(), "{status}");
    let want_bytes = std::fs::read(reference.path().join("ckpt/checkpoint.safetensors")).unwrap();
    let want_log: Vec<_> = log(reference.path()).iter().map(deterministic).collect();

    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut kills, mut during_saves, mut graceful, mut finished) = (0, 0, 0, 0);
    let mut leftover: Vec<String> = vec![];
    while kills < 32 || graceful < 6 {
        let before = checkpoint_epoch(dir);
        let lines_before = log(dir).len();
        let mut child = spawn(dir, before > 0);
        let pid = child.id() as i32;
        let mode = kills + graceful;
        let signal = if mode % 6 == 5 {
            // Graceful stop once training is under way (the handlers are installed by then).
            while log(dir).len() <= lines_before && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..20)));
            if mode % 12 == 5 { libc::SIGINT } else { libc::SIGTERM }
        } else if mode % 3 == 1 {
            // Aim at a save: kill as soon as a temporary file appears.
            let deadline = Instant::now() + Duration::from_secs(5);
            while temps(dir).iter().all(|t| leftover.contains(t))
                && child.try_wait().unwrap().is_none()
                && Instant::now() < deadline
            {
                std::hint::spin_loop();
            }
            libc::SIGKILL
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
            libc::SIGKILL
        };
        // SAFETY: kill(2) on the child we spawned and have not reaped yet.
        unsafe { libc::kill(pid, signal) };
        let status = child.wait().unwrap();
        if status.success() {
            finished += 1;
            break;
        }
        let epoch = checkpoint_epoch(dir);
        let lines = log(dir);
        let numbered = lines.iter().enumerate().all(|(i, l)| l["epoch"] == i + 1);
        assert!(numbered, "log epochs are 1, 2, ...: {lines:?}");
        // Progress past the start: this run removed the temporaries earlier runs left.
        if epoch > before {
            assert!(temps(dir).iter().all(|t| !leftover.contains(t)), "stale temporaries removed at start");
        }
        if signal == libc::SIGKILL {
            kills += 1;
            assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
            // Killed between the log line and the rename: one line ahead, dropped on resume.
            assert!(
                lines.len() == epoch || lines.len() == epoch + 1,
                "log {} vs checkpoint {epoch}",
                lines.len()
            );
            leftover = temps(dir);
            during_saves += usize::from(!leftover.is_empty());
        } else {
            graceful += 1;
            assert_eq!(status.code(), Some(128 + signal), "{status}");
            assert_eq!(lines.len(), epoch, "a graceful stop leaves log and checkpoint agreeing");
            assert!(temps(dir).iter().all(|t| leftover.contains(t)), "no temporary file of its own");
        }
    }
    // Finish the run.
    let status = spawn(dir, checkpoint_epoch(dir) > 0).wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(temps(dir).is_empty(), "no temporary file remains: {:?}", temps(dir));
    let got_log: Vec<_> = log(dir).iter().map(deterministic).collect();
    assert_eq!(got_log, want_log, "the log of the interrupted run equals the uninterrupted one's");
    let got = std::fs::read(dir.join("ckpt/checkpoint.safetensors")).unwrap();
    assert!(got == want_bytes, "the resumed run ends byte-identical to an uninterrupted one");
    eprintln!(
        "kill test: {kills} SIGKILLs ({during_saves} during a save), {graceful} SIGINT/SIGTERM \
         (exit 130/143), {finished} run(s) finished before their kill, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(kills >= 30 && during_saves > 0, "30 kills, at least one of them during a save");
}
