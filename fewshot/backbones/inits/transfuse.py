"""``transfuse:<k>`` (Transfusion weight transfusion): the first ``k`` stages are pretrained.

The first ``k`` stages (in ``backbone.stage_names`` order; ResNet: ``stem, layer1, .., layer4``,
so ``k=1`` is the stem only) are copied from pretrained weights (``weights=`` or ImageNet)
including BN statistics; the rest is ``random:kaiming`` with ``seed``. ``k=0``: fully random,
``k=len(stages)``: fully pretrained.
"""

from __future__ import annotations

import re

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import copy_weights
from fewshot.backbones.inits.files import read_and_reset
from fewshot.backbones.inits.registry import InitContext, InitSpec, init_choices, register_init
from fewshot.backbones.staged import StagedBackbone

__all__: list[str] = []


def _parse(init: str, arg: str) -> InitSpec:
    if not re.fullmatch(r"\d+", arg):
        raise ValueError(
            f"init={init!r}: expected transfuse:<k> with integer k >= 0; choices: {init_choices()}"
        )
    return InitSpec("transfuse", "kaiming", int(arg))


def _check_stages(spec: InitSpec, stages: tuple[str, ...]) -> None:
    assert spec.k is not None
    if spec.k > len(stages):
        raise ValueError(
            f"init='transfuse:{spec.k}': k must be in 0..{len(stages)} for stages {list(stages)}"
        )


@register_init(
    "transfuse",
    weights="optional",
    default_weights="imagenet",
    parse=_parse,
    forms=("transfuse:<k>",),
    check_stages=_check_stages,
)
def init_transfuse(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Copy the keys of the first ``k`` stages; the rest keeps the kaiming draw."""
    assert ctx.spec.k is not None
    src, report = read_and_reset(backbone, ctx)
    needed = backbone.keys_of_stages(backbone.stage_names[: ctx.spec.k])
    copy_weights(backbone, src.state, needed, f"from {str(src.path)!r}", report)
    return report
