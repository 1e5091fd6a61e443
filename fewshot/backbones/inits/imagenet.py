"""``imagenet``: the official torchvision weights, read OFFLINE.

From ``weights=`` or from ``torch.hub.get_dir()/checkpoints/<file>`` of the backbone's declared
``imagenet`` :class:`~fewshot.backbones.weights.WeightsRecord`. A file carrying the declared name
must match the record's sha256. Never falls back to random; nothing is downloaded.
"""

from __future__ import annotations

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import copy_weights
from fewshot.backbones.inits.files import read_and_reset
from fewshot.backbones.inits.registry import InitContext, register_init
from fewshot.backbones.staged import StagedBackbone

__all__: list[str] = []


@register_init("imagenet", weights="optional", default_weights="imagenet")
def init_imagenet(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Copy every key of the backbone from the file (stem adapted to ``in_channels``)."""
    src, report = read_and_reset(backbone, ctx)
    copy_weights(backbone, src.state, list(backbone.state_dict()), f"from {str(src.path)!r}", report)
    return report
