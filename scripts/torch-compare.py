#!/usr/bin/env python3
"""Our DenseNet against torchvision's, on an NVIDIA GPU or on the CPU, with PyTorch and torchvision.

    scripts/torch-compare.py [DENSENET] [--device cuda|cpu] [--work DIR] [--steps N]
                             [--nets MODEL:BATCH,...] [--threads T] [--rounds R]
    scripts/torch-compare.py --self-test [PATH...]

DENSENET is our CLI: for `--device cuda` (the default) built with CUDA support (default
gpu-build/densenet, as `scripts/gpu-check.sh build` makes it); for `--device cpu` the plain build
(default target/release/densenet, from `cargo build --release`). torch and torchvision are taken
from the Python running the script. Two parts, then one summary printed last and written to
WORK/summary.txt (WORK defaults to gpu-build/torch-compare, or target/torch-compare on the cpu):

(a) Correctness. For densenet121 (ImageNet stem; batch 2, 224x224) and densenet-bc-100-k12
    (CIFAR stem; batch 4, 32x32), `DENSENET verify --backend DEVICE --dump DIR` writes random
    weights (a checkpoint with torchvision's names), a random batch and our efficient path's
    logits, loss, parameter and input gradients and updated running statistics. The weights
    are loaded (strictly) into torchvision's `DenseNet` class — densenet121 is exactly what
    `torchvision.models.densenet121` builds; for the CIFAR stem `features.conv0` is replaced by
    a 3x3 conv and norm0/relu0/pool0 are removed — and one training-mode forward and backward
    runs on the same device in float64 (the reference) and in float32 (TF32 off). Reported: the
    relative error ||x - ref|| / ||ref|| of ours and of torchvision's f32 for the logits, loss,
    input gradient, all parameter gradients together, the updated running statistics and the
    worst parameter tensor. With random weights at batch 2-4, a few ReLU inputs lie within
    float32 rounding of zero, and each implementation decides some of them differently from
    the reference, which moves gradients by up to ~1e-2 (see "Verification and kinks" in
    docs/ARCHITECTURE.md): torchvision's own f32 errors show that scale, so the verdict is
    ours <= max(3 x torchvision f32, 1e-5) for each quantity above but the worst tensor.

(b) Speed and memory of a training step (forward, cross-entropy, backward, SGD with Nesterov
    momentum 0.9 and weight decay 1e-4) for the networks of --nets (default
    densenet-bc-100-k12 at batch 64, 32x32, and densenet121 at batch 64 on cuda, 8 on the cpu,
    224x224). Ours: `DENSENET profile --steps N --json` (median step time after one untimed
    warm-up step; the byte-counting allocator's peak, which equals the plan).

    --device cuda: torchvision in fp32 (TF32 off, as our kernels), fp32 with
    `memory_efficient=True`, PyTorch's default TF32 convolutions, and channels_last with bf16
    autocast; median step time over --steps steps (default 20) after 3 warm-up steps (CUDA
    events; cudnn.benchmark on) and the peak of `torch.cuda.max_memory_allocated` after
    `reset_peak_memory_stats`. Ours: the efficient path and the baseline on the same kernels
    (fp32), and the efficient path on the tensor-core kernels: `--precision tf32`, the
    counterpart of PyTorch's TF32, and `--precision bf16` (bf16 activations and gradients,
    bf16 tensor cores), the counterpart of channels_last + bf16 autocast.

    --device cpu: torchvision in fp32, naive (the default `DenseNet`) and with
    `memory_efficient=True`, timed with time.perf_counter (a CPU step is synchronous): median
    over --steps steps (default 5) after one warm-up step, as ours. Ours: the efficient path
    only (`--max-run-bytes` its plan keeps the baseline, whose peak is many times larger, out of
    the process whose peak RSS is measured). Every measurement is a fresh process started by a
    small launcher, as /usr/bin/time does, so its peak RSS (ru_maxrss) is its own; torch's
    includes the loaded libraries, whose resident size after the imports the summary states.
    Both get --threads T (default: the cores this process may run on): RAYON_NUM_THREADS for
    ours, torch.set_num_threads and OMP_NUM_THREADS for torch. --rounds R (default 3) rounds
    each run ours, torch naive and torch memory_efficient in turn, so that drift in the
    machine's load reaches all three alike; the table gives the median over rounds with the
    min-max range, the ratio to torch naive, images/s, the largest peak RSS of the rounds and
    our planned peak. The load average before and after is in the summary: on a shared
    machine the timings are only indicative. Part (a) runs on the cpu backend and torch's CPU,
    on the same threads.

Only torch and torchvision are needed: safetensors files are read by the small pure-Python
reader below (8-byte little-endian header length, JSON header, raw little-endian data).
`--self-test` needs no torch: it checks the argument defaults, the cpu table's rendering and the
peak-RSS measurement of a child process, and, given PATHs, files our CLI wrote — a checkpoint
(`densenet train`), or a `verify --dump` directory — against the names and shapes torchvision's
DenseNet has for the configuration stored in the checkpoint.
"""

import argparse
import array
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

# v2 adds CRC-32C checksums per tensor, which this reader checks for presence only (computing
# them in pure Python would take seconds per file); v1 files (older builds) have none.
FORMATS = ("densenet-checkpoint-v2", "densenet-checkpoint-v1")
OPTIMIZER_PREFIX = "optimizer.momentum_buffer."
RUNNING = ("running_mean", "running_var")
ITEMSIZE = {"F32": 4, "F64": 8, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
# Verdict of part (a): our error against torch in f64 is at most FACTOR times torch's own f32
# error, or FLOOR.
FACTOR = 3.0
FLOOR = 1e-5
COMPARE = [("densenet121", 2, "224x224"), ("densenet-bc-100-k12", 4, "32x32")]
Defaults = namedtuple("Defaults", "densenet work steps warmup nets")
DEFAULTS = {
    "cuda": Defaults("gpu-build/densenet", "gpu-build/torch-compare", 20, 3,
                     "densenet-bc-100-k12:64,densenet121:64"),
    # A CPU step takes seconds, not milliseconds: fewer steps, and densenet121 at a batch that
    # keeps a round within a minute or so on a few cores. One warm-up step, as our profile runs.
    "cpu": Defaults("target/release/densenet", "target/torch-compare", 5, 1,
                    "densenet-bc-100-k12:64,densenet121:8"),
}
# ru_maxrss is in kilobytes on Linux and in bytes on macOS.
RSS_UNIT = 1 if sys.platform == "darwin" else 1024

Tensor = namedtuple("Tensor", "dtype shape data")


# ---- safetensors, pure Python ------------------------------------------------------------------

def read_safetensors(path):
    """({name: Tensor}, metadata) of a safetensors file; raises ValueError if it is malformed."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header of {n} bytes runs past the end of the file")
    header = json.loads(data[8 : 8 + n])
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(data)[8 + n :]
    tensors, covered = {}, 0
    for name, t in header.items():
        dtype, shape, (begin, end) = t["dtype"], tuple(t["shape"]), t["data_offsets"]
        if dtype not in ITEMSIZE:
            raise ValueError(f"{path}: tensor {name}: unknown dtype {dtype}")
        size = ITEMSIZE[dtype] * math.prod(shape)
        if not 0 <= begin <= end <= len(body) or end - begin != size:
            raise ValueError(f"{path}: tensor {name}: bytes {begin}..{end} do not hold {dtype} {list(shape)}")
        covered += size
        tensors[name] = Tensor(dtype, shape, body[begin:end])
    # The format has no holes: the tensors' bytes are the whole data section.
    if covered != len(body):
        raise ValueError(f"{path}: tensors cover {covered} of {len(body)} data bytes")
    return tensors, metadata


def values(t):
    """The elements of an F32 or I64 tensor as a flat Python array."""
    a = array.array({"F32": "f", "I64": "q"}[t.dtype])
    a.frombytes(t.data)
    if sys.byteorder != "little":
        a.byteswap()
    return a


def to_torch(t):
    import torch

    dtype = {"F32": torch.float32, "I64": torch.int64}[t.dtype]
    if sys.byteorder != "little":
        raise SystemExit("torch.frombuffer reads native byte order; safetensors is little-endian")
    return torch.frombuffer(bytearray(t.data), dtype=dtype).reshape(t.shape)


# ---- what torchvision's DenseNet has for a configuration -----------------------------------------

def expected_state_dict(cfg):
    """{name: shape} of torchvision's DenseNet state_dict for one of our configurations (the CIFAR
    stem: a 3x3 features.conv0 and no norm0)."""
    k, bottleneck = cfg["growth"], cfg["bn_size"] * cfg["growth"]
    out = {}

    def norm(prefix, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{p}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    c = cfg["init_features"]
    kernel = 7 if cfg["stem"] == "imagenet" else 3
    out["features.conv0.weight"] = (c, cfg["in_channels"], kernel, kernel)
    if cfg["stem"] == "imagenet":
        norm("features.norm0", c)
    for i, layers in enumerate(cfg["blocks"], 1):
        for j in range(1, layers + 1):
            p = f"features.denseblock{i}.denselayer{j}"
            norm(f"{p}.norm1", c)
            out[f"{p}.conv1.weight"] = (bottleneck, c, 1, 1)
            norm(f"{p}.norm2", bottleneck)
            out[f"{p}.conv2.weight"] = (k, bottleneck, 3, 3)
            c += k
        if i < len(cfg["blocks"]):
            c_out = math.floor(cfg["compression"] * c + 1e-9)
            norm(f"features.transition{i}.norm", c)
            out[f"features.transition{i}.conv.weight"] = (c_out, c, 1, 1)
            c = c_out
    norm("features.norm5", c)
    out["classifier.weight"] = (cfg["classes"], c)
    out["classifier.bias"] = (cfg["classes"],)
    return out


def check_finite(name, t):
    if t.dtype == "F32" and not all(math.isfinite(v) for v in values(t)):
        raise ValueError(f"tensor {name} has non-finite values")


def check_checkpoint(path):
    """Checks a checkpoint against torchvision's names and shapes; returns its configuration."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") not in FORMATS:
        raise ValueError(f"{path}: metadata format {meta.get('format')!r}, expected one of {FORMATS}")
    if meta["format"] == FORMATS[0]:
        checksums = json.loads(meta.get("checksums", "{}"))
        if set(checksums) != set(tensors) or not all(len(c) == 8 and set(c) <= set("0123456789abcdef")
                                                     for c in checksums.values()):
            raise ValueError(f"{path}: the checksums entry does not give 8 hex digits for every tensor")
    cfg = json.loads(meta["config"])
    expected = expected_state_dict(cfg)
    model = {n: t for n, t in tensors.items() if not n.startswith(OPTIMIZER_PREFIX)}
    if set(model) != set(expected):
        missing, extra = sorted(set(expected) - set(model)), sorted(set(model) - set(expected))
        raise ValueError(f"{path}: names differ from torchvision's: missing {missing[:5]}, extra {extra[:5]}")
    for name, shape in expected.items():
        t = model[name]
        dtype = "I64" if name.endswith("num_batches_tracked") else "F32"
        if (t.dtype, t.shape) != (dtype, shape):
            raise ValueError(f"{path}: {name} is {t.dtype} {list(t.shape)}, torchvision has {dtype} {list(shape)}")
        check_finite(name, t)
    # A training checkpoint carries the SGD momentum of every parameter, shaped like it.
    params = {n: s for n, s in expected.items() if not n.endswith((*RUNNING, "num_batches_tracked"))}
    momentum = {n[len(OPTIMIZER_PREFIX) :]: t for n, t in tensors.items() if n.startswith(OPTIMIZER_PREFIX)}
    if "training" in meta or momentum:
        if set(momentum) != set(params) or any(momentum[n].shape != s for n, s in params.items()):
            raise ValueError(f"{path}: the optimizer.momentum_buffer.* entries do not mirror the parameters")
    n_params = sum(math.prod(s) for s in params.values())
    print(f"  {path}: {len(model)} state_dict entries as torchvision's, {n_params} parameters"
          + (f", momentum for all {len(momentum)} parameter tensors" if momentum else "")
          + f" ({cfg['stem']} stem, blocks {cfg['blocks']}, k={cfg['growth']})")
    return cfg


def check_outputs(path, cfg):
    tensors, _ = read_safetensors(path)
    n, c = tensors["input"].shape[0], cfg["in_channels"]
    image = tensors["input"].shape
    want = {"input": ("F32", image), "labels": ("I64", (n,)), "logits": ("F32", (n, cfg["classes"])),
            "loss": ("F32", ()), "input_grad": ("F32", image)}
    if set(tensors) != set(want) or len(image) != 4 or image[1] != c:
        raise ValueError(f"{path}: expected {sorted(want)} with an N x {c} x H x W input, got "
                         + ", ".join(f"{k} {list(t.shape)}" for k, t in tensors.items()))
    for name, (dtype, shape) in want.items():
        if (tensors[name].dtype, tensors[name].shape) != (dtype, shape):
            t = tensors[name]
            raise ValueError(f"{path}: {name} is {t.dtype} {list(t.shape)}, expected {dtype} {list(shape)}")
        check_finite(name, tensors[name])
    if not all(0 <= label < cfg["classes"] for label in values(tensors["labels"])):
        raise ValueError(f"{path}: a label is outside [0, {cfg['classes']})")
    print(f"  {path}: batch {n} of {image[2]}x{image[3]}, loss {values(tensors['loss'])[0]:.4f}")


def expect(ok, detail):
    # Not `assert`: python -O would skip it and the self-test would pass without checking.
    if not ok:
        raise AssertionError(detail)


def check_arguments():
    """The defaults each device resolves to, and the checks on the cpu options."""
    import contextlib
    import io

    cuda, cpu = parse_args([]), parse_args(["--device", "cpu"])
    expect((cuda.densenet, cuda.steps, cuda.warmup) == ("gpu-build/densenet", 20, 3), cuda)
    expect(cuda.nets == [("densenet-bc-100-k12", 64), ("densenet121", 64)], cuda.nets)
    expect((cpu.densenet, cpu.work, cpu.steps, cpu.warmup)
           == ("target/release/densenet", "target/torch-compare", 5, 1), cpu)
    expect(cpu.nets == [("densenet-bc-100-k12", 64), ("densenet121", 8)], cpu.nets)
    expect((cpu.threads, cpu.rounds) == (default_threads(), 3), cpu)
    picked = parse_args(["--device", "cpu", "--nets", "densenet169:4", "--threads", "3", "--rounds", "1"])
    expect((picked.nets, picked.threads, picked.rounds) == ([("densenet169", 4)], 3, 1), picked)
    for wrong in (["--threads", "2"], ["--device", "cpu", "--nets", "densenet121"],
                  ["--device", "cpu", "--steps", "1"], ["--device", "cpu", "--rounds", "0"]):
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parse_args(wrong)
        except SystemExit:
            continue
        raise AssertionError(f"{wrong} was accepted")
    print("  arguments: defaults per device, --nets, --threads, --rounds")


def check_cpu_table():
    """Medians, ranges and ratios of the cpu table, on made-up measurements."""
    rows = [CpuRow("densenet121", 8, "224x224", label, seconds, [m * 1e6 for m in rss], planned)
            for label, seconds, rss, planned in [
                (CPU_CONFIGS[0][1], [1.0, 1.3, 0.9], [300, 320, 310], 250_449_924),
                (CPU_CONFIGS[1][1], [2.0, 1.9, 2.2], [900, 950, 940], None),
                (CPU_CONFIGS[2][1], [3.0, 2.5, 2.8], [700, 720, 710], None)]]
    header, ours, naive, efficient = cpu_table(rows)
    expect(header.split()[:4] == ["model", "batch", "size", "implementation"], header)
    expect(ours.split()[-6:] == ["1000", "900-1300", "0.50", "8.0", "320", "250"], ours)
    expect(naive.split()[-6:] == ["2000", "1900-2200", "1.00", "4.0", "950", "-"], naive)
    expect(efficient.split()[-6:] == ["2800", "2500-3000", "1.40", "2.9", "720", "-"], efficient)
    print("  cpu table: median and min-max over rounds, ratio to torch naive, peak RSS, plan")


def check_peak_rss():
    """measured_run reports each command's own peak RSS, neither this script's (which a forked
    child inherits) nor the largest of the children so far."""
    big = 128 << 20
    held = b"x" * big
    code, _, _, small = measured_run([sys.executable, "-c", "pass"])
    expect(code == 0 and small < big, (code, small))
    code, _, _, rss = measured_run([sys.executable, "-c", f"b = b'x' * {big}"])
    expect(code == 0 and rss >= big, (code, rss))
    code, _, _, again = measured_run([sys.executable, "-c", "pass"])
    expect(code == 0 and again < big, (code, again))
    del held
    print(f"  peak RSS of a command: {small / 1e6:.0f} MB while this script holds {big / 1e6:.0f} MB,"
          f" {rss / 1e6:.0f} MB holding {big / 1e6:.0f} MB itself")


def self_test(paths):
    check_arguments()
    check_cpu_table()
    check_peak_rss()
    for p in map(Path, paths):
        if p.is_dir():
            cfg = check_checkpoint(p / "checkpoint.safetensors")
            if check_checkpoint(p / "gradients.safetensors") != cfg:
                raise ValueError(f"{p}: gradients.safetensors has another configuration")
            check_outputs(p / "outputs.safetensors", cfg)
        else:
            check_checkpoint(p)
    print("self-test ok")


# ---- torch -------------------------------------------------------------------------------------

def torchvision_model(cfg, memory_efficient=False):
    import torch.nn as nn
    from torchvision.models import DenseNet

    # torchvision's transitions halve the channels (num_features // 2).
    if cfg["compression"] != 0.5:
        raise SystemExit(f"torchvision's DenseNet has compression 0.5, this configuration {cfg['compression']}")
    model = DenseNet(growth_rate=cfg["growth"], block_config=tuple(cfg["blocks"]),
                     num_init_features=cfg["init_features"], bn_size=cfg["bn_size"], drop_rate=0,
                     num_classes=cfg["classes"], memory_efficient=memory_efficient)
    if cfg["stem"] == "cifar":
        model.features.conv0 = nn.Conv2d(cfg["in_channels"], cfg["init_features"], 3, 1, 1, bias=False)
        for name in ("norm0", "relu0", "pool0"):
            delattr(model.features, name)
    return model


def set_tf32(enabled):
    import torch

    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def rel(ours, theirs):
    """||ours - theirs|| / ||theirs|| in float64 (||ours - theirs|| when theirs is zero)."""
    a, b = ours.detach().double().cpu().flatten(), theirs.detach().double().cpu().flatten()
    norm = b.norm().item()
    diff = (a - b).norm().item()
    return diff / norm if norm > 0 else diff


def torch_step(cfg, weights, outputs, dtype, device):
    """One training-mode forward and backward of torchvision's DenseNet in `dtype` on our weights
    and batch: {quantity: tensor}, with each parameter's gradient and each updated running
    statistic also under its own name."""
    import torch
    import torch.nn.functional as F

    net = torchvision_model(cfg).to(device, dtype)
    net.load_state_dict({n: to_torch(t) for n, t in weights.items()})
    net.train()
    x = to_torch(outputs["input"]).to(device, dtype).requires_grad_()
    logits = net(x)
    loss = F.cross_entropy(logits, to_torch(outputs["labels"]).to(device))
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    running = {n: b for n, b in net.named_buffers() if n.endswith(RUNNING)}
    return {
        "logits": logits,
        "loss": loss,
        "input grad": x.grad,
        "param grads": torch.cat([g.flatten() for g in grads.values()]),
        "running stats": torch.cat([b.flatten() for b in running.values()]),
        **grads,
        **running,
    }


def compare(densenet, work, model_name, batch, size, device, env):
    """Part (a) for one model: a line of relative errors and whether it passed."""
    import torch

    out = work / model_name
    run = subprocess.run([str(densenet), "verify", "--backend", device, "--model", model_name,
                          "--batch", str(batch), "--size", size, "--dump", str(out), "--json"],
                         capture_output=True, text=True, env=env)
    if run.returncode not in (0, 1):  # 1: ran, but our own check against the f64 oracle failed
        raise SystemExit(f"densenet verify failed ({run.returncode}):\n{run.stderr}")
    oracle = json.loads(run.stdout)["max_rel_error"]
    weights, meta = read_safetensors(out / "checkpoint.safetensors")
    after, _ = read_safetensors(out / "gradients.safetensors")
    outputs, _ = read_safetensors(out / "outputs.safetensors")
    cfg = json.loads(meta["config"])

    set_tf32(False)
    reference = torch_step(cfg, weights, outputs, torch.float64, device)
    theirs = torch_step(cfg, weights, outputs, torch.float32, device)
    # Parameter and running-statistic names in torch's order (our files order them otherwise).
    tensors = [n for n in reference if n.startswith(("features.", "classifier."))]
    names = [n for n in tensors if not n.endswith(RUNNING)]
    running = [n for n in tensors if n.endswith(RUNNING)]
    mine = {n: to_torch(after[n]) for n in tensors}
    mine |= {
        "logits": to_torch(outputs["logits"]),
        "loss": to_torch(outputs["loss"]),
        "input grad": to_torch(outputs["input_grad"]),
        "param grads": torch.cat([mine[n].flatten() for n in names]),
        "running stats": torch.cat([mine[n].flatten() for n in running]),
    }
    # (ours, torch f32) errors against torch in f64, for each quantity and parameter.
    errors = {q: (rel(mine[q], reference[q]), rel(theirs[q], reference[q])) for q in reference}
    quantities = ["logits", "loss", "input grad", "param grads", "running stats"]
    worst = max(names, key=lambda n: errors[n][0])
    passed = all(ours <= max(FACTOR * torch32, FLOOR) for ours, torch32 in (errors[q] for q in quantities))
    line = (f"{model_name} batch {batch} {size}: "
            + "  ".join(f"{q} {errors[q][0]:.1e}|{errors[q][1]:.1e}" for q in quantities)
            + f"  worst tensor {worst} {errors[worst][0]:.1e}|{errors[worst][1]:.1e};"
            + f" ours vs our f64 oracle {oracle:.1e}  " + ("ok" if passed else "FAILED"))
    return line, passed


def training_step(cfg, batch, size, variant, device):
    """A function running one training step of torchvision's DenseNet on a fixed random batch:
    forward, cross-entropy, backward, SGD with Nesterov momentum and weight decay."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    amp = variant == "channels_last_bf16"
    model = torchvision_model(cfg, memory_efficient=variant == "memory_efficient").to(device)
    x = torch.randn(batch, cfg["in_channels"], *size, device=device)
    y = torch.randint(0, cfg["classes"], (batch,), device=device)
    if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def plan(densenet, model_name, batch):
    """(configuration, (height, width), planned peak bytes of the efficient training step) of one
    network, from `profile` planning only. The cpu backend's plan: it needs no device, and it is
    the backend --device cpu runs; on cuda only the configuration and size are used."""
    run = subprocess.run([str(densenet), "profile", "--backend", "cpu", "--model", model_name, "--batch", str(batch),
                          "--max-run-bytes", "0", "--json"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"densenet profile (plan only) failed ({run.returncode}):\n{run.stderr}")
    profile = json.loads(run.stdout)["profiles"][0]
    planned = next(p["planned_bytes"] for p in profile["paths"] if p["path"] == "efficient_training")
    return profile["config"], (profile["height"], profile["width"]), planned


# ---- part (b) on cuda --------------------------------------------------------------------------

def bench_torch_cuda(cfg, batch, size, variant, steps, warmup):
    """Median step seconds and peak bytes of one torchvision variant."""
    import torch

    set_tf32(variant == "tf32")
    step = training_step(cfg, batch, size, variant, "cuda")
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    peak = torch.cuda.max_memory_allocated()
    del step
    torch.cuda.empty_cache()
    return statistics.median(times), peak


def bench_ours_cuda(densenet, model_name, batch, steps, precision="fp32"):
    """{path: (median step seconds, peak bytes)} of our `profile` at `precision` for the paths it ran."""
    run = subprocess.run([str(densenet), "profile", "--backend", "cuda", "--model", model_name, "--batch", str(batch),
                          "--steps", str(steps), "--precision", precision, "--json"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"densenet profile failed ({run.returncode}):\n{run.stderr}")
    paths = json.loads(run.stdout)["profiles"][0]["paths"]
    return {p["path"]: (p["measured"]["seconds"], p["measured"]["peak_bytes"]) for p in paths if p["measured"]}


VARIANTS = [
    ("fp32", "torchvision fp32 (TF32 off)"),
    ("memory_efficient", "torchvision fp32, memory_efficient=True"),
    ("tf32", "torchvision TF32 (PyTorch's default)"),
    ("channels_last_bf16", "torchvision channels_last + bf16 autocast"),
]
OURS = [("efficient_training", "ours, efficient (fp32)"), ("baseline_training", "ours, baseline (fp32)")]
# Our tensor-core step, beside torchvision's TF32 (the baseline's unfused kernels are fp32 at either
# precision, so only the efficient path is listed).
OURS_TF32 = [("efficient_training", "ours, efficient (tf32)")]
# Our bf16 step, beside torchvision's channels_last + bf16 autocast.
OURS_BF16 = [("efficient_training", "ours, efficient (bf16)")]


def bench_cuda(densenet, nets, steps, warmup):
    """Part (b) on the GPU: the lines of its table."""
    rows = []
    for model_name, batch, cfg, size, _ in nets:
        for variant, label in VARIANTS:
            seconds, peak = bench_torch_cuda(cfg, batch, size, variant, steps, warmup)
            rows.append((model_name, batch, size, label, seconds, peak))
            print(f"{model_name} {label}: {seconds * 1e3:.1f} ms, {peak / 1e6:.0f} MB", flush=True)
        for precision, listed in (("fp32", OURS), ("tf32", OURS_TF32), ("bf16", OURS_BF16)):
            ours = bench_ours_cuda(densenet, model_name, batch, steps, precision)
            for path, label in listed:
                if path in ours:
                    rows.append((model_name, batch, size, label, *ours[path]))

    columns = ("model", "batch", "size", "implementation", "step ms", "images/s", "peak MB")
    row = "{:<21} {:>5} {:>7}  {:<42} {:>8} {:>9} {:>8}"
    return [row.format(*columns)] + [
        row.format(m, b, "{}x{}".format(*s), label, f"{sec * 1e3:.1f}", f"{b / sec:.0f}", f"{peak / 1e6:.0f}")
        for m, b, s, label, sec, peak in rows
    ]


# ---- part (b) on the cpu -----------------------------------------------------------------------

CPU_CONFIGS = [
    ("ours", "ours, efficient (fp32)"),
    ("fp32", "torchvision fp32 (naive)"),
    ("memory_efficient", "torchvision fp32, memory_efficient=True"),
]
# One configuration of one network: its step seconds and peak RSS bytes, one of each per round.
CpuRow = namedtuple("CpuRow", "model batch size label seconds rss planned")


def default_threads():
    """The cores this process may run on (an affinity mask or a container's cpuset can allow
    fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Runs argv[2:] and writes its peak RSS (ru_maxrss) to the file argv[1]. On Linux a process
# that forks and execs keeps the largest RSS of the forked image in its ru_maxrss, so a command
# started straight from this script (with torch imported and part (a) done) would report at
# least this script's RSS; started from this small launcher, it reports its own (plus at most
# the launcher's ~10 MB). /usr/bin/time works the same way, but is not everywhere.
PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def measured_run(cmd, env=None):
    """(exit status, stdout, stderr, peak RSS bytes) of `cmd`, run by a fresh launcher process
    whose only child it is."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "rss"
        run = subprocess.run([sys.executable, "-c", PEAK_RSS_LAUNCHER, str(rss), *cmd], env=env,
                             capture_output=True, text=True)
        # No file: the launcher failed before its command ended, which its stderr tells.
        peak = int(rss.read_text()) * RSS_UNIT if rss.exists() else 0
        return run.returncode, run.stdout, run.stderr, peak


def bench_ours_cpu(densenet, model_name, batch, steps, planned, env):
    """(median step seconds, peak RSS bytes) of our efficient training step on the cpu backend."""
    # A run limit of the efficient step's plan leaves out the baseline (several times larger),
    # which would otherwise run in the same process and set its peak RSS; efficient inference,
    # smaller, still runs.
    code, out, err, rss = measured_run(
        [str(densenet), "profile", "--backend", "cpu", "--model", model_name, "--batch", str(batch),
         "--steps", str(steps), "--max-run-bytes", str(planned), "--json"], env)
    if code != 0:  # 1: a measured peak differed from its plan
        raise SystemExit(f"densenet profile failed ({code}):\n{err}")
    path = next(p for p in json.loads(out)["profiles"][0]["paths"] if p["path"] == "efficient_training")
    if not path["measured"]:
        raise SystemExit(f"densenet profile did not run the efficient step: {path['not_run']}")
    return path["measured"]["seconds"], rss


def bench_torch_cpu(cfg, batch, size, variant, steps, warmup, threads, env):
    """(median step seconds, peak RSS bytes, bytes resident after the imports) of one torchvision
    configuration, in a fresh Python so that the peak RSS is this configuration's alone."""
    spec = dict(cfg=cfg, batch=batch, size=size, variant=variant, steps=steps, warmup=warmup, threads=threads)
    code, out, err, rss = measured_run([sys.executable, str(Path(__file__).resolve()), "--torch-step",
                                        json.dumps(spec)], env)
    if code != 0:
        raise SystemExit(f"torchvision {variant} step failed ({code}):\n{err}")
    result = json.loads(out)
    return result["seconds"], rss, result["import_rss"]


def torch_cpu_step(spec):
    """The child bench_torch_cpu starts: prints the median step seconds of one configuration and
    the peak RSS after importing torch and torchvision, before any model exists."""
    import resource

    import torch
    import torchvision  # noqa: F401 (imported here so that import_rss covers it)

    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT
    torch.set_num_threads(spec["threads"])
    step = training_step(spec["cfg"], spec["batch"], spec["size"], spec["variant"], "cpu")
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times), "import_rss": import_rss}))


def cpu_table(rows):
    """Lines of the cpu table: per configuration the median over rounds of its step time, their
    min-max range, the ratio of the median to torch naive's for the same network, images/s, the
    largest peak RSS of its rounds and our planned peak."""
    columns = ("model", "batch", "size", "implementation", "step ms", "min-max ms", "/naive", "images/s",
               "RSS MB", "plan MB")
    row = "{:<21} {:>5} {:>7}  {:<40} {:>8} {:>11} {:>6} {:>8} {:>7} {:>7}"
    naive = {(r.model, r.batch): statistics.median(r.seconds) for r in rows if r.label == CPU_CONFIGS[1][1]}
    lines = [row.format(*columns)]
    for r in rows:
        seconds = statistics.median(r.seconds)
        base = naive.get((r.model, r.batch))
        lines.append(row.format(
            r.model, r.batch, r.size, r.label, f"{seconds * 1e3:.0f}",
            f"{min(r.seconds) * 1e3:.0f}-{max(r.seconds) * 1e3:.0f}", f"{seconds / base:.2f}" if base else "-",
            f"{r.batch / seconds:.1f}", f"{max(r.rss) / 1e6:.0f}", f"{r.planned / 1e6:.0f}" if r.planned else "-"))
    return lines


def bench_cpu(densenet, nets, args, env):
    """Part (b) on the CPU: (the lines of its table, the largest RSS torch had after its imports)."""
    runs = {(model_name, batch, label): ([], []) for model_name, batch, *_ in nets for _, label in CPU_CONFIGS}
    import_rss = 0
    for round_ in range(1, args.rounds + 1):
        for model_name, batch, cfg, size, planned in nets:
            for variant, label in CPU_CONFIGS:
                if variant == "ours":
                    seconds, rss = bench_ours_cpu(densenet, model_name, batch, args.steps, planned, env)
                else:
                    seconds, rss, imported = bench_torch_cpu(cfg, batch, size, variant, args.steps, args.warmup,
                                                             args.threads, env)
                    import_rss = max(import_rss, imported)
                runs[model_name, batch, label][0].append(seconds)
                runs[model_name, batch, label][1].append(rss)
                print(f"round {round_}/{args.rounds} {model_name} batch {batch}: {label}"
                      f" {seconds * 1e3:.0f} ms, peak RSS {rss / 1e6:.0f} MB", flush=True)
    rows = [CpuRow(model_name, batch, "{}x{}".format(*size), label, *runs[model_name, batch, label],
                   planned if variant == "ours" else None)
            for model_name, batch, _, size, planned in nets for variant, label in CPU_CONFIGS]
    return cpu_table(rows), import_rss


# ---- command line ------------------------------------------------------------------------------

def parse_nets(text):
    """[(model, batch)] of "MODEL:BATCH,MODEL:BATCH"."""
    nets = []
    for item in text.split(","):
        model, sep, batch = item.partition(":")
        if not (model and sep and batch.isdigit() and int(batch) > 0):
            raise argparse.ArgumentTypeError(f"{item!r} is not MODEL:BATCH")
        nets.append((model, int(batch)))
    return nets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("densenet", nargs="?",
                        help="our CLI (default: gpu-build/densenet for cuda, target/release/densenet for cpu)")
    parser.add_argument("--device", choices=sorted(DEFAULTS), default="cuda", help="where both run (default cuda)")
    parser.add_argument("--work", help="directory for dumps and summary.txt"
                        " (default: gpu-build/torch-compare for cuda, target/torch-compare for cpu)")
    parser.add_argument("--steps", type=int, help="timed training steps per measurement (default: 20 cuda, 5 cpu)")
    parser.add_argument("--nets", type=parse_nets, metavar="MODEL:BATCH,...",
                        help="networks of part (b), by our presets (default: densenet-bc-100-k12:64,densenet121:64"
                        " on cuda, densenet-bc-100-k12:64,densenet121:8 on cpu)")
    parser.add_argument("--threads", type=int, help="cpu: threads of ours and torch (default: this process's cores)")
    parser.add_argument("--rounds", type=int,
                        help="cpu: rounds of ours, torch naive, torch memory_efficient (default 3)")
    parser.add_argument("--self-test", nargs="*", metavar="PATH",
                        help="without torch: check this script's cpu pieces, and checkpoints or verify --dump"
                        " directories with the pure-Python reader")
    # The child process of one torchvision configuration on the cpu (bench_torch_cpu).
    parser.add_argument("--torch-step", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.device]
    if args.device != "cpu" and (args.threads is not None or args.rounds is not None):
        parser.error("--threads and --rounds apply to --device cpu")
    args.densenet = args.densenet or defaults.densenet
    args.work = args.work or defaults.work
    args.steps = defaults.steps if args.steps is None else args.steps
    args.nets = args.nets or parse_nets(defaults.nets)
    args.warmup = defaults.warmup
    if args.steps < 2:
        parser.error("--steps must be at least 2: our profile warms up only for more than one step")
    if args.device == "cpu":
        args.threads = default_threads() if args.threads is None else args.threads
        args.rounds = 3 if args.rounds is None else args.rounds
        if args.threads < 1 or args.rounds < 1:
            parser.error("--threads and --rounds must be at least 1")
    return args


def main():
    args = parse_args()
    if args.torch_step:
        torch_cpu_step(json.loads(args.torch_step))
        return 0
    if args.self_test is not None:
        self_test(args.self_test)
        return 0

    try:
        import torch
        import torchvision
    except ImportError as e:
        raise SystemExit(f"torch-compare needs torch and torchvision: {e}")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    densenet, work = Path(args.densenet), Path(args.work)
    if not densenet.is_file():
        build = "cargo build --release" if device == "cpu" else "scripts/gpu-check.sh build"
        raise SystemExit(f"{densenet}: no such file; `{build}` makes it")
    work.mkdir(parents=True, exist_ok=True)
    env = None
    if device == "cpu":
        # Ours, the torch children and part (a)'s torch in this process, all on the same threads.
        env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
        torch.set_num_threads(args.threads)
        load_before = os.getloadavg()
    else:
        torch.backends.cudnn.benchmark = True

    lines, passed = [], True
    for model_name, batch, size in COMPARE:
        line, ok = compare(densenet, work, model_name, batch, size, device, env)
        print(line, flush=True)
        lines.append(line)
        passed &= ok

    nets = [(model_name, batch, *plan(densenet, model_name, batch)) for model_name, batch in args.nets]
    if device == "cuda":
        table = bench_cuda(densenet, nets, args.steps, args.warmup)
        head = [f"== torch-compare: {torch.cuda.get_device_name()}, torch {torch.__version__},"
                f" torchvision {torchvision.__version__} =="]
        bench = f"training step (forward, backward, SGD), median of {args.steps} steps; peak = allocated bytes:"
    else:
        table, import_rss = bench_cpu(densenet, nets, args, env)
        load_after = os.getloadavg()
        head = [f"== torch-compare: cpu {cpu_name()}, {args.threads} threads, torch {torch.__version__},"
                f" torchvision {torchvision.__version__} ==",
                "load average (1, 5, 15 min) before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}"
                " (other work on the machine slows all alike only if it is steady)".format(*load_before, *load_after)]
        bench = (f"training step (forward, backward, SGD), median of {args.steps} steps after {args.warmup} warm-up,"
                 f" in {args.rounds} rounds of ours, torch naive, torch memory_efficient in turn: median and range"
                 f" over rounds, /naive = step time over torch naive's; RSS = largest peak RSS of a round (torch's"
                 f" includes {import_rss / 1e6:.0f} MB after importing torch and torchvision); plan = our"
                 f" allocator's planned peak, which its measured peak equals:")
    summary = "\n".join([
        *head,
        f"one training step, relative error against torchvision in f64: ours (f32) | torchvision f32"
        f" (ok: ours <= max({FACTOR:g} x torchvision f32, {FLOOR:.0e})):",
        *("  " + line for line in lines),
        bench,
        *("  " + line for line in table),
    ])
    (work / "summary.txt").write_text(summary + "\n")
    print()
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
