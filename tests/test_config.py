"""The config's groups: every key in exactly one, each group checked by its own validator, flat keys unchanged;
the task YAML states only what differs from the dataclass defaults; one table of task names."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from medl2b.config import (GROUPS, SEG_TASKS, TASKS, VALIDATORS, TrainConfig, load_config, load_config_file,
                           save_config, task_config_path)
from medl2b.data.datasets import TASK_KINDS
from medl2b.errors import InputError


def test_every_key_is_in_exactly_one_group():
    keys = [f.name for f in dataclasses.fields(TrainConfig)]
    grouped = [k for group in GROUPS.values() for k in group]
    assert sorted(grouped) == sorted(keys) and len(grouped) == len(set(grouped))
    assert set(VALIDATORS) == set(GROUPS)
    cfg = load_config("segmentation", profile="cpu")
    assert cfg.group("optimisation")["epochs"] == 12 and set(cfg.group("model")) == set(GROUPS["model"])


@pytest.mark.parametrize("group, key, value", [("data", "patch_fg", 1.5), ("model", "spatial_dims", 4),
                                               ("method", "meta_smooth", 2), ("optimisation", "batch_size", 0),
                                               ("runtime", "device", "tpu")])
def test_each_group_validator_names_its_bad_key(group, key, value):
    cfg = dataclasses.replace(load_config("segmentation"), **{key: value})
    with pytest.raises(InputError, match=key):
        VALIDATORS[group](cfg, "here")
    with pytest.raises(InputError, match=key):
        cfg.validate()
    others = [check for name, check in VALIDATORS.items() if name != group]
    for check in others:  # the other groups do not look at it
        check(cfg, "here")


def test_flat_keys_in_yaml_and_on_the_command_line(tmp_path):
    cfg = load_config("segmentation", profile="cpu", overrides={"lr": "0.5", "meta_smooth": 3, "seed": 7})
    assert (cfg.lr, cfg.meta_smooth, cfg.seed) == (0.5, 3, 7)
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(TrainConfig)}  # flat, as users write them
    assert load_config_file(tmp_path / "config.yaml") == cfg


def test_the_segmentation_yaml_states_only_what_differs_from_the_defaults():
    top = yaml.safe_load(task_config_path("segmentation").read_text())
    top.pop("profiles")
    defaults = TrainConfig()
    restated = [k for k, v in top.items() if getattr(defaults, k) == v]
    assert not restated, f"segmentation.yaml restates the defaults of {restated}"


def test_one_table_of_task_names():
    assert TASKS == tuple(TASK_KINDS)
    assert SEG_TASKS == ("segmentation", "prostate-seg")
    for task in TASKS:  # every name, alias or not, resolves to a config of its kind
        cfg = load_config(task)
        assert cfg.task == task and cfg.is_segmentation == (TASK_KINDS[task] == "segmentation")
    assert load_config("prostate-seg", profile="cpu").features == [8, 8, 16, 32, 64, 8]  # its prostate-cpu profile


def test_methods_come_from_the_method_table_and_old_names_resolve_on_load(tmp_path):
    """Every method of the table (and nothing else) is allowed and named in ``medl2b train --method``'s help;
    l2b+clean, the old name of l2b, resolves when any config is made and is saved as l2b."""
    import inspect
    import re

    from medl2b.cli import train_cmd
    from medl2b.config import METHODS
    from medl2b.meta.methods import ALIASES, METHODS as TABLE

    assert METHODS == tuple(TABLE) and "l2b-pure" in METHODS and "l2b+clean" not in METHODS
    help_text = inspect.signature(train_cmd).parameters["method"].default.help
    named = re.findall(r"(?:^|\| )([a-z0-9+-]+)", help_text)
    assert named == list(METHODS), named
    assert all(old in help_text for old in ALIASES)
    for make in (lambda: TrainConfig(method="l2b+clean"),
                 lambda: dataclasses.replace(TrainConfig(method="ce"), method="l2b+clean"),
                 lambda: load_config("segmentation", overrides={"method": "l2b+clean"})):
        cfg = make()
        assert cfg.method == "l2b" and cfg.uses_meta and cfg.training_set == "train+trusted"
    old = tmp_path / "config.yaml"
    save_config(load_config("segmentation"), old)
    old.write_text(old.read_text().replace("method: l2b\n", "method: l2b+clean\n"))
    cfg = load_config_file(old)
    assert cfg == load_config("segmentation") and cfg.method == "l2b"
    save_config(cfg, tmp_path / "again.yaml")
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["method"] == "l2b"
    assert load_config("segmentation", overrides={"method": "l2b", "meta_set": "gmm"}).training_set == "train"
    assert load_config("segmentation", overrides={"method": "l2b-pure"}).training_set == "train"
    with pytest.raises(InputError, match="method must be one of ce, bootstrap, l2rw, l2b, l2b-pure"):
        load_config("segmentation", overrides={"method": "l2b+trusted"})
