"""Report files, run comparison and figures, on tiny hand-made inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medl2b.errors import InputError
from medl2b.evaluate.metrics import classification_metrics
from medl2b.evaluate.report import compare_runs, write_cls_report, write_seg_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SEG_ROWS = [
    {"case": "Case01", "dice": 0.9, "hd95": 3.0, "asd": 1.0, "status": "ok"},
    {"case": "Case02", "dice": 0.7, "hd95": 5.0, "asd": 2.0, "status": "ok"},
    {"case": "Case03", "dice": 0.0, "hd95": float("nan"), "asd": float("nan"), "status": "missed"},
]


NAN = float("nan")
HIPPO_ROWS = [  # two foreground classes; case values are the means of the finite per-class values
    {"case": "hip1", "dice": 0.85, "hd95": 2.0, "asd": 0.5, "status": "ok",
     "per_class": {"Anterior": {"dice": 0.8, "hd95": 3.0, "asd": 0.6, "status": "ok"},
                   "Posterior": {"dice": 0.9, "hd95": 1.0, "asd": 0.4, "status": "ok"}}},
    {"case": "hip2", "dice": 0.3, "hd95": 5.0, "asd": 1.0, "status": "missed",
     "per_class": {"Anterior": {"dice": 0.6, "hd95": 5.0, "asd": 1.0, "status": "ok"},
                   "Posterior": {"dice": 0.0, "hd95": NAN, "asd": NAN, "status": "missed"}}},
    {"case": "hip3", "dice": 0.75, "hd95": 3.0, "asd": 0.7, "status": "ok",
     "per_class": {"Anterior": {"dice": 0.7, "hd95": 4.0, "asd": 0.8, "status": "ok"},
                   "Posterior": {"dice": 0.8, "hd95": 2.0, "asd": 0.6, "status": "ok"}}},
]


def _strict_json(path):
    def reject(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=reject)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# --- segmentation report ----------------------------------------------------------------------------

def test_seg_report_with_cldice(tmp_path):
    rows = [{**r, "cldice": c} for r, c in zip(SEG_ROWS, (0.8, 0.6, 0.0))]
    s = write_seg_report(tmp_path, per_case=rows, split="test", checkpoint="c.pt", empty_policy="nan")
    assert s["mean"]["cldice"] == pytest.approx(1.4 / 3) and s["n_nan"]["cldice"] == 0
    csv_rows = _read_csv(tmp_path / "metrics.csv")
    assert csv_rows[0] == ["case", "dice", "hd95", "asd", "cldice", "status"]
    assert csv_rows[3] == ["Case03", "0.0", "", "", "0.0", "missed"]
    md = (tmp_path / "report.md").read_text()
    assert "clDice (%)" in md and "- clDice (%): 46.67 ±" in md
    multi = [{**r, "cldice": 0.5, "per_class": {n: {**v, "cldice": 0.5} for n, v in r["per_class"].items()}}
             for r in HIPPO_ROWS]
    s = write_seg_report(tmp_path / "m", per_case=multi, split="test", checkpoint="c.pt")
    assert s["per_class"]["Anterior"]["mean"]["cldice"] == 0.5
    assert "cldice_Posterior" in _read_csv(tmp_path / "m" / "metrics.csv")[0]


def test_write_seg_report(tmp_path):
    out = tmp_path / "run" / "eval"
    ret = write_seg_report(out, per_case=SEG_ROWS, split="test", checkpoint="run/checkpoint_best.pth",
                           extra={"dataset": "promise12"}, empty_policy="nan")
    s = _strict_json(out / "summary.json")
    assert s == ret
    for key in ("split", "checkpoint", "per_case", "mean", "std", "median", "n_cases", "n_failed", "n_nan",
                "empty_policy", "dataset"):
        assert key in s
    assert s["split"] == "test" and s["empty_policy"] == "nan" and s["dataset"] == "promise12"
    assert s["n_cases"] == 3 and s["n_failed"] == 1
    assert s["n_nan"] == {"dice": 0, "hd95": 1, "asd": 1}
    assert s["mean"]["dice"] == pytest.approx(1.6 / 3)
    assert s["mean"]["hd95"] == pytest.approx(4.0) and s["std"]["hd95"] == pytest.approx(1.0)
    assert s["per_case"][2] == {"case": "Case03", "dice": 0.0, "hd95": None, "asd": None, "status": "missed"}

    rows = _read_csv(out / "metrics.csv")
    assert rows[0] == ["case", "dice", "hd95", "asd", "status"]
    assert len(rows) == 1 + len(SEG_ROWS)
    assert rows[3] == ["Case03", "0.0", "", "", "missed"]

    md = (out / "report.md").read_text()
    assert "| Case | Dice (%) | HD95 (mm) | ASD (mm) | Status |" in md
    assert "| Case02 | 70.00 | 5.00 | 2.00 | ok |" in md
    assert "53.33 ± " in md and "4.00 ± 1.00" in md
    assert "policy `nan`" in md and "1 of 3" in md
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_write_seg_report_all_nan_metric_is_null(tmp_path):
    rows = [{"case": "a", "dice": 0.0, "hd95": float("nan"), "asd": float("inf"), "status": "missed"}]
    s = write_seg_report(tmp_path, per_case=rows, split="val", checkpoint="ckpt.pth")
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert s["mean"]["hd95"] is None and s["n_nan"]["asd"] == 1


def test_write_seg_report_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_seg_report(tmp_path, per_case=[SEG_ROWS[0], SEG_ROWS[0]], split="test", checkpoint="c")
    with pytest.raises(ValueError, match="extra"):
        write_seg_report(tmp_path, per_case=SEG_ROWS, split="test", checkpoint="c", extra={"mean": 1})
    with pytest.raises(ValueError, match="empty_policy"):
        write_seg_report(tmp_path, per_case=SEG_ROWS, split="test", checkpoint="c", empty_policy="zero")
    assert not (tmp_path / "summary.json").exists()


def test_write_seg_report_binary_csv_bytes(tmp_path):
    write_seg_report(tmp_path, per_case=SEG_ROWS, split="test", checkpoint="c", empty_policy="nan")
    assert (tmp_path / "metrics.csv").read_bytes() == (b"case,dice,hd95,asd,status\r\n"
                                                       b"Case01,0.9,3.0,1.0,ok\r\n"
                                                       b"Case02,0.7,5.0,2.0,ok\r\n"
                                                       b"Case03,0.0,,,missed\r\n")
    s = _strict_json(tmp_path / "summary.json")
    assert "classes" not in s and "per_class" not in s
    assert "mean fg" not in (tmp_path / "report.md").read_text()


def test_write_seg_report_per_class(tmp_path):
    s = write_seg_report(tmp_path, per_case=HIPPO_ROWS, split="test", checkpoint="c.pth", empty_policy="nan",
                         extra={"dataset": "hippocampus"})
    js = _strict_json(tmp_path / "summary.json")
    assert js == s
    assert js["classes"] == ["Anterior", "Posterior"]
    assert list(js["per_class"]) == ["Anterior", "Posterior"]
    ant, post = js["per_class"]["Anterior"], js["per_class"]["Posterior"]
    assert set(ant) == {"mean", "std", "median", "n_failed", "n_nan"}
    assert ant["mean"] == pytest.approx({"dice": 0.7, "hd95": 4.0, "asd": 0.8})
    assert ant["std"]["dice"] == pytest.approx(np.std([0.8, 0.6, 0.7]))
    assert ant["n_failed"] == 0 and ant["n_nan"] == {"dice": 0, "hd95": 0, "asd": 0}
    assert post["mean"] == pytest.approx({"dice": 1.7 / 3, "hd95": 1.5, "asd": 0.5})
    assert post["median"]["dice"] == pytest.approx(0.8)
    assert post["n_failed"] == 1 and post["n_nan"] == {"dice": 0, "hd95": 1, "asd": 1}
    # The case-level statistics are unchanged in meaning: over the case rows.
    assert js["mean"]["dice"] == pytest.approx((0.85 + 0.3 + 0.75) / 3)
    assert js["n_failed"] == 1 and js["n_cases"] == 3 and js["dataset"] == "hippocampus"
    assert js["per_case"][1]["per_class"] == {"Anterior": {"dice": 0.6, "hd95": 5.0, "asd": 1.0, "status": "ok"},
                                              "Posterior": {"dice": 0.0, "hd95": None, "asd": None,
                                                            "status": "missed"}}

    rows = _read_csv(tmp_path / "metrics.csv")
    assert rows[0] == ["case", "dice", "hd95", "asd", "status",
                       "dice_Anterior", "hd95_Anterior", "asd_Anterior", "status_Anterior",
                       "dice_Posterior", "hd95_Posterior", "asd_Posterior", "status_Posterior"]
    assert rows[2] == ["hip2", "0.3", "5.0", "1.0", "missed", "0.6", "5.0", "1.0", "ok", "0.0", "", "", "missed"]
    assert len(rows) == 4

    md = (tmp_path / "report.md").read_text()
    assert ("| Case | Dice, mean fg (%) | Dice Anterior (%) | Dice Posterior (%) | HD95 (mm) | ASD (mm) "
            "| Status |") in md
    assert "| hip2 | 30.00 | 60.00 | 0.00 | 5.00 | 1.00 | missed |" in md
    assert "- Dice, mean over foreground classes (%): 63.33 ± " in md
    assert "| Class | Dice (%) | HD95 (mm) | ASD (mm) | failed |" in md
    assert "| Anterior | 70.00 ± 8.16 | 4.00 ± 0.82 | 0.80 ± 0.16 | 0/3 |" in md
    assert ("| Posterior | 56.67 ± 40.28 | 1.50 ± 0.50 (1 NaN excluded) | 0.50 ± 0.10 (1 NaN excluded) "
            "| 1/3 |") in md
    assert md.index("- ASD, mean over") < md.index("| Class |") < md.index("Failed cases")


def test_write_seg_report_one_class_keeps_plain_dice_label(tmp_path):
    rows = [{**r, "per_class": {"prostate": {k: r[k] for k in ("dice", "hd95", "asd", "status")}}}
            for r in SEG_ROWS]
    s = write_seg_report(tmp_path, per_case=rows, split="test", checkpoint="c", empty_policy="nan")
    assert s["classes"] == ["prostate"] and s["per_class"]["prostate"]["n_failed"] == 1
    assert s["per_class"]["prostate"]["mean"]["dice"] == pytest.approx(s["mean"]["dice"])
    md = (tmp_path / "report.md").read_text()
    assert "| Case | Dice (%) | Dice prostate (%) | HD95 (mm) | ASD (mm) | Status |" in md
    assert "mean fg" not in md and "mean over foreground" not in md
    assert _read_csv(tmp_path / "metrics.csv")[3] == ["Case03", "0.0", "", "", "missed",
                                                      "0.0", "", "", "missed"]


def test_write_seg_report_rejects_mismatched_classes(tmp_path):
    swapped = {**HIPPO_ROWS[2], "per_class": dict(reversed(list(HIPPO_ROWS[2]["per_class"].items())))}
    with pytest.raises(ValueError, match="same class names in the same order"):
        write_seg_report(tmp_path, per_case=[HIPPO_ROWS[0], swapped], split="test", checkpoint="c")
    renamed = {**HIPPO_ROWS[1], "per_class": {"Anterior": HIPPO_ROWS[1]["per_class"]["Anterior"],
                                              "Tail": HIPPO_ROWS[1]["per_class"]["Posterior"]}}
    with pytest.raises(ValueError, match="hip2.*Tail"):
        write_seg_report(tmp_path, per_case=[HIPPO_ROWS[0], renamed], split="test", checkpoint="c")
    binary = {k: v for k, v in HIPPO_ROWS[2].items() if k != "per_class"}
    with pytest.raises(ValueError, match="hip3.*no 'per_class'"):
        write_seg_report(tmp_path, per_case=[HIPPO_ROWS[0], binary], split="test", checkpoint="c")
    bad_status = {**HIPPO_ROWS[1], "per_class": {**HIPPO_ROWS[1]["per_class"],
                                                 "Posterior": {"dice": 0, "hd95": 0, "asd": 0, "status": "?"}}}
    with pytest.raises(ValueError, match="Posterior.*status"):
        write_seg_report(tmp_path, per_case=[HIPPO_ROWS[0], bad_status], split="test", checkpoint="c")
    with pytest.raises(ValueError, match="extra"):
        write_seg_report(tmp_path, per_case=HIPPO_ROWS, split="test", checkpoint="c", extra={"classes": []})
    assert not (tmp_path / "summary.json").exists()


# --- classification report --------------------------------------------------------------------------

def test_write_cls_report(tmp_path):
    names = ["MEL", "NV", "BCC"]
    m = classification_metrics([0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], n_classes=3, class_names=names)
    s = write_cls_report(tmp_path, metrics=m, split="test", checkpoint="c.pth", class_names=names)
    js = _strict_json(tmp_path / "summary.json")
    assert js == s
    assert js["accuracy"] == pytest.approx(4 / 6)
    assert js["balanced_accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert js["per_class_recall"] == {"MEL": 0.5, "NV": 0.75, "BCC": None}
    assert js["confusion"] == [[1, 1, 0], [1, 3, 0], [0, 0, 0]] and js["n"] == 6
    assert _read_csv(tmp_path / "metrics.csv") == [["class", "n_true", "recall"], ["MEL", "2", "0.5"],
                                                   ["NV", "4", "0.75"], ["BCC", "0", ""]]
    cm_rows = _read_csv(tmp_path / "confusion_matrix.csv")
    assert cm_rows[0] == ["true\\pred", "MEL", "NV", "BCC"] and cm_rows[2] == ["NV", "1", "3", "0"]
    md = (tmp_path / "report.md").read_text()
    assert "66.67 %" in md and "62.50 %" in md and "BCC" in md
    with pytest.raises(ValueError, match="confusion"):
        write_cls_report(tmp_path, metrics=m, split="test", checkpoint="c", class_names=names[:2])


# --- comparison -------------------------------------------------------------------------------------

def _fake_seg_run(root, folder, method, dice_mean, config_extra="", class_dice=None):
    run = root / folder
    (run / "eval").mkdir(parents=True)
    summary = {"split": "test", "checkpoint": "x", "per_case": [],
               "mean": {"dice": dice_mean, "hd95": 4.25, "asd": 1.5},
               "std": {"dice": 0.05, "hd95": 1.0, "asd": None},
               "median": {"dice": dice_mean, "hd95": 4.0, "asd": 1.4},
               "n_cases": 10, "n_failed": 1, "n_nan": {"dice": 0, "hd95": 0, "asd": 0}}
    if class_dice is not None:  # {name: (mean, std)} of the per-class Dice
        summary["classes"] = list(class_dice)
        summary["per_class"] = {name: {"mean": {"dice": m, "hd95": 1.0, "asd": 0.5},
                                       "std": {"dice": sd, "hd95": 0.1, "asd": 0.1},
                                       "median": {"dice": m, "hd95": 1.0, "asd": 0.5},
                                       "n_failed": 0, "n_nan": {"dice": 0, "hd95": 0, "asd": 0}}
                                for name, (m, sd) in class_dice.items()}
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    (run / "config.yaml").write_text(f"method: {method}\n{config_extra}")
    return run


def test_compare_runs_segmentation(tmp_path):
    a = _fake_seg_run(tmp_path, "r1", "ce", 0.71, "data: prepared/promise12\nnoise_dice: 0.6\n")
    b = _fake_seg_run(tmp_path, "r2", "l2b", 0.8234, "name: l2b-fast\ndata: promise12\nnoise_dice: 0.6\n")
    out = tmp_path / "cmp" / "table.md"
    text = compare_runs([a, b], out)
    assert out.read_text() == text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| Run"))
    assert header == "| Run | Method | Data | Noise Dice | Dice (%) | HD95 (mm) | ASD (mm) | failed |"
    assert "| r1 | ce | promise12 | 0.60 | 71.00 ± 5.00 | 4.25 ± 1.00 | 1.50 | 1/10 |" in lines
    assert "| l2b-fast | l2b | promise12 | 0.60 | 82.34 ± 5.00 | 4.25 ± 1.00 | 1.50 | 1/10 |" in lines


def test_compare_runs_per_class_columns(tmp_path):
    a = _fake_seg_run(tmp_path, "r1", "ce", 0.71, class_dice={"Anterior": (0.68, 0.04), "Posterior": (0.74, 0.06)})
    b = tmp_path / "r2"  # a real report, written from per-class rows
    write_seg_report(b / "eval", per_case=HIPPO_ROWS, split="test", checkpoint="c", empty_policy="nan")
    (b / "config.yaml").write_text("method: l2b\n")
    lines = compare_runs([a, b]).splitlines()
    header = next(line for line in lines if line.startswith("| Run"))
    assert header == ("| Run | Method | Dice, mean fg (%) | Dice Anterior (%) | Dice Posterior (%) "
                      "| HD95 (mm) | ASD (mm) | failed |")
    assert "| r1 | ce | 71.00 ± 5.00 | 68.00 ± 4.00 | 74.00 ± 6.00 | 4.25 ± 1.00 | 1.50 | 1/10 |" in lines
    row_b = next(line for line in lines if line.startswith("| r2 |"))
    assert row_b.startswith("| r2 | l2b | 63.33 ± 23.92 | 70.00 ± 8.16 | 56.67 ± 40.28 | 3.33 ± 1.25 |")
    assert row_b.endswith("| 1/3 |")

    # Different class lists, a binary run, or a single class: the table is as before.
    c = _fake_seg_run(tmp_path, "r3", "ce", 0.7, class_dice={"Head": (0.7, 0.1), "Tail": (0.7, 0.1)})
    binary = _fake_seg_run(tmp_path, "r4", "ce", 0.7)
    one = _fake_seg_run(tmp_path, "r5", "ce", 0.7, class_dice={"Anterior": (0.7, 0.1)})
    plain = "| Run | Method | Dice (%) | HD95 (mm) | ASD (mm) | failed |"
    for runs in ([a, c], [a, binary], [one, one]):
        assert compare_runs(runs).splitlines()[2] == plain


def test_compare_runs_classification_and_fallback_name(tmp_path):
    seg = _fake_seg_run(tmp_path, "seg", "bootstrap", 0.7)
    cls = tmp_path / "isic_run"
    names = ["A", "B"]
    m = classification_metrics([0, 1, 1, 1], [0, 1, 0, 1], n_classes=2, class_names=names)
    write_cls_report(cls / "eval", metrics=m, split="test", checkpoint="c", class_names=names)
    summary_only = tmp_path / "summary_only"
    write_cls_report(summary_only / "eval", metrics=m, split="test", checkpoint="c", class_names=names,
                     extra={"method": "l2rw"})
    text = compare_runs([seg, cls])  # no config.yaml in cls: the folder name stands in
    assert "| Run | Method | Accuracy (%) | Balanced acc. (%) |" in text
    assert "| isic_run | isic_run | 75.00 | 83.33 |" in text
    assert "| summary_only | l2rw | 75.00 | 83.33 |" in compare_runs([summary_only])
    assert "| seg | bootstrap | 70.00 ± 5.00 |" in text


def test_compare_runs_missing_eval_names_the_run(tmp_path):
    ok = _fake_seg_run(tmp_path, "done", "ce", 0.7)
    todo = tmp_path / "not_evaluated"
    todo.mkdir()
    with pytest.raises(InputError, match="not_evaluated.*medl2b eval"):
        compare_runs([ok, todo])
    bad = _fake_seg_run(tmp_path, "badcfg", "ce", 0.7)
    (bad / "config.yaml").write_text("method: [unclosed\n")
    with pytest.raises(InputError, match="config.yaml"):
        compare_runs([bad])


# --- figures ----------------------------------------------------------------------------------------

def _is_png(path):
    data = path.read_bytes()
    return len(data) > 100 and data[:8] == PNG_MAGIC


def _volume():
    rng = np.random.default_rng(0)
    x, y, z = np.mgrid[:24, :20, :6]
    clean = ((x - 12) / 6) ** 2 + ((y - 10) / 5) ** 2 + ((z - 2.5) / 2.5) ** 2 <= 1
    image = rng.normal(size=clean.shape).astype(np.float32) + 2 * clean
    return image, clean


def test_overlay_figures(tmp_path):
    from medl2b.evaluate.figures import plot_case_overlays

    image, clean = _volume()
    pred = np.roll(clean, 2, axis=0)
    noisy = np.roll(clean, -1, axis=1)
    p = plot_case_overlays(image, clean, pred, tmp_path / "overlay.png", noisy=noisy, n_slices=3, title="Case00")
    assert p == tmp_path / "overlay.png" and _is_png(p)
    empty = np.zeros_like(clean)  # no foreground anywhere: slices are spread over the volume
    assert _is_png(plot_case_overlays(image, empty, empty, tmp_path / "empty.png"))
    with pytest.raises(ValueError, match="pred"):
        plot_case_overlays(image, clean, pred[:-1], tmp_path / "bad.png")


def test_weight_map_figure(tmp_path):
    from medl2b.evaluate.figures import plot_weight_maps

    rng = np.random.default_rng(1)
    n, h, w = 2, 16, 16
    clean = np.zeros((n, h, w), dtype=np.uint8)
    clean[:, 4:12, 4:12] = 1
    noisy = np.roll(clean, 2, axis=2)
    wrong = noisy != clean
    beta = np.where(wrong, 1e-3, 1e-5)
    alpha = rng.uniform(0, 1e-4, size=(n, h, w))
    alpha[1] = 0.0  # an all-zero map must still draw
    p = plot_weight_maps(tmp_path / "w.png", images=rng.normal(size=(n, 1, h, w)), noisy=noisy, clean=clean,
                         pseudo=clean, alpha=alpha, beta=beta, titles=["s0", "s1"])
    assert _is_png(p)
    with pytest.raises(ValueError, match="beta"):
        plot_weight_maps(tmp_path / "w2.png", images=clean, noisy=noisy, clean=clean, pseudo=clean,
                         alpha=alpha, beta=beta[:, :8])


def test_learning_curves_and_confusion_figures(tmp_path):
    from medl2b.evaluate.figures import plot_confusion, plot_learning_curves

    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,train_loss,meta_loss,val_score,mean_alpha,mean_beta,skipped_steps\n"
                        "0,0.9,,0.5,,,\n1,0.7,0.8,0.6,0.001,0.002,0\n2,0.6,0.7,,0.001,0.003,3\n")
    assert _is_png(plot_learning_curves(csv_path, tmp_path / "curves.png"))
    trainer_style = tmp_path / "trainer.csv"  # the columns medl2b.train writes: sums and on-wrong/right means
    trainer_style.write_text("epoch,lr,train_loss,meta_loss,alpha_sum,beta_sum,alpha_on_wrong,alpha_on_right,"
                             "beta_on_wrong,beta_on_right,skipped_steps,val_score,meta_precision,time_s\n"
                             "1,0.01,0.9,,,,,,,,0,0.4,,3.2\n"
                             "2,0.01,0.8,0.7,0.3,0.7,0.2,0.5,0.9,0.4,1,0.5,0.9,3.1\n")
    assert _is_png(plot_learning_curves(trainer_style, tmp_path / "curves_trainer.png"))
    only_loss = tmp_path / "only_loss.csv"
    only_loss.write_text("epoch,train_loss\n0,1.0\n")
    assert _is_png(plot_learning_curves(only_loss, tmp_path / "curves2.png"))
    with pytest.raises(InputError, match="missing.csv"):
        plot_learning_curves(tmp_path / "missing.csv", tmp_path / "x.png")

    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    assert _is_png(plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm.png"))
    assert _is_png(plot_confusion(cm, ["a", "b", "c"], tmp_path / "cm_counts.png", normalize=False))
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion(cm, ["a"], tmp_path / "cm_bad.png")
