"""Transfusion's CBR family (Raghu et al., NeurIPS'19) as dense encoders.

Each block is ``Conv2d(k x k, stride 1, 'same' padding k//2, no bias) - BatchNorm - ReLU``
followed by ``MaxPool2d(3, stride 2, padding 1)`` (CBR-LargeT: no pool after its 5th block).
Layouts (our reading of the paper's CBR descriptions; there is no official code):

===========  ======  =======================  ==========================
name         kernel  channels                 pools
===========  ======  =======================  ==========================
cbr-tiny     5x5     32, 64, 128, 256         after each block
cbr-small    7x7     32, 64, 128, 256         after each block
cbr-large-t  7x7     32, 64, 128, 256, 512    after the first 4 blocks
cbr-large-w  7x7     64, 128, 256, 512        after each block
===========  ======  =======================  ==========================

Deviations from the paper's classifiers: no global average pooling and no FC head (we need
dense features). A block's feature is its output *after* its pool, so ``blockK`` has stride
``2**K`` (LargeT ``block5``: 16). There is no official code and there are no ImageNet weights.

``output_stride=s`` (a power of two, 1-16): pools that would take the stride above ``s`` are left out and
every later conv is dilated by the factor they would have applied (timm's ``output_stride``), so each
conv keeps its receptive field in input pixels. The parameters (and state-dict keys) do not change, so
weights of the stride-``2**K`` network load into it. Cut at its last block (``block3`` at ``s=4``) the
network does the same conv work and only skips the final pool: a 2x finer feature map for free.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from fewshot.backbones.registry import register_backbone
from fewshot.backbones.staged import StagedBackbone

__all__ = ["CBR_CONFIGS", "OUTPUT_STRIDES", "CBRBackbone"]

# name -> (kernel, channels, number of leading blocks followed by a pool)
CBR_CONFIGS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "cbr-tiny": (5, (32, 64, 128, 256), 4),
    "cbr-small": (7, (32, 64, 128, 256), 4),
    "cbr-large-t": (7, (32, 64, 128, 256, 512), 4),
    "cbr-large-w": (7, (64, 128, 256, 512), 4),
}

#: Values accepted as ``output_stride`` (``None``: the network's own).
OUTPUT_STRIDES: tuple[int, ...] = (1, 2, 4, 8, 16)


class CBRBackbone(StagedBackbone):
    """CBR encoder; stages ``block1..blockN``, one feature per block (see module docs).

    Stage attributes are set per instance (the stage count depends on the config).
    """

    stem_weight_key: ClassVar[str] = "block1.0.weight"

    def __init__(
        self, name: str, in_channels: int = 3, truncate: str | None = None, output_stride: int | None = None
    ) -> None:
        if output_stride is not None and output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {list(OUTPUT_STRIDES)} or None, got {output_stride!r}")
        if name not in CBR_CONFIGS:
            raise KeyError(f"unknown CBR config {name!r}; choices: {sorted(CBR_CONFIGS)}")
        kernel, chans, n_pools = CBR_CONFIGS[name]
        # Per-instance stage tables shadow the (empty) class attributes.
        self.all_stages = tuple(f"block{i + 1}" for i in range(len(chans)))  # type: ignore[misc]
        self.stage_prefixes = {s: (f"{s}.",) for s in self.all_stages}  # type: ignore[misc]
        super().__init__(name, in_channels, truncate)
        c_in = in_channels
        channels: dict[str, int] = {}
        strides: dict[str, int] = {}
        stride = dilation = 1
        for i, (stage, c_out) in enumerate(zip(self.all_stages, chans)):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if i < n_pools:
                if output_stride is None or stride * 2 <= output_stride:
                    layers.append(nn.MaxPool2d(3, stride=2, padding=1))
                    stride *= 2
                else:
                    dilation *= 2
            channels[stage], strides[stage] = c_out, stride
            if stage in self.stage_names:
                self.add_module(stage, nn.Sequential(*layers))
            c_in = c_out
        self._set_feature_info(channels, strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` -> ``[(N, C_k, ceil(H / s_k), ceil(W / s_k))]`` for kept blocks, ``s_k`` =
        ``min(2**k, output_stride)``."""
        feats = []
        for stage in self.stage_names:
            x = getattr(self, stage)(x)
            feats.append(x)
        return feats


def _make(name: str) -> None:
    def builder(in_channels: int = 3, truncate: str | None = None, output_stride: int | None = None) -> CBRBackbone:
        return CBRBackbone(name, in_channels, truncate, output_stride)

    builder.__name__ = name.replace("-", "_")
    builder.__doc__ = f"Transfusion {name} encoder (no ImageNet weights)."
    n_blocks = len(CBR_CONFIGS[name][1])
    stages = tuple(f"block{i + 1}" for i in range(n_blocks))
    register_backbone(name, stages=stages, output_strides=OUTPUT_STRIDES)(builder)


for _name in CBR_CONFIGS:
    _make(_name)
