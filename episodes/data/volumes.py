"""The :class:`Volume` type, NIfTI reading/writing and the helpers shared by the loaders.

Orientation convention
----------------------
Every array in this library is stored **slice first**: ``(Z, H, W)`` where ``Z`` is the
axial slice index and ``(H, W)`` are the in-plane axes. For NIfTI files this is
``np.transpose(nibabel_array, (2, 0, 1))``: ``H`` is nibabel axis 0, ``W`` axis 1, ``Z``
axis 2, and ``Volume.affine`` is the file's own voxel-to-world matrix for the
nibabel ``(H, W, Z)`` index order, so predictions written back with
:func:`save_nifti` overlay the source scan in 3D Slicer / ITK-SNAP. We never flip or
reorient: label meanings (``liver``, ``left_kidney``) come from the label map, not
from the direction cosines (the SSL-ALPNet CHAOS NIfTI files were converted with dcm2nii, whose
direction cosines are unreliable).

The loaders live in :mod:`episodes.data.loaders` (NIfTI/PNG folders) and
:mod:`episodes.data.dicom` (DICOM series).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from ..atomic import atomic_writer
from .labels import LabelMap, canonical_organ

__all__ = [
    "Intensity",
    "Modality",
    "Volume",
    "VolumeError",
    "check_label_values",
    "load_nifti_pair",
    "read_nifti",
    "save_nifti",
]

Modality = Literal["CT", "MR"]
#: ``hu``: CT in Hounsfield units; ``window255``: CT already windowed to [-125, 275] HU
#: and scaled to [0, 255] (the SSL-ALPNet BTCV PNGs); ``raw``: MR scanner units.
Intensity = Literal["hu", "window255", "raw"]


class VolumeError(ValueError):
    """A scan or label file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class Volume:
    """One 3D scan with its (optional) label volume.

    Attributes:
        image: ``(Z, H, W)`` float32 intensities.
        label: ``(Z, H, W)`` int16 label values, or ``None`` for unlabelled scans.
        spacing: voxel size in mm, in array order ``(z, h, w)``.
        subject: subject id (unique within a dataset).
        modality: ``"CT"`` or ``"MR"``.
        label_map: organ names → label values for ``label``.
        intensity: what ``image`` values mean (see :data:`Intensity`).
        normalized: ``True`` once :func:`episodes.data.preprocess.preprocess` has run.
        affine: 4x4 voxel-to-world matrix for the nibabel ``(H, W, Z)`` index order.
        source: where the image was read from (for messages and provenance).
    """

    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    subject: str
    modality: Modality
    label_map: LabelMap
    intensity: Intensity = "raw"
    normalized: bool = False
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    source: str | None = None

    def __post_init__(self) -> None:
        where = self.source or f"subject {self.subject}"
        image = np.asarray(self.image)
        if image.ndim != 3:
            raise VolumeError(f"{where}: image must be 3D (Z, H, W), got shape {image.shape}")
        if not np.issubdtype(image.dtype, np.number):
            raise VolumeError(f"{where}: image dtype {image.dtype} is not numeric")
        image = image.astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise VolumeError(f"{where}: image contains {bad} NaN/inf voxels")
        object.__setattr__(self, "image", image)
        if self.label is not None:
            label = np.asarray(self.label)
            if label.shape != image.shape:
                raise VolumeError(
                    f"{where}: label shape {label.shape} does not match image shape {image.shape}"
                )
            object.__setattr__(self, "label", check_label_values(label, where))
        if self.modality not in ("CT", "MR"):
            raise VolumeError(f"{where}: modality must be 'CT' or 'MR', got {self.modality!r}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise VolumeError(f"{where}: spacing must be 3 positive numbers, got {self.spacing}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise VolumeError(f"{where}: affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        z, h, w = self.image.shape
        return (z, h, w)

    def _require_label(self) -> np.ndarray:
        if self.label is None:
            raise VolumeError(f"subject {self.subject}: volume has no label")
        return self.label

    def organ_mask(self, organ: str) -> np.ndarray:
        """``(Z, H, W)`` bool mask of ``organ``; raises if the organ is unknown or absent."""
        value = self.label_map.value(organ)
        mask = self._require_label() == value
        if not mask.any():
            raise VolumeError(
                f"subject {self.subject}: organ {canonical_organ(organ)!r} (label {value}) is absent"
            )
        return mask

    def has_organ(self, organ: str) -> bool:
        return bool((self._require_label() == self.label_map.value(organ)).any())

    def slices_with(self, organ: str) -> np.ndarray:
        """Sorted slice indices that contain at least one voxel of ``organ`` (may be empty)."""
        value = self.label_map.value(organ)
        present = (self._require_label() == value).any(axis=(1, 2))
        return np.flatnonzero(present)

    def with_arrays(self, image: np.ndarray, label: np.ndarray | None, **changes: object) -> Volume:
        """A copy with new arrays (and other fields in ``changes``)."""
        return replace(self, image=image, label=label, **changes)  # type: ignore[arg-type]


def check_label_values(label: np.ndarray, where: str) -> np.ndarray:
    """``label`` as int16 after checking it holds finite integer values; errors start with ``where``.

    Float labels are accepted when every value is within 1e-3 of an integer (resampling noise).
    """
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.number):
        raise VolumeError(f"{where}: label dtype {label.dtype} is not numeric")
    if not np.isfinite(label).all():
        raise VolumeError(f"{where}: label contains NaN/inf values")
    if np.issubdtype(label.dtype, np.floating):
        rounded = np.rint(label)
        if np.abs(rounded - label).max(initial=0.0) > 1e-3:
            raise VolumeError(f"{where}: label has non-integer values")
        label = rounded
    return label.astype(np.int16)


# --------------------------------------------------------------------------------------
# NIfTI


def _nib():  # type: ignore[no-untyped-def]
    import nibabel as nib

    return nib


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI as ``(Z, H, W)`` with its affine and ``(z, h, w)`` spacing."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: file not found")
    nib = _nib()
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise VolumeError(f"{path}: corrupt or truncated file ({exc})") from exc
    except Exception as exc:  # nibabel raises its own ImageFileError and friends
        raise VolumeError(f"{path}: not a readable NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[0], zooms[1])
    return np.transpose(data, (2, 0, 1)), np.asarray(img.affine, dtype=np.float64), spacing


def load_nifti_pair(
    image_path: str | Path,
    label_path: str | Path | None,
    *,
    subject: str,
    modality: Modality,
    label_map: LabelMap,
    intensity: Intensity = "raw",
) -> Volume:
    """Load a NIfTI image and (optionally) its label; shapes and affines must agree.

    Errors about the label's values (NaN, non-integer) name ``label_path``, not the image.
    """
    image, affine, spacing = read_nifti(Path(image_path))
    label = None
    if label_path is not None:
        label, label_affine, _ = read_nifti(Path(label_path))
        if label.shape != image.shape:
            shapes = [tuple(_nib().load(str(p)).shape) for p in (label_path, image_path)]  # as stored in the files
            raise VolumeError(
                f"{label_path}: label shape {shapes[0]} (as stored in the file) does not "
                f"match image {image_path} shape {shapes[1]}"
            )
        if not np.allclose(label_affine, affine, atol=1e-3):
            raise VolumeError(f"{label_path}: affine differs from image {image_path}")
        label = check_label_values(label, str(label_path))
    return Volume(
        image=image,
        label=label,
        spacing=spacing,
        subject=subject,
        modality=modality,
        label_map=label_map,
        intensity=intensity,
        affine=affine,
        source=str(image_path),
    )


def numeric_key(subject: str) -> tuple[int, str]:
    """Sort key: numeric ids in numeric order (``"2"`` before ``"10"``), then the others by name."""
    return (int(subject), subject) if subject.isdigit() else (1 << 30, subject)


def check_dir(root: str | Path) -> Path:
    """``Path(root)``; a ``VolumeError`` when it is not an existing folder."""
    root = Path(root)
    if not root.is_dir():
        raise VolumeError(f"{root}: folder not found")
    return root


def read_png(path: Path) -> np.ndarray:
    """One PNG as a 2D array (greyscale; 16-bit and integer modes kept); errors name the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
    except (OSError, UnidentifiedImageError) as exc:
        raise VolumeError(f"{path}: corrupt or unreadable PNG ({exc})") from exc


def save_nifti(array_zhw: np.ndarray, like: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a ``(Z, H, W)`` array with ``like``'s geometry (affine) as NIfTI, atomically.

    ``.nii.gz`` is gzip-compressed at level 1 with mtime 0, as ``nibabel.save`` writes it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if array_zhw.shape != like.shape:
        raise VolumeError(f"array shape {array_zhw.shape} differs from reference volume {like.shape}")
    nib = _nib()
    img = nib.Nifti1Image(np.transpose(array_zhw, (1, 2, 0)), like.affine)
    img.header.set_zooms((like.spacing[1], like.spacing[2], like.spacing[0]))
    with atomic_writer(path, "wb") as fh:
        if path.name.endswith(".gz"):
            name = path.name.removesuffix(".gz")
            with gzip.GzipFile(filename=name, mode="wb", compresslevel=1, fileobj=fh, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)
    return path
