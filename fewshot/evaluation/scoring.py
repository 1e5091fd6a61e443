"""Protocol evaluation: 3D Dice per query scan with the SSL-ALPNet chunk protocol.

For each organ of an :class:`~episodes.protocol.EvaluationPlan` and each query scan, every
scored slice is segmented with the support slices of its chunk (support batch 1,
broadcast over a batch of query slices), the foreground of ``argmax`` is compared with
the ground truth, and TP/FP/FN are summed over the scan's scored slices before Dice,
precision and recall are taken (:mod:`fewshot.evaluation.metrics`). Organ score = mean
over query scans; ``mean`` = mean over organs (:mod:`fewshot.evaluation.results`).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from episodes.data.labels import LabelMap
from episodes.data.volumes import Volume
from episodes.progress import Progress
from episodes.protocol import EvaluationPlan, OrganPlan, query_tensors, support_episode_tensors
from fewshot.evaluation.finetune import finetune_on_support
from fewshot.evaluation.intensity import intensity_of, intensity_veto
from fewshot.evaluation.metrics import Counts, ScanScore, confusion_counts
from fewshot.evaluation.postprocess import check_postprocess
from fewshot.evaluation.postprocess import postprocess as apply_postprocess
from fewshot.evaluation.results import EvaluationResult, summarize_scans

if TYPE_CHECKING:
    from fewshot.config.model import FinetuneConfig

__all__ = [
    "TunedModels", "chunk_model", "evaluate", "false_positive_regions", "model_channels", "model_finetune",
    "model_intensity_prior", "model_slice_input", "model_threshold", "model_tta", "predict_query",
]


def model_channels(model: nn.Module, channels: int | None) -> int:
    if channels is not None:
        return channels
    backbone = getattr(getattr(model, "config", None), "backbone", None)
    if backbone is None or not hasattr(backbone, "in_channels"):
        raise ValueError("model has no config.backbone.in_channels; pass channels=")
    return int(backbone.in_channels)


def model_slice_input(model: nn.Module) -> str:
    """How the model takes a slice (``config.slice_input``; ``"tile"`` for a model without one)."""
    value = getattr(getattr(model, "config", None), "slice_input", None)
    return "tile" if value is None else str(value)


def false_positive_regions(
    pred: np.ndarray, labels: np.ndarray, label_map: LabelMap, organ_value: int
) -> dict[str, int]:
    """Where the false positives of an organ's prediction lie: ``{region: voxels}``.

    ``pred`` ``(Z, H, W)`` bool and ``labels`` ``(Z, H, W)`` int (all organs' ground truth) of the scored
    slices; a region is another organ of ``label_map``, ``"background"`` (label 0) or ``"label <v>"`` for a
    value the map does not name. Tells over-segmentation into the neighbours (e.g. a kidney into the
    liver) from leaks into unlabelled tissue.
    """
    values = labels[pred & (labels != organ_value)].astype(np.int64, copy=False)
    if values.size == 0:
        return {}
    if values.min() < 0:
        raise ValueError("labels must be non-negative")
    names = {0: "background", **{v: organ for organ, v in label_map.organs.items()}}
    counts = np.bincount(values)
    return {names.get(v, f"label {v}"): int(counts[v]) for v in np.flatnonzero(counts).tolist()}


def model_threshold(model: nn.Module, threshold: float | None) -> float:
    """``threshold`` if given, else the model's ``config.fg_threshold`` (0.5, the argmax, if it has none)."""
    from fewshot.config.model import check_threshold

    if threshold is None:
        threshold = getattr(getattr(model, "config", None), "fg_threshold", None)
    return 0.5 if threshold is None else check_threshold(threshold)


def model_tta(model: nn.Module, tta: str | None) -> str:
    """``tta`` if given, else the model's ``config.tta`` (``"none"`` if it has none)."""
    from fewshot.config.model import check_tta

    if tta is None:
        tta = getattr(getattr(model, "config", None), "tta", None)
    return "none" if tta is None else check_tta(tta)


def model_intensity_prior(model: nn.Module, weight: float | None) -> float:
    """``weight`` if given, else the model's ``config.intensity_prior`` (``0.0``, off, if it has none)."""
    from fewshot.config.model import check_intensity_prior

    if weight is None:
        weight = getattr(getattr(model, "config", None), "intensity_prior", None)
    return 0.0 if weight is None else check_intensity_prior(weight)


def model_finetune(model: nn.Module, finetune: Any = None) -> FinetuneConfig:
    """The model's ``config.finetune`` (off if it has none), or ``finetune``: a
    :class:`~fewshot.config.model.FinetuneConfig`, or a mapping of the fields to change in the model's."""
    from fewshot.config.model import check_finetune

    own = getattr(getattr(model, "config", None), "finetune", None)
    return check_finetune(finetune, base=check_finetune(own))


#: Fine-tuned copies kept by ``(organ, chunk)`` (:func:`chunk_model`'s ``cache``).
TunedModels = dict[tuple[str, int], nn.Module]


def chunk_model(
    model: nn.Module, support_images: torch.Tensor, support_masks: torch.Tensor, finetune: FinetuneConfig, organ: str,
    chunk: int, device: torch.device | str, *, cache: TunedModels | None = None,
) -> nn.Module:
    """The model one organ's chunk is segmented with: ``model`` itself, or with ``finetune.steps > 0`` a copy
    fine-tuned on the chunk's support set (:func:`~fewshot.evaluation.finetune_on_support`), seeded from
    ``finetune.seed``, the organ and the chunk (so scoring, overlays and ``fewshot segment`` tune the same copy).
    ``cache``: a copy found under ``(organ, chunk)`` is returned as it is; a new one is stored there (so overlays
    reuse the scoring's copies instead of tuning them again)."""
    if finetune.steps == 0:
        return model
    if cache is not None and (organ, chunk) in cache:
        return cache[(organ, chunk)]
    seed = int(np.random.SeedSequence([finetune.seed, zlib.crc32(organ.encode()), chunk]).generate_state(1)[0])
    tuned = finetune_on_support(model, support_images, support_masks, finetune, device=device, seed=seed)
    if cache is not None:
        cache[(organ, chunk)] = tuned
    return tuned


def predict_query(
    model: nn.Module,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
    query_images: torch.Tensor,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    out_size: tuple[int, int] | None = None,
    threshold: float | None = None,
    tta: str | None = None,
    intensity_prior: float | None = None,
) -> torch.Tensor:
    """Foreground masks ``(N, H, W)`` bool of ``query_images (N, C, H, W)`` given one support set.

    ``support_images (1, K, C, H, W)`` / ``support_masks (1, K, H, W)`` are broadcast over
    query batches of ``batch_size``. ``out_size``: upsample the logits (bilinear) to this size
    before thresholding (masks are then ``(N, *out_size)``), to score against native-resolution labels.
    ``threshold``: a pixel is foreground where ``softmax(logits)[1] > threshold`` (default
    ``model.config.fg_threshold``, else 0.5 = the argmax). ``tta``: ``"flip"`` averages the logits with those
    of the episode mirrored left-right (support and query), mirrored back (default ``model.config.tta``, else
    ``"none"``). ``intensity_prior``: weight ``w``; ``w`` times the negative part of the log-likelihood ratio of
    each query pixel's intensity under the support set's organ and background histograms
    (:func:`~fewshot.evaluation.intensity.intensity_veto`) is added to the logit margin ``fg - bg`` before the
    threshold, so intensities unlike the support's organ lose foreground (default ``model.config.intensity_prior``,
    else 0 = off).
    """
    # inference mode as a block, not a decorator: mutmut (docs/development.md) skips decorated functions
    with torch.inference_mode():
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # softmax([bg, fg])[1] > t  <=>  fg - bg > log(t / (1 - t)); t = 0.5 is the argmax (ties -> bg)
        t = model_threshold(model, threshold)
        flip = model_tta(model, tta) == "flip"
        weight = model_intensity_prior(model, intensity_prior)
        margin = math.log(t / (1.0 - t))
        device = torch.device(device)
        s_img, s_msk = support_images.to(device), support_masks.to(device)
        if weight > 0 and s_img.shape[0] != 1:
            raise ValueError(f"intensity_prior needs one support set (support batch 1), got {s_img.shape[0]}")
        out = []
        for start in range(0, query_images.shape[0], batch_size):
            q = query_images[start : start + batch_size].to(device)
            with torch.autocast(device_type=device.type, enabled=amp):
                logits = model(s_img, s_msk, q).logits
                if flip:
                    mirrored = model(s_img.flip(-1), s_msk.flip(-1), q.flip(-1)).logits.flip(-1)
                    logits = (logits.float() + mirrored.float()) / 2
            if weight > 0:  # the margin with the prior, then resized (bilinear is linear: the same as resizing both)
                diff = logits[:, 1].float() - logits[:, 0].float()
                diff = diff + weight * intensity_veto(intensity_of(s_img[0]), s_msk[0], intensity_of(q))
                if out_size is not None and tuple(diff.shape[-2:]) != tuple(out_size):
                    diff = F.interpolate(diff[:, None], size=out_size, mode="bilinear", align_corners=False)[:, 0]
                out.append((diff > margin).cpu())
                continue
            if out_size is not None and tuple(logits.shape[-2:]) != tuple(out_size):
                logits = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False)
            out.append((logits[:, 1] - logits[:, 0] > margin).cpu())
        if not out:
            return torch.zeros((0, *(out_size or query_images.shape[-2:])), dtype=torch.bool)
        return torch.cat(out)


def _evaluate_organ(
    model: nn.Module,
    plan: OrganPlan,
    volumes: Mapping[str, Volume],
    channels: int,
    slice_input: str,
    batch_size: int,
    device: torch.device,
    amp: bool,
    bar: Progress,
    postprocess: Sequence[str],
    reference: Mapping[str, Volume] | None,
    threshold: float,
    tta: str,
    finetune: FinetuneConfig,
    tuned: TunedModels | None,
    intensity_prior: float,
) -> tuple[dict[str, list[ScanScore]], int, dict[str, int]]:
    """Scores per post-processing step, scored slices and false-positive voxels by true region."""
    supports = [
        support_episode_tensors(plan, volumes, c, channels=channels, slice_input=slice_input)
        for c in range(len(plan.support_slices))
    ]
    models = [
        chunk_model(model, *support, finetune, plan.organ, c, device, cache=tuned) for c, support in enumerate(supports)
    ]
    scores: dict[str, list[ScanScore]] = {name: [] for name in postprocess}
    fp_regions: dict[str, int] = {}
    n_slices = 0
    for query in plan.queries:
        images, masks, chunks = query_tensors(
            query, volumes, plan.label_value, channels=channels, slice_input=slice_input
        )
        source = volumes[query.subject] if reference is None else reference[query.subject]
        if source.label is None:  # only a reference can lack labels: query_tensors checked the volume
            raise ValueError(f"reference volume {query.subject} has no labels")
        labels = source.label[list(query.slices)]
        truth = labels == plan.label_value
        out_size = (int(truth.shape[1]), int(truth.shape[2])) if reference is not None else None
        pred = torch.zeros((len(query.slices), *(out_size or masks.shape[-2:])), dtype=torch.bool)
        for c, (s_img, s_msk) in enumerate(supports):
            idx = torch.nonzero(chunks == c).flatten()
            if idx.numel():
                pred[idx] = predict_query(
                    models[c], s_img, s_msk, images[idx], batch_size=batch_size, device=device, amp=amp,
                    out_size=out_size, threshold=threshold, tta=tta, intensity_prior=intensity_prior,
                )
        bad = sorted(set(chunks.tolist()) - set(range(len(supports))))
        if bad:
            raise ValueError(
                f"query {query.subject}: chunks {bad} have no support (plan has {len(supports)})"
            )
        for i, name in enumerate(postprocess):
            mask = apply_postprocess(pred.numpy(), name)
            counts = confusion_counts(mask, truth)
            scores[name].append(
                ScanScore(subject=query.subject, organ=plan.organ, counts=counts, n_slices=len(query.slices))
            )
            if i == 0:
                for region, n in false_positive_regions(mask, labels, source.label_map, plan.label_value).items():
                    fp_regions[region] = fp_regions.get(region, 0) + n
        n_slices += len(query.slices)
        bar.update(1, note=plan.organ)
    return scores, n_slices, fp_regions


def evaluate(
    model: nn.Module,
    plan: EvaluationPlan,
    volumes: Mapping[str, Volume],
    *,
    batch_size: int = 16,
    device: torch.device | str | None = None,
    channels: int | None = None,
    amp: bool | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool = False,
    postprocess: str | Sequence[str] = "none",
    reference: Mapping[str, Volume] | None = None,
    threshold: float | None = None,
    tta: str | None = None,
    finetune: FinetuneConfig | Mapping[str, Any] | None = None,
    tuned: TunedModels | None = None,
    intensity_prior: float | None = None,
) -> EvaluationResult:
    """Score ``model`` on ``plan``.

    Args:
        model: ``FewShotSegmenter``-like (``model(s_img, s_msk, q).logits (N, 2, H, W)``).
        plan: the fold's evaluation plan.
        volumes: ``{subject: preprocessed labelled Volume}`` for the plan's support and queries.
        batch_size: query slices per forward pass.
        device: default: the model's device.
        channels: input channels (default ``model.config.in_channels``).
        amp: autocast (default: on for CUDA).
        config: experiment config stored in the result.
        progress: report each scored query scan on stderr (:class:`episodes.progress.Progress`).
        postprocess: a step of :mod:`fewshot.evaluation.postprocess` (``"none"``, ``"lcc"``) applied to
            each scan's prediction, or several: the first gives the result's scores, every one is
            summarised in ``extras["postprocess"]`` (one forward pass for all).
        reference: ``{subject: Volume}`` whose labels are the ground truth instead of ``volumes``'
            (e.g. the native 256-px labels when the model runs at 128 px): logits are upsampled
            (bilinear) to the reference size before thresholding. Slices must correspond one to one.
        threshold: foreground probability threshold (default ``model.config.fg_threshold``, else 0.5 =
            argmax), recorded in ``extras["threshold"]``.
        tta: test-time augmentation, ``"none"`` or ``"flip"`` (default ``model.config.tta``, else ``"none"``),
            recorded in ``extras["tta"]``.
        finetune: test-time fine-tuning on each support set (a :class:`~fewshot.config.model.FinetuneConfig` or a
            mapping of its fields; default ``model.config.finetune``, else off), recorded in ``extras["finetune"]``.
        tuned: a dict that receives the fine-tuned copies by ``(organ, chunk)`` (and whose copies are used as they
            are): pass the same dict to :func:`~fewshot.evaluation.save_overlays` to picture the scored copies.
        intensity_prior: weight of the support-intensity prior (default ``model.config.intensity_prior``, else 0 =
            off; see :func:`predict_query`), recorded in ``extras["intensity_prior"]``.
    """
    from fewshot import __version__

    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    channels = model_channels(model, channels)
    threshold = model_threshold(model, threshold)
    tta = model_tta(model, tta)
    tune = model_finetune(model, finetune)
    prior = model_intensity_prior(model, intensity_prior)
    was_training = model.training
    model.eval().to(device)
    t0 = time.perf_counter()
    per_organ: dict[str, list[Mapping[str, Any]]] = {}
    all_scores: list[ScanScore] = []
    n_slices = 0
    steps = (postprocess,) if isinstance(postprocess, str) else tuple(postprocess)
    if not steps:
        raise ValueError("postprocess: give at least one step (e.g. 'none')")
    for name in steps:
        check_postprocess(name)  # unknown names fail before any work
    variants: dict[str, dict[str, list[Mapping[str, Any]]]] = {name: {} for name in steps}
    fp_regions: dict[str, dict[str, int]] = {}
    bar = Progress(sum(len(o.queries) for o in plan.organs), "evaluate", unit="scans", enabled=progress)
    try:
        for organ_plan in plan.organs:
            by_step, n, fp_regions[organ_plan.organ] = _evaluate_organ(
                model, organ_plan, volumes, channels, model_slice_input(model), batch_size, device, amp, bar, steps,
                reference, threshold, tta, tune, tuned, prior,
            )
            scores = by_step[steps[0]]
            if not scores:
                raise ValueError(f"organ {organ_plan.organ!r}: the plan has no query scan")
            for name in steps:
                variants[name][organ_plan.organ] = [s.to_dict() for s in by_step[name]]
            per_organ[organ_plan.organ] = variants[steps[0]][organ_plan.organ]
            all_scores += scores
            n_slices += n
    finally:
        bar.close()
        model.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    summary = summarize_scans(per_organ)
    total = sum((s.counts for s in all_scores), Counts(0, 0, 0))
    return EvaluationResult(
        dice=summary["dice"],
        precision=summary["precision"],
        recall=summary["recall"],
        per_scan=tuple(s.to_dict() for s in all_scores),
        config=dict(config or {}),
        library_version=__version__,
        extras={
            "protocol": plan.protocol.to_dict(),
            "split": {
                "train": list(plan.split.train),
                "support": plan.split.support,
                "queries": list(plan.split.queries),
            },
            "counts": {"tp": total.tp, "fp": total.fp, "fn": total.fn},
            "postprocess": {name: summarize_scans(v) for name, v in variants.items()},
            "resolution": "reference labels" if reference is not None else "model input",
            "threshold": threshold,
            "tta": tta,
            "finetune": tune.to_dict(),
            "intensity_prior": prior,
            # false-positive voxels of each organ's (first post-processing step's) prediction, by true region
            "false_positives": {o: dict(sorted(r.items(), key=lambda kv: -kv[1])) for o, r in fp_regions.items()},
            "timing": {
                "seconds": seconds,
                "scans": len(all_scores),
                "slices": n_slices,
                "scans_per_s": len(all_scores) / seconds if seconds > 0 else 0.0,
                "slices_per_s": n_slices / seconds if seconds > 0 else 0.0,
                "device": str(device),
                "batch_size": batch_size,
                "amp": amp,
            },
        },
    )
