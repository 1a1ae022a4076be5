#!/usr/bin/env bash
# Installs the CUDA 13.0 compiler (nvcc, ptxas, NVRTC) from pinned PyPI wheels into a
# git-ignored virtual environment, `.cuda-venv/` at the repository root, and prints the nvcc
# path on its last line.
#
# The versions are pinned: unpinned, pip mixes in 13.x parts newer than 13.0 whose PTX a
# CUDA 13.0 driver (R580) rejects. nvcc needs a host gcc for preprocessing.
# Idempotent: a second run only checks the installed versions.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cuda-venv"
packages=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
)
stamp="$venv/.installed"
want="${packages[*]}"

if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    command -v gcc >/dev/null || { echo "gcc is required by nvcc" >&2; exit 1; }
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
    echo "$want" >"$stamp"
fi

# The wheels put the toolkit under site-packages/nvidia/cu13 (bin/, include/, lib/, nvvm/).
cuda_root="$(find "$venv/lib" -path '*/site-packages/nvidia/cu13' -maxdepth 4 -type d | head -n1)"
[[ -x "$cuda_root/bin/nvcc" ]] || { echo "nvcc not found under $venv" >&2; exit 1; }
"$cuda_root/bin/nvcc" --version | tail -n2 >&2
echo "$cuda_root/bin/nvcc"
