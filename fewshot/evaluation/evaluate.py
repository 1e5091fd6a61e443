"""Protocol evaluation: 3D Dice per query scan with the SSL-ALPNet chunk protocol.

For each organ of an :class:`~episodes.protocol.EvaluationPlan` and each query scan, every
scored slice is segmented with the support slices of its chunk (support batch 1,
broadcast over a batch of query slices), the foreground of ``argmax`` is compared with
the ground truth, and TP/FP/FN are summed over the scan's scored slices before Dice,
precision and recall are taken (:mod:`fewshot.evaluation.metrics`). Organ score = mean
over query scans; ``mean`` = mean over organs. :func:`aggregate` averages folds.

JSON schema of :meth:`EvaluationResult.to_json` (scores in [0, 1])::

    {"dice": {"<organ>": float, ..., "mean": float},
     "precision": {...}, "recall": {...},
     "per_scan": [{"subject": str, "organ": str, "dice": float, "precision": float, "recall": float}],
     "config": {...}, "library_version": str, "timing": {...}, ...extras}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from episodes.protocol import EvaluationPlan, OrganPlan, Protocol, query_tensors, support_episode_tensors
from episodes.volumes import Volume

from .metrics import Counts, ScanScore, confusion_counts

__all__ = [
    "EvaluationResult",
    "aggregate",
    "evaluate",
    "output_paths",
    "predict_query",
    "run_evaluation",
    "save_overlays",
]

SCORES = ("dice", "precision", "recall")


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)
    return path


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
        return _atomic_write(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> EvaluationResult:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read evaluation result ({e})") from e
        return cls.from_dict(data)

    def to_markdown(self, title: str | None = None) -> str:
        """Table: organs as columns (then ``mean``), rows Dice / precision / recall in %."""
        cols = [*self.organs, "mean"]
        lines = [f"### {title}", ""] if title else []
        lines.append("| metric | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for name, label in (("dice", "Dice (%)"), ("precision", "Precision (%)"), ("recall", "Recall (%)")):
            scores = getattr(self, name)
            lines.append(f"| {label} | " + " | ".join(f"{100 * scores[c]:.2f}" for c in cols) + " |")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- inference


def _model_channels(model: nn.Module, channels: int | None) -> int:
    if channels is not None:
        return channels
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "in_channels"):
        raise ValueError("model has no config.in_channels; pass channels=")
    return int(config.in_channels)


@torch.inference_mode()
def predict_query(
    model: nn.Module,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_images: torch.Tensor,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> torch.Tensor:
    """Foreground masks ``(N, H, W)`` bool of ``query_images (N, C, H, W)`` given one support set.

    ``support_images (1, K, C, H, W)`` / ``support_masks (1, K, H, W)`` are broadcast over
    query batches of ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    s_img, s_msk = support_images.to(device), support_masks.to(device)
    out = []
    for start in range(0, query_images.shape[0], batch_size):
        q = query_images[start : start + batch_size].to(device)
        with torch.autocast(device_type=device.type, enabled=amp):
            logits = model(s_img, s_msk, q).logits
        out.append((logits.argmax(1) == 1).cpu())
    if not out:
        return torch.zeros((0, *query_images.shape[-2:]), dtype=torch.bool)
    return torch.cat(out)


def _evaluate_organ(
    model: nn.Module,
    plan: OrganPlan,
    volumes: Mapping[str, Volume],
    channels: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
) -> tuple[list[ScanScore], int]:
    supports = [
        support_episode_tensors(plan, volumes, c, channels=channels) for c in range(len(plan.support_slices))
    ]
    scores, n_slices = [], 0
    for query in plan.queries:
        images, masks, chunks = query_tensors(query, volumes, plan.label_value, channels=channels)
        pred = torch.zeros(masks.shape, dtype=torch.bool)
        for c, (s_img, s_msk) in enumerate(supports):
            idx = torch.nonzero(chunks == c).flatten()
            if idx.numel():
                pred[idx] = predict_query(
                    model, s_img, s_msk, images[idx], batch_size=batch_size, device=device, amp=amp
                )
        bad = sorted(set(chunks.tolist()) - set(range(len(supports))))
        if bad:
            raise ValueError(
                f"query {query.subject}: chunks {bad} have no support (plan has {len(supports)})"
            )
        counts = confusion_counts(pred.numpy(), masks.numpy().astype(bool))
        scores.append(
            ScanScore(subject=query.subject, organ=plan.organ, counts=counts, n_slices=len(query.slices))
        )
        n_slices += len(query.slices)
    return scores, n_slices


def _mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot average an empty list of scores")
    return float(math.fsum(values) / len(values))


def _summaries(per_organ: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in SCORES:
        organ_means = {organ: _mean([float(s[name]) for s in rows]) for organ, rows in per_organ.items()}
        out[name] = {**organ_means, "mean": _mean(list(organ_means.values()))}
    return out


def evaluate(
    model: nn.Module,
    plan: EvaluationPlan,
    volumes: Mapping[str, Volume],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    channels: int | None = None,
    amp: bool | None = None,
    config: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Score ``model`` on ``plan``.

    Args:
        model: ``FewShotSegmenter``-like (``model(s_img, s_msk, q).logits (N, 2, H, W)``).
        plan: the fold's evaluation plan.
        volumes: ``{subject: preprocessed labelled Volume}`` for the plan's support and queries.
        batch_size: query slices per forward pass.
        device: default: the model's device.
        channels: input channels (default ``model.config.in_channels``).
        amp: autocast (default: on for CUDA).
        config: experiment config stored in the result.
    """
    from fewshot import __version__

    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    channels = _model_channels(model, channels)
    was_training = model.training
    model.eval().to(device)
    t0 = time.perf_counter()
    per_organ: dict[str, list[Mapping[str, Any]]] = {}
    all_scores: list[ScanScore] = []
    n_slices = 0
    try:
        for organ_plan in plan.organs:
            scores, n = _evaluate_organ(model, organ_plan, volumes, channels, batch_size, device, amp)
            if not scores:
                raise ValueError(f"organ {organ_plan.organ!r}: the plan has no query scan")
            per_organ[organ_plan.organ] = [s.to_dict() for s in scores]
            all_scores += scores
            n_slices += n
    finally:
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    summary = _summaries(per_organ)
    total = sum((s.counts for s in all_scores), Counts(0, 0, 0))
    return EvaluationResult(
        dice=summary["dice"],
        precision=summary["precision"],
        recall=summary["recall"],
        per_scan=tuple(s.to_dict() for s in all_scores),
        config=dict(config or {}),
        library_version=__version__,
        extras={
            "protocol": plan.protocol.to_dict(),
            "split": {
                "train": list(plan.split.train),
                "support": plan.split.support,
                "queries": list(plan.split.queries),
            },
            "counts": {"tp": total.tp, "fp": total.fp, "fn": total.fn},
            "timing": {
                "seconds": seconds,
                "scans": len(all_scores),
                "slices": n_slices,
                "scans_per_s": len(all_scores) / seconds if seconds > 0 else 0.0,
                "slices_per_s": n_slices / seconds if seconds > 0 else 0.0,
                "device": str(device),
                "batch_size": batch_size,
                "amp": amp,
            },
        },
    )


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


# -------------------------------------------------------------------------------------- overlays


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return (np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    rgb = np.repeat(_grey(image)[..., None], 3, axis=-1).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color, dtype=np.float32)
    return rgb.astype(np.uint8)


def save_overlays(
    model: nn.Module,
    plan: EvaluationPlan,
    volumes: Mapping[str, Volume],
    out_dir: str | os.PathLike[str],
    *,
    n: int = 4,
    device: torch.device | str | None = None,
    channels: int | None = None,
) -> list[Path]:
    """PNG panels ``support | query | prediction | ground truth`` for ``n`` slices per organ.

    Slices are spread evenly over the first query scan's scored range. Returns the files.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if device is None:
        device = next(model.parameters()).device
    channels = _model_channels(model, channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval().to(device)
    paths: list[Path] = []
    try:
        for organ_plan in plan.organs:
            if not organ_plan.queries:
                continue
            query = organ_plan.queries[0]
            images, masks, chunks = query_tensors(query, volumes, organ_plan.label_value, channels=channels)
            picks = np.unique(
                np.linspace(0, len(query.slices) - 1, num=min(n, len(query.slices))).round().astype(int)
            )
            for i in picks.tolist():
                chunk = int(chunks[i])
                s_img, s_msk = support_episode_tensors(organ_plan, volumes, chunk, channels=channels)
                pred = predict_query(model, s_img, s_msk, images[i : i + 1], device=device)[0].numpy()
                q_img = images[i, 0].numpy()
                panels = [
                    _overlay(s_img[0, 0, 0].numpy(), s_msk[0, 0].numpy(), (0, 200, 255)),
                    _overlay(q_img, np.zeros_like(pred), (0, 0, 0)),
                    _overlay(q_img, pred, (255, 60, 60)),
                    _overlay(q_img, masks[i].numpy(), (60, 255, 60)),
                ]
                sep = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
                row = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=1)
                path = out / f"{organ_plan.organ}_{query.subject}_z{query.slices[i]:03d}.png"
                tmp = path.with_suffix(".tmp.png")
                Image.fromarray(row).save(tmp)
                os.replace(tmp, path)
                paths.append(path)
    finally:
        model.train(was_training)
    return paths


# --------------------------------------------------------------------------------- convenience


def output_paths(out: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`run_evaluation` writes: a folder (``results.json``, ``results.md``, ``plan.json``,
    ``config.yaml``, ``overlays/``) or, for ``out`` ending in ``.json``, that file with the others beside
    it named after its stem (``<stem>.md``, ``<stem>.plan.json``, ``<stem>.config.yaml``, ``<stem>_overlays/``).
    """
    out = Path(out)
    if out.suffix == ".json":
        base = out.with_suffix("")
        return {
            "results": out,
            "markdown": base.with_suffix(".md"),
            "plan": base.with_name(base.name + ".plan.json"),
            "config": base.with_name(base.name + ".config.yaml"),
            "overlays": base.with_name(base.name + "_overlays"),
        }
    return {
        "results": out / "results.json",
        "markdown": out / "results.md",
        "plan": out / "plan.json",
        "config": out / "config.yaml",
        "overlays": out / "overlays",
    }


def run_evaluation(
    checkpoint: str | os.PathLike[str],
    *,
    protocol: Protocol | None = None,
    volumes: Sequence[Volume] | None = None,
    out: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    overlays: int = 0,
    allow_train_overlap: bool = False,
) -> EvaluationResult:
    """Evaluate a :func:`fewshot.training.train` checkpoint under a protocol.

    Args:
        checkpoint: ``last.ckpt`` of a training run.
        protocol: default: the fold/setting/organs of the training config.
        volumes: raw volumes of the whole dataset (default: loaded from the training config);
            the support and query scans are preprocessed like the training scans (CT: with the
            training split's statistics stored in the checkpoint).
        out: if given, a folder or a ``.json`` path for the results, plan, config and
            (``overlays > 0``) overlay PNGs; see :func:`output_paths`.
        batch_size: query slices per forward pass.
        device: default CUDA when available, else CPU.
        overlays: slices per organ to render.
        allow_train_overlap: allow support/query subjects that were used for training.
    """
    from episodes.preprocess import NormStats
    from fewshot.config import load_config, save_config
    from fewshot.training.train import load_model_from_checkpoint, load_volumes, preprocess_volumes

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model, config_dict, extras = load_model_from_checkpoint(checkpoint, map_location=dev)
    cfg = load_config(config_dict)
    protocol = protocol if protocol is not None else cfg.data.protocol()
    raw = list(volumes) if volumes is not None else load_volumes(cfg.data)
    plan = protocol.build_plan(raw)

    used = {plan.split.support, *plan.split.queries}
    overlap = sorted(used & set(extras.get("train_subjects", [])))
    if overlap and not allow_train_overlap:
        raise ValueError(
            f"subjects {overlap} are evaluation scans (support/query) of this protocol but were used to train "
            f"{checkpoint}; evaluate the fold the model was trained for (training fold {cfg.data.fold}) or pass "
            "allow_train_overlap=True"
        )
    if protocol.setting == 2:
        trained_without = set(cfg.data.excluded_organs)
        needed = {o for organ in protocol.organs for o in protocol.excluded_organs(organ)}
        if not needed <= trained_without:
            raise ValueError(
                f"setting 2 needs a model trained without slices of {sorted(needed)}, but {checkpoint} excluded "
                f"only {sorted(trained_without)}"
            )
    stats = extras.get("norm_stats")
    ct_stats = NormStats(**stats) if stats else None
    needed_vols = [v for v in raw if v.subject in used]
    prepared = {v.subject: v for v in preprocess_volumes(needed_vols, cfg.data.size, ct_stats)}
    result = evaluate(model, plan, prepared, batch_size=batch_size, device=dev, config=config_dict)
    result = EvaluationResult(
        dice=result.dice,
        precision=result.precision,
        recall=result.recall,
        per_scan=result.per_scan,
        config=result.config,
        library_version=result.library_version,
        extras={
            **dict(result.extras),
            "checkpoint": str(checkpoint),
            "global_step": extras.get("global_step"),
            "init": (extras.get("init_report") or {}).get("init"),
            "trained_with_library_version": extras.get("library_version"),
        },
    )
    if out is not None:
        paths = output_paths(out)
        result.to_json(paths["results"])
        _atomic_write(paths["markdown"], result.to_markdown(title=f"{protocol.dataset} fold {protocol.fold}"))
        _atomic_write(paths["plan"], json.dumps(plan.to_dict(), indent=1) + "\n")
        save_config(cfg, paths["config"])
        if overlays > 0:
            save_overlays(model, plan, prepared, paths["overlays"], n=overlays, device=dev)
    return result
