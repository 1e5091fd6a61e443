"""Overlap metrics for binary segmentation, computed from TP/FP/FN voxel counts.

3D scores follow SSL-ALPNet: the counts of all scored slices of one scan are summed
first and the ratio is taken once per scan (not a mean of 2D slice scores).

Empty cases (a ratio of the form 0/0) are defined, never NaN:

* ``dice``: empty prediction and empty ground truth agree perfectly -> ``1.0``.
* ``precision`` (``tp / (tp + fp)``): nothing predicted -> ``1.0`` if the ground truth is
  empty too, else ``0.0``.
* ``recall`` (``tp / (tp + fn)``): empty ground truth -> ``1.0`` if nothing was predicted,
  else ``0.0``.

SSL-ALPNet itself returns NaN for 0/0 and drops it with ``nanmean``; under its protocol
every scored slice contains the organ, so these cases never arise there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "Counts",
    "ScanScore",
    "confusion_counts",
    "dice",
    "dice_from_counts",
    "precision",
    "precision_from_counts",
    "recall",
    "recall_from_counts",
]

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Counts:
    """Voxel counts of true positives, false positives and false negatives."""

    tp: int
    fp: int
    fn: int

    def __post_init__(self) -> None:
        if min(self.tp, self.fp, self.fn) < 0:
            raise ValueError(f"counts must be >= 0, got tp={self.tp} fp={self.fp} fn={self.fn}")

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def _as_bool(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        values = np.unique(arr)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} must be binary (bool or 0/1), got values {values[:10].tolist()}")
        arr = arr.astype(bool)
    return arr


def confusion_counts(pred: ArrayLike, target: ArrayLike) -> Counts:
    """TP/FP/FN of binary ``pred`` against binary ``target`` (same shape, any rank)."""
    p, t = _as_bool(pred, "pred"), _as_bool(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} does not match target shape {t.shape}")
    tp = int(np.count_nonzero(p & t))
    return Counts(tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(t)) - tp)


def dice_from_counts(c: Counts) -> float:
    """``2 tp / (2 tp + fp + fn)``; ``1.0`` when prediction and target are both empty."""
    den = 2 * c.tp + c.fp + c.fn
    return 1.0 if den == 0 else 2.0 * c.tp / den


def precision_from_counts(c: Counts) -> float:
    """``tp / (tp + fp)``; with nothing predicted: ``1.0`` if the target is empty, else ``0.0``."""
    den = c.tp + c.fp
    if den == 0:
        return 1.0 if c.fn == 0 else 0.0
    return c.tp / den


def recall_from_counts(c: Counts) -> float:
    """``tp / (tp + fn)``; with an empty target: ``1.0`` if nothing was predicted, else ``0.0``."""
    den = c.tp + c.fn
    if den == 0:
        return 1.0 if c.fp == 0 else 0.0
    return c.tp / den


def dice(pred: ArrayLike, target: ArrayLike) -> float:
    """Dice of two binary masks of the same shape (see module doc for empty cases)."""
    return dice_from_counts(confusion_counts(pred, target))


def precision(pred: ArrayLike, target: ArrayLike) -> float:
    return precision_from_counts(confusion_counts(pred, target))


def recall(pred: ArrayLike, target: ArrayLike) -> float:
    return recall_from_counts(confusion_counts(pred, target))


@dataclass(frozen=True)
class ScanScore:
    """3D scores of one query scan for one organ (counts summed over its scored slices)."""

    subject: str
    organ: str
    counts: Counts
    n_slices: int

    @property
    def dice(self) -> float:
        return dice_from_counts(self.counts)

    @property
    def precision(self) -> float:
        return precision_from_counts(self.counts)

    @property
    def recall(self) -> float:
        return recall_from_counts(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """The ``per_scan`` JSON entry: subject, organ, dice, precision, recall (in [0, 1])."""
        return {
            "subject": self.subject,
            "organ": self.organ,
            "dice": self.dice,
            "precision": self.precision,
            "recall": self.recall,
        }
