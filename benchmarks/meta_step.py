"""Step cost of every method, side by side in one process (issue: fast exact meta-gradient).

Times one full training step (forward, meta step if any, backward, clipping,
SGD update) of ``ce``, ``l2rw``, ``l2b`` with the double-backward reference,
``l2b`` with the amortised step (``meta_every`` 2 and 4: time of k steps / k),
``l2b`` with the fast forward-mode implementation (also with PyTorch's generic
forward-mode rules instead of ``medl2b.meta.jvp``'s, with ``fast-lowmem``, and with
the meta batch halved), and ``l2b`` with ``--meta-scope last``, on UNet++ and
ResNet-50 (128x128, batch 8, meta batch 8), and, with ``--nets unetpp-lite0``, the UNet++ over the
ImageNet-pretrained EfficientNet-Lite0 encoder (decoder widths 16, 16, 32, 64, 128; RGB input),
on the CPU. The methods are interleaved round-robin, after warm-up, and the
median of the repeats is reported. Peak memory is measured separately, one
subprocess per (network, method), as the growth of the peak RSS over the steps,
with glibc told to map every large allocation separately so that RSS tracks the
live tensors (see :func:`memory`).

    python benchmarks/meta_step.py [--repeats 7] [--size 128] [--batch 8] [--threads 2]

The last line is ``l2b/ce step-time ratio: X.XX`` for UNet++ with the default
implementation (fast).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from medl2b.models import build_resnet50, build_unetpp, build_unetpp_lite0, head_parameter_names
from medl2b.meta.methods import get_method
from medl2b.meta.losses import weighted_losses

VARIANTS = {  # name -> (method, meta_impl, meta_scope)
    "ce": ("ce", "fast", "all"),
    "l2rw": ("l2rw", "fast", "all"),
    "l2b (reference)": ("l2b", "reference", "all"),
    "l2b (fast)": ("l2b", "fast", "all"),
    "l2b (fast, generic rules)": ("l2b", "fast", "all"),
    "l2b (fast-lowmem)": ("l2b", "fast-lowmem", "all"),
    "l2b (fast, meta batch 4)": ("l2b", "fast", "all"),
    "l2b (last)": ("l2b", "fast", "last"),
    "l2b (fast, meta_every 2)": ("l2b", "fast", "all"),
    "l2b (fast, meta_every 4)": ("l2b", "fast", "all"),
}
GENERIC = {"l2b (fast, generic rules)"}  # PyTorch's own forward-mode rules instead of medl2b.meta.jvp's
HALF_META = {"l2b (fast, meta batch 4)"}  # the meta batch halved (meta_batch_size): fewer FLOPs, same method
EVERY = {"l2b (fast, meta_every 2)": 2, "l2b (fast, meta_every 4)": 4}  # amortised: timed per cycle of k steps / k


def make(net: str, size: int, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    if net == "unetpp3d":  # voxel-wise L2B: a 3-D UNet++ on size³ volumes
        model = build_unetpp(features=(16, 16, 32, 64, 128, 16), spatial_dims=3)
        x, xm = torch.randn(batch, 1, size, size, size), torch.randn(batch, 1, size, size, size)
        y = (torch.rand(batch, size, size, size) > 0.7).long()
        ym = (torch.rand(batch, size, size, size) > 0.7).long()
        return model.train(), (x, y, xm, ym)
    if net in ("unetpp", "unetpp-lite0"):  # unetpp-lite0: ImageNet-pretrained Lite0 encoder, RGB in (issue 37)
        model = (build_unetpp(features=(32, 32, 64, 128, 256, 32)) if net == "unetpp" else
                 build_unetpp_lite0(features=(16, 16, 32, 64, 128, 16), in_channels=3))
        channels = 1 if net == "unetpp" else 3
        x, xm = torch.randn(batch, channels, size, size), torch.randn(batch, channels, size, size)
        y = (torch.rand(batch, size, size) > 0.7).long()
        ym = (torch.rand(batch, size, size) > 0.7).long()
    else:
        model = build_resnet50(num_classes=8)
        x, xm = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
        y, ym = torch.randint(0, 8, (batch,)), torch.randint(0, 8, (batch,))
    return model.train(), (x, y, xm, ym)


def stepper(model, variant: str, batch):
    method_name, impl, scope = VARIANTS[variant]
    method = get_method(method_name)
    head = head_parameter_names(model) if scope == "last" else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y, xm, ym = batch
    if variant in HALF_META:
        xm, ym = xm[: len(xm) // 2], ym[: len(ym) // 2]

    def one(meta_grad=None):
        weights, losses, meta = weighted_losses(model, method, x, y, xm, ym, lr=0.01, meta_impl=impl,
                                                param_names=head, lean=variant not in GENERIC, meta_grad=meta_grad)
        loss = sum((w * l).sum() for w, l in zip(weights, losses))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        return meta

    def step():  # one step; amortised variants: a cycle of k steps (one refresh), timed as a whole / k
        meta = one()
        for _ in range(EVERY.get(variant, 1) - 1):
            one(meta.meta_grad)

    return step


def _dims(net: str, args) -> tuple[int, int]:
    return (args.size3d, args.batch3d) if net == "unetpp3d" else (args.size, args.batch)


def time_all(net: str, args) -> dict[str, float]:
    steps = {}
    for variant in VARIANTS:
        model, batch = make(net, *_dims(net, args))
        steps[variant] = stepper(model, variant, batch)
        for _ in range(2):  # warm-up
            steps[variant]()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            t = time.perf_counter()
            step()
            times[variant].append((time.perf_counter() - t) / EVERY.get(variant, 1))
    return {v: statistics.median(ts) for v, ts in times.items()}


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def memory_child(net: str, variant: str, args) -> None:
    """Peak resident memory during 3 steps, above the resident memory just before them.

    A thread samples /proc/self/statm every millisecond (``ru_maxrss`` cannot be used:
    importing torch and MONAI already peaks higher than a small step). The first step's
    one-time allocations (optimiser state, oneDNN primitives) are included for every method.
    """
    import threading

    model, batch = make(net, *_dims(net, args))
    step = stepper(model, variant, batch)
    base = _rss_mb()  # model, data and optimiser built, no step taken (steps after the first would
    # start from a heap glibc kept from the first peak, so their growth would read as ~0)
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(3):
        step()
    stop.set()
    thread.join()
    print(json.dumps({"delta_mb": peak[0] - base}))


def memory(net: str, variant: str, args) -> float:
    cmd = [sys.executable, __file__, "--child", net, variant, "--size", str(args.size), "--batch", str(args.batch),
           "--size3d", str(args.size3d), "--batch3d", str(args.batch3d), "--threads", str(args.threads)]
    # Every allocation above 64 KiB gets its own mapping, returned to the system when freed, so the
    # resident set follows the live tensors. With glibc's default (a threshold that grows up to 32 MiB)
    # freed activations stay in the heap and the peak reflects the allocator's history as much as the
    # method: the same UNet++ fast step then reads 1.61x instead of 1.28x.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
    return json.loads(out)["delta_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nets", default="unetpp,resnet50", help="any of unetpp, resnet50, unetpp3d, unetpp-lite0")
    ap.add_argument("--size3d", type=int, default=48, help="unetpp3d: volume side (a multiple of 16)")
    ap.add_argument("--batch3d", type=int, default=2, help="unetpp3d: batch and meta batch")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--variants", default=None, help="';'-separated subset of the rows, e.g. 'l2b (fast);l2b (last)' (ce is always kept)")
    ap.add_argument("--child", nargs=2, metavar=("NET", "VARIANT"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args.child[0], args.child[1], args)
        return
    if args.variants:
        keep = {"ce", *(v.strip() for v in args.variants.split(";"))}  # names contain commas
        unknown = keep - set(VARIANTS)
        if unknown:
            ap.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
        for name in [v for v in VARIANTS if v not in keep]:
            del VARIANTS[name]
    ratio_line = None
    print(f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, batch {args.batch}, "
          f"median of {args.repeats} steps (round-robin)")
    print()
    print("| network | method | step (s) | x ce | peak mem growth (MB) | x ce |")
    print("|---|---|---|---|---|---|")
    for net in args.nets.split(","):
        times = time_all(net, args)
        print(f"# {net} step times: " + ", ".join(f"{v} {t:.3f}s" for v, t in times.items()), flush=True)
        mem = {v: float("nan") for v in VARIANTS} if args.no_memory else {v: memory(net, v, args) for v in VARIANTS}
        for v in VARIANTS:
            print(f"| {net} | {v} | {times[v]:.3f} | {times[v] / times['ce']:.2f} | {mem[v]:.0f} | "
                  f"{mem[v] / mem['ce'] if mem['ce'] > 0 else float('nan'):.2f} |")
        if net == "unetpp" and "l2b (fast)" in times:
            ratio_line = f"l2b/ce step-time ratio: {times['l2b (fast)'] / times['ce']:.2f}"
    print()
    if ratio_line:
        print(ratio_line)


if __name__ == "__main__":
    main()
