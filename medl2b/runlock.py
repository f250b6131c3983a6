"""One writer per run folder: :func:`run_lock`.

Every command that writes into a run folder (``train``, ``eval``, ``audit``, ``predict``) holds
the folder's lock while it works::

    with run_lock(run, what="eval"):
        ...

A second writer stops at once with :class:`RunLockedError` (an :class:`~medl2b.errors.InputError`:
one line, exit code 2) naming the folder and the holder's pid, host and command.

The lock is ``RUN/.medl2b.lock``: an ``fcntl.flock`` on the file, which the kernel releases
when the holder dies however it dies (SIGKILL included), and a line of JSON in it (pid, host,
command, start time) to name the holder. A lock file still holding a line but no ``flock``
was left by a killed process: it is taken over with a warning. So is a lock whose ``flock``
is still held but whose recorded process (on this host) no longer runs, e.g. an orphaned
data-loader worker that inherited the descriptor. A clean exit removes the file.

Re-entrant within one process (a ``train`` that evaluates holds one lock); under ``torchrun``
only rank 0 takes it (``RANK`` unset or ``0``), since only rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the lock file alone (O_EXCL), with the same stale-pid takeover
    fcntl = None  # type: ignore[assignment]

from medl2b.errors import InputError

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock", "lock_holder"]

LOCK_NAME = ".medl2b.lock"

_held: dict[str, list] = {}  # resolved folder -> [fd, depth], for re-entry within this process


class RunLockedError(InputError):
    """Another process holds the run folder's lock."""


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The holder recorded in ``folder``'s lock file (pid, host, command, since), or None."""
    return _read(Path(folder) / LOCK_NAME)


def _read(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _alive(info: dict) -> bool:
    """False only when the recorded process is known to be gone (same host, no such pid)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(info["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _describe(info: dict | None) -> str:
    if info is None:
        return "another process (being set up)"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')} ({info.get('command', '?')}, since {since})"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _acquire(folder: Path, what: str) -> int:
    path = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": f"medl2b {what}", "since": time.time()}
    for _ in range(20):
        flags = os.O_RDWR | os.O_CREAT | (0 if fcntl is not None else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:  # no flock on this platform: the file itself is the lock
            holder = _read(path)
            if holder is not None and not _alive(holder):
                _warn(f"{folder}: taking over the lock of {_describe(holder)}, which no longer runs")
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(folder, f"in use by {_describe(holder)}; wait for it to finish or stop it") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                ino = os.fstat(fd).st_ino
                os.close(fd)
                holder = _read(path)
                if holder is not None and not _alive(holder):  # e.g. a killed run's orphaned loader worker
                    _warn(f"{folder}: taking over the lock of {_describe(holder)}, which no longer runs")
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(path).st_ino == ino:
                            path.unlink()
                    continue
                raise RunLockedError(folder, f"in use by {_describe(holder)}; "
                                             "wait for it to finish or stop it") from None
            try:  # the file we locked must still be the one at the path (not unlinked by a releasing holder)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            stale = _read(path)
            if stale is not None:
                _warn(f"{folder}: taking over the lock left by {_describe(stale)}, which ended without releasing it")
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        return fd
    raise RunLockedError(folder, "cannot take the run folder's lock: it keeps changing hands")


def _release(folder: Path, fd: int) -> None:
    path = folder / LOCK_NAME
    try:
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            path.unlink()  # while still locked: a waiting opener then sees another inode and retries
    except OSError:
        pass
    os.close(fd)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "train", *, create: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block; yield the folder.

    ``what`` names the command in the holder's record and in the message a second writer sees.
    ``create``: make the folder if missing (a new run); with False a missing folder is not locked
    (the command then reports it missing in its own words). Raises :class:`RunLockedError` at once
    if another live process holds the lock.
    """
    folder = Path(folder)
    if os.environ.get("RANK", "0") != "0" or (not create and not folder.is_dir()):
        yield folder  # torchrun: rank 0 writes the run folder and holds its lock
        return
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(folder, what)
    _held[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _held[key]
        _release(folder, fd)
