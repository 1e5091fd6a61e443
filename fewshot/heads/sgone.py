"""SG-One head (Zhang et al. 2020): MAP prototypes + scaled cosine classifier, no alignment loss.

The :class:`~fewshot.heads.panet.PANetHead` classifier with ``align=False``; see
:mod:`fewshot.heads.panet` for the prototypes, the reduction and the empty-support behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.panet import PANetHead, check_prototype_config
from fewshot.heads.registry import HeadConfig, register_head

__all__ = ["SGOneConfig"]


@dataclass(frozen=True)
class SGOneConfig(HeadConfig):
    """SG-One head: ``feature_dim`` channels after the 1x1 reduction (0 = none), cosine ``scale``."""

    name: str = "sgone"
    feature_dim: int = 256
    scale: float = 20.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prototype_config(self.feature_dim, self.scale)


@register_head("sgone", config=SGOneConfig)
def build_sgone(config: SGOneConfig, feature_info: Sequence[FeatureInfo]) -> PANetHead:
    return PANetHead(feature_info, feature_dim=config.feature_dim, scale=config.scale, align=False)
