"""Scan geometry: one canonical orientation, in-plane resampling to a target spacing, and the way back.

Canonical orientation
---------------------
Every scan read from a file is brought to :data:`CANONICAL_AXCODES` = ``("L", "A", "S")`` in nibabel's
``(i, j, k)`` index order: ``i`` runs from the patient's right to left, ``j`` from posterior to
anterior and ``k`` from inferior to superior, so the library's ``(Z, H, W)`` arrays are axial slices
with ``H`` right→left and ``W`` posterior→anterior. Only axes are permuted and flipped (nothing is
interpolated; oblique scans keep their rotation in the affine), as ``nibabel.as_closest_canonical``
does, but towards this target rather than RAS+.

The target is the orientation the SSL-ALPNet-preprocessed sets are already stored in, so reading them
changes nothing: CHAOS T2-SPIR files say ``LAS`` and the anatomy agrees (the right kidney at low ``i``,
the kidneys posterior of the liver at low ``j``). The BTCV labels' affine says ``LPS``, but their anatomy
is laid out like CHAOS (the kidneys and aorta are at lower ``j`` than the liver): SSL-ALPNet's
resampling kept a direction matrix that no longer matches the array, so the ``btcv-ct`` loader keeps
its arrays as stored and does not reorient them.

:class:`SourceGeometry` records how a scan was stored, so a prediction made on the canonical array is
written back in the source file's own orientation, affine and grid (:func:`from_canonical`).

In-plane spacing
----------------
:class:`InPlaneGrid` resamples slices to a pixel size (bilinear for images) and centre-crops or pads
them to ``size x size``; :meth:`InPlaneGrid.invert` maps a mask back to the source slices (nearest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .volumes import VolumeError

__all__ = [
    "CANONICAL_AXCODES",
    "InPlaneGrid",
    "SourceGeometry",
    "axcodes",
    "check_affine",
    "from_canonical",
    "to_canonical",
]

#: The library's orientation, nibabel ``(i, j, k)`` order (the SSL-ALPNet CHAOS files' own).
CANONICAL_AXCODES: tuple[str, str, str] = ("L", "A", "S")

#: Largest |cos| between two affine axes still taken for perpendicular (about 0.6 degrees off 90).
SHEAR_TOLERANCE = 1e-2


def axcodes(affine: np.ndarray) -> tuple[str, str, str]:
    """nibabel orientation codes of ``affine``, e.g. ``("L", "A", "S")``."""
    from nibabel.orientations import aff2axcodes

    codes = aff2axcodes(affine)
    return (str(codes[0]), str(codes[1]), str(codes[2]))


def check_affine(affine: np.ndarray, where: str) -> None:
    """Raise a :class:`VolumeError` naming ``where`` when ``affine`` gives no usable orientation.

    Refused: non-finite values, an axis of zero length (an affine of zeros) and sheared axes (not
    perpendicular). Rotated (oblique) affines are fine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise VolumeError(f"{where}: the affine is not a finite 4x4 matrix, so the scan's orientation cannot be read")
    rzs = affine[:3, :3]
    lengths = np.linalg.norm(rzs, axis=0)
    if (lengths < 1e-6).any():
        raise VolumeError(
            f"{where}: the affine has a zero-length axis (voxel sizes {np.round(lengths, 4).tolist()}), so the "
            "scan's orientation cannot be read; rewrite the file with its real affine (e.g. convert the DICOMs "
            "again with dcm2niix)"
        )
    unit = rzs / lengths
    cos = unit.T @ unit - np.eye(3)
    if np.abs(cos).max() > SHEAR_TOLERANCE:
        raise VolumeError(
            f"{where}: the affine is sheared (its axes are not perpendicular: largest |cos| "
            f"{np.abs(cos).max():.3f}), so the scan cannot be reoriented without resampling; resample it onto "
            "a regular grid first (e.g. with 3D Slicer or SimpleITK)"
        )


@dataclass(frozen=True, eq=False)
class SourceGeometry:
    """How a scan was stored in its file, to write predictions back the same way.

    Attributes:
        affine: the file's voxel-to-world matrix (nibabel order of the stored array).
        shape: the stored array's shape, nibabel order.
        zooms: the stored voxel sizes, nibabel order.
        transform: nibabel ``ornt`` array taking the stored array to the canonical one.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    zooms: tuple[float, float, float]
    transform: np.ndarray

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return axcodes(self.affine)

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.transform, _IDENTITY))


_IDENTITY = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)


def to_canonical(
    data: np.ndarray, affine: np.ndarray, zooms: tuple[float, float, float], where: str
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], SourceGeometry]:
    """``data`` (nibabel order) in :data:`CANONICAL_AXCODES`: ``(array, affine, zooms, source geometry)``.

    A scan already in the canonical orientation comes back unchanged (the same array object and affine).
    """
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    check_affine(affine, where)
    affine = np.asarray(affine, dtype=np.float64)
    shape = (int(data.shape[0]), int(data.shape[1]), int(data.shape[2]))
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(CANONICAL_AXCODES))
    source = SourceGeometry(affine=affine, shape=shape, zooms=tuple(zooms), transform=transform)  # type: ignore[arg-type]
    if source.is_identity:
        return data, affine, zooms, source
    out = np.ascontiguousarray(apply_orientation(data, transform))
    new_affine = affine @ inv_ornt_aff(transform, shape)
    new_zooms = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        new_zooms[int(target)] = float(zooms[axis])
    return out, new_affine, (new_zooms[0], new_zooms[1], new_zooms[2]), source


def from_canonical(data: np.ndarray, source: SourceGeometry) -> np.ndarray:
    """A canonical-order array (nibabel order) back in the stored orientation of ``source``."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    if source.is_identity:
        return data
    back = ornt_transform(axcodes2ornt(CANONICAL_AXCODES), io_orientation(source.affine))
    out = np.ascontiguousarray(apply_orientation(data, back))
    if out.shape != source.shape:
        raise VolumeError(f"array shape {out.shape} after reorienting differs from the source scan {source.shape}")
    return out


# --------------------------------------------------------------------------------------
# In-plane spacing


@dataclass(frozen=True)
class InPlaneGrid:
    """Slices ``source`` px at ``spacing`` mm → resampled to ``pixel`` mm (``scaled`` px) → centre crop/pad to ``size``.

    Build with :meth:`plan`. When ``scaled == (size, size)`` this is exactly the plain resize to ``size``
    (``F.interpolate``, bilinear, ``align_corners=False``) the library applied before spacing existed.
    """

    source: tuple[int, int]
    scaled: tuple[int, int]
    size: int

    @classmethod
    def plan(
        cls, shape_hw: tuple[int, int], spacing_hw: tuple[float, float], pixel_hw: tuple[float, float], size: int
    ) -> InPlaneGrid:
        scaled = tuple(max(1, round(n * s / p)) for n, s, p in zip(shape_hw, spacing_hw, pixel_hw))
        return cls(source=(int(shape_hw[0]), int(shape_hw[1])), scaled=(scaled[0], scaled[1]), size=int(size))

    def _offsets(self) -> list[tuple[int, int]]:
        """Per axis: (first row taken from the scaled slice, first row written in the output)."""
        out = []
        for n in self.scaled:
            if n >= self.size:
                out.append(((n - self.size) // 2, 0))
            else:
                out.append((0, (self.size - n) // 2))
        return out

    def apply(self, volume: np.ndarray, *, mode: str = "bilinear", fill: float = 0.0) -> np.ndarray:
        """``(Z, H, W)`` → ``(Z, size, size)``; ``mode="nearest"`` for labels, ``fill`` for padded pixels."""
        if volume.shape[1:] != self.source:
            raise VolumeError(f"slices {volume.shape[1:]} differ from the planned grid {self.source}")
        t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
        if self.scaled != self.source:
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            t = F.interpolate(t, size=self.scaled, mode=mode, **kwargs)
        x = t[:, 0].numpy()
        if self.scaled == (self.size, self.size):
            return x
        out = np.full((x.shape[0], self.size, self.size), fill, dtype=np.float32)
        (ch, ph), (cw, pw) = self._offsets()
        nh, nw = min(self.scaled[0], self.size), min(self.scaled[1], self.size)
        out[:, ph : ph + nh, pw : pw + nw] = x[:, ch : ch + nh, cw : cw + nw]
        return out

    def invert(self, mask: np.ndarray) -> np.ndarray:
        """A ``(Z, size, size)`` bool mask back on the source slices (nearest neighbour; cropped-off parts are 0)."""
        if mask.shape[1:] != (self.size, self.size):
            raise VolumeError(f"mask slices {mask.shape[1:]} differ from the grid size {self.size}")
        scaled = np.zeros((mask.shape[0], *self.scaled), dtype=np.float32)
        (ch, ph), (cw, pw) = self._offsets()
        nh, nw = min(self.scaled[0], self.size), min(self.scaled[1], self.size)
        scaled[:, ch : ch + nh, cw : cw + nw] = mask[:, ph : ph + nh, pw : pw + nw]
        if self.scaled == self.source:
            return scaled > 0.5
        t = F.interpolate(torch.from_numpy(scaled)[:, None], size=self.source, mode="nearest")
        return t[:, 0].numpy() > 0.5
