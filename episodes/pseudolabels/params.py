"""Superpixel method parameters (:class:`SuperpixelParams`) and run statistics (:class:`SuperpixelStats`).

:data:`DEFAULT_PARAMS` are the parameters every :class:`SuperpixelParams` fills in (they are part of
its :meth:`~SuperpixelParams.to_dict` and so of the superpixel cache key). :data:`OPTIONAL_PARAMS`
are further backend keywords that may be given but are not filled in when absent (the backend's own
default then applies, listed there), so the cache keys of configurations that do not use them are
unchanged. Any other name is refused. :attr:`SuperpixelParams.scaling` follows the same rule: it appears
in :meth:`~SuperpixelParams.to_dict` (and so in the cache key) only when it is not the default
``"minmax"``, and so does :attr:`SuperpixelParams.body_connectivity` (default 4).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..data.volumes import Volume

__all__ = [
    "BODY_CONNECTIVITIES",
    "DEFAULT_PARAMS",
    "METHODS",
    "OPTIONAL_PARAMS",
    "SCALINGS",
    "UNSCALED_METHODS",
    "VOLUMETRIC_METHODS",
    "SuperpixelParams",
    "SuperpixelStats",
    "check_body_connectivity",
    "check_method",
    "check_params",
    "check_scaling",
    "valid_params",
]

#: Supported methods.
METHODS: tuple[str, ...] = ("felzenszwalb", "slic", "fast-slic", "slic3d")

#: Methods that segment a whole volume into 3D supervoxels (ADNet/Q-Net style): one id is one region
#: across slices, so a support and a query may come from different slices of it.
VOLUMETRIC_METHODS: tuple[str, ...] = ("slic3d",)

#: Intensity scalings of a slice before the superpixel method (:attr:`SuperpixelParams.scaling`).
SCALINGS: tuple[str, ...] = ("minmax", "none")

#: Connectivities of the body mask's largest component (:attr:`SuperpixelParams.body_connectivity`).
BODY_CONNECTIVITIES: tuple[int, ...] = (4, 8)

#: Methods that accept ``scaling="none"`` (the others need a known intensity range).
UNSCALED_METHODS: tuple[str, ...] = ("felzenszwalb",)

#: Default parameters per method (felzenszwalb = SSL-ALPNet "MIDDLE" setting on a 0-255 scale).
DEFAULT_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "felzenszwalb": {"scale": 1.0, "sigma": 1.0, "min_size": 400},
    "slic": {"n_segments": 100, "compactness": 0.1, "sigma": 0.0},
    "fast-slic": {"num_components": 100, "compactness": 10.0},
    # scikit-image SLIC on the volume with its voxel spacing; n_segments = body voxels / segment_voxels
    "slic3d": {"segment_voxels": 2000, "compactness": 0.2, "sigma": 0.0},
}

#: Further accepted parameters per method with the value used when they are not given (the
#: backend's default, or ours: fast-slic runs single-threaded, ``num_threads=1``). felzenszwalb
#: takes nothing else (its ``channel_axis`` does not apply to 2D slices); slic's ``start_label`` and
#: ``channel_axis`` are fixed by the backend wrapper; array arguments (``spacing``, ``mask``) cannot
#: be given as parameters.
OPTIONAL_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "felzenszwalb": {},
    "slic": {
        "max_num_iter": 10,
        "enforce_connectivity": True,
        "min_size_factor": 0.5,
        "max_size_factor": 3.0,
        "slic_zero": False,
    },
    "slic3d": {
        "max_num_iter": 10,
        "enforce_connectivity": True,
        "min_size_factor": 0.5,
        "max_size_factor": 3.0,
    },
    "fast-slic": {
        "min_size_factor": 0.25,
        "subsample_stride": 3,
        "preemptive": False,
        "preemptive_thres": 0.05,
        "manhattan_spatial_dist": True,
        "num_threads": 1,
    },
}


def check_method(method: str) -> str:
    """The canonical method name (``fast_slic`` → ``fast-slic``); unknown names list the choices."""
    key = method.strip().lower().replace("_", "-")
    if key not in METHODS:
        raise ValueError(f"unknown superpixel method {method!r}; choices: {list(METHODS)}")
    return key


def valid_params(method: str) -> tuple[str, ...]:
    """Sorted parameter names ``method`` accepts (:data:`DEFAULT_PARAMS` and :data:`OPTIONAL_PARAMS`)."""
    key = check_method(method)
    return tuple(sorted({*DEFAULT_PARAMS[key], *OPTIONAL_PARAMS[key]}))


def check_params(method: str, params: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the unknown parameters of ``params`` and listing the valid ones."""
    key = check_method(method)
    valid = valid_params(key)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown {key} parameter(s) {unknown}; valid: {', '.join(valid)}")


def check_scaling(method: str, scaling: str) -> str:
    """``scaling`` if ``method`` supports it (:data:`SCALINGS`, :data:`UNSCALED_METHODS`), else ``ValueError``."""
    key = check_method(method)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown superpixel scaling {scaling!r}; choices: {list(SCALINGS)}")
    if scaling != "minmax" and key not in UNSCALED_METHODS:
        raise ValueError(
            f"superpixel scaling {scaling!r} is only supported by {list(UNSCALED_METHODS)}, not {key!r} "
            "(it needs a known intensity range): use scaling 'minmax'"
        )
    return scaling


def check_body_connectivity(connectivity: int) -> int:
    """``connectivity`` if it is one of :data:`BODY_CONNECTIVITIES`, else ``ValueError``."""
    if isinstance(connectivity, bool) or connectivity not in BODY_CONNECTIVITIES:
        raise ValueError(
            f"body_connectivity must be one of {list(BODY_CONNECTIVITIES)} (4: scipy's default, 8: SSL-ALPNet's "
            f"skimage.measure.label), got {connectivity!r}"
        )
    return int(connectivity)


@dataclass(frozen=True)
class SuperpixelParams:
    """A superpixel method with its parameters (defaults filled in) and the body-mask threshold.

    Attributes:
        method: one of :data:`METHODS`.
        params: method keyword arguments; missing ones take :data:`DEFAULT_PARAMS`; names outside
            :func:`valid_params` raise ``ValueError``.
        body_threshold: body-mask threshold in the units of
            :func:`~episodes.pseudolabels.algorithms.superpixel_input`; ``None`` =
            SSL-ALPNet default per modality
            (:func:`~episodes.pseudolabels.algorithms.default_body_threshold`).
        scaling: what the slice goes through before the method (:data:`SCALINGS`). ``"minmax"`` (default):
            min-max scaled per slice to the range the method assumes ([0, 255] for felzenszwalb and
            fast-slic, [0, 1] for slic). ``"none"`` (felzenszwalb only): the superpixel input as it is,
            in float64, as SSL-ALPNet's ``pseudolabel_gen.ipynb`` runs it on the stored intensities of
            each slice (CT windowed to [0, 255]; MR in raw units). Part of :meth:`to_dict` and of the
            cache key only when it is not ``"minmax"``.
        body_connectivity: connectivity of the body mask's largest component
            (:func:`~episodes.pseudolabels.algorithms.body_mask`): 4 (default) or 8, SSL-ALPNet's
            (``skimage.measure.label``). Part of :meth:`to_dict` and of the cache key only when it is not 4.
    """

    method: str = "felzenszwalb"
    params: Mapping[str, Any] = field(default_factory=dict)
    body_threshold: float | None = None
    scaling: str = "minmax"
    body_connectivity: int = 4

    def __post_init__(self) -> None:
        key = check_method(self.method)
        check_params(key, self.params)
        check_scaling(key, self.scaling)
        check_body_connectivity(self.body_connectivity)
        merged = {**DEFAULT_PARAMS[key], **dict(self.params)}
        for name, value in merged.items():
            if not isinstance(value, (int, float, str, bool)) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise ValueError(
                    f"superpixel parameter {name}={value!r} must be a finite number, str or bool"
                )
        object.__setattr__(self, "method", key)
        object.__setattr__(self, "params", dict(sorted(merged.items())))

    @property
    def volumetric(self) -> bool:
        """True for 3D supervoxel methods (:data:`VOLUMETRIC_METHODS`)."""
        return self.method in VOLUMETRIC_METHODS

    def threshold_for(self, volume: Volume) -> float:
        """The body-mask threshold for ``volume`` (the SSL-ALPNet default when ``body_threshold`` is None)."""
        from .algorithms import default_body_threshold  # algorithms imports this module

        return default_body_threshold(volume) if self.body_threshold is None else float(self.body_threshold)

    def to_dict(self) -> dict[str, Any]:
        """``method``, ``params``, ``body_threshold`` and, when not their defaults (``"minmax"``, 4),
        ``scaling`` and ``body_connectivity`` (so the cache keys of the defaults stay what they were before
        these options existed)."""
        out: dict[str, Any] = {
            "method": self.method,
            "params": dict(self.params),
            "body_threshold": self.body_threshold,
        }
        if self.scaling != "minmax":
            out["scaling"] = self.scaling
        if self.body_connectivity != 4:
            out["body_connectivity"] = self.body_connectivity
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuperpixelParams:
        valid = ("method", "params", "body_threshold", "scaling", "body_connectivity")
        unknown = set(data) - set(valid)
        if unknown:
            raise KeyError(f"unknown SuperpixelParams keys {sorted(unknown)}; valid: {', '.join(valid)}")
        return cls(
            method=str(data.get("method", "felzenszwalb")),
            params=dict(data.get("params", {})),
            body_threshold=data.get("body_threshold"),
            scaling=str(data.get("scaling", "minmax")),
            body_connectivity=data.get("body_connectivity", 4),
        )


@dataclass(frozen=True)
class SuperpixelStats:
    """Summary of a :func:`~episodes.pseudolabels.dataset.compute_dataset_superpixels_with_stats` run.

    ``regions_*`` are over all slices (including empty ones, which have 0 regions).
    """

    n_volumes: int
    n_slices: int
    n_empty_slices: int
    cache_hits: int
    cache_misses: int
    regions_mean: float
    regions_median: float
    regions_min: int
    regions_max: int
    seconds: float
    per_subject_regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "per_subject_regions"}
        return out
