"""``genesis``: our Models Genesis encoder file (``fewshot pretrain-genesis``), given by ``weights=``.

The file's ``meta`` must have format :data:`~fewshot.backbones.inits.files.GENESIS_FORMAT` and the
same backbone name; its :class:`~fewshot.backbones.weights.WeightsRecord` (``meta["record"]``) is
copied into the init report.
"""

from __future__ import annotations

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import copy_weights
from fewshot.backbones.inits.files import read_and_reset
from fewshot.backbones.inits.registry import InitContext, register_init
from fewshot.backbones.staged import StagedBackbone

__all__: list[str] = []


@register_init(
    "genesis",
    weights="required",
    hint=(
        "create one with `fewshot pretrain-genesis --backbone {backbone} --out FILE ...` "
        "(or fewshot.genesis.run_pretrain_genesis)"
    ),
)
def init_genesis(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Copy every key of the backbone from the Genesis file."""
    src, report = read_and_reset(backbone, ctx)
    cut = (src.meta or {}).get("truncate")
    missing = [k for k in backbone.state_dict() if k not in src.state]
    if cut is not None and missing:
        raise ValueError(
            f"{str(src.path)!r} holds {backbone.name} pretrained with truncate={cut!r} (output stride "
            f"{(src.meta or {}).get('output_stride')}); this backbone also has {missing[:3]}...: build it with "
            f"the same truncate and output_stride, or pretrain the full backbone"
        )
    copy_weights(backbone, src.state, list(backbone.state_dict()), f"from {str(src.path)!r}", report)
    return report
