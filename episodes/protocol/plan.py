"""The evaluation plan (support and query slices per organ, JSON round-trip) and its model inputs.

:meth:`~episodes.protocol.Protocol.build_plan` makes an :class:`EvaluationPlan`;
:func:`support_episode_tensors` and :func:`query_tensors` turn its entries into tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_json, read_json
from ..data.labels import canonical_organ
from ..data.slices import stack_slices
from ..data.volumes import Volume
from .folds import FoldSplit
from .protocol import Protocol

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "EvaluationPlan",
    "OrganPlan",
    "QueryPlan",
    "query_tensors",
    "support_episode_tensors",
    "tile_slices",
]

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class QueryPlan:
    """Slices of one query subject to score, with the support chunk used for each."""

    subject: str
    slices: tuple[int, ...]
    chunks: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.slices) != len(self.chunks):
            raise ValueError(f"query {self.subject}: {len(self.slices)} slices but {len(self.chunks)} chunks")


@dataclass(frozen=True)
class OrganPlan:
    """Evaluation of one organ: support slices per chunk and the query slices."""

    organ: str
    label_value: int
    support_subject: str
    support_slices: tuple[tuple[int, ...], ...]
    queries: tuple[QueryPlan, ...]


@dataclass(frozen=True)
class EvaluationPlan:
    """Everything an evaluator needs to score one fold; JSON round-trips exactly."""

    protocol: Protocol
    split: FoldSplit
    organs: tuple[OrganPlan, ...]
    schema_version: int = field(default=PLAN_SCHEMA_VERSION)

    def organ(self, name: str) -> OrganPlan:
        key = canonical_organ(name)
        for plan in self.organs:
            if plan.organ == key:
                return plan
        raise KeyError(f"organ {name!r} not in plan; choices: {[p.organ for p in self.organs]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "protocol": self.protocol.to_dict(),
            "split": {
                "train": list(self.split.train),
                "support": self.split.support,
                "queries": list(self.split.queries),
            },
            "organs": [
                {
                    "organ": p.organ,
                    "label_value": p.label_value,
                    "support_subject": p.support_subject,
                    "support_slices": [list(c) for c in p.support_slices],
                    "queries": [
                        {"subject": q.subject, "slices": list(q.slices), "chunks": list(q.chunks)}
                        for q in p.queries
                    ],
                }
                for p in self.organs
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationPlan:
        version = data.get("schema_version")
        if version != PLAN_SCHEMA_VERSION:
            raise ValueError(
                f"unsupported plan schema_version {version!r}; this library reads {PLAN_SCHEMA_VERSION}"
            )
        s = data["split"]
        return cls(
            protocol=Protocol.from_dict(data["protocol"]),
            split=FoldSplit(train=tuple(s["train"]), support=s["support"], queries=tuple(s["queries"])),
            organs=tuple(
                OrganPlan(
                    organ=p["organ"],
                    label_value=int(p["label_value"]),
                    support_subject=p["support_subject"],
                    support_slices=tuple(tuple(int(z) for z in c) for c in p["support_slices"]),
                    queries=tuple(
                        QueryPlan(
                            subject=q["subject"],
                            slices=tuple(int(z) for z in q["slices"]),
                            chunks=tuple(int(c) for c in q["chunks"]),
                        )
                        for q in p["queries"]
                    ),
                )
                for p in data["organs"]
            ),
            schema_version=int(version),
        )

    def to_json(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically (:func:`episodes.atomic.atomic_write_json`)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationPlan:
        return cls.from_dict(read_json(path, "evaluation plan"))


# --------------------------------------------------------------------------------------
# Plan → model inputs


def _volume(volumes: Mapping[str, Volume], subject: str) -> Volume:
    if subject not in volumes:
        raise KeyError(f"subject {subject!r} not in volumes; available: {sorted(volumes)}")
    v = volumes[subject]
    if not v.normalized:
        raise ValueError(
            f"subject {subject}: volumes must be normalised (episodes.data.preprocess.preprocess)"
        )
    if v.label is None:
        raise ValueError(f"subject {subject}: evaluation needs labels")
    return v


def tile_slices(images: np.ndarray, channels: int) -> torch.Tensor:
    """``(N, H, W)`` slices → ``(N, C, H, W)`` float32 tensor, the single channel tiled ``C`` times."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    return t.expand(-1, channels, -1, -1).contiguous()


def support_episode_tensors(
    plan: OrganPlan, volumes: Mapping[str, Volume], chunk: int, *, channels: int = 3, slice_input: str = "tile"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support images and masks of one chunk.

    Args:
        plan: the organ's plan.
        volumes: ``{subject: normalised labelled Volume}``.
        chunk: chunk index ``0..n-1``.
        channels: ``C``.
        slice_input: how a slice fills the channels (:mod:`episodes.data.slices`: ``tile`` or ``adjacent``).

    Returns:
        ``(support_images (1, K, C, H, W) float32, support_masks (1, K, H, W) float32 in {0, 1})``.
    """
    if not 0 <= chunk < len(plan.support_slices):
        raise IndexError(f"chunk {chunk} out of range [0, {len(plan.support_slices)})")
    v = _volume(volumes, plan.support_subject)
    zs = list(plan.support_slices[chunk])
    assert v.label is not None
    images = torch.from_numpy(stack_slices(v.image, zs, channels, slice_input)).unsqueeze(0)
    masks = torch.from_numpy((v.label[zs] == plan.label_value).astype(np.float32)).unsqueeze(0)
    return images, masks


def query_tensors(
    query: QueryPlan,
    volumes: Mapping[str, Volume],
    label_value: int,
    *,
    channels: int = 3,
    slice_input: str = "tile",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query slices of one subject, in plan order (``channels`` and ``slice_input`` as for
    :func:`support_episode_tensors`).

    Returns:
        ``(images (N, C, H, W) float32, masks (N, H, W) float32 in {0, 1}, chunks (N,) int64)``.
    """
    v = _volume(volumes, query.subject)
    assert v.label is not None
    zs = list(query.slices)
    images = torch.from_numpy(stack_slices(v.image, zs, channels, slice_input))
    masks = torch.from_numpy((v.label[zs] == label_value).astype(np.float32))
    return images, masks, torch.tensor(query.chunks, dtype=torch.int64)
