"""DICOM series (pydicom) and the original CHAOS layout.

DICOM series are read with pydicom, sorted by position along the slice normal, and
``pixel_array`` rows/columns become ``H``/``W``; CHAOS ground-truth PNGs are in the same
row/column order, so no flip is needed (SSL-ALPNet's ``np.flip(axis=1)`` only undoes
dcm2nii's convention).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .labels import CHAOS_MR, LabelMap
from .volumes import Modality, Volume, VolumeError, check_dir, numeric_key, read_png

__all__ = ["CHAOS_PNG_GREY", "load_chaos_dicom_folder", "load_dicom_series"]

#: CHAOS ground-truth PNG grey values → label value (liver, RK, LK, spleen).
CHAOS_PNG_GREY: dict[int, int] = {0: 0, 63: 1, 126: 2, 189: 3, 252: 4}


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

    dicom_dir = check_dir(dicom_dir)
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
        gt_dir = check_dir(ground_truth_dir)
        pngs = sorted(gt_dir.glob("*.png"), key=lambda p: int((re.findall(r"\d+", p.stem) or ["0"])[-1]))
        if len(pngs) != image.shape[0]:
            raise VolumeError(f"{gt_dir}: {len(pngs)} ground-truth PNGs for {image.shape[0]} DICOM slices")
        mapping = CHAOS_PNG_GREY if grey_to_label is None else grey_to_label
        lut = np.full(256, -1, dtype=np.int16)
        for grey, value in mapping.items():
            lut[grey] = value
        slices = []
        for p in pngs:
            g = read_png(p)
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
