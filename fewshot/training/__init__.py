"""Self-supervised episodic training with PyTorch Lightning."""

from __future__ import annotations

from fewshot.training.data import EpisodeDataModule, StepBatchSampler
from fewshot.training.module import FewShotModule
from fewshot.training.train import TrainResult, train

__all__ = ["EpisodeDataModule", "FewShotModule", "StepBatchSampler", "TrainResult", "train"]
