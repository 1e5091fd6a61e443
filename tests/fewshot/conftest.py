"""Shared fixtures for the few-shot model/head tests: a tiny deterministic backbone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from fewshot.backbones.base import Backbone, FeatureInfo


class TinyBackbone(Backbone):
    """Three conv stages with strides 2, 4, 4 (the last one keeps the resolution, like a dilated stage)."""

    name = "tiny-test"

    def __init__(
        self, in_channels: int = 3, channels: tuple[int, int, int] = (6, 8, 12), seed: int = 0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c1, c2, c3 = channels
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, c1, 3, stride=2, padding=1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=1, padding=1), nn.ReLU())
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else 0.5))
        self.feature_info = (
            FeatureInfo("stage1", c1, 2),
            FeatureInfo("stage2", c2, 4),
            FeatureInfo("stage3", c3, 4),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        return [f1, f2, f3]


@pytest.fixture
def tiny_backbone_cls() -> type[TinyBackbone]:
    """The class itself (tests build fresh instances; importing conftest by module path is fragile)."""
    return TinyBackbone


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Single-threaded torch: far more predictable on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
