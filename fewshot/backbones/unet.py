"""2D U-Net encoder (Models Genesis architecture family).

Four stages of "double conv" blocks, ``(Conv3x3 - BN - ReLU) x 2``, with a 2x2 max-pool
(``ceil_mode=True``) in front of blocks 2-4; channels 32, 64, 128, 256:

=======  ========  ======
stage    channels  stride
=======  ========  ======
block1   32        1
block2   64        2
block3   128       4
block4   256       8
=======  ========  ======

The matching decoder used for Genesis pretraining is
:class:`fewshot.genesis.GenesisDecoder` (upsample + concat skip + conv, works for any
backbone's feature list, so with this encoder it forms a U-Net).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fewshot.backbones.registry import register_backbone
from fewshot.backbones.staged import StagedBackbone

__all__ = ["UNetEncoder", "double_conv"]

_CHANNELS = (32, 64, 128, 256)


def double_conv(c_in: int, c_out: int) -> list[nn.Module]:
    """``(Conv3x3 - BN - ReLU) x 2`` layers (bias-free convs, BN follows)."""
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class UNetEncoder(StagedBackbone):
    """U-Net encoder, stages ``block1..block4`` (see module docs)."""

    all_stages: ClassVar[tuple[str, ...]] = ("block1", "block2", "block3", "block4")
    stage_prefixes: ClassVar[dict[str, tuple[str, ...]]] = {s: (f"{s}.",) for s in all_stages}
    stem_weight_key: ClassVar[str] = "block1.0.weight"

    def __init__(self, name: str = "unet", in_channels: int = 3, truncate: str | None = None) -> None:
        super().__init__(name, in_channels, truncate)
        c_in = in_channels
        for i, (stage, c_out) in enumerate(zip(self.all_stages, _CHANNELS)):
            layers = ([] if i == 0 else [nn.MaxPool2d(2, ceil_mode=True)]) + double_conv(c_in, c_out)
            if stage in self.stage_names:
                self.add_module(stage, nn.Sequential(*layers))
            c_in = c_out
        self._set_feature_info(
            dict(zip(self.all_stages, _CHANNELS)), dict(zip(self.all_stages, (1, 2, 4, 8)))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` -> ``[(N, C_k, ceil(H / s_k), ceil(W / s_k))]`` for kept blocks."""
        feats = []
        for stage in self.stage_names:
            x = getattr(self, stage)(x)
            feats.append(x)
        return feats


@register_backbone("unet", stages=UNetEncoder.all_stages)
def unet(in_channels: int = 3, truncate: str | None = None) -> UNetEncoder:
    """2D U-Net encoder, channels 32-64-128-256 (no ImageNet weights)."""
    return UNetEncoder("unet", in_channels, truncate)
