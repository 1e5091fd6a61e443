"""Protocol evaluation: overlap metrics, 3D Dice per scan, reports and overlays."""

from __future__ import annotations

from fewshot.evaluation.evaluate import (
    EvaluationResult,
    aggregate,
    evaluate,
    predict_query,
    run_evaluation,
    save_overlays,
)
from fewshot.evaluation.metrics import (
    Counts,
    ScanScore,
    confusion_counts,
    dice,
    dice_from_counts,
    precision,
    precision_from_counts,
    recall,
    recall_from_counts,
)

__all__ = [
    "Counts",
    "EvaluationResult",
    "ScanScore",
    "aggregate",
    "confusion_counts",
    "dice",
    "dice_from_counts",
    "evaluate",
    "precision",
    "precision_from_counts",
    "predict_query",
    "recall",
    "recall_from_counts",
    "run_evaluation",
    "save_overlays",
]
