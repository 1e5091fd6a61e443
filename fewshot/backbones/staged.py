"""Stage bookkeeping shared by all built-in backbones.

A :class:`StagedBackbone` is a :class:`~fewshot.backbones.base.Backbone` made of an ordered
list of named stages (``stem, layer1..layer4`` for ResNets, ``block1..blockN`` otherwise).
Each stage emits exactly one feature map, so ``feature_info[i]`` describes stage
``stage_names[i]``. Stages also own state-dict key prefixes, which is what truncation
(``truncate=``), weight transfusion (``transfuse:k``) and weight loading use.
"""

from __future__ import annotations

from typing import ClassVar

from fewshot.backbones.base import Backbone, FeatureInfo

__all__ = ["StagedBackbone", "resolve_stages"]


def resolve_stages(all_stages: tuple[str, ...], truncate: str | None) -> tuple[str, ...]:
    """Stages kept when cutting the network after ``truncate`` (``None``: all of them).

    Raises:
        ValueError: ``truncate`` is not one of ``all_stages`` (the message lists them).
    """
    if truncate is None:
        return all_stages
    if truncate not in all_stages:
        raise ValueError(f"unknown truncate stage {truncate!r}; valid stage names: {list(all_stages)}")
    return all_stages[: all_stages.index(truncate) + 1]


class StagedBackbone(Backbone):
    """Backbone with named stages, one feature per stage.

    Subclasses set the class attributes and, in ``__init__``, build only the stages in
    ``self.stage_names`` and then call :meth:`_set_feature_info`.

    Class attributes:
        all_stages: every stage of the full network, in forward order.
        stage_prefixes: stage name -> state-dict key prefixes owned by that stage.
        head_prefixes: key prefixes of a classification head found in pretrained files
            (e.g. ``fc.``); they are ignored when loading.
        stem_weight_key: key of the first conv weight (adapted when ``in_channels != 3``).
    """

    all_stages: ClassVar[tuple[str, ...]] = ()
    stage_prefixes: ClassVar[dict[str, tuple[str, ...]]] = {}
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    stem_weight_key: ClassVar[str] = ""

    def __init__(self, name: str, in_channels: int, truncate: str | None) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.name = name
        self.in_channels = in_channels
        self.truncate = truncate
        self.stage_names: tuple[str, ...] = resolve_stages(self.all_stages, truncate)

    def _set_feature_info(self, channels: dict[str, int], strides: dict[str, int]) -> None:
        self.feature_info = tuple(FeatureInfo(s, channels[s], strides[s]) for s in self.stage_names)

    def stage_of_key(self, key: str) -> str | None:
        """Stage (of the FULL network) owning state-dict ``key``, ``None`` if no stage does."""
        for stage, prefixes in self.stage_prefixes.items():
            if any(key.startswith(p) for p in prefixes):
                return stage
        return None

    def keys_of_stages(self, stages: tuple[str, ...] | list[str]) -> list[str]:
        """State-dict keys of this (possibly truncated) backbone belonging to ``stages``."""
        wanted = set(stages)
        return [k for k in self.state_dict() if self.stage_of_key(k) in wanted]
