"""User-facing errors and safe writing.

Every problem with the user's input is raised as :class:`InputError`. The CLI
prints its message as one line and exits with code 2, never with a traceback.
The message names the file and the problem, e.g.
``Case07.raw: truncated pixel data (expected 7864320 bytes, found 4096)``.

Nothing the user has is overwritten in place: outputs are written to a
temporary sibling path, then renamed (:func:`atomic_dir`, :func:`atomic_file`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["InputError", "TrainingError", "DiskFullError", "RunInterrupted", "atomic_dir", "atomic_file",
           "no_space", "umask_mode"]


class InputError(Exception):
    """Bad user input: a file, a CSV, a config key. Shown as one line, exit code 2."""

    def __init__(self, where: str | os.PathLike | None, problem: str):
        self.where = str(where) if where is not None else None
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class TrainingError(Exception):
    """A run that cannot continue (NaN loss, ...). Shown as one line, exit code 3."""


class DiskFullError(TrainingError):
    """No space left on the device while writing an output (ENOSPC). Shown as one line, exit code 3."""


class RunInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM at a step boundary; ``checkpoint`` holds the state to resume
    from. The CLI prints the resume command and exits with 128 + ``signum`` (130 / 143)."""

    def __init__(self, signum: int, checkpoint: str | os.PathLike, where: str):
        self.signum = signum
        self.checkpoint = str(checkpoint)
        self.where = where
        super().__init__(f"interrupted by signal {signum}; {where}")


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is (or wraps) a full disk or quota (ENOSPC, EDQUOT)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: the mode ``open()`` would give a new file (0644 under umask 022)."""
    old = os.umask(0)
    os.umask(old)
    return mode & ~old


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False, marker: str = "dataset.json") -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success, rename it to ``out``.

    If ``out`` already holds a prepared result (``marker`` exists) and ``overwrite`` is
    False, raise :class:`InputError` before anything is written. On any error the
    temporary folder is removed and ``out`` is left exactly as it was.
    """
    out = Path(out)
    if out.exists():
        if (out / marker).exists() and not overwrite:
            raise InputError(out, f"already holds a prepared dataset ({marker}); pass --overwrite to replace it")
        if out.is_file():
            raise InputError(out, "exists and is a file, not a folder")
        if any(out.iterdir()) and not (out / marker).exists():
            raise InputError(out, "exists and is not empty; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, umask_mode(0o777))  # mkdtemp makes 0700; the result follows the umask like any folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success, atomically replace ``path`` with it.

    The file gets the mode a plain ``open()`` would give (0644 under umask 022), not mkstemp's 0600.
    A full disk while writing ends in :class:`DiskFullError` naming ``path``; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent, suffix="".join(path.suffixes))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if no_space(exc):
            raise DiskFullError(f"no space left on device writing {path}") from None
        raise
