"""Overlay pictures of predictions: support, query, prediction and ground truth side by side."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from episodes.atomic import atomic_writer
from episodes.data.volumes import Volume
from episodes.protocol import EvaluationPlan, query_tensors, support_episode_tensors
from fewshot.evaluation.scoring import (
    TunedModels,
    chunk_model,
    model_channels,
    model_finetune,
    model_slice_input,
    predict_query,
)

__all__ = ["save_overlays"]


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return (np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    rgb = np.repeat(_grey(image)[..., None], 3, axis=-1).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color, dtype=np.float32)
    return rgb.astype(np.uint8)


_PANEL_MIN = 192  # panels are upscaled (nearest) to at least this many pixels, so titles fit
_TITLE_H = 18


def _font(size: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _titled(panel: np.ndarray, title: str, scale: int) -> np.ndarray:
    """``panel`` upscaled ``scale`` times under a white strip holding ``title``."""
    from PIL import Image, ImageDraw

    big = np.kron(panel, np.ones((scale, scale, 1), dtype=np.uint8))
    strip = Image.new("RGB", (big.shape[1], _TITLE_H), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 2), title, fill=(0, 0, 0), font=_font(12))
    return np.concatenate([np.asarray(strip), big], axis=0)


def compose_overlay(
    support: tuple[np.ndarray, np.ndarray],
    query: np.ndarray,
    prediction: np.ndarray,
    truth: np.ndarray,
    heading: str,
) -> np.ndarray:
    """One ``(H', W', 3)`` uint8 picture: a heading line, then titled panels support (mask in blue) |
    query | prediction (red) | ground truth (green)."""
    from PIL import Image, ImageDraw

    scale = max(1, -(-_PANEL_MIN // query.shape[0]))
    panels = [
        _titled(_overlay(support[0], support[1], (0, 200, 255)), "support + mask", scale),
        _titled(_overlay(query, np.zeros_like(prediction), (0, 0, 0)), "query", scale),
        _titled(_overlay(query, prediction, (255, 60, 60)), "prediction", scale),
        _titled(_overlay(query, truth, (60, 255, 60)), "ground truth", scale),
    ]
    sep = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=1)
    head = Image.new("RGB", (row.shape[1], _TITLE_H + 4), (255, 255, 255))
    ImageDraw.Draw(head).text((4, 3), heading, fill=(0, 0, 0), font=_font(13))
    return np.concatenate([np.asarray(head), row], axis=0)


def save_overlays(
    model: nn.Module,
    plan: EvaluationPlan,
    volumes: Mapping[str, Volume],
    out_dir: str | os.PathLike[str],
    *,
    n: int = 4,
    device: torch.device | str | None = None,
    channels: int | None = None,
    scan_dice: Mapping[tuple[str, str], float] | None = None,
    threshold: float | None = None,
    tta: str | None = None,
    finetune: Any = None,
    tuned: TunedModels | None = None,
    intensity_prior: float | None = None,
) -> list[Path]:
    """PNG pictures ``support | query | prediction | ground truth`` for ``n`` slices per organ.

    Slices are spread evenly over the first query scan's scored range. Each picture is headed by
    the organ, the support and query subjects, the slice and (from ``scan_dice``,
    ``{(organ, subject): dice}``) the 3D Dice of that query scan. ``threshold``: foreground probability
    threshold (default the model's ``config.fg_threshold``); ``tta``: test-time augmentation (default the model's
    ``config.tta``); ``finetune``: test-time fine-tuning (default the model's ``config.finetune``; each chunk's
    copy is tuned with the seed :func:`~fewshot.evaluation.evaluate` uses, so the pictures show its predictions);
    ``tuned``: the copies :func:`~fewshot.evaluation.evaluate` kept (its ``tuned`` dict), used instead of tuning
    again; ``intensity_prior``: the support-intensity prior's weight (default the model's
    ``config.intensity_prior``). Returns the files.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if device is None:
        device = next(model.parameters()).device
    channels = model_channels(model, channels)
    slice_input = model_slice_input(model)
    tune = model_finetune(model, finetune)
    cache: TunedModels = {} if tuned is None else tuned
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval().to(device)
    paths: list[Path] = []
    try:
        for organ_plan in plan.organs:
            if not organ_plan.queries:
                continue
            query = organ_plan.queries[0]
            images, masks, chunks = query_tensors(
                query, volumes, organ_plan.label_value, channels=channels, slice_input=slice_input
            )
            picks = np.unique(
                np.linspace(0, len(query.slices) - 1, num=min(n, len(query.slices))).round().astype(int)
            )
            dice = (scan_dice or {}).get((organ_plan.organ, query.subject))
            for i in picks.tolist():
                chunk = int(chunks[i])
                s_img, s_msk = support_episode_tensors(
                    organ_plan, volumes, chunk, channels=channels, slice_input=slice_input
                )
                copy = chunk_model(model, s_img, s_msk, tune, organ_plan.organ, chunk, device, cache=cache)
                pred = predict_query(
                    copy, s_img, s_msk, images[i : i + 1], device=device, threshold=threshold, tta=tta,
                    intensity_prior=intensity_prior,
                )[0].numpy()
                heading = (
                    f"{organ_plan.organ}: support {organ_plan.support_subject} "
                    f"(chunk {chunk + 1}/{len(organ_plan.support_slices)}), query {query.subject} "
                    f"slice z={query.slices[i]}" + (f", scan 3D Dice {100 * dice:.1f}%" if dice is not None else "")
                )
                picture = compose_overlay(
                    (s_img[0, 0, 0].numpy(), s_msk[0, 0].numpy()),
                    images[i, 0].numpy(),
                    pred,
                    masks[i].numpy(),
                    heading,
                )
                path = out / f"{organ_plan.organ}_{query.subject}_z{query.slices[i]:03d}.png"
                with atomic_writer(path) as fh:
                    Image.fromarray(picture).save(fh, format="PNG")
                paths.append(path)
    finally:
        model.train(was_training)
    return paths
