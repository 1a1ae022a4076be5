#!/usr/bin/env bash
# GPU checks, in two steps:
#
#   scripts/gpu-check.sh build        on a machine with Rust (no GPU needed): installs the
#                                     pinned CUDA toolchain and builds, with PTX from nvcc
#                                     (sm_90), the kernel tests, the kernel benchmarks and the
#                                     CLI into gpu-build/ (git-ignored, stripped, < 40 MiB).
#   scripts/gpu-check.sh run [OUT]    on a machine with an NVIDIA GPU (no Rust needed), from the
#                                     repository root with gpu-build/ present: the stages below,
#                                     each under its own time limit, each printing its row when
#                                     it ends; then OUT/summary.json (one object: every stage's
#                                     status, seconds and figures), OUT/summary.txt and the
#                                     table last. OUT defaults to gpu-build/results.
#
# Stages, most valuable first (a stage that fails or runs out of time costs only its row):
#   device       nvidia-smi, and one training step of a tiny DenseNet on the GPU against the
#                f64 oracle (every kernel family launched once);
#   kernel tests every GPU case of tests/kernels (DENSENET_REQUIRE_GPU=1: no GPU is a failure);
#   verify       whole training steps on the GPU against the f64 oracle (fp32, and tf32 on
#                the tensor-core kernels);
#   memcheck     compute-sanitizer memcheck, and racecheck, on the GPU kernel tests;
#   bench        benches/kernels.rs with short criterion settings;
#   profile      timed training steps (median after a warm-up, synchronised): ms/step, img/s,
#                the allocator's peak against the plan;
#   torch        scripts/torch-compare.py (torchvision: gradients, step time, peak memory).
#
# The whole run stays under four minutes: each stage has its own limit and gets at most what
# is left of the run's 225 s budget (the later, less valuable stages take what the earlier ones
# left). Without a GPU every GPU stage is reported as "skipped: no GPU" and the exit status is
# 0 (the kernel test binary still runs, to show that its GPU cases are ignored); with one, a
# stage that failed, timed out or found no time left makes it 1.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-build
# gpu-build/ travels with the repository to the GPU machine.
max_build_mib=40

build() {
    local nvcc
    nvcc="$(scripts/install-cuda-toolchain.sh)"
    rm -rf "$out" && mkdir -p "$out"
    # The kernel tests (harness with its GPU cases) as gpu-build/kernels, the kernel benchmarks
    # as gpu-build/bench-kernels.
    local copy='
import json, shutil, sys
names = {"test": "kernels", "bench": "bench-kernels"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernels":
        name = names[m["target"]["kind"][0]]
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
        print("built", name)
'
    NVCC="$nvcc" CUDA_ARCH=sm_90 cargo test --release --no-run --test kernels --message-format=json \
        | python3 -c "$copy" "$out"
    NVCC="$nvcc" CUDA_ARCH=sm_90 cargo bench --no-run --bench kernels --message-format=json \
        | python3 -c "$copy" "$out"
    NVCC="$nvcc" CUDA_ARCH=sm_90 cargo build --release --bin densenet
    cp target/release/densenet "$out/"
    for f in kernels bench-kernels densenet; do
        [[ -x "$out/$f" ]] || { echo "gpu-build: $f was not built" >&2; exit 1; }
        strip "$out/$f"
    done
    du -sh "$out"
    local kib
    kib="$(du -sk "$out" | cut -f1)"
    if ((kib > max_build_mib * 1024)); then
        echo "gpu-build/ is larger than $max_build_mib MiB" >&2
        exit 1
    fi
    echo "gpu-build/ is ready: copy the repository with it to the GPU machine and run: scripts/gpu-check.sh run"
}

# ---- run ------------------------------------------------------------------------------------

# The run's budget in seconds, and each stage's own limit.
budget=225
# Expected on one H200 with 16 cores: device ~5 s (the driver compiles the PTX once, cached
# for the later stages), kernel tests ~10 s, verify ~3 s (fp32), ~3 s (tf32), ~3 s (bf16) and ~4 s, memcheck ~30 s, racecheck
# ~40 s, bench ~50 s (tf32 and bf16), profile ~5 s and ~8 s, leaving torch-compare 60-70 s.
declare -A limit=(
    [device]=15 [kernel_tests]=30 [verify_bc100]=20 [verify_tf32]=20 [verify_bf16]=20 [verify_d121]=25 [memcheck]=35
    [racecheck]=40 [bench]=60 [profile_bc100]=15 [profile_d121]=20 [torch]=95
)
# Whole-network verification: sizes at which the oracle (f64, every core) takes seconds.
verify_bc100=(--model densenet-bc-100-k12 --batch 16)
# The same step on the tensor-core kernels, against the oracle at tf32's tolerance.
verify_tf32=(--model densenet-bc-100-k12 --batch 16 --precision tf32)
# And on the bf16 kernels with bf16 activations (the cpu backend measures 0.13 here).
verify_bf16=(--model densenet-bc-100-k12 --batch 16 --precision bf16)
verify_d121=(--model densenet121 --batch 2 --size 224x224)
# Timed training steps, batch 64; --max-run-bytes keeps the baseline of densenet121
# (12.6 GB planned) to its plan.
profile_bc100=(--model densenet-bc-100-k12 --batch 64 --max-run-bytes 4G)
profile_d121=(--model densenet121 --batch 64 --size 224x224 --max-run-bytes 8G)
# Racecheck is far slower than memcheck: it skips the reruns, the shape-rejection cases and
# the baseline's kernels (their only shared memory is common.cuh's tile sums, which the
# pool cases cover).
racecheck_skip=(--skip repeat --skip rejects --skip unfused::)

run() {
    results="${1:-$out/results}"
    [[ -d "$out" ]] || { echo "no $out/: run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
    mkdir -p "$results"
    stages="$results/stages.jsonl"
    : >"$stages"
    run_start=$EPOCHREALTIME
    if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then gpu=1; else gpu=0; fi

    stage_device
    stage_kernel_tests
    stage_verify verify_bc100 "${verify_bc100[@]}"
    stage_verify verify_tf32 "${verify_tf32[@]}"
    stage_verify verify_bf16 "${verify_bf16[@]}"
    stage_verify verify_d121 "${verify_d121[@]}"
    stage_sanitizer memcheck
    stage_sanitizer racecheck "${racecheck_skip[@]}"
    stage_bench
    stage_profile profile_bc100 "${profile_bc100[@]}"
    stage_profile profile_d121 "${profile_d121[@]}"
    stage_torch

    python3 - "$stages" "$results" "$gpu" "$(elapsed "$run_start")" <<'EOF'
import json, sys
stages_file, results, gpu, seconds = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
stages = [json.loads(line) for line in open(stages_file)]
failed = [s["stage"] for s in stages if not (s["status"] == "ok" or s["status"].startswith("skipped"))]
summary = {"gpu": gpu, "seconds": seconds, "passed": not failed, "failed": failed, "stages": stages}
json.dump(summary, open(f"{results}/summary.json", "w"), indent=2)
rows = [f"{s['stage']:<15} {s['status']:<22} {s['seconds']:>6.1f} s  {s['detail']}" for s in stages]
text = "\n".join([f"== gpu-check summary ({'GPU' if gpu else 'no GPU'}, {seconds:.0f} s) ==", *rows]) + "\n"
open(f"{results}/summary.txt", "w").write(text)
print()
print(text, end="")
EOF
    rm -f "$stages"
    if [[ -f "$results/torch-compare/summary.txt" ]]; then
        echo
        cat "$results/torch-compare/summary.txt"
    fi
    python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["passed"] else 1)' \
        "$results/summary.json"
}

# Seconds since $1 (an $EPOCHREALTIME).
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# The time limit of stage $1: its own, or what is left of the run's budget if less.
stage_limit() {
    awk -v own="${limit[$1]}" -v left="$(awk -v b="$budget" -v e="$(elapsed "$run_start")" 'BEGIN { print b - e }')" \
        'BEGIN { t = own < left ? own : left; printf "%d", t < 0 ? 0 : t }'
}

# record STAGE STATUS FIGURES-JSON DETAIL: appends the stage to the summary and prints its row.
record() {
    local seconds
    seconds="$(elapsed "$stage_start")"
    python3 -c '
import json, sys
stage, status, seconds, figures, detail = sys.argv[1:]
print(json.dumps({"stage": stage, "status": status, "seconds": float(seconds),
                  "figures": json.loads(figures), "detail": detail}))' \
        "$1" "$2" "$seconds" "$3" "$4" >>"$stages"
    printf '%-15s %-22s %6s s  %s\n' "$1" "$2" "$seconds" "$4"
}

# run_limited STAGE LOG CMD...: runs CMD under the stage's limit with its output in LOG; sets
# $status to ok, "timeout (N s)" or "FAILED (exit N)". Returns 1 when there was no time left.
run_limited() {
    local stage="$1" log="$2" t
    shift 2
    stage_start=$EPOCHREALTIME
    t="$(stage_limit "$stage")"
    if ((t < 3)); then
        record "$stage" "not run: no time left" '{}' "the run's ${budget} s budget is spent"
        return 1
    fi
    local rc=0
    timeout -k 5 "$t" "$@" >"$log" 2>&1 || rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status="timeout (${t} s)" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    [[ $status == ok ]] || tail -n 30 "$log" | sed 's/^/    | /'
}

# A stage that needs a GPU on a machine without one.
no_gpu() {
    stage_start=$EPOCHREALTIME
    record "$1" "skipped: no GPU" '{}' "nvidia-smi lists no GPU"
}

stage_device() {
    ((gpu)) || { no_gpu device; return; }
    local log="$results/device.log"
    run_limited device "$log" bash -c '
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
        "$1" verify --backend cuda --model densenet-bc-10-k4 --batch 2 --size 8x8 --json' _ "$out/densenet" ||
        return 0
    local figures
    figures="$(python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
v = json.loads(next(l for l in lines if l.startswith("{")))
print(json.dumps({"gpu": lines[0].strip(), "max_rel_error": v["max_rel_error"]}))' "$log" 2>/dev/null || echo '{}')"
    record device "$status" "$figures" "$(py_get "$figures" '"%s; tiny net max rel error %.1e" % (f["gpu"], f["max_rel_error"])')"
}

# py_get FIGURES-JSON EXPR: EXPR of the figures as `f` (empty when they lack a field).
py_get() {
    python3 -c 'import json, sys; f = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null || true
}

# The harness's closing line: counts of passed, failed, ignored cases.
test_counts() {
    python3 -c '
import json, re, sys
m = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", open(sys.argv[1]).read())
print(json.dumps(dict(zip(("passed", "failed", "ignored"), map(int, m[-1]))) if m else {}))' "$1"
}

stage_kernel_tests() {
    local log="$results/kernel-tests.log" figures
    if ((gpu)); then
        run_limited kernel_tests "$log" env DENSENET_REQUIRE_GPU=1 "$out/kernels" gpu:: --test-threads 8 || return 0
    else
        # Without a GPU the binary still runs: every GPU case must come out ignored.
        run_limited kernel_tests "$log" "$out/kernels" gpu:: || return 0
    fi
    figures="$(test_counts "$log")"
    local counts
    counts="$(py_get "$figures" '"%(passed)d passed, %(failed)d failed, %(ignored)d ignored" % f')"
    if ((!gpu)) && [[ $status == ok ]]; then
        if [[ "$(py_get "$figures" 'f["passed"] + f["failed"] == 0 and f["ignored"] > 0')" == True ]]; then
            status="skipped: no GPU"
        else
            status="FAILED (not all ignored)"
        fi
    fi
    record kernel_tests "$status" "$figures" "$counts"
}

stage_verify() {
    local stage="$1" log="$results/$1.log"
    shift
    ((gpu)) || { no_gpu "$stage"; return; }
    run_limited "$stage" "$log" "$out/densenet" verify --backend cuda "$@" --json || return 0
    local figures
    figures="$(python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))
print(json.dumps({k: v[k] for k in ("batch", "height", "width", "max_rel_error", "kink_decisions",
                                     "backend_seconds", "oracle_seconds")}))' "$log" 2>/dev/null || echo '{}')"
    record "$stage" "$status" "$figures" "$* $(py_get "$figures" \
        '"max rel error %.2e (gpu %.1f s, oracle %.1f s)" % (f["max_rel_error"], f["backend_seconds"], f["oracle_seconds"])')"
}

stage_sanitizer() {
    local tool="$1" log="$results/$1.log"
    shift
    ((gpu)) || { no_gpu "$tool"; return; }
    if ! command -v compute-sanitizer >/dev/null; then
        stage_start=$EPOCHREALTIME
        record "$tool" "FAILED (no sanitizer)" '{}' "compute-sanitizer is not on PATH"
        return
    fi
    run_limited "$tool" "$log" env DENSENET_REQUIRE_GPU=1 compute-sanitizer --tool "$tool" --error-exitcode 3 \
        "$out/kernels" gpu:: --test-threads 4 "$@" || return 0
    local figures
    figures="$(python3 -c '
import json, re, sys
text = open(sys.argv[1]).read()
errors = re.findall(r"ERROR SUMMARY: (\d+) error", text)
m = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
f = dict(zip(("passed", "failed", "ignored"), map(int, m[-1]))) if m else {}
if errors:
    f["errors"] = int(errors[-1])
print(json.dumps(f))' "$log")"
    record "$tool" "$status" "$figures" "$(py_get "$figures" '"%d errors, %d cases" % (f.get("errors", -1), f["passed"] + f["failed"])') $*"
}

stage_bench() {
    ((gpu)) || { no_gpu bench; return; }
    local log="$results/bench.log"
    # The tensor-core kernels only: the fp32 ones are timed whole in the profile stages and in
    # torch-compare's fp32 rows, and three precisions would not fit the budget.
    run_limited bench "$log" env CRITERION_HOME="$results/criterion" DENSENET_BENCH_PRECISION=tf32,bf16 \
        "$out/bench-kernels" --bench --noplot \
        --warm-up-time 0.05 --measurement-time 0.1 --sample-size 10 --nresamples 1000 || return 0
    # The benchmark's own summary table ends its output: one row per benchmark.
    local figures
    figures="$(python3 -c '
import json, sys
lines = open(sys.argv[1]).read().splitlines()
start = next((i for i, l in enumerate(lines) if l.startswith("kernels on ")), None)
print(json.dumps({} if start is None else {"device": lines[start], "table": lines[start + 1:]}))' "$log")"
    if [[ $status == ok && $figures == '{}' ]]; then status="FAILED (no table)"; fi
    record bench "$status" "$figures" "$(py_get "$figures" '"%d benchmarks; table in summary.json" % (len(f["table"]) - 1)')"
}

stage_profile() {
    local stage="$1" log="$results/$1.json"
    shift
    ((gpu)) || { no_gpu "$stage"; return; }
    run_limited "$stage" "$log" "$out/densenet" profile --backend cuda "$@" --steps 5 --json || return 0
    local figures
    figures="$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
f = {}
for p in r["profiles"]:
    for path in p["paths"]:
        m = path["measured"]
        if m:
            f[path["path"]] = {"ms_per_step": m["seconds"] * 1e3, "images_per_s": p["batch"] / m["seconds"],
                               "peak_bytes": m["peak_bytes"], "planned_bytes": path["planned_bytes"],
                               "peak_equals_plan": m["peak_bytes"] == path["planned_bytes"]}
print(json.dumps(f))' "$log" 2>/dev/null || echo '{}')"
    record "$stage" "$status" "$figures" "$(py_get "$figures" '"; ".join("%s %.1f ms %.0f img/s peak %.0f MB (plan %.0f MB)" % (k, v["ms_per_step"], v["images_per_s"], v["peak_bytes"] / 1e6, v["planned_bytes"] / 1e6) for k, v in f.items())')"
}

stage_torch() {
    ((gpu)) || { no_gpu torch; return; }
    if ! python3 -c 'import torch, torchvision' >/dev/null 2>&1; then
        stage_start=$EPOCHREALTIME
        record torch "skipped: no PyTorch" '{}' "torch or torchvision is not importable"
        return
    fi
    local log="$results/torch-compare.log"
    rm -rf "$results/torch-compare"
    run_limited torch "$log" python3 scripts/torch-compare.py "$out/densenet" --work "$results/torch-compare" \
        --steps 5 || return 0
    record torch "$status" '{}' "table below; $log"
}

case "${1:-}" in
    build) build ;;
    run) run "${2:-}" ;;
    *) echo "usage: scripts/gpu-check.sh build | run [OUTDIR]" >&2; exit 2 ;;
esac
