"""medl2b: Learning to Bootstrap for noisy medical labels.

The public library API is exactly the names in ``__all__`` (defined in :mod:`medl2b.api`, and
``load_run`` in :mod:`medl2b.predict`; importable from here), versioned by :data:`API_VERSION`:

* ``l2b_step(model, x, y, x_meta, y_meta, *, lr, method="l2b", meta_loss="ce", impl="fast",
  scope="all", normalise=None, warm=False, trusted=None) -> L2BStep``: the α/β weights and the weighted
  loss of one training batch (``trusted``, since 1.2: samples of the batch whose given label is known
  right keep plain CE's weight; method ``l2b`` only; ``l2b-pure``, since 1.2, is the same step without it).
* ``L2B(method, meta_loss, impl, scope, normalise, bootstrap_beta)``: the same options held once;
  ``L2B(...).step(model, x, y, x_meta, y_meta, *, lr, warm=False, trusted=None) -> L2BStep``.
* ``L2BStep``: ``loss`` (scalar to back-propagate), ``alpha``, ``beta`` (shape of the per-element
  losses), ``losses``, ``meta_loss``, ``skipped``.
* ``monai_iteration(meta_data, l2b=None, *, warmup_epochs=0, lr=None)``: an ``iteration_update``
  for ``monai.engines.SupervisedTrainer``.
* ``load_run(run, *, checkpoint="best", device="auto", data=None) -> Predictor`` (since 1.1, defined in
  :mod:`medl2b.predict`): a trained run folder; ``.predict(image_or_path, *, affine=None, tta=False,
  probabilities=False)`` returns a ``Segmentation`` (``mask`` on the input's grid with the dataset's label
  values, ``affine``, ``classes``, ``label_values``, ``probabilities``) or a ``Classification``
  (``label``, ``probabilities``), with the training's own preprocessing.

Everything else (``medl2b.meta``, ``medl2b.train``, ``medl2b.models``, ``medl2b.data``, ...) is
internal: used by the ``medl2b`` command line, free to change without notice. Within one major
API version, names in ``__all__`` are neither removed nor renamed and their arguments keep their
meaning.

``import medl2b`` stays light: torch is imported on first use of an API name.
"""

__version__ = "0.1.0"
API_VERSION = "1.2"

__all__ = ["API_VERSION", "L2B", "L2BStep", "l2b_step", "load_run", "monai_iteration"]

_API_NAMES = frozenset(("L2B", "L2BStep", "l2b_step", "load_run", "monai_iteration"))
_PREDICT_NAMES = frozenset(("load_run",))


def __getattr__(name: str):
    if name in _PREDICT_NAMES:
        from medl2b import predict

        return getattr(predict, name)
    if name in _API_NAMES:
        from medl2b import api

        return getattr(api, name)
    raise AttributeError(f"module 'medl2b' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API_NAMES)
