"""The :class:`Volume` type, NIfTI reading/writing and the helpers shared by the loaders.

Orientation convention
----------------------
Every array in this library is stored **slice first**: ``(Z, H, W)`` where ``Z`` is the
axial slice index and ``(H, W)`` are the in-plane axes. For NIfTI files this is
``np.transpose(nibabel_array, (2, 0, 1))`` of the scan brought to the library's canonical
orientation (:data:`episodes.data.geometry.CANONICAL_AXCODES`, ``LAS``: ``H`` runs from the
patient's right to left, ``W`` from posterior to anterior, ``Z`` upwards), by permuting and
flipping axes only. ``Volume.affine`` is the voxel-to-world matrix of that canonical array
(nibabel ``(H, W, Z)`` index order) and ``Volume.source_geometry`` records how the file stored
it, so predictions written with :func:`save_nifti` come back in the file's own orientation,
affine and grid and overlay the source scan in 3D Slicer / ITK-SNAP. The SSL-ALPNet CHAOS files
are already ``LAS`` (reading them changes nothing); the BTCV PNG set is kept as stored (see
:mod:`episodes.data.geometry`). Label meanings (``liver``, ``left_kidney``) come from the label
map, never from the direction cosines.

The loaders live in :mod:`episodes.data.loaders` (NIfTI/PNG folders) and
:mod:`episodes.data.dicom` (DICOM series).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ..atomic import atomic_writer
from .labels import LabelMap, canonical_organ

if TYPE_CHECKING:
    from .geometry import SourceGeometry

__all__ = [
    "Intensity",
    "Modality",
    "Volume",
    "VolumeError",
    "check_label_values",
    "load_nifti_pair",
    "read_mask_like",
    "read_nifti",
    "read_nifti_canonical",
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
        source_geometry: how the file stored the scan (orientation, affine, grid), for writing
            predictions back the same way; ``None`` for volumes not read from a file or resized since.
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
    source_geometry: SourceGeometry | None = None

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
        return np.flatnonzero(self.slices_with_any([organ]))

    def slices_with_any(self, organs: Sequence[str]) -> np.ndarray:
        """``(Z,)`` bool: the slices holding at least one voxel of any of ``organs`` (setting 2 drops them from
        all training, SSL-ALPNet's rule); all ``False`` for no organs. Raises if the volume has no label."""
        if not organs:
            return np.zeros(self.shape[0], dtype=bool)
        values = [self.label_map.value(o) for o in organs]
        return np.asarray(np.isin(self._require_label(), values).any(axis=(1, 2)), dtype=bool)

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


def _load_nifti(path: Path):  # type: ignore[no-untyped-def]
    """``(nibabel image, data)`` of a 3D NIfTI (a trailing axis of length 1 is dropped); errors name ``path``."""
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
    if data.ndim == 4:
        raise VolumeError(
            f"{path}: a 4D scan (shape {data.shape}: {data.shape[3]} volumes); give one 3D volume, e.g. "
            "one time point or echo split out with fslsplit or nibabel"
        )
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return img, data


def read_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a 3D NIfTI **as stored** as ``(Z, H, W)`` with its affine and ``(z, h, w)`` spacing.

    Nothing is reoriented (the ``btcv-ct`` loader reads its labels this way); scans are read with
    :func:`read_nifti_canonical`.
    """
    img, data = _load_nifti(Path(path))
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = (zooms[2], zooms[0], zooms[1])
    return np.transpose(data, (2, 0, 1)), np.asarray(img.affine, dtype=np.float64), spacing


def read_nifti_canonical(
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], SourceGeometry]:
    """Read a 3D NIfTI in the canonical orientation: ``(Z, H, W)`` array, its affine, ``(z, h, w)`` spacing, and
    the :class:`~episodes.data.geometry.SourceGeometry` to write results back as the file stores them.

    A file whose orientation cannot be read (qform and sform codes both 0, an affine of zeros, a shear)
    raises a :class:`VolumeError` naming it.
    """
    from .geometry import to_canonical

    path = Path(path)
    img, data = _load_nifti(path)
    header = img.header
    if "qform_code" in header and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise VolumeError(
            f"{path}: no usable affine (qform_code and sform_code are both 0), so the scan's orientation is "
            "unknown; convert the DICOMs again with dcm2niix, or set the affine from the scanner's geometry"
        )
    z = header.get_zooms()
    zooms_xyz = (float(z[0]), float(z[1]), float(z[2]))
    data, affine, zooms, source = to_canonical(data, np.asarray(img.affine, dtype=np.float64), zooms_xyz, str(path))
    spacing = (zooms[2], zooms[0], zooms[1])
    return np.transpose(data, (2, 0, 1)), affine, spacing, source


def read_mask_like(image: Volume, label_path: str | Path) -> np.ndarray:
    """The NIfTI label/mask ``label_path`` as a ``(Z, H, W)`` int16 array on ``image``'s canonical grid.

    The mask may be stored in another axis order than the image (both are reoriented), but it must cover
    the same voxels: the same canonical shape and affine (within 1e-3). A mask without a usable affine
    (qform/sform codes 0) is taken on the image's stored grid when its stored shape is the image's.
    """
    from .geometry import axcodes, to_canonical

    label_path = Path(label_path)
    img, data = _load_nifti(label_path)
    header = img.header
    source: SourceGeometry | None = image.source_geometry
    no_affine = "qform_code" in header and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0
    zooms: tuple[float, float, float]
    if no_affine and source is not None and data.shape == source.shape:
        affine, zooms = source.affine, source.zooms
    else:
        affine = np.asarray(img.affine, dtype=np.float64)
        z = header.get_zooms()
        zooms = (float(z[0]), float(z[1]), float(z[2]))
    where = f"{label_path}: label/mask grid differs from its image {image.source or image.subject}"
    stored_shape = tuple(int(n) for n in data.shape)
    try:
        data, label_affine, _, _ = to_canonical(data, affine, zooms, str(label_path))
    except VolumeError as exc:
        raise VolumeError(f"{where}: {str(exc).removeprefix(f'{label_path}: ')}") from exc
    label = np.transpose(data, (2, 0, 1))
    if label.shape != image.shape:
        z, h, w = image.shape
        shown = f"{(h, w, z)}" if source is None else f"{source.shape}"
        raise VolumeError(
            f"{where}: shape {stored_shape} against {shown}; the mask must be drawn on this scan's grid"
        )
    if not np.allclose(label_affine, image.affine, atol=1e-3):
        moved = float(np.abs(label_affine[:3, 3] - image.affine[:3, 3]).max())
        raise VolumeError(
            f"{where}: affine {''.join(axcodes(affine))} against {''.join(axcodes(image.affine))}, voxel corners "
            f"{moved:.1f} mm apart after reorienting; the mask must be drawn on this scan's grid (resample it onto "
            "the scan)"
        )
    return check_label_values(label, str(label_path))


def load_nifti_pair(
    image_path: str | Path,
    label_path: str | Path | None,
    *,
    subject: str,
    modality: Modality,
    label_map: LabelMap,
    intensity: Intensity = "raw",
) -> Volume:
    """Load a NIfTI image and (optionally) its label in the canonical orientation; their grids must agree.

    The label is read with :func:`read_mask_like`. Errors about the label's values (NaN, non-integer) name
    ``label_path``.
    """
    image, affine, spacing, source = read_nifti_canonical(Path(image_path))
    volume = Volume(
        image=image,
        label=None,
        spacing=spacing,
        subject=subject,
        modality=modality,
        label_map=label_map,
        intensity=intensity,
        affine=affine,
        source=str(image_path),
        source_geometry=source,
    )
    if label_path is None:
        return volume
    return volume.with_arrays(image, read_mask_like(volume, label_path))


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
    """Write a ``(Z, H, W)`` array with ``like``'s geometry as NIfTI, atomically.

    When ``like`` was read from a file (``like.source_geometry``), the array goes back to that file's
    own orientation, affine and voxel sizes; otherwise it is written with ``like.affine``.
    ``.nii.gz`` is gzip-compressed at level 1 with mtime 0, as ``nibabel.save`` writes it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if array_zhw.shape != like.shape:
        raise VolumeError(f"array shape {array_zhw.shape} differs from reference volume {like.shape}")
    nib = _nib()
    data = np.transpose(array_zhw, (1, 2, 0))
    source = like.source_geometry
    if source is not None and not source.is_identity:
        from .geometry import from_canonical

        img = nib.Nifti1Image(from_canonical(data, source), source.affine)
        img.header.set_zooms(source.zooms)
    else:
        img = nib.Nifti1Image(data, like.affine)
        img.header.set_zooms((like.spacing[1], like.spacing[2], like.spacing[0]))
    with atomic_writer(path, "wb") as fh:
        if path.name.endswith(".gz"):
            name = path.name.removesuffix(".gz")
            with gzip.GzipFile(filename=name, mode="wb", compresslevel=1, fileobj=fh, mtime=0) as gz:
                img.to_stream(gz)
        else:
            img.to_stream(fh)
    return path
