"""Transient rich progress bars on stderr for long preparation and evaluation work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator:
    """Yield ``advance(description=None)``; a no-op when ``enabled`` is False."""
    if not enabled:
        yield lambda description=None: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)

        def advance(description: str | None = None) -> None:
            bar.update(task, advance=1, **({"description": description} if description else {}))

        yield advance
