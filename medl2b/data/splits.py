"""Case splits: train / meta (clean, trusted) / test, by case and never by slice.

A split is ``{"train": [...], "meta": [...], "test": [...]}`` of case ids. It comes
from a JSON file (the user's ``--split-file``, or one packaged with medl2b for a
known public release) or from a seeded draw. A split file may also list cases under
``"unused"``: they are found in the release but left out of the prepared dataset
(to train on a subset with a fixed, committed split).
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medl2b.errors import InputError

__all__ = ["SPLIT_KEYS", "hold_out", "load_split", "split_cases", "trusted_split"]

SPLIT_KEYS = ("train", "meta", "test")


def load_split(path: str | os.PathLike | None = None, *, packaged: str | None = None) -> dict[str, list[str]]:
    """Read and check a split file (or the packaged ``medl2b/splits/<packaged>.json``).

    Returns:
        ``{"train", "meta", "test", "unused"}`` sorted lists; ``unused`` may be empty.

    Raises:
        InputError: the file is missing, not JSON, lacks a list, or lists a case twice.
    """
    if path is None:
        resource = importlib.resources.files("medl2b") / "splits" / f"{packaged}.json"
        text, where = resource.read_text(), f"medl2b/splits/{packaged}.json"
    else:
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "split file not found")
        text, where = path.read_text(), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(where, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise InputError(where, "a split file must hold a JSON object")
    splits = {}
    for key in (*SPLIT_KEYS, "unused"):
        value = data.get(key, [] if key == "unused" else None)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(where, f"needs a list of case ids under '{key}'")
        splits[key] = sorted(value)
    seen: dict[str, str] = {}
    for key, cases in splits.items():
        for case in cases:
            if case in seen:
                raise InputError(where, f"{case} is in both '{seen[case]}' and '{key}'")
            seen[case] = key
    return splits


def split_cases(cases: Sequence[str], *, meta_cases: int = 3, test_cases: int = 10,
                split_file: str | os.PathLike | None = None, seed: int = 0, raw: str | os.PathLike = ".",
                packaged: tuple[str, frozenset[str], tuple[int, int]] | None = None
                ) -> tuple[dict[str, list[str]], str]:
    """Split case ids into train/meta/test.

    * ``split_file`` given: use it; it must list exactly the found cases (``unused`` included).
    * ``packaged = (name, cases, (meta, test))``: when the found cases are exactly ``cases``
      and the counts asked for are the defaults ``(meta, test)``, use ``medl2b/splits/<name>.json``.
    * Otherwise a seeded draw: ``test_cases`` test, ``meta_cases`` meta, the rest train.

    Returns:
        ``(splits, source)``: ``splits`` has sorted ``train``, ``meta`` and ``test`` lists (and
        ``unused`` when a split file names such cases); ``source`` is ``"packaged"``, ``"file:<name>"`` or ``"seeded"``.
    """
    cases = sorted(cases)
    raw = Path(raw)
    use_packaged = (packaged is not None and split_file is None and set(cases) == set(packaged[1])
                    and (meta_cases, test_cases) == tuple(packaged[2]))
    if split_file is not None or use_packaged:
        splits = load_split(split_file, packaged=packaged[0] if use_packaged else None)
        where = split_file if split_file is not None else f"medl2b/splits/{packaged[0]}.json"
        listed = set().union(*splits.values())
        missing = sorted(listed - set(cases))
        unlisted = sorted(set(cases) - listed)
        if missing:
            raise InputError(where, f"lists cases not found in {raw}: {', '.join(missing[:5])}")
        if unlisted:
            raise InputError(where, f"does not list these cases found in {raw}: {', '.join(unlisted[:5])}"
                                    + (" ..." if len(unlisted) > 5 else ""))
        if not splits["train"]:
            raise InputError(where, "the train split is empty")
        if not splits["unused"]:
            del splits["unused"]
        return splits, ("packaged" if split_file is None else f"file:{Path(split_file).name}")
    need = test_cases + meta_cases + 1
    if len(cases) < need:
        raise InputError(raw, f"found {len(cases)} cases; {test_cases} test + {meta_cases} meta + at least 1 train "
                              f"needs {need}")
    order = [cases[i] for i in np.random.default_rng([seed, 1212]).permutation(len(cases))]
    return {"train": sorted(order[test_cases + meta_cases:]), "meta": sorted(order[test_cases:test_cases + meta_cases]),
            "test": sorted(order[:test_cases])}, "seeded"


def trusted_split(given: Sequence[str], trusted: Sequence[str], test: Sequence[str] = ()
                  ) -> tuple[dict[str, list[str]], str]:
    """The split of a user's own labels: the trusted cases are the clean meta set, the test cases (with
    reference labels of their own) the test set, every other case with a given label trains.

    Args:
        given: Cases with a given (possibly wrong) label.
        trusted: Cases with a trusted label (a subset of ``given``, or cases with no given label).
        test: Held-out cases with reference labels; they may not be in ``given`` or ``trusted``.

    Returns:
        ``(splits, "trusted")`` with sorted ``train``, ``meta`` and ``test`` lists.

    Raises:
        ValueError: a test case is also a training or trusted case (the callers name the file first).
    """
    trusted_set, test_set = set(trusted), set(test)
    both = sorted(test_set & (set(given) | trusted_set))
    if both:
        raise ValueError(f"test case {both[0]} is also a training case")
    return {"train": sorted(set(given) - trusted_set), "meta": sorted(trusted_set),
            "test": sorted(test_set)}, "trusted"


def hold_out(groups: Sequence, share: float, *, strata: Sequence | None = None, seed: int = 0) -> np.ndarray:
    """Which clean meta samples to hold out for validation only (config ``val_holdout``).

    Whole groups (a case, a lesion's images) go to one side. Within each stratum (a class; one stratum
    when ``strata`` is None) groups are drawn in a seeded order until at least ``share`` of the stratum's
    samples are held out, but never all of them: a stratum of one group stays on the meta side. The
    draw depends on ``seed`` only, not on the run's seed, so every method and seed validates on the
    same samples.

    Args:
        groups: Group id per sample.
        share: Share of each stratum to hold out, in [0, 1).
        strata: Stratum per sample (a group must lie in one stratum), or None.
        seed: Seed of the draw.

    Returns:
        Boolean mask, True = held out.
    """
    groups = np.asarray(groups)
    strata = np.zeros(len(groups), dtype=np.int64) if strata is None else np.asarray(strata)
    held = np.zeros(len(groups), dtype=bool)
    if share <= 0:
        return held
    rng = np.random.default_rng([seed, 4040])
    for stratum in sorted(set(strata.tolist())):
        members = strata == stratum
        names = sorted(set(groups[members].tolist()))
        if len(names) < 2:
            continue
        want = max(1, int(round(share * int(members.sum()))))
        for name in (names[i] for i in rng.permutation(len(names))):
            if held[members].sum() >= want:
                break
            rest = members & ~held & (groups != name)
            if not rest.any():  # would empty the meta side of this stratum
                break
            held |= members & (groups == name)
    return held
