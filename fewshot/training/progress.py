"""Training progress that suits where it goes: Lightning's bar on a terminal, plain lines elsewhere.

:func:`training_progress` picks; :class:`LineProgress` writes one line per ``every`` percent of
``max_steps`` through :class:`episodes.progress.Progress`, e.g.
``train: 40% (8/20 steps, loss 0.503, fg_dice 0.516, 0.5 steps/s, 00:16 elapsed, ETA 00:24)``.
"""

from __future__ import annotations

from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from episodes.progress import Progress, is_terminal

__all__ = ["LineProgress", "training_progress"]

#: Logged metrics shown in the lines, in this order, when present.
_METRICS = ("loss", "fg_dice")


class LineProgress(Callback):
    """Plain progress lines on ``stream`` (default ``sys.stderr``), written by global rank 0 only."""

    def __init__(self, every: float = 10.0, stream: IO[str] | None = None) -> None:
        self.every = every
        self.stream = stream
        self._progress: Progress | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.max_steps > 0:
            self._progress = Progress(
                trainer.max_steps,
                "train",
                unit="steps",
                every=self.every,
                initial=trainer.global_step,
                stream=self.stream,
                tty=False,
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._progress is None:
            return
        metrics = trainer.callback_metrics
        note = ", ".join(f"{k} {float(metrics[k]):.3f}" for k in _METRICS if k in metrics)
        self._progress.set_done(trainer.global_step, note or None)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._progress = None


def training_progress(enabled: bool, stream: IO[str] | None = None) -> tuple[bool, list[Callback]]:
    """``(enable_progress_bar, callbacks)`` for a ``pl.Trainer``: Lightning's bar when ``stream``
    (default ``sys.stderr``) is a terminal, :class:`LineProgress` otherwise, nothing when disabled."""
    if not enabled:
        return False, []
    if is_terminal(stream):
        return True, []
    return False, [LineProgress(stream=stream)]
