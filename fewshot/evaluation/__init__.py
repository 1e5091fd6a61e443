"""Protocol evaluation: overlap metrics, 3D Dice per scan, results, overlays.

* :mod:`~fewshot.evaluation.metrics`: TP/FP/FN counts, Dice, precision, recall;
* :mod:`~fewshot.evaluation.scoring`: :func:`evaluate` a model on an evaluation plan;
* :mod:`~fewshot.evaluation.results`: :class:`EvaluationResult` (JSON, Markdown), :func:`aggregate` over folds;
* :mod:`~fewshot.evaluation.finetune`: test-time fine-tuning on a support set (``model.finetune``);
* :mod:`~fewshot.evaluation.overlays`: overlay pictures;
* :mod:`~fewshot.evaluation.run`: :func:`run_evaluation` of a checkpoint (what ``fewshot evaluate`` runs).
"""

from __future__ import annotations

from fewshot.evaluation.finetune import finetune_on_support
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
from fewshot.evaluation.overlays import save_overlays
from fewshot.evaluation.results import EvaluationResult, aggregate
from fewshot.evaluation.run import output_paths, run_evaluation
from fewshot.evaluation.scoring import evaluate, false_positive_regions, predict_query

__all__ = [
    "Counts",
    "EvaluationResult",
    "ScanScore",
    "aggregate",
    "confusion_counts",
    "dice",
    "dice_from_counts",
    "evaluate",
    "false_positive_regions",
    "finetune_on_support",
    "output_paths",
    "precision",
    "precision_from_counts",
    "predict_query",
    "recall",
    "recall_from_counts",
    "run_evaluation",
    "save_overlays",
]
