"""Atomic checkpoint files: a Lightning ``CheckpointIO`` that writes through :func:`episodes.atomic.atomic_writer`.

Lightning's own ``TorchCheckpointIO`` writes the final file in place, so a process killed during the
write (``SIGKILL``, power loss) leaves a truncated ``last.ckpt`` that can neither be resumed nor
evaluated. :class:`AtomicCheckpointIO` serialises into a temporary file beside the target
(``.<name>.<random>.tmp``), ``fsync``-s it and ``os.replace``-s it onto the target: the checkpoint on
disk is always the previous complete one or the new complete one. A failed write (an exception while
pickling, a full disk: reported as the ``OSError``, naming ``last.ckpt``) leaves the previous file untouched
and removes the temporary file; a killed
write may leave the temporary file, which :func:`episodes.atomic.remove_stale_temps` deletes.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from episodes.atomic import atomic_writer

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` replaces the target atomically (local paths only)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if "://" in str(path):
            raise ValueError(f"{type(self).__name__} writes local files only, got {str(path)!r}")
        with atomic_writer(path, "wb") as fh:
            try:
                torch.save(checkpoint, fh)
            except RuntimeError as e:  # torch's zip writer hides a failed write (e.g. ENOSPC) behind its own error
                cause = _os_error_in(e)
                if cause is None:
                    raise
                raise cause from None


def _os_error_in(error: BaseException) -> OSError | None:
    """The ``OSError`` that ``error`` was raised while handling (its context chain), if any."""
    seen: BaseException | None = error.__cause__ or error.__context__
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
