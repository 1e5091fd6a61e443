"""One ``fewshot train`` per output folder: an exclusive ``flock`` on ``<out>/.train.lock``.

:func:`train_lock` takes the lock without waiting and holds it while training runs; a second run in
the same folder fails at once with :class:`OutputInUseError`. The lock belongs to the open file, so the
OS releases it when the holding process exits, however it exits (a ``SIGKILL`` leaves no stale lock).
The holder's pid is written into the file for the error message. Only the launching process takes the
lock: processes that a distributed launcher started for ranks other than 0 (``LOCAL_RANK``,
``NODE_RANK``, ``RANK``... set and not ``0``) share the folder with it. Without ``fcntl`` (Windows) no
lock is taken and a warning says so.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "OutputInUseError", "train_lock"]

logger = logging.getLogger("fewshot")

LOCK_NAME = ".train.lock"

#: Rank variables of the launchers Lightning supports (its own, torchrun, SLURM, MPI, LSF).
_RANK_VARS = (
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "RANK",
    "SLURM_PROCID",
    "OMPI_COMM_WORLD_RANK",
    "PMI_RANK",
    "JSM_NAMESPACE_RANK",
)


class OutputInUseError(ValueError):
    """Another ``fewshot train`` holds the output folder (the CLI exits with status 2)."""


def _launched_rank() -> str | None:
    """The first non-zero rank variable (``"NAME=value"``), or ``None`` in a rank-0 / plain process."""
    for name in _RANK_VARS:
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return f"{name}={value}"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_use_message(out: Path, holder: str, command: str = "train") -> str:
    if holder.isdigit() and not _pid_alive(int(holder)):
        return (
            f"another fewshot {command} (pid {holder}, exited; processes it started still hold the lock) is "
            f"using {out}; end them or choose another --out"
        )
    return (
        f"another fewshot {command} (pid {holder or 'unknown'}) is using {out}; wait for it or choose another --out"
    )


@contextmanager
def train_lock(
    out: str | os.PathLike[str], *, name: str = LOCK_NAME, command: str = "train"
) -> Iterator[Path | None]:
    """Hold the exclusive training lock of folder ``out`` (created if missing) for the ``with`` block.

    ``name``/``command``: the lock file and the command named in the error (``fewshot evaluate`` locks its
    results folder with ``.evaluate.lock``).

    Yields:
        the lock file, or ``None`` when no lock was taken (a non-zero rank, or no ``fcntl``).

    Raises:
        OutputInUseError: another process holds the lock.
    """
    folder = Path(out)
    rank = _launched_rank()
    if rank is not None:
        logger.debug("%s: not locking %s (the rank-0 process holds it)", rank, folder)
        yield None
        return
    if fcntl is None:  # pragma: no cover - Windows
        logger.warning(
            "no fcntl on this platform: concurrent fewshot %s runs in %s are not detected", command, folder
        )
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise OutputInUseError(_in_use_message(folder, holder, command)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
