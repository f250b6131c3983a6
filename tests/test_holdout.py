"""hold_out: the clean cases kept for validation only (config val_holdout)."""

from __future__ import annotations

import numpy as np

from medl2b.data.splits import hold_out


def test_whole_groups_per_stratum_never_all_and_seeded():
    strata = np.repeat([0, 1, 2, 3], [40, 12, 3, 1])  # a large class, two small ones, a singleton
    groups = np.array([f"c{c}-l{i // 2}" for c, i in zip(strata, range(len(strata)))])  # 2 images per lesion
    held = hold_out(groups, 0.25, strata=strata)
    for g in set(groups.tolist()):  # a lesion's images stay together
        assert len(set(held[groups == g].tolist())) == 1
    for c in (0, 1, 2):
        n, h = int((strata == c).sum()), int(held[strata == c].sum())
        assert 0 < h < n  # something held out, something left for the meta set
        assert h >= round(0.25 * n) and h <= round(0.25 * n) + 2  # the share, up to one lesion more
    assert not held[strata == 3].any()  # a class of one lesion stays on the meta side
    assert np.array_equal(hold_out(groups, 0.25, strata=strata), held)
    assert not np.array_equal(hold_out(groups, 0.25, strata=strata, seed=1), held)
    assert not hold_out(groups, 0.0, strata=strata).any()


def test_cases_without_strata():
    cases = [f"case{i:02d}" for i in range(4)]
    held = hold_out(cases, 0.25)
    assert held.sum() == 1
    assert hold_out(cases, 0.5).sum() == 2
    assert not hold_out(["only"], 0.5).any()
