#!/usr/bin/env bash
# Builds the kernels to PTX with nvcc (through build.rs, NVCC must be set or nvcc on PATH),
# runs `ptxas -arch=sm_90 -v` on every module, prints one row per kernel — registers, shared
# memory, stack, spill stores/loads — and fails if any kernel spills.
#
# Usage: NVCC=/path/to/nvcc scripts/ptxas-report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="${NVCC:-$(command -v nvcc || true)}"
[[ -x "$nvcc" ]] || { echo "ptxas-report: no nvcc (set NVCC)" >&2; exit 1; }
ptxas="$(dirname "$nvcc")/ptxas"
export NVCC="$nvcc"
cargo build --release --lib --quiet

# The build directory whose generated kernel table says the modules are nvcc's PTX.
table="$(grep -l "PTX_FROM_NVCC: bool = true" "${CARGO_TARGET_DIR:-target}"/release/build/densenet-*/out/kernels.rs | xargs ls -t | head -n1)"
[[ -n "$table" ]] || { echo "ptxas-report: build produced no PTX" >&2; exit 1; }
out="$(dirname "$table")"

printf '%-36s %6s %9s %7s %7s %7s\n' kernel regs smem stack spill_st spill_ld
spills=0
for ptx in "$out"/*.ptx; do
    "$ptxas" -arch=sm_90 -v "$ptx" -o /dev/null 2>&1 | awk -v module="$(basename "$ptx" .ptx)" '
        /Compiling entry function/ { gsub(/\047/, "", $7); kernel = $7 }
        /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = $5; smem = 0
            for (i = 1; i <= NF; i++) if ($(i+1) == "bytes" && $(i+2) == "smem") smem = $i
            printf "%-36s %6s %9s %7s %7s %7s\n", kernel, regs, smem, stack, st, ld
        }'
done | tee /tmp/ptxas-report.$$
spills="$(awk '$5 > 0' /tmp/ptxas-report.$$ | wc -l)"
rm -f /tmp/ptxas-report.$$
if [[ "$spills" -gt 0 ]]; then
    echo "ptxas-report: $spills kernel(s) spill registers" >&2
    exit 1
fi
echo "ptxas-report: no spills"
