"""Superpixel pseudo-labels (SSL-ALPNet recipe) for self-supervised episodes.

Per 2D axial slice (``(H, W)``):

1. **Body mask** (:func:`body_mask`): ``slice > threshold`` → largest connected component →
   ``binary_fill_holes``. The threshold is in the units of the array you pass. SSL-ALPNet uses
   ``1e-4`` for CT already windowed to [0, 255] and ``1e-4 + 50`` for raw (clipped) MR intensities;
   :func:`default_body_threshold` returns these for a :class:`~episodes.volumes.Volume`.
2. **Superpixels** (:func:`compute_superpixels`) with one of :data:`METHODS`:

   * ``felzenszwalb`` (scikit-image). SSL-ALPNet calls ``felzenszwalb(slice, min_size=400, sigma=1)``
     with skimage's default ``scale=1`` on CT in [0, 255]. skimage divides ``scale`` by 255 and assumes
     [0, 1] data, so the *intensity range matters*: we min-max scale every slice to **[0, 255]** before
     calling it, which reproduces SSL-ALPNet on CT exactly and makes MR (raw units 0..~1000 in CHAOS)
     behave the same way (≈ 40 regions per 256² slice instead of depending on the scanner range).
   * ``slic`` (scikit-image, ``channel_axis=None``) on the [0, 1] min-max scaled slice.
   * ``fast-slic`` (optional ``fast_slic`` package, imported lazily) on the slice as uint8 ``H×W×3``.

3. Superpixels outside the body are dropped (set to 0) and the rest relabelled ``1..N`` in order of
   first appearance in raster order. Output: ``(H, W)`` int32, ``0`` = outside the body.

:func:`compute_dataset_superpixels` runs this for every slice of every volume in worker processes,
with an on-disk cache (:mod:`episodes.cache`). Superpixels are computed on the **raw** (not z-scored)
image, as in SSL-ALPNet; CT in HU is first windowed to [-125, 275] → [0, 255].
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .volumes import Volume, VolumeError

__all__ = [
    "DEFAULT_PARAMS",
    "FAST_SLIC_INSTALL",
    "METHODS",
    "SuperpixelParams",
    "SuperpixelStats",
    "body_mask",
    "compute_dataset_superpixels",
    "compute_dataset_superpixels_with_stats",
    "compute_superpixels",
    "compute_volume_superpixels",
    "default_body_threshold",
    "superpixel_input",
]

#: Supported methods.
METHODS: tuple[str, ...] = ("felzenszwalb", "slic", "fast-slic")

#: Default parameters per method (felzenszwalb = SSL-ALPNet "MIDDLE" setting on a 0-255 scale).
DEFAULT_PARAMS: Mapping[str, Mapping[str, Any]] = {
    "felzenszwalb": {"scale": 1.0, "sigma": 1.0, "min_size": 400},
    "slic": {"n_segments": 100, "compactness": 0.1, "sigma": 0.0},
    "fast-slic": {"num_components": 100, "compactness": 10.0},
}

FAST_SLIC_INSTALL = (
    'pip install numpy cython "setuptools>=70.1" wheel && pip install --no-build-isolation fast-slic==0.4.0'
)

#: SSL-ALPNet ``fg_thresh``: CT in [0, 255] → 1e-4; MR raw intensities → 1e-4 + 50.
BODY_THRESHOLD_CT255 = 1e-4
BODY_THRESHOLD_MR_RAW = 1e-4 + 50.0


# --------------------------------------------------------------------------------------
# Per-slice functions


def body_mask(slice_2d: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask of one slice: ``slice > threshold`` → largest connected component → fill holes.

    Args:
        slice_2d: ``(H, W)`` intensities (in the units ``threshold`` refers to).
        threshold: intensity above which a pixel may belong to the body.

    Returns:
        ``(H, W)`` bool mask; all ``False`` when no pixel exceeds ``threshold`` (an empty slice).
    """
    from scipy import ndimage

    image = _check_slice(slice_2d)
    above = image > threshold
    if not above.any():
        return np.zeros(image.shape, dtype=bool)
    components, n = ndimage.label(above)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        above = components == int(np.argmax(sizes))
    return np.asarray(ndimage.binary_fill_holes(above), dtype=bool)


def default_body_threshold(volume: Volume) -> float:
    """SSL-ALPNet body threshold for the array :func:`superpixel_input` returns for ``volume``."""
    if volume.modality == "CT":
        return BODY_THRESHOLD_CT255
    return BODY_THRESHOLD_MR_RAW


def superpixel_input(volume: Volume) -> np.ndarray:
    """The ``(Z, H, W)`` float32 array superpixels are computed on (raw intensities).

    CT in HU is windowed to [-125, 275] and scaled to [0, 255]; ``window255`` CT and raw MR are used
    as they are. Normalised (z-scored) volumes are rejected: the body thresholds assume raw units.
    """
    if volume.normalized:
        raise VolumeError(
            f"subject {volume.subject}: superpixels need the raw (un-normalised) image, as in SSL-ALPNet; "
            "pass the volume before episodes.preprocess.preprocess()"
        )
    if volume.modality == "CT" and volume.intensity == "hu":
        from .preprocess import window_ct

        return window_ct(volume.image)
    return np.asarray(volume.image, dtype=np.float32)


def _check_slice(slice_2d: np.ndarray) -> np.ndarray:
    image = np.asarray(slice_2d)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D (H, W) slice, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number):
        raise ValueError(f"slice dtype {image.dtype} is not numeric")
    return image.astype(np.float32, copy=False)


def _scaled(image: np.ndarray, top: float) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < 1e-8:
        return np.zeros(image.shape, dtype=np.float64)
    return (image.astype(np.float64) - lo) * (top / (hi - lo))


def _felzenszwalb(image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return np.asarray(felzenszwalb(_scaled(image, 255.0), **params))


def _slic(image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from skimage.segmentation import slic

    params = {"start_label": 1, **params}
    return np.asarray(slic(_scaled(image, 1.0), channel_axis=None, **params))


def _import_fast_slic() -> Any:
    try:
        import fast_slic
    except ImportError as exc:
        raise ImportError(
            f"method 'fast-slic' needs the optional package fast-slic, which is not installed ({exc}). "
            f"Install it with: {FAST_SLIC_INSTALL}"
        ) from exc
    return fast_slic


def _fast_slic(image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    fast_slic = _import_fast_slic()
    params = {"num_threads": 1, **params}
    grey = np.rint(_scaled(image, 255.0)).astype(np.uint8)
    rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(fast_slic.Slic(**params).iterate(rgb))


_BACKENDS = {"felzenszwalb": _felzenszwalb, "slic": _slic, "fast-slic": _fast_slic}


def _check_method(method: str) -> str:
    key = method.strip().lower().replace("_", "-")
    if key not in _BACKENDS:
        raise ValueError(f"unknown superpixel method {method!r}; choices: {list(METHODS)}")
    return key


def _relabel_inside(segments: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Drop segments outside ``mask``; relabel the rest ``1..N`` in raster order of first appearance."""
    out = np.zeros(segments.shape, dtype=np.int32)
    if not mask.any():
        return out
    inside = segments[mask].astype(np.int64)
    uniq, first, inverse = np.unique(inside, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int32)
    rank[order] = np.arange(1, len(uniq) + 1, dtype=np.int32)
    out[mask] = rank[inverse.reshape(-1)]
    return out


def compute_superpixels(
    slice_2d: np.ndarray,
    method: str = "felzenszwalb",
    *,
    body_mask: np.ndarray | None = None,
    **params: Any,
) -> np.ndarray:
    """Superpixels of one slice, restricted to the body.

    Args:
        slice_2d: ``(H, W)`` raw intensities (any range; each method rescales, see module docs).
        method: one of :data:`METHODS`.
        body_mask: ``(H, W)`` bool; superpixels outside it are dropped. ``None`` keeps every pixel.
        **params: method parameters, overriding :data:`DEFAULT_PARAMS` (e.g. ``min_size=100``).

    Returns:
        ``(H, W)`` int32: ``0`` outside the body, superpixels ``1..N``.
    """
    image = _check_slice(slice_2d)
    key = _check_method(method)
    mask = np.ones(image.shape, dtype=bool) if body_mask is None else np.asarray(body_mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"body_mask shape {mask.shape} does not match slice shape {image.shape}")
    if not mask.any():
        return np.zeros(image.shape, dtype=np.int32)
    merged = {**DEFAULT_PARAMS[key], **params}
    segments = _BACKENDS[key](image, merged)
    if segments.shape != image.shape:
        raise RuntimeError(f"{key} returned shape {segments.shape} for a slice of shape {image.shape}")
    return _relabel_inside(segments, mask)


# --------------------------------------------------------------------------------------
# Parameters and stats


@dataclass(frozen=True)
class SuperpixelParams:
    """A superpixel method with its parameters (defaults filled in) and the body-mask threshold.

    Attributes:
        method: one of :data:`METHODS`.
        params: method keyword arguments; missing ones take :data:`DEFAULT_PARAMS`.
        body_threshold: body-mask threshold in the units of :func:`superpixel_input`; ``None`` =
            SSL-ALPNet default per modality (:func:`default_body_threshold`).
    """

    method: str = "felzenszwalb"
    params: Mapping[str, Any] = field(default_factory=dict)
    body_threshold: float | None = None

    def __post_init__(self) -> None:
        key = _check_method(self.method)
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

    def threshold_for(self, volume: Volume) -> float:
        return default_body_threshold(volume) if self.body_threshold is None else float(self.body_threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": dict(self.params), "body_threshold": self.body_threshold}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuperpixelParams:
        unknown = set(data) - {"method", "params", "body_threshold"}
        if unknown:
            raise KeyError(
                f"unknown SuperpixelParams keys {sorted(unknown)}; valid: method, params, body_threshold"
            )
        return cls(
            method=str(data.get("method", "felzenszwalb")),
            params=dict(data.get("params", {})),
            body_threshold=data.get("body_threshold"),
        )


@dataclass(frozen=True)
class SuperpixelStats:
    """Summary of a :func:`compute_dataset_superpixels` run.

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


# --------------------------------------------------------------------------------------
# Volume / dataset level


def _slices_worker(images: np.ndarray, threshold: float, method: str, params: dict[str, Any]) -> np.ndarray:
    out = np.zeros(images.shape, dtype=np.int32)
    for z in range(images.shape[0]):
        mask = body_mask(images[z], threshold)
        out[z] = compute_superpixels(images[z], method, body_mask=mask, **params)
    return out


def compute_volume_superpixels(volume: Volume, params: SuperpixelParams | None = None) -> np.ndarray:
    """``(Z, H, W)`` int32 superpixels of every slice of one raw volume (single process, no cache)."""
    params = params or SuperpixelParams()
    image = superpixel_input(volume)
    return _slices_worker(image, params.threshold_for(volume), params.method, dict(params.params))


class _Progress:
    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        self.bar: Any = None
        self.enabled = enabled
        self.total = total
        self.done = 0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="slice", file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            print(f"\rsuperpixels: {self.done}/{self.total} slices", end="", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def compute_dataset_superpixels_with_stats(
    volumes: Sequence[Volume],
    params: SuperpixelParams | None = None,
    *,
    cache_dir: str | Path | None,
    workers: int = 2,
    progress: bool = True,
    slices_per_task: int = 8,
    mp_context: str = "spawn",
) -> tuple[dict[str, np.ndarray], SuperpixelStats]:
    """Superpixels for all slices of all raw volumes, in parallel and cached on disk.

    Args:
        volumes: raw (un-normalised) volumes with unique subject ids.
        params: method, parameters and body threshold (default: SSL-ALPNet felzenszwalb).
        cache_dir: folder for ``.npz`` cache entries (:mod:`episodes.cache`); ``None`` disables caching.
        workers: worker processes; ``0`` or ``1`` computes in this process.
        progress: show a progress bar on stderr (tqdm).
        slices_per_task: slices sent to a worker at a time.
        mp_context: multiprocessing start method. ``spawn`` (default) is safe with OpenMP libraries
            (torch, fast-slic) already loaded in the parent.

    Returns:
        ``({subject: (Z, H, W) int32}, stats)``.
    """
    from . import cache as _cache

    params = params or SuperpixelParams()
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if slices_per_task < 1:
        raise ValueError(f"slices_per_task must be >= 1, got {slices_per_task}")
    subjects = [v.subject for v in volumes]
    if len(set(subjects)) != len(subjects):
        dupes = sorted({s for s in subjects if subjects.count(s) > 1})
        raise ValueError(f"duplicate subject ids {dupes}; superpixel maps are keyed by subject")
    start = time.perf_counter()
    results: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    todo: list[tuple[Volume, np.ndarray, float]] = []
    hits = 0
    for volume in volumes:
        image = superpixel_input(volume)
        threshold = params.threshold_for(volume)
        if cache_dir is not None:
            key = _cache.superpixel_cache_key(volume, image, params)
            keys[volume.subject] = key
            cached = _cache.load_superpixels(cache_dir, volume.subject, key, expected_shape=image.shape)
            if cached is not None:
                results[volume.subject] = cached
                hits += 1
                continue
        if not (image > threshold).any():
            raise VolumeError(
                f"subject {volume.subject}: no voxel above the body threshold {threshold} "
                f"(image range {float(image.min()):.4g}..{float(image.max()):.4g}); wrong intensity "
                "units or an empty scan"
            )
        todo.append((volume, image, threshold))

    total = sum(image.shape[0] for _, image, _ in todo)
    bar = _Progress(total, progress and total > 0, "superpixels")
    outputs = {v.subject: np.zeros(img.shape, dtype=np.int32) for v, img, _ in todo}
    method, kw = params.method, dict(params.params)
    tasks = [
        (v.subject, z0, img[z0 : z0 + slices_per_task], thr)
        for v, img, thr in todo
        for z0 in range(0, img.shape[0], slices_per_task)
    ]
    try:
        if workers <= 1 or len(tasks) <= 1:
            for subject, z0, chunk, thr in tasks:
                outputs[subject][z0 : z0 + len(chunk)] = _slices_worker(chunk, thr, method, kw)
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(mp_context)) as pool:
                futures = {
                    pool.submit(_slices_worker, chunk, thr, method, kw): (subject, z0, len(chunk))
                    for subject, z0, chunk, thr in tasks
                }
                for future in as_completed(futures):
                    subject, z0, n = futures[future]
                    outputs[subject][z0 : z0 + n] = future.result()
                    bar.update(n)
    finally:
        bar.close()
    for volume, _, _ in todo:
        seg = outputs[volume.subject]
        if cache_dir is not None:
            _cache.save_superpixels(
                cache_dir, volume.subject, keys[volume.subject], seg, meta=_cache_meta(volume, params)
            )
        results[volume.subject] = seg
    ordered = {s: results[s] for s in subjects}
    return ordered, _stats(ordered, hits, len(todo), time.perf_counter() - start)


def _cache_meta(volume: Volume, params: SuperpixelParams) -> dict[str, Any]:
    return {"subject": volume.subject, "source": volume.source, **params.to_dict()}


def _stats(maps: Mapping[str, np.ndarray], hits: int, misses: int, seconds: float) -> SuperpixelStats:
    per_subject = {s: tuple(int(m[z].max(initial=0)) for z in range(m.shape[0])) for s, m in maps.items()}
    counts = np.array([c for cs in per_subject.values() for c in cs], dtype=np.int64)
    if counts.size == 0:
        counts = np.zeros(1, dtype=np.int64)
    return SuperpixelStats(
        n_volumes=len(maps),
        n_slices=int(sum(m.shape[0] for m in maps.values())),
        n_empty_slices=int((counts == 0).sum()) if maps else 0,
        cache_hits=hits,
        cache_misses=misses,
        regions_mean=float(counts.mean()),
        regions_median=float(np.median(counts)),
        regions_min=int(counts.min()),
        regions_max=int(counts.max()),
        seconds=seconds,
        per_subject_regions=per_subject,
    )


def compute_dataset_superpixels(
    volumes: Sequence[Volume],
    params: SuperpixelParams | None = None,
    *,
    cache_dir: str | Path | None,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """``{subject: (Z, H, W) int32}`` superpixels; see :func:`compute_dataset_superpixels_with_stats`."""
    maps, _ = compute_dataset_superpixels_with_stats(
        volumes, params, cache_dir=cache_dir, workers=workers, progress=progress
    )
    return maps
