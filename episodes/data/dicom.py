"""DICOM series (pydicom) and the original CHAOS layout.

Any folder holding one DICOM series reads as a volume with its affine: slices are grouped by
``SeriesInstanceUID`` (a folder of several series is refused, listing them), sorted by
``ImagePositionPatient`` projected on the slice normal (the cross product of the two
``ImageOrientationPatient`` vectors), scaled with ``RescaleSlope``/``RescaleIntercept``, and the
voxel-to-world matrix is built from the orientation vectors, ``PixelSpacing`` and the step between
slice positions, then converted from DICOM's LPS+ to NIfTI's RAS+. The volume is then brought to the
library's canonical orientation like a NIfTI file (:mod:`episodes.data.geometry`), so a DICOM series
and the same scan converted with dcm2niix give the same array.

CHAOS ground-truth PNGs are in the DICOM's row/column order, so they are stacked in slice order and
reoriented with the image (SSL-ALPNet's ``np.flip(axis=1)`` only undoes dcm2nii's convention).

pydicom is used (no new dependency): SimpleITK's ``ImageSeriesReader`` does the same sorting and
geometry, but it is a ~50 MB wheel and the library needs only uncompressed or pydicom-decodable
pixel data; compressed transfer syntaxes need pydicom's optional decoders (``pylibjpeg``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from .labels import CHAOS_MR, LabelMap
from .volumes import Modality, Volume, VolumeError, check_dir, numeric_key, read_png

__all__ = ["CHAOS_PNG_GREY", "dicom_series_affine", "load_chaos_dicom_folder", "load_dicom_series"]

logger = logging.getLogger("fewshot")

#: CHAOS ground-truth PNG grey values → label value (liver, RK, LK, spleen).
CHAOS_PNG_GREY: dict[int, int] = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}

#: DICOM patient coordinates (LPS+) to NIfTI world coordinates (RAS+).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_datasets(dicom_dir: Path) -> list[Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in dicom_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise VolumeError(f"{dicom_dir}: empty DICOM folder")
    datasets = []
    for path in files:
        try:
            ds = pydicom.dcmread(str(path))
        except InvalidDicomError as exc:
            if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
                raise VolumeError(f"{path}: not a readable DICOM file ({exc})") from exc
            continue  # a README, an index, ...: not a DICOM file
        except Exception as exc:
            raise VolumeError(f"{path}: not a readable DICOM file ({exc})") from exc
        if "PixelData" not in ds:
            continue  # DICOMDIR, presentation states, structured reports
        datasets.append((ds, path))
    if not datasets:
        raise VolumeError(f"{dicom_dir}: no DICOM image files among its {len(files)} files")
    return datasets


def _refuse_mixed_series(dicom_dir: Path, datasets: list[Any]) -> None:
    series: dict[str, list[Any]] = {}
    for ds, _ in datasets:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "(no SeriesInstanceUID)")), []).append(ds)
    if len(series) > 1:
        listed = "; ".join(
            f"{uid} (#{getattr(members[0], 'SeriesNumber', '?')} "
            f"{str(getattr(members[0], 'SeriesDescription', '') or '').strip() or 'no description'}, "
            f"{getattr(members[0], 'Modality', '?')}, {len(members)} files)"
            for uid, members in series.items()
        )
        raise VolumeError(
            f"{dicom_dir}: holds {len(series)} DICOM series; give a folder with one series: {listed}"
        )


def dicom_series_affine(first: Any, step: np.ndarray) -> np.ndarray:
    """RAS+ voxel-to-world matrix of a series for the nibabel index order ``(row, column, slice)``.

    ``step`` is the LPS+ vector from one slice's ``ImagePositionPatient`` to the next one's.
    """
    o = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = o[3:] * row_spacing  # down the rows: the column direction cosine
    lps[:3, 1] = o[:3] * col_spacing  # along a row
    lps[:3, 2] = step
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, dtype=float)
    return LPS_TO_RAS @ lps


def load_dicom_series(
    dicom_dir: str | Path,
    ground_truth_dir: str | Path | None = None,
    *,
    subject: str | None = None,
    modality: Modality | None = None,
    label_map: LabelMap = CHAOS_MR,
    grey_to_label: dict[int, int] | None = None,
) -> Volume:
    """Read the one DICOM series in a folder (and optionally a folder of ground-truth PNGs).

    Slices are sorted by their position along the slice normal (``ImagePositionPatient``), falling
    back to ``InstanceNumber`` (with an identity affine) when the geometry tags are missing. PNGs are
    sorted by the last number in their file name and must be one per slice, in the same order; grey
    values map to labels via ``grey_to_label`` (default: CHAOS, 63/126/189/252 → 1..4). Pixel data is
    scaled with ``RescaleSlope``/``RescaleIntercept`` (CT: Hounsfield units). The volume comes back in
    the canonical orientation.
    """
    from .geometry import to_canonical

    dicom_dir = check_dir(dicom_dir)
    datasets = _read_datasets(dicom_dir)
    _refuse_mixed_series(dicom_dir, datasets)
    first = datasets[0][0]
    has_geometry = all(
        "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds for ds, _ in datasets
    )
    if has_geometry:
        orientations = {tuple(np.round(np.asarray(ds.ImageOrientationPatient, dtype=float), 4)) for ds, _ in datasets}
        if len(orientations) > 1:
            raise VolumeError(
                f"{dicom_dir}: the series' slices have {len(orientations)} different orientations "
                "(ImageOrientationPatient; a localiser?); give a folder with one stack of parallel slices"
            )
        o = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(o[:3], o[3:])
        keys = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for ds, _ in datasets]
    else:
        keys = [float(getattr(ds, "InstanceNumber", 0) or 0) for ds, _ in datasets]
    order = np.argsort(keys, kind="stable")
    datasets = [datasets[i] for i in order]
    keys = [keys[i] for i in order]
    gaps = np.diff(keys)
    if has_geometry and gaps.size and gaps.min() < 1e-3:
        raise VolumeError(
            f"{dicom_dir}: {int((gaps < 1e-3).sum()) + 1} slices share a position (several echoes, phases or "
            "time points in one series?); give a folder with one 3D volume"
        )
    if has_geometry and gaps.size and gaps.max() > 1.1 * gaps.min():
        logger.warning(
            "%s: slice gaps vary from %.2f to %.2f mm (missing slices?); the volume assumes even steps",
            dicom_dir, gaps.min(), gaps.max(),
        )
    mod = modality or ("CT" if str(getattr(first, "Modality", "MR")).upper() == "CT" else "MR")
    stack = []
    for ds, path in datasets:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise VolumeError(f"{path}: pixel data cannot be decoded ({exc})") from exc
        if pixels.ndim != 2:
            raise VolumeError(f"{path}: a {pixels.ndim}D image (multi-frame or colour); give single-frame slices")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        stack.append(pixels.astype(np.float32) * slope + intercept)
    shapes = {px.shape for px in stack}
    if len(shapes) != 1:
        raise VolumeError(f"{dicom_dir}: slices have different sizes {sorted(shapes)}")
    image = np.stack(stack)  # (slice, row, column)
    if has_geometry:
        if len(datasets) > 1:
            step = (
                np.asarray(datasets[-1][0].ImagePositionPatient, dtype=float)
                - np.asarray(datasets[0][0].ImagePositionPatient, dtype=float)
            ) / (len(datasets) - 1)
        else:
            step = normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
        affine = dicom_series_affine(datasets[0][0], step)
    else:
        row, col = (float(v) for v in getattr(first, "PixelSpacing", (1.0, 1.0)))
        affine = np.diag([row, col, float(getattr(first, "SliceThickness", 1.0) or 1.0), 1.0])
    label = None
    if ground_truth_dir is not None:
        label = _read_ground_truth(check_dir(ground_truth_dir), image.shape, grey_to_label)
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    data, affine, zooms_c, source = to_canonical(
        np.transpose(image, (1, 2, 0)), affine, zooms, str(dicom_dir)  # type: ignore[arg-type]
    )
    if label is not None:
        label_xyz, _, _, _ = to_canonical(np.transpose(label, (1, 2, 0)), source.affine, source.zooms, str(dicom_dir))
        label = np.transpose(label_xyz, (2, 0, 1))
    return Volume(
        image=np.transpose(data, (2, 0, 1)),
        label=label,
        spacing=(zooms_c[2], zooms_c[0], zooms_c[1]),
        subject=subject or dicom_dir.parent.name,
        modality=mod,
        label_map=label_map,
        intensity="hu" if mod == "CT" else "raw",
        affine=affine,
        source=str(dicom_dir),
        source_geometry=source,
    )


def _read_ground_truth(
    gt_dir: Path, shape: tuple[int, ...], grey_to_label: dict[int, int] | None
) -> np.ndarray:
    pngs = sorted(gt_dir.glob("*.png"), key=lambda p: int((re.findall(r"\d+", p.stem) or ["0"])[-1]))
    if len(pngs) != shape[0]:
        raise VolumeError(f"{gt_dir}: {len(pngs)} ground-truth PNGs for {shape[0]} DICOM slices")
    mapping = CHAOS_PNG_GREY if grey_to_label is None else grey_to_label
    lut = np.full(256, -1, dtype=np.int16)
    for grey, value in mapping.items():
        lut[grey] = value
    slices = []
    for p in pngs:
        g = read_png(p)
        if g.shape != shape[1:]:
            raise VolumeError(f"{p}: mask shape {g.shape} differs from DICOM slice {shape[1:]}")
        lab = lut[g.astype(np.uint8)]
        if (lab < 0).any():
            raise VolumeError(f"{p}: grey values {sorted(set(np.unique(g)) - set(mapping))} not in {mapping}")
        slices.append(lab)
    return np.stack(slices)


def load_chaos_dicom_folder(root: str | Path, *, sequence: str = "T2SPIR") -> list[Volume]:
    """CHAOS's original layout: ``<root>/<id>/<sequence>/DICOM_anon/*.dcm`` + ``.../Ground/*.png``."""
    root = check_dir(root)
    subjects = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: numeric_key(d.name))
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
