"""A Task per data modality: everything that differs between them, behind one interface.

A task wires parts together: a dataset factory (its ``setup_training``), an inferer per geometry
(:mod:`medl2b.inference`: whole samples, slice by slice, sliding windows), the metric rows and report of
its evaluation, and the units its audit ranks (:mod:`medl2b.audit` scores and writes them).

===========================  ===============================  ========================
                             :class:`SegmentationTask`        :class:`ClassificationTask`
===========================  ===============================  ========================
training sample              a 2-D slice or a 3-D volume      an image
                             (:mod:`~medl2b.tasks.geometry`)
prediction (:meth:`predict`) ``(C, X, Y, Z)`` ->              ``(S, S, 3)`` uint8 ->
                             ``(K, X, Y, Z)``                 ``(K,)``
validation score             mean fg 3-D Dice                 accuracy
evaluation unit              case (per class)                 image
case metrics                 Dice, HD95, ASD, clDice          accuracy, AUROC
audit units                  cases (and slices)               images
===========================  ===============================  ========================

A task is built from a run's config (:func:`build_task`). ``training=True`` loads the training, meta and
validation sets (the trainer and the audit need them); without it the task only predicts and evaluates. The
trainer, :mod:`medl2b.evaluate.run`, :mod:`medl2b.predict` and :mod:`medl2b.audit` ask the task and never
branch on the modality.
"""

from __future__ import annotations

from medl2b.data.datasets import load_manifest
from medl2b.errors import InputError
from medl2b.tasks.base import AuditTable, Task, compose, held_out, split_items
from medl2b.tasks.classification import ClassificationTask
from medl2b.tasks.segmentation import SegmentationTask

__all__ = ["AuditTable", "ClassificationTask", "SegmentationTask", "Task", "build_task", "compose", "held_out",
           "split_items"]


def build_task(cfg, *, training: bool = True, manifest: dict | None = None, trusted: bool = True) -> Task:
    """The task object of a config.

    Args:
        cfg: The run's :class:`~medl2b.config.TrainConfig`.
        training: Also load the training sets (the trusted meta cases are used unless ``meta_set == 'gmm'`` or
            the method takes no meta step).
        manifest: The prepared dataset's manifest, or a run's own copy of it (:mod:`medl2b.data.record`),
            instead of reading ``cfg.data`` (prediction needs nothing else).
        trusted: With ``training``: the trusted cases the method trains on (``l2b``) are in its training set;
            False leaves them out (the audit ranks the given labels only).
    """
    if cfg.is_segmentation:
        task: Task = SegmentationTask(cfg, manifest or load_manifest(cfg.data, task=cfg.task))
    else:
        task = ClassificationTask(cfg, manifest or load_manifest(cfg.data, task="classification"))
    if training:
        if cfg.label_source == "clean" and not task.train_truth:
            raise InputError("--label-source", "clean (the oracle) needs the training cases' clean labels; this "
                                               "dataset has only their given labels (your own labels)")
        use_meta = cfg.uses_meta and cfg.meta_set == "clean"
        if use_meta and not task.manifest["splits"]["meta"]:
            raise InputError(task.data / "dataset.json", f"has no trusted (clean meta) cases, which method "
                                                         f"{cfg.method} learns its weights on: prepare it with trusted "
                                                         "labels, or train with --meta-set gmm or --method ce")
        task.setup_training(use_meta_cases=use_meta, trusted=trusted)
    return task
