"""Interchangeable backbones with controlled initialisation.

>>> bb = create_backbone("resnet50", init="random:kaiming", in_channels=1, truncate="layer3", seed=0)
>>> feats = bb(torch.zeros(2, 1, 64, 64))  # [stem (64, s2), layer1 (256, s4), layer2 (512, s8), layer3 (1024, s8)]

Registered: ``resnet50``, ``resnet50-msra``, ``resnet101`` (dilated, output stride 8), ``vgg16`` (PANet layout),
``cbr-tiny``, ``cbr-small``, ``cbr-large-t``, ``cbr-large-w`` (Transfusion), ``unet``
(Models Genesis family). Init schemes: see :mod:`fewshot.backbones.inits`; declared pretrained
weights: :class:`~fewshot.backbones.weights.WeightsRecord`.
"""

from __future__ import annotations

from fewshot.backbones import cbr, resnet, unet, vgg  # noqa: F401  (register built-ins)
from fewshot.backbones.base import Backbone, FeatureInfo, InitReport
from fewshot.backbones.inits import apply_init, get_init, list_inits, parse_init, random_init_, register_init
from fewshot.backbones.registry import (
    BackboneSpec,
    create_backbone,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)
from fewshot.backbones.staged import StagedBackbone
from fewshot.backbones.weights import WeightsRecord

__all__ = [
    "Backbone",
    "BackboneSpec",
    "FeatureInfo",
    "InitReport",
    "StagedBackbone",
    "WeightsRecord",
    "apply_init",
    "create_backbone",
    "get_backbone_spec",
    "get_init",
    "list_backbones",
    "list_inits",
    "parse_init",
    "random_init_",
    "register_backbone",
    "register_init",
]
