"""Metrics on hand-made volumes with known answers, checked against a brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from medl2b.evaluate.metrics import (
    EmptyPolicy,
    centreline_dice,
    classification_metrics,
    compute_case_metrics,
    compute_multiclass_case_metrics,
    confusion_matrix,
    summarize_cases,
    volume_diagonal,
)

ANISO = (0.5, 0.5, 3.0)


def _cube(shape=(12, 12, 12), lo=(4, 4, 3), size=4) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True
    return m


def _surface_points_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Foreground voxels with a background face-neighbour (outside counts as background), in mm."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask & ~inner) * np.asarray(spacing, dtype=float)


def _oracle(pred: np.ndarray, truth: np.ndarray, spacing) -> tuple[float, float]:
    """Brute-force HD95 (max of the two directed 95th percentiles) and symmetric ASD, in mm."""
    a, b = _surface_points_mm(pred, spacing), _surface_points_mm(truth, spacing)
    d = cdist(a, b)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    asd = np.concatenate([d_ab, d_ba]).mean()
    return float(hd95), float(asd)


# --- segmentation: known answers ------------------------------------------------------------------

def test_identical_masks_score_perfectly():
    m = _cube()
    r = compute_case_metrics(m, m, ANISO)
    assert r == {"dice": pytest.approx(1.0), "hd95": pytest.approx(0.0), "asd": pytest.approx(0.0), "status": "ok"}


@pytest.mark.parametrize("k", [1, 2])
def test_shift_along_z_is_measured_in_z_spacing(k):
    truth = _cube()
    pred = np.roll(truth, k, axis=2)
    r = compute_case_metrics(pred, truth, ANISO)
    hd95, asd = _oracle(pred, truth, ANISO)
    # The top face of pred lies k slices above truth: every truth voxel is at least k * sz away.
    assert r["hd95"] == pytest.approx(k * 3.0, abs=1e-4)
    assert r["hd95"] == pytest.approx(hd95, abs=1e-4)
    assert r["asd"] == pytest.approx(asd, abs=1e-4)
    assert r["dice"] == pytest.approx(2 * 16 * (4 - k) / 128)  # overlap (4 - k) slices of 4 x 4
    assert r["status"] == "ok"


def test_shift_along_x_is_measured_in_x_spacing():
    truth = _cube()
    pred = np.roll(truth, 2, axis=0)
    r = compute_case_metrics(pred, truth, ANISO)
    hd95, asd = _oracle(pred, truth, ANISO)
    assert r["hd95"] == pytest.approx(2 * 0.5, abs=1e-4)
    assert r["hd95"] == pytest.approx(hd95, abs=1e-4)
    assert r["asd"] == pytest.approx(asd, abs=1e-4)
    # Same voxel shift, different axis: the distances differ by the spacing, so spacing is honoured per axis.
    z = compute_case_metrics(np.roll(truth, 2, axis=2), truth, ANISO)
    assert z["hd95"] == pytest.approx(6 * r["hd95"], abs=1e-4)


def test_irregular_shapes_match_brute_force():
    x, y, z = np.mgrid[:16, :16, :12]
    truth = ((x - 7.5) / 5) ** 2 + ((y - 7.5) / 4) ** 2 + ((z - 5.5) / 3.5) ** 2 <= 1
    pred = ((x - 8.5) / 4.5) ** 2 + ((y - 7) / 4.5) ** 2 + ((z - 6.5) / 3) ** 2 <= 1
    spacing = (0.7, 1.1, 2.5)
    r = compute_case_metrics(pred.astype(np.uint8), truth.astype(np.uint8), spacing)
    hd95, asd = _oracle(pred, truth, spacing)
    assert r["hd95"] == pytest.approx(hd95, rel=1e-4)
    assert r["asd"] == pytest.approx(asd, rel=1e-4)
    assert r["dice"] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()), rel=1e-6)


# --- segmentation: empty-mask policy --------------------------------------------------------------

def test_volume_diagonal():
    assert volume_diagonal((10, 12, 8), ANISO) == pytest.approx(math.sqrt(5**2 + 6**2 + 24**2))


def test_missed_and_false_positive_score_the_diagonal():
    shape = (10, 12, 8)
    truth = _cube(shape, lo=(3, 3, 2), size=3)
    empty = np.zeros(shape, dtype=bool)
    diag = math.sqrt(5**2 + 6**2 + 24**2)
    missed = compute_case_metrics(empty, truth, ANISO)
    assert missed == {"dice": 0.0, "hd95": pytest.approx(diag), "asd": pytest.approx(diag), "status": "missed"}
    fp = compute_case_metrics(truth, empty, ANISO, empty_policy=EmptyPolicy.WORST)
    assert fp == {"dice": 0.0, "hd95": pytest.approx(diag), "asd": pytest.approx(diag), "status": "false_positive"}


def test_both_empty_is_perfect():
    empty = np.zeros((6, 6, 6), dtype=np.uint8)
    assert compute_case_metrics(empty, empty, ANISO) == {"dice": 1.0, "hd95": 0.0, "asd": 0.0, "status": "both_empty"}


def test_nan_policy_leaves_distances_nan_and_summary_counts_them():
    truth = _cube()
    empty = np.zeros_like(truth)
    rows = [
        compute_case_metrics(truth, truth, ANISO, empty_policy="nan"),
        compute_case_metrics(np.roll(truth, 1, axis=2), truth, ANISO, empty_policy="nan"),
        compute_case_metrics(empty, truth, ANISO, empty_policy="nan"),
        compute_case_metrics(truth, empty, ANISO, empty_policy="nan"),
        compute_case_metrics(empty, empty, ANISO, empty_policy="nan"),
    ]
    assert [r["status"] for r in rows] == ["ok", "ok", "missed", "false_positive", "both_empty"]
    assert [r["dice"] for r in rows[2:]] == [0.0, 0.0, 1.0]
    assert all(math.isnan(r["hd95"]) and math.isnan(r["asd"]) for r in rows[2:])

    s = summarize_cases(rows)
    assert s["n"] == 5
    assert s["n_failed"] == 2
    assert s["n_nan"] == {"dice": 0, "hd95": 3, "asd": 3}
    assert s["mean"]["hd95"] == pytest.approx((0.0 + 3.0) / 2, abs=1e-4)  # the finite values only
    assert s["mean"]["dice"] == pytest.approx((1 + 0.75 + 0 + 0 + 1) / 5)
    assert s["status_counts"] == {"ok": 2, "missed": 1, "false_positive": 1, "both_empty": 1}


def test_summarize_known_values_and_null():
    rows = [
        {"case": "a", "dice": 0.9, "hd95": 2.0, "asd": 1.0, "status": "ok"},
        {"case": "b", "dice": 0.7, "hd95": 4.0, "asd": None, "status": "ok"},
        {"case": "c", "dice": 0.0, "hd95": 30.0, "asd": float("inf"), "status": "missed"},
    ]
    s = summarize_cases(rows)
    assert s["mean"]["dice"] == pytest.approx(1.6 / 3)
    assert s["median"]["hd95"] == pytest.approx(4.0)
    assert s["std"]["hd95"] == pytest.approx(np.std([2.0, 4.0, 30.0]))
    assert s["mean"]["asd"] == pytest.approx(1.0)
    assert s["n_nan"]["asd"] == 2  # None and inf are both counted, not dropped silently
    assert s["n_failed"] == 1
    only_nan = summarize_cases([{"dice": float("nan"), "status": "both_empty"}], keys=("dice",))
    assert math.isnan(only_nan["mean"]["dice"]) and only_nan["n_nan"]["dice"] == 1


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        summarize_cases([])
    with pytest.raises(ValueError, match="status"):
        summarize_cases([{"dice": 1, "hd95": 0, "asd": 0, "status": "great"}])
    with pytest.raises(ValueError, match="'asd'"):
        summarize_cases([{"case": "x", "dice": 1, "hd95": 0, "status": "ok"}])


def test_bad_arguments_are_named():
    m = _cube()
    with pytest.raises(ValueError, match="spacing"):
        compute_case_metrics(m, m, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        compute_case_metrics(m, m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="same shape"):
        compute_case_metrics(m, m[:-1], ANISO)
    with pytest.raises(ValueError, match="pred"):
        compute_case_metrics(m * 0.5, m, ANISO)
    with pytest.raises(ValueError, match="empty_policy"):
        compute_case_metrics(m, m, ANISO, empty_policy="zero")


# --- segmentation: several foreground classes -----------------------------------------------------

HIPPO = {1: "Anterior", 2: "Posterior"}


def _two_class_truth(shape=(12, 12, 12)) -> np.ndarray:
    """Label map with a 4^3 cube of class 1 at (1, 1, 1) and one of class 2 at (6, 6, 6)."""
    truth = np.zeros(shape, dtype=np.int64)
    truth[_cube(shape, lo=(1, 1, 1), size=4)] = 1
    truth[_cube(shape, lo=(6, 6, 6), size=4)] = 2
    return truth


def test_multiclass_scores_each_class_and_averages():
    truth = _two_class_truth()
    pred = truth.copy()
    pred[truth == 2] = 0
    pred[np.roll(truth == 2, 1, axis=2)] = 2  # class 2 one slice (3 mm) up; class 1 exact
    r = compute_multiclass_case_metrics(pred, truth, ANISO, classes=HIPPO)
    assert list(r["per_class"]) == ["Anterior", "Posterior"]
    ant, post = r["per_class"]["Anterior"], r["per_class"]["Posterior"]
    assert ant == {"dice": pytest.approx(1.0), "hd95": pytest.approx(0.0), "asd": pytest.approx(0.0), "status": "ok"}
    _, asd = _oracle(pred == 2, truth == 2, ANISO)
    assert post["dice"] == pytest.approx(2 * 48 / 128)  # 3 of 4 slices of 4 x 4 overlap
    assert post["hd95"] == pytest.approx(3.0, abs=1e-4)
    assert post["asd"] == pytest.approx(asd, abs=1e-4)
    assert r["dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert r["hd95"] == pytest.approx(1.5, abs=1e-4)
    assert r["asd"] == pytest.approx(asd / 2, abs=1e-4)
    assert r["status"] == "ok"
    # The order of `classes` is the order of per_class; the scores follow the index, not the position.
    rev = compute_multiclass_case_metrics(pred, truth, ANISO, classes={2: "Posterior", 1: "Anterior"})
    assert list(rev["per_class"]) == ["Posterior", "Anterior"]
    assert rev["per_class"]["Posterior"]["dice"] == pytest.approx(0.75)


def test_multiclass_missed_class_scores_the_diagonal():
    truth = _two_class_truth()
    pred = np.where(truth == 2, 0, truth)  # Posterior never predicted
    diag = math.sqrt(6**2 + 6**2 + 36**2)
    r = compute_multiclass_case_metrics(pred, truth, ANISO, classes=HIPPO)
    assert r["per_class"]["Posterior"] == {"dice": 0.0, "hd95": pytest.approx(diag), "asd": pytest.approx(diag),
                                           "status": "missed"}
    assert r["status"] == "missed"
    assert r["dice"] == pytest.approx(0.5)
    assert r["hd95"] == pytest.approx(diag / 2) and r["asd"] == pytest.approx(diag / 2)

    # Under "nan" the missed class has no distance: the case mean is the other class's alone.
    n = compute_multiclass_case_metrics(pred, truth, ANISO, classes=HIPPO, empty_policy="nan")
    assert math.isnan(n["per_class"]["Posterior"]["hd95"]) and math.isnan(n["per_class"]["Posterior"]["asd"])
    assert n["dice"] == pytest.approx(0.5)
    assert n["hd95"] == pytest.approx(0.0) and n["asd"] == pytest.approx(0.0)
    assert n["status"] == "missed"
    # No class with a finite distance at all: NaN, not 0.
    empty = np.zeros_like(truth)
    none = compute_multiclass_case_metrics(empty, truth, ANISO, classes=HIPPO, empty_policy="nan")
    assert none["dice"] == 0.0 and math.isnan(none["hd95"]) and math.isnan(none["asd"])


def test_multiclass_case_status_is_the_worst_class():
    truth = _two_class_truth()
    only_1 = np.where(truth == 2, 0, truth)
    only_2 = np.where(truth == 1, 0, truth)
    empty = np.zeros_like(truth)

    def status(p, t):
        return compute_multiclass_case_metrics(p, t, ANISO, classes=HIPPO)["status"]

    assert status(only_2, only_1) == "missed"  # class 1 missed beats class 2 false positive
    assert status(truth, only_1) == "false_positive"
    assert status(only_1, only_1) == "ok"  # one class ok, the other both empty
    assert status(empty, empty) == "both_empty"
    r = compute_multiclass_case_metrics(empty, empty, ANISO, classes=HIPPO)
    assert (r["dice"], r["hd95"], r["asd"]) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("policy", ["worst", "nan"])
def test_multiclass_with_one_class_equals_binary(policy):
    x, y, z = np.mgrid[:16, :16, :12]
    truth = ((x - 7.5) / 5) ** 2 + ((y - 7.5) / 4) ** 2 + ((z - 5.5) / 3.5) ** 2 <= 1
    pred = ((x - 8.5) / 4.5) ** 2 + ((y - 7) / 4.5) ** 2 + ((z - 6.5) / 3) ** 2 <= 1
    spacing = (0.7, 1.1, 2.5)
    for p, t in ((pred, truth), (pred, np.zeros_like(truth)), (np.zeros_like(pred), np.zeros_like(truth))):
        binary = compute_case_metrics(p, t, spacing, empty_policy=policy)
        multi = compute_multiclass_case_metrics(p.astype(np.uint8), t.astype(np.uint8), spacing,
                                                classes={1: "prostate"}, empty_policy=policy)
        top = {k: multi[k] for k in ("dice", "hd95", "asd", "status")}
        for got in (top, multi["per_class"]["prostate"]):
            assert got["status"] == binary["status"]
            for k in ("dice", "hd95", "asd"):
                assert got[k] == binary[k] or (math.isnan(got[k]) and math.isnan(binary[k])), k


def test_multiclass_rejects_bad_labels_and_classes():
    truth = _two_class_truth()
    bad = truth.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"truth holds label values \[3\]"):
        compute_multiclass_case_metrics(truth, bad, ANISO, classes=HIPPO)
    with pytest.raises(ValueError, match=r"pred holds label values \[-1\]"):
        compute_multiclass_case_metrics(np.where(truth == 1, -1, truth), truth, ANISO, classes=HIPPO)
    with pytest.raises(ValueError, match=r"label values \[1\]"):  # class 1 present but not in classes
        compute_multiclass_case_metrics(truth, truth, ANISO, classes={2: "Posterior"})
    with pytest.raises(ValueError, match="integer"):
        compute_multiclass_case_metrics(truth * 0.5, truth, ANISO, classes=HIPPO)
    with pytest.raises(ValueError, match="same shape"):
        compute_multiclass_case_metrics(truth, truth[:-1], ANISO, classes=HIPPO)
    with pytest.raises(ValueError, match="background"):
        compute_multiclass_case_metrics(truth, truth, ANISO, classes={0: "bg", 1: "a", 2: "b"})
    with pytest.raises(ValueError, match="unique"):
        compute_multiclass_case_metrics(truth, truth, ANISO, classes={1: "a", 2: "a"})
    with pytest.raises(ValueError, match="classes"):
        compute_multiclass_case_metrics(truth, truth, ANISO, classes={})
    with pytest.raises(ValueError, match="empty_policy"):
        compute_multiclass_case_metrics(truth, truth, ANISO, classes=HIPPO, empty_policy="zero")


# --- classification -------------------------------------------------------------------------------

def test_classification_on_known_confusion():
    # class 3 never occurs in y_true; it is predicted once.
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 1, 2, 2, 2, 3, 0]
    cm = confusion_matrix(y_true, y_pred, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 1], [0, 0, 0, 0]]
    m = classification_metrics(np.array(y_true), np.array(y_pred), n_classes=4, class_names=["A", "B", "C", "D"])
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 4) / 3)  # D excluded
    assert m["per_class_recall"] == {"A": 0.75, "B": 0.5, "C": 0.5, "D": None}
    assert m["support"] == {"A": 4, "B": 2, "C": 4, "D": 0}
    assert m["confusion"] == cm.tolist() and m["n"] == 10


def test_classification_rejects_bad_labels():
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix([0, 1], [0, 5], 3)
    with pytest.raises(ValueError, match="class_names"):
        classification_metrics([0, 1], [0, 1], n_classes=2, class_names=["a"])
    with pytest.raises(ValueError, match="y_true"):
        classification_metrics(np.zeros((2, 2)), [0, 1], n_classes=2)


# --- clDice: hand-computed --------------------------------------------------------------------------

def test_cldice_of_one_pixel_lines_by_hand():
    """1-px lines are their own skeletons. Truth: row 5, columns 2..11 (10 px). Prediction: row 5, columns
    2..6 (5 px, inside the truth) and a false vessel on row 10, columns 2..16 (15 px). Tprec = |S(P) ∩ L| /
    |S(P)| = 5 / 20, Tsens = |S(L) ∩ P| / |S(L)| = 5 / 10, clDice = 2 · 1/4 · 1/2 / (1/4 + 1/2) = 1/3."""
    truth = np.zeros((14, 20), dtype=bool)
    truth[5, 2:12] = True
    pred = np.zeros_like(truth)
    pred[5, 2:7] = True
    pred[10, 2:17] = True
    assert centreline_dice(pred, truth) == pytest.approx(1 / 3)
    assert centreline_dice(truth, pred) == pytest.approx(1 / 3)  # symmetric: Tprec and Tsens swap
    # a 2-D image stored as an (X, Y, 1) volume is thinned in 2-D: the same value
    assert centreline_dice(pred[:, :, None], truth[:, :, None]) == pytest.approx(1 / 3)
    r = compute_case_metrics(pred[:, :, None], truth[:, :, None], (1.0, 1.0, 1.0), centreline=True)
    assert r["cldice"] == pytest.approx(1 / 3) and list(r) == ["dice", "hd95", "asd", "cldice", "status"]


def test_cldice_ignores_thickness_in_3d():
    """A 3 x 3 tube around a 1-voxel centreline: the tube's skeleton lies on the line (Tprec = 1) and the
    line inside the tube (Tsens = 1), so clDice = 1 where Dice = 2 · 10 / (90 + 10) = 0.2. Half the tube:
    Tprec = 1, Tsens = 5 / 10, clDice = 2 · 1 · 1/2 / (3/2) = 2/3."""
    line = np.zeros((7, 7, 12), dtype=bool)
    line[3, 3, 1:11] = True
    tube = np.zeros_like(line)
    tube[2:5, 2:5, 1:11] = True
    assert centreline_dice(tube, line) == pytest.approx(1.0)
    assert compute_case_metrics(tube, line, 1.0)["dice"] == pytest.approx(0.2)
    half = np.zeros_like(line)
    half[2:5, 2:5, 1:6] = True
    assert centreline_dice(half, line) == pytest.approx(2 / 3)


def test_cldice_empty_masks_and_classes():
    empty = np.zeros((8, 8, 3), dtype=bool)
    some = empty.copy()
    some[2:5, 3, 1] = True
    assert centreline_dice(empty, empty) == 1.0
    assert centreline_dice(empty, some) == 0.0 and centreline_dice(some, empty) == 0.0
    assert compute_case_metrics(empty, some, 1.0, centreline=True)["cldice"] == 0.0
    assert "cldice" not in compute_case_metrics(some, some, 1.0)  # only when asked
    labels = some.astype(np.uint8)
    labels[6, 1:7, 2] = 2
    pred = labels.copy()
    pred[6, 1:4, 2] = 0  # class 2: half its line missed -> Tprec 1, Tsens 1/2, clDice 2/3
    r = compute_multiclass_case_metrics(pred, labels, 1.0, classes={1: "a", 2: "b"}, centreline=True)
    assert r["per_class"]["a"]["cldice"] == 1.0 and r["per_class"]["b"]["cldice"] == pytest.approx(2 / 3)
    assert r["cldice"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="same shape"):
        centreline_dice(some, some[:-1])


def test_one_slice_masks_are_scored_in_their_plane():
    """A 2-D image stored as (X, Y, 1): HD95/ASD as in 2-D, not with every pixel on a 3-D surface."""
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    pred = np.zeros_like(truth)
    pred[12:30, 10:30] = True
    flat = compute_case_metrics(pred, truth, (1.0, 1.0))
    slab = compute_case_metrics(pred[..., None], truth[..., None], (1.0, 1.0, 3.0))
    assert flat["hd95"] == pytest.approx(2.0) and flat["asd"] > 0.2
    for key in ("dice", "hd95", "asd"):
        assert slab[key] == pytest.approx(flat[key])
