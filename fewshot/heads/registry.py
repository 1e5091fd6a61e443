"""Strict registry of few-shot heads, each with its own frozen config dataclass.

A head is registered by decorating its builder ``(config, feature_info) -> FewShotHead`` with
``@register_head("alpnet", config=ALPNetConfig)``; ``ALPNetConfig`` subclasses :class:`HeadConfig`
and its ``name`` field defaults to the registered name. :func:`create_head` builds the head a
config names. Registering a name twice raises; unknown names raise ``ValueError`` listing them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fewshot.backbones.base import FeatureInfo
from fewshot.heads.base import FewShotHead

__all__ = ["HeadConfig", "HeadSpec", "create_head", "head_config_class", "list_heads", "register_head"]

_BUILTIN_MODULES = ("adnet", "alpnet", "dpcn", "panet", "sgone")
_REGISTRY: dict[str, HeadSpec] = {}

HeadBuilder = Callable[[Any, Sequence[FeatureInfo]], FewShotHead]


@dataclass(frozen=True)
class HeadConfig:
    """Base of the per-head configs; ``name`` selects the head (see :func:`list_heads`).

    Subclasses are frozen dataclasses whose ``name`` defaults to their registered name; a config
    whose ``name`` is not the one its class is registered under raises ``ValueError``.
    """

    name: str = ""

    def __post_init__(self) -> None:
        cls = head_config_class(self.name)
        if type(self) is not cls:
            raise ValueError(f"head {self.name!r} is configured by {cls.__name__}, not {type(self).__name__}")

    @classmethod
    def config_for(cls, name: str) -> type[HeadConfig]:
        """The config class of head ``name`` (what a YAML loader builds ``{name: ..., ...}`` with)."""
        return head_config_class(name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: ``name``, its config class and ``builder(config, feature_info)``."""

    name: str
    config: type[HeadConfig]
    builder: HeadBuilder


def register_head(name: str, *, config: type[HeadConfig]) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering a head builder under ``name`` with its config class.

    Raises:
        ValueError: ``name`` already registered, ``config`` not a ``HeadConfig`` dataclass (frozen, as
            its base), or its ``name`` default differs from ``name``.
    """
    if not (isinstance(config, type) and issubclass(config, HeadConfig) and dataclasses.is_dataclass(config)):
        raise ValueError(f"head {name!r}: config must be a HeadConfig dataclass subclass, got {config!r}")
    default = {f.name: f.default for f in dataclasses.fields(config)}.get("name")
    if default != name:
        raise ValueError(f"head {name!r}: {config.__name__}.name must default to {name!r}, got {default!r}")

    def decorator(builder: HeadBuilder) -> HeadBuilder:
        if name in _REGISTRY:
            raise ValueError(f"head {name!r} is already registered ({_REGISTRY[name].builder!r})")
        _REGISTRY[name] = HeadSpec(name, config, builder)
        return builder

    return decorator


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"fewshot.heads.{mod}")


def list_heads() -> list[str]:
    """Sorted names of the registered heads (``adnet, alpnet, dpcn, panet, sgone``)."""
    _load_builtins()
    return sorted(_REGISTRY)


def _spec(name: str) -> HeadSpec:
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown head {name!r}; choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def head_config_class(name: str) -> type[HeadConfig]:
    """The config class of head ``name``; ``ValueError`` listing the choices if unknown."""
    return _spec(name).config


def create_head(config: HeadConfig, feature_info: Sequence[FeatureInfo]) -> FewShotHead:
    """Build the head ``config.name`` for a backbone with ``feature_info``.

    Parameters are drawn from torch's global RNG (``create_model`` seeds it in a forked RNG).
    """
    spec = _spec(config.name)
    if type(config) is not spec.config:
        raise ValueError(f"head {config.name!r} needs a {spec.config.__name__}, got {type(config).__name__}")
    return spec.builder(config, feature_info)
