"""Superpixel pseudo-labels (SSL-ALPNet recipe) for self-supervised episodes.

Per 2D axial slice (``(H, W)``):

1. **Body mask** (:func:`body_mask`): ``slice > threshold`` → largest connected component →
   fill holes. The threshold is in the units of the array you pass. SSL-ALPNet uses
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
     The AVX2 build (``fast_slic.avx2.SlicAvx2``, identical output, ~1.7x faster) is used when both
     the package and the CPU support it.

3. Superpixels outside the body are dropped (set to 0) and the rest relabelled ``1..N`` in order of
   first appearance in raster order. Output: ``(H, W)`` int32, ``0`` = outside the body.

:func:`compute_dataset_superpixels` runs this for every slice of every volume with an on-disk cache
(:mod:`episodes.cache`). With ``workers=N > 1`` the calling process and ``N - 1`` spawned worker
processes pull chunks of slices from a shared counter; the slices and the result maps live in shared
memory, so no array is pickled and the calling process computes while the workers start up.
Superpixels are computed on the **raw** (not z-scored) image, as in SSL-ALPNet; CT in HU is first
windowed to [-125, 275] → [0, 255].
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import sys
import time
import traceback
import warnings
from collections.abc import Mapping, Sequence
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

#: Whether the calling process also computes slices when worker processes are used (tests turn it off
#: to force every chunk through a worker).
_MAIN_PROCESS_COMPUTES = True


# --------------------------------------------------------------------------------------
# Per-slice functions


@functools.lru_cache(maxsize=1)
def _cv2() -> Any:
    """OpenCV when importable (an albumentations dependency), for faster connected components."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _label4(binary: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool ``(H, W)`` array: ``(labels, n)``, ``0`` = background.

    Same partition as ``scipy.ndimage.label`` (its default structure is 4-connected); the numbering of
    the components may differ (OpenCV is used when available, ~2x faster).
    """
    cv2 = _cv2()
    if cv2 is None:
        from scipy import ndimage

        labels, n = ndimage.label(binary)
        return labels, int(n)
    n, labels = cv2.connectedComponents(binary.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    return labels, int(n) - 1


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (default 4-connectivity) via one labelling of the background.

    A background pixel stays background iff its 4-connected background component touches the image
    border, which is what ``binary_fill_holes``' dilation from the border computes (~10x faster).
    """
    background, n = _label4(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0 = the mask itself
    return ~outside[background]


def _body_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    above = image > threshold
    if not above.any():
        return np.zeros(image.shape, dtype=bool)
    components, n = _label4(above)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        largest = int(np.argmax(sizes))
        if int((sizes == sizes[largest]).sum()) > 1:
            # tie: scipy numbers components in raster order of their first pixel; keep its choice
            from scipy import ndimage

            components, _ = ndimage.label(above)
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            largest = int(np.argmax(sizes))
        above = components == largest
    return _fill_holes(above)


def body_mask(slice_2d: np.ndarray, threshold: float) -> np.ndarray:
    """Body mask of one slice: ``slice > threshold`` → largest connected component → fill holes.

    Args:
        slice_2d: ``(H, W)`` intensities (in the units ``threshold`` refers to).
        threshold: intensity above which a pixel may belong to the body.

    Returns:
        ``(H, W)`` bool mask; all ``False`` when no pixel exceeds ``threshold`` (an empty slice).
    """
    return _body_mask(_check_slice(slice_2d), threshold)


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
    """Min-max scale to ``[0, top]`` in float64 (a new array)."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < 1e-8:
        return np.zeros(image.shape, dtype=np.float64)
    out = image.astype(np.float64)
    out -= lo
    out *= top / (hi - lo)
    return out


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


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "avx2" in line.split()
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=1)
def _fast_slic_class() -> Any:
    """``SlicAvx2`` when fast-slic was built with AVX2 and the CPU has it (same output), else ``Slic``."""
    fast_slic = _import_fast_slic()
    if "x64/avx2" in getattr(fast_slic, "supported_archs", ()) and _cpu_has_avx2():
        from fast_slic.avx2 import SlicAvx2

        return SlicAvx2
    return fast_slic.Slic


def _fast_slic(image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    slic_class = _fast_slic_class()
    params = {"num_threads": 1, **params}
    grey = _scaled(image, 255.0)
    np.rint(grey, out=grey)
    grey8 = grey.astype(np.uint8)
    cv2 = _cv2()
    if cv2 is not None:
        rgb = cv2.cvtColor(grey8, cv2.COLOR_GRAY2RGB)
    else:
        rgb = np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))
    return np.asarray(slic_class(**params).iterate(rgb))


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
    inside = segments[mask].astype(np.int64, copy=False)
    lo = int(inside.min())
    if lo < 0 or int(inside.max()) > 4 * inside.size:  # unusual ids: generic (sorting) path
        uniq, first, inverse = np.unique(inside, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(uniq), dtype=np.int32)
        rank[order] = np.arange(1, len(uniq) + 1, dtype=np.int32)
        out[mask] = rank[inverse.reshape(-1)]
        return out
    # First appearances happen at the starts of runs of equal ids in raster order; there are far fewer
    # runs than pixels, so sort only those.
    starts = np.flatnonzero(np.diff(inside, prepend=-1))
    run_ids = inside[starts]
    uniq, first = np.unique(run_ids, return_index=True)
    table = np.zeros(int(uniq[-1]) + 1, dtype=np.int32)
    table[uniq[np.argsort(first, kind="stable")]] = np.arange(1, len(uniq) + 1, dtype=np.int32)
    out[mask] = table[inside]
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
    return _segment(image, mask, key, {**DEFAULT_PARAMS[key], **params})


def _segment(image: np.ndarray, mask: np.ndarray, key: str, params: dict[str, Any]) -> np.ndarray:
    """Checked ``(H, W)`` float32 slice and bool mask → ``(H, W)`` int32 relabelled superpixels."""
    if not mask.any():
        return np.zeros(image.shape, dtype=np.int32)
    segments = _BACKENDS[key](image, params)
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


def _slices_into(
    images: np.ndarray, out: np.ndarray, threshold: float, method: str, params: dict[str, Any]
) -> None:
    """Fill ``out`` ``(Z, H, W)`` int32 with the superpixels of ``images`` ``(Z, H, W)`` float32."""
    key = _check_method(method)
    merged = {**DEFAULT_PARAMS[key], **params}
    for z in range(images.shape[0]):
        image = images[z]
        out[z] = _segment(image, _body_mask(image, threshold), key, merged)


def _slices_worker(images: np.ndarray, threshold: float, method: str, params: dict[str, Any]) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    out = np.empty(images.shape, dtype=np.int32)
    _slices_into(images, out, threshold, method, params)
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
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            print(f"\rsuperpixels: {self.done}/{self.total} slices", end="", file=sys.stderr)

    def set_done(self, done: int) -> None:
        self.update(done - self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# A task is (element offset of its first slice in the shared buffers, slices, H, W, threshold).
_Task = tuple[int, int, int, int, float]


def _claim(counter: Any, n_tasks: int) -> int:
    with counter.get_lock():
        index = int(counter.value)
        if index < n_tasks:
            counter.value = index + 1
    return index


def _run_claimed(
    flat_in: np.ndarray,
    flat_out: np.ndarray,
    tasks: Sequence[_Task],
    counter: Any,
    done: Any,
    method: str,
    kw: dict[str, Any],
    on_done: Any = None,
) -> None:
    """Claim and compute tasks (slices of the flat float32 input into the flat int32 output) until none
    is left; ``on_done()`` is called after each task."""
    while (index := _claim(counter, len(tasks))) < len(tasks):
        start, z, h, w, threshold = tasks[index]
        stop = start + z * h * w
        _slices_into(
            flat_in[start:stop].reshape(z, h, w), flat_out[start:stop].reshape(z, h, w), threshold, method, kw
        )
        done[index] = 1
        if on_done is not None:
            on_done()


def _shared_worker(
    in_name: str,
    out_name: str,
    total: int,
    tasks: Sequence[_Task],
    counter: Any,
    done: Any,
    errors: Any,
    method: str,
    kw: dict[str, Any],
) -> None:
    """Worker-process entry: attach to the shared buffers and compute claimed tasks."""
    from multiprocessing import shared_memory

    shm_in = shared_memory.SharedMemory(name=in_name)
    shm_out = shared_memory.SharedMemory(name=out_name)
    try:
        flat_in = np.ndarray((total,), dtype=np.float32, buffer=shm_in.buf)
        flat_out = np.ndarray((total,), dtype=np.int32, buffer=shm_out.buf)
        _run_claimed(flat_in, flat_out, tasks, counter, done, method, kw)
        del flat_in, flat_out
    except BaseException as exc:  # reported to the parent, which re-raises it
        with counter.get_lock():
            counter.value = len(tasks)  # stop everyone
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # not transferable: the parent raises a RuntimeError with the text
            exc = None  # type: ignore[assignment]
        errors.put((exc, text))
    finally:
        for shm in (shm_in, shm_out):
            try:
                shm.close()
            except BufferError:  # a view survives in the traceback; the OS unmaps at exit
                pass


def _shm_free_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return int(st.f_bavail) * int(st.f_frsize)


def _compute_parallel(
    todo: Sequence[tuple[str, np.ndarray, float]],
    method: str,
    kw: dict[str, Any],
    workers: int,
    slices_per_task: int,
    mp_context: str,
    bar: _Progress,
) -> dict[str, np.ndarray]:
    """The calling process plus ``workers - 1`` spawned processes over shared-memory buffers."""
    from multiprocessing import shared_memory

    offsets, tasks, total = [], [], 0
    for _, image, threshold in todo:
        offsets.append(total)
        _, h, w = image.shape
        for z0 in range(0, image.shape[0], slices_per_task):
            z = min(slices_per_task, image.shape[0] - z0)
            tasks.append((total + z0 * h * w, z, h, w, float(threshold)))
        total += image.size
    nbytes = max(4 * total, 1)
    ctx = get_context(mp_context)
    shm_in = shared_memory.SharedMemory(create=True, size=nbytes)
    shm_out = shared_memory.SharedMemory(create=True, size=nbytes)
    procs: list[Any] = []
    try:
        flat_in = np.ndarray((total,), dtype=np.float32, buffer=shm_in.buf)
        for (_, image, _), start in zip(todo, offsets):
            flat_in[start : start + image.size].reshape(image.shape)[...] = image
        counter = ctx.Value("q", 0)
        done = ctx.Array("b", len(tasks), lock=False)
        errors = ctx.SimpleQueue()
        for _ in range(workers - 1):
            proc = ctx.Process(  # type: ignore[attr-defined]
                target=_shared_worker,
                args=(shm_in.name, shm_out.name, total, tasks, counter, done, errors, method, kw),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
        slices_done = np.array([t[1] for t in tasks], dtype=np.int64)

        def progress() -> None:
            bar.set_done(int(slices_done[np.frombuffer(done, dtype=np.int8) > 0].sum()))

        flat_out = np.ndarray((total,), dtype=np.int32, buffer=shm_out.buf)
        if _MAIN_PROCESS_COMPUTES:
            _run_claimed(flat_in, flat_out, tasks, counter, done, method, kw, on_done=progress)
        for proc in procs:
            while proc.is_alive():
                proc.join(timeout=0.2)
                progress()
                if not errors.empty():
                    break
        if not errors.empty():
            exc, tb = errors.get()
            if exc is None:
                raise RuntimeError(f"superpixel worker process failed:\n{tb}")
            raise exc from RuntimeError(f"in a superpixel worker process:\n{tb}")
        missing = [i for i in range(len(tasks)) if not done[i]]
        if missing:
            codes = [p.exitcode for p in procs]
            raise RuntimeError(
                f"superpixel worker processes exited (exit codes {codes}) leaving {len(missing)} of "
                f"{len(tasks)} chunks uncomputed"
            )
        progress()
        outputs = {
            subject: flat_out[start : start + image.size].reshape(image.shape).copy()
            for (subject, image, _), start in zip(todo, offsets)
        }
        del flat_out, flat_in
        return outputs
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for shm in (shm_in, shm_out):
            try:
                shm.close()
            except BufferError:  # a view is still alive on an error path; unlink frees it at exit
                pass
            shm.unlink()


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
        workers: processes computing slices, the calling one included (it starts ``workers - 1``
            worker processes); ``0`` or ``1`` computes in this process only.
        progress: show a progress bar on stderr (tqdm).
        slices_per_task: slices claimed by a process at a time.
        mp_context: multiprocessing start method of the workers. ``spawn`` (default) is safe with
            OpenMP libraries (torch, fast-slic) already loaded in the parent.

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
    n_tasks = sum(math.ceil(image.shape[0] / slices_per_task) for _, image, _ in todo)
    method, kw = params.method, dict(params.params)
    if workers > 1 and n_tasks > 1:
        free = _shm_free_bytes()
        need = 2 * 4 * sum(image.size for _, image, _ in todo)
        if free is not None and free < need * 1.05 + (64 << 20):
            warnings.warn(
                f"/dev/shm has {free / 2**20:.0f} MiB free but {workers} superpixel processes need "
                f"{need / 2**20:.0f} MiB of shared memory; computing in this process only",
                stacklevel=2,
            )
            workers = 1
    bar = _Progress(total, progress and total > 0, "superpixels")
    try:
        if workers <= 1 or n_tasks <= 1:
            outputs = {}
            for volume, image, threshold in todo:
                seg = np.empty(image.shape, dtype=np.int32)
                for z0 in range(0, image.shape[0], slices_per_task):
                    z1 = min(z0 + slices_per_task, image.shape[0])
                    _slices_into(image[z0:z1], seg[z0:z1], threshold, method, kw)
                    bar.update(z1 - z0)
                outputs[volume.subject] = seg
        else:
            outputs = _compute_parallel(
                [(v.subject, img, thr) for v, img, thr in todo],
                method,
                kw,
                workers,
                slices_per_task,
                mp_context,
                bar,
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


def _stats(maps: Mapping[str, np.ndarray], hits: int, misses: int, seconds: float) -> SuperpixelStats:
    per_subject = {
        s: tuple(int(c) for c in m.reshape(m.shape[0], m.shape[1] * m.shape[2]).max(axis=1, initial=0))
        for s, m in maps.items()
    }
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
