//! A bounded, seeded fuzzer for the checkpoint, state_dict and CIFAR readers (stable Rust has no
//! `cargo fuzz`). Inputs are mutations of the committed corpus in `tests/corpus/` (a tiny
//! training checkpoint, a few CIFAR-10 and CIFAR-100 records): bit flips, byte overwrites,
//! truncation, extension, header-length edits and JSON edits, stacked. Each input must give
//! `Ok` or a clean `Err`: a panic, a single allocation over `MAX_ALLOCATION` or an input
//! running over `MAX_SECONDS` is a finding. Every target has a fixed budget of executions
//! and reports its counts.

use densenet::checkpoint::Checkpoint;
use densenet::data::DataSource;
use densenet::state_dict;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::SafeTensors;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The largest single allocation an input may cause: ten times the corpus' largest file is
/// far more than reading any mutation needs.
const MAX_ALLOCATION: usize = 64 << 20;
const MAX_SECONDS: u64 = 5;

/// Records the largest allocation requested; refuses absurd ones outright (which aborts the
/// test binary, still a loud finding) rather than letting them take the machine's memory.
struct Watch;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > 1 << 32 {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

/// The fuzz targets run one after the other: the allocation watermark is global.
static SERIAL: Mutex<()> = Mutex::new(());

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name)
}

/// One random mutation of `bytes`; `header` is the range of a JSON header to aim at, if any.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, header: Option<std::ops::Range<usize>>) {
    let len = bytes.len().max(1);
    match rng.random_range(0..8) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..len);
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            let i = rng.random_range(0..len);
            let value = [0u8, 0xff, 0x7f, 0x80, b'"', b'{', b'9', rng.random()][rng.random_range(0..8)];
            if let Some(b) = bytes.get_mut(i) {
                *b = value;
            }
        }
        2 => bytes.truncate(rng.random_range(0..len)),
        3 => {
            let n = rng.random_range(1..4096);
            let fill: u8 = rng.random();
            bytes.extend(std::iter::repeat_n(fill, n));
        }
        4 if bytes.len() >= 8 => {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let edited = match rng.random_range(0..4) {
                0 => n.wrapping_add(rng.random_range(1..64)),
                1 => n.wrapping_sub(rng.random_range(1..64)),
                2 => rng.random(),
                _ => 1 << rng.random_range(0..64),
            };
            bytes[..8].copy_from_slice(&edited.to_le_bytes());
        }
        5 | 6 if header.is_some() => {
            // Replace a run of digits in the header by another number: sizes, offsets,
            // shapes, counts and config fields all live there as JSON numbers.
            let h = header.unwrap();
            let at = rng.random_range(h.clone());
            let Some(start) = (at..h.end).find(|&i| bytes.get(i).is_some_and(u8::is_ascii_digit)) else {
                return;
            };
            let end = (start..h.end).find(|&i| !bytes[i].is_ascii_digit()).unwrap_or(h.end);
            let numbers =
                ["0", "1", "999999999999", "1000000000", "18446744073709551615", "-1", "1e400", "4294967296"];
            let number = numbers[rng.random_range(0..numbers.len())];
            bytes.splice(start..end, number.bytes());
            // Keep the declared header length true to the edit half of the time, so that
            // the JSON itself is exercised and not only the length check.
            if rng.random_bool(0.5) {
                let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as i64 + number.len() as i64
                    - (end - start) as i64;
                bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
            }
        }
        _ => {
            // Duplicate or drop a slice.
            let a = rng.random_range(0..len);
            let b = rng.random_range(a..=len).min(bytes.len());
            if rng.random_bool(0.5) {
                let copy = bytes.get(a..b).unwrap_or_default().to_vec();
                bytes.splice(b..b, copy);
            } else if a < bytes.len() {
                bytes.drain(a..b);
            }
        }
    }
}

#[derive(Default, Debug)]
struct Report {
    executions: usize,
    ok: usize,
    errors: usize,
    findings: Vec<String>,
}

/// Runs `target` on `inputs` inputs from `next`, each in its own thread so that a hang is
/// reported (the thread is left behind) instead of stopping the test.
fn fuzz<I: Send + 'static>(
    name: &str,
    inputs: usize,
    mut next: impl FnMut(usize) -> I,
    target: impl Fn(I) -> Result<(), String> + Send + Sync + Copy + 'static,
) -> Report {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Report::default();
    let start = Instant::now();
    for i in 0..inputs {
        let input = next(i);
        LARGEST.store(0, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(input)));
            let _ = tx.send(outcome);
        });
        report.executions += 1;
        match rx.recv_timeout(Duration::from_secs(MAX_SECONDS)) {
            Err(_) => {
                report.findings.push(format!("input {i}: no answer within {MAX_SECONDS} s"));
                break;
            }
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.findings.push(format!("input {i}: panic: {msg}"));
            }
            Ok(Ok(Ok(()))) => report.ok += 1,
            Ok(Ok(Err(message))) => {
                report.errors += 1;
                if message.contains('\n') || message.is_empty() {
                    report.findings.push(format!("input {i}: error not on one line: {message:?}"));
                }
            }
        }
        let largest = LARGEST.load(Ordering::Relaxed);
        if largest > MAX_ALLOCATION {
            report.findings.push(format!("input {i}: allocation of {largest} bytes"));
        }
    }
    let _ = std::panic::take_hook();
    eprintln!(
        "fuzz {name}: {} executions in {:.1} s: {} ok, {} clean errors, {} findings",
        report.executions,
        start.elapsed().as_secs_f64(),
        report.ok,
        report.errors,
        report.findings.len()
    );
    for f in &report.findings {
        eprintln!("  finding: {f}");
    }
    report
}

/// Mutants of `seed` with 1 to 4 stacked mutations.
fn mutants(
    seed: &[u8],
    header: Option<std::ops::Range<usize>>,
    rng_seed: u64,
) -> impl FnMut(usize) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let seed = seed.to_vec();
    move |_| {
        let mut bytes = seed.clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut rng, &mut bytes, header.clone());
        }
        bytes
    }
}

#[test]
fn fuzz_checkpoint_reader() {
    let seed = std::fs::read(corpus("checkpoint.safetensors")).unwrap();
    Checkpoint::from_bytes(&seed, Path::new("seed")).expect("the corpus checkpoint is valid");
    let header_len = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let report =
        fuzz("checkpoint (bytes)", 6000, mutants(&seed, Some(8..8 + header_len), 1), |bytes: Vec<u8>| {
            Checkpoint::from_bytes(&bytes, Path::new("fuzz.safetensors")).map(drop).map_err(|e| e.to_string())
        });
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.errors > report.executions / 2, "most mutants are damaged: {report:?}");

    // The file path too: the header is read before the data.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.safetensors");
    let mut next = mutants(&seed, Some(8..8 + header_len), 2);
    let report = fuzz(
        "checkpoint (files)",
        600,
        |_| {
            std::fs::write(&file, next(0)).unwrap();
            file.clone()
        },
        |path: PathBuf| Checkpoint::load(&path).map(drop).map_err(|e| e.to_string()),
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn fuzz_state_dict_reader() {
    // The corpus checkpoint's model as a plain state_dict (no metadata: the configuration is
    // inferred from the shapes the mutations edit).
    let checkpoint = std::fs::read(corpus("checkpoint.safetensors")).unwrap();
    let model = Checkpoint::from_bytes(&checkpoint, Path::new("seed")).unwrap().model;
    let ours = Checkpoint::of_model(model.clone()).to_bytes().unwrap();
    let st = SafeTensors::deserialize(&ours).unwrap();
    let seed = safetensors::serialize(st.tensors(), None::<HashMap<String, String>>).unwrap();
    let loaded = state_dict::from_bytes(&seed, Path::new("seed"), None).unwrap();
    assert!(
        loaded.config == model.config && loaded.params == model.params && loaded.running == model.running
    );
    let header_len = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let report =
        fuzz("state_dict (bytes)", 4000, mutants(&seed, Some(8..8 + header_len), 4), |bytes: Vec<u8>| {
            state_dict::from_bytes(&bytes, Path::new("fuzz.safetensors"), None)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert!(report.errors > report.executions / 2, "most mutants are damaged: {report:?}");

    // Through the file, for state_dicts and checkpoints alike (`--init-from` takes both).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.safetensors");
    let checkpoint_header = u64::from_le_bytes(checkpoint[..8].try_into().unwrap()) as usize;
    let mut plain = mutants(&seed, Some(8..8 + header_len), 5);
    let mut checkpoints = mutants(&checkpoint, Some(8..8 + checkpoint_header), 6);
    let report = fuzz(
        "state_dict (files)",
        600,
        |i| {
            std::fs::write(&file, if i % 2 == 0 { plain(i) } else { checkpoints(i) }).unwrap();
            file.clone()
        },
        |path: PathBuf| state_dict::load_state_dict(&path, None).map(drop).map_err(|e| e.to_string()),
    );
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

#[test]
fn fuzz_cifar_reader() {
    for (variant, files) in [
        (
            "cifar10",
            vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
                "test_batch.bin",
            ],
        ),
        ("cifar100", vec!["train.bin", "test.bin"]),
    ] {
        let seeds: Vec<Vec<u8>> =
            files.iter().map(|f| std::fs::read(corpus(&format!("{variant}/{f}"))).unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        for (f, s) in files.iter().zip(&seeds) {
            std::fs::write(dir.path().join(f), s).unwrap();
        }
        let source = DataSource::Cifar { dir: dir.path().to_path_buf() };
        source.load().expect("the corpus records are valid");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let report = fuzz(
            variant,
            400,
            |_| {
                // Mutate one file; restore the others.
                let k = rng.random_range(0..files.len());
                for (i, (f, s)) in files.iter().zip(&seeds).enumerate() {
                    let mut bytes = s.clone();
                    if i == k {
                        for _ in 0..rng.random_range(1..=3) {
                            mutate(&mut rng, &mut bytes, None);
                        }
                    }
                    std::fs::write(dir.path().join(f), bytes).unwrap();
                }
                source.clone()
            },
            |source: DataSource| source.load().map(drop).map_err(|e| e.to_string()),
        );
        assert!(report.findings.is_empty(), "{variant}: {:?}", report.findings);
    }
}
