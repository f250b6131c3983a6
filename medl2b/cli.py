"""The ``medl2b`` command line: a thin typer layer over plain functions.

Heavy imports (torch, MONAI, SimpleITK) happen inside the commands, so
``medl2b --help`` answers at once. Every command calls one function that the
tests call directly too. Problems with the user's input end in one line on
stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

def _user_errors(func):
    """Turn :class:`InputError`/:class:`TrainingError` into one line on stderr and exit code 2/3."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from medl2b.errors import InputError, TrainingError

        try:
            return func(*args, **kwargs)
        except InputError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except TrainingError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(3) from None

    return wrapper


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="L2B (Learning to Bootstrap) for medical images with noisy labels, on MONAI.")
synth_app = typer.Typer(no_args_is_help=True, help="Write phantom raw data in the exact public layouts.")
prepare_app = typer.Typer(no_args_is_help=True, help="Convert raw data (your own labels, or a public release for a "
                                                     "benchmark) into a prepared dataset.")
app.add_typer(synth_app, name="synth")
app.add_typer(prepare_app, name="prepare")


@synth_app.command("promise12")
@_user_errors
def synth_promise12_cmd(
    out: Path = typer.Argument(..., help="Folder to write CaseNN.mhd/.raw and CaseNN_segmentation.mhd/.raw into."),
    cases: int = typer.Option(12, "--cases", min=1, max=100, help="Number of phantom cases."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    grid_scale: float = typer.Option(1.0, "--grid-scale", min=0.05, max=1.0,
                                     help="Scale of the real grids (1 = 512²/320²/256²; smaller = quicker)."),
) -> None:
    """PROMISE12-like MetaImage phantoms: mixed grids, pixel types, a .zraw case, a flipped direction."""
    from medl2b.data.phantoms import synth_promise12

    synth_promise12(out, n_cases=cases, seed=seed, grid_scale=grid_scale)
    typer.echo(f"wrote {cases} phantom PROMISE12 cases to {out}")


@synth_app.command("isic2019")
@_user_errors
def synth_isic2019_cmd(
    out: Path = typer.Argument(..., help="Folder to write ISIC_2019_Training_Input/ and the CSVs into."),
    images: int = typer.Option(400, "--images", min=16, help="Number of phantom images."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """ISIC 2019-like JPEG phantoms with ground-truth and metadata CSVs."""
    from medl2b.data.phantoms import synth_isic2019

    synth_isic2019(out, n_images=images, seed=seed)
    typer.echo(f"wrote {images} phantom ISIC 2019 images to {out}")


def _spacing(text: str | None) -> list[float] | None:
    """``--spacing 'sx,sy[,sz]'`` as numbers (checked by prepare: 2 or 3 positive sizes)."""
    from medl2b.errors import InputError

    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError("--spacing", f"must be 2 or 3 sizes in mm separated by commas, got {text!r}") from None


def _grid(manifest: dict) -> str:
    """``at 0.6 x 0.6 x 3.6 mm`` (the prepared dataset's target spacing)."""
    spacing = manifest.get("spacing")
    return f"at {' x '.join(f'{v:.4g}' for v in spacing)} mm" if spacing else f"at {manifest['size']} px"


#: the geometry options every `prepare` of volumes shares (medl2b.data.grid)
_CAP_HELP = ("CAP on the in-plane extent of the prepared slices in pixels (not a resize): if the largest case at the "
             "target spacing would exceed it, the in-plane spacing is coarsened for every case.")
_SPACING_HELP = ("Target spacing in mm, 'sx,sy,sz' or in-plane 'sx,sy' (default: the training cases' median spacing). "
                 "Every case is resampled to it, aspect ratio kept; slices of different sizes are padded per batch.")


@prepare_app.command("promise12")
@_user_errors
def prepare_promise12_cmd(
    raw: Path = typer.Argument(..., help="Folder with CaseNN.mhd and CaseNN_segmentation.mhd (any depth)."),
    out: Path = typer.Argument(..., help="Prepared dataset folder (nnU-Net-like)."),
    size: int = typer.Option(144, "--size", min=16,
                             help=_CAP_HELP),
    spacing: Optional[str] = typer.Option(None, "--spacing",
                                          help=_SPACING_HELP),
    noise_dice: float = typer.Option(0.6, "--noise-dice", min=0.0, max=1.0,
                                     help="Target mean 3-D Dice of noisy vs clean masks; 1 = no noise."),
    meta_cases: int = typer.Option(3, "--meta-cases", min=0, help="Clean meta cases (taken from training)."),
    test_cases: int = typer.Option(10, "--test-cases", min=1, help="Held-out evaluation cases."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="JSON split to use instead of a seeded one."),
    noisy_fraction: float = typer.Option(1.0, "--noisy-fraction",
                                         help="Corrupt only this fraction of the train cases (the rest stay clean); "
                                              "--noise-dice is met on the corrupted ones."),
    seed: int = typer.Option(0, "--seed", help="Random seed (split and noise)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared dataset in OUT."),
) -> None:
    """Benchmark: PROMISE12 MetaImage volumes (the truth) -> prepared slices with calibrated synthetic noisy masks."""
    from medl2b.data.promise12 import prepare_promise12

    manifest = prepare_promise12(raw, out, size=size, noise_dice=noise_dice, meta_cases=meta_cases,
                                 test_cases=test_cases, split_file=split_file, seed=seed, noisy_fraction=noisy_fraction,
                                 overwrite=overwrite, spacing=_spacing(spacing))
    noise = manifest.get("noise", {})
    typer.echo(f"prepared {len(manifest['cases'])} cases in {out} {_grid(manifest)}; "
               f"mean noisy-vs-clean Dice {noise.get('achieved_mean_dice', 1.0):.3f}")


@prepare_app.command("msd")
@_user_errors
def prepare_msd_cmd(
    raw: Path = typer.Argument(..., help="MSD task folder or nnU-Net v2 raw dataset (dataset.json, imagesTr/, "
                                         "labelsTr/[, imagesTs/, labelsTs/]); 3-D, or 2-D images (.png, .bmp, .tif, "
                                         ".jpg; RGB in one file)."),
    out: Path = typer.Argument(..., help="Prepared dataset folder (nnU-Net-like)."),
    size: Optional[int] = typer.Option(None, "--size", min=32,
                                       help=_CAP_HELP + " Default: no cap."),
    spacing: Optional[str] = typer.Option(None, "--spacing",
                                          help=_SPACING_HELP),
    trusted_labels: Optional[Path] = typer.Option(None, "--trusted-labels",
                                                  help="YOUR OWN LABELS: labelsTr/ holds the given (noisy) labels, this "
                                                       "folder trusted labels of a few cases (same file names); they "
                                                       "become the clean meta set, imagesTs/ + labelsTs/ the test set. "
                                                       "Nothing is synthesised."),
    noise_dice: float = typer.Option(0.6, "--noise-dice", min=0.0, max=1.0,
                                     help="Benchmark: target mean foreground-class 3-D Dice of noisy vs clean; "
                                          "1 = no noise."),
    meta_cases: Optional[int] = typer.Option(None, "--meta-cases", min=0,
                                             help="Benchmark: clean meta cases taken from training (default 3)."),
    test_cases: Optional[int] = typer.Option(None, "--test-cases", min=0,
                                             help="Held-out evaluation cases (benchmark default 10; with "
                                                  "--trusted-labels only 0 = ignore labelsTs/)."),
    split_file: Optional[Path] = typer.Option(None, "--split-file",
                                              help="Benchmark: JSON split to use instead of a seeded one."),
    slice_axis: str = typer.Option("axial", "--slice-axis", help="axial | coronal | sagittal: the 2-D slicing axis "
                                                                  "(ignored for 2-D image datasets)."),
    noisy_fraction: float = typer.Option(1.0, "--noisy-fraction",
                                         help="Benchmark: corrupt only this fraction of the train cases (the rest stay "
                                              "clean); --noise-dice is met on the corrupted ones."),
    noisy_labels: Optional[Path] = typer.Option(None, "--noisy-labels",
                                                help="Benchmark: folder of given noisy training labels (same file names "
                                                     "as labelsTr, e.g. a second observer's) used instead of "
                                                     "synthesised noise, labelsTr/ being the clean truth."),
    seed: int = typer.Option(0, "--seed", help="Random seed (split and noise)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared dataset in OUT."),
) -> None:
    """MSD v1 / nnU-Net v2 raw dataset -> prepared slices: your own labels (--trusted-labels) or benchmark mode.

    Your own labels: --trusted-labels DIR (labelsTr/ = the given labels, DIR = trusted labels of a few cases).
    Benchmark mode (without it): labelsTr/ is the clean truth, and the train cases get calibrated synthetic
    noise (--noise-dice) or the given --noisy-labels.
    """
    from medl2b.data.msd import prepare_msd

    manifest = prepare_msd(raw, out, size=size, noise_dice=noise_dice, meta_cases=meta_cases, test_cases=test_cases,
                           split_file=split_file, seed=seed, slice_axis=slice_axis, noisy_fraction=noisy_fraction,
                           overwrite=overwrite, progress=sys.stderr.isatty(), noisy_labels=noisy_labels,
                           trusted_labels=trusted_labels, spacing=_spacing(spacing))
    noise = manifest["noise"]
    if manifest.get("train_truth") is False:
        splits = manifest["splits"]
        agree = noise.get("given_vs_trusted_mean_dice")
        typer.echo(f"prepared {len(manifest['cases'])} cases in {out} {_grid(manifest)}: {len(splits['train'])} "
                   f"train on their given labels, {len(splits['meta'])} trusted, {len(splits['test'])} test"
                   + ("" if agree is None else f"; given vs trusted labels on the trusted cases: Dice {agree:.3f}"))
        return
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in noise["achieved_per_class_dice"].items())
    what = f"given noisy labels ({noise['source']}) vs clean: Dice" if noise.get("given") else "noisy-vs-clean Dice"
    typer.echo(f"prepared {len(manifest['cases'])} cases in {out} {_grid(manifest)}; "
               f"{what} {noise['achieved_mean_dice']:.3f} (mean over classes; {per_class})")


@prepare_app.command("images")
@_user_errors
def prepare_images_cmd(
    raw: Path = typer.Argument(..., help="Folder of JPEG/PNG images (any depth)."),
    out: Path = typer.Argument(..., help="Prepared dataset folder."),
    labels: Path = typer.Option(..., "--labels", help="CSV image,label: the given label of every training image "
                                                      "(image = file name, with or without extension)."),
    trusted: Optional[Path] = typer.Option(None, "--trusted", help="CSV image,label: checked labels of some images; "
                                                                  "they become the clean meta set (every class)."),
    test: Optional[Path] = typer.Option(None, "--test", help="CSV image,label: held-out images with reference "
                                                            "labels (the test set)."),
    size: int = typer.Option(224, "--size", min=8, help="Side of the square prepared images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (recorded; val_holdout draws from it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared dataset in OUT."),
) -> None:
    """YOUR OWN LABELS, classification: a folder of images + labels.csv [+ trusted.csv, test.csv] -> prepared
    images. Classes are the label names found; nothing is synthesised."""
    from medl2b.data.images import prepare_images

    manifest = prepare_images(raw, out, labels=labels, trusted=trusted, test=test, size=size, seed=seed,
                              overwrite=overwrite, progress=sys.stderr.isatty())
    splits, noise = manifest["splits"], manifest["noise"]
    agree = noise.get("given_vs_trusted_agreement")
    unused = manifest.get("unused_images", 0)
    typer.echo(f"prepared {len(manifest['images'])} images of {len(manifest['classes'])} classes in {out} at "
               f"{manifest['size']} px: {len(splits['train'])} train on their given labels, {len(splits['meta'])} "
               f"trusted, {len(splits['test'])} test"
               + ("" if agree is None else f"; given labels agree with the trusted ones on "
                                           f"{round(agree * noise['n_given_and_trusted'])} of "
                                           f"{noise['n_given_and_trusted']} trusted images")
               + (f"; {unused} images of {raw} are in no CSV (not used)" if unused else ""))


@prepare_app.command("isic2019")
@_user_errors
def prepare_isic2019_cmd(
    raw: Path = typer.Argument(..., help="Folder with ISIC_2019_Training_Input/ and ISIC_2019_Training_GroundTruth.csv."),
    out: Path = typer.Argument(..., help="Prepared dataset folder."),
    size: int = typer.Option(224, "--size", min=16, help="Side of the square prepared images."),
    noise: float = typer.Option(0.2, "--noise", min=0.0, max=0.95, help="Symmetric label-noise rate on the training split."),
    meta: Optional[int] = typer.Option(None, "--meta", min=1, help="Clean meta images (default: paper's 640/25331)."),
    test: Optional[int] = typer.Option(None, "--test", min=1, help="Test images (default: paper's 4291/25331)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (split and noise)."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="JSON split of image names to use instead "
                                              "of a seeded one (e.g. data_prep/isic2019/split.json)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared dataset in OUT."),
) -> None:
    """Benchmark: ISIC 2019 JPEG + one-hot CSV (the truth) -> prepared images, symmetric synthetic noise on train.

    The layout `prepare images` writes; the release's labels are the clean truth."""
    from medl2b.data.isic2019 import prepare_isic2019

    manifest = prepare_isic2019(raw, out, size=size, noise=noise, n_meta=meta, n_test=test, seed=seed,
                                split_file=split_file, overwrite=overwrite)
    typer.echo(f"prepared {len(manifest['images'])} images in {out}; realised noise rate "
               f"{manifest['noise']['realised_rate']:.3f}")


@app.command("train")
@_user_errors
def train_cmd(
    task: Optional[str] = typer.Option(None, "--task", help="segmentation, prostate-seg or skin-lesion-cls "
                                                            "(default: the prepared dataset's own)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset folder."),
    out: Path = typer.Option(..., "--out", help="Run folder (config, log, metrics, checkpoints)."),
    method: Optional[str] = typer.Option(None, "--method", help="ce | bootstrap | l2rw | l2b (default; with a clean "
                                         "meta set it also trains on the trusted cases at full weight) | l2b-pure "
                                         "(the paper's: the trusted cases only take the meta step) | l2b-sum1 | "
                                         "ce+clean | meta-only. l2b+clean is read as l2b (its old name)."),
    meta_set: Optional[str] = typer.Option(None, "--meta-set", help="clean (trusted meta split) | gmm (no trusted set)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="A profile of the task config, e.g. cpu."),
    config: Optional[Path] = typer.Option(None, "--config", help="Extra YAML of config keys."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                         help="Epochs to train (with --resume: extend the run to N epochs; the cosine "
                                              "schedule is re-planned over N from the current epoch)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Network. Classification: efficientnet-lite0 (default, "
                                                            "ImageNet weights installed with medl2b) | resnet50. "
                                                            "Segmentation: unetpp (default) | unetpp-lite0 (2-D, "
                                                            "ImageNet-pretrained encoder)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="Pretrained networks: imagenet (the installed "
                                             "weights) | PATH (a local state dict; torchvision layout for resnet50) "
                                             "| none (from scratch)."),
    meta_impl: Optional[str] = typer.Option(None, "--meta-impl", help="fast (forward-mode) | fast-lowmem | reference (double backward)."),
    meta_scope: Optional[str] = typer.Option(None, "--meta-scope", help="all | last (FaMUS-style, head only)."),
    label_source: Optional[str] = typer.Option(None, "--label-source", help="noisy | clean (the oracle)."),
    spatial_dims: Optional[int] = typer.Option(None, "--spatial-dims",
                                               help="Segmentation: 2 (UNet++ on slices) | 3 (on whole volumes)."),
    set_: List[str] = typer.Option([], "--set", help="Any config key: --set lr=0.01 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last intact checkpoint "
                                                        "(none yet: start it; finished: report it). Safe to repeat. "
                                                        "--epochs N extends the run; any other flag that would change "
                                                        "it is refused."),
) -> None:
    """Train UNet++ (pixel-wise alpha/beta) or a pretrained classifier (per-sample alpha/beta) with L2B or a baseline."""
    import shlex

    from medl2b.config import load_config, load_config_file
    from medl2b.errors import InputError, RunInterrupted
    from medl2b.train.resume import explicit_settings
    from medl2b.train.trainer import train

    overrides = {"data": str(data) if data else None, "out": str(out), "method": method, "meta_set": meta_set,
                 "epochs": epochs, "seed": seed, "device": device, "arch": arch,
                 "meta_impl": meta_impl, "meta_scope": meta_scope, "label_source": label_source,
                 "spatial_dims": spatial_dims}
    if pretrained is not None:
        overrides["pretrained"] = pretrained  # "none" becomes null in TrainConfig.validate
    for item in set_:
        if "=" not in item:
            raise InputError("--set", f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    if task is None:
        task = _task_of(data, out, resume)
    asked = None
    if resume and (out / "config.yaml").is_file():  # the run's own config, and what this command line asks of it
        asked = explicit_settings(task, out / "config.yaml", profile=profile, config_file=config, overrides=overrides)
        cfg = load_config_file(out / "config.yaml", device=device)
    else:
        cfg = load_config(task, profile=profile, config_file=config, overrides=overrides)
    again = f"medl2b train --out {shlex.quote(str(out))} --resume"
    try:
        row = train(cfg, resume=resume, asked=asked)
    except RunInterrupted as exc:  # Ctrl-C / SIGTERM: stopped at a step boundary with a checkpoint
        typer.echo(f"interrupted: {exc.where}; resume with: {again}", err=True)
        raise typer.Exit(128 + int(exc.signum)) from None
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            typer.echo(f"interrupted; the last checkpoint in {out} is intact; resume with: {again}", err=True)
        raise typer.Exit(130) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        typer.echo(f"finished {row.get('epoch', cfg.epochs)} epochs in {out}: last validation score "
                   f"{row.get('val_score', float('nan')):.4f}")


def _task_of(data: Optional[Path], out: Path, resume: bool) -> str:
    """The task a prepared dataset (or, on --resume, a run folder) was made for."""
    import json

    from medl2b.errors import InputError

    if resume and (out / "config.yaml").is_file():
        import yaml

        task = (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("task")
        if task:
            return str(task)
    if data is None:
        raise InputError("--task", "give --task, or --data so that the task can be read from its dataset.json")
    path = data / "dataset.json"
    try:
        task = json.loads(path.read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        raise InputError(path, "cannot read the task from it; give --task") from None
    if not task:
        raise InputError(path, "names no task; give --task")
    return str(task)


@app.command("eval")
@_user_errors
def eval_cmd(
    runs: Optional[List[Path]] = typer.Argument(None, help="One or more run folders (or --pred and --ref)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset (default: the run's own)."),
    split: str = typer.Option("test", "--split", help="train | meta | test."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | latest."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write PNG figures."),
    compare_out: Optional[Path] = typer.Option(None, "--compare-out", help="With several runs: write the table here."),
    pred: Optional[Path] = typer.Option(None, "--pred", help="Instead of runs: a folder of predicted label maps "
                                                             "(NIfTI, MetaImage, NRRD) to score against --ref."),
    ref: Optional[Path] = typer.Option(None, "--ref", help="With --pred: the reference label maps, same case names."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="With --pred: a dataset.json naming the label "
                                                                 "values (default: the values in the references)."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --pred: report folder (default: the --pred folder)."),
) -> None:
    """Per-case Dice/HD95/ASD (mm) or accuracy/balanced accuracy; NIfTI predictions; figures; RUN/eval/.

    With --pred FOLDER --ref FOLDER: per-case and per-class Dice/HD95/ASD of any prediction folder against
    reference masks (spacing from the references): summary.json, metrics.csv, report.md.
    """
    from medl2b.errors import InputError
    from medl2b.evaluate.report import compare_runs
    from medl2b.evaluate.run import evaluate_run

    if pred is not None or ref is not None:
        if pred is None or ref is None:
            raise InputError("--pred" if pred is None else "--ref", "--pred and --ref go together")
        if runs:
            raise InputError(str(runs[0]), "give either run folders or --pred and --ref, not both")
        from medl2b.evaluate.folder import evaluate_folder

        summary = evaluate_folder(pred, ref, labels=labels, out=out, progress=sys.stderr.isatty())
        mean = summary["mean"]
        where = (out or pred) / "report.md"
        typer.echo(f"{pred}: {summary['n_cases']} cases, Dice {mean['dice']:.4f}  HD95 {mean['hd95']:.2f} mm  "
                   f"ASD {mean['asd']:.2f} mm  ({summary['n_failed']} failed) -> {where}")
        return
    if not runs:
        raise InputError("RUNS", "give one or more run folders, or --pred FOLDER --ref FOLDER")
    for run in runs:
        summary = evaluate_run(run, data=data, split=split, checkpoint=checkpoint, device=device, figures=figures,
                               progress=sys.stdout.isatty())
        mean = summary.get("mean") or {}
        if "dice" in mean:
            typer.echo(f"{run}: Dice {mean['dice']:.4f}  HD95 {mean['hd95']:.2f} mm  ASD {mean['asd']:.2f} mm  "
                       f"({summary['n_failed']} failed) -> {run / 'eval' / 'report.md'}")
        else:
            typer.echo(f"{run}: accuracy {summary['accuracy']:.4f}  balanced accuracy "
                       f"{summary['balanced_accuracy']:.4f} -> {run / 'eval' / 'report.md'}")
    if len(runs) > 1:
        typer.echo(compare_runs(runs, compare_out))


@app.command("predict")
@_user_errors
def predict_cmd(
    run: Path = typer.Argument(..., help="A trained run folder."),
    inputs: Path = typer.Argument(..., help="An image file or a folder of them: NIfTI, MetaImage, NRRD (channels as "
                                            "CASE_0000, CASE_0001, ... or one 4-D file); PNG/BMP/TIFF/JPEG for a run "
                                            "on 2-D images (RGB in one file) and for classification."),
    output: Path = typer.Argument(..., help="Folder for the masks (or predictions.csv)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | latest."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    tta: bool = typer.Option(False, "--tta", help="Segmentation: average over flips of each spatial axis."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities",
                                            help="Segmentation: also write CASE.npz, per-class probabilities on the "
                                                 "input's grid."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (kept otherwise)."),
    fmt: str = typer.Option("same", "--format", help="Mask format: same (as the input; JPEG -> PNG) | nii.gz | nii | "
                                                     "mha | nrrd | png (2-D images)."),
    data: Optional[Path] = typer.Option(None, "--data", help="A prepared dataset whose preprocessing to repeat "
                                                            "(default: the run's own copy, RUN/preprocessing.json; "
                                                            "the prepared dataset itself is not needed)."),
) -> None:
    """Apply a trained run to new raw images with the training's own preprocessing: one mask per case on the
    input's grid with the dataset's label values, or predictions.csv for classification."""
    from medl2b.predict import predict_files

    result = predict_files(run, inputs, output, checkpoint=checkpoint, device=device, tta=tta,
                           save_probabilities=save_probabilities, overwrite=overwrite, fmt=fmt, data=data,
                           progress=sys.stderr.isatty(), echo=lambda line: typer.echo(line, err=True))
    skipped = f"; skipped {result['skipped']} other file(s)" if result["skipped"] else ""
    typer.echo(f"predicted {result['cases']} of {result['cases'] + len(result['failed'])} case(s) into {output} "
               f"({result['seconds_per_case']:.2f} s per case){skipped}")
    if result["failed"]:  # each one reported above, one line naming its file
        raise typer.Exit(2)


@app.command("audit")
@_user_errors
def audit_cmd(
    run: Path = typer.Argument(..., help="A trained run folder."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared dataset (default: the run's own)."),
    top: int = typer.Option(6, "--top", help="How many suspects the figure shows."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/audit)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the suspects figure."),
) -> None:
    """Rank the training annotations by how likely they are wrong (L2B's record + the final model); RUN/audit/."""
    from medl2b.audit import audit_run
    from medl2b.device import resolve_device

    summary = audit_run(run, data=data, out=out, top=top, device=str(resolve_device(device)), figures=figures)
    where = Path(out) if out is not None else Path(run) / "audit"
    typer.echo(f"{run}: most suspect {', '.join(summary['top'][:5])} -> {where / 'ranking.csv'}")
    for unit, q in summary["quality"].items():
        if q.get("auroc") is not None:
            typer.echo(f"  {unit}: AUROC {q['auroc']:.3f}, precision at K={q['n_corrupted']} "
                       f"{q['precision_at_k']:.3f} (against the known corruption)")


@app.command("compare")
@_user_errors
def compare_cmd(
    runs: List[Path] = typer.Argument(..., help="Evaluated run folders."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the markdown table here too."),
) -> None:
    """One table, method x metric, from several evaluated runs (the paper's Table 6 in form)."""
    from medl2b.evaluate.report import compare_runs

    typer.echo(compare_runs(runs, out))


@app.command("demo")
@_user_errors
def demo_cmd(
    out: Path = typer.Option(Path("demo_output"), "--out", help="Demo folder (replaced if it is an old demo)."),
    data: str = typer.Option("hippocampus", "--data",
                             help="hippocampus (20 bundled real MRI cases) or phantoms (synthetic PROMISE12)."),
    cases: Optional[int] = typer.Option(None, "--cases", min=6, help="Number of cases (default: 20 / 12 phantoms)."),
    size: Optional[int] = typer.Option(None, "--size", min=32, help="Cap on the in-plane extent in pixels (default 64: the hippocampus stays at its 1 mm spacing)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the CPU profile's epochs."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """End to end: prepare (noise Dice 0.6) -> train ce and l2b -> eval -> compare, on real or phantom data."""
    from medl2b.demo import run_demo

    run_demo(out, data=data, cases=cases, size=size, epochs=epochs, seed=seed, echo=typer.echo)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
