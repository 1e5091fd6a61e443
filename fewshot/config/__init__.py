"""Experiment configuration: nested frozen dataclasses that mirror the components, loaded from YAML.

* :mod:`fewshot.config.experiment`: :class:`ExperimentConfig` and its ``data``/``optim``/``train``
  sections (``data`` holds the protocol, superpixel and episode configs of ``episodes``);
* :mod:`fewshot.config.model`: :class:`ModelConfig` (backbone, init, head chosen by name);
* :mod:`fewshot.config.schema`: YAML <-> dataclass conversion, overrides, legacy keys.

:func:`load_config` reads a YAML file (or a dict), applies dotted overrides
(``{"train.steps": 10}``) and rejects unknown keys with the list of valid ones. :func:`save_config`
writes the resolved configuration; it is saved beside every checkpoint and result, so a number
can always be traced to its settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewshot.config.experiment import DataConfig, ExperimentConfig, OptimConfig, TrainConfig
from fewshot.config.model import BackboneConfig, InitConfig, ModelConfig
from fewshot.config.schema import (
    TRAIN_SEED_OFFSET,
    ConfigError,
    config_from_dict,
    head_fields,
    migrate_legacy,
    parse_overrides,
    read_yaml,
    set_dotted,
    to_dict,
    write_yaml,
)

__all__ = [
    "TRAIN_SEED_OFFSET",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "InitConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "parse_overrides",
    "resolve_channels_last",
    "resolve_precision",
    "save_config",
    "to_dict",
]


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from a YAML file or dict plus dotted ``overrides``.

    Args:
        source: YAML path, a nested dict (e.g. a checkpoint's saved config), or ``None`` (defaults).
        overrides: ``{"train.steps": 100, "data.protocol.organs": ["liver"]}``; values replace the
            ones from ``source`` (sections merge key by key). Old flat keys are migrated with a
            ``FutureWarning`` (:func:`~fewshot.config.schema.migrate_legacy`).
    """
    if source is None:
        tree: dict[str, Any] = {}
        where = "config"
    elif isinstance(source, Mapping):
        tree = _deep_copy(source)
        where = "config"
    else:
        tree = read_yaml(source)
        where = str(source)
    migrate_legacy(tree, source=where)
    over_tree: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        set_dotted(over_tree, key, value)
    migrate_legacy(over_tree, source="overrides")
    _retarget_head(tree, over_tree)
    _retarget_dataset(tree, over_tree)
    _merge(tree, over_tree)
    for key, value in (overrides or {}).items():
        if key in _REPLACED_WHOLE:  # ``--set data.loader_args={...}`` replaces the mapping instead of merging
            set_dotted(tree, key, _deep_copy(value) if isinstance(value, Mapping) else value)
    return config_from_dict(ExperimentConfig, tree)


#: Free-form mappings that an override naming them replaces (an override of one of their keys still merges).
_REPLACED_WHOLE = ("data.loader_args",)


def _retarget_dataset(tree: dict[str, Any], over: Mapping[str, Any]) -> None:
    """An override that switches ``data.dataset`` drops the old dataset's ``loader_args`` and ``data_dir``
    unless it sets them too (``--dataset nifti`` on the phantom config loses ``n_subjects``)."""
    new = (over.get("data") or {}).get("dataset")
    data = tree.get("data")
    if not isinstance(new, str) or not isinstance(data, dict) or data.get("dataset", new) == new:
        return
    for key in ("loader_args", "data_dir"):
        if key not in over["data"]:
            data.pop(key, None)


def _retarget_head(tree: dict[str, Any], over: Mapping[str, Any]) -> None:
    """An override that switches ``model.head.name`` keeps only the fields the new head has
    (``--head panet`` on an ALPNet config keeps ``feature_dim``/``scale``, drops the ALP windows)."""
    new = ((over.get("model") or {}).get("head") or {}).get("name")
    head = (tree.get("model") or {}).get("head")
    if not isinstance(new, str) or not isinstance(head, dict) or head.get("name", new) == new:
        return
    try:
        fields = head_fields(new)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"model.head.name: {e.args[0] if e.args else e}") from e
    tree["model"]["head"] = {k: v for k, v in head.items() if k in fields}


def _merge(tree: dict[str, Any], over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = _deep_copy(value) if isinstance(value, Mapping) else value


def save_config(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically); returns the path."""
    return write_yaml(cfg, path)


def resolve_precision(precision: str, on_cuda: bool) -> str:
    """``"auto"`` -> ``"16-mixed"`` on CUDA, ``"32-true"`` otherwise; anything else unchanged."""
    if precision == "auto":
        return "16-mixed" if on_cuda else "32-true"
    return precision


def resolve_channels_last(channels_last: bool | None, on_cuda: bool) -> bool:
    return on_cuda if channels_last is None else channels_last
