"""Segment a new scan from one annotated scan (``fewshot segment``).

The support scan's organ slices are split into ``chunks`` parts and the middle slice of each
part (k-shot: ``k`` slices spread evenly) is the support for the query slices in the matching
part of the query range, as in the evaluation protocol. Without ``query_range`` the whole query
volume is the range; give the organ's approximate slice range for protocol-like results.

Geometry: both scans are preprocessed like the training data (intensity normalisation, slices
resized to the training size); the prediction is resized back (nearest) to the query's own
grid and written with the query's affine, so it overlays the scan in 3D Slicer / ITK-SNAP.
In-plane pixel sizes of support and query (after resizing) must agree within a factor of
1.5: prototype matching compares features at one scale. A larger mismatch is refused unless
``allow_spacing_mismatch`` (results then degrade).
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
import torch.nn.functional as F
from torch import nn

from episodes.data.labels import LabelMap, canonical_organ, get_label_map, known_organs
from episodes.data.preprocess import NormStats, preprocess
from episodes.data.slices import stack_slices
from episodes.data.volumes import Modality, Volume, VolumeError, load_nifti_pair, save_nifti
from episodes.protocol import query_chunk, support_slice_indices
from fewshot.recipes.bundle import Bundle

__all__ = [
    "MAX_SPACING_RATIO",
    "check_intensities",
    "check_organ_name",
    "plausibility_warnings",
    "segment_files",
    "segment_volume",
]

logger = logging.getLogger("fewshot")

MAX_SPACING_RATIO = 1.5

#: Slices preprocessed (and predictions resized back) at a time: a large CT's full-resolution float copies
#: would otherwise each take its whole size (``benchmarks/bench_segment_memory.py``).
SLAB = 32


def _preprocess_slabs(volume: Volume, size: int, ct_stats: NormStats | None) -> Volume:
    """:func:`~episodes.data.preprocess.preprocess` ``SLAB`` slices at a time (CT: voxel-wise and per slice,
    so the result is the same; MR normalises with whole-volume statistics and is done in one piece)."""
    if volume.modality != "CT" or volume.shape[0] <= SLAB:
        return preprocess(volume, size=size, ct_stats=ct_stats)
    parts = [
        preprocess(volume.with_arrays(volume.image[z : z + SLAB], None if volume.label is None else
                                      volume.label[z : z + SLAB]), size=size, ct_stats=ct_stats)
        for z in range(0, volume.shape[0], SLAB)
    ]
    label = None if volume.label is None else np.concatenate([p.label for p in parts if p.label is not None])
    return parts[0].with_arrays(np.concatenate([p.image for p in parts]), label)


def _geometry_only(volume: Volume) -> Volume:
    """``volume`` without its voxels (a zero-stride view): keeps the shape, affine and spacing for writing."""
    return volume.with_arrays(np.broadcast_to(np.float32(0), volume.shape), None)


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
        raise ValueError(
            f"{option} {path} is a folder; segment reads NIfTI files (.nii/.nii.gz). Convert a DICOM series "
            "first (e.g. dcm2niix), or evaluate CHAOS DICOM folders with `fewshot evaluate --dataset chaos-dicom`"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path} not found")


def check_intensities(image: np.ndarray, modality: str, what: str) -> None:
    """Refuse a scan whose values do not look like ``modality`` (CT in HU has air near -1000; MR is >= 0)."""
    flat = image.reshape(-1)
    lo = float(np.percentile(flat[:: max(1, flat.size // 4_000_000)], 1))  # a large scan: a strided sample
    if modality == "CT" and lo > -300:
        raise ValueError(
            f"{what} does not look like CT in Hounsfield units (1st percentile {lo:.0f}, air is about -1000); "
            "is it an MR scan? Use a model trained on MR, or give CT scans in HU"
        )
    if modality == "MR" and lo < -300:
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


def _in_plane_pixel(v: Volume, size: int) -> float:
    return float(np.sqrt(v.spacing[1] * v.spacing[2]) * np.sqrt(v.shape[1] * v.shape[2]) / size)


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
) -> dict[str, Any]:
    """Segment ``organ`` in the NIfTI ``query`` from an annotated NIfTI ``support``; write ``out``.

    ``checkpoint``: a trained model folder (:class:`~fewshot.recipes.Bundle`: the members of the organ's label
    group with the bundle's inference settings, the arguments given here replacing them), one trained model, or
    several segmenting as one ensemble (the mean of their foreground probabilities;
    :func:`~fewshot.checkpoint.load_model_from_checkpoints` checks they share their data setup).
    ``support_mask`` is binary, or a label volume read with ``label_map`` (``chaos-mr``,
    ``btcv-ct``, ``phantom`` or a :class:`LabelMap`). Returns a report (slices, voxels, volume in ml).
    """
    from fewshot.checkpoint import load_model_from_checkpoints
    from fewshot.device import default_device
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
    dev = default_device(device)
    settings = {"fg_threshold": fg_threshold, "tta": tta, "intensity_prior": intensity_prior}
    if isinstance(checkpoint, Bundle):  # a trained model folder: the group holding the organ, its settings
        bundle = checkpoint
        loaded = bundle.load(bundle.group_of(organ), map_location=dev, inference=settings)
        given = dict(finetune or {}) if not hasattr(finetune, "steps") else dataclasses.asdict(finetune)
        finetune = {**dataclasses.asdict(bundle.inference.finetune), **{k: v for k, v in given.items() if v is not None}}
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
    sup = load_nifti_pair(
        support,
        support_mask,
        subject="support",
        modality=mod,
        label_map=lm,
        intensity="hu" if mod == "CT" else "raw",
    )
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
    qry = load_nifti_pair(
        query, None, subject="query", modality=mod, label_map=lm, intensity="hu" if mod == "CT" else "raw"
    )
    for name, path, vol in (("support", support, sup), ("query", query, qry)):
        check_intensities(vol.image, mod, f"{name} {path}")
    ps, pq = _in_plane_pixel(sup, size), _in_plane_pixel(qry, size)
    ratio = max(ps, pq) / min(ps, pq)
    if ratio > MAX_SPACING_RATIO and not allow_spacing_mismatch:
        raise VolumeError(
            f"in-plane pixel size after resizing to {size}: support {ps:.2f} mm, query {pq:.2f} mm (ratio "
            f"{ratio:.2f} > {MAX_SPACING_RATIO}); resample one scan or pass --allow-spacing-mismatch"
        )
    stats = extras.get("norm_stats")
    ct_stats = NormStats(**stats) if stats else None
    if mod == "CT" and ct_stats is None:
        raise ValueError(
            f"{checkpoint} was trained on {extras.get('modality')} data and stores no CT statistics"
        )
    sup_p = _preprocess_slabs(sup, size, ct_stats)
    qry_p = _preprocess_slabs(qry, size, ct_stats)
    qry = _geometry_only(qry)  # the full-resolution voxels are no longer needed
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
    value = lm.value(organ)
    labels = np.zeros(qry.shape, np.uint8)
    for z in range(0, pred.shape[0], SLAB):  # resized back to the query's grid a slab at a time
        part = pred[z : z + SLAB]
        if part.shape[1:] != qry.shape[1:]:
            t = torch.from_numpy(part.astype(np.float32))[:, None]
            part = F.interpolate(t, size=qry.shape[1:], mode="nearest")[:, 0].numpy() > 0.5
        labels[z : z + SLAB][part] = value
    del pred
    pred = labels > 0
    save_nifti(labels, qry, out, overwrite=overwrite)
    voxels = int(pred.sum())
    volume_ml = voxels * float(np.prod(qry.spacing)) / 1000.0
    warnings = plausibility_warnings(organ, volume_ml, voxels / pred.size)
    for w in warnings:
        logger.warning("%s", w)
    return {
        "out": str(out),
        "organ": organ,
        "label_value": value,
        "modality": mod,
        "query_shape": list(qry.shape),
        "slices_with_prediction": int(pred.any(axis=(1, 2)).sum()),
        "voxels": voxels,
        "volume_ml": volume_ml,
        "checkpoints": [str(m["checkpoint"]) for m in extras["ensemble"]] if "ensemble" in extras else [loaded.path],
        "fg_threshold": model_threshold(model, fg_threshold),
        "tta": model_tta(model, tta),
        "finetune": model_finetune(model, finetune).to_dict(),
        "intensity_prior": model_intensity_prior(model, intensity_prior),
        "warnings": warnings,
        "seconds": time.perf_counter() - t0,
    }
