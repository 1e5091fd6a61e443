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
    meta = src.meta or {}
    where = f"from {str(src.path)!r}"
    if meta.get("truncate") is not None:  # a mismatch error then says how the file was cut
        where += (
            f" (pretrained with truncate={meta['truncate']!r} (output stride {meta.get('output_stride')}): "
            "build the backbone with the same truncate and output_stride)"
        )
    copy_weights(backbone, src.state, list(backbone.state_dict()), where, report)
    return report
