"""Matching a pretrained state dict to a backbone: key checks, stem adaptation, copying.

Classification heads (``fc.*``, ``classifier.*``) and stages removed by ``truncate`` are ignored
in pretrained files; any other missing/unexpected key is an error. Pretrained stems are adapted
when ``in_channels`` differs from the file's: for 1 channel the RGB kernels are summed; for ``c``
channels the RGB (or gray) kernels are tiled to ``c`` and scaled by ``3 / c`` (``1 / c``), timm's rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from fewshot.backbones.base import InitReport
from fewshot.backbones.staged import StagedBackbone

__all__ = [
    "CONV_LINEAR",
    "NORMS",
    "adapt_stem_weight",
    "align_state",
    "conv_linear_weight_keys",
    "copy_weights",
]

CONV_LINEAR = (nn.modules.conv._ConvNd, nn.Linear)
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def conv_linear_weight_keys(module: nn.Module) -> list[str]:
    """State-dict keys of every conv/linear ``weight`` in ``named_modules()`` order."""
    return [f"{n}.weight" if n else "weight" for n, m in module.named_modules() if isinstance(m, CONV_LINEAR)]


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem kernel ``(O, c_src, k, k)`` (``c_src`` 3 or 1) to ``(O, in_channels, k, k)``.

    RGB -> 1 channel: sum over RGB. RGB -> c: tile RGB to ``c`` and scale by ``3 / c``.
    1 -> c: tile and scale by ``1 / c``. The response to a gray image tiled over the input
    channels is unchanged when ``in_channels`` is 1 or a multiple of ``c_src`` (otherwise only
    the overall weight scale is kept, as in timm).
    """
    c_src = weight.shape[1]
    if c_src not in (1, 3):
        raise ValueError(f"can only adapt 1- or 3-channel stem kernels, got shape {tuple(weight.shape)}")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / c_src)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c_src / in_channels)


def align_state(
    backbone: StagedBackbone,
    source: Mapping[str, torch.Tensor],
    needed: Iterable[str],
    where: str,
    *,
    check_shapes: bool = True,
) -> dict[str, torch.Tensor]:
    """Match ``source`` to the backbone's keys; returns ``{key: tensor}`` for the ``needed`` keys.

    Raises:
        ValueError: missing needed keys, unexpected source keys (other than heads and truncated
            stages) or shape mismatches.
    """
    target = backbone.state_dict()
    needed = list(needed)
    missing = [k for k in needed if k not in source and not k.endswith("num_batches_tracked")]
    unexpected = [
        k
        for k in source
        if k not in target
        and not k.startswith(backbone.head_prefixes)
        and backbone.stage_of_key(k) in (*backbone.stage_names, None)
    ]
    if missing or unexpected:
        raise ValueError(
            f"weights {where} do not match backbone {backbone.name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:5]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:5]})"
        )
    out: dict[str, torch.Tensor] = {}
    for k in needed:
        if k not in source:
            continue
        v = source[k]
        t_shape = target[k].shape
        if check_shapes and k == backbone.stem_weight_key and v.dim() == 4 and v.shape[1] != t_shape[1]:
            v = adapt_stem_weight(v.float(), backbone.in_channels)
        if check_shapes and v.shape != target[k].shape:
            raise ValueError(
                f"weights {where}: shape mismatch for {k!r}: file {tuple(v.shape)} vs backbone "
                f"{tuple(target[k].shape)}"
            )
        out[k] = v.to(dtype=target[k].dtype)
    return out


def copy_weights(
    backbone: StagedBackbone,
    source: Mapping[str, torch.Tensor],
    needed: Iterable[str],
    where: str,
    report: InitReport,
) -> None:
    """Copy the ``needed`` keys of ``source`` into ``backbone``; fills ``report.loaded/randomized``."""
    all_params = [n for n, _ in backbone.named_parameters()]
    aligned = align_state(backbone, source, needed, where)
    result = backbone.load_state_dict(aligned, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    loaded = set(aligned)
    report.loaded = [k for k in backbone.state_dict() if k in loaded]
    report.randomized = [n for n in all_params if n not in loaded]
