"""End-to-end self-supervised training (:func:`train`) and checkpoint loading.

``train(cfg)``:

1. load the raw volumes of ``cfg.data.dataset`` (or take ``volumes=``) and keep the
   fold's **training** subjects only (:meth:`episodes.protocol.Protocol.split`);
2. CT: fit :class:`~episodes.preprocess.NormStats` on them (stored in the checkpoint, so
   evaluation normalises the test scans with the training statistics);
3. superpixels on the raw volumes resized to ``cfg.data.size`` (cached on disk);
4. :class:`~fewshot.training.data.EpisodeDataModule` + :class:`~fewshot.training.module.FewShotModule`
   and a Lightning ``Trainer`` (GPU when present, AMP and channels-last on CUDA,
   ``devices``/``num_nodes``/``strategy`` passed through, ``last.ckpt`` every
   ``ckpt_every`` steps and at the end, CSV logs);
5. resume from ``<out_dir>/checkpoints/last.ckpt`` when it exists (same global step,
   learning-rate schedule and episode stream as an uninterrupted run).

Files under ``out_dir``: ``config.yaml`` (resolved config), ``checkpoints/last.ckpt``,
``logs/version_<n>/metrics.csv``, ``train_result.json``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from episodes.preprocess import NormStats, fit_ct_stats, preprocess, resize_volume
from episodes.superpixels import compute_dataset_superpixels_with_stats
from episodes.volumes import Volume
from fewshot.config import (
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    resolve_channels_last,
    resolve_precision,
    save_config,
    to_dict,
)
from fewshot.models import FewShotSegmenter, create_model
from fewshot.training.data import EpisodeDataModule
from fewshot.training.module import CHECKPOINT_KEY, FewShotModule

__all__ = [
    "CheckpointError",
    "TrainResult",
    "checkpoint_path",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_volumes",
    "preprocess_volumes",
    "split_volumes",
    "train",
]

logger = logging.getLogger("fewshot")

#: Lightning warns about mid-epoch resumes with loaders it cannot restore; ours is restored
#: from the global step (see :mod:`fewshot.training.data`), so the warning does not apply.
_RESUME_WARNING = "You're resuming from a checkpoint that ended before the epoch ended"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, or for another architecture."""


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        checkpoint: ``last.ckpt`` path (``None`` after ``fast_dev_run``, which saves nothing).
        steps: global step reached; ``steps_run`` of them ran in this call.
        seconds: wall time of ``Trainer.fit``; ``steps_per_s = steps_run / seconds``.
        losses: last logged ``loss``, ``ce``, ``align``, ``fg_dice``.
        log_dir: CSV log folder; ``out_dir``: experiment folder; ``resumed_from``: checkpoint
            training continued from, if any.
    """

    checkpoint: str | None
    steps: int
    steps_run: int
    seconds: float
    steps_per_s: float
    losses: dict[str, float]
    log_dir: str | None
    out_dir: str
    resumed_from: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_path(out_dir: str | os.PathLike[str]) -> Path:
    """``<out_dir>/checkpoints/last.ckpt``."""
    return Path(out_dir) / "checkpoints" / "last.ckpt"


# ----------------------------------------------------------------------------------------- data


def load_volumes(data: DataConfig) -> list[Volume]:
    """Raw volumes of ``data.dataset`` from ``data.data_dir`` (``episodes.datasets.load_dataset``)."""
    from episodes.datasets import load_dataset

    return load_dataset(data.dataset, data.data_dir, **dict(data.loader_args))


def split_volumes(data: DataConfig, volumes: Sequence[Volume]) -> tuple[list[Volume], list[Volume]]:
    """``(train, test)`` volumes of the fold; test = support + query subjects."""
    split = data.protocol().split([v.subject for v in volumes])
    train = [v for v in volumes if v.subject in split.train]
    test_ids = {split.support, *split.queries}
    if not train:
        raise ValueError(f"fold {data.fold} leaves no training subject (split: {split})")
    return train, [v for v in volumes if v.subject in test_ids]


def preprocess_volumes(
    volumes: Sequence[Volume], size: int, ct_stats: NormStats | None = None
) -> list[Volume]:
    """:func:`episodes.preprocess.preprocess` every volume (``ct_stats`` required for CT)."""
    return [preprocess(v, size=size, ct_stats=ct_stats) for v in volumes]


# -------------------------------------------------------------------------------------- trainer


class _FinalCheckpoint(Callback):
    """Writes ``last.ckpt`` when training ends (also on Ctrl-C in single-process runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1:
            trainer.save_checkpoint(self.path, weights_only=False)
            logger.warning(
                "interrupted at step %d; saved %s (rerun to resume)", trainer.global_step, self.path
            )


def _on_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(f.name, path)


def train(
    cfg: ExperimentConfig,
    *,
    volumes: Sequence[Volume] | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    fast_dev_run: bool = False,
) -> TrainResult:
    """Self-supervised training of ``cfg.model`` on the fold's training subjects.

    Args:
        cfg: the experiment.
        volumes: raw (un-normalised) volumes of the whole dataset; default: loaded from
            ``cfg.data``. Only the fold's training subjects are used.
        resume: continue from ``<out_dir>/checkpoints/last.ckpt`` if it exists.
        callbacks: extra Lightning callbacks.
        fast_dev_run: one step, no checkpoint or log written (smoke test).
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    raw = list(volumes) if volumes is not None else load_volumes(cfg.data)
    normalized = [v.subject for v in raw if v.normalized]
    if normalized:
        raise ValueError(
            f"train() needs raw volumes (CT statistics, superpixels); already normalised: {normalized}"
        )
    train_raw, _ = split_volumes(cfg.data, raw)
    modalities = {v.modality for v in train_raw}
    if len(modalities) != 1:
        raise ValueError(f"training volumes mix modalities {sorted(modalities)}")
    ct_stats = fit_ct_stats(train_raw) if modalities == {"CT"} else None

    size = cfg.data.size
    sp_cache = cfg.data.cache_dir if cfg.data.cache_dir is not None else str(out / "cache" / "superpixels")
    superpixels, sp_stats = compute_dataset_superpixels_with_stats(
        [resize_volume(v, size) for v in train_raw],
        cfg.data.superpixels(),
        cache_dir=sp_cache,
        workers=cfg.train.num_workers,
        progress=cfg.train.progress_bar,
    )
    train_vols = preprocess_volumes(train_raw, size, ct_stats)

    on_cuda = _on_cuda(cfg.train.accelerator)
    precision = resolve_precision(cfg.train.precision, on_cuda)
    channels_last = resolve_channels_last(cfg.train.channels_last, on_cuda)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)

    model = create_model(cfg.model)
    extras = {
        "norm_stats": ct_stats.to_dict() if ct_stats is not None else None,
        "modality": next(iter(modalities)),
        "train_subjects": [v.subject for v in train_raw],
        "superpixel_stats": {k: v for k, v in sp_stats.to_dict().items() if k != "per_subject_regions"},
        "precision": precision,
        "channels_last": channels_last,
    }
    module = FewShotModule(model, cfg.optim, to_dict(cfg), extras=extras, channels_last=channels_last)

    ckpt = checkpoint_path(out)
    csv = CSVLogger(save_dir=str(out), name="logs")
    _ = csv.version  # fix the version now, so every process (and the result) agree on the log folder
    trainer = pl.Trainer(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=precision,  # type: ignore[arg-type]
        max_steps=cfg.train.steps,
        max_epochs=-1,
        logger=csv if not fast_dev_run else False,
        callbacks=[
            ModelCheckpoint(
                dirpath=ckpt.parent, save_top_k=0, save_last=True, every_n_train_steps=cfg.train.ckpt_every
            ),
            *([] if fast_dev_run else [_FinalCheckpoint(ckpt)]),
            *callbacks,
        ],
        log_every_n_steps=cfg.train.log_every,
        enable_progress_bar=cfg.train.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        deterministic=cfg.train.deterministic,
        default_root_dir=str(out),
        fast_dev_run=fast_dev_run,
    )
    datamodule = EpisodeDataModule(
        train_vols,
        superpixels,
        cfg.data,
        batch_size=cfg.train.batch_size,
        total_steps=cfg.train.steps,
        world_size=trainer.world_size,
        num_workers=cfg.train.num_workers,
        seed=cfg.train.seed,
    )
    module.extras["episodes"] = datamodule.describe()
    resumed = str(ckpt) if resume and ckpt.is_file() and not fast_dev_run else None
    start_step = _check_resume(ckpt, cfg) if resumed else 0
    if resumed:
        logger.info("resuming from %s (step %d)", ckpt, start_step)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RESUME_WARNING)
        warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device`")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resumed, weights_only=True)
    seconds = time.perf_counter() - t0
    if fast_dev_run:
        steps = 1
    else:
        steps = _read_global_step(ckpt)  # valid in the main process for every strategy (ddp_spawn too)
    steps_run = steps - start_step
    losses = {
        k: float(v) for k, v in trainer.callback_metrics.items() if k in ("loss", "ce", "align", "fg_dice")
    }
    result = TrainResult(
        checkpoint=None if fast_dev_run else str(ckpt),
        steps=steps,
        steps_run=steps_run,
        seconds=seconds,
        steps_per_s=steps_run / seconds if seconds > 0 else 0.0,
        losses=losses,
        log_dir=None if fast_dev_run else csv.log_dir,
        out_dir=str(out),
        resumed_from=resumed,
    )
    if not fast_dev_run and trainer.global_rank == 0:
        _write_json(out / "train_result.json", result.to_dict())
    return result


def _check_resume(path: Path, cfg: ExperimentConfig) -> int:
    """Global step of ``path``; raises if its model/data/optim settings differ from ``cfg``."""
    ckpt = load_checkpoint(path)
    stored = (ckpt.get(CHECKPOINT_KEY) or {}).get("config") or {}
    current = to_dict(cfg)
    diffs = [
        f"{section}.{k}: {stored.get(section, {}).get(k)!r} -> {v!r}"
        for section in ("data", "model", "optim")
        for k, v in current[section].items()
        if stored.get(section, {}).get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"cannot resume from {path}: the config changed ({'; '.join(diffs)}); use a new out_dir or resume=False"
        )
    return int(ckpt.get("global_step", 0))


def _read_global_step(path: Path) -> int:
    return int(load_checkpoint(path).get("global_step", 0))


# ---------------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size} bytes) cannot be read: it is corrupt, truncated or not a "
            f"PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def _describe(cfg: ModelConfig | dict[str, Any] | None) -> str:
    if cfg is None:
        return "unknown"
    d = asdict(cfg) if isinstance(cfg, ModelConfig) else cfg
    return f"backbone {d.get('backbone')!r} (truncate={d.get('truncate')}, head={d.get('head')!r})"


def load_model_from_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    model: FewShotSegmenter | None = None,
) -> tuple[FewShotSegmenter, dict[str, Any], dict[str, Any]]:
    """Rebuild the trained model of a :func:`train` checkpoint (in eval mode).

    Args:
        path: ``.ckpt`` file written by :func:`train`.
        map_location: device for the tensors.
        model: load the weights into this model instead of building the stored architecture;
            a model with another backbone/head raises :class:`CheckpointError` naming both.

    Returns:
        ``(model, config dict, extras)``; extras hold ``model_config``, ``init_report``,
        ``library_version``, ``norm_stats`` (CT), ``global_step`` and training metadata.
    """
    ckpt = load_checkpoint(path, map_location)
    payload = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(payload, dict) or "model_config" not in payload:
        raise CheckpointError(
            f"checkpoint {path} was not written by fewshot.training.train (no {CHECKPOINT_KEY!r} key)"
        )
    stored_cfg = ModelConfig(**payload["model_config"])
    if model is None:
        # The weights come from the checkpoint: build the architecture without reading pretrained files.
        model = create_model(replace(stored_cfg, init="random", weights=None))
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} holds a model with {_describe(stored_cfg)}, which does not match the model with "
            f"{_describe(getattr(model, 'config', None))}: {' '.join(str(e).split())[:400]}"
        ) from e
    model.to(map_location).eval()
    extras = {k: v for k, v in payload.items() if k != "config"}
    extras["global_step"] = int(ckpt.get("global_step", 0))
    return model, dict(payload["config"]), extras
