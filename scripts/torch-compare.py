#!/usr/bin/env python3
"""Our DenseNet against torchvision's, on a machine with an NVIDIA GPU, PyTorch and torchvision.

    scripts/torch-compare.py [DENSENET] [--work DIR] [--steps N]
    scripts/torch-compare.py --self-test PATH...

DENSENET is our CLI built with CUDA support (default gpu-build/densenet, as `scripts/gpu-check.sh
build` makes it). Two parts, then one summary printed last and written to WORK/summary.txt:

(a) Correctness. For densenet121 (ImageNet stem; batch 2, 224x224) and densenet-bc-100-k12
    (CIFAR stem; batch 4, 32x32), `DENSENET verify --backend cuda --dump DIR` writes random
    weights (a checkpoint with torchvision's names), a random batch and our efficient path's
    logits, loss, parameter and input gradients and updated running statistics. The weights
    are loaded (strictly) into torchvision's `DenseNet` class — densenet121 is exactly what
    `torchvision.models.densenet121` builds; for the CIFAR stem `features.conv0` is replaced by
    a 3x3 conv and norm0/relu0/pool0 are removed — and one training-mode forward and backward
    runs in float64 (the reference) and in float32 (TF32 off). Reported: the relative error
    ||x - ref|| / ||ref|| of ours and of torchvision's f32 for the logits, loss, input
    gradient, all parameter gradients together, the updated running statistics and the worst
    parameter tensor. With random weights at batch 2-4, a few ReLU inputs lie within float32
    rounding of zero, and each implementation decides some of them differently from the
    reference, which moves gradients by up to ~1e-2 (see "Verification and kinks" in
    docs/ARCHITECTURE.md): torchvision's own f32 errors show that scale, so the verdict is
    ours <= max(3 x torchvision f32, 1e-5) for each quantity above but the worst tensor.

(b) Speed and memory, densenet-bc-100-k12 (batch 64, 32x32) and densenet121 (batch 64,
    224x224): a training step (forward, cross-entropy, backward, SGD with Nesterov momentum and
    weight decay) of torchvision in fp32 (TF32 off, as our kernels), fp32 with
    `memory_efficient=True`, PyTorch's default TF32 convolutions, and channels_last with bf16
    autocast; median step time over --steps steps after 3 warm-up steps (CUDA events;
    cudnn.benchmark on) and the peak of `torch.cuda.max_memory_allocated` after
    `reset_peak_memory_stats`. Ours: `DENSENET profile --backend cuda --steps N --json` (median
    step time after one warm-up step; the byte-counting allocator's peak, which equals the
    plan), for the efficient path and the baseline on the same kernels.

Only torch and torchvision are needed: safetensors files are read by the small pure-Python
reader below (8-byte little-endian header length, JSON header, raw little-endian data).
`--self-test` uses that reader alone, without torch: it checks files our CLI wrote — a
checkpoint (`densenet train`), or a `verify --dump` directory — against the names and shapes
torchvision's DenseNet has for the configuration stored in the checkpoint.
"""

import argparse
import array
import json
import math
import statistics
import struct
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

FORMAT = "densenet-checkpoint-v1"
OPTIMIZER_PREFIX = "optimizer.momentum_buffer."
RUNNING = ("running_mean", "running_var")
ITEMSIZE = {"F32": 4, "F64": 8, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "BOOL": 1}
# Verdict of part (a): our error against torch in f64 is at most FACTOR times torch's own f32
# error, or FLOOR.
FACTOR = 3.0
FLOOR = 1e-5
COMPARE = [("densenet121", 2, "224x224"), ("densenet-bc-100-k12", 4, "32x32")]
BENCH = [("densenet-bc-100-k12", 64, 32), ("densenet121", 64, 224)]
WARMUP_STEPS = 3
DEVICE = "cuda"

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
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format {meta.get('format')!r}, expected {FORMAT!r}")
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


def self_test(paths):
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


def torch_step(cfg, weights, outputs, dtype):
    """One training-mode forward and backward of torchvision's DenseNet in `dtype` on our weights
    and batch: {quantity: tensor}, with each parameter's gradient and each updated running
    statistic also under its own name."""
    import torch
    import torch.nn.functional as F

    net = torchvision_model(cfg).to(DEVICE, dtype)
    net.load_state_dict({n: to_torch(t) for n, t in weights.items()})
    net.train()
    x = to_torch(outputs["input"]).to(DEVICE, dtype).requires_grad_()
    logits = net(x)
    loss = F.cross_entropy(logits, to_torch(outputs["labels"]).to(DEVICE))
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


def compare(densenet, work, model_name, batch, size):
    """Part (a) for one model: a line of relative errors and whether it passed."""
    import torch

    out = work / model_name
    run = subprocess.run([str(densenet), "verify", "--backend", "cuda", "--model", model_name,
                          "--batch", str(batch), "--size", size, "--dump", str(out), "--json"],
                         capture_output=True, text=True)
    if run.returncode not in (0, 1):  # 1: ran, but our own check against the f64 oracle failed
        raise SystemExit(f"densenet verify failed ({run.returncode}):\n{run.stderr}")
    oracle = json.loads(run.stdout)["max_rel_error"]
    weights, meta = read_safetensors(out / "checkpoint.safetensors")
    after, _ = read_safetensors(out / "gradients.safetensors")
    outputs, _ = read_safetensors(out / "outputs.safetensors")
    cfg = json.loads(meta["config"])

    set_tf32(False)
    reference = torch_step(cfg, weights, outputs, torch.float64)
    theirs = torch_step(cfg, weights, outputs, torch.float32)
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


def bench_torch(cfg, batch, size, variant, steps):
    """Median step seconds and peak bytes of one torchvision variant."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    set_tf32(variant == "tf32")
    amp = variant == "channels_last_bf16"
    model = torchvision_model(cfg, memory_efficient=variant == "memory_efficient").to(DEVICE)
    x = torch.randn(batch, cfg["in_channels"], size, size, device=DEVICE)
    y = torch.randint(0, cfg["classes"], (batch,), device=DEVICE)
    if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(WARMUP_STEPS):
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
    del model, opt, x, y
    torch.cuda.empty_cache()
    return statistics.median(times), peak


def bench_ours(densenet, model_name, batch, steps):
    """{path: (median step seconds, peak bytes)} of our `profile` for the paths it ran."""
    run = subprocess.run([str(densenet), "profile", "--backend", "cuda", "--model", model_name,
                          "--batch", str(batch), "--steps", str(steps), "--json"], capture_output=True, text=True)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("densenet", nargs="?", default="gpu-build/densenet", help="our CLI, built with CUDA")
    parser.add_argument("--work", default="gpu-build/torch-compare", help="directory for dumps and summary.txt")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--self-test", nargs="+", metavar="PATH",
                        help="check checkpoints or verify --dump directories with the pure-Python reader only")
    args = parser.parse_args()
    if args.self_test:
        self_test(args.self_test)
        return 0

    try:
        import torch
        import torchvision
    except ImportError as e:
        raise SystemExit(f"torch-compare needs torch and torchvision: {e}")
    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    densenet, work = Path(args.densenet), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True

    lines, passed = [], True
    for model_name, batch, size in COMPARE:
        line, ok = compare(densenet, work, model_name, batch, size)
        print(line, flush=True)
        lines.append(line)
        passed &= ok

    rows = []
    for model_name, batch, size in BENCH:
        # The configuration as our CLI defines it, from part (a)'s checkpoint.
        cfg = json.loads(read_safetensors(work / model_name / "checkpoint.safetensors")[1]["config"])
        for variant, label in VARIANTS:
            seconds, peak = bench_torch(cfg, batch, size, variant, args.steps)
            rows.append((model_name, batch, size, label, seconds, peak))
            print(f"{model_name} {label}: {seconds * 1e3:.1f} ms, {peak / 1e6:.0f} MB", flush=True)
        ours = bench_ours(densenet, model_name, batch, args.steps)
        for path, label in OURS:
            if path in ours:
                rows.append((model_name, batch, size, label, *ours[path]))

    columns = ("model", "batch", "size", "implementation", "step ms", "images/s", "peak MB")
    row = "{:<21} {:>5} {:>7}  {:<42} {:>8} {:>9} {:>8}"
    table = [row.format(*columns)] + [
        row.format(m, b, f"{s}x{s}", label, f"{sec * 1e3:.1f}", f"{b / sec:.0f}", f"{peak / 1e6:.0f}")
        for m, b, s, label, sec, peak in rows
    ]
    summary = "\n".join([
        f"== torch-compare: {torch.cuda.get_device_name()}, torch {torch.__version__},"
        f" torchvision {torchvision.__version__} ==",
        f"one training step, relative error against torchvision in f64: ours (f32) | torchvision f32"
        f" (ok: ours <= max({FACTOR:g} x torchvision f32, {FLOOR:.0e})):",
        *("  " + line for line in lines),
        f"training step (forward, backward, SGD), median of {args.steps} steps; peak = allocated bytes:",
        *("  " + line for line in table),
    ])
    (work / "summary.txt").write_text(summary + "\n")
    print()
    print(summary)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
