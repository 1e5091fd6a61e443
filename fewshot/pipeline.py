"""The fold pipeline: from a configuration to the prepared data of one fold.

Every command (``train``, ``evaluate``, ``demo``, ``study``, the benchmarks) prepares its data here:

1. load the raw volumes of ``cfg.data.dataset`` (or take ``volumes=``);
2. split them with the protocol (:meth:`episodes.protocol.Protocol.split`): training subjects, and the
   support + query subjects that training never sees;
3. CT: fit :class:`~episodes.data.preprocess.NormStats` on the training split (or take the ones stored
   in a checkpoint), so test scans are normalised with training statistics;
4. ``stage="train"``: superpixels on the raw training volumes resized to ``data.size`` (cached on disk)
   and the normalised training volumes; ``stage="evaluate"``: the evaluation plan and the normalised
   support/query volumes; ``"both"``: all of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from episodes.data.datasets import load_dataset
from episodes.data.preprocess import NormStats, fit_ct_stats, preprocess, resize_volume
from episodes.data.volumes import Volume
from episodes.protocol import EvaluationPlan, FoldSplit, Protocol
from episodes.pseudolabels import SuperpixelStats, compute_dataset_superpixels_with_stats
from fewshot.config import DataConfig

__all__ = ["PreparedFold", "Stage", "load_volumes", "prepare_fold", "split_volumes"]

Stage = Literal["train", "evaluate", "both"]


def load_volumes(data: DataConfig) -> list[Volume]:
    """Raw volumes of ``data.dataset`` from ``data.data_dir`` (:func:`episodes.data.datasets.load_dataset`)."""
    return load_dataset(data.dataset, data.data_dir, **dict(data.loader_args))


def split_volumes(protocol: Protocol, volumes: Sequence[Volume]) -> tuple[FoldSplit, list[Volume], list[Volume]]:
    """``(split, train, test)`` volumes of the fold; test = support + query subjects."""
    split = protocol.split([v.subject for v in volumes])
    train = [v for v in volumes if v.subject in split.train]
    test_ids = {s for s in (split.support, *split.queries) if s is not None}
    return split, train, [v for v in volumes if v.subject in test_ids]


@dataclass(frozen=True)
class PreparedFold:
    """The data of one fold.

    Attributes:
        data: the data config used; ``protocol``: the protocol the split and plan follow.
        split: train / support / query subjects.
        train_raw, test_raw: raw volumes of the training and the support + query subjects.
        modality: ``"CT"`` or ``"MR"`` (of the training scans).
        norm_stats: CT normalisation statistics (``None`` for MR).
        train: normalised training volumes (``stage`` train/both, else empty).
        superpixels: ``{subject: (Z, H, W) int}`` maps at ``data.size`` (train/both, else empty).
        superpixel_stats: cache hits/misses, region counts, seconds (train/both).
        plan: the evaluation plan (evaluate/both).
        test: ``{subject: normalised Volume}`` of the plan's support and queries (evaluate/both).
    """

    data: DataConfig
    protocol: Protocol
    split: FoldSplit
    train_raw: tuple[Volume, ...]
    test_raw: tuple[Volume, ...]
    modality: str
    norm_stats: NormStats | None
    train: tuple[Volume, ...] = ()
    superpixels: Mapping[str, np.ndarray] = field(default_factory=dict)
    superpixel_stats: SuperpixelStats | None = None
    plan: EvaluationPlan | None = None
    test: Mapping[str, Volume] = field(default_factory=dict)

    def require_plan(self) -> EvaluationPlan:
        if self.plan is None:
            raise ValueError("this fold was prepared for training only (stage='train'); it has no plan")
        return self.plan

    def extras(self) -> dict[str, Any]:
        """What a checkpoint records about the data it was trained on."""
        return {
            "norm_stats": self.norm_stats.to_dict() if self.norm_stats is not None else None,
            "modality": self.modality,
            "dataset": self.data.dataset,
            "train_subjects": [v.subject for v in self.train_raw],
        }


def prepare_fold(
    data: DataConfig,
    volumes: Sequence[Volume] | None = None,
    *,
    stage: Stage = "both",
    protocol: Protocol | None = None,
    norm_stats: NormStats | None = None,
    fit_norm_stats: bool = True,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PreparedFold:
    """Prepare one fold of ``data`` (see the module docstring).

    Args:
        data: the data config (dataset, size, superpixels, protocol...).
        volumes: raw (un-normalised) volumes of the whole dataset; default: loaded from ``data``.
        stage: ``"train"``, ``"evaluate"`` or ``"both"``.
        protocol: the protocol to split and plan with (default ``data.protocol``).
        norm_stats: CT statistics to use (e.g. from a checkpoint); default: fitted on the training split
            when ``fit_norm_stats`` (``False``: CT scans without statistics are refused by ``preprocess``).
        cache_dir: superpixel cache folder (default ``data.cache_dir``; required for training when that is unset).
        progress: show the superpixel progress.
    """
    protocol = protocol if protocol is not None else data.protocol
    raw = list(volumes) if volumes is not None else load_volumes(data)
    normalized = [v.subject for v in raw if v.normalized]
    if normalized:
        raise ValueError(f"the fold pipeline needs raw volumes; already normalised: {normalized}")
    split, train_raw, test_raw = split_volumes(protocol, raw)
    if not train_raw and stage != "evaluate":
        raise ValueError(f"fold {protocol.fold} leaves no training subject (split: {split})")
    modalities = sorted({v.modality for v in train_raw or test_raw})
    if len(modalities) != 1:
        raise ValueError(f"the volumes mix modalities {modalities}")
    modality = modalities[0]
    if norm_stats is None and modality == "CT" and fit_norm_stats and train_raw:
        norm_stats = fit_ct_stats(train_raw)
    out: dict[str, Any] = {}
    if stage in ("train", "both"):
        cache = cache_dir if cache_dir is not None else data.cache_dir
        if cache is None:
            raise ValueError("training needs a superpixel cache folder: set data.cache_dir or pass cache_dir")
        maps, sp_stats = compute_dataset_superpixels_with_stats(
            [resize_volume(v, data.size, spacing=data.spacing) for v in train_raw],
            data.superpixels,
            cache_dir=cache,
            workers=data.superpixel_workers,
            progress=progress,
        )
        out.update(
            train=tuple(preprocess(v, size=data.size, ct_stats=norm_stats, spacing=data.spacing) for v in train_raw),
            superpixels=maps,
            superpixel_stats=sp_stats,
        )
    if stage in ("evaluate", "both"):
        plan = protocol.build_plan(raw)
        used = {plan.split.support, *plan.split.queries}
        out.update(
            plan=plan,
            test={
                v.subject: preprocess(v, size=data.size, ct_stats=norm_stats, spacing=data.spacing)
                for v in raw
                if v.subject in used
            },
        )
    return PreparedFold(
        data=data,
        protocol=protocol,
        split=split,
        train_raw=tuple(train_raw),
        test_raw=tuple(test_raw),
        modality=modality,
        norm_stats=norm_stats,
        **out,
    )
