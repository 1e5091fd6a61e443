"""``random[:kaiming|xavier|uniform]``: every parameter re-drawn from a seeded generator.

``random`` == ``random:kaiming``: conv/linear weights ~ N(0, 2 / fan_out) (He, ReLU gain,
fan-out mode as torchvision's ResNet/VGG init); ``random:xavier``: N(0, 2 / (fan_in + fan_out));
``random:uniform``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default conv init). Biases 0,
norm weights 1 / biases 0, BN running stats reset. All draws come from
``torch.Generator().manual_seed(seed)`` in ``named_modules()`` order: same seed, same net.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fewshot.backbones.base import InitReport
from fewshot.backbones.inits.align import CONV_LINEAR, NORMS
from fewshot.backbones.inits.registry import InitContext, InitSpec, init_choices, register_init
from fewshot.backbones.staged import StagedBackbone

__all__ = ["RANDOM_SCHEMES", "random_init_"]

RANDOM_SCHEMES = ("kaiming", "xavier", "uniform")


def random_init_(module: nn.Module, scheme: str, generator: torch.Generator) -> list[str]:
    """Re-draw all parameters of ``module`` in place; returns the parameter names touched.

    Conv/linear weights follow ``scheme`` (see module docs), their biases are 0; norm layers
    get weight 1, bias 0 and reset running statistics.

    Raises:
        ValueError: unknown scheme. TypeError: a parameter outside conv/linear/norm layers.
    """
    if scheme not in RANDOM_SCHEMES:
        raise ValueError(f"unknown random scheme {scheme!r}; choices: {list(RANDOM_SCHEMES)}")
    touched: list[str] = []
    with torch.no_grad():
        for mname, m in module.named_modules():
            prefix = f"{mname}." if mname else ""
            if isinstance(m, CONV_LINEAR):
                w = m.weight
                if scheme == "kaiming":
                    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=generator)
                elif scheme == "xavier":
                    nn.init.xavier_normal_(w, generator=generator)
                else:
                    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                touched.append(prefix + "weight")
                if m.bias is not None:
                    m.bias.zero_()
                    touched.append(prefix + "bias")
            elif isinstance(m, NORMS):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                    touched.append(prefix + "weight")
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
                    touched.append(prefix + "bias")
                if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                    m.reset_running_stats()
    untouched = [n for n, _ in module.named_parameters() if n not in set(touched)]
    if untouched:
        raise TypeError(f"random_init_ does not know how to initialise parameters {untouched[:5]}")
    return touched


def _parse(init: str, arg: str) -> InitSpec:
    scheme = arg or "kaiming"
    if scheme not in RANDOM_SCHEMES:
        raise ValueError(f"unknown random scheme {scheme!r} in init={init!r}; choices: {init_choices()}")
    return InitSpec("random", scheme)


@register_init(
    "random",
    weights="none",
    parse=_parse,
    forms=("random", *(f"random:{s}" for s in RANDOM_SCHEMES)),
)
def init_random(backbone: StagedBackbone, ctx: InitContext) -> InitReport:
    """Seeded random init with ``ctx.spec.scheme``; every parameter is reported as randomized."""
    report = ctx.new_report()
    report.randomized = random_init_(backbone, ctx.spec.scheme, ctx.generator)
    return report
