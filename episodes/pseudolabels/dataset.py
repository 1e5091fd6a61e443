"""Superpixels of whole volumes and data sets: the on-disk cache driver.

:func:`compute_dataset_superpixels_with_stats` runs :mod:`episodes.pseudolabels.algorithms` for
every slice of every volume, reading and writing the on-disk cache (:mod:`episodes.pseudolabels.cache`)
and spreading the slices that are not cached over processes (:mod:`episodes.pseudolabels.parallel`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.volumes import Volume, VolumeError
from ..progress import Progress
from . import cache as _cache
from . import parallel
from .algorithms import superpixel_input, superpixels_into
from .params import SuperpixelParams, SuperpixelStats

__all__ = ["compute_dataset_superpixels_with_stats", "compute_volume_superpixels"]


def compute_volume_superpixels(volume: Volume, params: SuperpixelParams | None = None) -> np.ndarray:
    """``(Z, H, W)`` int32 superpixels of every slice (or the supervoxels) of one raw volume (single
    process, no cache)."""
    params = params or SuperpixelParams()
    image = np.asarray(superpixel_input(volume), dtype=np.float32)
    out = np.empty(image.shape, dtype=np.int32)
    superpixels_into(
        image,
        out,
        params.threshold_for(volume),
        params.method,
        dict(params.params),
        volume.spacing,
        params.scaling,
        params.body_connectivity,
    )
    return out


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
        cache_dir: folder for ``.npz`` cache entries (:mod:`episodes.pseudolabels.cache`); ``None`` disables caching.
        workers: processes computing slices, the calling one included (it starts ``workers - 1``
            worker processes); ``0`` or ``1`` computes in this process only.
        progress: report progress on stderr (:class:`episodes.progress.Progress`: a bar on a terminal,
            else a line every 10 %).
        slices_per_task: slices claimed by a process at a time (a volumetric method claims whole volumes).
        mp_context: multiprocessing start method of the workers. ``spawn`` (default) is safe with
            OpenMP libraries (torch, fast-slic) already loaded in the parent.

    Returns:
        ``({subject: (Z, H, W) int32}, stats)``.
    """
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
    if params.volumetric:  # supervoxels need the whole volume in one task
        slices_per_task = max((image.shape[0] for _, image, _ in todo), default=1)
    n_tasks = sum(math.ceil(image.shape[0] / slices_per_task) for _, image, _ in todo)
    method, kw = params.method, dict(params.params)
    if workers > 1 and n_tasks > 1:
        free = parallel.shm_free_bytes()
        need = 2 * 4 * sum(image.size for _, image, _ in todo)
        if free is not None and free < need * 1.05 + (64 << 20):
            warnings.warn(
                f"/dev/shm has {free / 2**20:.0f} MiB free but {workers} superpixel processes need "
                f"{need / 2**20:.0f} MiB of shared memory; computing in this process only",
                stacklevel=2,
            )
            workers = 1
    bar = Progress(total, "superpixels", unit="slices", enabled=progress)
    try:
        if workers <= 1 or n_tasks <= 1:
            outputs = {}
            for volume, image, threshold in todo:
                seg = np.empty(image.shape, dtype=np.int32)
                for z0 in range(0, image.shape[0], slices_per_task):
                    z1 = min(z0 + slices_per_task, image.shape[0])
                    superpixels_into(
                        image[z0:z1], seg[z0:z1], threshold, method, kw, volume.spacing, params.scaling,
                        params.body_connectivity,
                    )
                    bar.update(z1 - z0)
                outputs[volume.subject] = seg
        else:
            outputs = parallel.compute_parallel(
                [(v.subject, img, thr, v.spacing) for v, img, thr in todo],
                method,
                kw,
                workers,
                slices_per_task,
                mp_context,
                bar,
                scaling=params.scaling,
                body_connectivity=params.body_connectivity,
            )
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


def _regions_per_slice(seg: np.ndarray) -> list[int]:
    """Distinct non-zero ids per slice (supervoxel ids are numbered over the volume, not per slice)."""
    return [int(np.count_nonzero(np.bincount(s.ravel())[1:])) for s in seg.reshape(seg.shape[0], -1)]


def _stats(maps: Mapping[str, np.ndarray], hits: int, misses: int, seconds: float) -> SuperpixelStats:
    per_subject = {s: tuple(_regions_per_slice(m)) for s, m in maps.items()}
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
