"""Backbone initialisation schemes: the controlled variable of the study.

Init strings (``create_backbone(..., init=...)``), one module per scheme:

- ``random`` == ``random:kaiming``, ``random:xavier``, ``random:uniform``
  (:mod:`~fewshot.backbones.inits.random`): seeded draws, same seed, same net;
- ``imagenet`` (:mod:`~fewshot.backbones.inits.imagenet`): official torchvision weights read offline,
  checked against the backbone's declared :class:`~fewshot.backbones.weights.WeightsRecord`;
- ``genesis`` (:mod:`~fewshot.backbones.inits.genesis`): our Models Genesis encoder file (required);
- ``mim`` (same module): our masked-image-modelling (SimMIM-style) encoder file (required);
- ``meanvar`` (:mod:`~fewshot.backbones.inits.meanvar`): Transfusion Mean-Var statistics transfer;
- ``transfuse:<k>`` (:mod:`~fewshot.backbones.inits.transfuse`): first ``k`` stages pretrained.

The file-based schemes start from ``random:kaiming`` with the same seed, then copy (or draw from
the statistics of) the pretrained tensors; see :mod:`~fewshot.backbones.inits.align` for the key
matching and stem adaptation rules and :mod:`~fewshot.backbones.inits.files` for file handling.

A new scheme = one module with a function decorated by :func:`register_init` (and its module
name added to ``_BUILTIN_MODULES`` in :mod:`~fewshot.backbones.inits.registry` if built in).
:func:`list_inits` gives the names, :func:`get_init` says whether a scheme needs
(``needs_weights``) or accepts (``accepts_weights``) a weights file.
"""

from __future__ import annotations

from fewshot.backbones.inits import genesis, imagenet, meanvar, random, transfuse  # noqa: F401  (register)
from fewshot.backbones.inits.align import adapt_stem_weight
from fewshot.backbones.inits.files import (
    GENESIS_FORMAT,
    LoadedWeights,
    load_weights_file,
    resolve_imagenet_file,
    sha256_file,
)
from fewshot.backbones.inits.random import RANDOM_SCHEMES, random_init_
from fewshot.backbones.inits.registry import (
    InitContext,
    InitScheme,
    InitSpec,
    apply_init,
    check_init_weights,
    get_init,
    init_choices,
    list_inits,
    parse_init,
    register_init,
)

__all__ = [
    "GENESIS_FORMAT",
    "RANDOM_SCHEMES",
    "InitContext",
    "InitScheme",
    "InitSpec",
    "LoadedWeights",
    "adapt_stem_weight",
    "apply_init",
    "check_init_weights",
    "get_init",
    "init_choices",
    "list_inits",
    "load_weights_file",
    "parse_init",
    "random_init_",
    "register_init",
    "resolve_imagenet_file",
    "sha256_file",
]
