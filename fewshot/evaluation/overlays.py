"""Overlay pictures of predictions: support, query, prediction and ground truth side by side."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from episodes.atomic import atomic_writer
from episodes.data.volumes import Volume
from episodes.protocol import EvaluationPlan, query_tensors, support_episode_tensors
from fewshot.evaluation.scoring import model_channels, predict_query

__all__ = ["save_overlays"]


def _grey(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return (np.clip((image - lo) / max(hi - lo, 1e-8), 0, 1) * 255).astype(np.uint8)


def _overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    rgb = np.repeat(_grey(image)[..., None], 3, axis=-1).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.55 * rgb[m] + 0.45 * np.asarray(color, dtype=np.float32)
    return rgb.astype(np.uint8)


def save_overlays(
    model: nn.Module,
    plan: EvaluationPlan,
    volumes: Mapping[str, Volume],
    out_dir: str | os.PathLike[str],
    *,
    n: int = 4,
    device: torch.device | str | None = None,
    channels: int | None = None,
) -> list[Path]:
    """PNG panels ``support | query | prediction | ground truth`` for ``n`` slices per organ.

    Slices are spread evenly over the first query scan's scored range. Returns the files.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if device is None:
        device = next(model.parameters()).device
    channels = model_channels(model, channels)
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
            images, masks, chunks = query_tensors(query, volumes, organ_plan.label_value, channels=channels)
            picks = np.unique(
                np.linspace(0, len(query.slices) - 1, num=min(n, len(query.slices))).round().astype(int)
            )
            for i in picks.tolist():
                chunk = int(chunks[i])
                s_img, s_msk = support_episode_tensors(organ_plan, volumes, chunk, channels=channels)
                pred = predict_query(model, s_img, s_msk, images[i : i + 1], device=device)[0].numpy()
                q_img = images[i, 0].numpy()
                panels = [
                    _overlay(s_img[0, 0, 0].numpy(), s_msk[0, 0].numpy(), (0, 200, 255)),
                    _overlay(q_img, np.zeros_like(pred), (0, 0, 0)),
                    _overlay(q_img, pred, (255, 60, 60)),
                    _overlay(q_img, masks[i].numpy(), (60, 255, 60)),
                ]
                sep = np.full((panels[0].shape[0], 4, 3), 255, dtype=np.uint8)
                row = np.concatenate([p for panel in panels for p in (panel, sep)][:-1], axis=1)
                path = out / f"{organ_plan.organ}_{query.subject}_z{query.slices[i]:03d}.png"
                with atomic_writer(path) as fh:
                    Image.fromarray(row).save(fh, format="PNG")
                paths.append(path)
    finally:
        model.train(was_training)
    return paths
