"""Loaders for folders of NIfTI / PNG scans (see :mod:`episodes.data.datasets` for the dataset names).

All return raw (un-normalised) :class:`~episodes.data.volumes.Volume` objects sorted by subject id,
arrays ``(Z, H, W)`` (see the orientation convention in :mod:`episodes.data.volumes`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .labels import BTCV_CT, CHAOS_MR, LabelMap
from .volumes import (
    Intensity,
    Modality,
    Volume,
    VolumeError,
    check_dir,
    check_label_values,
    load_nifti_pair,
    numeric_key,
    read_nifti,
    read_png,
)

__all__ = [
    "LABEL_LIKE_MAX_VALUES",
    "load_btcv_png_folder",
    "load_nifti_folder",
    "load_ssl_alpnet_folder",
]


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
    root = check_dir(root)
    found = {}
    for path in root.glob("image_*.nii*"):
        match = re.fullmatch(r"image_(.+?)\.nii(\.gz)?", path.name)
        if match:
            found[match.group(1)] = path
    if not found:
        inside = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("image_*.nii*")))
        hint = f"; the subfolder {root / inside[0]} holds them: pass that folder" if inside else ""
        raise VolumeError(f"{root}: no image_<id>.nii.gz files (empty or wrong folder){hint}")
    ids = sorted(found, key=numeric_key)
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


def load_btcv_png_folder(
    root: str | Path,
    *,
    subjects: Sequence[str] | None = None,
    drop_last_slice: bool = True,
) -> list[Volume]:
    """The SSL-ALPNet BTCV/SABS CT set: ``subject_<ii>/img/*.png`` + ``subject_<ii>/label_<i>.nii.gz``.

    PNG slice ``z`` equals ``label[:, :, z]`` in nibabel order (no transpose or flip).
    Images are 8-bit, already windowed to [-125, 275] HU and scaled to [0, 255]
    (``intensity="window255"``). The last slice of every subject is all black (image 0, label
    empty), an artefact of the ``int(size + 1)`` resampling grid of SSL-ALPNet's preprocessing; it
    is dropped unless ``drop_last_slice=False``. Label value errors name the ``label_<i>.nii.gz`` file.
    """
    root = check_dir(root)
    dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"subject_\d+", d.name)),
        key=lambda d: int(d.name.split("_")[1]),
    )
    if not dirs:
        inside = sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("subject_*")))
        hint = f"; the subfolder {root / inside[0]} holds them: pass that folder" if inside else ""
        raise VolumeError(f"{root}: no subject_<ii> folders (empty or wrong folder){hint}")
    wanted = None if subjects is None else {str(int(s)) for s in subjects}
    volumes = []
    for d in dirs:
        sid = str(int(d.name.split("_")[1]))
        if wanted is not None and sid not in wanted:
            continue
        labels = sorted(d.glob("label_*.nii*"))
        if len(labels) != 1:
            raise VolumeError(f"{d}: expected one label_<i>.nii.gz, found {len(labels)}")
        label, affine, spacing = read_nifti(labels[0])
        label = check_label_values(label, str(labels[0]))
        pngs = sorted((d / "img").glob("*.png"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
        if not pngs:
            raise VolumeError(f"{d / 'img'}: no PNG slices")
        if len(pngs) != label.shape[0]:
            raise VolumeError(
                f"{d}: {len(pngs)} PNG slices but label {labels[0].name} has {label.shape[0]} slices"
            )
        slices = [read_png(p) for p in pngs]
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


#: An image with at most this many distinct values, all integers, is taken for a label/mask volume.
LABEL_LIKE_MAX_VALUES = 16

#: File names (case-insensitive) that mark a label/mask: ``label*``/``seg*``/``mask*``, or a
#: ``_label``/``_seg``/``_mask``/``-labels``/``.segmentation`` ... word inside the name.
_LABEL_NAME = re.compile(
    r"^(label|seg|mask)|[_.\-](labels?|seg|segmentations?|masks?|gt)([_.\-]|$)", re.IGNORECASE
)


def _subject_id(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _label_like_values(image: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``image`` when they are <= :data:`LABEL_LIKE_MAX_VALUES` integers, else ``None``.

    A strided sample is checked first, so a real scan (many distinct values) costs almost nothing.
    """
    flat = image.reshape(-1)
    sample = flat[:: max(1, flat.size // 65536)]
    if np.unique(sample).size > LABEL_LIKE_MAX_VALUES:
        return None
    values = np.unique(flat)
    if values.size > LABEL_LIKE_MAX_VALUES or not np.array_equal(values, np.rint(values)):
        return None
    return values


def _check_label_map_values(label: np.ndarray, label_map: LabelMap, path: Path) -> None:
    """Refuse negative label values and values the label map does not define (a wrong ``label_map``)."""
    values = [int(v) for v in np.unique(label)]
    defined = set(label_map.to_dict().values())
    unknown = [v for v in values if v != 0 and v not in defined]
    if unknown:
        negative = " (labels must be >= 0)" if min(unknown) < 0 else ""
        raise VolumeError(
            f"{path}: label values {unknown}{negative} are not in the {label_map.name} label map "
            f"{label_map.to_dict()}; pass the folder's label map (--label-map / data.loader_args.label_map) "
            "or fix the labels"
        )


def load_nifti_folder(
    root: str | Path,
    *,
    modality: Modality,
    label_map: LabelMap,
    intensity: Intensity | None = None,
) -> list[Volume]:
    """A plain folder of scans: ``<root>/images/<name>.nii[.gz]`` and optional ``<root>/labels/<name>.nii[.gz]``.

    Without an ``images/`` subfolder, every ``*.nii[.gz]`` in ``root`` is an image (labelled from
    ``<root>/labels/`` when that folder exists, else unlabelled). The subject id is the file name
    without extension. CT defaults to ``intensity="hu"``.

    Label files are never taken for images: a scan file whose name looks like a label (``label*``,
    ``seg*``, ``mask*``, or ``_label``/``_seg``/``_mask``/``_gt`` inside the name) or whose values
    are at most :data:`LABEL_LIKE_MAX_VALUES` distinct integers is **refused** with a
    :class:`VolumeError` naming the file. It is an error rather than a skip because a label beside
    the images means the layout is not the one this loader pairs (images in ``images/``, labels
    under the same file names in ``labels/``): skipping would silently drop labels the user
    expects to be used.
    """
    root = check_dir(root)
    image_dir = root / "images" if (root / "images").is_dir() else root
    label_dir = root / "labels"
    paths = sorted(p for p in image_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not paths:
        raise VolumeError(f"{image_dir}: no .nii/.nii.gz files (empty folder)")
    layout = (
        f"put the scans in {root / 'images'}/ and their labels, under the same file names, in {label_dir}/"
    )
    for path in paths:
        if _LABEL_NAME.search(_subject_id(path)):
            raise VolumeError(f"{path}: file name looks like a label/mask, not a scan; {layout}")
    if intensity is None:
        intensity = "hu" if modality == "CT" else "raw"
    volumes = []
    for path in paths:
        label_path = label_dir / path.name
        volume = load_nifti_pair(
            path,
            label_path if label_dir.is_dir() else None,
            subject=_subject_id(path),
            modality=modality,
            label_map=label_map,
            intensity=intensity,
        )
        if volume.label is not None:
            _check_label_map_values(volume.label, label_map, label_path)
        values = _label_like_values(volume.image)
        if values is not None:
            shown = [int(v) for v in values]
            raise VolumeError(
                f"{path}: holds only {len(shown)} distinct integer value(s) {shown}, which looks like a "
                f"label/mask volume, not a scan; {layout}"
            )
        volumes.append(volume)
    return volumes
