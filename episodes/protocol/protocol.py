"""The evaluation :class:`Protocol`: dataset, fold, setting, organs, shots and chunks.

:meth:`Protocol.split` gives a fold's subjects, :meth:`Protocol.training_runs` and
:meth:`Protocol.training_exclusions` the setting-2 exclusions, :meth:`Protocol.build_plan` the
:class:`~episodes.protocol.plan.EvaluationPlan`. The rules are in :mod:`episodes.protocol.folds`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.labels import ABDOMINAL_ORGANS, canonical_organ
from ..data.volumes import Volume
from .folds import (
    N_FOLDS,
    SETTING2_GROUPS,
    FoldSplit,
    TooFewSupportSlices,
    fold_boundaries,
    query_chunk,
    support_slice_indices,
)

if TYPE_CHECKING:
    from .plan import EvaluationPlan

__all__ = ["Protocol"]


@dataclass(frozen=True)
class Protocol:
    """An SSL-ALPNet-style evaluation protocol.

    Attributes:
        dataset: dataset name (``"chaos-mr"``, ``"btcv-ct"`` or another registered name); ``""``
            when not (yet) known, e.g. in a config section filled in from the data settings.
        fold: 0..4, or ``None``: no held-out subjects, training sees every scan (a model for your own data,
            ``fewshot fit --fold all``); evaluating it then needs an explicit ``support_subject``.
        setting: 1 (Roy et al., nothing excluded) or 2 (test organs' slices excluded from training).
        organs: organs to evaluate (canonical names).
        shots: support slices per chunk.
        chunks: number of chunks (``n_sup_part``, 3).
        support_subject: explicit support subject (overrides the fold rule).
        query_subjects: explicit query subjects (default with an explicit support: all others).
        share_support_slices: an organ covering fewer than ``shots * chunks`` slices of the support scan
            (but at least ``shots``) is still scored, neighbouring chunks sharing support slices
            (:func:`~episodes.protocol.folds.support_slice_indices`); off, such a plan raises.
    """

    dataset: str = ""
    fold: int | None = 0
    setting: int = 1
    organs: tuple[str, ...] = ABDOMINAL_ORGANS
    shots: int = 1
    chunks: int = 3
    support_subject: str | None = None
    query_subjects: tuple[str, ...] | None = None
    share_support_slices: bool = False

    def __post_init__(self) -> None:
        if self.fold is not None and not (isinstance(self.fold, int) and 0 <= self.fold < N_FOLDS):
            raise ValueError(f"fold must be in 0..{N_FOLDS - 1} or null (train on every scan), got {self.fold!r}")
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
        if self.fold is None:  # every scan trains; nothing is held out
            return FoldSplit(train=tuple(ids), support=None, queries=())
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

    def training_runs(
        self, groups: tuple[tuple[str, ...], ...] = SETTING2_GROUPS
    ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]:
        """``((tested organs, excluded organs), ...)``: one run (setting 1) or one per label group of ``groups``
        holding a tested organ (setting 2; SSL-ALPNet's groups by default)."""
        if self.setting == 1:
            return ((self.organs, ()),)
        runs = []
        for group in groups:
            tested = tuple(o for o in self.organs if o in group)
            if tested:
                runs.append((tested, group))
        leftover = [o for o in self.organs if not any(o in g for g in groups)]
        if leftover:
            raise ValueError(f"organs {leftover} are in no setting-2 group; groups: {groups}")
        return tuple(runs)

    def training_exclusions(self) -> tuple[str, ...]:
        """Organs whose slices are removed from self-supervised training for this protocol.

        ``()`` in setting 1; in setting 2 the union, in order and without repeats, of
        :meth:`excluded_organs` over :attr:`organs` (one training run covering every tested group).
        """
        if self.setting == 1:
            return ()
        out: list[str] = []
        for organ in self.organs:
            out += [o for o in self.excluded_organs(organ) if o not in out]
        return tuple(out)

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
        from .plan import EvaluationPlan, OrganPlan, QueryPlan  # plan.py imports this module

        by_id = {v.subject: v for v in volumes}
        if len(by_id) != len(volumes):
            raise ValueError(f"duplicate subject ids: {[v.subject for v in volumes]}")
        split = self.split([v.subject for v in volumes])
        if split.support is None:
            raise ValueError(
                "fold: all (a model trained on every scan) has no held-out support or query scans; name them "
                "(--support-subject, --query-subjects) or evaluate a model trained on a fold (--fold 0..4)"
            )
        support = by_id[split.support]
        organ_plans = []
        for organ in self.organs:
            value = support.label_map.value(organ)
            zs = support.slices_with(organ)
            if zs.size == 0:
                present = sorted(int(v) for v in np.unique(support.label) if v > 0) if support.label is not None else []
                hint = (
                    f" (its labels are {present}, read with the {support.label_map.name} label map: if the folder "
                    "uses other numbers, pass --label-map, e.g. chaos-mr)"
                    if present else ""
                )
                raise ValueError(
                    f"organ {organ!r} (label {value}) is absent from support subject {support.subject!r}{hint}; "
                    "choose another support_subject"
                )
            try:
                support_slices = support_slice_indices(
                    zs.tolist(), self.chunks, self.shots, share=self.share_support_slices
                )
            except TooFewSupportSlices as exc:
                raise exc.at(f"support subject {support.subject!r}, organ {organ!r}") from exc
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
