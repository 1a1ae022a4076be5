#!/usr/bin/env bash
# GPU checks, in two steps:
#
#   scripts/gpu-check.sh build   on a machine with Rust (no GPU needed): installs the pinned
#                                CUDA toolchain, builds the GPU test binaries and the CLI with
#                                PTX from nvcc (sm_90) into gpu-build/ (git-ignored).
#   scripts/gpu-check.sh run     on a machine with an NVIDIA GPU (no Rust needed), from the
#                                repository root with gpu-build/ present: runs every GPU test
#                                (each kernel against the cpu backend on random odd-sized
#                                inputs), compute-sanitizer memcheck on the kernel tests when
#                                it is installed, whole-network verification against the f64
#                                oracle, scripts/torch-compare.py when PyTorch is installed
#                                (torchvision's DenseNet: gradients, step time, peak memory),
#                                and prints a summary table last.
#
# Keep `run` under five minutes: it is meant for short sessions on a borrowed GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-build
# Test targets whose binaries exercise the GPU (each skips itself without a driver).
gpu_tests=(kernels)

build() {
    local nvcc
    nvcc="$(scripts/install-cuda-toolchain.sh)"
    rm -rf "$out" && mkdir -p "$out"
    local args=()
    for t in "${gpu_tests[@]}"; do args+=(--test "$t"); done
    NVCC="$nvcc" CUDA_ARCH=sm_90 cargo test --release --no-run "${args[@]}" --message-format=json \
        | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
        print("built", m["target"]["name"])
' "$out"
    NVCC="$nvcc" CUDA_ARCH=sm_90 cargo build --release --bin densenet
    cp target/release/densenet "$out/"
    echo "gpu-build/ is ready: copy the repository with it to the GPU machine and run: scripts/gpu-check.sh run"
}

run() {
    [[ -d "$out" ]] || { echo "no $out/: run 'scripts/gpu-check.sh build' first" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    local rows=()
    for t in "${gpu_tests[@]}"; do
        local log="$out/$t.log"
        # --nocapture: a case without a usable GPU says "skipped: <reason>" and passes.
        if "$out/$t" gpu:: --test-threads 1 --nocapture >"$log" 2>&1; then status=ok; else status=FAILED; fi
        local passed skipped
        passed="$(sed -n 's/^test result: .* \([0-9]*\) passed.*/\1/p' "$log" | tail -n1)"
        skipped="$(grep -c 'skipped:' "$log" || true)"
        rows+=("$(printf '%-28s %-8s %6s passed %4s skipped' "test $t (gpu)" "$status" "$passed" "$skipped")")
        [[ "$status" == ok ]] || tail -n 40 "$log"
    done
    if command -v compute-sanitizer >/dev/null; then
        local log="$out/memcheck.log"
        if compute-sanitizer --tool memcheck --error-exitcode 3 "$out/kernels" gpu:: --test-threads 1 >"$log" 2>&1; then
            status=clean
        else
            status=ERRORS
            tail -n 40 "$log"
        fi
        rows+=("$(printf '%-28s %-8s' "memcheck kernels" "$status")")
    else
        rows+=("$(printf '%-28s %-8s' "memcheck kernels" "absent")")
    fi
    # Whole training steps on the GPU against the f64 oracle (max relative error < 1e-4).
    local verify_cases=(
        "--model densenet-bc-100-k12 --batch 64"
        "--model densenet121 --batch 8 --size 224x224"
    )
    for v in "${verify_cases[@]}"; do
        local log="$out/verify.log"
        # shellcheck disable=SC2086
        if "$out/densenet" verify --backend cuda $v --json >"$log" 2>&1; then status=ok; else status=FAILED; fi
        local err
        err="$(python3 -c 'import json,sys; print("%.2e" % json.load(open(sys.argv[1]))["max_rel_error"])' "$log" 2>/dev/null || echo "?")"
        rows+=("$(printf '%-28s %-8s max rel error %s  (%s)' "verify cuda" "$status" "$err" "$v")")
        [[ "$status" == ok ]] || tail -n 20 "$log"
    done
    # Ours against torchvision (gradients, step time, peak memory) where PyTorch is installed;
    # its table goes into the summary.
    local torch_dir="$out/torch-compare"
    rm -rf "$torch_dir"
    if python3 -c 'import torch' >/dev/null 2>&1; then
        local log="$out/torch-compare.log"
        if python3 scripts/torch-compare.py "$out/densenet" --work "$torch_dir" >"$log" 2>&1; then status=ok; else status=FAILED; fi
        rows+=("$(printf '%-28s %-8s' "torch-compare" "$status")")
        [[ "$status" == ok ]] || tail -n 40 "$log"
    else
        rows+=("$(printf '%-28s %-8s' "torch-compare" "absent")")
    fi
    echo
    echo "== gpu-check summary =="
    printf '%s\n' "${rows[@]}"
    if [[ -f "$torch_dir/summary.txt" ]]; then
        echo
        cat "$torch_dir/summary.txt"
    fi
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: scripts/gpu-check.sh build|run" >&2; exit 2 ;;
esac
