"""Segment a new scan from one annotated scan (``fewshot segment``).

The support scan's organ slices are split into ``chunks`` parts and the middle slice of each
part (k-shot: ``k`` slices spread evenly) is the support for the query slices in the matching
part of the query range, as in the evaluation protocol. Without ``query_range`` the whole query
volume is the range; give the organ's approximate slice range for protocol-like results.

Geometry: scans (NIfTI files or single-series DICOM folders) are read in the library's canonical
orientation (:mod:`episodes.data.geometry`), so a support and a query stored in different axis
orders are matched as if they were stored alike. Intensities are normalised like the training
data. The in-plane grid is the model's: with the recipe's ``data.spacing`` both scans are
resampled to that pixel size; without it the support is resized to ``data.size`` as in training
and evaluation, and the query is resampled to the support's pixel size, so prototype matching
compares features at one scale whatever the query's spacing and field of view (an MR scan larger
than the model's field of view is normalised with the statistics of its central ``data.size``
pixels on that grid, so the extra air does not shift its intensities). Both are padded
to one common size (at least ``data.size``; nothing is cropped away). The prediction goes back
through the same steps (nearest neighbour) to the query file's own orientation, affine and grid,
so it overlays the scan in 3D Slicer / ITK-SNAP. Scans far outside the spacing the model was
trained on, or with an anisotropy it never saw, get a warning.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from episodes.data.geometry import InPlaneGrid
from episodes.data.labels import LabelMap, canonical_organ, get_label_map, known_organs
from episodes.data.preprocess import NormStats, preprocess
from episodes.data.slices import stack_slices
from episodes.data.volumes import (
    Intensity,
    Modality,
    Volume,
    VolumeError,
    load_nifti_pair,
    read_mask_like,
    save_nifti,
)
from episodes.protocol import query_chunk, support_slice_indices
from fewshot.recipes.bundle import Bundle

__all__ = [
    "TRAINING_SPACING",
    "check_intensities",
    "check_organ_name",
    "check_same_modality",
    "load_scan",
    "model_grids",
    "plausibility_warnings",
    "segment_files",
    "segment_volume",
    "spacing_warnings",
]

logger = logging.getLogger("fewshot")

#: In-plane pixel sizes (min, max mm), in-plane size (px) and slice spacings (min, max mm) of the data sets
#: models are trained on, as stored (provenance notes): what a scan's spacing is compared with.
TRAINING_SPACING: dict[str, tuple[tuple[float, float], int, tuple[float, float]]] = {
    "chaos-mr": ((1.25, 1.25), 256, (7.7, 7.7)),
    "btcv-ct": ((1.04, 1.71), 257, (2.5, 5.0)),
}
#: A pixel size this many times off the trained range, or an in-plane anisotropy above it, gets a warning.
SPACING_WARN_RATIO = 1.5

@torch.no_grad()
def segment_volume(
    model: nn.Module,
    support: Volume,
    support_mask: np.ndarray,
    query: Volume,
    *,
    shots: int = 1,
    chunks: int = 3,
    query_range: tuple[int, int] | None = None,
    channels: int = 3,
    slice_input: str | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    fg_threshold: float | None = None,
    tta: str | None = None,
    finetune: Any = None,
    organ: str | None = None,
    intensity_prior: float | None = None,
) -> np.ndarray:
    """Foreground ``(Z, H, W)`` bool mask of ``query`` (both volumes preprocessed, same slice size).

    Args:
        support_mask: ``(Z, H, W)`` bool organ mask of ``support``.
        query_range: inclusive slice range ``(z0, z1)`` of the query to segment (default: all).
        slice_input: how a slice fills the channels, ``"tile"`` or ``"adjacent"`` (default: the model's
            ``config.slice_input``).
        fg_threshold: foreground probability threshold (default: the model's ``config.fg_threshold``).
        tta: test-time augmentation, ``"none"`` or ``"flip"`` (default: the model's ``config.tta``).
        finetune: test-time fine-tuning on each chunk's support slices (:class:`~fewshot.config.model.FinetuneConfig`,
            or a mapping of the fields to change in the model's ``config.finetune``; default: the model's).
        organ: the organ's name; with fine-tuning it seeds each chunk's tuned copy as ``fewshot evaluate`` does
            (:func:`~fewshot.evaluation.scoring.chunk_model`), so the same support slices give the same tuned copy
            (and, for the same preprocessed scans and query range, the prediction the evaluation scored). Required
            when fine-tuning is on.
        intensity_prior: weight of the support-intensity prior (default: the model's ``config.intensity_prior``).
    """
    from fewshot.evaluation.scoring import chunk_model, model_finetune, model_slice_input, predict_query

    if support_mask.shape != support.shape:
        raise VolumeError(
            f"support mask shape {support_mask.shape} differs from support scan {support.shape}"
        )
    if support.shape[1:] != query.shape[1:]:
        raise VolumeError(f"support slices {support.shape[1:]} and query slices {query.shape[1:]} differ")
    organ_slices = np.flatnonzero(support_mask.any(axis=(1, 2)))
    if organ_slices.size == 0:
        raise VolumeError("the support mask is empty: the organ is missing from the support scan")
    sets = support_slice_indices(organ_slices.tolist(), chunks, shots)
    z0, z1 = query_range if query_range is not None else (0, query.shape[0] - 1)
    if not 0 <= z0 <= z1 < query.shape[0]:
        raise ValueError(f"query range {z0}:{z1} outside the query's slices 0:{query.shape[0] - 1}")
    zs = np.arange(z0, z1 + 1)
    parts = np.array([query_chunk(int(z), z0, z1, chunks) for z in zs])
    pred = np.zeros(query.shape, dtype=bool)
    mode = model_slice_input(model) if slice_input is None else slice_input
    tune = model_finetune(model, finetune)
    if tune.steps > 0 and organ is None:
        raise ValueError("segment_volume: fine-tuning (finetune.steps > 0) needs the organ's name, which seeds it")
    model.eval().to(device)
    for c in range(chunks):
        q_z = zs[parts == c]
        if q_z.size == 0:
            continue
        s_z = list(sets[c])
        s_img = torch.from_numpy(stack_slices(support.image, s_z, channels, mode)).unsqueeze(0)
        s_msk = torch.from_numpy(support_mask[s_z].astype(np.float32)).unsqueeze(0)
        tuned = chunk_model(model, s_img, s_msk, tune, organ or "", c, device)
        out = predict_query(
            tuned, s_img, s_msk, torch.from_numpy(stack_slices(query.image, q_z.tolist(), channels, mode)),
            batch_size=batch_size, device=device,
            threshold=fg_threshold, tta=tta, intensity_prior=intensity_prior,
        )
        pred[q_z] = out.numpy()
    return pred


#: Largest plausible organ volume (ml) in an adult; predictions above it are flagged.
PLAUSIBLE_ML = {"liver": 4000.0, "spleen": 1500.0, "right_kidney": 500.0, "left_kidney": 500.0}
#: Largest plausible fraction of the scan's voxels any one organ covers.
PLAUSIBLE_FRACTION = 0.25


def check_organ_name(organ: str) -> str:
    """The canonical name of ``organ``; an unknown name raises with the known ones (and a close match)."""
    name = canonical_organ(organ)
    known = known_organs()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown organ {organ!r}{hint}; known organs: {', '.join(known)}")
    return name


def _check_nifti_input(option: str, path: Path) -> None:
    if path.is_dir():
        if option == "--support-mask":
            raise ValueError(f"{option} {path} is a folder; the mask is a NIfTI file (.nii/.nii.gz) on the support's grid")
        if not any(p.is_file() for p in path.iterdir()):
            raise ValueError(f"{option} {path} is an empty folder; give a NIfTI file or a folder holding one DICOM series")
        return  # a DICOM series folder
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path} not found")


def load_scan(
    path: str | Path,
    *,
    subject: str,
    modality: Modality,
    label_map: LabelMap,
    mask: str | Path | None = None,
) -> Volume:
    """A scan in the canonical orientation: a NIfTI file, or a folder holding one DICOM series.

    ``mask``: a NIfTI label/mask on the scan's grid (:func:`~episodes.data.volumes.read_mask_like`). A DICOM
    series keeps the modality its ``Modality`` tag says (checked against the model's by the caller).
    """
    path = Path(path)
    if path.is_dir():
        from episodes.data.dicom import load_dicom_series

        volume = load_dicom_series(path, subject=subject, label_map=label_map)
    else:
        intensity: Intensity = "hu" if modality == "CT" else "raw"
        volume = load_nifti_pair(
            path, None, subject=subject, modality=modality, label_map=label_map, intensity=intensity
        )
    if mask is not None:
        volume = volume.with_arrays(volume.image, read_mask_like(volume, mask))
    return volume


#: A scan whose 1st intensity percentile is below this looks like CT in Hounsfield units (air is about -1000).
CT_LOW_PERCENTILE = -300


def _looks_like(image: np.ndarray) -> tuple[str, float]:
    """``("CT" | "MR", 1st percentile)`` of a scan (a strided sample of a large one)."""
    flat = image.reshape(-1)
    lo = float(np.percentile(flat[:: max(1, flat.size // 4_000_000)], 1))
    return ("CT" if lo < CT_LOW_PERCENTILE else "MR"), lo


def check_same_modality(support: Volume, query: Volume) -> None:
    """Refuse a support and a query of different modalities (DICOM tags, else CT-in-HU intensities)."""
    (s_mod, s_lo), (q_mod, q_lo) = _looks_like(support.image), _looks_like(query.image)
    if s_mod == q_mod and support.modality == query.modality:
        return
    s_why = f"1st percentile {s_lo:.0f}" if s_mod != q_mod else f"DICOM Modality {support.modality}"
    q_why = f"1st percentile {q_lo:.0f}" if s_mod != q_mod else f"DICOM Modality {query.modality}"
    s_is, q_is = (s_mod, q_mod) if s_mod != q_mod else (support.modality, query.modality)
    raise VolumeError(
        f"support {support.source} is {s_is} ({s_why}) but query {query.source} is {q_is} ({q_why}): support and "
        "query must be scans of the same modality"
    )


def check_intensities(image: np.ndarray, modality: str, what: str) -> None:
    """Refuse a scan whose values do not look like ``modality`` (CT in HU has air near -1000; MR is >= 0)."""
    looks, lo = _looks_like(image)
    if modality == "CT" and lo > CT_LOW_PERCENTILE:
        raise ValueError(
            f"{what} does not look like CT in Hounsfield units (1st percentile {lo:.0f}, air is about -1000); "
            "is it an MR scan? Use a model trained on MR, or give CT scans in HU"
        )
    if modality == "MR" and looks == "CT":
        raise ValueError(
            f"{what} looks like CT in Hounsfield units (1st percentile {lo:.0f}), but the model is for MR"
        )


def plausibility_warnings(organ: str, volume_ml: float, fraction: float) -> list[str]:
    """Messages for a prediction too large to be the organ (a wrong model, modality or support)."""
    out = []
    limit = PLAUSIBLE_ML.get(organ)
    if limit is not None and volume_ml > limit:
        out.append(f"the predicted {organ} is {volume_ml:.0f} ml, more than a plausible {limit:.0f} ml")
    if fraction > PLAUSIBLE_FRACTION:
        out.append(f"the predicted {organ} covers {100 * fraction:.0f}% of the scan's voxels")
    return [f"{w}: check the support mask, the modality and the checkpoint" for w in out]


#: The common slice size of support and query is rounded up to a multiple of this when it exceeds ``data.size``.
GRID_MULTIPLE = 16


def model_grids(
    support: Volume, query: Volume, size: int, spacing: float | None
) -> tuple[InPlaneGrid, InPlaneGrid]:
    """The in-plane grids of the support and the query (see the module docstring).

    ``spacing`` (the recipe's ``data.spacing``) sets the pixel size; ``None``: the support's own after resizing
    it to ``size`` (so it is resized exactly as in training and evaluation). Both grids share one size, at least
    ``size``, large enough for either scan's field of view.
    """
    if spacing is None:
        pixel = (support.spacing[1] * support.shape[1] / size, support.spacing[2] * support.shape[2] / size)
    else:
        pixel = (float(spacing), float(spacing))
    plans = [InPlaneGrid.plan(v.shape[1:], v.spacing[1:], pixel, size) for v in (support, query)]
    common = max(size, *(n for p in plans for n in p.scaled))
    if common > size:
        common = -(-common // GRID_MULTIPLE) * GRID_MULTIPLE
    return (
        InPlaneGrid(plans[0].source, plans[0].scaled, common),
        InPlaneGrid(plans[1].source, plans[1].scaled, common),
    )


def _fov_window(grid: InPlaneGrid, size: int) -> tuple[slice, slice] | None:
    """The central part of the source slices the model's field of view (``size`` px on ``grid``) covers, when the
    scan's field of view is larger; ``None`` when it covers the whole slice (statistics as in training)."""
    window = []
    for n_src, n_scaled in zip(grid.source, grid.scaled):
        n = min(n_src, round(size * n_src / n_scaled))
        window.append(slice((n_src - n) // 2, (n_src - n) // 2 + n))
    if all(w.start == 0 and w.stop == n for w, n in zip(window, grid.source)):
        return None
    return (window[0], window[1])


def _grid_pixel(volume: Volume, grid: InPlaneGrid) -> tuple[float, float]:
    return (
        volume.spacing[1] * grid.source[0] / grid.scaled[0],
        volume.spacing[2] * grid.source[1] / grid.scaled[1],
    )


def _on_grid(volume: Volume, grid: InPlaneGrid) -> Volume:
    """A normalised volume on ``grid`` (image bilinear, padded with its minimum; label nearest)."""
    image = grid.apply(volume.image, fill=float(volume.image.min()))
    label = None
    if volume.label is not None:
        label = grid.apply(volume.label.astype(np.float32), mode="nearest").astype(np.int16)
    return volume.with_arrays(image, label, spacing=(volume.spacing[0], *_grid_pixel(volume, grid)), source_geometry=None)


def spacing_warnings(
    volume: Volume, what: str, grid: InPlaneGrid, dataset: str, size: int, spacing: float | None
) -> list[str]:
    """Warnings for a scan far outside the spacing the model was trained on, or with an unseen anisotropy."""
    out = []
    where = f"{what} {volume.source}"
    sz, sh, sw = volume.spacing
    if max(sh, sw) / min(sh, sw) > SPACING_WARN_RATIO:
        out.append(
            f"{where}: in-plane pixels are {sh:.2f} x {sw:.2f} mm, not square (after reorienting: an axial "
            "scan is expected, is this one sagittal or coronal?); the model was trained on square pixels"
        )
    trained = TRAINING_SPACING.get(dataset)
    if trained is None:
        return out
    (lo, hi), native, (z_lo, z_hi) = trained
    mm = float(np.sqrt(sh * sw))
    if mm > hi * 2 or mm < lo / 2:
        out.append(
            f"{where}: in-plane spacing {mm:.2f} mm is far outside the {lo:g}-{hi:g} mm the model was trained on "
            f"({dataset}); it is resampled, but results may degrade"
        )
    ratio = sz / mm
    if ratio > (z_hi / lo) * 2 or ratio < (z_lo / hi) / 2:
        out.append(
            f"{where}: slices {sz:.2f} mm apart for {mm:.2f} mm pixels (ratio {ratio:.1f}); the model was trained "
            f"on ratios {z_lo / hi:.1f}-{z_hi / lo:.1f} ({dataset}), results may degrade"
        )
    if spacing is None and what == "support":  # the query is resampled to the support's pixel size
        seen = (lo * native / size, hi * native / size)
        pixel = float(np.sqrt(np.prod(_grid_pixel(volume, grid))))
        if pixel > seen[1] * SPACING_WARN_RATIO or pixel < seen[0] / SPACING_WARN_RATIO:
            out.append(
                f"{where}: the model sees {pixel:.2f} mm pixels (the support's field of view over {size} px); it was "
                f"trained on {seen[0]:.2f}-{seen[1]:.2f} mm ({dataset} at {size} px): give a support with a field of "
                f"view near {hi * native:.0f} mm, or train with data.spacing"
            )
    return out


def segment_files(
    *,
    checkpoint: str | Path | Sequence[str | Path] | Bundle,
    support: str | Path,
    support_mask: str | Path,
    organ: str,
    query: str | Path,
    out: str | Path,
    label_map: str | LabelMap | None = None,
    modality: Modality | None = None,
    shots: int = 1,
    chunks: int = 3,
    query_range: tuple[int, int] | None = None,
    allow_spacing_mismatch: bool = False,
    device: str | None = None,
    overwrite: bool = False,
    fg_threshold: float | None = None,
    tta: str | None = None,
    finetune: Any = None,
    intensity_prior: float | None = None,
    postprocess: str | None = None,
) -> dict[str, Any]:
    """Segment ``organ`` in ``query`` from an annotated ``support``; write ``out`` (NIfTI, as the query is stored).

    ``support`` and ``query`` are NIfTI files or folders holding one DICOM series, in any orientation and
    spacing (see the module docstring); ``allow_spacing_mismatch`` is accepted and no longer needed.

    ``checkpoint``: a trained model folder (:class:`~fewshot.recipes.Bundle`: the members of the organ's label
    group with the bundle's inference settings, the arguments given here replacing them), one trained model, or
    several segmenting as one ensemble (the mean of their foreground probabilities;
    :func:`~fewshot.checkpoint.load_model_from_checkpoints` checks they share their data setup).
    ``support_mask`` is binary, or a label volume read with ``label_map`` (``chaos-mr``,
    ``btcv-ct``, ``phantom`` or a :class:`LabelMap`). ``postprocess`` (``none``, ``lcc``: the 3D largest connected
    component) is applied to the prediction on the query's own grid, as evaluation applies it to the scans it
    scores; ``None``: the bundle's ``inference.postprocess``, ``none`` for checkpoints. Returns a report (slices,
    voxels, volume in ml).
    """
    from fewshot.checkpoint import load_model_from_checkpoints
    from fewshot.device import default_device
    from fewshot.evaluation.postprocess import check_postprocess
    from fewshot.evaluation.postprocess import postprocess as apply_postprocess
    from fewshot.evaluation.scoring import model_finetune, model_intensity_prior, model_threshold, model_tta

    t0 = time.perf_counter()
    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise ValueError(f"--out {out}: the prediction is written as NIfTI; name it .nii.gz or .nii")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    for name, path in (("--support", support), ("--support-mask", support_mask), ("--query", query)):
        _check_nifti_input(name, Path(path))
    organ = check_organ_name(organ)
    if postprocess is None:
        postprocess = checkpoint.inference.postprocess if isinstance(checkpoint, Bundle) else "none"
    check_postprocess(postprocess)
    dev = default_device(device)
    settings = {"fg_threshold": fg_threshold, "tta": tta, "intensity_prior": intensity_prior}
    if isinstance(checkpoint, Bundle):  # a trained model folder: the group holding the organ, its settings
        bundle = checkpoint
        loaded = bundle.load(bundle.group_of(organ), map_location=dev, inference=settings)
        finetune = bundle.finetune_settings(dataclasses.asdict(finetune) if hasattr(finetune, "steps") else finetune)
    else:
        loaded = load_model_from_checkpoints(checkpoint, map_location=dev, inference=settings)
    model, extras = loaded.model, loaded.payload
    checkpoint = loaded.path  # one file, or the ensemble's files
    trained_mod = extras.get("modality")
    mod: Modality = modality or trained_mod or "MR"
    if trained_mod is not None and mod != trained_mod:
        raise ValueError(
            f"{checkpoint} was trained on {trained_mod} scans; it cannot segment {mod} scans (the intensity "
            f"normalisation and the features are modality-specific): use a model trained on {mod}"
        )
    size = loaded.config.data.size
    channels = loaded.config.model.backbone.in_channels
    if label_map is None:
        lm = LabelMap("binary", {organ: 1})
    else:
        lm = get_label_map(label_map) if isinstance(label_map, str) else label_map
    sup = load_scan(support, subject="support", modality=mod, label_map=lm, mask=support_mask)
    assert sup.label is not None
    found = sorted(np.unique(sup.label).tolist())
    if label_map is None and len(found) == 2 and found[0] == 0 and found[1] > 1:
        raise VolumeError(
            f"{support_mask}: a binary mask with foreground value {found[1]} (not 1); save it as 0/1 "
            f"(e.g. mask // {found[1]}); --label-map is for label volumes of several organs"
        )
    if label_map is None and not set(found) <= {0, 1}:
        raise VolumeError(
            f"{support_mask}: mask has labels {sorted(np.unique(sup.label).tolist())}; pass --label-map "
            "(chaos-mr, btcv-ct, phantom) so the organ name can be resolved"
        )
    if not sup.has_organ(organ):
        raise VolumeError(
            f"{support_mask}: organ {organ!r} (label {lm.value(organ)}) is absent from the support mask"
        )
    qry = load_scan(query, subject="query", modality=mod, label_map=lm)
    check_same_modality(sup, qry)
    for name, vol in (("support", sup), ("query", qry)):
        if vol.modality != mod:
            raise VolumeError(f"{name} {vol.source} is a {vol.modality} series (DICOM Modality) but the model is for {mod}")
        check_intensities(vol.image, mod, f"{name} {vol.source}")
    stats = extras.get("norm_stats")
    ct_stats = NormStats(**stats) if stats else None
    if mod == "CT" and ct_stats is None:
        raise ValueError(
            f"{checkpoint} was trained on {extras.get('modality')} data and stores no CT statistics"
        )
    data_cfg = loaded.config.data
    sup_grid, qry_grid = model_grids(sup, qry, size, data_cfg.spacing)
    warnings = [
        *spacing_warnings(sup, "support", sup_grid, data_cfg.dataset, size, data_cfg.spacing),
        *spacing_warnings(qry, "query", qry_grid, data_cfg.dataset, size, data_cfg.spacing),
    ]
    if allow_spacing_mismatch:
        logger.debug("allow_spacing_mismatch is no longer needed: the query is resampled to the model's pixel size")
    sup_p = _on_grid(preprocess(sup, size=None, ct_stats=ct_stats, stats_window=_fov_window(sup_grid, size)), sup_grid)
    qry_p = _on_grid(preprocess(qry, size=None, ct_stats=ct_stats, stats_window=_fov_window(qry_grid, size)), qry_grid)
    assert sup_p.label is not None
    pred = segment_volume(
        model,
        sup_p,
        sup_p.label == lm.value(organ),
        qry_p,
        shots=shots,
        chunks=chunks,
        query_range=query_range,
        channels=channels,
        device=dev,
        fg_threshold=fg_threshold,
        tta=tta,
        finetune=finetune,
        organ=organ,
        intensity_prior=intensity_prior,
    )
    pred = apply_postprocess(qry_grid.invert(pred), postprocess)
    value = lm.value(organ)
    labels = np.zeros(qry.shape, np.uint8)  # the prediction is on the query's stored grid (qry_grid.invert)
    labels[pred] = value
    del pred
    pred = labels > 0
    save_nifti(labels, qry, out, overwrite=overwrite)
    voxels = int(pred.sum())
    volume_ml = voxels * float(np.prod(qry.spacing)) / 1000.0
    warnings += plausibility_warnings(organ, volume_ml, voxels / pred.size)
    for w in warnings:
        logger.warning("%s", w)
    return {
        "out": str(out),
        "organ": organ,
        "label_value": value,
        "modality": mod,
        "query_shape": list(qry.shape),
        "query_orientation": "".join(qry.source_geometry.axcodes) if qry.source_geometry is not None else None,
        "model_grid": {
            "pixel_mm": [round(p, 4) for p in _grid_pixel(sup, sup_grid)],
            "size": sup_grid.size,
            "query_resampled_to": list(qry_grid.scaled),
        },
        "slices_with_prediction": int(pred.any(axis=(1, 2)).sum()),
        "voxels": voxels,
        "volume_ml": volume_ml,
        "checkpoints": [str(m["checkpoint"]) for m in extras["ensemble"]] if "ensemble" in extras else [loaded.path],
        "fg_threshold": model_threshold(model, fg_threshold),
        "tta": model_tta(model, tta),
        "finetune": model_finetune(model, finetune).to_dict(),
        "intensity_prior": model_intensity_prior(model, intensity_prior),
        "postprocess": postprocess,
        "warnings": warnings,
        "seconds": time.perf_counter() - t0,
    }
