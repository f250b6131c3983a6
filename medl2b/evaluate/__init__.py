"""Evaluation: per-case metrics, summaries, reports and figures.

- :mod:`medl2b.evaluate.metrics`: Dice / HD95 / ASD per 3-D case with an explicit
  empty-mask policy; accuracy, balanced accuracy and the confusion matrix.
- :mod:`medl2b.evaluate.report`: nnU-Net-like ``summary.json``, ``metrics.csv`` and
  ``report.md``; a markdown comparison table across runs.
- :mod:`medl2b.evaluate.figures`: PNG figures (overlays, α/β weight maps, learning
  curves, confusion matrix).

Submodules are imported on use, so importing this package stays cheap.
"""
