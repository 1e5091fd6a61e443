"""``meanvar`` (Transfusion Mean-Var, Raghu et al. 2019): only weight statistics are transferred.

Every conv/linear *weight* tensor is drawn i.i.d. from N(mu, sigma^2) with mu/sigma of the
corresponding pretrained tensor (``weights=`` or the ImageNet file). Biases 0, BN reset to defaults
(same as ``random``), as in the paper.
"""

from __future__ import annotations

import torch

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import align_state, conv_linear_weight_keys
from fewshot.backbones.inits.files import read_and_reset
from fewshot.backbones.inits.registry import InitContext, register_init
from fewshot.backbones.staged import StagedBackbone

__all__: list[str] = []


@register_init("meanvar", weights="optional", default_weights="imagenet")
def init_meanvar(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Kaiming base, then each conv/linear weight ~ N(mean, std) of its pretrained counterpart."""
    all_params = [n for n, _ in backbone.named_parameters()]
    src, report = read_and_reset(backbone, ctx)
    keys = conv_linear_weight_keys(backbone)
    stats = align_state(backbone, src.state, keys, f"from {str(src.path)!r}", check_shapes=False)
    params = dict(backbone.named_parameters())
    with torch.no_grad():
        for k in keys:
            s = stats[k].float()
            mu, sd = s.mean().item(), (s.std().item() if s.numel() > 1 else 0.0)
            params[k].normal_(mu, sd, generator=ctx.generator)
    report.randomized = all_params
    return report
