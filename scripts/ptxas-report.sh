#!/usr/bin/env bash
# Runs `ptxas -arch=sm_90 -v` on every kernel module's PTX, prints one row per kernel —
# registers, shared memory, stack, spill stores/loads — and fails if any kernel spills.
#
# Usage: NVCC=/path/to/nvcc scripts/ptxas-report.sh
#            builds the kernels to PTX with nvcc (through build.rs) and reports those;
#        NVCC=/path/to/nvcc scripts/ptxas-report.sh --ptx-dir DIR
#            reports the *.ptx files in DIR (e.g. NVRTC's, see scripts/nvrtc-check.sh).
# Either way the ptxas beside $NVCC (or nvcc on PATH) is used. The last line reads
# "ptxas-report: N modules, M kernels, S spilling".
set -euo pipefail
cd "$(dirname "$0")/.."
ptx_dir=""
if [[ $# -gt 0 ]]; then
    [[ "$1" == "--ptx-dir" && $# -eq 2 ]] || { echo "usage: $0 [--ptx-dir DIR]" >&2; exit 2; }
    ptx_dir="$2"
fi
nvcc="${NVCC:-$(command -v nvcc || true)}"
[[ -x "$nvcc" ]] || { echo "ptxas-report: no nvcc (set NVCC)" >&2; exit 1; }
ptxas="$(dirname "$nvcc")/ptxas"

if [[ -z "$ptx_dir" ]]; then
    export NVCC="$nvcc"
    cargo build --release --lib --quiet
    # The build directory whose generated kernel table says the modules are nvcc's PTX.
    table="$(grep -l "PTX_FROM_NVCC: bool = true" "${CARGO_TARGET_DIR:-target}"/release/build/densenet-*/out/kernels.rs | xargs ls -t | head -n1)"
    [[ -n "$table" ]] || { echo "ptxas-report: build produced no PTX" >&2; exit 1; }
    ptx_dir="$(dirname "$table")"
fi
shopt -s nullglob
modules=("$ptx_dir"/*.ptx)
[[ ${#modules[@]} -gt 0 ]] || { echo "ptxas-report: no .ptx files in $ptx_dir" >&2; exit 1; }

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
printf '%-36s %6s %9s %7s %7s %7s\n' kernel regs smem stack spill_st spill_ld
for ptx in "${modules[@]}"; do
    # Captured first, so that a ptxas error is shown instead of being parsed away.
    out="$("$ptxas" -arch=sm_90 -v "$ptx" -o /dev/null 2>&1)" || { echo "$out" >&2; exit 1; }
    awk '
        /Compiling entry function/ { gsub(/\047/, "", $7); kernel = $7 }
        /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = $5; smem = 0
            for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) == "smem") smem = $i
            printf "%-36s %6s %9s %7s %7s %7s\n", kernel, regs, smem, stack, st, ld
        }' <<<"$out"
done | tee "$report"
kernels="$(wc -l <"$report")"
spills="$(awk '$5 > 0 || $6 > 0' "$report" | wc -l)"
echo "ptxas-report: ${#modules[@]} modules, $kernels kernels, $spills spilling"
if [[ "$spills" -gt 0 ]]; then
    echo "ptxas-report: $spills kernel(s) spill registers" >&2
    exit 1
fi
