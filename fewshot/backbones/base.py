"""The feature contract every backbone honours.

A backbone maps ``(N, in_channels, H, W)`` images to a list of feature maps, one per
entry of :attr:`Backbone.feature_info`, ordered by increasing stride (ties allowed,
e.g. a dilated ResNet keeps stride 8 for its last stages). Feature ``i`` has shape
``(N, feature_info[i].channels, ceil(H / stride_i), ceil(W / stride_i))`` (up to
off-by-one rounding for odd sizes; heads resize to the mask, never assume equality).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from fewshot.backbones.weights import WeightsRecord

__all__ = ["Backbone", "FeatureInfo", "InitReport"]


@dataclass(frozen=True)
class FeatureInfo:
    """Name (stage/block it comes from), channel count and stride of one feature map."""

    name: str
    channels: int
    stride: int


@dataclass
class InitReport:
    """What initialised a backbone: saved with every checkpoint and logged.

    Attributes:
        init: the init spec as given (``"imagenet"``, ``"random:kaiming"``, ``"transfuse:2"``...).
        source: file path or description of the weights (``None`` for pure random init).
        sha256: checksum of the weight file, if one was read.
        loaded: parameter/buffer names copied from pretrained weights.
        randomized: parameter names drawn at random (scheme in ``init``).
        seed: RNG seed used for the random part.
        record: the :class:`~fewshot.backbones.weights.WeightsRecord` of the file read (declared by
            the backbone for ImageNet, stored in the file for Genesis), if known.
    """

    init: str
    source: str | None = None
    sha256: str | None = None
    loaded: list[str] = field(default_factory=list)
    randomized: list[str] = field(default_factory=list)
    seed: int | None = None
    record: WeightsRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "source": self.source,
            "sha256": self.sha256,
            "seed": self.seed,
            "n_loaded": len(self.loaded),
            "n_randomized": len(self.randomized),
            "loaded": list(self.loaded),
            "randomized": list(self.randomized),
            "record": self.record.to_dict() if self.record is not None else None,
        }


class Backbone(nn.Module):
    """Base class: subclasses set ``feature_info`` and implement ``forward``."""

    name: str = ""
    feature_info: tuple[FeatureInfo, ...] = ()
    init_report: InitReport | None = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(f.channels for f in self.feature_info)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(f.stride for f in self.feature_info)
