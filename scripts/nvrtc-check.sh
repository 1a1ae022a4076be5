#!/usr/bin/env bash
# Checks the NVRTC path, which a build without nvcc ships: installs the pinned CUDA 13.0
# toolchain, builds the binary with no nvcc in sight (NVCC, CUDA_PATH, CUDA_HOME unset, nvcc
# dropped from PATH; its own target directory, so it does not rebuild the nvcc build's), has it
# compile every embedded kernel module with NVRTC for sm_90 exactly as a GPU run would
# (`densenet kernels --compile`, no GPU needed), then runs ptxas on the PTX through
# scripts/ptxas-report.sh (registers, shared memory, spills per kernel; fails on any spill).
#
# Usage: scripts/nvrtc-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="$(scripts/install-cuda-toolchain.sh)"
# The wheels put libnvrtc beside bin/: <cuda root>/lib.
nvrtc_lib="$(dirname "$(dirname "$nvcc")")/lib"
[[ -f "$nvrtc_lib/libnvrtc.so.13" ]] || { echo "nvrtc-check: no libnvrtc.so.13 in $nvrtc_lib" >&2; exit 1; }

path_without_nvcc=""
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    [[ -n "$d" && ! -x "$d/nvcc" ]] && path_without_nvcc="${path_without_nvcc:+$path_without_nvcc:}$d"
done
target=target/nvrtc
env -u NVCC -u CUDA_PATH -u CUDA_HOME PATH="$path_without_nvcc" CARGO_TARGET_DIR="$target" \
    cargo build --release --quiet --bin densenet

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$target/release/densenet" kernels --compile --arch sm_90 --ptx-dir "$work/ptx" | tee "$work/kernels.log"
# "kernels: N modules, M kernels compiled by NVRTC X.Y for sm_90"
compiled="$(tail -n1 "$work/kernels.log")"
NVCC="$nvcc" scripts/ptxas-report.sh --ptx-dir "$work/ptx" | tee "$work/ptxas.log"
# ptxas-report fails on a spill, so reaching here means none.
echo "nvrtc-check: ${compiled#kernels: }, 0 spills"
