#!/usr/bin/env bash
# Compiles the GPU path of every wrapper of kernels/mma.cuh, including those no production
# kernel uses yet (ldmatrix, cp.async; the tf32 and bf16 kernels use the mma and cvt wrappers),
# which the nvcc build and scripts/nvrtc-check.sh would not see: the emulator's tensor-core self-tests
# (emu/selftest/selftest_mma.cu, which use every wrapper) are compiled with the pinned CUDA
# 13.0 nvcc for sm_90 and sm_80 and with NVRTC for compute_90 (the options the crate's
# `kernels::compile_nvrtc` uses), and the PTX is checked to hold each instruction the wrappers
# stand for. For sm_75, which has none of them, the wrappers must compile to traps and emit no
# tensor-core instruction (so that a module with tf32 kernels still loads there for its fp32
# ones). The ptxas report runs on both sm_90 PTX files (registers, shared memory, spills;
# fails on any spill).
#
# Usage: scripts/mma-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
nvcc="$(scripts/install-cuda-toolchain.sh)"
# The wheels put libnvrtc (and the builtins it loads) beside bin/: <cuda root>/lib.
nvrtc_lib="$(dirname "$(dirname "$nvcc")")/lib"
[[ -f "$nvrtc_lib/libnvrtc.so.13" ]] || { echo "mma-check: no libnvrtc.so.13 in $nvrtc_lib" >&2; exit 1; }
src=emu/selftest/selftest_mma.cu
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sm_80" "$work/sm_90"
for arch in sm_80 sm_90; do
    "$nvcc" --ptx -O3 -std=c++17 -lineinfo -arch="$arch" -I kernels "$src" -o "$work/$arch/nvcc_selftest_mma.ptx"
done

# NVRTC through its C API, reading mma.cuh from the include path.
LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    python3 - "$nvrtc_lib/libnvrtc.so.13" "$src" "$work/sm_90/nvrtc_selftest_mma.ptx" <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), open(sys.argv[2], "rb").read(), b"selftest_mma.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=compute_90", b"-std=c++17", b"--include-path=kernels"]
status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
size = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
lib.nvrtcGetProgramLog(prog, log)
if status != 0:
    sys.exit("mma-check: NVRTC failed:\n" + log.value.decode())
lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
ptx = ctypes.create_string_buffer(size.value)
lib.nvrtcGetPTX(prog, ptx)
open(sys.argv[3], "wb").write(ptx.value)
PY

for ptx in "$work"/sm_90/*.ptx "$work"/sm_80/*.ptx; do
    for insn in mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 \
        mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 cvt.rna.tf32.f32 cvt.rn.bf16x2.f32 \
        ldmatrix.sync.aligned.m8n8.x4.shared.b16 ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 \
        cp.async.cg.shared.global cp.async.ca.shared.global cp.async.commit_group cp.async.wait_group; do
        grep -qF "$insn" "$ptx" || { echo "mma-check: no $insn in $ptx" >&2; exit 1; }
    done
done
"$nvcc" --ptx -arch=sm_75 -I kernels "$src" -o "$work/sm_75.ptx"
grep -q "trap;" "$work/sm_75.ptx" || { echo "mma-check: no trap in the sm_75 PTX" >&2; exit 1; }
for insn in mma.sync. ldmatrix.sync. cp.async. cvt.rna.tf32. cvt.rn.bf16x2.; do
    if grep -qF "$insn" "$work/sm_75.ptx"; then
        echo "mma-check: sm_75 PTX holds $insn" >&2
        exit 1
    fi
done

NVCC="$nvcc" scripts/ptxas-report.sh --ptx-dir "$work/sm_90"
echo "mma-check: nvcc (sm_80, sm_90) and NVRTC (compute_90) compiled every wrapper; sm_75 gets traps only"
