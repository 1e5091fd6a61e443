"""Superpixel pseudo-labels (SSL-ALPNet recipe) for self-supervised episodes.

Per 2D axial slice (``(H, W)``):

1. **Body mask** (:func:`body_mask`): ``slice > threshold`` → largest connected component →
   fill holes. The threshold is in the units of the array you pass. SSL-ALPNet uses
   ``1e-4`` for CT already windowed to [0, 255] and ``1e-4 + 50`` for raw (clipped) MR intensities;
   :func:`default_body_threshold` returns these for a :class:`~episodes.data.volumes.Volume`.
2. **Superpixels** (:func:`compute_superpixels`) with one of
   :data:`~episodes.pseudolabels.params.METHODS`:

   * ``felzenszwalb`` (scikit-image). SSL-ALPNet calls ``felzenszwalb(slice, min_size=400, sigma=1)``
     with skimage's default ``scale=1`` on CT in [0, 255]. skimage divides ``scale`` by 255 and assumes
     [0, 1] data, so the *intensity range matters*: by default (``scaling="minmax"``) we min-max scale
     every slice to **[0, 255]** before calling it, which reproduces SSL-ALPNet on CT slices spanning
     [0, 255] and makes MR (raw units 0..~1000 in CHAOS) behave the same way (≈ 40 regions per 256²
     slice instead of depending on the scanner range). ``scaling="none"`` runs it on the slice as it is
     (float64), as SSL-ALPNet does on every data set. The difference is small: skimage merges neighbours
     whose edge weight is below ``scale / 255 / |C|``, tiny next to the edge weights of either range, so
     mostly ``min_size`` shapes the regions; on CHAOS MR subject 1 (0..855) 9 of 37 slices change, with
     21.9 regions per slice unscaled against 21.8 scaled. Slices spanning exactly [0, 255] give identical
     maps (the BTCV CT PNGs are scaled per slice to 0..255, before any resizing).
   * ``slic`` (scikit-image, ``channel_axis=None``) on the [0, 1] min-max scaled slice.
   * ``fast-slic`` (optional ``fast_slic`` package, imported lazily) on the slice as uint8 ``H×W×3``.
     The AVX2 build (``fast_slic.avx2.SlicAvx2``, identical output, ~1.7x faster) is used when both
     the package and the CPU support it.
   * ``slic3d``: **3D supervoxels** (ADNet/Q-Net use 3D felzenszwalb; scikit-image has 3D SLIC, not
     3D felzenszwalb): scikit-image SLIC on the whole ``(Z, H, W)`` volume, min-max scaled to [0, 1],
     with the voxel spacing in mm and the stacked per-slice body masks as its mask;
     ``n_segments = ceil(body voxels / segment_voxels)``. One id is one region across slices, so an
     episode may take its support and query from different slices of it
     (:class:`~episodes.sampling.EpisodeConfig` ``query_distance``). Only whole volumes can be
     segmented (:func:`superpixels_into`), not single slices.

3. Superpixels outside the body are dropped (set to 0) and the rest relabelled ``1..N`` in order of
   first appearance in raster order (per slice; per volume for ``slic3d``). Output: ``(H, W)`` int32,
   ``0`` = outside the body.

Whole volumes and data sets, cached and in parallel: :mod:`episodes.pseudolabels.dataset`.
Superpixels are computed on the **raw** (not z-scored) image, as in SSL-ALPNet; CT in HU is first
windowed to [-125, 275] → [0, 255] (:func:`superpixel_input`). MR is used in its stored units: the
99.5th-percentile clip of the preprocessing (:func:`episodes.data.preprocess.clip_percentile`) is *not*
applied here. SSL-ALPNet does not apply it at this step either, it reads its preprocessed files, which are
already clipped; so are the SSL-ALPNet-preprocessed CHAOS files this library loads (their provenance
notes: "the brightest 0.5 % of the intensity histogram was clipped" upstream).

Body mask compared with SSL-ALPNet (``fg_mask2d`` in ``data/pseudolabel_gen.ipynb``): same thresholds
(``> 1e-4`` on SABS CT in [0, 255], ``> 1e-4 + 50`` on CHAOS MR), largest connected component, then
``binary_fill_holes`` (4-connected in both). One difference: SSL-ALPNet takes the largest component of
``skimage.measure.label``, which connects diagonal neighbours (8-connectivity); ours is 4-connected
(scipy's default) unless :attr:`~episodes.pseudolabels.params.SuperpixelParams.body_connectivity` is 8.
The reference's masks are then larger where the largest region is joined to others through corners: on 4
CHAOS MR subjects (136 slices with a body) on 109 slices, by up to 903 pixels (21 % of that slice's mask);
with 8 the two recipes give the same masks.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..data.volumes import Volume, VolumeError
from .params import (
    DEFAULT_PARAMS,
    VOLUMETRIC_METHODS,
    check_body_connectivity,
    check_method,
    check_params,
    check_scaling,
)

__all__ = [
    "BODY_THRESHOLD_CT255",
    "BODY_THRESHOLD_MR_RAW",
    "FAST_SLIC_INSTALL",
    "body_mask",
    "compute_superpixels",
    "default_body_threshold",
    "superpixel_input",
    "superpixels_into",
]

FAST_SLIC_INSTALL = (
    'pip install numpy cython "setuptools>=70.1" wheel && pip install --no-build-isolation fast-slic==0.4.0'
)

#: SSL-ALPNet ``fg_thresh``: CT in [0, 255] → 1e-4; MR raw intensities → 1e-4 + 50.
BODY_THRESHOLD_CT255 = 1e-4
BODY_THRESHOLD_MR_RAW = 1e-4 + 50.0


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


def _label4(binary: np.ndarray, connectivity: int = 4) -> tuple[np.ndarray, int]:
    """4-connected (or, with ``connectivity=8``, 8-connected) components of a bool ``(H, W)`` array:
    ``(labels, n)``, ``0`` = background.

    Same partition as ``scipy.ndimage.label`` (its default structure is 4-connected; a 3x3 block of ones for
    8); the numbering of the components may differ (OpenCV is used when available, ~2x faster).
    """
    cv2 = _cv2()
    if cv2 is None:
        from scipy import ndimage

        labels, n = ndimage.label(binary, structure=_structure(connectivity))
        return labels, int(n)
    n, labels = cv2.connectedComponents(binary.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    return labels, int(n) - 1


def _structure(connectivity: int) -> np.ndarray | None:
    """``scipy.ndimage.label`` structure for 4 (its default, ``None``) or 8 connectivity."""
    return None if connectivity == 4 else np.ones((3, 3), dtype=bool)


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


def _body_mask(image: np.ndarray, threshold: float, connectivity: int = 4) -> np.ndarray:
    above = image > threshold
    if not above.any():
        return np.zeros(image.shape, dtype=bool)
    components, n = _label4(above, connectivity)
    if n > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        largest = int(np.argmax(sizes))
        if int((sizes == sizes[largest]).sum()) > 1:
            # tie: scipy numbers components in raster order of their first pixel; keep its choice
            from scipy import ndimage

            components, _ = ndimage.label(above, structure=_structure(connectivity))
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            largest = int(np.argmax(sizes))
        above = components == largest
    return _fill_holes(above)


def body_mask(slice_2d: np.ndarray, threshold: float, connectivity: int = 4) -> np.ndarray:
    """Body mask of one slice: ``slice > threshold`` → largest connected component → fill holes.

    Args:
        slice_2d: ``(H, W)`` intensities (in the units ``threshold`` refers to).
        threshold: intensity above which a pixel may belong to the body.
        connectivity: of the largest component, 4 (default) or 8 (SSL-ALPNet's ``skimage.measure.label``);
            hole filling is 4-connected in both cases (``scipy.ndimage.binary_fill_holes``).

    Returns:
        ``(H, W)`` bool mask; all ``False`` when no pixel exceeds ``threshold`` (an empty slice).
    """
    check_body_connectivity(connectivity)
    return _body_mask(_check_slice(slice_2d), threshold, connectivity)


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
            "pass the volume before episodes.data.preprocess.preprocess()"
        )
    if volume.modality == "CT" and volume.intensity == "hu":
        from ..data.preprocess import window_ct

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


def _felzenszwalb(image: np.ndarray, params: dict[str, Any], scaling: str = "minmax") -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    data = _scaled(image, 255.0) if scaling == "minmax" else image.astype(np.float64)
    return np.asarray(felzenszwalb(data, **params))


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


def _slic3d(volume: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], params: dict[str, Any]) -> np.ndarray:
    """3D SLIC supervoxels of a ``(Z, H, W)`` float32 volume inside ``mask`` (labels 0 outside)."""
    params = dict(params)
    size = params.pop("segment_voxels")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"slic3d segment_voxels must be an integer >= 1, got {size!r}")
    n_segments = max(1, -(-int(mask.sum()) // size))
    return _slic(volume, {**params, "n_segments": n_segments, "mask": mask, "spacing": np.asarray(spacing, dtype=float)})


_BACKENDS = {"felzenszwalb": _felzenszwalb, "slic": _slic, "fast-slic": _fast_slic}


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
    scaling: str = "minmax",
    **params: Any,
) -> np.ndarray:
    """Superpixels of one slice, restricted to the body.

    Args:
        slice_2d: ``(H, W)`` raw intensities (any range; each method rescales, see module docs).
        method: one of :data:`~episodes.pseudolabels.params.METHODS`.
        body_mask: ``(H, W)`` bool; superpixels outside it are dropped. ``None`` keeps every pixel.
        scaling: ``"minmax"`` (rescale the slice to the method's range) or ``"none"`` (felzenszwalb on the
            slice as it is); :attr:`~episodes.pseudolabels.params.SuperpixelParams.scaling`.
        **params: method parameters, overriding :data:`~episodes.pseudolabels.params.DEFAULT_PARAMS`
            (e.g. ``min_size=100``); unknown names raise ``ValueError``.

    Returns:
        ``(H, W)`` int32: ``0`` outside the body, superpixels ``1..N``.
    """
    image = _check_slice(slice_2d)
    key = check_method(method)
    if key in VOLUMETRIC_METHODS:
        raise ValueError(
            f"{key} segments whole volumes into supervoxels, not single slices: use "
            "episodes.pseudolabels.compute_volume_superpixels or compute_dataset_superpixels_with_stats"
        )
    check_params(key, params)
    check_scaling(key, scaling)
    mask = np.ones(image.shape, dtype=bool) if body_mask is None else np.asarray(body_mask, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"body_mask shape {mask.shape} does not match slice shape {image.shape}")
    return _segment(image, mask, key, {**DEFAULT_PARAMS[key], **params}, scaling)


def _segment(
    image: np.ndarray, mask: np.ndarray, key: str, params: dict[str, Any], scaling: str = "minmax"
) -> np.ndarray:
    """Checked ``(H, W)`` float32 slice and bool mask → ``(H, W)`` int32 relabelled superpixels."""
    if not mask.any():
        return np.zeros(image.shape, dtype=np.int32)
    if key == "felzenszwalb":
        segments = _felzenszwalb(image, params, scaling)
    else:
        segments = _BACKENDS[key](image, params)
    if segments.shape != image.shape:
        raise RuntimeError(f"{key} returned shape {segments.shape} for a slice of shape {image.shape}")
    return _relabel_inside(segments, mask)


def superpixels_into(
    images: np.ndarray,
    out: np.ndarray,
    threshold: float,
    method: str,
    params: dict[str, Any],
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    scaling: str = "minmax",
    body_connectivity: int = 4,
) -> None:
    """Fill ``out`` ``(Z, H, W)`` int32 with the superpixels of ``images`` ``(Z, H, W)`` float32.

    A volumetric method (``slic3d``) treats ``images`` as one volume with voxel size ``spacing``
    (mm, ``(z, h, w)``) and numbers its supervoxels ``1..N`` over the whole volume. ``scaling``: as
    :func:`compute_superpixels`; ``body_connectivity``: as :func:`body_mask`'s ``connectivity``.
    """
    key = check_method(method)
    check_scaling(key, scaling)
    check_body_connectivity(body_connectivity)
    merged = {**DEFAULT_PARAMS[key], **params}
    if key in VOLUMETRIC_METHODS:
        mask = (
            np.stack([_body_mask(image, threshold, body_connectivity) for image in images])
            if len(images)
            else images > 0
        )
        out[...] = 0
        if mask.any():
            segments = _slic3d(images, mask, spacing, merged)
            out[...] = _relabel_inside(segments, mask)
        return
    for z in range(images.shape[0]):
        image = images[z]
        out[z] = _segment(image, _body_mask(image, threshold, body_connectivity), key, merged, scaling)
