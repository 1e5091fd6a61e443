"""The :class:`Volume` type and loaders for real CT/MRI scans.

Orientation convention
----------------------
Every array in this library is stored **slice first**: ``(Z, H, W)`` where ``Z`` is the
axial slice index and ``(H, W)`` are the in-plane axes. For NIfTI files this is
``np.transpose(nibabel_array, (2, 0, 1))``: ``H`` is nibabel axis 0, ``W`` axis 1, ``Z``
axis 2, and ``Volume.affine`` is the file's own voxel-to-world matrix for the
nibabel ``(H, W, Z)`` index order, so predictions written back with
:func:`save_nifti` overlay the source scan in 3D Slicer / ITK-SNAP. We never flip or
reorient: label meanings (``liver``, ``left_kidney``) come from the label map, not
from the direction cosines (dcm2nii directions are unreliable, see PROVENANCE.md).

DICOM series are read with pydicom, sorted by position along the slice normal, and
``pixel_array`` rows/columns become ``H``/``W``; CHAOS ground-truth PNGs are in the same
row/column order, so no flip is needed (SSL-ALPNet's ``np.flip(axis=1)`` only undoes
dcm2nii's convention).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .labels import BTCV_CT, CHAOS_MR, LabelMap, canonical_organ

__all__ = [
    "CHAOS_PNG_GREY",
    "Intensity",
    "Modality",
    "Volume",
    "VolumeError",
    "load_btcv_png_folder",
    "load_chaos_dicom_folder",
    "load_dicom_series",
    "load_nifti_folder",
    "load_nifti_pair",
    "load_ssl_alpnet_folder",
    "save_nifti",
]

Modality = Literal["CT", "MR"]
#: ``hu``: CT in Hounsfield units; ``window255``: CT already windowed to [-125, 275] HU
#: and scaled to [0, 255] (the SSL-ALPNet BTCV PNGs); ``raw``: MR scanner units.
Intensity = Literal["hu", "window255", "raw"]

#: CHAOS ground-truth PNG grey values → label value (liver, RK, LK, spleen).
CHAOS_PNG_GREY: dict[int, int] = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}


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
        normalized: ``True`` once :func:`episodes.preprocess.preprocess` has run.
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
            if not np.isfinite(label).all():
                raise VolumeError(f"{where}: label contains NaN/inf values")
            if np.issubdtype(label.dtype, np.floating):
                rounded = np.rint(label)
                if np.abs(rounded - label).max(initial=0.0) > 1e-3:
                    raise VolumeError(f"{where}: label has non-integer values")
                label = rounded
            object.__setattr__(self, "label", label.astype(np.int16))
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


# --------------------------------------------------------------------------------------
# NIfTI


def _nib():  # type: ignore[no-untyped-def]
    import nibabel as nib

    return nib


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
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
    """Load a NIfTI image and (optionally) its label; shapes and affines must agree."""
    image, affine, spacing = _read_nifti(Path(image_path))
    label = None
    if label_path is not None:
        label, label_affine, _ = _read_nifti(Path(label_path))
        if label.shape != image.shape:
            raise VolumeError(
                f"{label_path}: label shape {label.shape[::-1]} (nibabel order reversed) does not "
                f"match image {image_path} shape {image.shape[::-1]}"
            )
        if not np.allclose(label_affine, affine, atol=1e-3):
            raise VolumeError(f"{label_path}: affine differs from image {image_path}")
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


def _numeric_key(subject: str) -> tuple[int, str]:
    return (int(subject), subject) if subject.isdigit() else (1 << 30, subject)


def _check_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise VolumeError(f"{root}: folder not found")
    return root


def load_ssl_alpnet_folder(
    root: str | Path,
    *,
    modality: Modality = "MR",
    label_map: LabelMap = CHAOS_MR,
    intensity: Intensity = "raw",
    subjects: Sequence[str] | None = None,
) -> list[Volume]:
    """SSL-ALPNet layout: ``image_<id>.nii.gz`` + ``label_<id>.nii.gz``, sorted by numeric id.

    This is how the preprocessed CHAOS T2-SPIR set is stored (``chaos-mr``).
    """
    root = _check_dir(root)
    found = {}
    for path in root.glob("image_*.nii*"):
        match = re.fullmatch(r"image_(.+?)\.nii(\.gz)?", path.name)
        if match:
            found[match.group(1)] = path
    if not found:
        raise VolumeError(f"{root}: no image_<id>.nii.gz files (empty or wrong folder)")
    ids = sorted(found, key=_numeric_key)
    if subjects is not None:
        missing = [s for s in subjects if s not in found]
        if missing:
            raise VolumeError(f"{root}: subjects {missing} not found; available: {ids}")
        ids = [s for s in ids if s in set(subjects)]
    volumes = []
    for sid in ids:
        image_path = found[sid]
        suffix = image_path.name[len(f"image_{sid}") :]
        label_path = root / f"label_{sid}{suffix}"
        if not label_path.is_file():
            raise VolumeError(f"{label_path}: label file missing for {image_path.name}")
        volumes.append(
            load_nifti_pair(
                image_path,
                label_path,
                subject=sid,
                modality=modality,
                label_map=label_map,
                intensity=intensity,
            )
        )
    return volumes


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
    except (OSError, UnidentifiedImageError) as exc:
        raise VolumeError(f"{path}: corrupt or unreadable PNG ({exc})") from exc


def load_btcv_png_folder(
    root: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    drop_last_slice: bool = True,
) -> list[Volume]:
    """The SSL-ALPNet BTCV/SABS CT set: ``subject_<ii>/img/*.png`` + ``subject_<ii>/label_<i>.nii.gz``.

    PNG slice ``z`` equals ``label[:, :, z]`` in nibabel order (no transpose or flip).
    Images are 8-bit, already windowed to [-125, 275] HU and scaled to [0, 255]
    (``intensity="window255"``). The last slice of every subject is an empty resampling
    artefact (PROVENANCE.md); it is dropped unless ``drop_last_slice=False``.
    """
    root = _check_dir(root)
    dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"subject_\d+", d.name)),
        key=lambda d: int(d.name.split("_")[1]),
    )
    if not dirs:
        raise VolumeError(f"{root}: no subject_<ii> folders (empty or wrong folder)")
    wanted = None if subjects is None else {str(int(s)) for s in subjects}
    volumes = []
    for d in dirs:
        sid = str(int(d.name.split("_")[1]))
        if wanted is not None and sid not in wanted:
            continue
        labels = sorted(d.glob("label_*.nii*"))
        if len(labels) != 1:
            raise VolumeError(f"{d}: expected one label_<i>.nii.gz, found {len(labels)}")
        label, affine, spacing = _read_nifti(labels[0])
        pngs = sorted((d / "img").glob("*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        if not pngs:
            raise VolumeError(f"{d / 'img'}: no PNG slices")
        if len(pngs) != label.shape[0]:
            raise VolumeError(
                f"{d}: {len(pngs)} PNG slices but label {labels[0].name} has {label.shape[0]} slices"
            )
        slices = [_read_png(p) for p in pngs]
        for p, s in zip(pngs, slices):
            if s.shape != label.shape[1:]:
                raise VolumeError(f"{p}: slice shape {s.shape} does not match label {label.shape[1:]}")
        image = np.stack(slices).astype(np.float32)
        if drop_last_slice:
            image, label = image[:-1], label[:-1]
        volumes.append(
            Volume(
                image=image,
                label=label,
                spacing=spacing,
                subject=sid,
                modality="CT",
                label_map=BTCV_CT,
                intensity="window255",
                affine=affine,
                source=str(d),
            )
        )
    if wanted is not None and len(volumes) != len(wanted):
        have = {v.subject for v in volumes}
        raise VolumeError(f"{root}: subjects {sorted(wanted - have)} not found")
    return volumes


def load_nifti_folder(
    root: str | Path,
    *,
    modality: Modality,
    label_map: LabelMap,
    intensity: Intensity | None = None,
) -> list[Volume]:
    """A plain folder of scans: ``<root>/images/<name>.nii[.gz]`` and optional ``<root>/labels/<name>.nii[.gz]``.

    Without an ``images/`` subfolder, every ``*.nii[.gz]`` in ``root`` is an unlabelled image.
    The subject id is the file name without extension. CT defaults to ``intensity="hu"``.
    """
    root = _check_dir(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    label_dir = root / "labels"
    paths = sorted(p for p in image_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not paths:
        raise VolumeError(f"{image_dir}: no .nii/.nii.gz files (empty folder)")
    if intensity is None:
        intensity = "hu" if modality == "CT" else "raw"
    volumes = []
    for path in paths:
        sid = path.name.removesuffix(".gz").removesuffix(".nii")
        label_path = label_dir / path.name
        volumes.append(
            load_nifti_pair(
                path,
                label_path if label_dir.is_dir() else None,
                subject=sid,
                modality=modality,
                label_map=label_map,
                intensity=intensity,
            )
        )
    return volumes


# --------------------------------------------------------------------------------------
# DICOM


def load_dicom_series(
    dicom_dir: str | Path,
    ground_truth_dir: str | Path | None = None,
    *,
    subject: str | None = None,
    modality: Modality | None = None,
    label_map: LabelMap = CHAOS_MR,
    grey_to_label: dict[int, int] | None = None,
) -> Volume:
    """Read one DICOM series (one folder) and optionally a folder of ground-truth PNGs.

    Slices are sorted by their position along the slice normal (``ImagePositionPatient``),
    falling back to ``InstanceNumber``. PNGs are sorted by the last number in their file
    name and must be one per slice, in the same order; grey values map to labels via
    ``grey_to_label`` (default: CHAOS, 63/126/189/252 → 1..4). CT pixel data is converted
    to HU with ``RescaleSlope``/``RescaleIntercept``.
    """
    import pydicom

    dicom_dir = _check_dir(dicom_dir)
    files = sorted(p for p in dicom_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise VolumeError(f"{dicom_dir}: empty DICOM folder")
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
            pixels = ds.pixel_array
        except Exception as exc:
            raise VolumeError(f"{path}: not a readable DICOM image ({exc})") from exc
        datasets.append((ds, pixels, path))

    def position(item: tuple) -> float:  # type: ignore[type-arg]
        ds = item[0]
        if hasattr(ds, "ImagePositionPatient") and hasattr(ds, "ImageOrientationPatient"):
            o = np.asarray(ds.ImageOrientationPatient, dtype=float)
            normal = np.cross(o[:3], o[3:])
            return float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))
        return float(getattr(ds, "InstanceNumber", 0))

    datasets.sort(key=position)
    first = datasets[0][0]
    mod = modality or ("CT" if str(getattr(first, "Modality", "MR")).upper() == "CT" else "MR")
    shapes = {px.shape for _, px, _ in datasets}
    if len(shapes) != 1:
        raise VolumeError(f"{dicom_dir}: slices have different sizes {sorted(shapes)}")
    stack = []
    for ds, px, _ in datasets:
        arr = px.astype(np.float32)
        if mod == "CT":
            arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(getattr(ds, "RescaleIntercept", 0.0))
        stack.append(arr)
    image = np.stack(stack)
    row, col = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
    if len(datasets) > 1:
        dz = abs(position(datasets[1]) - position(datasets[0])) or float(
            getattr(first, "SliceThickness", 1.0)
        )
    else:
        dz = float(getattr(first, "SliceThickness", 1.0))
    label = None
    if ground_truth_dir is not None:
        gt_dir = _check_dir(ground_truth_dir)
        pngs = sorted(gt_dir.glob("*.png"), key=lambda p: int((re.findall(r"\d+", p.stem) or ["0"])[-1]))
        if len(pngs) != image.shape[0]:
            raise VolumeError(f"{gt_dir}: {len(pngs)} ground-truth PNGs for {image.shape[0]} DICOM slices")
        mapping = CHAOS_PNG_GREY if grey_to_label is None else grey_to_label
        lut = np.full(256, -1, dtype=np.int16)
        for grey, value in mapping.items():
            lut[grey] = value
        slices = []
        for p in pngs:
            g = _read_png(p)
            if g.shape != image.shape[1:]:
                raise VolumeError(f"{p}: mask shape {g.shape} differs from DICOM slice {image.shape[1:]}")
            lab = lut[g.astype(np.uint8)]
            if (lab < 0).any():
                raise VolumeError(
                    f"{p}: grey values {sorted(set(np.unique(g)) - set(mapping))} not in {mapping}"
                )
            slices.append(lab)
        label = np.stack(slices)
    affine = np.diag([row, col, dz, 1.0])
    return Volume(
        image=image,
        label=label,
        spacing=(dz, row, col),
        subject=subject or dicom_dir.parent.name,
        modality=mod,
        label_map=label_map,
        intensity="hu" if mod == "CT" else "raw",
        affine=affine,
        source=str(dicom_dir),
    )


def load_chaos_dicom_folder(root: str | Path, *, sequence: str = "T2SPIR") -> list[Volume]:
    """CHAOS's original layout: ``<root>/<id>/<sequence>/DICOM_anon/*.dcm`` + ``.../Ground/*.png``."""
    root = _check_dir(root)
    subjects = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: _numeric_key(d.name))
    volumes = []
    for d in subjects:
        seq = d / sequence
        dicom = seq / "DICOM_anon"
        if not dicom.is_dir():
            continue
        ground = seq / "Ground"
        volumes.append(
            load_dicom_series(dicom, ground if ground.is_dir() else None, subject=d.name, modality="MR")
        )
    if not volumes:
        raise VolumeError(f"{root}: no <id>/{sequence}/DICOM_anon folders")
    return volumes


def save_nifti(array_zhw: np.ndarray, like: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a ``(Z, H, W)`` array with ``like``'s geometry (affine) as NIfTI, atomically."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if array_zhw.shape != like.shape:
        raise VolumeError(f"array shape {array_zhw.shape} differs from reference volume {like.shape}")
    nib = _nib()
    img = nib.Nifti1Image(np.transpose(array_zhw, (1, 2, 0)), like.affine)
    img.header.set_zooms((like.spacing[1], like.spacing[2], like.spacing[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        nib.save(img, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
