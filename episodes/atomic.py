"""Atomic file writes, used for every file the library writes (cache entries, NIfTI, JSON, checkpoints).

A write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is flushed and
``fsync``-ed, then ``os.replace``-d onto the target. Readers therefore see either the previous file or
the complete new one, never a partial file; a write that raises leaves the previous file (if any)
untouched and removes its temporary file; an ``OSError`` (a full disk, a read-only folder) is re-raised
naming the target and saying whether its previous version is kept. The temporary file is created with the usual permissions
(``0o666`` minus the umask), so the final file has the same mode as one written with ``open()``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
    "read_json",
    "remove_stale_temps",
]

_MODES = ("wb", "w", "wt")


def _temp_name(path: Path, token: str) -> Path:
    return path.with_name(f".{path.name}.{token}.tmp")


def _create_temp(path: Path) -> Path:
    """Create (exclusively) a new empty temporary file beside ``path``."""
    for _ in range(100):
        tmp = _temp_name(path, secrets.token_hex(4))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


@contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path``, on error it is removed.

    Args:
        path: final file; its folder is created if missing.
        mode: ``"wb"`` (binary) or ``"w"`` / ``"wt"`` (text, ``encoding``).
        encoding: text encoding (text modes only).

    Yields:
        the open temporary file. Write to it inside the ``with`` block; ``path`` is replaced only when
        the block exits without an exception.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_writer mode must be one of {list(_MODES)}, got {mode!r}")
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(target)
        if mode == "wb":
            fh: IO[Any] = open(tmp, "wb")
        else:
            fh = open(tmp, "w", encoding=encoding)
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise _naming_target(e, target) from e
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _naming_target(error: OSError, target: Path) -> OSError:
    """``error`` retold about ``target`` (the user's file), not the hidden temporary file it happened on;
    says that the previous file, if any, is unchanged (e.g. ``ENOSPC``: the disk filled during the write)."""
    if error.errno is None:
        return error
    kept = f" (the previous {target.name} is unchanged)" if target.is_file() else ""
    return OSError(error.errno, f"{error.strerror or error} while writing {target}{kept}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_writer(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON (one trailing newline) to ``path`` atomically; returns ``Path(path)``."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The JSON content of ``path``; an unreadable or invalid file raises ``ValueError`` naming ``what`` it held."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read {what} ({e})") from e


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed atomic writes of ``path`` left beside it; returns them.

    Only call it while no other process may be writing ``path`` (e.g. under a lock).
    """
    target = Path(path)
    stale = sorted(target.parent.glob(_temp_name(target, "*").name)) if target.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
