"""Self-supervised episodes.

* :mod:`~episodes.sampling.types`: ``Episode``, ``EpisodeBatch``, ``EpisodeInfo``, their compact
  pickling and ``collate_episodes``.
* :mod:`~episodes.sampling.selfsup`: ``SelfSupervisedEpisodes`` and its ``EpisodeConfig``.
* :mod:`~episodes.sampling.augment`: augmentation presets.
"""

from __future__ import annotations

from .augment import PRESETS, Augmenter
from .selfsup import DEFAULT_MIN_SUPERPIXEL_PIXELS, EpisodeConfig, SelfSupervisedEpisodes
from .types import Episode, EpisodeBatch, EpisodeInfo, collate_episodes

__all__ = [
    "DEFAULT_MIN_SUPERPIXEL_PIXELS",
    "PRESETS",
    "Augmenter",
    "Episode",
    "EpisodeBatch",
    "EpisodeConfig",
    "EpisodeInfo",
    "SelfSupervisedEpisodes",
    "collate_episodes",
]
