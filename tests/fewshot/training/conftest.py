"""Shared training fixtures: six small CT phantoms and a factory of tiny, fast experiment configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from episodes.data.phantom import make_phantom_dataset
from episodes.data.volumes import Volume
from fewshot.config import ExperimentConfig, load_config


@pytest.fixture(scope="module")
def volumes() -> list[Volume]:
    return make_phantom_dataset(6, modality="CT", shape=(12, 64, 64))


def _tiny_config(
    out: Path, cache: str | None = None, optim: dict[str, Any] | None = None, **train: Any
) -> ExperimentConfig:
    data: dict[str, Any] = {
        "dataset": "phantom-ct",
        "size": 64,
        "protocol": {"organs": ["liver", "spleen"]},
        "superpixels": {"params": {"min_size": 50}},
        "episodes": {"min_superpixel_pixels": 20},
    }
    if cache is not None:
        data["cache_dir"] = cache
    return load_config(
        {
            "data": data,
            "model": {
                "backbone": {"name": "cbr-tiny", "truncate": "block2"},
                "head": {"name": "alpnet", "feature_dim": 8, "window_train": 2, "window_test": 2},
            },
            "optim": dict(optim or {}),
            "train": {
                "num_workers": 0,
                "log_every": 1,
                "progress_bar": False,
                "accelerator": "cpu",
                **train,
            },
            "out_dir": str(out),
        }
    )


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., ExperimentConfig]:
    """``tiny_config(out, cache=None, optim=None, **train)``: cbr-tiny + ALPNet on 64-px phantoms."""
    return _tiny_config
