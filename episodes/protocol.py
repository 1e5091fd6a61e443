"""The SSL-ALPNet evaluation protocol as data: folds, setting 1/2, the chunk protocol, plan JSON.

**Folds** (``ManualAnnoDatasetv2.get_scanids`` with a circular subject list): subjects are taken in
the order given (the loaders sort them by numeric id, as SSL-ALPNet does). With ``n`` subjects and
5 folds, the block boundaries are ``sep[f] = (f * n) // 5``; this reproduces SSL-ALPNet's
``_SEP=[0,4,8,12,16,20]`` for its 20 MR scans and ``[0,6,...,30]`` for its 30 CT scans, and splits any
other count (our copies: 16 MR → blocks of 3,3,3,3,4; 23 CT → 4,5,4,5,5) into consecutive blocks
covering every subject once. Fold ``f``:

* queries = ``subjects[sep[f]:sep[f+1]]``;
* support = the next subject in circular order, ``subjects[sep[f+1] % n]`` (SSL-ALPNet's ``nsup=1``
  extra scan, picked by ``support_idx=[4]`` / ``[6]``);
* train = everything else (SSL-ALPNet: 15 MR / 23 CT).

**Setting 2** removes, from self-supervised training, every slice containing **any** organ of the
tested label group (:data:`SETTING2_GROUPS`: kidneys; liver + spleen), so each fold needs one
training run per group (:meth:`Protocol.training_runs`).

**Chunk protocol** (``n_sup_part=3``, ``ManualAnnoDatasetv2.get_support`` + ``ValidationDataset``):

* support: ``zs`` = sorted slices of the support subject containing the organ, ``L = len(zs)``;
  chunk ``i`` of ``n`` uses ``zs[floor(p * L)]`` with ``p = (2i + 1) / (2n)`` (percentiles 1/6, 1/2,
  5/6 for ``n=3``). For ``k`` shots the ``k`` slices of chunk ``i`` are at
  ``p = (i + (2j + 1) / (2k)) / n``, ``j < k`` (``k=1`` is SSL-ALPNet's rule; SSL-ALPNet's multi-shot
  uses several support *scans* instead). Requires ``k * n <= L`` so the picks are distinct.
* queries: every slice ``z`` in the query's ground-truth range ``z_min..z_max`` (inclusive, also
  slices inside the range without the organ) is scored, with chunk
  ``clamp(floor((z - z_min) / ((z_max - z_min) / n)), 0, n - 1)`` (``0`` when ``z_max == z_min``),
  computed with the same float arithmetic as SSL-ALPNet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .labels import ABDOMINAL_ORGANS, canonical_organ
from .volumes import Volume

__all__ = [
    "N_FOLDS",
    "PLAN_SCHEMA_VERSION",
    "SETTING2_GROUPS",
    "EvaluationPlan",
    "FoldSplit",
    "OrganPlan",
    "Protocol",
    "QueryPlan",
    "fold_boundaries",
    "query_chunk",
    "query_tensors",
    "support_episode_tensors",
    "support_slice_indices",
    "tile_slices",
]

PLAN_SCHEMA_VERSION = 1
N_FOLDS = 5

#: Setting-2 label groups (tested together, excluded together from training), canonical names.
#: SSL-ALPNet: MRI ``[2, 3]`` / ``[1, 4]``, CT ``[2, 3]`` / ``[1, 6]``.
SETTING2_GROUPS: tuple[tuple[str, ...], ...] = (("right_kidney", "left_kidney"), ("liver", "spleen"))


def fold_boundaries(n_subjects: int, n_folds: int = N_FOLDS) -> tuple[int, ...]:
    """Block boundaries ``sep`` (length ``n_folds + 1``): ``sep[f] = (f * n) // n_folds``."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if n_subjects < n_folds + 1:
        raise ValueError(
            f"{n_subjects} subjects are too few for {n_folds} folds (need at least {n_folds + 1}: "
            "every fold needs a query block and a separate support subject)"
        )
    return tuple((f * n_subjects) // n_folds for f in range(n_folds + 1))


@dataclass(frozen=True)
class FoldSplit:
    """Subjects of one fold: self-supervised training, the support scan, the query scans."""

    train: tuple[str, ...]
    support: str
    queries: tuple[str, ...]


def support_slice_indices(
    organ_slices: Sequence[int], chunks: int, shots: int
) -> tuple[tuple[int, ...], ...]:
    """Support slices per chunk (see module docs).

    Args:
        organ_slices: sorted slice indices of the support subject that contain the organ.
        chunks: number of chunks ``n``.
        shots: slices per chunk ``k``.

    Returns:
        ``n`` tuples of ``k`` slice indices.
    """
    zs = list(organ_slices)
    n_slices = len(zs)
    if chunks < 1 or shots < 1:
        raise ValueError(f"chunks and shots must be >= 1, got chunks={chunks}, shots={shots}")
    if shots * chunks > n_slices:
        raise ValueError(
            f"{shots}-shot with {chunks} chunks needs {shots * chunks} distinct support slices, but the organ "
            f"covers only {n_slices} slice(s) ({n_slices // chunks} per chunk)"
        )
    out = []
    for i in range(chunks):
        picks = []
        for j in range(shots):
            pct = (Fraction(i) + Fraction(2 * j + 1, 2 * shots)) / chunks
            picks.append(zs[math.floor(pct * n_slices)])
        out.append(tuple(int(z) for z in picks))
    return tuple(out)


def query_chunk(z: int, z_min: int, z_max: int, chunks: int) -> int:
    """Chunk of query slice ``z`` in the organ range ``z_min..z_max`` (SSL-ALPNet ``part_assign``)."""
    if z_max == z_min:
        return 0
    part = int((z - z_min) // ((z_max - z_min) / chunks))
    return min(max(part, 0), chunks - 1)


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
class Protocol:
    """An SSL-ALPNet-style evaluation protocol.

    Attributes:
        dataset: dataset name (``"chaos-mr"``, ``"btcv-ct"`` or another registered name).
        fold: 0..4.
        setting: 1 (Roy et al., nothing excluded) or 2 (test organs' slices excluded from training).
        organs: organs to evaluate (canonical names).
        shots: support slices per chunk.
        chunks: number of chunks (``n_sup_part``, 3).
        support_subject: explicit support subject (overrides the fold rule).
        query_subjects: explicit query subjects (default with an explicit support: all others).
    """

    dataset: str
    fold: int = 0
    setting: int = 1
    organs: tuple[str, ...] = ABDOMINAL_ORGANS
    shots: int = 1
    chunks: int = 3
    support_subject: str | None = None
    query_subjects: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.fold < N_FOLDS:
            raise ValueError(f"fold must be in 0..{N_FOLDS - 1}, got {self.fold}")
        if self.setting not in (1, 2):
            raise ValueError(f"setting must be 1 or 2, got {self.setting}")
        if self.shots < 1 or self.chunks < 1:
            raise ValueError(f"shots and chunks must be >= 1, got shots={self.shots}, chunks={self.chunks}")
        organs = tuple(canonical_organ(o) for o in self.organs)
        if not organs or len(set(organs)) != len(organs):
            raise ValueError(f"organs must be non-empty and unique, got {self.organs}")
        object.__setattr__(self, "organs", organs)
        if self.query_subjects is not None:
            object.__setattr__(self, "query_subjects", tuple(str(s) for s in self.query_subjects))
            if self.support_subject is not None and self.support_subject in self.query_subjects:
                raise ValueError(f"support subject {self.support_subject!r} is also a query subject")

    # ---- splits and settings ------------------------------------------------------------

    def split(self, subject_ids: Sequence[str]) -> FoldSplit:
        """Train / support / query subjects for this fold (or the explicit subjects)."""
        ids = [str(s) for s in subject_ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate subject ids: {ids}")
        if self.support_subject is not None:
            if self.support_subject not in ids:
                raise ValueError(f"support subject {self.support_subject!r} not among subjects {ids}")
            queries = self.query_subjects or tuple(s for s in ids if s != self.support_subject)
            missing = [q for q in queries if q not in ids]
            if missing:
                raise ValueError(f"query subjects {missing} not among subjects {ids}")
            train = tuple(s for s in ids if s != self.support_subject and s not in queries)
            return FoldSplit(train=train, support=self.support_subject, queries=tuple(queries))
        if self.query_subjects is not None:
            raise ValueError("query_subjects needs an explicit support_subject")
        sep = fold_boundaries(len(ids))
        lo, hi = sep[self.fold], sep[self.fold + 1]
        queries = tuple(ids[lo:hi])
        support = ids[hi % len(ids)]
        train = tuple(s for s in ids if s not in queries and s != support)
        return FoldSplit(train=train, support=support, queries=queries)

    def excluded_organs(self, organ: str) -> tuple[str, ...]:
        """Organs whose slices are removed from training when ``organ`` is tested (setting 2)."""
        key = canonical_organ(organ)
        if self.setting == 1:
            return ()
        for group in SETTING2_GROUPS:
            if key in group:
                return group
        raise ValueError(f"organ {organ!r} is in no setting-2 group; groups: {SETTING2_GROUPS}")

    def training_runs(self) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
        """``((tested organs, excluded organs), ...)``: one run (setting 1) or one per group (setting 2)."""
        if self.setting == 1:
            return ((self.organs, ()),)
        runs = []
        for group in SETTING2_GROUPS:
            tested = tuple(o for o in self.organs if o in group)
            if tested:
                runs.append((tested, group))
        leftover = [o for o in self.organs if not any(o in g for g in SETTING2_GROUPS)]
        if leftover:
            raise ValueError(f"organs {leftover} are in no setting-2 group; groups: {SETTING2_GROUPS}")
        return tuple(runs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["organs"] = list(self.organs)
        d["query_subjects"] = None if self.query_subjects is None else list(self.query_subjects)
        d["exclude_mode"] = "any"
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Protocol:
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["organs"] = tuple(kwargs.get("organs", ABDOMINAL_ORGANS))
        if kwargs.get("query_subjects") is not None:
            kwargs["query_subjects"] = tuple(kwargs["query_subjects"])
        return cls(**kwargs)

    # ---- plan ----------------------------------------------------------------------------

    def build_plan(self, volumes: Sequence[Volume]) -> EvaluationPlan:
        """Materialise support and query slices for every organ (labels required)."""
        by_id = {v.subject: v for v in volumes}
        if len(by_id) != len(volumes):
            raise ValueError(f"duplicate subject ids: {[v.subject for v in volumes]}")
        split = self.split([v.subject for v in volumes])
        support = by_id[split.support]
        organ_plans = []
        for organ in self.organs:
            value = support.label_map.value(organ)
            zs = support.slices_with(organ)
            if zs.size == 0:
                raise ValueError(
                    f"organ {organ!r} (label {value}) is absent from support subject {support.subject!r}; "
                    "choose another support_subject"
                )
            try:
                support_slices = support_slice_indices(zs.tolist(), self.chunks, self.shots)
            except ValueError as exc:
                raise ValueError(f"support subject {support.subject!r}, organ {organ!r}: {exc}") from exc
            queries = []
            for sid in split.queries:
                q = by_id[sid]
                qz = q.slices_with(organ)
                if qz.size == 0:
                    raise ValueError(f"organ {organ!r} is absent from query subject {sid!r}")
                z_min, z_max = int(qz[0]), int(qz[-1])
                slices = tuple(range(z_min, z_max + 1))
                chunks = tuple(query_chunk(z, z_min, z_max, self.chunks) for z in slices)
                queries.append(QueryPlan(subject=sid, slices=slices, chunks=chunks))
            organ_plans.append(
                OrganPlan(
                    organ=organ,
                    label_value=value,
                    support_subject=support.subject,
                    support_slices=support_slices,
                    queries=tuple(queries),
                )
            )
        return EvaluationPlan(protocol=self, split=split, organs=tuple(organ_plans))


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationPlan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read evaluation plan ({exc})") from exc
        return cls.from_dict(data)


# --------------------------------------------------------------------------------------
# Plan → model inputs


def _volume(volumes: Mapping[str, Volume], subject: str) -> Volume:
    if subject not in volumes:
        raise KeyError(f"subject {subject!r} not in volumes; available: {sorted(volumes)}")
    v = volumes[subject]
    if not v.normalized:
        raise ValueError(f"subject {subject}: volumes must be normalised (episodes.preprocess.preprocess)")
    if v.label is None:
        raise ValueError(f"subject {subject}: evaluation needs labels")
    return v


def tile_slices(images: np.ndarray, channels: int) -> torch.Tensor:
    """``(N, H, W)`` slices → ``(N, C, H, W)`` float32 tensor, the single channel tiled ``C`` times."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    return t.expand(-1, channels, -1, -1).contiguous()


def support_episode_tensors(
    plan: OrganPlan, volumes: Mapping[str, Volume], chunk: int, *, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Support images and masks of one chunk.

    Args:
        plan: the organ's plan.
        volumes: ``{subject: normalised labelled Volume}``.
        chunk: chunk index ``0..n-1``.
        channels: ``C`` (the slice is tiled).

    Returns:
        ``(support_images (1, K, C, H, W) float32, support_masks (1, K, H, W) float32 in {0, 1})``.
    """
    if not 0 <= chunk < len(plan.support_slices):
        raise IndexError(f"chunk {chunk} out of range [0, {len(plan.support_slices)})")
    v = _volume(volumes, plan.support_subject)
    zs = list(plan.support_slices[chunk])
    assert v.label is not None
    images = tile_slices(v.image[zs], channels).unsqueeze(0)
    masks = torch.from_numpy((v.label[zs] == plan.label_value).astype(np.float32)).unsqueeze(0)
    return images, masks


def query_tensors(
    query: QueryPlan, volumes: Mapping[str, Volume], label_value: int, *, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query slices of one subject, in plan order.

    Returns:
        ``(images (N, C, H, W) float32, masks (N, H, W) float32 in {0, 1}, chunks (N,) int64)``.
    """
    v = _volume(volumes, query.subject)
    assert v.label is not None
    zs = list(query.slices)
    images = tile_slices(v.image[zs], channels)
    masks = torch.from_numpy((v.label[zs] == label_value).astype(np.float32))
    return images, masks, torch.tensor(query.chunks, dtype=torch.int64)
