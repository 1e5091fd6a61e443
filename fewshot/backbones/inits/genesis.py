"""``genesis`` and ``mim``: our self-supervised encoder files (``fewshot pretrain``), given by ``weights=``.

``genesis``: Models Genesis restoration (Zhou et al., MedIA 2021); ``mim``: masked image modelling (SimMIM, Xie et
al., CVPR 2022), both made by :func:`fewshot.genesis.pretrain_genesis`. The file's ``meta`` must have format
:data:`~fewshot.backbones.inits.files.GENESIS_FORMAT`, the scheme's ``objective`` (files without one are Genesis
files) and the same backbone name; its :class:`~fewshot.backbones.weights.WeightsRecord` (``meta["record"]``) is
copied into the init report.
"""

from __future__ import annotations

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import copy_weights
from fewshot.backbones.inits.files import read_and_reset
from fewshot.backbones.inits.registry import InitContext, register_init
from fewshot.backbones.staged import StagedBackbone

__all__: list[str] = []


def _copy_pretrained(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Copy every key of the backbone from the pretrained file."""
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


# One scheme per pretraining objective (``fewshot.genesis.OBJECTIVES``; not imported here: it imports the backbones).
for _objective in ("genesis", "mim"):
    register_init(
        _objective,
        weights="required",
        hint=(
            f"create one with `fewshot pretrain --objective {_objective} --backbone {{backbone}} --out FILE ...` "
            f"(or fewshot.genesis.run_pretrain_genesis(..., objective={_objective!r}))"
        ),
    )(_copy_pretrained)
