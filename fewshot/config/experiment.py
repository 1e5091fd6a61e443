"""The experiment configuration: sections that mirror the components they configure.

``ExperimentConfig`` = ``data`` (:class:`DataConfig`: the dataset plus the components'
own configs, :class:`~episodes.protocol.Protocol`, :class:`~episodes.pseudolabels.SuperpixelParams`
and :class:`~episodes.sampling.EpisodeConfig`), ``model`` (:class:`~fewshot.config.model.ModelConfig`),
``optim``, ``train``, one ``seed`` and ``out_dir``.

Defaults reproduce the SSL-ALPNet recipe (SGD lr 1e-3, momentum 0.9, weight decay 5e-4,
learning rate x0.95 every 1000 steps, class weights (0.05, 1.0) for (bg, fg), 100,100
steps at batch size 1, Felzenszwalb ``scale=1, sigma=1, min_size=400``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from episodes.data.datasets import check_loader_args, list_datasets
from episodes.protocol import Protocol
from episodes.pseudolabels import VOLUMETRIC_METHODS, SuperpixelParams
from episodes.sampling import EpisodeConfig
from fewshot.config.model import ModelConfig
from fewshot.config.schema import TRAIN_SEED_OFFSET, ConfigError, to_dict

__all__ = ["DataConfig", "ExperimentConfig", "OptimConfig", "TrainConfig"]


#: Smallest ``data.size``: the backbones downsample 8x and ALPNet pools windows of feature cells.
MIN_SIZE = 32


def _default_superpixels() -> SuperpixelParams:
    return SuperpixelParams(method="felzenszwalb", params={"scale": 1.0, "sigma": 1.0, "min_size": 400})


@dataclass(frozen=True)
class DataConfig:
    """What data, which pseudo-labels, which episodes and which evaluation protocol.

    Attributes:
        dataset: a registered dataset (``episodes.data.datasets.list_datasets()``).
        data_dir: dataset folder; ``None`` uses ``$FEWSHOT_DATA/<default sub-folder>`` (no folder
            for the phantoms).
        loader_args: extra keyword arguments of ``load_dataset`` (e.g. ``{n_subjects: 6}`` for phantoms).
        size: in-plane size the slices are resized to.
        spacing: target in-plane pixel size in mm of the model's input. ``None`` (default): slices are resized
            to ``size`` whatever their spacing (the SSL-ALPNet-preprocessed sets are already on one grid, so
            they stay exactly as before). A number: training, support and query scans alike are resampled to
            ``spacing`` mm pixels and centre-cropped/padded to ``size`` (field of view ``spacing * size`` mm);
            evaluation then scores against labels resampled the same way (nearest).
        channels: image channels fed to the backbone (grey repeated); equals ``model.backbone.in_channels``.
        superpixels: the pseudo-label generator (:class:`~episodes.pseudolabels.SuperpixelParams`).
        superpixel_workers: processes that compute superpixels (cache misses only).
        cache_dir: superpixel cache folder; ``None`` uses ``<out_dir>/cache/superpixels``.
        episodes: self-supervised episode sampling (:class:`~episodes.sampling.EpisodeConfig`).
        protocol: evaluation protocol (:class:`~episodes.protocol.Protocol`); its ``dataset`` is
            this section's ``dataset`` (it may be omitted in YAML).
        exclude_organs: organs whose slices are removed from training. ``None``: what the protocol
            implies (:meth:`~episodes.protocol.Protocol.training_exclusions`: none in setting 1, the
            label groups of the test organs in setting 2).
    """

    dataset: str = "chaos-mr"
    data_dir: str | None = None
    loader_args: dict[str, Any] = field(default_factory=dict)
    size: int = 256
    spacing: float | None = None
    channels: int = 3
    superpixels: SuperpixelParams = field(default_factory=_default_superpixels)
    superpixel_workers: int = 2
    cache_dir: str | None = None
    episodes: EpisodeConfig = field(default_factory=EpisodeConfig)
    protocol: Protocol = field(default_factory=Protocol)
    exclude_organs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        choices = list_datasets()
        if self.dataset not in choices:
            raise ConfigError(f"data.dataset={self.dataset!r}; choices: {choices}")
        try:
            check_loader_args(self.dataset, self.loader_args)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.size < MIN_SIZE:
            raise ConfigError(
                f"data.size must be >= {MIN_SIZE} (the backbones downsample 8x and the prototype windows need "
                f"several feature cells), got {self.size}"
            )
        for name in ("size", "channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.spacing is not None and not self.spacing > 0:
            raise ConfigError(f"data.spacing must be a pixel size > 0 in mm (or null), got {self.spacing}")
        if self.superpixel_workers < 0:
            raise ConfigError(f"data.superpixel_workers must be >= 0, got {self.superpixel_workers}")
        if self.episodes.query_distance and not self.superpixels.volumetric:
            raise ConfigError(
                f"data.episodes.query_distance={self.episodes.query_distance} draws queries from other slices "
                f"of a supervoxel, but data.superpixels.method={self.superpixels.method!r} is per slice "
                f"(its ids are unrelated across slices); use a 3D method {list(VOLUMETRIC_METHODS)} or "
                "query_distance 0"
            )
        if not self.protocol.dataset:
            object.__setattr__(self, "protocol", dataclasses.replace(self.protocol, dataset=self.dataset))
        elif self.protocol.dataset != self.dataset:
            raise ConfigError(
                f"data.protocol.dataset={self.protocol.dataset!r} differs from data.dataset={self.dataset!r}"
            )

    def train_exclusions(self) -> tuple[str, ...]:
        """Organs whose training slices are dropped: ``exclude_organs``, else the protocol's rule."""
        if self.exclude_organs is not None:
            return tuple(self.exclude_organs)
        return self.protocol.training_exclusions()


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


#: ``train.precision`` values: ``auto`` and Lightning's names for the precisions this library trains with.
PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "32", "16", "bf16", "64")


@dataclass(frozen=True)
class TrainConfig:
    """Trainer settings.

    ``precision="auto"`` means ``"16-mixed"`` on CUDA and ``"32-true"`` otherwise;
    ``channels_last=None`` means on for CUDA only. ``devices``/``num_nodes``/``strategy``
    go to :class:`pytorch_lightning.Trainer` unchanged (e.g. ``strategy: ddp``).
    ``num_workers``: DataLoader worker processes. ``progress_bar``: superpixel and training
    progress on stderr (a bar on a terminal, a line every 10 % otherwise; ``False``: none).
    ``keep_every``: also keep a copy of the checkpoint every that many steps
    (``checkpoints/step-<N>.ckpt``), so one long run gives the Dice-against-steps curve;
    ``None``: only ``last.ckpt`` (rewritten every ``ckpt_every`` steps).
    """

    steps: int = 100_100
    batch_size: int = 1
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    ckpt_every: int = 1000
    keep_every: int | None = None
    log_every: int = 50
    progress_bar: bool = True
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "num_nodes", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.keep_every is not None and self.keep_every < 1:
            raise ConfigError(f"train.keep_every must be >= 1 or null, got {self.keep_every}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment; ``out_dir`` receives checkpoints, logs and results.

    ``seed`` is the only seed: the backbone/head weights are drawn with ``seed`` and the trainer
    and episode stream use ``seed + TRAIN_SEED_OFFSET`` (:attr:`train_seed`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.model.backbone.in_channels != self.data.channels:
            raise ConfigError(
                f"model.backbone.in_channels={self.model.backbone.in_channels} must equal "
                f"data.channels={self.data.channels}"
            )

    @property
    def train_seed(self) -> int:
        """Seed of the trainer and the episode stream."""
        return self.seed + TRAIN_SEED_OFFSET

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
