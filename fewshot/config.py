"""Experiment configuration: nested frozen dataclasses loaded from YAML.

An :class:`ExperimentConfig` has four sections (``data``, ``model``, ``optim``,
``train``) and an ``out_dir``. :func:`load_config` reads a YAML file (or a dict),
applies dotted overrides (``{"train.steps": 10}``) and rejects unknown keys with the
list of valid ones. :func:`save_config` writes the resolved configuration; it is saved
beside every checkpoint and result so a number can always be traced to its settings.

Defaults reproduce the SSL-ALPNet recipe (SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
learning rate x0.95 every 1000 steps, class weights (0.05, 1.0) for (bg, fg), 100,100
steps at batch size 1).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from episodes.labels import ABDOMINAL_ORGANS
from episodes.protocol import Protocol
from episodes.selfsup import DEFAULT_MIN_SUPERPIXEL_PIXELS
from episodes.superpixels import SuperpixelParams
from fewshot.models import ModelConfig

__all__ = [
    "DATASET_NAMES",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
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

DATASET_NAMES: tuple[str, ...] = ("chaos-mr", "btcv-ct", "chaos-dicom", "nifti", "phantom-ct", "phantom-mr")


class ConfigError(ValueError):
    """An invalid configuration key or value; the message names the key and the valid choices."""


@dataclass(frozen=True)
class DataConfig:
    """Data, superpixel pseudo-labels, episodes and evaluation protocol.

    Attributes:
        dataset: registry name (see :data:`DATASET_NAMES`).
        data_dir: dataset folder; ``None`` uses ``$FEWSHOT_DATA/<default sub-folder>`` (or no
            folder for the phantoms).
        loader_args: extra keyword arguments for ``episodes.datasets.load_dataset`` (e.g.
            ``{n_subjects: 6, shape: [16, 64, 64]}`` for phantoms).
        size: in-plane size slices are resized to.
        channels: image channels fed to the backbone (grey repeated).
        superpixel_method / superpixel_params / superpixel_body_threshold: pseudo-label
            generator, its parameters (Felzenszwalb ``scale=1, sigma=1, min_size=400`` as in
            SSL-ALPNet) and the body-mask threshold (``None``: SSL-ALPNet default per modality).
        cache_dir: superpixel cache folder; ``None`` uses ``<out_dir>/cache/superpixels``.
        min_superpixel_pixels: superpixels smaller than this are never pseudo-labels.
        augment: episode augmentation preset.
        queries: query slices per training episode.
        fold, setting, organs, shots: evaluation protocol (``setting`` 1 or 2).
        support_subject, query_subjects: explicit protocol subjects (override the fold rule).
        exclude_organs: organs whose slices are removed from training. ``None``: none in
            setting 1; in setting 2 the union of the label groups (kidneys; liver + spleen) of
            the test ``organs``. SSL-ALPNet trains one model per group and tests only that
            group's organs on it: to reproduce it exactly, run once per group with
            ``organs`` set to that group.
    """

    dataset: str = "chaos-mr"
    data_dir: str | None = None
    loader_args: dict[str, Any] = field(default_factory=dict)
    size: int = 256
    channels: int = 3
    superpixel_method: str = "felzenszwalb"
    superpixel_params: dict[str, Any] = field(
        default_factory=lambda: {"scale": 1.0, "sigma": 1.0, "min_size": 400}
    )
    cache_dir: str | None = None
    superpixel_body_threshold: float | None = None
    min_superpixel_pixels: int = DEFAULT_MIN_SUPERPIXEL_PIXELS
    augment: str = "alpnet"
    queries: int = 1
    fold: int = 0
    setting: int = 1
    organs: tuple[str, ...] = ABDOMINAL_ORGANS
    shots: int = 1
    chunks: int = 3
    support_subject: str | None = None
    query_subjects: tuple[str, ...] | None = None
    exclude_organs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f"data.dataset={self.dataset!r}; choices: {list(DATASET_NAMES)}")
        if self.setting not in (1, 2):
            raise ConfigError(f"data.setting must be 1 or 2, got {self.setting}")
        for name in ("size", "channels", "queries", "shots", "chunks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.fold < 0:
            raise ConfigError(f"data.fold must be >= 0, got {self.fold}")
        if not self.organs:
            raise ConfigError("data.organs is empty")
        self.protocol()  # validates fold/organs/subjects
        self.superpixels()  # validates method/params

    def protocol(self) -> Protocol:
        """The evaluation :class:`~episodes.protocol.Protocol` these settings describe."""
        return Protocol(
            dataset=self.dataset,
            fold=self.fold,
            setting=self.setting,
            organs=tuple(self.organs),
            shots=self.shots,
            chunks=self.chunks,
            support_subject=self.support_subject,
            query_subjects=self.query_subjects,
        )

    def superpixels(self) -> SuperpixelParams:
        return SuperpixelParams(
            method=self.superpixel_method,
            params=dict(self.superpixel_params),
            body_threshold=self.superpixel_body_threshold,
        )

    @property
    def excluded_organs(self) -> tuple[str, ...]:
        """Organs whose slices are removed from training: ``exclude_organs`` if given; else none in
        setting 1 and, in setting 2, the union of the SSL-ALPNet label groups of the test organs."""
        if self.exclude_organs is not None:
            return tuple(self.exclude_organs)
        protocol = self.protocol()
        out: list[str] = []
        for organ in protocol.organs:
            out += [o for o in protocol.excluded_organs(organ) if o not in out]
        return tuple(out)


@dataclass(frozen=True)
class OptimConfig:
    """SGD + step decay (SSL-ALPNet) and the loss weights.

    The learning rate is multiplied by ``lr_gamma`` every ``lr_step`` optimiser steps
    (SSL-ALPNet's ``MultiStepLR`` with milestones every 1000 steps, implemented as the
    equivalent ``StepLR`` so a resumed run with more steps keeps decaying). ``ce_weights``
    weight the (background, foreground) cross-entropy classes; ``align_weight`` scales the
    head's prototype alignment loss.
    """

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_gamma: float = 0.95
    lr_step: int = 1000
    ce_weights: tuple[float, float] = (0.05, 1.0)
    align_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.lr_step < 1:
            raise ConfigError(f"optim.lr_step must be >= 1, got {self.lr_step}")
        if len(self.ce_weights) != 2 or min(self.ce_weights) < 0:
            raise ConfigError(f"optim.ce_weights must be two weights >= 0 (bg, fg), got {self.ce_weights}")


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings.

    ``precision="auto"`` means ``"16-mixed"`` on CUDA and ``"32-true"`` otherwise;
    ``channels_last=None`` means on for CUDA only. ``devices``/``num_nodes``/``strategy``
    go to :class:`pytorch_lightning.Trainer` unchanged (e.g. ``strategy: ddp``).
    """

    steps: int = 100_100
    batch_size: int = 1
    num_workers: int = 2
    seed: int = 1234
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    ckpt_every: int = 1000
    log_every: int = 50
    progress_bar: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_nodes", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment; ``out_dir`` receives checkpoints, logs and results."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        if self.model.in_channels != self.data.channels:
            raise ConfigError(
                f"model.in_channels={self.model.in_channels} must equal data.channels={self.data.channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_precision(precision: str, on_cuda: bool) -> str:
    """``"auto"`` -> ``"16-mixed"`` on CUDA, ``"32-true"`` otherwise; anything else unchanged."""
    if precision == "auto":
        return "16-mixed" if on_cuda else "32-true"
    return precision


def resolve_channels_last(channels_last: bool | None, on_cuda: bool) -> bool:
    return on_cuda if channels_last is None else channels_last


# ---------------------------------------------------------------------------------- (de)serialisation


def _plain(value: Any) -> Any:
    """Dataclasses/tuples/paths -> YAML- and ``torch.load(weights_only=True)``-safe primitives."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (lists, not tuples) of a config dataclass."""
    out = _plain(cfg)
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
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of {hint.__name__} fields, got {value!r}")
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


def config_from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from ``data``; unknown keys raise listing the valid ones."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    where = prefix or cls.__name__
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {names}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(v, hints.get(k, Any), f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {where}: {e}") from e


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=100", "data.organs=[liver]"]`` -> ``{"train.steps": 100, ...}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value (e.g. train.steps=100), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from a YAML file or dict plus dotted ``overrides``.

    Args:
        source: YAML path, a nested dict, or ``None`` (all defaults).
        overrides: ``{"train.steps": 100, "data.organs": ["liver"]}``; values replace the
            ones from ``source`` (sections merge key by key).
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        tree = _deep_copy(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    return config_from_dict(ExperimentConfig, tree)


def _deep_copy(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in d.items()}


def save_config(cfg: ExperimentConfig, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as YAML (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
        tmp = f.name
    os.replace(tmp, path)
    return path
