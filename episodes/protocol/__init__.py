"""The SSL-ALPNet evaluation protocol as data: folds, setting 1/2, the chunk protocol, plan JSON.

* :mod:`~episodes.protocol.folds`: the rules (fold blocks, setting-2 groups, support/query chunks).
* :mod:`~episodes.protocol.protocol`: :class:`Protocol`.
* :mod:`~episodes.protocol.plan`: :class:`EvaluationPlan` and the tensors it selects.

Every name is importable from ``episodes.protocol``.
"""

from __future__ import annotations

from .folds import (
    N_FOLDS,
    SETTING2_GROUPS,
    FoldSplit,
    TooFewSupportSlices,
    fold_boundaries,
    query_chunk,
    support_slice_indices,
)
from .plan import (
    PLAN_SCHEMA_VERSION,
    EvaluationPlan,
    OrganPlan,
    QueryPlan,
    query_tensors,
    support_episode_tensors,
    tile_slices,
)
from .protocol import Protocol

__all__ = [
    "N_FOLDS",
    "PLAN_SCHEMA_VERSION",
    "SETTING2_GROUPS",
    "EvaluationPlan",
    "FoldSplit",
    "OrganPlan",
    "Protocol",
    "QueryPlan",
    "TooFewSupportSlices",
    "fold_boundaries",
    "query_chunk",
    "query_tensors",
    "support_episode_tensors",
    "support_slice_indices",
    "tile_slices",
]
