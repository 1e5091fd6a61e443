"""Strict name -> builder registry and :func:`create_backbone`.

Builders are functions ``(in_channels: int = 3, truncate: str | None = None) -> StagedBackbone``
registered with :func:`register_backbone`, together with their stage names (for early
validation of ``truncate``), the output strides they can be built with besides their own (builders
that declare any also take ``output_stride: int | None = None``) and the pretrained weights they have, as
:class:`~fewshot.backbones.weights.WeightsRecord` data. Registering a name twice raises; asking
for an unknown name raises ``KeyError`` listing the registered names.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from fewshot.backbones.weights import WeightsRecord

if TYPE_CHECKING:
    from fewshot.backbones.staged import StagedBackbone

__all__ = ["BackboneSpec", "check_output_stride", "create_backbone", "get_backbone_spec", "list_backbones", "register_backbone"]

logger = logging.getLogger("fewshot")

_BUILTIN_MODULES = ("resnet", "vgg", "cbr", "unet")
_REGISTRY: dict[str, BackboneSpec] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry name.
        builder: ``(in_channels, truncate) -> StagedBackbone``.
        stages: every stage of the full network in forward order (valid ``truncate`` values);
            ``()`` if not declared.
        weights: init scheme -> :class:`WeightsRecord` of the pretrained file it uses by default
            (``"imagenet"``: the official torchvision file); empty if there is none.
        output_strides: the values the builder accepts as ``output_stride`` (the stride of the last
            feature; pools beyond it are dropped, later convs dilated); ``()``: its own stride only.
    """

    name: str
    builder: Callable[..., StagedBackbone]
    stages: tuple[str, ...] = ()
    weights: Mapping[str, WeightsRecord] = field(default_factory=lambda: MappingProxyType({}))
    output_strides: tuple[int, ...] = ()

    def build(self, in_channels: int = 3, truncate: str | None = None, output_stride: int | None = None) -> StagedBackbone:
        """The builder's uninitialised network.

        Raises:
            ValueError: ``output_stride`` is not one of :attr:`output_strides`.
        """
        if output_stride is None:
            return self.builder(in_channels=in_channels, truncate=truncate)
        check_output_stride(self, output_stride)
        return self.builder(in_channels=in_channels, truncate=truncate, output_stride=output_stride)


def check_output_stride(spec: BackboneSpec, output_stride: int | None) -> None:
    """``ValueError`` unless ``output_stride`` is ``None`` or one that ``spec`` can be built with."""
    if output_stride is None:
        return
    if isinstance(output_stride, bool) or not isinstance(output_stride, int) or output_stride not in spec.output_strides:
        supported = list(spec.output_strides) or "none (its own stride only)"
        raise ValueError(
            f"backbone {spec.name!r} cannot be built with output_stride={output_stride!r}; supported: {supported}"
        )


def register_backbone(
    name: str,
    *,
    stages: tuple[str, ...] = (),
    weights: Mapping[str, WeightsRecord] | None = None,
    output_strides: tuple[int, ...] = (),
) -> Callable[[Callable[..., StagedBackbone]], Callable[..., StagedBackbone]]:
    """Decorator registering a builder under ``name``.

    Args:
        name: registry name.
        stages: stage names of the full network (checked early by ``BackboneConfig``).
        weights: ``{init scheme: WeightsRecord}``, e.g. ``{"imagenet": torchvision_imagenet(...)}``.
        output_strides: values the builder accepts as its ``output_stride`` keyword.

    Raises:
        ValueError: ``name`` is already registered, or a record's ``init`` differs from its key.
    """
    records = dict(weights or {})
    bad = [k for k, r in records.items() if r.init != k]
    if bad:
        raise ValueError(f"backbone {name!r}: weights records {bad} declare another init than their key")

    def decorator(builder: Callable[..., StagedBackbone]) -> Callable[..., StagedBackbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered ({_REGISTRY[name].builder!r})")
        _REGISTRY[name] = BackboneSpec(
            name, builder, tuple(stages), MappingProxyType(records), tuple(output_strides)
        )
        return builder

    return decorator


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"fewshot.backbones.{mod}")


def list_backbones() -> list[str]:
    """Sorted names of all registered backbones."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` registered under ``name``.

    Raises:
        KeyError: unknown name (the message lists the registered names).
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choices: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def create_backbone(
    name: str,
    *,
    init: str = "random",
    weights: str | Path | None = None,
    in_channels: int = 3,
    truncate: str | None = None,
    seed: int = 0,
    weights_sha256: str | None = None,
    output_stride: int | None = None,
) -> StagedBackbone:
    """Build a registered backbone and initialise it.

    Args:
        name: registry name, see :func:`list_backbones`.
        init: ``random`` (= ``random:kaiming``), ``random:xavier``, ``random:uniform``,
            ``imagenet``, ``genesis``, ``meanvar`` or ``transfuse:<k>``; see
            :mod:`fewshot.backbones.inits`.
        weights: weights file (required for ``genesis``; optional source for ``imagenet``,
            ``meanvar``, ``transfuse:<k>``).
        in_channels: input channels; pretrained stems are adapted (1 channel: RGB kernels summed).
        truncate: keep stages up to and including this one (e.g. ``"layer3"``, ``"block3"``).
        seed: seed of every random draw.
        weights_sha256: expected sha256 (full hex or a prefix) of the weights file.
        output_stride: stride of the last feature if not the network's own (e.g. 4 for
            ``cbr-small`` cut at ``block3``, natively 8); see :attr:`BackboneSpec.output_strides`.

    Returns:
        The backbone, with ``init_report`` filled; ``forward`` gives one feature per stage.
    """
    from fewshot.backbones.inits import apply_init, check_init_weights

    spec = get_backbone_spec(name)
    check_init_weights(init, weights, backbone=name)  # e.g. no genesis file: fail before building
    backbone = spec.build(in_channels=in_channels, truncate=truncate, output_stride=output_stride)
    report = apply_init(
        backbone, init=init, seed=seed, weights=weights, records=spec.weights, weights_sha256=weights_sha256
    )
    backbone.init_report = report
    logger.info(
        "backbone %s (in_channels=%d, truncate=%s, output_stride=%s): init=%s source=%s sha256=%s loaded=%d randomized=%d seed=%s",
        name,
        in_channels,
        truncate,
        backbone.feature_info[-1].stride,
        report.init,
        report.source,
        report.sha256,
        len(report.loaded),
        len(report.randomized),
        report.seed,
    )
    return backbone
