"""Superpixel pseudo-labels (SSL-ALPNet recipe).

* :mod:`~episodes.pseudolabels.algorithms`: per-slice backends, body mask, ``compute_superpixels``.
* :mod:`~episodes.pseudolabels.params`: ``SuperpixelParams``, ``SuperpixelStats``, ``METHODS``,
  ``DEFAULT_PARAMS``, ``SCALINGS``, ``VOLUMETRIC_METHODS`` (3D supervoxels).
* :mod:`~episodes.pseudolabels.dataset`: whole volumes / data sets, cached
  (``compute_dataset_superpixels_with_stats``); :mod:`~episodes.pseudolabels.parallel`: the
  shared-memory process scheduler; :mod:`~episodes.pseudolabels.cache`: the on-disk cache.
"""

from __future__ import annotations

from .algorithms import (
    FAST_SLIC_INSTALL,
    body_mask,
    compute_superpixels,
    default_body_threshold,
    superpixel_input,
)
from .dataset import compute_dataset_superpixels_with_stats, compute_volume_superpixels
from .params import (
    BODY_CONNECTIVITIES,
    DEFAULT_PARAMS,
    METHODS,
    OPTIONAL_PARAMS,
    SCALINGS,
    VOLUMETRIC_METHODS,
    SuperpixelParams,
    SuperpixelStats,
)

__all__ = [
    "BODY_CONNECTIVITIES",
    "DEFAULT_PARAMS",
    "FAST_SLIC_INSTALL",
    "METHODS",
    "OPTIONAL_PARAMS",
    "SCALINGS",
    "VOLUMETRIC_METHODS",
    "SuperpixelParams",
    "SuperpixelStats",
    "body_mask",
    "compute_dataset_superpixels_with_stats",
    "compute_superpixels",
    "compute_volume_superpixels",
    "default_body_threshold",
    "superpixel_input",
]
