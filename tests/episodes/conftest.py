"""Shared fixtures for the episodes tests: tiny hand-made volumes (no files, no real data)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from episodes.data.labels import CHAOS_MR
from episodes.data.volumes import Volume


def make_raw_mr(
    subject: str = "1", *, z: int = 6, size: int = 48, seed: int = 0, with_label: bool = True
) -> Volume:
    """A raw MR-like volume: air 0, a body ellipse ~300 with textured blobs, organs as labels.

    Labels (CHAOS values): liver (1) in slices 1..3, right kidney (2) in slice 2..4, spleen (4) slice 4.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    body = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.46 * size)) ** 2 <= 1
    image = np.zeros((z, size, size), dtype=np.float32)
    label = np.zeros((z, size, size), dtype=np.int16)
    for k in range(z):
        sl = np.where(body, 300.0, 0.0)
        sl[: size // 2, : size // 2] += 250.0 * body[: size // 2, : size // 2]
        sl[size // 2 :, size // 2 :] += 500.0 * body[size // 2 :, size // 2 :]
        sl += rng.normal(0, 5, size=sl.shape) * body
        image[k] = sl
    q = size // 4
    label[1:4, q : 2 * q, q : 2 * q] = 1
    label[2:5, 2 * q : 3 * q, q : 2 * q] = 2
    label[4:5, 2 * q : 3 * q, 2 * q : 3 * q] = 4
    return Volume(
        image=image,
        label=label if with_label else None,
        spacing=(5.0, 1.0, 1.0),
        subject=subject,
        modality="MR",
        label_map=CHAOS_MR,
        intensity="raw",
    )


MakeVolume = Callable[..., Volume]


@pytest.fixture
def make_volume() -> MakeVolume:
    """Factory for :func:`make_raw_mr` volumes."""
    return make_raw_mr


@pytest.fixture
def raw_mr() -> Volume:
    return make_raw_mr()
