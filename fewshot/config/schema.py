"""YAML <-> frozen config dataclasses: conversion, dotted overrides, legacy keys, atomic save.

:func:`config_from_dict` builds any config dataclass from a mapping, checking every value against
the field's type hint and rejecting unknown keys with the list of valid ones. A field typed with a
base class that has a ``config_for(name)`` classmethod (the heads' ``HeadConfig``) is built as the
subclass named by the mapping's ``name``. A plain string is shorthand for a sub-config's primary
field (``backbone: cbr-small`` = ``backbone: {name: cbr-small}``, ``init: genesis`` =
``init: {scheme: genesis}``, ``head: alpnet`` = ``head: {name: alpnet}``).

:func:`migrate_legacy` rewrites the flat keys of configs written before the nested layout
(``data.superpixel_method``, ``model.alp_window_test``, ``model.seed`` ...) into their new
places and warns (``FutureWarning``) naming each old key and its replacement.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from episodes.atomic import atomic_write_text

__all__ = [
    "TRAIN_SEED_OFFSET",
    "ConfigError",
    "config_from_dict",
    "migrate_legacy",
    "parse_overrides",
    "plain",
    "read_yaml",
    "set_dotted",
    "to_dict",
    "write_yaml",
]

#: The trainer and episode stream are seeded with ``seed + TRAIN_SEED_OFFSET`` and the weights with
#: ``seed``, so that the two draw from different streams (and ``seed: 0`` reproduces the numbers of
#: the configs that had separate ``model.seed: 0`` / ``train.seed: 1234``).
TRAIN_SEED_OFFSET = 1234

#: Field that a plain string sets, for sub-configs written as a string (by config class, and by the
#: ``model`` section's key).
_SHORTHAND = {"BackboneConfig": "name", "InitConfig": "scheme", "HeadConfig": "name"}
_MODEL_SHORTHAND = {"backbone": "name", "init": "scheme", "head": "name"}


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key and the valid choices."""


# ---------------------------------------------------------------------------------- (de)serialisation


def plain(value: Any) -> Any:
    """Dataclasses/tuples/paths -> YAML- and ``torch.load(weights_only=True)``-safe primitives."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (lists, not tuples) of a config dataclass."""
    out = plain(cfg)
    if not isinstance(out, dict):
        raise TypeError(f"to_dict expects a config dataclass, got {type(cfg).__name__}")
    return out


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against type ``hint`` and convert lists to tuples / dicts to dataclasses."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key} must not be null (expected {hint})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r} does not match {hint}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r}; choices: {list(typing.get_args(hint))}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        shorthand = _shorthand_field(hint)
        if isinstance(value, str) and shorthand is not None:
            value = {shorthand: value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of {hint.__name__} fields, got {value!r}")
        config_for = getattr(hint, "config_for", None)
        if callable(config_for):
            if "name" not in value:
                raise ConfigError(f"{key} needs a 'name' (which {hint.__name__} to build), got {dict(value)}")
            try:
                hint = config_for(value["name"])
            except (KeyError, ValueError) as e:
                raise ConfigError(f"{key}.name: {e.args[0] if e.args else e}") from e
        return config_from_dict(hint, value, prefix=key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key} must have {len(args)} entries, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (arg,) = typing.get_args(hint) or (Any,)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _shorthand_field(cls: type) -> str | None:
    for base in cls.__mro__:
        if base.__name__ in _SHORTHAND:
            return _SHORTHAND[base.__name__]
    return None


def _with_default_name(cls: type, key: str, value: Any) -> Any:
    """A sub-config mapping without ``name`` takes the name of the field's default (``head: {feature_dim: 64}``)."""
    if not isinstance(value, Mapping) or "name" in value:
        return value
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if dataclasses.is_dataclass(default) and hasattr(default, "name") and callable(
        getattr(type(default), "config_for", None)
    ):
        return {"name": default.name, **value}
    return value


def config_from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from ``data``; unknown keys raise listing the valid ones."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    where = prefix or cls.__name__
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {names}")
    hints = typing.get_type_hints(cls)
    data = {k: _with_default_name(cls, k, v) for k, v in data.items()}
    kwargs = {k: _convert(v, hints.get(k, Any), f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {where}: {e}") from e


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(tree, "train.steps", 10)`` sets ``tree["train"]["steps"] = 10`` (sections created)."""
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            if isinstance(child, str):  # a string shorthand (``model.head: alpnet``) becomes a section
                child = node[p] = {_MODEL_SHORTHAND.get(p, "name"): child}
            else:
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value



def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=100", "data.protocol.organs=[liver]"]`` -> ``{"train.steps": 100, ...}`` (YAML values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value (e.g. train.steps=100), got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({e})") from e
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: ``{}``); clear errors for missing/invalid files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def write_yaml(cfg: Any, path: str | os.PathLike[str]) -> Path:
    """Write config dataclass ``cfg`` as YAML (atomically); returns the path."""
    return atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------- legacy keys

#: Flat keys of the configs written before the nested layout -> their nested place(s).
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    "data.superpixel_method": ("data.superpixels.method",),
    "data.superpixel_params": ("data.superpixels.params",),
    "data.superpixel_body_threshold": ("data.superpixels.body_threshold",),
    "data.min_superpixel_pixels": ("data.episodes.min_superpixel_pixels",),
    "data.augment": ("data.episodes.augment",),
    "data.queries": ("data.episodes.queries",),
    "data.shots": ("data.episodes.shots", "data.protocol.shots"),
    "data.fold": ("data.protocol.fold",),
    "data.setting": ("data.protocol.setting",),
    "data.organs": ("data.protocol.organs",),
    "data.chunks": ("data.protocol.chunks",),
    "data.support_subject": ("data.protocol.support_subject",),
    "data.query_subjects": ("data.protocol.query_subjects",),
    "model.weights": ("model.init.weights",),
    "model.weights_sha256": ("model.init.sha256",),
    "model.truncate": ("model.backbone.truncate",),
    "model.in_channels": ("model.backbone.in_channels",),
    "model.feature_dim": ("model.head.feature_dim",),
    "model.scale": ("model.head.scale",),
    "model.align": ("model.head.align",),
    "model.alp_window_train": ("model.head.window_train",),
    "model.alp_window_test": ("model.head.window_test",),
    "model.alp_threshold": ("model.head.threshold",),
    "model.seed": ("seed",),
}


def _pop_dotted(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    section, _, name = key.rpartition(".")
    node: Any = tree
    for p in section.split(".") if section else []:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict) and name in node:
        return True, node.pop(name)
    return False, None


def _get_dotted(tree: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return False, None
        node = node[p]
    return True, node


def head_fields(name: str) -> set[str]:
    """Field names of the registered head ``name``'s config (``ValueError`` for an unknown head)."""
    from fewshot.heads.registry import head_config_class

    return {f.name for f in dataclasses.fields(head_config_class(name))}


def _drop_fields_the_head_lacks(tree: dict[str, Any], moved_keys: list[str]) -> None:
    """Old flat head keys that the chosen head does not have were ignored before (``model.align`` with
    ``head: sgone``); they are dropped instead of refused."""
    head = (tree.get("model") or {}).get("head")
    if not isinstance(head, dict) or "name" not in head:
        return
    try:
        fields = head_fields(head["name"])
    except ValueError:
        return  # the unknown name is reported when the config is built
    for old in moved_keys:
        for new in LEGACY_KEYS[old]:
            section, _, name = new.rpartition(".")
            if section == "model.head" and name not in fields:
                head.pop(name, None)


def migrate_legacy(tree: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
    """Rewrite the flat keys of :data:`LEGACY_KEYS` (and ``train.seed``) in ``tree`` in place.

    Raises:
        ConfigError: an old key and its new place are both set to different values, or a
            ``train.seed`` that the single ``seed`` cannot express.
    """
    moved: list[str] = []
    # Sub-configs given as strings become sections first, so flat keys can move into them.
    model = tree.get("model")
    if isinstance(model, dict):
        for name, field_name in _MODEL_SHORTHAND.items():
            if isinstance(model.get(name), str):
                model[name] = {field_name: model[name]}
    for old, targets in LEGACY_KEYS.items():
        found, value = _pop_dotted(tree, old)
        if not found:
            continue
        moved.append(f"{old} -> {' and '.join(targets)}")
        for new in targets:
            present, current = _get_dotted(tree, new)
            if present and current != value:
                raise ConfigError(f"{source}: {old}={value!r} (old key) conflicts with {new}={current!r}")
            set_dotted(tree, new, value)
    _drop_fields_the_head_lacks(tree, [old for old in LEGACY_KEYS if any(m.startswith(old + " ") for m in moved)])
    found, train_seed = _pop_dotted(tree, "train.seed")
    if found:
        seed = tree.setdefault("seed", 0 if train_seed is None else int(train_seed) - TRAIN_SEED_OFFSET)
        if not isinstance(seed, int) or train_seed != seed + TRAIN_SEED_OFFSET:
            raise ConfigError(
                f"{source}: train.seed={train_seed!r} with seed={seed!r}: there is one seed now (weights use "
                f"`seed`, episodes `seed + {TRAIN_SEED_OFFSET}`); remove train.seed and set seed"
            )
        moved.append(f"train.seed -> seed (= train.seed - {TRAIN_SEED_OFFSET})")
    if moved:
        warnings.warn(
            f"{source} uses old flat config keys; they still load but will be removed: " + "; ".join(moved),
            FutureWarning,
            stacklevel=3,
        )
    return tree
