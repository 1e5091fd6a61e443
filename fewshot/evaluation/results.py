"""Evaluation results: per-organ scores of one fold, their JSON/Markdown form, and the mean over folds.

JSON schema of :meth:`EvaluationResult.to_json` (scores in [0, 1])::

    {"dice": {"<organ>": float, ..., "mean": float},
     "precision": {...}, "recall": {...},
     "per_scan": [{"subject": str, "organ": str, "dice": float, "precision": float, "recall": float}],
     "config": {...}, "library_version": str, "timing": {...}, ...extras}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from episodes.atomic import atomic_write_json, read_json

__all__ = ["SCORES", "EvaluationResult", "aggregate", "summarize_scans"]

SCORES = ("dice", "precision", "recall")


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one fold (or the mean of several, see :func:`aggregate`).

    Attributes:
        dice, precision, recall: ``{organ: mean over query scans, "mean": mean over organs}``.
        per_scan: ``[{"subject", "organ", "dice", "precision", "recall"}]``.
        config: resolved experiment config of the evaluated model.
        library_version: version of this library.
        extras: more top-level JSON keys (``timing``, ``protocol``, ``checkpoint``...).
    """

    dice: Mapping[str, float]
    precision: Mapping[str, float]
    recall: Mapping[str, float]
    per_scan: tuple[Mapping[str, Any], ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    library_version: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in SCORES:
            scores = getattr(self, name)
            if "mean" not in scores:
                raise ValueError(f"{name} scores lack the 'mean' entry: {dict(scores)}")
            bad = {k: v for k, v in scores.items() if not (isinstance(v, float) and 0.0 <= v <= 1.0)}
            if bad:
                raise ValueError(f"{name} scores must be floats in [0, 1], got {bad}")
        reserved = {*SCORES, "per_scan", "config", "library_version"} & set(self.extras)
        if reserved:
            raise ValueError(f"extras must not override result keys {sorted(reserved)}")

    @property
    def organs(self) -> list[str]:
        return [k for k in self.dice if k != "mean"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dice": dict(self.dice),
            "precision": dict(self.precision),
            "recall": dict(self.recall),
            "per_scan": [dict(s) for s in self.per_scan],
            "config": dict(self.config),
            "library_version": self.library_version,
            **dict(self.extras),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationResult:
        missing = [k for k in (*SCORES, "per_scan", "config", "library_version") if k not in data]
        if missing:
            raise ValueError(f"evaluation result lacks keys {missing}")
        known = {*SCORES, "per_scan", "config", "library_version"}
        return cls(
            dice={k: float(v) for k, v in data["dice"].items()},
            precision={k: float(v) for k, v in data["precision"].items()},
            recall={k: float(v) for k, v in data["recall"].items()},
            per_scan=tuple(dict(s) for s in data["per_scan"]),
            config=dict(data["config"]),
            library_version=str(data["library_version"]),
            extras={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON (atomically: a partial file never replaces a good one)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> EvaluationResult:
        return cls.from_dict(read_json(path, "evaluation result"))

    def to_markdown(self, title: str | None = None) -> str:
        """Table: organs as columns (then ``mean``), rows Dice / precision / recall in %; then a row per
        extra post-processing variant (``extras["postprocess"]``) and the label resolution, if known."""
        cols = [*self.organs, "mean"]
        lines = [f"### {title}", ""] if title else []
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, label in (("dice", "Dice (%)"), ("precision", "Precision (%)"), ("recall", "Recall (%)")):
            scores = getattr(self, name)
            lines.append(f"| {label} | " + " | ".join(f"{100 * scores[c]:.2f}" for c in cols) + " |")
        variants = dict(self.extras.get("postprocess") or {})
        for step, summary in list(variants.items())[1:]:
            for name in ("dice", "precision", "recall"):
                lines.append(
                    f"| {name.capitalize()} (%), post-processed: {step} | "
                    + " | ".join(f"{100 * summary[name][c]:.2f}" for c in cols)
                    + " |"
                )
        fps = {o: r for o, r in dict(self.extras.get("false_positives") or {}).items() if r}
        if fps:
            regions = list(dict.fromkeys(k for r in fps.values() for k in r))
            lines += ["", "False positives by true region (% of each organ's false-positive voxels):", ""]
            lines.append("| organ | FP voxels | " + " | ".join(regions) + " |")
            lines.append("|---|---:|" + "---:|" * len(regions))
            for organ, r in fps.items():
                total = sum(r.values())
                lines.append(
                    f"| {organ} | {total} | "
                    + " | ".join("-" if k == organ else f"{100 * r.get(k, 0) / total:.1f}" for k in regions)
                    + " |"
                )
        if self.extras.get("resolution"):
            lines += ["", f"Scored against {self.extras['resolution']}."]
        if self.extras.get("threshold") not in (None, 0.5):
            lines += ["", f"Foreground where the predicted probability > {self.extras['threshold']:g} (0.5 = argmax)."]
        return "\n".join(lines) + "\n"


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot average an empty list of scores")
    return float(math.fsum(values) / len(values))


def summarize_scans(per_organ: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in SCORES:
        organ_means = {organ: _mean([float(s[name]) for s in rows]) for organ, rows in per_organ.items()}
        out[name] = {**organ_means, "mean": _mean(list(organ_means.values()))}
    return out


def aggregate(results: Sequence[EvaluationResult]) -> EvaluationResult:
    """Mean over folds of each organ's score (and of the organ mean); per-scan rows concatenated.

    Each row gets a ``fold`` index (position in ``results``); ``extras["folds"]`` keeps the
    per-fold summaries.
    """
    if not results:
        raise ValueError("aggregate: no results")
    organs = results[0].organs
    for i, r in enumerate(results):
        if r.organs != organs:
            raise ValueError(f"result {i} has organs {r.organs}, result 0 has {organs}")
    scores = {
        name: {k: _mean([float(getattr(r, name)[k]) for r in results]) for k in [*organs, "mean"]}
        for name in SCORES
    }
    return EvaluationResult(
        dice=scores["dice"],
        precision=scores["precision"],
        recall=scores["recall"],
        per_scan=tuple({**s, "fold": i} for i, r in enumerate(results) for s in r.per_scan),
        config=dict(results[0].config),
        library_version=results[0].library_version,
        extras={
            "n_folds": len(results),
            "folds": [
                {"protocol": r.extras.get("protocol"), **{name: dict(getattr(r, name)) for name in SCORES}}
                for r in results
            ],
        },
    )
