"""VGG-16 encoder as used by PANet (output stride 8).

PANet (``kaixin96/PANet`` ``models/vgg.py``) uses the 13 VGG-16 convs with 3x3/2 max-pools
(padding 1) after blocks 1-3, a 3x3/1 max-pool after block 4, dilation 2 in block 5 and no
ReLU after the last conv. We reproduce that layout but keep torchvision's module indices
(``features.{i}``) so that the official ``vgg16-397923af.pth`` loads key-for-key (its
``classifier.*`` head is ignored; PANet instead copies the first 26 tensors by order).
Index 29 (the last ReLU) is an ``nn.Identity`` and index 30 (the last pool) is dropped.

Stages and features (each taken after the block's last conv/ReLU, before its pool):

=======  ==================  ========  ======
stage    torchvision indices channels  stride
=======  ==================  ========  ======
block1   features.0-3        64        1
block2   features.4-8        128       2
block3   features.9-15       256       4
block4   features.16-22      512       8
block5   features.23-29      512       8
=======  ==================  ========  ======

The 3x3/2 pools with padding 1 give ``ceil(H / 2)`` (torchvision's 2x2 pools would floor).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fewshot.backbones.registry import register_backbone
from fewshot.backbones.staged import StagedBackbone
from fewshot.backbones.weights import torchvision_imagenet

__all__ = ["VGG16Backbone"]

# (stage, conv channel list, dilation); the index layout follows torchvision's vgg16 "D" config.
_BLOCKS: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("block1", (64, 64), 1),
    ("block2", (128, 128), 1),
    ("block3", (256, 256, 256), 1),
    ("block4", (512, 512, 512), 1),
    ("block5", (512, 512, 512), 2),
)
_STRIDES = {"block1": 1, "block2": 2, "block3": 4, "block4": 8, "block5": 8}


def _layout(in_channels: int) -> tuple[list[nn.Module], dict[int, str], dict[str, tuple[str, ...]]]:
    """Full PANet-style layer list, tap index per stage, and state-dict prefixes per stage."""
    layers: list[nn.Module] = []
    taps: dict[int, str] = {}
    prefixes: dict[str, tuple[str, ...]] = {}
    c_in = in_channels
    for b, (stage, chans, dilation) in enumerate(_BLOCKS):
        if b > 0:  # pool closing the previous block: 3x3/2 (PANet), 3x3/1 before the dilated block5
            layers.append(nn.MaxPool2d(3, stride=1 if stage == "block5" else 2, padding=1))
        conv_prefixes = []
        for j, c_out in enumerate(chans):
            conv_prefixes.append(f"features.{len(layers)}.")
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation))
            last = stage == "block5" and j == len(chans) - 1
            layers.append(nn.Identity() if last else nn.ReLU(inplace=True))
            c_in = c_out
        taps[len(layers) - 1] = stage
        prefixes[stage] = tuple(conv_prefixes)
    return layers, taps, prefixes


class VGG16Backbone(StagedBackbone):
    """PANet's VGG-16 encoder with torchvision key names (see module docs)."""

    all_stages: ClassVar[tuple[str, ...]] = tuple(b[0] for b in _BLOCKS)
    stage_prefixes: ClassVar[dict[str, tuple[str, ...]]] = _layout(3)[2]
    head_prefixes: ClassVar[tuple[str, ...]] = ("classifier.",)
    stem_weight_key: ClassVar[str] = "features.0.weight"

    def __init__(self, name: str = "vgg16", in_channels: int = 3, truncate: str | None = None) -> None:
        super().__init__(name, in_channels, truncate)
        layers, taps, _ = _layout(in_channels)
        last_tap = max(i for i, s in taps.items() if s == self.stage_names[-1])
        self.features = nn.Sequential(*layers[: last_tap + 1])
        self._taps = {i: s for i, s in taps.items() if i <= last_tap}
        self._set_feature_info({b[0]: b[1][-1] for b in _BLOCKS}, _STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` -> one feature per kept block (see module docs for shapes)."""
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                feats.append(x)
        return feats


@register_backbone(
    "vgg16",
    stages=VGG16Backbone.all_stages,
    weights={"imagenet": torchvision_imagenet("vgg16-397923af.pth", sha256="397923af")},
)
def vgg16(in_channels: int = 3, truncate: str | None = None) -> VGG16Backbone:
    """PANet's VGG-16 (torchvision ``IMAGENET1K_V1`` weights file ``vgg16-397923af.pth``)."""
    return VGG16Backbone("vgg16", in_channels, truncate)
