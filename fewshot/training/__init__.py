"""Self-supervised episodic training with PyTorch Lightning."""

from __future__ import annotations

from fewshot.training.data import EpisodeDataModule, StepBatchSampler
from fewshot.training.module import FewShotModule
from fewshot.training.train import (
    CheckpointError,
    TrainResult,
    checkpoint_path,
    load_checkpoint,
    load_model_from_checkpoint,
    load_volumes,
    preprocess_volumes,
    split_volumes,
    train,
)

__all__ = [
    "CheckpointError",
    "EpisodeDataModule",
    "FewShotModule",
    "StepBatchSampler",
    "TrainResult",
    "checkpoint_path",
    "load_checkpoint",
    "load_model_from_checkpoint",
    "load_volumes",
    "preprocess_volumes",
    "split_volumes",
    "train",
]
