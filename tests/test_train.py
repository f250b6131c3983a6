"""The training engine on tiny phantoms: every method, both tasks, resume, NaN, configs, weights files."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medl2b.cli import app
from medl2b.config import load_config
from medl2b.errors import InputError
from medl2b.tasks import held_out
from medl2b.train.trainer import EpochStats, Trainer, train

TINY_SEG = {"features": [4, 4, 8, 8, 16, 4], "batch_size": 4, "meta_batch_size": 4, "steps_per_epoch": 2}
TINY_CLS = {"arch": "resnet50", "pretrained": "none", "width": 0.0625, "image_size": 32, "batch_size": 8, "meta_batch_size": 8, "steps_per_epoch": 2}


def seg_cfg(data, out, **kw):
    return load_config("prostate-seg", profile="cpu", overrides={
        "data": str(data), "out": str(out), "epochs": 2, "warmup_epochs": 1, "device": "cpu", **TINY_SEG, **kw})


def cls_cfg(data, out, **kw):
    return load_config("skin-lesion-cls", profile="cpu", overrides={
        "data": str(data), "out": str(out), "epochs": 2, "warmup_epochs": 1, "device": "cpu", **TINY_CLS, **kw})


def read_rows(run):
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("method", ["ce", "bootstrap", "l2rw", "l2b", "l2b-pure", "l2b-sum1"])
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_every_method_trains_on_both_tasks(task, method, promise12_prepared, isic_prepared, tmp_path):
    run = tmp_path / f"{task}-{method}"
    cfg = (seg_cfg(promise12_prepared, run, method=method) if task == "seg"
           else cls_cfg(isic_prepared, run, method=method))
    before = None
    trainer = Trainer(cfg, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    rows = read_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for name in ("config.yaml", "train.log", "checkpoint_latest.pt", "checkpoint_best.pt"):
        assert (run / name).stat().st_size > 0, name
    assert yaml.safe_load((run / "config.yaml").read_text())["method"] == method
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    warm, main = rows
    assert float(warm["alpha_sum"]) == pytest.approx(1.0) and float(warm["beta_sum"]) == 0.0  # warm-up = CE
    a, b = float(main["alpha_sum"]), float(main["beta_sum"])
    # a meta step whose weights are all zero is skipped and adds Σα + Σβ = 0 (docs/METHOD.md); every other
    # step's weights sum to 1, so the epoch mean is the share of steps taken
    steps, skipped = int(main["steps"]), int(main["skipped_steps"])
    taken = (steps - skipped) / steps
    if method == "ce":
        assert b == 0.0 and a == pytest.approx(1.0, abs=1e-4) and skipped == 0
    elif method == "l2rw":
        assert skipped < steps and b == 0.0 and a == pytest.approx(taken, abs=1e-4)
    elif method == "bootstrap":
        assert a == pytest.approx(0.8) and b == pytest.approx(0.2) and skipped == 0
    else:
        assert skipped < steps and a + b == pytest.approx(taken, abs=1e-4) and b > 0.0
    if method in ("l2rw", "l2b", "l2b-pure", "l2b-sum1"):
        assert math.isfinite(float(main["meta_loss"]))
    assert 0.0 <= float(main["val_score"]) <= 1.0
    assert warm["pseudo_differs_on_wrong"] == ""  # one loss term in warm-up: not defined (NaN, written empty)
    if task == "seg" and method == "l2b-sum1":
        # α + β = 1 per pixel: where the pseudo-label equals the wrong given label the split is 50/50, so the
        # β share on wrong pixels is exactly differ · (share where they differ) + (1 − differ) / 2
        d, s_d = float(main["pseudo_differs_on_wrong"]), float(main["beta_share_on_wrong_differ"])
        assert 0.0 < d <= 1.0 and 0.0 <= s_d <= 1.0
        assert float(main["beta_share_on_wrong"]) == pytest.approx(d * s_d + (1 - d) / 2, abs=1e-5)


def test_gmm_meta_set_logs_size_and_precision(promise12_prepared, tmp_path):
    run = tmp_path / "gmm"
    trainer = Trainer(seg_cfg(promise12_prepared, run, method="l2b", meta_set="gmm", epochs=3), progress=False)
    trainer.fit()
    given = trainer.task.train_slices.label
    chosen = trainer.online_meta
    assert len(chosen) > 0 and all(int(given[i].sum()) > 0 for i in chosen)  # never an empty slice
    assert len(chosen) < len(given)
    rows = read_rows(run)
    assert rows[0]["meta_size"] != ""  # selected after warm-up (epoch 1), used in epochs 2 and 3
    assert 0 < int(float(rows[0]["meta_size"])) <= 400
    assert 0.0 <= float(rows[0]["meta_precision"]) <= 1.0
    assert math.isfinite(float(rows[2]["meta_loss"]))
    assert "online meta set" in (run / "train.log").read_text()


def test_score_gated_warmup_waits_for_the_validation_score():
    cfg = load_config("prostate-seg", profile="cpu", overrides={"warmup_epochs": 2, "warmup_until_score": 0.3})
    assert cfg.in_warmup(1, [0.5])                     # the fixed minimum comes first
    assert cfg.in_warmup(2, [0.0, 0.1]) and cfg.in_warmup(5, [0.0, 0.1, 0.2, 0.25, 0.29])
    assert not cfg.in_warmup(3, [0.0, 0.1, 0.31])       # reached at epoch 3 -> meta from epoch 4
    assert not cfg.in_warmup(4, [0.0, 0.4, 0.1, 0.1])   # once reached, warm-up never comes back
    assert cfg.in_warmup(11, [0.0] * 11) and not cfg.in_warmup(12, [0.0] * 12)  # cap: half of 24 epochs
    capped = load_config("prostate-seg", profile="cpu", overrides={"warmup_until_score": 0.3, "warmup_max_epochs": 9})
    assert capped.in_warmup(8, [0.0] * 8) and not capped.in_warmup(9, [0.0] * 9)
    plain = load_config("prostate-seg", profile="cpu")
    assert plain.in_warmup(7, [1.0] * 7) and not plain.in_warmup(8, [0.0] * 8)
    with pytest.raises(InputError, match="warmup_until_score needs the clean meta set"):
        load_config("prostate-seg", overrides={"warmup_until_score": 0.3, "meta_set": "gmm"})
    with pytest.raises(InputError, match="warmup_max_epochs must be in"):
        load_config("prostate-seg", overrides={"warmup_max_epochs": 500})


@pytest.mark.parametrize("overrides,match", [
    ({"meta_smooth": 4}, "meta_smooth must be an odd size"), ({"meta_smooth": 0}, "meta_smooth must be an odd size"),
    ({"method": "ce+clean", "meta_set": "gmm"}, "only applies to meta-learning methods"),
    ({"pseudo_floor": 1.0}, "pseudo_floor must be in"), ({"pseudo_floor": -0.1}, "pseudo_floor must be in"),
])
def test_new_meta_keys_are_checked(overrides, match):
    with pytest.raises(InputError, match=match):
        load_config("prostate-seg", overrides=overrides)
    with pytest.raises(InputError, match="meta_smooth applies to segmentation"):
        load_config("skin-lesion-cls", overrides={"meta_smooth": 3})


def test_unreached_warmup_score_hands_over_at_the_cap(promise12_prepared, tmp_path):
    run = tmp_path / "gated"
    train(seg_cfg(promise12_prepared, run, method="l2b", epochs=3, warmup_until_score=1.0, warmup_max_epochs=2),
          progress=False)
    rows = read_rows(run)
    assert [int(r["warmup"]) for r in rows] == [1, 1, 0]
    assert [r["meta_loss"] == "" for r in rows] == [True, True, False]
    assert "epoch 3: warm-up over" in (run / "train.log").read_text()


@pytest.mark.parametrize("task", [pytest.param("seg", marks=pytest.mark.slow), "cls"])
def test_killed_and_resumed_run_matches_uninterrupted(task, promise12_prepared, isic_prepared, tmp_path):
    def cfg(out):
        if task == "seg":
            # the amortised step: v is reused on the second step of every epoch and refreshed on the
            # first, so a resume at an epoch boundary recomputes what the straight run did
            return seg_cfg(promise12_prepared, out, method="l2b", epochs=3, meta_set="gmm", meta_every=2)
        return cls_cfg(isic_prepared, out, method="l2b", epochs=3)

    straight = Trainer(cfg(tmp_path / "a"), progress=False)
    straight.fit()

    killed = Trainer(cfg(tmp_path / "b"), progress=False)
    original_end = killed.on_epoch_end

    def die_after_two(*args, **kwargs):
        row = original_end(*args, **kwargs)
        if killed.epoch == 2:
            raise KeyboardInterrupt
        return row

    killed.on_epoch_end = die_after_two
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert len(read_rows(tmp_path / "b")) == 2
    resumed = Trainer(cfg(tmp_path / "b"), resume=True, progress=False)
    assert resumed.epoch == 2
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the per-sample record of `medl2b audit` continues exactly as well
    assert straight.record.totals[2].sum() > 0 and torch.equal(straight.record.totals, resumed.record.totals)
    assert read_rows(tmp_path / "a") == [
        {**r, "time_s": a_r["time_s"]} for r, a_r in zip(read_rows(tmp_path / "b"), read_rows(tmp_path / "a"))]


def test_existing_run_needs_resume(promise12_prepared, tmp_path):
    """(--resume with no checkpoint yet starts the run: tests/test_chaos.py.)"""
    run = tmp_path / "r"
    train(seg_cfg(promise12_prepared, run, method="ce", epochs=1, warmup_epochs=0), progress=False)
    with pytest.raises(InputError, match="already holds a run"):
        Trainer(seg_cfg(promise12_prepared, run, method="ce"), progress=False)


def test_nan_loss_stops_the_cli_with_one_line(promise12_prepared, tmp_path):
    run = tmp_path / "nan"
    args = ["train", "--task", "prostate-seg", "--data", str(promise12_prepared), "--out", str(run),
            "--method", "l2b", "--profile", "cpu", "--epochs", "3", "--set", "warmup_epochs=1",
            "--set", "features=[4,4,8,8,16,4]", "--set", "steps_per_epoch=3", "--set", "batch_size=4",
            "--set", "clip_grad=0", "--set", "lr=1e25"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "NaN" in lines[0] and "epoch" in lines[0] and "step" in lines[0]
    assert "Traceback" not in result.output


def test_nan_mid_run_keeps_the_last_good_checkpoint(promise12_prepared, tmp_path):
    from medl2b.errors import TrainingError

    run = tmp_path / "nan2"
    trainer = Trainer(seg_cfg(promise12_prepared, run, method="l2b", epochs=3), progress=False)
    original_step = trainer.train_step

    def poisoned(batch, meta_batch, stats, **kwargs):
        if trainer.epoch == 1:  # the second epoch: corrupt the weights, as a diverging run would
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))
        return original_step(batch, meta_batch, stats, **kwargs)

    trainer.train_step = poisoned
    with pytest.raises(TrainingError, match="epoch 2 step 1"):
        trainer.fit()
    state = torch.load(run / "checkpoint_latest.pt", weights_only=False)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(read_rows(run)) == 1


def test_config_keys_are_checked_and_flags_override(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nlearning_rate: 0.1\n")
    with pytest.raises(InputError, match="unknown config key 'learning_rate'") as err:
        load_config("prostate-seg", config_file=bad)
    assert str(bad) in str(err.value)
    cfg = load_config("prostate-seg", profile="cpu", config_file=None, overrides={"lr": "0.3", "method": "ce"})
    assert cfg.lr == 0.3 and cfg.method == "ce" and cfg.epochs == 24  # the cpu profile's epochs
    assert load_config("prostate-seg").epochs == 50
    with pytest.raises(InputError, match="method must be one of"):
        load_config("prostate-seg", overrides={"method": "mixup"})
    result = CliRunner().invoke(app, ["train", "--task", "prostate-seg", "--out", str(tmp_path / "x"),
                                      "--set", "bogus=1"])
    assert result.exit_code == 2 and "unknown config key 'bogus'" in result.output
    assert "Traceback" not in result.output


def test_pretrained_weights_load_strictly_and_bad_files_are_named(tmp_path):
    from medl2b.models import build_resnet50

    reference = build_resnet50(num_classes=1000)
    good = tmp_path / "resnet50_imagenet.pth"
    torch.save(reference.state_dict(), good)
    model = build_resnet50(num_classes=8, pretrained=good)
    assert model.fc.out_features == 8
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert len(reference.state_dict()) == 320  # torchvision's ResNet-50 layout
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(InputError, match="keys do not fit") as err:
        build_resnet50(num_classes=8, pretrained=wrong)
    assert "wrong.pth" in str(err.value)
    with pytest.raises(InputError, match="not found"):
        build_resnet50(num_classes=8, pretrained=tmp_path / "missing.pth")


@pytest.mark.parametrize("task", [pytest.param("seg", marks=pytest.mark.slow), "cls"])
def test_clean_case_baselines_train_on_the_right_samples(task, promise12_prepared, isic_prepared, tmp_path):
    """ce+clean = noisy train split + clean meta split; meta-only = the clean meta split alone."""
    sizes = {}
    for method in ("ce", "ce+clean", "meta-only"):
        run = tmp_path / f"{task}-{method}"
        cfg = (seg_cfg(promise12_prepared, run, method=method) if task == "seg"
               else cls_cfg(isic_prepared, run, method=method))
        trainer = Trainer(cfg, progress=False)
        sizes[method] = len(trainer.task.train_set)
        if method != "ce":
            labels = trainer.task.train_slices if task == "seg" else trainer.task.train_images
            meta = trainer.task.meta_slices if task == "seg" else trainer.task.meta_images
            if task == "cls":
                assert (labels.label[-len(meta):] == meta.clean).all()
            else:  # slices of different sizes (issue 39): item by item
                offset = len(labels) - len(meta)
                assert all(torch.equal(labels.sample(offset + k)[1], meta.sample(k)[2]) for k in range(len(meta)))
        trainer.fit()
        assert float(read_rows(run)[-1]["beta_sum"]) == 0.0  # plain CE weights
    n_meta = sizes["meta-only"]
    assert n_meta > 0 and sizes["ce+clean"] == sizes["ce"] + n_meta


def _train_split_size(task, data):
    """The number of samples of the (noisy) train split alone."""
    if task == "seg":
        from medl2b.data.datasets import load_slices

        return len(load_slices(data, "train"))
    from medl2b.data.datasets import load_isic

    return len(load_isic(data, "train"))


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_l2b_trains_on_its_trusted_meta_cases(task, promise12_prepared, isic_prepared, tmp_path):
    """l2b with a clean meta set: the clean meta cases join the training data (after the train split) marked
    trusted (full weight on their given label) and stay the meta set; the noisy samples get meta weights; the
    statistics leave the trusted out."""
    run = tmp_path / f"{task}-l2b"
    data = promise12_prepared if task == "seg" else isic_prepared
    cfg = seg_cfg(data, run, method="l2b") if task == "seg" else cls_cfg(data, run, method="l2b")
    assert cfg.meta_set == "clean" and cfg.training_set == "train+trusted"
    trainer = Trainer(cfg, progress=False)
    train = trainer.task.train_slices if task == "seg" else trainer.task.train_images
    meta = trainer.task.meta_slices if task == "seg" else trainer.task.meta_images
    n_meta = len(meta)
    assert n_meta > 0 and trainer.task.meta_set is not None
    n_train = _train_split_size(task, data)
    assert len(train) == len(trainer.task.train_plain) == n_train + n_meta == trainer.record.totals.shape[1]
    assert trainer.task.trusted_samples() == n_meta
    trusted = np.asarray(train.trusted)
    assert trusted[-n_meta:].all() and not trusted[:-n_meta].any()
    assert bool(trainer.task.train_set[len(train) - 1]["trusted"]) and not trainer.task.train_set[0]["trusted"]
    # one step with a batch of four noisy samples and a trusted one: the trusted one gets plain CE's weight
    collate = getattr(trainer.task, "collate", None) or torch.utils.data.default_collate  # seg: padded per batch
    batch = collate([trainer.task.train_set[i] for i in (0, 1, 2, 3, len(train) - 1)])
    meta_batch = collate([trainer.task.meta_set[0], trainer.task.meta_set[1]])
    seen = {}
    original = trainer._record_weights
    trainer._record_weights = lambda stats, weights, *rest: (seen.update(w=weights), original(stats, weights, *rest))
    trainer.train_step(batch, meta_batch, EpochStats(warmup=False), warm=False, step=0)
    alpha, beta = seen["w"]
    fixed = torch.full_like(alpha[0], 1.0 / alpha.numel())
    assert torch.allclose(alpha[-1], fixed) and float(beta[-1].sum()) == 0.0
    assert not (torch.allclose(alpha[:-1], fixed) and float(beta[:-1].sum()) == 0.0)  # the noisy ones: meta weights
    trainer.fit()
    rows = read_rows(run)
    assert float(rows[-1]["beta_sum"]) > 0.0 and rows[-1]["warmup"] == "0"
    assert f"{n_train + n_meta} training samples ({n_meta} of them trusted)" in (run / "train.log").read_text()


@pytest.mark.parametrize("task", ["seg", "cls"])
@pytest.mark.parametrize("method, meta_set", [("l2b-pure", "clean"), ("l2b", "gmm"), ("l2b-pure", "gmm")])
def test_l2b_trains_on_the_train_split_alone_without_trusted_cases(task, method, meta_set, promise12_prepared,
                                                                   isic_prepared, tmp_path):
    """l2b-pure (the paper's form) never trains on its clean meta cases; l2b with meta_set gmm has none to
    train on (its meta set is picked from the training data): both train on the train split alone, and no
    step gets a trusted mask."""
    data = promise12_prepared if task == "seg" else isic_prepared
    make = seg_cfg if task == "seg" else cls_cfg
    cfg = make(data, tmp_path / "run", method=method, meta_set=meta_set)  # accepted
    assert cfg.method == method and cfg.training_set == "train"
    trainer = Trainer(cfg, progress=False)
    train = trainer.task.train_slices if task == "seg" else trainer.task.train_images
    assert len(train) == len(trainer.task.train_plain) == _train_split_size(task, data)
    assert not np.asarray(train.trusted).any() and trainer.task.trusted_samples() == 0
    assert (trainer.task.meta_set is not None) == (meta_set == "clean")
    masks = []
    original = trainer.engine.forward

    def spy(*args, **kwargs):
        masks.append(kwargs.get("trusted"))
        return original(*args, **kwargs)

    trainer.engine.forward = spy
    trainer.fit()
    assert masks and all(m is None for m in masks)
    assert math.isfinite(float(read_rows(tmp_path / "run")[-1]["meta_loss"]))


def test_l2b_plus_clean_is_read_as_l2b_and_trains_the_same(isic_prepared, tmp_path):
    """l2b+clean, the old name of l2b: a config (or a run folder's config.yaml) that says it loads as l2b, is saved
    as l2b and trains exactly as l2b does."""
    from medl2b.config import load_config_file, save_config

    old = tmp_path / "old.yaml"
    cfg = cls_cfg(isic_prepared, tmp_path / "alias", method="l2b+clean", epochs=3)
    save_config(cfg, old)
    old.write_text(old.read_text().replace("method: l2b\n", "method: l2b+clean\n"))
    assert "method: l2b+clean" in old.read_text()
    loaded = load_config_file(old)
    assert cfg.method == loaded.method == "l2b" and loaded == cfg
    for name, c in (("alias", loaded), ("l2b", cls_cfg(isic_prepared, tmp_path / "l2b", method="l2b", epochs=3))):
        train(c, progress=False)
    assert yaml.safe_load((tmp_path / "alias" / "config.yaml").read_text())["method"] == "l2b"
    same = lambda run: [{k: v for k, v in r.items() if k != "time_s"} for r in read_rows(run)]  # noqa: E731
    assert same(tmp_path / "alias") == same(tmp_path / "l2b") and read_rows(tmp_path / "l2b")[-1]["meta_loss"] != ""
    # a finished run whose config.yaml still says l2b+clean resumes (nothing to do) and is the same method
    (tmp_path / "alias" / "config.yaml").write_text(old.read_text())
    row = train(cls_cfg(isic_prepared, tmp_path / "alias", method="l2b+clean", epochs=3), resume=True,
                progress=False)
    assert int(row["epoch"]) == 3


def test_a_pure_l2b_run_from_before_resumes_only_as_l2b_pure(isic_prepared, tmp_path):
    """A run folder of l2b from before l2b trained on its trusted cases says method l2b but recorded the train
    split alone: --resume names the fix (method l2b-pure in its config.yaml) instead of training another
    method on it, and continues once it is made."""
    run = tmp_path / "old"
    train(cls_cfg(isic_prepared, run, method="l2b-pure", epochs=2), progress=False)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("method: l2b-pure\n", "method: l2b\n"))
    with pytest.raises(InputError, match="write method: l2b-pure into") as err:
        train(cls_cfg(isic_prepared, run, epochs=3), resume=True, progress=False)
    assert err.value.where == "--method" and str(config) in str(err.value)
    config.write_text(config.read_text().replace("method: l2b\n", "method: l2b-pure\n"))
    row = train(cls_cfg(isic_prepared, run, method="l2b-pure", epochs=3), resume=True, progress=False,
                asked={"epochs": 3})
    assert int(row["epoch"]) == 3


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_val_holdout_validates_on_clean_cases_kept_out_of_meta_step_and_training(task, promise12_prepared,
                                                                                  isic_prepared, tmp_path):
    """val_holdout: part of the clean split validates only; the rest is the meta set and what l2b
    trains on. The same part for every seed."""
    def task_of(seed, **kw):
        cfg = (seg_cfg(promise12_prepared, tmp_path / f"{task}-{seed}", method="l2b", seed=seed, **kw)
               if task == "seg" else cls_cfg(isic_prepared, tmp_path / f"{task}-{seed}", method="l2b",
                                             seed=seed, **kw))
        return Trainer(cfg, progress=False)

    plain = task_of(0).task
    t = task_of(0, val_holdout=0.5)
    if task == "seg":
        full, meta, val = plain.meta_slices, t.task.meta_slices, t.task.val_slices
        assert plain.val_slices is full
        names = lambda s: set(s.case)  # noqa: E731
        assert len(set(val.case)) == len(set(full.case)) // 2
    else:
        full, meta, val = plain.meta_images, t.task.meta_images, t.task.val_images
        assert plain.val_images is full
        names = lambda s: set(s.index.tolist())  # noqa: E731
        assert set(val.clean.tolist()) <= set(meta.clean.tolist())  # every held-out class keeps meta images
    assert names(meta) and names(val) and not names(meta) & names(val)
    assert names(meta) | names(val) == names(full)
    train = t.task.train_slices if task == "seg" else t.task.train_images
    assert len(train) == len(plain.train_slices if task == "seg" else plain.train_images) - len(full) + len(meta)
    assert np.asarray(train.trusted).sum() == len(meta)  # only the meta part is trained on
    assert len(t.task.meta_set) <= len(meta)
    other = task_of(1, val_holdout=0.5).task
    assert names(other.val_slices if task == "seg" else other.val_images) == names(val)
    t.fit()
    assert math.isfinite(float(read_rows(tmp_path / f"{task}-0")[-1]["val_score"]))


def test_val_holdout_is_checked(promise12_prepared, tmp_path):
    with pytest.raises(InputError, match="val_holdout must be in"):
        seg_cfg(promise12_prepared, tmp_path / "x", val_holdout=1.0)
    cfg = seg_cfg(promise12_prepared, tmp_path / "y", val_holdout=0.5)
    with pytest.raises(InputError, match="val_holdout 0.5 needs at least 2"):
        held_out(cfg, ["case00"], None)  # one clean case: nothing can be held out


def test_meta_batches_come_from_foreground_slices(promise12_prepared, tmp_path):
    cfg = seg_cfg(promise12_prepared, tmp_path / "fg", method="l2b")
    meta = Trainer(cfg, progress=False).task.meta_set
    clean = [int(meta[i]["clean"].sum()) for i in range(len(meta))]
    assert clean and min(clean) > 0
    cfg_all = seg_cfg(promise12_prepared, tmp_path / "all", method="l2b", meta_foreground=False)
    everything = Trainer(cfg_all, progress=False).task.meta_set
    assert len(everything) > len(meta)  # the phantom meta cases also hold empty slices


@pytest.mark.slow
def test_same_command_twice_gives_identical_metrics(promise12_prepared, tmp_path):
    """Reproducibility on one machine: two 3-epoch l2b runs, same seed, same metrics.csv (but the time)."""
    tables = []
    for name in ("a", "b"):
        run = tmp_path / name
        train(seg_cfg(promise12_prepared, run, method="l2b", epochs=3, meta_loss="dice"), progress=False)
        tables.append([{k: v for k, v in row.items() if k != "time_s"} for row in read_rows(run)])
    assert len(tables[0]) == 3 and tables[0] == tables[1]
    assert tables[0][-1]["meta_loss"] != ""


@pytest.mark.slow
def test_segmentation_l2b_normalises_per_pixel_by_default(promise12_prepared, tmp_path):
    """The segmentation default ``meta_normalise: element`` makes ``l2b-pure`` the very computation of
    ``l2b-sum1`` (identical metrics); ``batch`` is another one. Classification keeps ``batch``."""
    assert load_config("segmentation", profile="cpu").meta_normalise == "element"
    assert load_config("prostate-seg").meta_normalise == "element"
    assert load_config("skin-lesion-cls", profile="cpu").meta_normalise == "batch"
    tables = {}
    for name, method, extra in (("l2b", "l2b-pure", {}), ("sum1", "l2b-sum1", {}),
                                ("batch", "l2b-pure", {"meta_normalise": "batch"})):
        run = tmp_path / name
        train(seg_cfg(promise12_prepared, run, method=method, **extra), progress=False)
        tables[name] = [{k: v for k, v in row.items() if k != "time_s"} for row in read_rows(run)]
    assert tables["l2b"] == tables["sum1"]
    assert tables["l2b"][-1]["train_loss"] != tables["batch"][-1]["train_loss"]
    with pytest.raises(InputError, match="meta_normalise"):
        load_config("segmentation", overrides={"meta_normalise": "pixel"})


@pytest.mark.slow
def test_meta_every_fetches_a_meta_batch_only_when_it_refreshes(promise12_prepared, tmp_path):
    """meta_every=2 with 4 steps an epoch: 2 meta batches an epoch (refresh on steps 1 and 3), the
    same weights as meta_every=1 on the first step, and a different run afterwards."""
    trainer = Trainer(seg_cfg(promise12_prepared, tmp_path / "k2", method="l2b", meta_every=2, steps_per_epoch=4),
                      progress=False)
    fresh = []
    original = trainer.engine.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        if not kwargs["warm"]:
            fresh.append((args[2] is not None, out[3].fresh))
        return out

    trainer.engine.forward = spy
    trainer.fit()
    assert fresh == [(True, True), (False, False), (True, True), (False, False)]
    train(seg_cfg(promise12_prepared, tmp_path / "k1", method="l2b", steps_per_epoch=4), progress=False)
    assert read_rows(tmp_path / "k2")[0] == {**read_rows(tmp_path / "k1")[0], "time_s": read_rows(tmp_path / "k2")[0]["time_s"]}
    assert read_rows(tmp_path / "k2")[1]["train_loss"] != read_rows(tmp_path / "k1")[1]["train_loss"]
    with pytest.raises(InputError, match="meta_every"):
        load_config("segmentation", overrides={"meta_every": 2, "meta_impl": "reference"})
    with pytest.raises(InputError, match="meta_every"):
        load_config("segmentation", overrides={"meta_every": 0})


def test_classification_batches_are_augmented_on_the_device_only_when_asked(isic_prepared, tmp_path):
    """ClassificationTask.augment_batch: items are served plain; batches are augmented on the device, seeded by
    torch, and left alone with augment off."""
    on = Trainer(cls_cfg(isic_prepared, tmp_path / "on"), progress=False).task
    off = Trainer(cls_cfg(isic_prepared, tmp_path / "off", augment=False), progress=False).task
    batch = torch.utils.data.default_collate([on.train_set[i] for i in range(16)])
    assert torch.equal(batch["image"], torch.utils.data.default_collate([on.train_set[i] for i in range(16)])["image"])
    assert off.augment_batch(batch) is batch
    torch.manual_seed(0)
    out = on.augment_batch(batch)
    assert torch.equal(out["label"], batch["label"]) and out["image"].shape == batch["image"].shape
    assert not torch.allclose(out["image"], batch["image"])
    torch.manual_seed(0)
    assert torch.equal(on.augment_batch(batch)["image"], out["image"])


def _torchvision_resnet50_keys() -> set[str]:
    """torchvision's ``resnet50().state_dict()`` key names, written out from its documented layout (torchvision
    itself does not import beside this torch build): stem, 4 stages of [3, 4, 6, 3] bottlenecks, each with three
    conv+bn pairs and a downsample (conv, bn) on its first block, then ``fc``."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{p}" for p in bn), "fc.weight", "fc.bias"}
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            pre = f"layer{stage}.{b}."
            for i in (1, 2, 3):
                keys |= {f"{pre}conv{i}.weight", *(f"{pre}bn{i}.{p}" for p in bn)}
            if b == 0:
                keys |= {f"{pre}downsample.0.weight", *(f"{pre}downsample.1.{p}" for p in bn)}
    return keys


def test_resnet50_takes_torchvision_key_names():
    """The registry's resnet50 has exactly torchvision's state-dict key names, so a torchvision ImageNet file
    loads strictly."""
    from medl2b.models import build_resnet50

    keys = set(build_resnet50(num_classes=1000).state_dict())
    assert keys == _torchvision_resnet50_keys()
    assert len(keys) == 320
