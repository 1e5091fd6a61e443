"""SSL-ALPNet intensity preprocessing and in-plane resampling.

* **MR** (``intensity="raw"``): clip at the 99.5th percentile (the "off-resonance" cut; on
  volumes already clipped upstream, like the SSL-ALPNet CHAOS files, it changes little), then
  per-volume z-score ``(x - mean) / std``.
* **CT**: HU (``intensity="hu"``) are windowed to [-125, 275] and scaled to [0, 255];
  ``window255`` images (the BTCV PNGs) are already there. Then z-score with
  :class:`NormStats` fitted on the **training split** (:func:`fit_ct_stats`), never on
  the test scans. A missing ``ct_stats`` is an error, not a silent per-volume fallback.
* Slices are resized in-plane to ``size x size`` (bilinear for images, nearest for
  labels); spacing and affine are updated so written predictions keep the geometry.
  With a target in-plane ``spacing`` (mm, the recipe's ``data.spacing``) slices are instead
  resampled to that pixel size and centre-cropped or padded to ``size x size``
  (:class:`~episodes.data.geometry.InPlaneGrid`), so every scan shows the model the same
  millimetres per pixel. ``spacing=None`` (the default) is the plain resize, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import InPlaneGrid
from .volumes import Volume, VolumeError

__all__ = [
    "CT_WINDOW",
    "MR_PERCENTILE",
    "NormStats",
    "clip_percentile",
    "fit_ct_stats",
    "in_plane_grid",
    "preprocess",
    "resize_volume",
    "to_unit_range",
    "window_ct",
]

CT_WINDOW: tuple[float, float] = (-125.0, 275.0)
MR_PERCENTILE: float = 99.5


@dataclass(frozen=True)
class NormStats:
    """Global intensity mean/std (CT, fitted on the training split)."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.mean) or not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"invalid normalisation stats mean={self.mean} std={self.std}")

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def window_ct(hu: np.ndarray, window: tuple[float, float] = CT_WINDOW) -> np.ndarray:
    """Clip HU to ``window`` and scale to [0, 255] (float32)."""
    lo, hi = window
    return ((np.clip(hu, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.float32)


def clip_percentile(image: np.ndarray, percentile: float = MR_PERCENTILE) -> np.ndarray:
    """Clip values above the ``percentile``-th percentile."""
    return np.minimum(image, np.percentile(image, percentile)).astype(np.float32)


def _ct_255(volume: Volume) -> np.ndarray:
    if volume.intensity == "hu":
        return window_ct(volume.image)
    if volume.intensity == "window255":
        return volume.image.astype(np.float32)
    raise VolumeError(f"subject {volume.subject}: CT volume has intensity {volume.intensity!r}")


def fit_ct_stats(volumes: Iterable[Volume]) -> NormStats:
    """Mean/std over all voxels of the (windowed, [0, 255]) CT training volumes."""
    total, total_sq, count = 0.0, 0.0, 0
    for v in volumes:
        if v.modality != "CT":
            raise VolumeError(f"subject {v.subject}: fit_ct_stats needs CT volumes, got {v.modality}")
        x = _ct_255(v).astype(np.float64)
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.size
    if count == 0:
        raise ValueError("fit_ct_stats: no volumes given")
    mean = total / count
    return NormStats(mean=mean, std=float(np.sqrt(max(total_sq / count - mean * mean, 1e-12))))


def resize_volume(volume: Volume, size: int, *, spacing: float | None = None) -> Volume:
    """Resize every slice to ``size x size`` (bilinear image, nearest label).

    With ``spacing`` (mm): resample slices to ``spacing`` mm pixels and centre-crop/pad them to ``size``
    (padding with the image's minimum and label 0). The result no longer has the file's grid, so its
    ``source_geometry`` is dropped.
    """
    if spacing is not None:
        return _resample_volume(volume, size, spacing)
    _, h, w = volume.shape
    if (h, w) == (size, size):
        return volume
    img_t = torch.from_numpy(np.ascontiguousarray(volume.image))[:, None]
    img = F.interpolate(img_t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    lab = None
    if volume.label is not None:
        lab_t = torch.from_numpy(volume.label.astype(np.int64))[:, None].float()
        lab = F.interpolate(lab_t, size=(size, size), mode="nearest")[:, 0].numpy().astype(np.int16)
    sz, sh, sw = volume.spacing
    fh, fw = h / size, w / size
    affine = volume.affine.copy()
    affine[:3, 0] *= fh
    affine[:3, 1] *= fw
    return volume.with_arrays(img, lab, spacing=(sz, sh * fh, sw * fw), affine=affine, source_geometry=None)


def in_plane_grid(volume: Volume, size: int, spacing: float) -> InPlaneGrid:
    """The :class:`~episodes.data.geometry.InPlaneGrid` taking ``volume``'s slices to ``spacing`` mm and ``size`` px."""
    if spacing <= 0:
        raise ValueError(f"in-plane spacing must be > 0 mm, got {spacing}")
    _, sh, sw = volume.spacing
    return InPlaneGrid.plan(volume.shape[1:], (sh, sw), (spacing, spacing), size)


def _resample_volume(volume: Volume, size: int, spacing: float) -> Volume:
    grid = in_plane_grid(volume, size, spacing)
    if grid.scaled == grid.source == (size, size):
        return volume
    img = grid.apply(volume.image, fill=float(volume.image.min()))
    lab = None
    if volume.label is not None:
        lab = grid.apply(volume.label.astype(np.float32), mode="nearest").astype(np.int16)
    (h, w), (nh, nw) = grid.source, grid.scaled
    fh, fw = h / nh, w / nw
    # output index i -> scaled index i + crop - pad -> source index f (u + 0.5) - 0.5 (align_corners=False)
    shift = [(nh - size) // 2 if nh >= size else -((size - nh) // 2), (nw - size) // 2 if nw >= size else -((size - nw) // 2)]
    to_source = np.eye(4)
    to_source[0, 0], to_source[1, 1] = fh, fw
    to_source[0, 3] = fh * (shift[0] + 0.5) - 0.5
    to_source[1, 3] = fw * (shift[1] + 0.5) - 0.5
    sz, sh, sw = volume.spacing
    return volume.with_arrays(
        img, lab, spacing=(sz, sh * fh, sw * fw), affine=volume.affine @ to_source, source_geometry=None
    )


def to_unit_range(image: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (constant images become 0)."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < 1e-8:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def preprocess(
    volume: Volume,
    *,
    size: int | None = 256,
    ct_stats: NormStats | None = None,
    spacing: float | None = None,
    stats_window: tuple[slice, slice] | None = None,
) -> Volume:
    """Normalise intensities (SSL-ALPNet recipe) and resize slices to ``size`` (``None`` keeps size).

    ``spacing`` (mm): resample slices to that pixel size and centre-crop/pad to ``size`` instead of resizing.
    ``stats_window``: MR only, the in-plane ``(rows, columns)`` window the clip percentile, mean and std are
    taken from (``fewshot segment``: the model's field of view, so extra air around a larger field of view
    does not shift the intensities); ``None``: the whole volume, as SSL-ALPNet.
    """
    if volume.normalized:
        raise VolumeError(f"subject {volume.subject}: volume is already normalised")
    if volume.modality == "MR" and stats_window is not None:
        ref = volume.image[:, stats_window[0], stats_window[1]]
        top = np.percentile(ref, MR_PERCENTILE)
        x = np.minimum(volume.image, top).astype(np.float32)
        ref = np.minimum(ref, top).astype(np.float32)
        mean, std = float(ref.mean()), float(ref.std())
        if std < 1e-8:
            raise VolumeError(f"subject {volume.subject}: constant MR image, cannot z-score")
        x = (x - mean) / std
    elif volume.modality == "MR":
        x = clip_percentile(volume.image)
        mean, std = float(x.mean()), float(x.std())
        if std < 1e-8:
            raise VolumeError(f"subject {volume.subject}: constant MR image, cannot z-score")
        x = (x - mean) / std
    else:
        if ct_stats is None:
            raise ValueError(
                f"subject {volume.subject}: CT needs ct_stats fitted on the training split "
                "(episodes.data.preprocess.fit_ct_stats(train_volumes))"
            )
        x = (_ct_255(volume) - ct_stats.mean) / ct_stats.std
    out = volume.with_arrays(x.astype(np.float32), volume.label, normalized=True)
    if size is None:
        if spacing is not None:
            raise ValueError("preprocess: a target spacing needs a size to crop/pad to")
        return out
    return resize_volume(out, size, spacing=spacing)


def unit_slices(
    volumes: Iterable[Volume], size: int | None = None, *, exclude_organs: Sequence[str] = ()
) -> np.ndarray:
    """Every non-constant slice of raw ``volumes``, min-max scaled to [0, 1]: ``(N, size, size)`` float32.

    CT in HU is windowed first. This is the unlabeled input of Models Genesis pretraining. ``exclude_organs``
    (setting 2) drops every slice that holds any of these organs, as the episodes drop them
    (:meth:`Volume.slices_with_any`), so the held-out organs reach no part of training; it needs labels.
    """
    slices = []
    for v in volumes:
        if v.normalized:
            raise VolumeError(f"subject {v.subject}: unit_slices needs raw volumes")
        if exclude_organs and v.label is None:
            raise VolumeError(
                f"subject {v.subject}: excluding the slices of {', '.join(exclude_organs)} needs labels, "
                "but the volume has none"
            )
        excluded = v.slices_with_any(exclude_organs)
        img = window_ct(v.image) if v.intensity == "hu" else v.image
        slices += [
            to_unit_range(img[z]) for z in range(v.shape[0]) if not excluded[z] and img[z].max() > img[z].min()
        ]
    if not slices:
        what = f" outside the slices of {', '.join(exclude_organs)}" if exclude_organs else ""
        raise VolumeError(f"no non-empty slices{what} in the given volumes")
    images = np.stack(slices)
    if size is not None and images.shape[-2:] != (size, size):
        t = F.interpolate(
            torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear", align_corners=False
        )
        images = t[:, 0].clamp(0, 1).numpy()
    return images.astype(np.float32)
