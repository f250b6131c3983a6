"""One-command acceptance check of a (GPU) machine: exact meta step, step cost, input pipeline, CLI.

    python benchmarks/gpu_check.py [--device auto|cpu|cuda] [--tiny] [--work DIR] [--threads N]

Meant to finish within 8 minutes on one H100 (the H200 of 2026-11-29 took 2.7 before issue 38 added a network
and a variant to the step cost), offline. ``--device cpu --tiny`` runs every check at toy sizes in a couple
of minutes (``tests/test_gpu_check.py`` runs it that way).

1. Environment: device, NVIDIA driver, torch / CUDA / cuDNN / MONAI / Python versions, CPUs.
2. Exactness of the fast meta step (``medl2b.meta.meta_weights``, ``impl="fast"``) against the
   double-backward reference (``impl="reference"``) on the device, for 2-D UNet++ (CE, Dice and
   CE+Dice meta objectives, ``medl2b.meta.losses.meta_objective``) and ResNet-50 (CE):

   * float32 (TF32 off during these checks): the meta-gradients ``∂L_meta/∂ε``, the weights and
     the real step's parameter gradients must each agree to ``max|fast − ref| ≤ 1e-4 · max|ref|``,
     or, where the meta-gradient is so ill-conditioned that float32 itself cannot resolve it (the
     float32 reference lies farther than that from a float64 one), to 4x float32's own error;
   * float64: the same three to ``1e-8 · max|ref|``, which catches a wrong tangent rule whatever
     the conditioning;
   * bf16 autocast (as the trainer runs on CUDA after its first epoch), both implementations under the
     same autocast, networks with batch norm (ResNet-50) after 10 plain CE steps on the batch (at
     initialisation, train-mode batch norm amplifies bf16 rounding: ``BENCHMARKS.md``, issue 38), with
     pseudo-labels fixed beforehand (a bf16 rounding could otherwise flip a pseudo-label in
     one implementation only): the meta-gradients must agree to ``max|fast − ref| ≤ 0.1 · max|ref|``
     and have cosine similarity ≥ 0.995. How far bf16 moves the meta-gradients away from the
     float64 reference is reported too, without a limit (a warning below cosine 0.9).

   3-D UNet++ has an entry marked "not yet available".
3. Cost of one full training step (``medl2b.meta.losses.weighted_losses``, backward, clipping, SGD
   with momentum) for ``ce``, ``l2b`` (fast), ``l2b`` (fast-lowmem), ``l2b`` with ``--meta-scope last``
   and ``l2b`` with its meta step in float32 (``meta_amp`` off): median of repeats after warm-up,
   round-robin, timed with CUDA events (``time.perf_counter`` on the CPU), as a multiple of ``ce``; the
   peak of ``torch.cuda.max_memory_allocated`` during one step (null on the CPU). UNet++ 2-D 256², batch
   16; ResNet-50 224², batch 64; UNet++ 3-D 64³, batch 2; the pretrained classification backbone
   (EfficientNet-Lite0, packaged ImageNet weights) 224², batch 64. bf16 autocast on CUDA as in the
   trainer after its first epoch (``meta_amp`` on: the meta step too, with float32 tangents).
4. The whole CLI path in subprocesses: ``synth promise12`` → ``prepare promise12`` → ``train`` ``ce``
   and ``l2b`` for 2 epochs (1 warm-up) → ``eval`` of both, each stage timed; the end-to-end throughput
   of each training epoch (training images / epoch seconds, data loading and validation included) and
   the l2b/ce ratio of the last (meta) epoch.
5. The input pipeline: samples/s of the training DataLoader alone (``SegSliceDataset`` plus
   ``BatchAugment`` of whole batches on the device, as the trainer does) next to the samples/s of
   the ``ce`` and ``l2b`` steps at the same size and batch.

A human-readable table comes first; the LAST line of stdout is one JSON object with ``"ok"``
and ``"failures"``. Any failed check makes the exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

FP32_TOL = 1e-4          # max|fast - ref| / max|ref|, float32 (or FLOOR_FACTOR x float32's own error)
FLOOR_FACTOR = 4.0       # ... float32's own error: max|ref32 - ref64| / max|ref64|
FP64_TOL = 1e-8          # max|fast - ref| / max|ref|, float64
BF16_TOL = 1e-1          # max|fast - ref| / max|ref|, both under bf16 autocast
BF16_MIN_COSINE = 0.995  # cosine(fast, ref) under bf16 autocast
BF16_WARN_COSINE = 0.9   # warn when bf16 meta-gradients lie this far from the float64 ones
BF16_WARMUP_STEPS = 10   # plain CE steps before a bf16 check: the trainer's bf16 meta steps start after epoch 1
BUDGET_S = 480           # the full check on one H100 (issue 38: one prepared call of <= 8 minutes)

# sizes: full (GPU) and --tiny (CPU, seconds)
FULL = {
    "equality": {"unetpp": {"features": (32, 32, 64, 128, 256, 32), "size": 128, "batch": 4, "meta_batch": 4},
                 "unetpp3d": {"features": (16, 16, 32, 64, 128, 16), "size": 48, "batch": 2, "meta_batch": 2},
                 "resnet50": {"width": 1.0, "size": 128, "batch": 8, "meta_batch": 8, "classes": 8}},
    "timing": {"unetpp": {"features": (32, 32, 64, 128, 256, 32), "size": 256, "batch": 16, "meta_batch": 16,
                          "clip": 0.2},
               "resnet50": {"width": 1.0, "size": 224, "batch": 64, "meta_batch": 64, "classes": 8, "clip": 0.8},
               "unetpp3d": {"features": (32, 32, 64, 128, 256, 32), "size": 64, "batch": 2, "meta_batch": 2,
                            "clip": 0.2},
               "efficientnet-lite0": {"size": 224, "batch": 64, "meta_batch": 64, "classes": 8, "clip": 0.8,
                                      "pretrained": "imagenet"},
               "warmup": 3, "repeats": 10},
    "pipeline": {"slices": 256, "passes": 2},
    "cli": {"cases": 8, "size": 144, "meta_cases": 2, "test_cases": 2, "sets": [], "figures": True, "timeout": 900},
}
TINY = {
    "equality": {"unetpp": {"features": (4, 4, 8, 8, 16, 4), "size": 32, "batch": 2, "meta_batch": 2},
                 "unetpp3d": {"features": (2, 2, 4, 4, 8, 2), "size": 32, "batch": 1, "meta_batch": 1},
                 "resnet50": {"width": 0.125, "size": 32, "batch": 4, "meta_batch": 4, "classes": 4}},
    "timing": {"unetpp": {"features": (4, 4, 8, 8, 16, 4), "size": 32, "batch": 2, "meta_batch": 2, "clip": 0.2},
               "resnet50": {"width": 0.125, "size": 32, "batch": 2, "meta_batch": 2, "classes": 4, "clip": 0.8},
               "unetpp3d": {"features": (2, 2, 4, 4, 8, 2), "size": 32, "batch": 1, "meta_batch": 1, "clip": 0.2},
               "efficientnet-lite0": {"size": 32, "batch": 2, "meta_batch": 2, "classes": 4, "clip": 0.8,
                                      "pretrained": "imagenet"},
               "warmup": 1, "repeats": 3},
    "pipeline": {"slices": 16, "passes": 1},
    "cli": {"cases": 3, "size": 32, "meta_cases": 1, "test_cases": 1, "figures": False, "timeout": 600,
            "sets": ["features=[4,4,8,8,16,4]", "steps_per_epoch=2", "batch_size=4", "meta_batch_size=4"]},
}
VARIANTS = {  # key -> (label, method, meta_impl, meta_scope)
    "ce": ("ce", "ce", "fast", "all"),
    "l2b_fast": ("l2b (fast)", "l2b", "fast", "all"),
    "l2b_fast_lowmem": ("l2b (fast-lowmem)", "l2b", "fast-lowmem", "all"),
    "l2b_last": ("l2b (meta-scope last)", "l2b", "fast", "last"),
    "l2b_fp32_meta": ("l2b (float32 meta step)", "l2b", "fast", "all"),
}
#: the end-to-end check's runs -> their --method: its l2b is the paper's pure form, as it was when the committed
#: logs were measured (``--method l2b`` also trains on the trusted cases since issue 37)
CLI_METHOD = {"l2b": "l2b-pure"}
FLOAT32_STEP = {"l2b_fp32_meta"}  # no autocast around the step: the trainer with meta_amp off (or in epoch 1)


class Report:
    """Results, failures and warnings of every check; the JSON summary."""

    def __init__(self):
        self.data: dict = {"ok": False, "failures": [], "warnings": []}

    def fail(self, what: str) -> None:
        self.data["failures"].append(what)

    def warn(self, what: str) -> None:
        self.data["warnings"].append(what)

    def section(self, name: str, func, *args) -> None:
        """Run one section; an exception becomes a failure and the next section still runs."""
        start = time.perf_counter()
        try:
            func(self, *args)
        except Exception as exc:  # noqa: BLE001 (a broken section must not hide the others)
            tb = traceback.format_exc().strip().splitlines()
            print(f"[{name}] raised: " + "\n".join(tb[-6:]), file=sys.stderr)
            self.fail(f"{name}: {type(exc).__name__}: {exc}")
        self.data.setdefault("section_s", {})[name] = round(time.perf_counter() - start, 3)


# ----------------------------------------------------------------------------- helpers

def _json_safe(value):
    """Non-finite floats become null, tuples lists: the summary is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, enabled: bool):
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def _exact_float32(device):
    """TF32 off (cuDNN convolutions and matmuls) while the float32 checks run."""
    import torch

    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _flat(tensors):
    import torch

    return torch.cat([t.detach().double().flatten().cpu() for t in tensors])


def _rel_err(a, b) -> float:
    """max|a − b| / max|b| (0 when both are all zeros)."""
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def _cosine(a, b) -> float:
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float((a @ b) / (na * nb))


def _seg_batch(n: int, size: int, device, *, classes: int = 2, dims: int = 2):
    """Images and label maps (2-D or 3-D) with a box of foreground per class (a Dice objective needs some)."""
    import torch

    x = torch.randn(n, 1, *([size] * dims))
    y = torch.zeros(n, *([size] * dims), dtype=torch.long)
    for i in range(n):
        for k in range(1, classes):
            extent = torch.randint(size // 8, size // 2, (dims,)).tolist()
            box = tuple(slice(o, o + e) for o, e in
                        zip((torch.randint(0, size - e, (1,)).item() for e in extent), extent))
            y[(i, *box)] = k
            x[(i, 0, *box)] += 1.0
    return x.to(device), y.to(device)


def _cls_batch(n: int, size: int, classes: int, device):
    import torch

    return torch.randn(n, 3, size, size, device=device), torch.randint(0, classes, (n,), device=device)


def _build(net: str, spec: dict, device):
    from medl2b.models import build_classifier, build_resnet50, build_unetpp

    if net in ("unetpp", "unetpp3d"):
        model = build_unetpp(features=tuple(spec["features"]), spatial_dims=3 if net == "unetpp3d" else 2)
    elif net == "resnet50":
        model = build_resnet50(num_classes=spec["classes"], width=spec["width"])
    else:  # a registered backbone behind its input normalisation, with its packaged weights
        model = build_classifier(net, num_classes=spec["classes"], image_size=spec["size"],
                                 pretrained=spec.get("pretrained"))
    return model.to(device).train()


def _data(net: str, spec: dict, device):
    """(x, y, xm, ym) for one network."""
    if net in ("unetpp", "unetpp3d"):
        dims = 3 if net == "unetpp3d" else 2
        x, y = _seg_batch(spec["batch"], spec["size"], device, dims=dims)
        xm, ym = _seg_batch(spec["meta_batch"], spec["size"], device, dims=dims)
    else:
        x, y = _cls_batch(spec["batch"], spec["size"], spec["classes"], device)
        xm, ym = _cls_batch(spec["meta_batch"], spec["size"], spec["classes"], device)
    return x, y, xm, ym


# ----------------------------------------------------------------------------- 1. environment

def _driver_version() -> str | None:
    """The NVIDIA driver release, from the kernel module or nvidia-smi (no pynvml)."""
    import re

    try:  # "NVRM version: NVIDIA UNIX [Open ]Kernel Module [for x86_64]  550.54.14  Release Build ..."
        found = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s",
                          Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], check=False,
                                 capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def check_environment(report: Report, device) -> None:
    import monai
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env = {"device": str(device), "python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "cpu_affinity": affinity,
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "monai": monai.__version__, "device_name": platform.processor() or platform.machine(),
           "driver": None, "gpu_memory_gb": None, "compute_capability": None, "bf16": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   compute_capability=f"{props.major}.{props.minor}", driver=_driver_version(),
                   bf16=bool(torch.cuda.is_bf16_supported()), cuda_device_count=torch.cuda.device_count())
    else:
        env["bf16"] = True  # CPU autocast supports bfloat16
    report.data["env"] = env


# ----------------------------------------------------------------------------- 2. exactness

def _meta_run(model, impl: str, x, y, xm, ym, *, objective: str, device, amp: bool, pseudo=None):
    """One meta step and the real step's backward on a copy of ``model``; returns flat tensors."""
    from medl2b.meta import meta_weights
    from medl2b.meta.methods import make_loss_terms
    from medl2b.meta.losses import meta_objective

    m = copy.deepcopy(model)
    terms = make_loss_terms(y, n_terms=2, pseudo=pseudo)
    with _autocast(device, amp):
        out = meta_weights(m, x, terms, xm, meta_objective(objective, ym), lr=0.01, impl=impl)
        loss = sum((w * l.float()).sum() for w, l in zip(out.weights, out.losses))
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    return {"meta_grad": _flat(out.meta_grads), "weights": _flat(out.weights), "param_grad": _flat(grads),
            "skipped": out.skipped}


def _meta_case(case: dict, impl: str, dtype: str, pseudo=None) -> dict:
    """:func:`_meta_run` of one equality case in ``dtype``: float32, float64 or bf16 (autocast over float32)."""
    device = case["device"]
    model, x, xm = case["float64" if dtype == "float64" else "float32"]
    context = _exact_float32(device) if dtype != "float64" else contextlib.nullcontext()
    with context:
        return _meta_run(model, impl, x, case["y"], xm, case["ym"], objective=case["objective"], device=device,
                         amp=dtype == "bf16", pseudo=pseudo)


def _warm_up(model, x, y, steps: int) -> None:
    """``steps`` plain CE steps (SGD, lr 0.05, momentum 0.9) on one batch, in float32."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def check_equality(report: Report, device, sizes: dict) -> None:
    import torch

    results: dict = {}
    report.data["equality"] = results
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    cases = [("unetpp2d_ce_fp32", "unetpp", "ce", False), ("unetpp2d_dice_fp32", "unetpp", "dice", False),
             ("unetpp2d_ce+dice_fp32", "unetpp", "ce+dice", False), ("resnet50_ce_fp32", "resnet50", "ce", False),
             ("unetpp2d_ce_bf16", "unetpp", "ce", True), ("unetpp2d_dice_bf16", "unetpp", "dice", True),
             ("unetpp2d_ce+dice_bf16", "unetpp", "ce+dice", True), ("resnet50_ce_bf16", "resnet50", "ce", True),
             ("unetpp3d_ce+dice_fp32", "unetpp3d", "ce+dice", False), ("unetpp3d_ce+dice_bf16", "unetpp3d", "ce+dice",
                                                                         True)]
    keys = ("meta_grad", "weights", "param_grad")
    for name, net, objective, amp in cases:
        if amp and not bf16_ok:
            results[name] = {"status": "skipped: the GPU has no bf16", "ok": None}
            report.warn(f"{name} skipped: no bf16 on this GPU")
            continue
        start = time.perf_counter()
        torch.manual_seed(0)
        spec = sizes[net]
        model = _build(net, spec, device)
        x, y, xm, ym = _data(net, spec, device)
        if amp and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # at initialisation, train-mode batch norm amplifies bf16 rounding (issue 38; the trainer waits)
            _warm_up(model, x, y, BF16_WARMUP_STEPS)
        model64, x64, xm64 = copy.deepcopy(model).double(), x.double(), xm.double()
        entry: dict = {"network": net, "meta_objective": objective, "dtype": "bf16 autocast" if amp else "float32",
                       "input": [spec["batch"]] + [spec["size"]] * (3 if net == "unetpp3d" else 2),
                       "meta_batch": spec["meta_batch"],
                       "metric": "max|fast - reference| / max|reference|"}

        case = {"float32": (model, x, xm), "float64": (model64, x64, xm64), "y": y, "ym": ym,
                "objective": objective, "device": device}
        if amp:
            with torch.no_grad(), _autocast(device, True):  # one set of pseudo-labels for every run
                pseudo = copy.deepcopy(model)(x).argmax(1)
            fast, ref = _meta_case(case, "fast", "bf16", pseudo), _meta_case(case, "reference", "bf16", pseudo)
            exact = _meta_case(case, "reference", "float64", pseudo)
            errors = {"meta_grad": _rel_err(fast["meta_grad"], ref["meta_grad"])}
            limits = {"meta_grad": BF16_TOL}
            cosine = _cosine(fast["meta_grad"], ref["meta_grad"])
            drift = _cosine(fast["meta_grad"], exact["meta_grad"])
            entry.update(errors=errors, limits=limits, tol=BF16_TOL, cosine=cosine, min_cosine=BF16_MIN_COSINE,
                         weights_rel_err=_rel_err(fast["weights"], ref["weights"]),
                         vs_float64={"meta_grad_rel_err": _rel_err(fast["meta_grad"], exact["meta_grad"]),
                                     "meta_grad_cosine": drift,
                                     "note": "bf16 fast vs float64 reference: reported, no limit"})
            ok = errors["meta_grad"] <= BF16_TOL and cosine >= BF16_MIN_COSINE
            if drift < BF16_WARN_COSINE:
                report.warn(f"{name}: bf16 meta-gradients have cosine {drift:.3f} with the float64 ones "
                            f"(< {BF16_WARN_COSINE}) after {BF16_WARMUP_STEPS} CE steps: the bf16 meta step "
                            f"(meta_amp) would weigh with rounding here")
        else:
            # float32: pseudo-labels from each run's own forward (the default path); float64: the float32
            # ones, so that a tie broken differently in float64 does not count as float32's rounding error
            fast, ref = _meta_case(case, "fast", "float32"), _meta_case(case, "reference", "float32")
            with torch.no_grad(), _exact_float32(device):
                pseudo32 = copy.deepcopy(model)(x).argmax(1)
            fast64 = _meta_case(case, "fast", "float64", pseudo32)
            ref64 = _meta_case(case, "reference", "float64", pseudo32)
            errors = {k: _rel_err(fast[k], ref[k]) for k in keys}
            # float32 cannot resolve an ill-conditioned meta-gradient better than its own rounding: the
            # limit is 1e-4, or 4x how far the float32 reference itself lies from the float64 one
            floor = {k: _rel_err(ref[k], ref64[k]) for k in keys}
            limits = {k: max(FP32_TOL, FLOOR_FACTOR * floor[k]) for k in keys}
            errors64 = {k: _rel_err(fast64[k], ref64[k]) for k in keys}
            entry.update(errors=errors, limits=limits, tol=FP32_TOL, float32_floor=floor,
                         cosine=_cosine(fast["meta_grad"], ref["meta_grad"]),
                         float64={"errors": errors64, "limits": {k: FP64_TOL for k in keys}, "tol": FP64_TOL})
            ok = all(errors[k] <= limits[k] for k in keys) and all(e <= FP64_TOL for e in errors64.values())
            ok = ok and fast64["skipped"] == ref64["skipped"]
        if ref["skipped"] != fast["skipped"]:
            ok = False
        entry.update(skipped=ref["skipped"], ok=bool(ok), seconds=time.perf_counter() - start)
        results[name] = entry
        if not ok:
            detail = f"errors {errors} (limits {limits})"
            if amp:
                detail += f", cosine {cosine:.5f} (min {BF16_MIN_COSINE})"
            else:
                detail += f", float64 errors {entry['float64']['errors']} (limit {FP64_TOL})"
            report.fail(f"equality {name}: {detail}")
        model = model64 = fast = ref = case = None  # free the device memory before the next case
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 3. step cost

def _stepper(model, key: str, data, *, device, amp: bool, clip: float):
    import torch

    from medl2b.models import head_parameter_names
    from medl2b.meta.methods import get_method
    from medl2b.meta.losses import weighted_losses

    _, method_name, impl, scope = VARIANTS[key]
    method = get_method(method_name)
    head = head_parameter_names(model) if scope == "last" else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y, xm, ym = data

    def step():
        with _autocast(device, amp and key not in FLOAT32_STEP):
            weights, losses, _ = weighted_losses(model, method, x, y, xm, ym, lr=opt.param_groups[0]["lr"],
                                                 meta_impl=impl, param_names=head)
            loss = sum((w * l.float()).sum() for w, l in zip(weights, losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    return step


def _timed(step, device) -> float:
    """Seconds of one step: CUDA events on the GPU, perf_counter after synchronisation on the CPU."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def check_timing(report: Report, device, sizes: dict) -> None:
    import torch

    amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    warmup, repeats = sizes["warmup"], sizes["repeats"]
    results: dict = {}
    report.data["timing"] = results
    for net, label in (("unetpp", "unetpp2d"), ("resnet50", "resnet50"), ("unetpp3d", "unetpp3d"),
                       ("efficientnet-lite0", "efficientnet-lite0")):
        spec = sizes[net]
        torch.manual_seed(0)
        data = _data(net, spec, device)
        peaks: dict = {k: (None, None) for k in VARIANTS}
        if device.type == "cuda":  # one variant alive at a time, so its peak is its own
            for key in VARIANTS:
                torch.manual_seed(0)
                model = _build(net, spec, device)
                step = _stepper(model, key, data, device=device, amp=amp, clip=spec["clip"])
                step()
                _sync(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                _sync(device)
                peak = torch.cuda.max_memory_allocated(device)
                peaks[key] = (peak / 2**20, (peak - before) / 2**20)
                del model, step
                torch.cuda.empty_cache()
        steps = {}
        for key in VARIANTS:
            torch.manual_seed(0)
            steps[key] = _stepper(_build(net, spec, device), key, data, device=device, amp=amp, clip=spec["clip"])
            for _ in range(warmup):
                steps[key]()
            _sync(device)
        times: dict = {k: [] for k in VARIANTS}
        for _ in range(repeats):  # round-robin: drifts of clock or load hit every variant alike
            for key, step in steps.items():
                times[key].append(_timed(step, device))
        del steps
        if device.type == "cuda":
            torch.cuda.empty_cache()
        med = {k: statistics.median(v) for k, v in times.items()}
        variants = {}
        for key, (label_v, *_rest) in VARIANTS.items():
            peak, growth = peaks[key]
            ce_peak = peaks["ce"][0]
            variants[key] = {"label": label_v, "step_ms": med[key] * 1000, "x_ce": med[key] / med["ce"],
                             "samples_per_s": spec["batch"] / med[key], "peak_mb": peak, "step_mem_mb": growth,
                             "peak_x_ce": (peak / ce_peak) if (peak is not None and ce_peak) else None,
                             "all_ms": [round(t * 1000, 3) for t in times[key]]}
            if not (med[key] > 0 and math.isfinite(med[key])):
                report.fail(f"timing {label} {key}: step time {med[key]}")
        results[label] = {"input": [spec["batch"]] + [spec["size"]] * (3 if net == "unetpp3d" else 2),
                          "meta_batch": spec["meta_batch"],
                          "amp": "bf16" if amp else "off", "warmup": warmup, "repeats": repeats,
                          "clock": "cuda events" if device.type == "cuda" else "perf_counter",
                          "variants": variants}


# ----------------------------------------------------------------------------- 5. input pipeline

def check_pipeline(report: Report, device, sizes: dict, unet: dict) -> None:
    import torch
    from torch.utils.data import DataLoader

    from medl2b.data.augment import BatchAugment
    from medl2b.data.datasets import SegSliceDataset, SliceSet

    n, size, batch = sizes["slices"], unet["size"], unet["batch"]
    torch.manual_seed(0)
    image, label = _seg_batch(n, size, torch.device("cpu"))
    slices = SliceSet(image=image, label=label, clean=label.clone(), case=[f"c{i // 8}" for i in range(n)],
                      slice_index=[i % 8 for i in range(n)])
    loader = DataLoader(SegSliceDataset(slices), batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), num_workers=0)  # as the trainer's defaults
    augment = BatchAugment()

    def one_pass() -> int:
        seen = 0
        for item in loader:
            b = {k: v.to(device) for k, v in item.items() if k != "index"}
            img, *_labels = augment(b["image"], b["label"], b["clean"])
            seen += img.shape[0]
        _sync(device)
        return seen

    one_pass()  # warm-up
    t = time.perf_counter()
    seen = sum(one_pass() for _ in range(sizes["passes"]))
    seconds = time.perf_counter() - t
    loader_rate = seen / seconds
    timing = report.data.get("timing", {}).get("unetpp2d", {}).get("variants", {})
    step_rate = {k: timing[k]["samples_per_s"] for k in ("ce", "l2b_fast") if k in timing}
    result = {"input": [batch, size, size], "slices": n, "num_workers": 0, "augment": "BatchAugment on " + device.type,
              "loader_samples_per_s": loader_rate, "step_samples_per_s": step_rate,
              "loader_over_step": {k: loader_rate / v for k, v in step_rate.items()}}
    report.data["pipeline"] = result
    if not loader_rate > 0:
        report.fail(f"pipeline: loader rate {loader_rate}")
    for k, ratio in result["loader_over_step"].items():
        if ratio < 1.0:
            report.warn(f"input pipeline ({loader_rate:.0f} samples/s) is slower than the {k} step "
                        f"({step_rate[k]:.0f} samples/s): training would wait for data")


# ----------------------------------------------------------------------------- 4. CLI path

def _run_cli(args: list[str], *, cwd: Path, env: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "medl2b.cli", *args]
    t, cpu = time.perf_counter(), _children_cpu_s()
    try:
        proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, str(exc.stdout or ""), f"timed out after {timeout} s"
    return {"cmd": "medl2b " + " ".join(args), "rc": rc, "seconds": time.perf_counter() - t,
            "cpu_s": _children_cpu_s() - cpu,  # user + system: on a busy machine wall time says little
            "stdout_tail": out.strip().splitlines()[-3:], "stderr_tail": err.strip().splitlines()[-5:]}


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _read_metrics(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_cli(report: Report, device, spec: dict, work: Path, env: dict) -> None:
    stages: dict = {}
    runs: dict = {}
    report.data["cli"] = {"work": str(work), "stages": stages, "runs": runs, "cases": spec["cases"],
                          "size": spec["size"]}
    raw, prep = work / "raw", work / "prep"
    plan = [("synth", ["synth", "promise12", str(raw), "--cases", str(spec["cases"]),
                       "--grid-scale", "0.25" if spec["size"] <= 64 else "1.0"]),
            ("prepare", ["prepare", "promise12", str(raw), str(prep), "--size", str(spec["size"]),
                         "--meta-cases", str(spec["meta_cases"]), "--test-cases", str(spec["test_cases"])])]
    sets = [a for s in spec["sets"] for a in ("--set", s)]
    for method in ("ce", "l2b"):  # "l2b": the pure form the recorded checks ran (l2b-pure since issue 37)
        plan.append((f"train_{method}", ["train", "--task", "prostate-seg", "--data", str(prep), "--out",
                                         str(work / f"run_{method}"), "--method", CLI_METHOD.get(method, method),
                                         "--device", device.type,
                                         "--epochs", "2", "--set", "warmup_epochs=1", *sets]))
    plan.append(("eval", ["eval", str(work / "run_ce"), str(work / "run_l2b"), "--device", device.type,
                          "--figures" if spec["figures"] else "--no-figures"]))
    for name, args in plan:
        stage = _run_cli(args, cwd=work, env=env, timeout=spec["timeout"])
        stages[name] = stage
        if stage["rc"] != 0:
            report.fail(f"cli {name}: exit code {stage['rc']}: {' | '.join(stage['stderr_tail'][-2:])}")
            return  # every later stage needs this one
    import yaml

    for method in ("ce", "l2b"):
        run = work / f"run_{method}"
        rows = _read_metrics(run / "metrics.csv")
        summary = json.loads((run / "eval" / "summary.json").read_text())
        dice = (summary.get("mean") or {}).get("dice")
        batch = int(yaml.safe_load((run / "config.yaml").read_text())["batch_size"])
        info = {"epochs": len(rows), "epoch_s": [float(r["time_s"]) for r in rows],
                # end to end: training images of the epoch over its seconds (loading and validation included)
                "images_per_s": [int(r["steps"]) * batch / float(r["time_s"]) for r in rows],
                "val_dice": [float(r["val_score"]) if r["val_score"] else None for r in rows],
                "meta_loss_last": float(rows[-1]["meta_loss"]) if rows and rows[-1]["meta_loss"] else None,
                "test_dice": dice, "test_cases": summary.get("n_cases"), "test_failed": summary.get("n_failed")}
        runs[method] = info
        problems = []
        if len(rows) != 2:
            problems.append(f"{len(rows)} epochs in metrics.csv, expected 2")
        if not (run / "checkpoint_best.pt").is_file():
            problems.append("no checkpoint_best.pt")
        if dice is None or not 0.0 <= float(dice) <= 1.0:
            problems.append(f"test Dice {dice}")
        if summary.get("n_failed"):
            problems.append(f"{summary.get('n_failed')} failed test cases")
        if method == "l2b" and (info["meta_loss_last"] is None or not math.isfinite(info["meta_loss_last"])):
            problems.append("no meta loss after the warm-up epoch: the meta step did not run")
        for p in problems:
            report.fail(f"cli run {method}: {p}")
    if all(m in runs and runs[m]["images_per_s"] for m in ("ce", "l2b")):  # the last epoch: l2b's is a meta epoch
        report.data["cli"]["l2b_epoch_x_ce"] = runs["ce"]["images_per_s"][-1] / runs["l2b"]["images_per_s"][-1]


# ----------------------------------------------------------------------------- output

def _fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def print_table(data: dict) -> None:
    env = data.get("env")
    if not env:
        print(f"# gpu_check ({data.get('mode')}) on {data.get('device')}: no checks ran")
    else:
        print(f"# gpu_check ({data.get('mode')}) on {env.get('device')} [{env.get('device_name')}]: driver "
              f"{env.get('driver') or '-'}, torch {env.get('torch')} (CUDA {env.get('torch_cuda') or '-'}), cuDNN "
              f"{env.get('cudnn') or '-'}, MONAI {env.get('monai')}, Python {env.get('python')}, "
              f"{env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch threads")
    eq = data.get("equality", {})
    if eq:
        print("\n## fast meta step vs double-backward reference: max|fast-ref| / max|ref| (limit), cosine")
        print(f"{'check':<22} {'meta-grad':>19} {'weights':>19} {'param-grad':>19} {'float64 max':>11} "
              f"{'cosine':>9}  ok")
        for name, e in eq.items():
            if "errors" not in e:
                print(f"{name:<22} {e.get('status')}")
                continue
            err, lim = e["errors"], e["limits"]
            f64 = max(e["float64"]["errors"].values()) if "float64" in e else None
            f64_cell = "-" if f64 is None else f"{f64:.1e}"
            cells = [f"{err[k]:.1e} ({lim[k]:.0e})" if k in err else "-" for k in ("meta_grad", "weights",
                                                                                      "param_grad")]
            print(f"{name:<22} {cells[0]:>19} {cells[1]:>19} {cells[2]:>19} "
                  f"{f64_cell:>11} {_fmt(e.get('cosine'), '.6f'):>9}  {'yes' if e['ok'] else 'NO'}")
        print(f"   limits: float32 {FP32_TOL:g} (or {FLOOR_FACTOR:g}x float32's own error vs float64), float64 "
              f"{FP64_TOL:g}, bf16 {BF16_TOL:g} with cosine >= {BF16_MIN_COSINE}; TF32 off for float32")
        for name, e in eq.items():
            if "vs_float64" in e:
                d = e["vs_float64"]
                print(f"   {name}: bf16 fast vs float64 reference: rel err {_fmt(d['meta_grad_rel_err'], '.2e')}, "
                      f"cosine {_fmt(d['meta_grad_cosine'], '.4f')} (information)")
            if "float32_floor" in e:
                print(f"   {name}: float32 reference vs float64: meta-grad {e['float32_floor']['meta_grad']:.1e} "
                      f"(information)")
    for net, t in data.get("timing", {}).items():
        print(f"\n## step cost {net}: batch x size {t['input']}, meta batch {t['meta_batch']}, amp {t['amp']}, "
              f"median of {t['repeats']} after {t['warmup']} warm-up ({t['clock']})")
        print(f"{'variant':<24} {'step ms':>9} {'x ce':>6} {'samples/s':>10} {'peak MB':>9} {'x ce':>6}")
        for v in t["variants"].values():
            print(f"{v['label']:<24} {v['step_ms']:>9.1f} {v['x_ce']:>6.2f} {v['samples_per_s']:>10.1f} "
                  f"{_fmt(v['peak_mb'], '.0f'):>9} {_fmt(v['peak_x_ce'], '.2f'):>6}")
    p = data.get("pipeline")
    if p:
        steps = ", ".join(f"{k} {v:.1f}" for k, v in p["step_samples_per_s"].items())
        print(f"\n## input pipeline ({p['augment']}, {p['num_workers']} workers): loader "
              f"{p['loader_samples_per_s']:.1f} samples/s; training steps {steps} samples/s")
    cli = data.get("cli")
    if cli:
        print(f"\n## CLI path ({cli['cases']} phantom cases, {cli['size']} px)")
        for name, s in cli["stages"].items():
            print(f"{name:<12} {s['seconds']:>7.1f} s wall {s['cpu_s']:>6.1f} s CPU  exit {s['rc']}")
        for method, r in cli["runs"].items():
            print(f"run {method:<8} epochs {r['epochs']}, epoch s {[round(x, 2) for x in r['epoch_s']]}, "
                  f"images/s {[round(x, 1) for x in r['images_per_s']]}, "
                  f"test Dice {_fmt(r['test_dice'], '.4f')}, last meta loss {_fmt(r['meta_loss_last'], '.4f')}")
        if "l2b_epoch_x_ce" in cli:
            print(f"end to end, last epoch (l2b's meta epoch): l2b takes {cli['l2b_epoch_x_ce']:.2f} x ce's time per image")
    print(f"\ntotal {data.get('total_s', 0):.1f} s wall, {data.get('cpu_s', 0):.1f} s CPU (with subprocesses); "
          f"{len(data['failures'])} failure(s), "
          f"{len(data['warnings'])} warning(s)")
    for f in data["failures"]:
        print(f"FAIL {f}")
    for w in data["warnings"]:
        print(f"warn {w}")


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--tiny", action="store_true", help="toy sizes: seconds on a CPU (what the test runs)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the CLI stage (must be empty or absent; kept afterwards). "
                         "Default: a temporary folder, removed at the end.")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch here and in the CLI subprocesses (default: 1 with --tiny on the "
                         "CPU, where a busy machine makes multi-threaded small kernels crawl; else torch's default)")
    args = ap.parse_args(argv)
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        ap.error(f"--work {args.work} is not empty")

    start = time.perf_counter()
    report = Report()
    sizes = TINY if args.tiny else FULL
    report.data.update(mode="tiny" if args.tiny else "full", device=args.device)
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 (still one JSON line and exit code 1)
        report.fail(f"import torch: {type(exc).__name__}: {exc}")
        print(json.dumps(_json_safe(report.data), separators=(",", ":"), default=str), flush=True)
        return 1

    if args.device == "cuda" and not torch.cuda.is_available():
        report.fail("device: --device cuda, but torch sees no CUDA device")
        device = None
    else:
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        report.data["device"] = device.type
    threads = args.threads if args.threads is not None else (1 if (args.tiny and device is not None
                                                                    and device.type == "cpu") else None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        torch.set_num_threads(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    if device is not None and device.type == "cpu" and not args.tiny:
        report.warn("full sizes on the CPU (ResNet-50 224x224, batch 64) take very long; --tiny is the CPU mode")
    if device is not None:
        report.section("environment", check_environment, device)
        report.section("equality", check_equality, device, sizes["equality"])
        report.section("timing", check_timing, device, sizes["timing"])
        report.section("pipeline", check_pipeline, device, sizes["pipeline"], sizes["timing"]["unetpp"])
        work = args.work if args.work is not None else Path(tempfile.mkdtemp(prefix="medl2b_gpu_check_"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            report.section("cli", check_cli, device, sizes["cli"], work.resolve(), env)
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - start
    report.data["total_s"] = total
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    report.data["cpu_s"] = own.ru_utime + own.ru_stime + _children_cpu_s()
    if not args.tiny and device is not None and device.type == "cuda" and total > BUDGET_S:
        report.warn(f"took {total:.0f} s, over the {BUDGET_S} s budget")
    try:
        print_table(report.data)
    except Exception as exc:  # noqa: BLE001 (the JSON line must come whatever happens to the table)
        traceback.print_exc()
        report.fail(f"table: {type(exc).__name__}: {exc}")
    report.data["ok"] = not report.data["failures"]
    sys.stdout.flush()
    print(json.dumps(_json_safe(report.data), separators=(",", ":"), allow_nan=False, default=str), flush=True)
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
