"""Per-sample L2B for classification in a plain PyTorch loop, under symmetric label noise.

Four classes of noisy 16×16 images (where a spot sits); 60 % of the training labels are
replaced by another class at random. A small network is trained twice from the same start:
plain cross-entropy on the noisy labels, and L2B with per-sample weights α (given label) and
β (own prediction) learned on 8 clean images per class. The last line is
``CE 0.xxx vs L2B 0.xxx (accuracy)`` on clean test images.

    python examples/classification_loop.py          # default size (about a minute on a 2-core CPU)
    python examples/classification_loop.py --tiny   # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn
from toy_data import patterns, symmetric_noise

from medl2b import l2b_step

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="CI-sized run (seconds)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--noise", type=float, default=0.6, help="share of training labels replaced")
args = parser.parse_args()
n_train, n_test, steps = (64, 64, 4) if args.tiny else (1024, 1024, 3000)
size, n_meta, batch, warmup = 16, 32, 64, steps // 10

x, truth = patterns(n_train, size, seed=args.seed)
y = symmetric_noise(truth, args.noise, seed=args.seed + 1)
x_meta, y_meta = patterns(n_meta, size, seed=args.seed + 2)  # the small clean meta set
x_test, y_test = patterns(n_test, size, seed=args.seed + 3)
print(f"training labels correct: {(y == truth).float().mean():.2f}; {n_meta} clean meta images")


def train(model: nn.Module, method: str) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(args.seed)  # the same batches for both runs
    for step in range(steps):
        i = torch.randint(0, n_train, (batch,), generator=g)
        if method == "ce":
            loss, skipped = F.cross_entropy(model(x[i]), y[i]), False
        else:  # one α and one β per sample: out.alpha.shape == out.beta.shape == (batch,)
            out = l2b_step(model, x[i], y[i], x_meta, y_meta, lr=opt.param_groups[0]["lr"], method=method,
                           warm=step < warmup)
            loss, skipped = out.loss, out.skipped
        opt.zero_grad()
        if not skipped:
            loss.backward()
            opt.step()
    return model


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


torch.manual_seed(args.seed)
net = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Flatten(), nn.Linear(32 * (size // 4) ** 2, 4))
ce = train(copy.deepcopy(net), "ce")
l2b = train(copy.deepcopy(net), "l2b")
print(f"clean meta set accuracy: CE {accuracy(ce, x_meta, y_meta):.3f}, L2B {accuracy(l2b, x_meta, y_meta):.3f}")
print(f"CE {accuracy(ce, x_test, y_test):.3f} vs L2B {accuracy(l2b, x_test, y_test):.3f} (accuracy)")
