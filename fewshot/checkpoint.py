"""Checkpoints: the plain-data payload this library adds to Lightning checkpoints, and loading.

A ``last.ckpt`` written by :func:`fewshot.training.train` holds Lightning's ``state_dict`` plus a
``"fewshot"`` section (:data:`CHECKPOINT_KEY`) of plain data only, so it loads with
``torch.load(weights_only=True)``:

``config`` (the resolved experiment config, reloadable with :func:`fewshot.config.load_config`),
``init_report`` (which weights file/sha256/layers initialised the backbone), ``library_version``,
``environment`` (versions of the numeric libraries) and ``commit`` (source commit, when known), both
recorded once when training starts,
``norm_stats`` (CT: training-split statistics), ``modality``, ``train_subjects`` (with ``dataset``),
``superpixel_stats``, ``episodes``, ``precision``, ``channels_last``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fewshot.config import ExperimentConfig, ModelConfig, load_config, to_dict
from fewshot.config.model import INFERENCE_FIELDS
from fewshot.config.schema import plain

__all__ = [
    "CHECKPOINT_KEY",
    "INFERENCE_FIELDS",
    "CheckpointError",
    "LoadedCheckpoint",
    "build_payload",
    "checkpoint_path",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_model_from_checkpoints",
    "read_payload",
    "with_inference_settings",
]

#: Key of the plain-data section this library adds to every Lightning checkpoint.
CHECKPOINT_KEY = "fewshot"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or for another architecture."""


def checkpoint_path(out_dir: str | os.PathLike[str]) -> Path:
    """``<out_dir>/checkpoints/last.ckpt``."""
    return Path(out_dir) / "checkpoints" / "last.ckpt"


def snapshot_path(out_dir: str | os.PathLike[str], step: int) -> Path:
    """``<out_dir>/checkpoints/step-<step>.ckpt``: the copy ``train.keep_every`` keeps at ``step``."""
    return checkpoint_path(out_dir).parent / f"step-{step}.ckpt"


def build_payload(model: torch.nn.Module, config: Mapping[str, Any], extras: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"fewshot"`` section: config, backbone init report, library version and ``extras``.

    Called at every checkpoint save, so ``extras`` carries what is fixed for the run (CT statistics,
    library versions, commit) already computed.
    """
    from fewshot import __version__

    report = getattr(getattr(model, "backbone", None), "init_report", None)
    return {
        "config": plain(dict(config)),
        "init_report": report.to_dict() if report is not None else None,
        "library_version": __version__,
        **plain(dict(extras)),
    }


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder; give its checkpoints/last.ckpt file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load of arbitrary bytes raises anything (KeyError, UnpicklingError, ...)
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: it is corrupt, truncated or not a "
            f"PyTorch checkpoint ({type(e).__name__}); re-copy it or retrain"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def read_payload(ckpt: Mapping[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"fewshot"`` section of a loaded checkpoint; raises :class:`CheckpointError` if absent."""
    payload = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict):
        raise CheckpointError(
            f"checkpoint {path} was not written by `fewshot train` (no {CHECKPOINT_KEY!r} section with a config)"
        )
    return payload


def _config(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> ExperimentConfig:
    try:
        return load_config(payload["config"])
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: its saved config does not load: {e}") from e


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A trained model with what was saved beside it.

    Attributes:
        model: the :class:`~fewshot.models.FewShotSegmenter` in eval mode; ``model.config`` is the
            stored model config (its ``init`` included).
        config: the experiment config it was trained with.
        payload: the checkpoint's ``"fewshot"`` section (``norm_stats``, ``train_subjects``, ...).
        global_step: optimiser steps reached.
        path: the file.
    """

    model: Any
    config: ExperimentConfig
    payload: Mapping[str, Any]
    global_step: int
    path: str


def _describe(cfg: ModelConfig) -> str:
    head = dataclasses.asdict(cfg.head)
    bb = cfg.backbone
    stride = f", output_stride={bb.output_stride}" if bb.output_stride is not None else ""
    return f"backbone {bb.name!r} (truncate={bb.truncate}{stride}), head {head}"


def load_model_from_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", *, model: Any = None
) -> LoadedCheckpoint:
    """Rebuild the trained model of a :func:`fewshot.training.train` checkpoint (in eval mode).

    Args:
        path: ``.ckpt`` file written by :func:`~fewshot.training.train`.
        map_location: device for the tensors.
        model: load the weights into this model instead of building the stored architecture;
            a model whose parameters do not fit raises :class:`CheckpointError` naming both.
    """
    from fewshot.models import create_model_skeleton

    ckpt = load_checkpoint(path, map_location)
    payload = read_payload(ckpt, path)
    cfg = _config(payload, path)
    if model is None:
        # The weights come from the checkpoint: the architecture only, no init and no pretrained file read;
        # ``model.config`` is the config it was trained with (its init included).
        model = create_model_skeleton(cfg.model)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        mine = getattr(model, "config", None)
        theirs = _describe(mine) if isinstance(mine, ModelConfig) and mine != cfg.model else "the same config"
        raise CheckpointError(
            f"checkpoint {path} holds a model with {_describe(cfg.model)}, but the model given has {theirs}, "
            f"and the weights do not fit (the file may be damaged or edited): {' '.join(str(e).split())[:300]}"
        ) from e
    model.to(map_location).eval()
    return LoadedCheckpoint(
        model=model,
        config=cfg,
        payload={k: v for k, v in payload.items() if k != "config"} | {"config": to_dict(cfg)},
        global_step=int(ckpt.get("global_step", 0)),
        path=str(path),
    )


def _ensemble_key(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """What the members of an ensemble must share: the data they see at evaluation and what they trained on."""
    data, protocol = loaded.config.data, loaded.config.data.protocol
    return {
        "dataset": data.dataset,
        "data.size": data.size,
        "data.channels": data.channels,
        "protocol fold": protocol.fold,
        "protocol setting": protocol.setting,
        "protocol organs": tuple(protocol.organs),
        "setting-2 exclusions": tuple(sorted(data.train_exclusions())),
        "norm_stats": loaded.payload.get("norm_stats"),
        "train_subjects": tuple(sorted(loaded.payload.get("train_subjects", []))),
    }


def with_inference_settings(loaded: LoadedCheckpoint, settings: Mapping[str, Any] | None) -> LoadedCheckpoint:
    """``loaded`` with the inference settings ``settings`` (``{field: value}`` of :data:`INFERENCE_FIELDS`;
    ``None`` values are skipped) in place of the stored ones, in ``model.config`` and ``config.model``
    (validated as the config validates them). The model object is changed in place and returned in a new record."""
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    unknown = sorted(set(given) - set(INFERENCE_FIELDS))
    if unknown:
        raise ValueError(f"not inference settings: {unknown}; these are {list(INFERENCE_FIELDS)}")
    if not given:
        return loaded
    model_cfg = dataclasses.replace(loaded.config.model, **given)
    loaded.model.config = dataclasses.replace(loaded.model.config, **given)
    return dataclasses.replace(loaded, config=dataclasses.replace(loaded.config, model=model_cfg))


def load_model_from_checkpoints(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    map_location: str | torch.device = "cpu",
    *,
    inference: Mapping[str, Any] | None = None,
) -> LoadedCheckpoint:
    """One checkpoint as :func:`load_model_from_checkpoint`; several as one :class:`~fewshot.models.EnsembleSegmenter`.

    The members of an ensemble (for example the same recipe trained with different seeds) must have been
    trained for the same dataset, input size, channels, fold, setting and training scans, with the same CT
    statistics, so that one evaluation is valid for all of them; a mismatch raises :class:`CheckpointError`
    naming the field. They must also agree on the inference settings (:data:`INFERENCE_FIELDS`) unless
    ``inference`` gives them: ``{field: value}`` replaces every member's stored value first (``None``: keep
    the stored one), so models trained with different defaults are scored as one with the values given.
    The result carries the first member's config and payload, with
    ``payload["ensemble"]`` listing every member (file, step, seed, commit, backbone) and ``path`` naming them all.
    """
    from fewshot.models import EnsembleSegmenter

    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("no checkpoint given")
    if len(items) == 1:
        return with_inference_settings(load_model_from_checkpoint(items[0], map_location), inference)
    loaded = [with_inference_settings(load_model_from_checkpoint(p, map_location), inference) for p in items]
    key = _ensemble_key(loaded[0])
    for other in loaded[1:]:
        theirs = _ensemble_key(other)
        for name, value in key.items():
            if theirs[name] != value:
                raise CheckpointError(
                    f"cannot ensemble {loaded[0].path} and {other.path}: they differ in {name} "
                    f"({value!r} against {theirs[name]!r}); ensemble models of one fold and data setup"
                )
    try:
        model = EnsembleSegmenter([m.model for m in loaded])
    except ValueError as e:
        hint = (" (give the setting explicitly, e.g. --intensity-prior / --fg-threshold / --tta, to score them "
                "with one value)" if "members must agree" in str(e) else "")
        raise CheckpointError(f"cannot ensemble {', '.join(m.path for m in loaded)}: {e}{hint}") from e
    members = [
        {
            "checkpoint": m.path, "global_step": m.global_step, "seed": m.config.seed, "commit": m.payload.get("commit"),
            "backbone": m.config.model.backbone.name, "truncate": m.config.model.backbone.truncate,
        }
        for m in loaded
    ]
    return dataclasses.replace(
        loaded[0],
        model=model.eval(),
        payload={**loaded[0].payload, "ensemble": members},
        path=" + ".join(m.path for m in loaded),
    )
