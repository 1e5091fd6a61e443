"""Volumes, superpixel pseudo-labels, episode generators and evaluation protocols."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fewshot-medseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.1.0"

from .labels import ABDOMINAL_ORGANS, BTCV_CT, CHAOS_MR, PHANTOM, LabelMap, canonical_organ, get_label_map
from .volumes import Volume, VolumeError

__all__ = [
    "ABDOMINAL_ORGANS",
    "BTCV_CT",
    "CHAOS_MR",
    "PHANTOM",
    "LabelMap",
    "Volume",
    "VolumeError",
    "__version__",
    "canonical_organ",
    "get_label_map",
]
