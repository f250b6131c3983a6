"""L2B inside MONAI's ``SupervisedTrainer``: the same noisy-blob task as ``segmentation_loop.py``.

The CE baseline is a stock ``SupervisedTrainer``; the L2B run is the same trainer with
``iteration_update=monai_iteration(meta_loader, ...)``, which draws one clean meta batch per
iteration and takes the L2B step (CE warm-up for the first epochs). Data are MONAI-style dicts
``{"image": (1, H, W), "label": (1, H, W)}``. The last line is ``CE 0.xxx vs L2B 0.xxx (dice)``.

    python examples/segmentation_monai_trainer.py          # default size (about a minute on a 2-core CPU)
    python examples/segmentation_monai_trainer.py --tiny   # a few seconds, for CI
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet
from torch.utils.data import DataLoader
from toy_data import blobs, dice, noisy_masks

from medl2b import L2B, monai_iteration

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--tiny", action="store_true", help="CI-sized run (seconds)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
size, n_train, n_meta, n_test, epochs, warmup = (16, 16, 4, 8, 2, 1) if args.tiny else (32, 512, 16, 128, 36, 7)

x, clean = blobs(n_train, size, seed=args.seed)
y = noisy_masks(clean, seed=args.seed + 1)
x_meta, y_meta = blobs(n_meta, size, seed=args.seed + 2)
x_test, y_test = blobs(n_test, size, seed=args.seed + 3)
train_items = [{"image": x[i], "label": y[i][None].float()} for i in range(n_train)]
meta_items = [{"image": x_meta[i], "label": y_meta[i][None].float()} for i in range(n_meta)]


def fit(net: torch.nn.Module, l2b: L2B | None) -> torch.nn.Module:
    loader = DataLoader(train_items, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(args.seed))
    update = None
    if l2b is not None:
        meta_loader = DataLoader(meta_items, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
        update = monai_iteration(meta_loader, l2b, warmup_epochs=warmup)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=3e-3),
        loss_function=lambda logits, label: F.cross_entropy(logits, label[:, 0].long()),  # used by CE only
        iteration_update=update)
    trainer.run()
    if l2b is not None:  # the last iteration's weights, kept on the engine state
        step = trainer.state.l2b
        print(f"L2B last step: sum alpha {step.alpha.sum():.3f}, sum beta {step.beta.sum():.3f}, "
              f"meta loss {step.meta_loss:.3f}")
    return net


def test_dice(net: torch.nn.Module) -> float:
    net.eval()
    with torch.no_grad():
        return dice(net(x_test).argmax(1), y_test)


torch.manual_seed(args.seed)
net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1)
ce = fit(copy.deepcopy(net), None)
l2b = fit(copy.deepcopy(net), L2B(method="l2b", meta_loss="dice"))
print(f"CE {test_dice(ce):.3f} vs L2B {test_dice(l2b):.3f} (dice)")
