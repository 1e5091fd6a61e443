"""Volumes, superpixel pseudo-labels, episode generators and evaluation protocols.

Sub-packages: :mod:`episodes.data` (volumes, loaders, dataset registry, preprocessing),
:mod:`episodes.pseudolabels` (superpixels and their cache), :mod:`episodes.sampling`
(self-supervised episodes, augmentation), :mod:`episodes.protocol` (folds, evaluation plans);
:mod:`episodes.atomic` holds the atomic-write helpers.

The names below are importable from ``episodes`` directly. Those that need torch or scipy are
imported on first access, so ``import episodes`` stays light (the CLI imports it at start-up).
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("fewshot-medseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

from .data.labels import (
    ABDOMINAL_ORGANS,
    BTCV_CT,
    CHAOS_MR,
    PHANTOM,
    LabelMap,
    canonical_organ,
    get_label_map,
)
from .data.volumes import Volume, VolumeError

if TYPE_CHECKING:
    from .data.datasets import list_datasets, load_dataset
    from .data.preprocess import NormStats, preprocess
    from .protocol import EvaluationPlan, Protocol
    from .pseudolabels.algorithms import compute_superpixels
    from .pseudolabels.dataset import compute_dataset_superpixels_with_stats
    from .pseudolabels.params import SuperpixelParams
    from .sampling.selfsup import EpisodeConfig, SelfSupervisedEpisodes
    from .sampling.types import Episode, EpisodeBatch

#: Lazily imported public names → the module defining them.
_LAZY: dict[str, str] = {
    "list_datasets": ".data.datasets",
    "load_dataset": ".data.datasets",
    "NormStats": ".data.preprocess",
    "preprocess": ".data.preprocess",
    "EvaluationPlan": ".protocol",
    "Protocol": ".protocol",
    "compute_superpixels": ".pseudolabels.algorithms",
    "compute_dataset_superpixels_with_stats": ".pseudolabels.dataset",
    "SuperpixelParams": ".pseudolabels.params",
    "EpisodeConfig": ".sampling.selfsup",
    "SelfSupervisedEpisodes": ".sampling.selfsup",
    "Episode": ".sampling.types",
    "EpisodeBatch": ".sampling.types",
}

__all__ = [
    "ABDOMINAL_ORGANS",
    "BTCV_CT",
    "CHAOS_MR",
    "PHANTOM",
    "Episode",
    "EpisodeBatch",
    "EpisodeConfig",
    "EvaluationPlan",
    "LabelMap",
    "NormStats",
    "Protocol",
    "SelfSupervisedEpisodes",
    "SuperpixelParams",
    "Volume",
    "VolumeError",
    "__version__",
    "canonical_organ",
    "compute_dataset_superpixels_with_stats",
    "compute_superpixels",
    "get_label_map",
    "list_datasets",
    "load_dataset",
    "preprocess",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
