"""Output paths of the commands: checked before any work starts, and deleted only when the library made them.

Every command checks its outputs first (:func:`check_output_file`, :func:`check_output_dir`): a file
path that is an existing folder, a folder path that is an existing file, a parent that is a file or
not writable, and an existing output without ``--overwrite`` fail at once, before data is read or a
model trained, with a message naming the path the user gave (not a temporary file).

Folders the library creates hold a marker file, :data:`MARKER` (``.fewshot-output``).
``--overwrite`` only ever deletes a folder holding it (:func:`remove_output_dir`): a folder the user
made, or one written by a version without markers, is refused with a message, never deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "MARKER",
    "OutputError",
    "check_output_dir",
    "check_output_file",
    "check_writable_folder",
    "is_library_output",
    "mark_output_dir",
    "remove_output_dir",
]

#: Marker file written into every output folder the library creates.
MARKER = ".fewshot-output"


class OutputError(ValueError):
    """An output path that cannot be used (the CLI prints one line and exits with status 2)."""


def check_writable_folder(folder: str | os.PathLike[str], option: str = "--out") -> None:
    """Raise :class:`OutputError` unless ``folder`` is (or can be created as) a writable folder."""
    path = Path(folder)
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "" if existing == path else f" (a parent of {path})"
        raise OutputError(f"{option}: {existing}{where} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (to create {path})"
        raise OutputError(f"{option}: cannot write in {existing}{where}: permission denied")


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool, option: str = "--out") -> Path:
    """``path`` as an output file: not a folder, not existing unless ``overwrite``, in a writable folder."""
    out = Path(path)
    if out.is_dir():
        raise OutputError(f"{option} {out} is a folder; give a file path (e.g. {out / 'out'}{out.suffix})")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it")
    check_writable_folder(out.parent, option)
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(f"{option}: cannot replace {out}: permission denied")
    return out


def is_library_output(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds :data:`MARKER` (the library created it)."""
    return (Path(folder) / MARKER).is_file()


def check_output_dir(
    folder: str | os.PathLike[str], *, overwrite: bool, replace: bool = False, option: str = "--out"
) -> Path:
    """``folder`` as an output folder: not a file, writable, and empty unless ``overwrite``.

    Args:
        overwrite: accept a non-empty folder.
        replace: the caller deletes a non-empty folder before writing (``--overwrite`` of ``demo``):
            only a folder holding :data:`MARKER` is accepted.
    """
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out} is an existing file, not a folder; choose another --out")
    check_writable_folder(out, option)
    if out.is_dir() and any(not _bookkeeping(p.name) for p in out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out} exists and is not empty; pass --overwrite or choose another {option}")
        if replace and not is_library_output(out):
            raise OutputError(
                f"{out} was not created by fewshot (no {MARKER} file in it), so --overwrite will not delete it; "
                f"choose another {option} or empty the folder yourself"
            )
    return out


def _bookkeeping(name: str) -> bool:
    """The marker and the commands' lock files (``.train.lock``, ``.evaluate.lock``): not the user's content."""
    return name == MARKER or (name.startswith(".") and name.endswith(".lock"))


def mark_output_dir(folder: str | os.PathLike[str], command: str) -> Path:
    """Create ``folder`` (and parents) if missing; mark it as the library's when it was created here or is empty."""
    out = Path(folder)
    fresh = not out.exists() or all(_bookkeeping(p.name) for p in out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    if fresh and not is_library_output(out):
        (out / MARKER).write_text(
            f"written by `fewshot {command}`: `fewshot {command} --overwrite` may delete this folder\n"
        )
    return out


def remove_output_dir(folder: str | os.PathLike[str]) -> None:
    """Delete ``folder`` if it holds :data:`MARKER`; any other existing folder raises :class:`OutputError`."""
    out = Path(folder)
    if not out.exists():
        return
    if not is_library_output(out):
        raise OutputError(f"{out} was not created by fewshot (no {MARKER} file in it); not deleting it")
    shutil.rmtree(out)
