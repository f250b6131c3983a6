"""Classification pieces of issue 26: class-balanced meta batches, macro AUROC, the validation metric,
and a committed split file, on phantom and on real ISIC 2019 files."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from medl2b.config import load_config
from medl2b.data.isic2019 import CLASSES, prepare_isic2019
from medl2b.errors import InputError
from medl2b.evaluate.metrics import one_vs_rest_auroc
from medl2b.train.metaset import ClassBalancedBatches
from medl2b.train.trainer import Trainer

REAL_ISIC = SHARED_DATA / "ISIC2019_HAM10000"
COMMITTED_SPLIT = Path(__file__).resolve().parents[1] / "data_prep" / "isic2019" / "split.json"


def test_class_balanced_batches_hold_every_class_equally():
    classes = np.array([0] * 50 + [1] * 4 + [2] * 2 + [3] * 1)
    batches = iter(ClassBalancedBatches(classes, 8, generator=torch.Generator().manual_seed(0)))
    seen_class1 = []
    for _ in range(6):
        batch = next(batches)
        counts = Counter(int(classes[i]) for i in batch)
        assert len(batch) == 8 and counts == {0: 2, 1: 2, 2: 2, 3: 2}
        seen_class1 += [i for i in batch if classes[i] == 1]
    # within a class, every member is drawn once before any repeats
    assert sorted(seen_class1[:4]) == [50, 51, 52, 53] and sorted(seen_class1[4:8]) == [50, 51, 52, 53]
    # a batch size that is not a multiple of the classes: the remainder goes to random classes
    counts = Counter(int(classes[i]) for i in next(iter(ClassBalancedBatches(
        classes, 10, generator=torch.Generator().manual_seed(1)))))
    assert sum(counts.values()) == 10 and sorted(counts.values()) == [2, 2, 3, 3]


def test_class_balanced_batches_are_seeded():
    classes = np.arange(40) % 5
    a = iter(ClassBalancedBatches(classes, 10, generator=torch.Generator().manual_seed(3)))
    b = iter(ClassBalancedBatches(classes, 10, generator=torch.Generator().manual_seed(3)))
    assert [next(a) for _ in range(5)] == [next(b) for _ in range(5)]


def test_one_vs_rest_auroc():
    y = np.array([0, 0, 1, 1, 2, 2])
    perfect = np.eye(4)[[0, 0, 1, 1, 2, 2]] * 0.9 + 0.025
    out = one_vs_rest_auroc(perfect, y, n_classes=4)
    assert out["auroc_macro"] == pytest.approx(1.0)
    assert out["auroc_per_class"][3] is None  # class 3 absent from the truth: no AUROC, not in the mean
    reversed_ = 1.0 - perfect
    assert one_vs_rest_auroc(reversed_, y, n_classes=4)["auroc_macro"] == pytest.approx(0.0)


def test_val_metric_and_meta_balance_config():
    cfg = load_config("skin-lesion-cls", profile="cpu")
    assert cfg.val_metric == "balanced_accuracy" and cfg.meta_balance and cfg.train_balance
    assert load_config("skin-lesion-cls").val_metric == "balanced_accuracy"  # the full YAML too
    with pytest.raises(InputError, match="val_metric"):
        load_config("skin-lesion-cls", overrides={"val_metric": "f1"})
    with pytest.raises(InputError, match="val_metric applies to classification"):
        load_config("segmentation", overrides={"val_metric": "balanced_accuracy"})
    with pytest.raises(InputError, match="meta_balance applies to classification"):
        load_config("segmentation", overrides={"meta_balance": True})


def _names(raw):
    with open(raw / "ISIC_2019_Training_GroundTruth.csv", newline="") as fh:
        return [row["image"] for row in csv.DictReader(fh)]


def test_split_file_decides_the_split(isic_raw, tmp_path):
    names = _names(isic_raw)
    split = {"train": names[:40], "meta": names[40:48], "test": names[48:60], "unused": names[60:]}
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    manifest = prepare_isic2019(isic_raw, tmp_path / "out", size=16, noise=0.4, split_file=path, progress=False)
    by_split = {k: sorted(manifest["images"][i]["image"] for i in v) for k, v in manifest["splits"].items()}
    assert by_split == {k: sorted(split[k]) for k in ("train", "meta", "test")}
    assert manifest["noise"]["n_flipped"] == round(0.4 * 40)
    flipped = [e for e in manifest["images"] if e["label"] != e["noisy_label"]]
    assert all(e["split"] == "train" for e in flipped)

    path.write_text(json.dumps({**split, "unused": names[61:]}))  # one image left out
    with pytest.raises(InputError, match="does not list"):
        prepare_isic2019(isic_raw, tmp_path / "out2", size=16, split_file=path, progress=False)
    path.write_text(json.dumps({**split, "test": names[48:60] + ["ISIC_9999999"]}))
    with pytest.raises(InputError, match="not in"):
        prepare_isic2019(isic_raw, tmp_path / "out3", size=16, split_file=path, progress=False)


@pytest.mark.skipif(not REAL_ISIC.exists(), reason="the shared real ISIC 2019 images are not beside the project")
def test_real_isic_images_with_the_committed_split_layout(tmp_path):
    """Twelve real HAM10000 JPEGs with the release's CSV rows, split by a split file as the benchmark does."""
    raw = tmp_path / "raw"
    (raw / "ISIC_2019_Training_Input").mkdir(parents=True)
    committed = json.loads(COMMITTED_SPLIT.read_text())
    rows = {}
    for name in ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Metadata.csv"):
        with open(REAL_ISIC / name, newline="") as fh:
            reader = list(csv.reader(fh))
        rows[name] = (reader[0], reader[1:])
    header, body = rows["ISIC_2019_Training_GroundTruth.csv"]
    by_class = {}
    for r in body:  # two images of each of the first classes met
        cls = CLASSES[int(np.argmax([float(v) for v in r[1:9]]))]
        if len(by_class.setdefault(cls, [])) < 2:
            by_class[cls].append(r)
    chosen = [r for rs in by_class.values() for r in rs][:12]
    names = [r[0] for r in chosen]
    for n in names:
        shutil.copy2(REAL_ISIC / "ISIC_2019_Training_Input" / f"{n}.jpg", raw / "ISIC_2019_Training_Input")
    for name, (head, all_rows) in rows.items():
        with open(raw / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(head)
            w.writerows([r for r in all_rows if r[0] in names] if name.endswith("Metadata.csv") else chosen)
    split = {"train": names[:8], "meta": names[8:10], "test": names[10:]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    manifest = prepare_isic2019(raw, tmp_path / "out", size=32, noise=0.25, split_file=tmp_path / "split.json",
                                progress=False)
    store = np.load(tmp_path / "out" / "images.npy")
    assert store.shape == (12, 32, 32, 3) and store.std() > 10  # real dermoscopy pixels
    assert [manifest["images"][i]["image"] for i in manifest["splits"]["test"]] == names[10:]
    assert manifest["noise"]["n_flipped"] == 2
    # the committed benchmark split covers every shared image exactly once
    listed = [n for k in ("train", "meta", "test") for n in committed[k]]
    assert len(listed) == len(set(listed)) == 8014 and set(names) <= set(listed)


def test_train_balance_draws_every_given_class_equally(isic_prepared, tmp_path):
    """``train_balance``: the training loader draws each given class about equally often, from one seed."""
    def drawn(out):
        cfg = load_config("skin-lesion-cls", profile="cpu", overrides={
            "data": str(isic_prepared), "out": str(out), "method": "ce", "train_balance": True, "batch_size": 8,
            "image_size": 32, "device": "cpu"})
        trainer = Trainer(cfg, progress=False)
        loader, _ = trainer._loaders(seed=5)
        return np.concatenate([b["label"].numpy() for _ in range(20) for b in loader])

    given = drawn(tmp_path / "a")
    natural = np.bincount(_given(isic_prepared))
    counts = np.bincount(given, minlength=len(natural))
    present = natural > 0
    share = counts[present] / counts.sum()
    assert np.all(np.abs(share - 1 / present.sum()) < 0.5 / present.sum())  # balanced, not natural
    assert np.array_equal(given, drawn(tmp_path / "b"))  # seeded
    with pytest.raises(InputError, match="train_balance applies to classification"):
        load_config("segmentation", overrides={"train_balance": True})


def _given(prepared: Path) -> list[int]:
    manifest = json.loads((prepared / "dataset.json").read_text())
    return [e["noisy_label"] for e in manifest["images"] if e["split"] == "train"]
