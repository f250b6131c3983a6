"""L2B in a plain PyTorch loop: 2-D segmentation of blobs whose training masks are noisy.

A small MONAI UNet is trained twice from the same start on the same noisy masks (dilated,
eroded, shifted: see ``toy_data.noisy_masks``), once with plain cross-entropy and once with
L2B, whose pixel-wise weights α (given mask) and β (own prediction) are learned on a
small clean meta set. Both are scored by Dice on clean test images; the last line is
``CE 0.xxx vs L2B 0.xxx (dice)``.

    python examples/segmentation_loop.py          # default size (about a minute on a 2-core CPU)
    python examples/segmentation_loop.py --tiny   # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from toy_data import blobs, dice, noisy_masks

from medl2b import L2B

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="CI-sized run (seconds)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
size, n_train, n_meta, n_test, steps = (16, 16, 4, 8, 4) if args.tiny else (32, 512, 16, 128, 1200)
batch, meta_batch, warmup = 16, 8, steps // 5  # CE warm-up: pseudo-labels of an untrained net are noise

x, clean = blobs(n_train, size, seed=args.seed)
y = noisy_masks(clean, seed=args.seed + 1)                 # what the annotators gave
x_meta, y_meta = blobs(n_meta, size, seed=args.seed + 2)   # a few carefully labelled images
x_test, y_test = blobs(n_test, size, seed=args.seed + 3)
print(f"noisy training masks: Dice {dice(y, clean):.3f} against the truth; {n_meta} clean meta images")


def evaluate(model, images, masks) -> float:
    model.eval()
    with torch.no_grad():
        score = dice(model(images).argmax(1), masks)
    model.train()
    return score


def train(model: torch.nn.Module, l2b: L2B | None) -> torch.nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(args.seed)  # the same batches for both runs
    for step in range(steps):
        i, j = torch.randint(0, n_train, (batch,), generator=g), torch.randint(0, n_meta, (meta_batch,), generator=g)
        if l2b is None:
            loss, skipped = F.cross_entropy(model(x[i]), y[i]), False
        else:  # α, β for every pixel of the batch, then the weighted loss
            out = l2b.step(model, x[i], y[i], x_meta[j], y_meta[j], lr=opt.param_groups[0]["lr"], warm=step < warmup)
            loss, skipped = out.loss, out.skipped
        opt.zero_grad()
        if not skipped:
            loss.backward()
            opt.step()
    return model


torch.manual_seed(args.seed)
net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
ce = train(copy.deepcopy(net), None)
l2b = train(copy.deepcopy(net), L2B(method="l2b", meta_loss="dice"))
print(f"clean meta set Dice: CE {evaluate(ce, x_meta, y_meta):.3f}, L2B {evaluate(l2b, x_meta, y_meta):.3f}")
print(f"CE {evaluate(ce, x_test, y_test):.3f} vs L2B {evaluate(l2b, x_test, y_test):.3f} (dice)")
